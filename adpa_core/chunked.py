"""The chunked loss path: log-probs from the final hidden states and the output layer, chunk by chunk.

Full-vocabulary logits are the main memory cost of distillation (one 2,048-token sequence at a 152k
vocabulary is 1.2 GB in float32, and ADPA needs student, DPO teacher and reference teacher distributions).
Here only the counted (response) positions are projected, `chunk_size` rows at a time, and the gradient of
each chunk's loss with respect to its logits is taken inside the forward pass (`FusedLinearLoss`): the
backward pass then only scales stored gradients of the hidden states and the output weight. No (N, V)
tensor ever exists, the logits are computed once (no recomputation), and prompt positions cost nothing.

Works for any loss that is a sum of per-row terms of the logits: the chunk function receives the chunk's
logits (C, V) as a leaf and returns a scalar.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor, nn

from .losses import IGNORE_INDEX

ChunkFn = Callable[[Tensor, int, int], Tensor]


class FusedLinearLoss(torch.autograd.Function):
    """sum over chunks of `chunk_fn(hidden[s:e] @ weight[:V].T, s, e)`; gradients computed chunk by chunk."""

    @staticmethod
    def forward(ctx: Any, hidden: Tensor, weight: Tensor, chunk_fn: ChunkFn, vocab: int, chunk_size: int):
        w = weight[:vocab]  # (V, H): padded embedding rows are never targets
        need_h, need_w = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        grad_h = torch.zeros_like(hidden) if need_h else None  # (N, H)
        grad_w = torch.zeros_like(weight, dtype=torch.float32) if need_w else None  # (V_rows, H)
        total = torch.zeros((), dtype=torch.float32, device=hidden.device)
        for start in range(0, hidden.shape[0], chunk_size):
            end = min(start + chunk_size, hidden.shape[0])
            h = hidden[start:end]  # (C, H)
            logits = (h @ w.T).float().requires_grad_(need_h or need_w)  # (C, V)
            with torch.enable_grad():
                value = chunk_fn(logits, start, end)
            total += value.detach().float()
            if not (need_h or need_w):
                continue
            (d_logits,) = torch.autograd.grad(value, logits)  # (C, V)
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
        return gh, gw, None, None, None


CHUNK_ELEMENTS = 1 << 25  # one (rows, V) float32 temporary stays <= 128 MiB, whatever the vocabulary


def chunk_rows(chunk_size: int, vocab: int) -> int:
    """Rows per chunk: at most `chunk_size`, fewer for large vocabularies (each chunk holds several (C, V)
    float32 temporaries, so a fixed row count would let memory grow with V)."""
    return max(16, min(chunk_size, CHUNK_ELEMENTS // max(vocab, 1)))


def fused_linear_loss(
    hidden: Tensor, head: nn.Linear, chunk_fn: ChunkFn, vocab: int, chunk_size: int
) -> Tensor:
    """Scalar loss of the rows `hidden` (N, H) through the output layer `head`, chunk by chunk."""
    weight = head.weight
    if hidden.shape[0] == 0:
        return (hidden.sum() * 0.0 + weight.sum() * 0.0).float()  # no row: 0 that back-propagates
    out = FusedLinearLoss.apply(hidden, weight, chunk_fn, vocab, chunk_size)
    return out.to(hidden.dtype) if hidden.dtype == torch.float64 else out


def supports_chunking(model: nn.Module) -> bool:
    """True when the output layer is a plain bias-free Linear (the chunked path needs its weight)."""
    head = model.get_output_embeddings()
    return type(head) is nn.Linear and head.bias is None


def final_hidden(model: nn.Module, batch: dict[str, Any]) -> Tensor:
    """The normed final hidden states (B, T, H) of a causal LM, without projecting them to the vocabulary."""
    inputs = {k: batch[k] for k in ("input_ids", "attention_mask", "position_ids") if k in batch}
    out = model(**inputs, output_hidden_states=True, logits_to_keep=1)
    return out.hidden_states[-1]


@torch.no_grad()
def label_logps(hidden: Tensor, head: nn.Module, labels: Tensor, vocab: int, chunk_size: int) -> Tensor:
    """log p(label) of each row (N,) from hidden rows (N, H), chunk by chunk, no gradient."""
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
    token = label_logps(rows, model.get_output_embeddings(), batch["labels"][mask], vocab, chunk_size)
    return torch.zeros(mask.shape[0], device=rows.device).index_add_(0, seq, token)
