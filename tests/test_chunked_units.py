"""adpa_core.chunked piece by piece, by hand: the logit transforms and which config field selects each, the
chunk size bounds, FusedLinearLoss without gradients / for the weight only / on no row / in float64 and
bfloat16, the chunking check's refusals, and final hidden states with packed position ids."""

from __future__ import annotations

import re
from types import SimpleNamespace

import pytest
import torch
from torch import nn
from transformers import LlamaForCausalLM

from adpa_core.chunked import (
    CHUNK_ELEMENTS,
    LogitTransform,
    chunk_rows,
    chunking_problem,
    final_hidden,
    fused_linear_loss,
    output_transform,
    supports_chunking,
)
from tests.tiny import make_llama, make_tokenizer


def test_logit_transforms_by_hand():
    z = torch.tensor([-3.0, 0.5, 8.0])
    torch.testing.assert_close(LogitTransform()(z), z)
    torch.testing.assert_close(LogitTransform(multiply=2.0)(z), 2.0 * z)
    torch.testing.assert_close(LogitTransform(divide=2.0)(z), z / 2.0)
    torch.testing.assert_close(LogitTransform(softcap=5.0)(z), 5.0 * torch.tanh(z / 5.0))
    torch.testing.assert_close(LogitTransform(3.0, 2.0, 5.0)(z), 5.0 * torch.tanh(z * 3.0 / 2.0 / 5.0))


def _model_with(model_type: str, **fields) -> SimpleNamespace:
    config = SimpleNamespace(model_type=model_type, **fields)
    config.get_text_config = lambda: config
    return SimpleNamespace(config=config)


@pytest.mark.parametrize(
    ("model_type", "fields", "expected"),
    [
        ("llama", {}, LogitTransform()),
        ("gemma2", {"final_logit_softcapping": 30.0}, LogitTransform(softcap=30.0)),
        ("gemma2", {"final_logit_softcapping": None}, LogitTransform()),
        ("cohere", {"logit_scale": 0.0625}, LogitTransform(multiply=0.0625)),
        ("granite", {"logits_scaling": 8.0}, LogitTransform(divide=8.0)),
        ("hyperclovax", {"logits_scaling": 8.0}, LogitTransform(multiply=8.0)),  # multiplies instead
    ],
)
def test_output_transform_is_read_from_the_config(model_type, fields, expected):
    assert output_transform(_model_with(model_type, **fields)) == expected


def test_chunk_rows_bounds():
    assert chunk_rows(64, 1000) == 64  # small vocabulary: the asked size
    assert (
        chunk_rows(4096, 152_064) == CHUNK_ELEMENTS // 152_064 == 220
    )  # a (C, V) float32 temporary <= 128 MiB
    assert isinstance(chunk_rows(4096, 152_064), int)
    assert chunk_rows(4096, 10**9) == 16  # never fewer than 16 rows
    assert chunk_rows(1 << 30, 1) == CHUNK_ELEMENTS and chunk_rows(1 << 30, 0) == CHUNK_ELEMENTS


def _problem(n: int = 7, h: int = 4, v: int = 5, dtype=torch.float32, seed: int = 0):
    """Rows (n, H), an output layer (V, H) and a linear chunk loss sum_rows sum_v c[row, v] z[row, v]."""
    g = torch.Generator().manual_seed(seed)
    hidden = torch.randn(n, h, generator=g).to(dtype)
    head = nn.Linear(h, v, bias=False).to(dtype)
    with torch.no_grad():
        head.weight.copy_(torch.randn(v, h, generator=g).to(dtype))
    coef = torch.randn(n, v, generator=g)

    def chunk_fn(z, start, end):
        return (z * coef[start:end]).sum()

    return hidden, head, coef, chunk_fn


def test_without_gradients_every_chunk_counts():
    hidden, head, coef, chunk_fn = _problem()
    with torch.no_grad():
        out = fused_linear_loss(hidden, head, chunk_fn, 5, 2)  # chunks of 2, 2, 2, 1 rows
    torch.testing.assert_close(out, ((hidden @ head.weight.T) * coef).sum())


