"""The chunked loss path: log-probs from the final hidden states and the output layer, chunk by chunk.

Full-vocabulary logits are the main memory cost of distillation (one 2,048-token sequence at a 152k
vocabulary is 1.2 GB in float32, and ADPA needs student, DPO teacher and reference teacher distributions).
Here only the counted (response) positions are projected, `chunk_size` rows at a time, and the gradient of
each chunk's loss with respect to its logits is taken inside the forward pass (`FusedLinearLoss`): the
backward pass then only scales stored gradients of the hidden states and the output weight. No (N, V)
tensor ever exists, the logits are computed once (no recomputation), and prompt positions cost nothing.

Works for any loss that is a sum of per-row terms of the logits: the chunk function receives the chunk's
logits (C, V) and returns a scalar.

Some models change the projected logits before returning them: Gemma 2/3 soft-cap them
(`final_logit_softcapping`), Granite divides them (`logits_scaling`), Cohere multiplies them
(`logit_scale`). `output_layer(model)` pairs the projection with that transform (read from the model's
config); every projection of the chunked path (student loss, its gradient, DPO's reference, the teacher's
logits and its cache) goes through it. `chunking_problem` checks on a probe that it reproduces the model's
own logits and refuses the chunked path for a model with a transform it does not know.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from .distributed import call_with_weight
from .losses import IGNORE_INDEX

ChunkFn = Callable[[Tensor, int, int], Tensor]


@dataclass(frozen=True)
class LogitTransform:
    """A model's map from projected logits z = hidden @ W.T to its output logits, elementwise (in this order):
    z * multiply, z / divide, then softcap * tanh(z / softcap). The defaults are the identity."""

    multiply: float = 1.0
    divide: float = 1.0
    softcap: float | None = None

    def __call__(self, z: Tensor) -> Tensor:
        if self.multiply != 1.0:
            z = z * self.multiply
        if self.divide != 1.0:
            z = z / self.divide
        if self.softcap:
            z = torch.tanh(z / self.softcap) * self.softcap
        return z


# `logits_scaling` divides the logits (Granite, MiniCPM3: hidden / s, the same for a bias-free layer) except
# in these model types, where it multiplies them.
MULTIPLYING_LOGITS_SCALING = ("hyperclovax",)


def output_transform(model: nn.Module) -> LogitTransform:
    """The output transform of a causal LM, from its config (`final_logit_softcapping`, `logits_scaling`,
    `logit_scale`); the identity for a plain projection (Llama, Qwen, Mistral, SmolLM2...)."""
    config = model.config.get_text_config()
    kw: dict[str, float] = {}
    if getattr(config, "final_logit_softcapping", None):
        kw["softcap"] = float(config.final_logit_softcapping)
    if getattr(config, "logit_scale", None) is not None:
        kw["multiply"] = float(config.logit_scale)
    scaling = getattr(config, "logits_scaling", None)
    if scaling is not None:
        kw["multiply" if config.model_type in MULTIPLYING_LOGITS_SCALING else "divide"] = float(scaling)
    return LogitTransform(**kw)


@dataclass(frozen=True)
class OutputLayer:
    """The output projection (`linear`: weight (V_rows, H), no bias) and the model's logit transform:
    hidden (..., H) -> the model's own logits (..., V_rows)."""

    linear: nn.Module
    transform: LogitTransform = LogitTransform()

    @property
    def weight(self) -> Tensor:
        return self.linear.weight

    def __call__(self, hidden: Tensor) -> Tensor:
        return self.transform(self.linear(hidden))


def output_layer(model: nn.Module) -> OutputLayer:
    """The layer every chunked projection of `model` uses."""
    return OutputLayer(model.get_output_embeddings(), output_transform(model))


class FusedLinearLoss(torch.autograd.Function):
    """sum over chunks of `chunk_fn(transform(hidden[s:e] @ weight[:V].T), s, e)`; gradients computed chunk by
    chunk (through the transform)."""

    @staticmethod
    def forward(
        ctx: Any,
        hidden: Tensor,
        weight: Tensor,
        chunk_fn: ChunkFn,
        vocab: int,
        chunk_size: int,
        transform: LogitTransform,
    ):
        w = weight[:vocab]  # (V, H): padded embedding rows are never targets
        need_h, need_w = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        grad_h = torch.zeros_like(hidden) if need_h else None  # (N, H)
        grad_w = torch.zeros_like(weight, dtype=torch.float32) if need_w else None  # (V_rows, H)
        total = torch.zeros((), dtype=torch.float32, device=hidden.device)
        for start in range(0, hidden.shape[0], chunk_size):
            end = min(start + chunk_size, hidden.shape[0])
            h = hidden[start:end]  # (C, H)
            z = (h @ w.T).float().requires_grad_(need_h or need_w)  # (C, V) projected logits
            with torch.enable_grad():
                value = chunk_fn(transform(z), start, end)
            total += value.detach().float()
            if not (need_h or need_w):
                continue
            (d_logits,) = torch.autograd.grad(value, z)  # (C, V): d loss / d z, through the transform
            d_logits = d_logits.to(h.dtype)
            if need_h:
                grad_h[start:end] = d_logits @ w
            if need_w:
                grad_w[:vocab].addmm_(d_logits.T.float(), h.float())
        ctx.save_for_backward(grad_h, grad_w)
        ctx.weight_dtype = weight.dtype
        return total

    @staticmethod
    def backward(ctx: Any, grad_out: Tensor):
        grad_h, grad_w = ctx.saved_tensors  # used once: scaled in place, no second full-size copy
        gh = grad_h.mul_(grad_out.to(grad_h.dtype)) if grad_h is not None else None
        gw = grad_w.mul_(grad_out).to(ctx.weight_dtype) if grad_w is not None else None
        return gh, gw, None, None, None, None


