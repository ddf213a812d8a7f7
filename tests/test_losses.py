"""adpa_core.losses against the naive float64 reference (values and gradients), hand-worked golden values,
limiting cases, hypothesis properties and low-precision inputs."""

from __future__ import annotations

import math
from dataclasses import dataclass, fields, replace

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import Tensor

from adpa_core import losses as L
from adpa_core.losses import IGNORE_INDEX
from tests import reference as R

SHAPES = [(3, 7, 11), (2, 5, 13)]
REDUCTIONS = ["sequence", "token"]
TOL = {"rtol": 1e-5, "atol": 1e-6}  # float32 against the float64 reference
LOW_PRECISION_TOL = {"rtol": 2e-2, "atol": 1e-2}  # bf16/fp16 inputs against the float32 result
PROPERTY = settings(max_examples=20, deadline=None)


@dataclass
class Case:
    student: Tensor  # (B, T, V)
    teacher: Tensor  # (B, T, V) the DPO teacher
    ref: Tensor  # (B, T, V) the reference teacher
    labels: Tensor  # (B, T)
    adv: Tensor  # (B, T, V)
    ids: Tensor  # (B, T, K) int32, the teacher's top k
    t_logps: Tensor  # (B, T, K)
    t_rest: Tensor  # (B, T) exact log rest mass
    topk_adv: Tensor  # (B, T, K)
    rest_adv: Tensor  # (B, T)


def make_case(shape: tuple[int, int, int], seed: int = 0, k: int = 4, scale: float = 2.0) -> Case:
    """Random logits; ~30% of labels -100, the first sequence with one counted token (so that the sequence
    and token reductions differ), the last sequence (when B > 1) with no counted token."""
    g = torch.Generator().manual_seed(seed)
    n_b, n_t, n_v = shape
    k = min(k, n_v)

    def randn(*size: int) -> Tensor:
        return torch.randn(*size, generator=g)

    teacher = randn(*shape) * scale
    labels = torch.randint(0, n_v, (n_b, n_t), generator=g)
    labels[torch.rand(n_b, n_t, generator=g) < 0.3] = IGNORE_INDEX
    labels[0, 0] = 1
    labels[0, 1:] = IGNORE_INDEX  # one counted token: the reductions differ as soon as another row counts two
    if n_b > 2 and n_t > 1:
        labels[1, :2] = torch.tensor([2, 3]) % n_v
    if n_b > 1:
        labels[-1] = IGNORE_INDEX
    ref = teacher + randn(*shape)
    ids = teacher.topk(k, dim=-1).indices  # (B, T, K)
    t_logps = torch.log_softmax(teacher.double(), -1).gather(-1, ids)
    t_rest = (
        torch.log(-torch.expm1(torch.logsumexp(t_logps, -1)))
        if k < n_v
        else torch.full((n_b, n_t), -math.inf)
    )
    return Case(
        student=randn(*shape) * scale,
        teacher=teacher,
        ref=ref,
        labels=labels,
        adv=L.token_advantages(teacher, ref),
        ids=ids.int(),
        t_logps=t_logps.float(),
        t_rest=t_rest.float(),
        topk_adv=randn(n_b, n_t, k),
        rest_adv=randn(n_b, n_t),
    )