def test_gradient_for_the_weight_only():
    hidden, head, coef, chunk_fn = _problem()
    out = fused_linear_loss(hidden, head, chunk_fn, 5, 3)  # hidden needs no gradient
    out.backward()
    torch.testing.assert_close(head.weight.grad, coef.T @ hidden)


def test_no_row_gives_zero_that_back_propagates_and_one_row_counts():
    hidden, head, coef, chunk_fn = _problem(n=1)
    empty = torch.zeros(0, 4, requires_grad=True)
    out = fused_linear_loss(empty, head, chunk_fn, 5, 4)
    assert out.item() == 0.0 and out.dtype == torch.float32
    out.backward()
    assert torch.equal(head.weight.grad, torch.zeros_like(head.weight))
    one = fused_linear_loss(hidden.requires_grad_(), head, chunk_fn, 5, 4)
    torch.testing.assert_close(one, ((hidden @ head.weight.T) * coef).sum())


def test_float64_stays_float64_and_bfloat16_accumulates_in_float32():
    hidden, head, coef, chunk_fn = _problem(dtype=torch.float64)
    out = fused_linear_loss(hidden, head, chunk_fn, 5, 2)
    assert out.dtype == torch.float64
    torch.testing.assert_close(out, ((hidden @ head.weight.T) * coef.double()).sum())
    # bf16: 64 chunks of one row; the weight's gradient is summed in float32 and rounded once
    hidden, head, coef, chunk_fn = _problem(n=64, h=8, v=16, dtype=torch.bfloat16, seed=1)
    hidden.requires_grad_()
    out = fused_linear_loss(hidden, head, chunk_fn, 16, 1)
    assert out.dtype == torch.float32
    out.backward()
    assert hidden.grad.dtype == head.weight.grad.dtype == torch.bfloat16
    d_logits = coef.to(torch.bfloat16)  # d out / d z, rounded to the rows' dtype as the loop does
    want_w = (d_logits.float().T @ hidden.detach().float()).to(torch.bfloat16)
    want_h = d_logits @ head.weight.detach()
    assert torch.equal(head.weight.grad, want_w)
    torch.testing.assert_close(hidden.grad, want_h, rtol=0, atol=0)


class _Doubled(LlamaForCausalLM):
    """A Llama whose logits are twice its output layer's projection (a transform nobody declares)."""

    def forward(self, *args, **kwargs):
        out = super().forward(*args, **kwargs)
        out.logits = out.logits * 2
        return out


def test_chunking_check_refusals_word_for_word():
    tok = make_tokenizer()
    plain = make_llama(tok)
    assert chunking_problem(plain) is None and supports_chunking(plain)
    biased = make_llama(tok)
    biased.lm_head = nn.Linear(32, len(tok), bias=True)
    expected = "it needs bias-free Linear output layers (an adapted or quantized lm_head cannot be chunked)"
    assert chunking_problem(biased) == expected and not supports_chunking(biased)
    odd = _Doubled(plain.config)
    odd.load_state_dict(plain.state_dict())
    problem = chunking_problem(odd)
    pattern = (
        r"the llama model's logits are not its output layer's projection under the known output transforms "
        r"\(final_logit_softcapping, logits_scaling, logit_scale\): they differ by [0-9.e+-]+ on a probe, so "
        r"the model has an output transform this library does not apply"
    )
    assert re.fullmatch(pattern, problem), problem


def test_final_hidden_uses_the_batch_position_ids():
    """Two sequences packed in one row restart their positions: the hidden states follow them."""
    model = make_llama(make_tokenizer()).eval()
    ids = torch.tensor([[7, 8, 9, 10, 11, 12]])
    positions = torch.tensor([[0, 1, 2, 0, 1, 2]])
    with torch.no_grad():
        want = model(input_ids=ids, position_ids=positions, output_hidden_states=True).hidden_states[-1]
        got = final_hidden(model, {"input_ids": ids, "position_ids": positions, "ids": ["a"]})
        default = final_hidden(model, {"input_ids": ids})
    torch.testing.assert_close(got, want)
    assert not torch.allclose(got, default)