CHUNK_ELEMENTS = 1 << 25  # one (rows, V) float32 temporary stays <= 128 MiB, whatever the vocabulary


def chunk_rows(chunk_size: int, vocab: int) -> int:
    """Rows per chunk: at most `chunk_size`, fewer for large vocabularies (each chunk holds several (C, V)
    float32 temporaries, so a fixed row count would let memory grow with V)."""
    return max(16, min(chunk_size, CHUNK_ELEMENTS // max(vocab, 1)))


def fused_linear_loss(
    hidden: Tensor, head: OutputLayer | nn.Linear, chunk_fn: ChunkFn, vocab: int, chunk_size: int
) -> Tensor:
    """Scalar loss of the rows `hidden` (N, H) through the output layer `head` (`output_layer(model)`; a bare
    Linear has no transform), chunk by chunk. A sharded output layer (FSDP2, DeepSpeed ZeRO-3) is gathered
    for the loop (distributed.call_with_weight); its gradient goes back to the shard."""
    layer = head if isinstance(head, OutputLayer) else OutputLayer(head)

    def run(weight: Tensor, rows: Tensor) -> Tensor:  # weight (V_rows, H), rows (N, H)
        if rows.shape[0] == 0:
            return (rows.sum() * 0.0 + weight.sum() * 0.0).float()  # no row: 0 that back-propagates
        return FusedLinearLoss.apply(rows, weight, chunk_fn, vocab, chunk_size, layer.transform)

    out = call_with_weight(layer.linear, run, hidden)
    return out.to(hidden.dtype) if hidden.dtype == torch.float64 else out


PROBE_TOKENS = 8


def chunking_problem(model: nn.Module) -> str | None:
    """Why the chunked path cannot project `model`'s hidden states, or None when it can: the output layer must
    be a bias-free Linear (not adapted or quantized), and `output_layer(model)` must reproduce the model's own
    logits on a short probe (else it has an output transform this library does not know)."""
    head = model.get_output_embeddings()
    if type(head) is not nn.Linear or head.bias is not None:
        return "it needs bias-free Linear output layers (an adapted or quantized lm_head cannot be chunked)"
    expected, got = _probe_logits(model)
    tol = max(1e-3, 4 * torch.finfo(head.weight.dtype).eps) * max(1.0, float(expected.abs().max()))
    diff = float((expected - got).abs().max())
    if not diff <= tol:
        kind = model.config.get_text_config().model_type
        return (
            f"the {kind} model's logits are not its output layer's projection under the known output "
            f"transforms (final_logit_softcapping, logits_scaling, logit_scale): they differ by {diff:.3g} "
            "on a probe, so the model has an output transform this library does not apply"
        )
    return None


@torch.no_grad()
def _probe_logits(model: nn.Module) -> tuple[Tensor, Tensor]:
    """(the model's logits, `output_layer(model)` of its final hidden states) on a short probe, float32."""
    was_training = model.training
    model.eval()
    try:
        embed = model.get_input_embeddings().weight
        ids = (torch.arange(PROBE_TOKENS, device=embed.device) % embed.shape[0])[None]  # (1, P)
        out = model(input_ids=ids, output_hidden_states=True)
        return out.logits.float(), output_layer(model)(out.hidden_states[-1]).float()  # (1, P, V) each
    finally:
        model.train(was_training)


def supports_chunking(model: nn.Module) -> bool:
    """True when the chunked path can project `model` (see `chunking_problem`)."""
    return chunking_problem(model) is None


def final_hidden(model: nn.Module, batch: dict[str, Any]) -> Tensor:
    """The normed final hidden states (B, T, H) of a causal LM, without projecting them to the vocabulary."""
    inputs = {k: batch[k] for k in ("input_ids", "attention_mask", "position_ids") if k in batch}
    out = model(**inputs, output_hidden_states=True, logits_to_keep=1)
    return out.hidden_states[-1]


@torch.no_grad()
def label_logps(hidden: Tensor, head: OutputLayer, labels: Tensor, vocab: int, chunk_size: int) -> Tensor:
    """log p(label) of each row (N,) from hidden rows (N, H) through `head` (`output_layer(model)`), chunk by
    chunk, no gradient."""
    out = torch.empty(labels.shape[0], dtype=torch.float32, device=hidden.device)
    for start in range(0, hidden.shape[0], chunk_size):
        logits = head(hidden[start : start + chunk_size])[:, :vocab].float()  # (C, V)
        picked = logits.gather(-1, labels[start : start + chunk_size, None]).squeeze(-1)
        out[start : start + chunk_size] = picked - torch.logsumexp(logits, -1)
    return out


def counted_rows(labels: Tensor) -> tuple[Tensor, Tensor]:
    """(mask (B, T) of counted positions, sequence index of each counted row (N,))."""
    mask = labels != IGNORE_INDEX
    seq = torch.arange(labels.shape[0], device=labels.device)[:, None].expand_as(labels)[mask]
    return mask, seq


@torch.no_grad()
def sequence_logps_chunked(model: nn.Module, batch: dict[str, Any], vocab: int, chunk_size: int) -> Tensor:
    """Summed label log-probs per sequence (B,) without full logits (e.g. DPO's frozen reference)."""
    mask, seq = counted_rows(batch["labels"])
    rows = final_hidden(model, batch)[mask]  # (N, H)
    token = label_logps(rows, output_layer(model), batch["labels"][mask], vocab, chunk_size)
    return torch.zeros(mask.shape[0], device=rows.device).index_add_(0, seq, token)
