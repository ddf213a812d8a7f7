"""Defaults and inputs of adpa_core.losses that the main suite (test_losses.py) does not pin: the default
reduction and DPO beta of DESIGN.md section 1, the message for an unknown reduction, and a cache's stored rest
bin used as given (not recomputed from rounded top-k log-probs)."""

from __future__ import annotations

import math

import pytest
import torch

from adpa_core import losses as L
from tests import reference as R
from tests.test_losses import TOL, make_case


def test_default_reduction_is_sequence_and_default_dpo_beta_is_0_1():
    c = make_case((3, 7, 11), seed=11)
    per_token, mask = c.student[..., 0], c.labels != L.IGNORE_INDEX
    assert L.masked_reduce(per_token, mask) == L.masked_reduce(per_token, mask, "sequence")
    assert L.masked_reduce(per_token, mask) != L.masked_reduce(per_token, mask, "token")
    g = torch.Generator().manual_seed(0)
    logps = [torch.randn(5, generator=g) * 3 for _ in range(4)]  # policy w, policy l, ref w, ref l
    torch.testing.assert_close(L.dpo_per_pair(*logps).double(), R.dpo_per_pair(*logps, beta=0.1), **TOL)
    torch.testing.assert_close(L.dpo_loss(*logps).double(), R.dpo_loss(*logps, beta=0.1), **TOL)
    rewards = L.dpo_implicit_rewards(*logps)
    for got, want in zip(rewards, R.dpo_implicit_rewards(*logps, beta=0.1), strict=True):
        torch.testing.assert_close(got.double(), want, **TOL)


def test_unknown_reduction_names_the_choices():
    with pytest.raises(ValueError, match=r"reduction='mean' is not valid; choose one of sequence, token"):
        L.masked_reduce(torch.zeros(1, 2), torch.ones(1, 2, dtype=torch.bool), "mean")


@pytest.mark.parametrize("reduction", ["sequence", "token"])
def test_topk_kl_uses_the_stored_rest_bin(reduction):
    """A cache stores the rest bin computed from float32 log-probs and the log-probs in float16; the KL
    must use the stored rest, which differs from the one the rounded log-probs imply."""
    c = make_case((3, 7, 11), seed=12, k=4)
    rounded = c.t_logps.half().float()
    assert not torch.allclose(L.topk_rest_logp(rounded), c.t_rest, rtol=0, atol=1e-4)
    out = L.topk_forward_kl_loss(c.student, c.ids, rounded, c.labels, c.t_rest, reduction=reduction)
    per_token = L.topk_forward_kl_per_token(c.student, c.ids, rounded, c.labels, c.t_rest)
    expected = R.topk_forward_kl_per_token(c.student.double(), c.ids, rounded, c.labels, c.t_rest)
    torch.testing.assert_close(per_token.double(), expected, **TOL)
    torch.testing.assert_close(
        out.double(), R.masked_reduce(expected, c.labels != L.IGNORE_INDEX, reduction), **TOL
    )


def test_rest_bin_threshold_is_one_float_resolution():
    """Top-k mass of exactly 1 - eps (log-sum -eps, float32) or closer counts as complete: no rest bin
    (-inf); twice as far, the rest bin holds the remainder, log(1 - exp(-2 eps))."""
    eps = torch.finfo(torch.float32).eps
    assert L.topk_rest_logp(torch.tensor([[[-eps]]])).item() == -math.inf
    assert L.topk_rest_logp(torch.tensor([[[-eps / 2, -60.0]]])).item() == -math.inf
    got = L.topk_rest_logp(torch.tensor([[[-2 * eps]]])).item()
    assert got == pytest.approx(math.log(-math.expm1(-2 * eps)), rel=1e-6)