class _Shifted(LlamaForCausalLM):
    """A Llama whose logits carry a constant offset `shift`: a small unknown transform."""

    shift = 0.0

    def forward(self, *args, **kwargs):
        out = super().forward(*args, **kwargs)
        out.logits = out.logits + self.shift
        return out


def _shifted(scale: float, shift: float, dtype: torch.dtype = torch.float32) -> _Shifted:
    plain = make_llama(make_tokenizer())
    with torch.no_grad():
        plain.lm_head.weight.mul_(scale)  # tied with the input embeddings: scales the logits
    model = _Shifted(plain.config)
    model.load_state_dict(plain.state_dict())
    model.shift = shift
    return model.to(dtype)


def _largest_logit(model) -> float:
    with torch.no_grad():
        return float(model(input_ids=torch.arange(8)[None]).logits.abs().max())


def test_chunking_check_tolerance():
    """A probe may differ from the projection by max(1e-3, 4 eps(dtype)) x max(1, largest |logit|)."""
    small = _largest_logit(_shifted(0.01, 0.0))
    assert small < 0.5  # the tolerance is 1e-3 (float32)
    assert chunking_problem(_shifted(0.01, 0.5e-3)) is None
    assert chunking_problem(_shifted(0.01, 1.5e-3)) is not None
    large = _largest_logit(_shifted(30.0, 0.0))
    assert large > 10.0  # the tolerance grows with the logits: 1e-3 x largest
    assert chunking_problem(_shifted(30.0, 0.5e-3 * large)) is None
    assert chunking_problem(_shifted(30.0, 2e-3 * large)) is not None
    # float16: 4 eps = 2 ** -8 = 0.0039 (above 1e-3)
    assert chunking_problem(_shifted(0.01, 0.003, torch.float16)) is None
    assert chunking_problem(_shifted(0.01, 0.0044, torch.float16)) is not None
    # the bound itself is allowed: bfloat16 logits that are exactly 0 against exactly 2 ** -5 = 4 eps
    assert chunking_problem(_shifted(0.0, 2.0**-5, torch.bfloat16)) is None
    assert chunking_problem(_shifted(0.0, 2.0**-5 + 2.0**-12, torch.bfloat16)) is not None


@pytest.mark.parametrize("needs", ["hidden", "weight", "nothing"])
def test_only_the_needed_gradient_is_kept_and_every_chunk_counts(needs):
    """The backward pass keeps a (N, H) buffer only for rows that need a gradient and a (V_rows, H) float32
    buffer only for a weight that does (a frozen 152k x 4096 head would cost 2.5 GB for nothing); without any
    gradient every chunk still counts."""
    hidden, head, coef, chunk_fn = _problem()
    hidden.requires_grad_(needs == "hidden")
    head.weight.requires_grad_(needs == "weight")
    out = fused_linear_loss(hidden, head, chunk_fn, 5, 2)  # chunks of 2, 2, 2, 1 rows
    torch.testing.assert_close(out.detach(), ((hidden @ head.weight.T) * coef).sum().detach())
    if needs == "nothing":
        assert out.grad_fn is None
        return
    grad_h, grad_w = out.grad_fn.saved_tensors
    assert (grad_h is None) == (needs != "hidden") and (grad_w is None) == (needs != "weight")
    out.backward()
    if needs == "hidden":
        torch.testing.assert_close(hidden.grad, coef @ head.weight)
    else:
        assert grad_w.shape == head.weight.shape and grad_w.dtype == torch.float32


def test_final_hidden_projects_one_position_only():
    """The model's own logits are computed for the last position only (never (B, T, V))."""
    model = make_llama(make_tokenizer()).eval()
    shapes = []
    model.register_forward_hook(lambda _m, _a, out: shapes.append(tuple(out.logits.shape)))
    with torch.no_grad():
        hidden = final_hidden(model, {"input_ids": torch.tensor([[7, 8, 9, 10], [11, 12, 13, 14]])})
    assert hidden.shape == (2, 4, 32)
    assert shapes == [(2, 1, 64)]