def full_vocab_topk(c: Case, seed: int = 1) -> Case:
    """The same case with a k = V cache: every token, in a random order per position."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.argsort(torch.rand(c.teacher.shape, generator=g), dim=-1)  # (B, T, V)
    return replace(
        c,
        ids=ids.int(),
        t_logps=torch.log_softmax(c.teacher, -1).gather(-1, ids),
        t_rest=torch.full(c.labels.shape, -math.inf),
        topk_adv=c.adv.gather(-1, ids),
    )


def cast(c: Case, dtype: torch.dtype) -> Case:
    return replace(
        c,
        **{f.name: getattr(c, f.name).to(dtype) for f in fields(c) if getattr(c, f.name).is_floating_point()},
    )


# Every reduced loss as `fn(module, student_logits, case, reduction)`; module is the library or the reference.
LOSSES = {
    "nll": lambda m, s, c, r: m.nll_loss(s, c.labels, reduction=r),
    "forward_kl": lambda m, s, c, r: m.forward_kl_loss(s, c.teacher, c.labels, reduction=r),
    "adpa": lambda m, s, c, r: m.adpa_loss_term(s, c.adv, c.labels, reduction=r),
    "topk_kl": lambda m, s, c, r: m.topk_forward_kl_loss(s, c.ids, c.t_logps, c.labels, reduction=r),
    "topk_kl_rest": lambda m, s, c, r: m.topk_forward_kl_loss(
        s, c.ids, c.t_logps, c.labels, teacher_rest_logp=c.t_rest, reduction=r
    ),
    "topk_adpa": lambda m, s, c, r: m.topk_adpa_loss_term(s, c.ids, c.topk_adv, c.labels, reduction=r),
    "topk_adpa_rest": lambda m, s, c, r: m.topk_adpa_loss_term(
        s, c.ids, c.topk_adv, c.labels, rest_advantage=c.rest_adv, reduction=r
    ),
}
PER_TOKEN = {
    "nll": lambda m, s, c: m.nll_per_token(s, c.labels),
    "forward_kl": lambda m, s, c: m.forward_kl_per_token(s, c.teacher, c.labels),
    "adpa": lambda m, s, c: m.adpa_per_token(s, c.adv, c.labels),
    "topk_kl": lambda m, s, c: m.topk_forward_kl_per_token(s, c.ids, c.t_logps, c.labels),
    "topk_adpa_rest": lambda m, s, c: m.topk_adpa_per_token(s, c.ids, c.topk_adv, c.labels, c.rest_adv),
}


def value_and_grad(fn, x: Tensor) -> tuple[Tensor, Tensor]:
    x = x.detach().clone().requires_grad_(True)
    out = fn(x)
    out.backward()
    return out.detach(), x.grad


# ---------------------------------------------------------------- against the float64 reference


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("name", list(LOSSES))
def test_loss_matches_reference(name: str, reduction: str, shape: tuple[int, int, int]) -> None:
    c, fn = make_case(shape, seed=len(name)), LOSSES[name]
    out, grad = value_and_grad(lambda s: fn(L, s, c, reduction), c.student)
    expected, expected_grad = value_and_grad(lambda s: fn(R, s, c, reduction), c.student.double())
    assert out.dtype == torch.float32 and out.shape == ()
    torch.testing.assert_close(out.double(), expected, **TOL)
    torch.testing.assert_close(grad.double(), expected_grad, **TOL)


@pytest.mark.parametrize("name", list(PER_TOKEN))
def test_per_token_matches_reference(name: str) -> None:
    c = make_case((3, 7, 11), seed=3)
    out = PER_TOKEN[name](L, c.student, c)
    assert out.shape == c.labels.shape and out.dtype == torch.float32
    torch.testing.assert_close(out.double(), PER_TOKEN[name](R, c.student.double(), c), **TOL)
    assert (out[c.labels == IGNORE_INDEX] == 0).all()


@pytest.mark.parametrize("shape", SHAPES)
def test_sequence_logps_matches_reference(shape: tuple[int, int, int]) -> None:
    c = make_case(shape, seed=5)
    weights = torch.linspace(-1.0, 2.0, shape[0])  # a non-uniform upstream gradient
    out, grad = value_and_grad(lambda s: (L.sequence_logps(s, c.labels) * weights).sum(), c.student)
    exp, exp_grad = value_and_grad(
        lambda s: (R.sequence_logps(s, c.labels) * weights).sum(), c.student.double()
    )
    torch.testing.assert_close(out.double(), exp, **TOL)
    torch.testing.assert_close(grad.double(), exp_grad, **TOL)
    assert L.sequence_logps(c.student, c.labels)[-1] == 0  # the sequence with no counted token


@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_masked_reduce_matches_reference(reduction: str) -> None:
    c = make_case((3, 7, 11), seed=6)
    mask = c.labels != IGNORE_INDEX
    per_token = torch.randn(3, 7, generator=torch.Generator().manual_seed(0))
    out, grad = value_and_grad(lambda x: L.masked_reduce(x, mask, reduction), per_token)
    exp, exp_grad = value_and_grad(lambda x: R.masked_reduce(x, mask, reduction), per_token.double())
    torch.testing.assert_close(out.double(), exp, **TOL)
    torch.testing.assert_close(grad.double(), exp_grad, **TOL)


@pytest.mark.parametrize(
    "kwargs",
    [
        {},
        {"beta": 2.5},
        {"beta": 0.7, "clip": (-0.5, 0.8)},
        {"topk": 3},
        {"beta": 1.3, "clip": (1e-8, 1 - 1e-8), "topk": 5},
        {"ref": None, "beta": 0.5},
    ],
)
def test_token_advantages_match_reference(kwargs: dict) -> None:
    c = make_case((2, 5, 13), seed=7)
    ref = kwargs.pop("ref", c.ref)
    out = L.token_advantages(c.teacher, ref, **kwargs)
    assert out.shape == c.teacher.shape and out.dtype == torch.float32
    torch.testing.assert_close(out.double(), R.token_advantages(c.teacher, ref, **kwargs), **TOL)


def test_topk_token_advantages_match_reference() -> None:
    g = torch.Generator().manual_seed(8)
    dpo, ref = torch.randn(2, 5, 4, generator=g) - 2, torch.randn(2, 5, 4, generator=g) - 2
    for kwargs in ({}, {"beta": 0.3}, {"beta": 2.0, "clip": (-1.0, 0.5)}):
        out = L.topk_token_advantages(dpo, ref, **kwargs)
        torch.testing.assert_close(out.double(), R.topk_token_advantages(dpo, ref, **kwargs), **TOL)


def test_dpo_matches_reference() -> None:
    g = torch.Generator().manual_seed(9)
    logps = [torch.randn(5, generator=g) * 4 - 20 for _ in range(4)]
    for beta in (0.1, 1.0):
        grads = []
        for module, dtype in ((L, torch.float32), (R, torch.float64)):
            pc, pr = (x.detach().to(dtype).requires_grad_(True) for x in logps[:2])
            loss = module.dpo_loss(pc, pr, logps[2], logps[3], beta=beta)
            loss.backward()
            grads.append((loss.detach().double(), pc.grad.double(), pr.grad.double()))
        for got, exp in zip(*grads, strict=True):
            torch.testing.assert_close(got, exp, **TOL)
        for got, exp in zip(
            L.dpo_implicit_rewards(*logps, beta=beta), R.dpo_implicit_rewards(*logps, beta=beta), strict=True
        ):
            torch.testing.assert_close(got.double(), exp, **TOL)
        pc, pr = (x.detach().requires_grad_(True) for x in logps[:2])
        per_pair = L.dpo_per_pair(pc, pr, logps[2], logps[3], beta=beta)
        per_pair.sum().backward()
        rc, rr = (x.detach().double().requires_grad_(True) for x in logps[:2])
        expected = R.dpo_per_pair(rc, rr, logps[2].double(), logps[3].double(), beta=beta)
        expected.sum().backward()
        torch.testing.assert_close(per_pair.detach().double(), expected.detach(), **TOL)
        torch.testing.assert_close(pc.grad.double(), rc.grad, **TOL)
        torch.testing.assert_close(pr.grad.double(), rr.grad, **TOL)


def test_log1mexp_matches_reference() -> None:
    x = torch.tensor([-80.0, -40.0, -20.0, -5.0, -1.0, -0.7, -0.69, -0.5, -0.1, -1e-3, -1e-5])
    out, grad = value_and_grad(lambda v: L.log1mexp(v).sum(), x)
    exp, exp_grad = value_and_grad(lambda v: R.log1mexp(v).sum(), x.double())
    torch.testing.assert_close(out.double(), exp, **TOL)
    torch.testing.assert_close(grad.double(), exp_grad, rtol=1e-5, atol=0.0)
    # accurate in relative terms at both ends (one branch alone loses all digits at -20 or at -1e-5)
    torch.testing.assert_close(L.log1mexp(x).double(), R.log1mexp(x), rtol=1e-5, atol=0.0)


def test_topk_rest_logp_matches_reference() -> None:
    c = make_case((2, 5, 13), seed=10)
    torch.testing.assert_close(L.topk_rest_logp(c.t_logps).double(), R.topk_rest_logp(c.t_logps), **TOL)
    full = full_vocab_topk(c)
    logps = full.t_logps.clone().requires_grad_(True)
    rest = L.topk_rest_logp(logps)
    assert torch.isneginf(rest).all()  # k = V: no rest bin
    (grad,) = torch.autograd.grad(rest.clamp(min=-1e4).sum(), logps)
    assert (grad == 0).all()  # and no NaN/inf from log1mexp(0) in the gradient


# ---------------------------------------------------------------- golden values worked by hand


def test_golden_nll_and_sequence_logps() -> None:
    # logits (0, ln 3): p = (1/4, 3/4); label 1 -> nll = -ln(3/4) = ln(4/3) = 0.2876821
    logits = torch.tensor([[[0.0, math.log(3.0)]]])
    labels = torch.tensor([[1]])
    assert L.nll_loss(logits, labels).item() == pytest.approx(math.log(4 / 3), rel=1e-6)
    assert L.sequence_logps(logits, labels).item() == pytest.approx(math.log(3 / 4), rel=1e-6)


def test_golden_forward_kl() -> None:
    # p_T = (1/4, 3/4) from logits (0, ln 3); p_S = (1/2, 1/2):
    # KL = 1/4 ln(1/2) + 3/4 ln(3/2) = 3/4 ln 3 - ln 2 = 0.8239592 - 0.6931472 = 0.1308120
    teacher = torch.tensor([[[0.0, math.log(3.0)]]])
    student = torch.zeros(1, 1, 2)
    out = L.forward_kl_loss(student, teacher, torch.tensor([[0]]))
    assert out.item() == pytest.approx(0.75 * math.log(3) - math.log(2), rel=1e-6)


def test_golden_advantage_and_adpa() -> None:
    # log pi_dpo = (ln 1/4, ln 3/4), log pi_ref = (ln 1/2, ln 1/2), beta = 2:
    # A = 2 (ln 1/2, ln 3/2) = (-1.3862944, 0.8109302)
    # student p = (1/2, 1/2): term = -(A_0 + A_1) / 2 = -(ln 1/2 + ln 3/2) = -ln(3/4) = 0.2876821
    dpo = torch.tensor([[[0.0, math.log(3.0)]]])
    adv = L.token_advantages(dpo, torch.zeros(1, 1, 2), beta=2.0)
    torch.testing.assert_close(adv, torch.tensor([[[2 * math.log(0.5), 2 * math.log(1.5)]]]))
    assert L.adpa_loss_term(torch.zeros(1, 1, 2), adv, torch.tensor([[1]])).item() == pytest.approx(
        math.log(4 / 3), rel=1e-6
    )


def test_golden_dpo() -> None:
    # margin = (lp_w - lpref_w) - (lp_l - lpref_l) = (-1 + 2) - (-3 + 2) = 2; beta = 0.1 -> z = 0.2
    # -log sigmoid(0.2) = ln(1 + e^-0.2) = ln(1.8187308) = 0.5981389; rewards: 0.1 * 1 = 0.1, 0.1 * -1 = -0.1
    args = (torch.tensor([-1.0]), torch.tensor([-3.0]), torch.tensor([-2.0]), torch.tensor([-2.0]))
    assert L.dpo_loss(*args, beta=0.1).item() == pytest.approx(math.log1p(math.exp(-0.2)), rel=1e-6)
    chosen, rejected = L.dpo_implicit_rewards(*args, beta=0.1)
    assert chosen.item() == pytest.approx(0.1, rel=1e-6) and rejected.item() == pytest.approx(-0.1, rel=1e-6)


def test_golden_reductions() -> None:
    # counted values: sequence 0 -> (1, 2, 3), sequence 1 -> (4,), sequence 2 -> none
    # sequence: mean(mean(1, 2, 3), mean(4)) = (2 + 4) / 2 = 3;  token: (1 + 2 + 3 + 4) / 4 = 2.5
    per_token = torch.tensor([[1.0, 2.0, 3.0], [4.0, 7.0, 9.0], [5.0, 5.0, 5.0]])
    mask = torch.tensor([[True, True, True], [True, False, False], [False, False, False]])
    assert L.masked_reduce(per_token, mask, "sequence").item() == 3.0
    assert L.masked_reduce(per_token, mask, "token").item() == 2.5


def test_golden_topk_forms() -> None:
    # teacher logits (ln 2, 0, 0): p_T = (1/2, 1/4, 1/4); cache k = 1: id 0 with log(1/2), rest mass 1/2.
    # student logits 0: p_S = 1/3 each, its rest 2/3.
    # KL = 1/2 ln((1/2)/(1/3)) + 1/2 ln((1/2)/(2/3)) = 1/2 ln(3/2 * 3/4) = 1/2 ln(9/8) = 0.0588915
    # ADPA with A_0 = 1 and A_rest = -2: -(1/3 * 1 + 2/3 * -2) = 1
    student, ids, labels = torch.zeros(1, 1, 3), torch.tensor([[[0]]]), torch.tensor([[2]])
    t_logps = torch.tensor([[[math.log(0.5)]]])
    kl = L.topk_forward_kl_loss(student, ids, t_logps, labels)
    assert kl.item() == pytest.approx(0.5 * math.log(9 / 8), rel=1e-6)
    adpa = L.topk_adpa_loss_term(student, ids, torch.tensor([[[1.0]]]), labels, torch.tensor([[-2.0]]))
    assert adpa.item() == pytest.approx(1.0, rel=1e-6)


# ---------------------------------------------------------------- limiting cases


def test_identical_teacher_and_student_give_zero_kl() -> None:
    c = make_case((3, 7, 11), seed=11)
    out, grad = value_and_grad(lambda s: L.forward_kl_loss(s, c.teacher, c.labels), c.teacher)
    assert out.item() == 0.0
    assert grad.abs().max() < 1e-7
    full = full_vocab_topk(c)
    out, grad = value_and_grad(
        lambda s: L.topk_forward_kl_loss(s, full.ids, full.t_logps, c.labels), c.teacher
    )
    assert abs(out.item()) < 1e-6 and grad.abs().max() < 1e-6


def test_dpo_equal_to_reference_gives_zero_advantage() -> None:
    c = make_case((3, 7, 11), seed=12)
    adv = L.token_advantages(c.teacher, c.teacher.clone(), beta=1.7)
    assert (adv == 0).all()
    assert L.adpa_loss_term(c.student, adv, c.labels).item() == 0.0


@pytest.mark.parametrize("permute", [False, True])
def test_topk_with_k_equal_v_matches_exact(permute: bool) -> None:
    c = make_case((3, 7, 11), seed=13)
    full = full_vocab_topk(c)
    if not permute:
        ids = torch.arange(11).expand(3, 7, 11)
        full = replace(full, ids=ids, t_logps=torch.log_softmax(c.teacher, -1), topk_adv=c.adv)
    pairs = [
        (
            lambda s: L.forward_kl_loss(s, c.teacher, c.labels),
            lambda s: L.topk_forward_kl_loss(s, full.ids, full.t_logps, c.labels),
        ),
        (
            lambda s: L.forward_kl_loss(s, c.teacher, c.labels),
            lambda s: L.topk_forward_kl_loss(
                s, full.ids, full.t_logps, c.labels, teacher_rest_logp=full.t_rest
            ),
        ),
        (
            lambda s: L.adpa_loss_term(s, c.adv, c.labels),
            lambda s: L.topk_adpa_loss_term(s, full.ids, full.topk_adv, c.labels),
        ),
        (
            lambda s: L.adpa_loss_term(s, c.adv, c.labels),
            lambda s: L.topk_adpa_loss_term(s, full.ids, full.topk_adv, c.labels, rest_advantage=c.rest_adv),
        ),
    ]
    for exact_fn, topk_fn in pairs:
        exact, exact_grad = value_and_grad(exact_fn, c.student)
        got, got_grad = value_and_grad(topk_fn, c.student)
        torch.testing.assert_close(got, exact, **TOL)
        torch.testing.assert_close(got_grad, exact_grad, **TOL)
    # the teacher's rest mass is 0: the default rest bin is absent and adds exactly nothing
    default = L.topk_forward_kl_per_token(c.student, full.ids, full.t_logps, c.labels)
    explicit = L.topk_forward_kl_per_token(c.student, full.ids, full.t_logps, c.labels, full.t_rest)
    assert torch.equal(default, explicit)


def test_student_rest_mass_is_never_negative() -> None:
    # with k = V the float32 sum of the student's probabilities can exceed 1; the rest bin must stay >= 0, so
    # a positive rest advantage can only lower the term and a negative one only raise it
    c = full_vocab_topk(make_case((3, 7, 11), seed=27))
    big = torch.full(c.labels.shape, 1e6)
    base = L.topk_adpa_per_token(c.student, c.ids, c.topk_adv, c.labels)
    assert (L.topk_adpa_per_token(c.student, c.ids, c.topk_adv, c.labels, big) <= base).all()
    assert (L.topk_adpa_per_token(c.student, c.ids, c.topk_adv, c.labels, -big) >= base).all()


def test_topk_token_advantages_with_k_equal_v_match_full() -> None:
    c = full_vocab_topk(make_case((2, 5, 13), seed=14))
    dpo_logps = torch.log_softmax(c.teacher, -1).gather(-1, c.ids.long())
    ref_logps = torch.log_softmax(c.ref, -1).gather(-1, c.ids.long())
    got = L.topk_token_advantages(dpo_logps, ref_logps, beta=0.4, clip=(-1.0, 1.0))
    exact = L.token_advantages(c.teacher, c.ref, beta=0.4, clip=(-1.0, 1.0)).gather(-1, c.ids.long())
    torch.testing.assert_close(got, exact, **TOL)


@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("name", list(LOSSES))
def test_all_masked_batch_gives_zero_that_backpropagates(name: str, reduction: str) -> None:
    c = make_case((2, 5, 13), seed=15)
    c = replace(c, labels=torch.full_like(c.labels, IGNORE_INDEX))
    student = c.student.clone().requires_grad_(True)
    loss = LOSSES[name](L, student, c, reduction)
    assert loss.item() == 0.0 and loss.grad_fn is not None
    loss.backward()
    assert torch.isfinite(student.grad).all() and (student.grad == 0).all()


def test_masked_reduce_ignores_nan_in_uncounted_positions() -> None:
    per_token = torch.tensor([[1.0, math.nan], [math.inf, 3.0]], requires_grad=True)
    mask = torch.tensor([[True, False], [False, True]])
    for reduction in REDUCTIONS:
        out = L.masked_reduce(per_token, mask, reduction)
        assert out.item() == 2.0
        (grad,) = torch.autograd.grad(out, per_token)
        assert torch.isfinite(grad).all() and grad[0, 1] == 0 and grad[1, 0] == 0


@pytest.mark.parametrize("name", list(LOSSES))
def test_sequence_without_counted_token_does_not_count(name: str) -> None:
    c = make_case((2, 5, 13), seed=16)  # sequence 1 has no counted token
    first = replace(c, **{f.name: getattr(c, f.name)[:1] for f in fields(c)})
    for reduction in REDUCTIONS:
        both = LOSSES[name](L, c.student, c, reduction)
        alone = LOSSES[name](L, first.student, first, reduction)
        torch.testing.assert_close(both, alone, rtol=1e-6, atol=0.0)


def test_sequence_and_token_reductions_differ_on_uneven_batch() -> None:
    c = make_case((2, 5, 13), seed=17)
    labels = torch.tensor([[3, -100, -100, -100, -100], [1, 2, 3, 4, 5]])  # 1 counted token vs 5
    per_token = L.nll_per_token(c.student, labels)  # (B, T)
    by_sequence = (per_token[0, 0] + per_token[1].mean()) / 2
    by_token = per_token.sum() / 6
    torch.testing.assert_close(L.nll_loss(c.student, labels, "sequence"), by_sequence)
    torch.testing.assert_close(L.nll_loss(c.student, labels, "token"), by_token)
    assert not torch.isclose(by_sequence, by_token)


def test_dpo_loss_is_log2_when_policy_equals_reference() -> None:
    logps = torch.tensor([-12.0, -3.5, -40.0])
    rejected = torch.tensor([-9.0, -30.0, -1.0])
    out = L.dpo_loss(logps, rejected, logps.clone(), rejected.clone(), beta=0.1)
    assert out.item() == pytest.approx(math.log(2.0), rel=1e-7)


def test_dpo_reference_gets_no_gradient() -> None:
    pc, pr, rc, rr = (torch.randn(4, requires_grad=True) for _ in range(4))
    L.dpo_loss(pc, pr, rc, rr).backward()
    assert pc.grad is not None and pr.grad is not None and rc.grad is None and rr.grad is None


def test_topk_support_zeroes_everything_outside() -> None:
    c = make_case((3, 7, 11), seed=18)
    full = L.token_advantages(c.teacher, c.ref, beta=1.5)
    for clip in (None, (1e-8, 1 - 1e-8)):  # the reference-code clip: outside the support stays exactly 0
        adv = L.token_advantages(c.teacher, c.ref, beta=1.5, clip=clip, topk=3)
        inside = torch.zeros_like(adv, dtype=torch.bool).scatter_(-1, c.teacher.topk(3, -1).indices, True)
        assert (adv[~inside] == 0).all()
        expected = full if clip is None else full.clamp(*clip)
        torch.testing.assert_close(adv[inside], expected[inside])
    assert torch.equal(L.token_advantages(c.teacher, c.ref, topk=50), L.token_advantages(c.teacher, c.ref))


def test_clip_bounds_advantages() -> None:
    c = make_case((3, 7, 11), seed=19)
    full = L.token_advantages(c.teacher, c.ref)
    clipped = L.token_advantages(c.teacher, c.ref, clip=(-0.3, 0.2))
    assert clipped.min() >= -0.3 and clipped.max() <= 0.2
    assert (clipped == -0.3).any() and (clipped == 0.2).any()
    torch.testing.assert_close(clipped, full.clamp(-0.3, 0.2))


def test_no_reference_ablation() -> None:
    c = make_case((3, 7, 11), seed=20)
    adv = L.token_advantages(c.teacher, None, beta=0.5)
    torch.testing.assert_close(adv, 0.5 * torch.log_softmax(c.teacher, -1))
    assert (adv <= 0).all()


def test_teachers_and_advantages_get_no_gradient() -> None:
    c = make_case((2, 5, 13), seed=21)
    teacher, ref = c.teacher.clone().requires_grad_(True), c.ref.clone().requires_grad_(True)
    adv = L.token_advantages(teacher, ref)
    assert not adv.requires_grad
    t_logps = c.t_logps.clone().requires_grad_(True)
    student = c.student.clone().requires_grad_(True)
    loss = L.forward_kl_loss(student, teacher, c.labels) + L.topk_forward_kl_loss(
        student, c.ids, t_logps, c.labels
    )
    loss.backward()
    assert teacher.grad is None and t_logps.grad is None and student.grad is not None


def test_teacher_zero_probability_tokens() -> None:
    c = make_case((2, 5, 13), seed=22)
    teacher = c.teacher.clone()
    teacher[..., :4] = -math.inf  # tokens the teacher never emits
    out, grad = value_and_grad(lambda s: L.forward_kl_loss(s, teacher, c.labels), c.student)
    exp, exp_grad = value_and_grad(lambda s: R.forward_kl_loss(s, teacher, c.labels), c.student.double())
    torch.testing.assert_close(out.double(), exp, **TOL)
    torch.testing.assert_close(grad.double(), exp_grad, **TOL)
    # the same through a k = V cache whose log-probs hold -inf
    full = full_vocab_topk(replace(c, teacher=teacher))
    got, got_grad = value_and_grad(
        lambda s: L.topk_forward_kl_loss(s, full.ids, full.t_logps, c.labels), c.student
    )
    torch.testing.assert_close(got, out, **TOL)
    torch.testing.assert_close(got_grad, grad, **TOL)


def test_invalid_arguments() -> None:
    with pytest.raises(ValueError, match="reduction"):
        L.masked_reduce(torch.zeros(1, 1), torch.ones(1, 1, dtype=torch.bool), "mean")
    with pytest.raises(ValueError, match="topk"):
        L.token_advantages(torch.zeros(1, 1, 3), None, topk=0)


# ---------------------------------------------------------------- properties


@st.composite
def cases(draw, min_v: int = 2) -> Case:
    shape = (draw(st.integers(1, 3)), draw(st.integers(1, 6)), draw(st.integers(min_v, 17)))
    return make_case(
        shape,
        seed=draw(st.integers(0, 2**16)),
        k=draw(st.integers(1, shape[2])),
        scale=draw(st.floats(0.1, 8.0)),
    )


@PROPERTY
@given(c=cases())
def test_kl_is_nonnegative(c: Case) -> None:
    assert (L.forward_kl_per_token(c.student, c.teacher, c.labels) >= -1e-6).all()
    assert (L.topk_forward_kl_per_token(c.student, c.ids, c.t_logps, c.labels, c.t_rest) >= -1e-6).all()


@PROPERTY
@given(c=cases())
def test_adpa_term_is_bounded_by_the_advantages(c: Case) -> None:
    term = L.adpa_per_token(c.student, c.adv, c.labels)  # (B, T)
    counted = c.labels != IGNORE_INDEX
    slack = 1e-5 * (1 + c.adv.abs().amax(-1))
    assert (term[counted] >= (-c.adv.amax(-1) - slack)[counted]).all()
    assert (term[counted] <= (-c.adv.amin(-1) + slack)[counted]).all()


@PROPERTY
@given(c=cases(), shift_scale=st.floats(-10.0, 10.0))
def test_per_position_logit_shift_invariance(c: Case, shift_scale: float) -> None:
    shift = shift_scale * torch.rand(c.labels.shape + (1,), generator=torch.Generator().manual_seed(0))
    for name in ("nll", "forward_kl", "adpa", "topk_kl"):
        base = PER_TOKEN[name](L, c.student, c)
        moved = PER_TOKEN[name](L, c.student + shift, replace(c, teacher=c.teacher - shift))
        torch.testing.assert_close(moved, base, rtol=1e-4, atol=2e-5)


@PROPERTY
@given(c=cases())
def test_topk_kl_with_k_equal_v_equals_exact_property(c: Case) -> None:
    full = full_vocab_topk(c)
    exact = L.forward_kl_per_token(c.student, c.teacher, c.labels)
    torch.testing.assert_close(
        L.topk_forward_kl_per_token(c.student, full.ids, full.t_logps, c.labels), exact, **TOL
    )


# ---------------------------------------------------------------- dtypes and devices


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("name", list(LOSSES))
def test_low_precision_inputs(name: str, dtype: torch.dtype) -> None:
    c = make_case((3, 7, 11), seed=23)
    low = cast(c, dtype)
    out, grad = value_and_grad(lambda s: LOSSES[name](L, s, low, "sequence"), low.student)
    assert out.dtype == torch.float32 and grad.dtype == dtype and torch.isfinite(grad).all()
    # computed in float32: the same as float32 on the rounded inputs ...
    upcast = cast(low, torch.float32)
    torch.testing.assert_close(out, LOSSES[name](L, upcast.student, upcast, "sequence"), rtol=1e-6, atol=1e-7)
    # ... and within the stated tolerance of float32 on the original inputs
    torch.testing.assert_close(out, LOSSES[name](L, c.student, c, "sequence"), **LOW_PRECISION_TOL)


def test_low_precision_dpo_and_advantages() -> None:
    logps = [torch.randn(4) * 3 - 10 for _ in range(4)]
    out = L.dpo_loss(*(x.bfloat16() for x in logps))
    assert out.dtype == torch.float32
    torch.testing.assert_close(out, L.dpo_loss(*logps), **LOW_PRECISION_TOL)
    c = make_case((2, 5, 13), seed=24)
    adv = L.token_advantages(c.teacher.bfloat16(), c.ref.bfloat16())
    assert adv.dtype == torch.float32


def test_float64_stays_float64() -> None:
    c = cast(make_case((2, 5, 13), seed=25), torch.float64)
    for name, fn in LOSSES.items():
        assert fn(L, c.student, c, "sequence").dtype == torch.float64, name
    assert L.token_advantages(c.teacher, c.ref).dtype == torch.float64


@pytest.mark.gpu
def test_cuda_matches_cpu() -> None:
    c = make_case((3, 7, 11), seed=26)
    on_gpu = replace(c, **{f.name: getattr(c, f.name).cuda() for f in fields(c)})
    for name, fn in LOSSES.items():
        cpu, cpu_grad = value_and_grad(lambda s, fn=fn: fn(L, s, c, "sequence"), c.student)
        gpu, gpu_grad = value_and_grad(lambda s, fn=fn: fn(L, s, on_gpu, "sequence"), on_gpu.student)
        torch.testing.assert_close(gpu.cpu(), cpu, **TOL, msg=name)
        torch.testing.assert_close(gpu_grad.cpu(), cpu_grad, **TOL, msg=name)
