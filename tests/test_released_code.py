"""`preset: reference-code` against the float64 loop transcription of the released code (tests/reference.py):
values and gradients of whole steps (micro-batches of several sequences) through `loss_step`, online and
from a top-k cache, with every switch on and with each one off."""

from __future__ import annotations

import math
from types import SimpleNamespace

import pytest
import torch
from torch import Tensor, nn

from adpa_core import losses_released as LR
from adpa_core import objectives as O
from adpa_core.config import RELEASED_SWITCHES, STUDENT_GROUPS, ObjectiveConfig
from adpa_core.losses import IGNORE_INDEX
from adpa_core.teacher import TeacherTargets
from tests import reference as R

V, K, T = 64, 50, 7  # the preset's k = 50 needs V > 50 for a rest bin
EOT = 5
TOL = {"rtol": 1e-6, "atol": 1e-6}
CASES = ("confident_student", "reference_topk_differs", "tail_below_floor", "mixed")


def _logits(case: str, role: str, n: int, g: torch.Generator, dpo: Tensor | None = None) -> Tensor:
    """(n, T, V) float64 logits for one group; `role` is student (given the DPO teacher's), dpo or ref."""
    x = torch.randn(n, T, V, generator=g, dtype=torch.float64)
    kind = (
        [case] * n if case != "mixed" else ["confident_student", "reference_topk_differs", "tail_below_floor"]
    )
    for b in range(n):
        if role == "student" and kind[b % len(kind)] == "confident_student":
            far = dpo[b].argmin(-1, keepdim=True)  # (T, 1) the teacher's least likely token
            x[b].scatter_add_(-1, far, torch.full((T, 1), 40.0, dtype=torch.float64))
        if role != "student" and kind[b % len(kind)] == "tail_below_floor":
            x[b] *= 7.0  # most top-50 probabilities below 1e-7, for both teachers
    return x


def make_micro_batches(case: str, method: str, n_mb: int = 2, n_seq: int = 3, seed: int = 0):
    """Micro-batches of `n_seq` sequences each: uneven lengths, prompt and padding at -100, most sequences
    closed by the end-of-turn label, one truncated (no end-of-turn)."""
    g = torch.Generator().manual_seed(seed)
    groups = STUDENT_GROUPS[method]
    out = []
    for m in range(n_mb):
        mb = {}
        for group in groups:
            labels = torch.randint(7, V, (n_seq, T), generator=g)
            for b in range(n_seq):
                start, end = 1 + (b + m) % 2, T - (b % 3)  # counted positions [start, end)
                labels[b, :start] = IGNORE_INDEX
                labels[b, end:] = IGNORE_INDEX
                if (b + m) % 3 != 2:
                    labels[b, end - 1] = EOT
            dpo = _logits(case, "dpo", n_seq, g)
            ref = dpo + 2.0 * torch.randn(dpo.shape, generator=g, dtype=torch.float64)
            if case in ("reference_topk_differs", "mixed"):
                ref = _logits(case, "ref", n_seq, g)  # an unrelated reference: other top-k ids
            student = _logits(case, "student", n_seq, g, dpo)
            mb[group] = {"student": student, "labels": labels, "dpo": dpo, "ref": ref}
        out.append(mb)
    return out


class FakeStudent(nn.Module):
    """Returns given logits (G*B, T, V) as its output, so gradients land on them."""

    def __init__(self, logits: Tensor):
        super().__init__()
        self.logits = nn.Parameter(logits.clone())

    def forward(self, input_ids=None, attention_mask=None, position_ids=None):
        return SimpleNamespace(logits=self.logits)


class FakeTeacher:
    """Online teacher logits, or a top-k cache built here from them (independently of the library)."""

    def __init__(self, mb: dict, cached: bool, k: int = K):
        self.mb, self.cached, self.k = mb, cached, k

    def targets(self, batch, group, need_ref):
        dpo, ref = self.mb[group]["dpo"], self.mb[group]["ref"]
        if not self.cached:
            return TeacherTargets(dpo_logits=dpo, ref_logits=ref if need_ref else None)
        log_dpo, log_ref = torch.log_softmax(dpo, -1), torch.log_softmax(ref, -1)
        top, ids = log_dpo.topk(self.k, dim=-1)
        at = log_ref.gather(-1, ids)
        rest = lambda lp: torch.log(1.0 - lp.exp().sum(-1))  # noqa: E731
        return TeacherTargets(
            topk_ids=ids,
            dpo_topk_logps=top,
            ref_topk_logps=at,
            dpo_rest_logp=rest(top),
            ref_rest_logp=rest(at),
            ref_topk_ids=log_ref.topk(self.k, dim=-1).indices,
        )

    def row_targets(self, batch, group, need_ref, mask):
        full = self.targets(batch, group, need_ref)
        rows = {f: v[mask] for f, v in vars(full).items() if v is not None}  # (N, ...)
        return lambda start, end: TeacherTargets(**{f: v[None, start:end] for f, v in rows.items()})


class FakeLM(FakeStudent):
    """Also serves the chunked path: final hidden states = the given logits, output layer = identity."""

    def __init__(self, logits: Tensor):
        super().__init__(logits)
        self.head = nn.Linear(V, V, bias=False, dtype=torch.float64)
        nn.init.eye_(self.head.weight)

    def forward(self, input_ids=None, attention_mask=None, position_ids=None, **kwargs):
        return SimpleNamespace(logits=self.head(self.logits), hidden_states=(self.logits,))

    def get_output_embeddings(self) -> nn.Linear:
        return self.head


def library_step(mbs, method: str, obj: ObjectiveConfig, cached: bool, chunk: int | None = None):
    """The step loss through `loss_step` (norms over all micro-batches, as train does) and each micro-batch's
    student-logit gradient; `chunk`: the chunked path with that chunk size."""
    groups = STUDENT_GROUPS[method]
    batches = []
    for mb in mbs:
        labels = torch.cat([mb[g]["labels"] for g in groups])
        n = mb[groups[0]]["labels"].shape[0]
        batches.append(
            {"ids": [f"e{i}" for i in range(n)], "input_ids": labels.clamp(min=0), "labels": labels}
        )
    norms: dict[str, float] = {}
    for b in batches:
        for key, value in O.counts(b, groups, obj).items():
            norms[key] = norms.get(key, 0.0) + value
    total, grads = 0.0, []
    for mb, batch in zip(mbs, batches, strict=True):
        student = FakeLM(torch.cat([mb[g]["student"] for g in groups]))
        head = student.head if chunk else None
        ctx = O.StepContext(student, obj, V, FakeTeacher(mb, cached), None, chunk, head, EOT)
        loss, _ = O.loss_step(ctx, batch, norms)
        loss.backward()
        total += float(loss.detach())
        grads.append(student.logits.grad)
    return total, grads


def reference_step(mbs, method: str, switches: dict, cached: bool, **kwargs):
    groups = STUDENT_GROUPS[method]
    leaves = []
    for mb in mbs:
        leaf = torch.cat([mb[g]["student"] for g in groups]).clone().requires_grad_(True)
        leaves.append(leaf)
        for g, part in zip(groups, leaf.chunk(len(groups)), strict=True):
            mb[g] = {**mb[g], "student": part}
    loss = R.released_objective(mbs, method, switches, k=K, eot=EOT, cached=cached, **kwargs)
    loss.backward()
    return float(loss.detach()), [leaf.grad for leaf in leaves]


def objective(method: str, off: str | None = None, beta: float = 1.0) -> ObjectiveConfig:
    released = {off: False} if off else {}
    return ObjectiveConfig(method=method, preset="reference-code", released_code=released, beta=beta)


def assert_matches(mbs, method: str, off: str | None, cached: bool, beta: float = 1.0) -> float:
    switches = {name: name != off for name in RELEASED_SWITCHES}
    want, want_grads = reference_step([dict(mb) for mb in mbs], method, switches, cached, beta=beta)
    got, grads = library_step(mbs, method, objective(method, off, beta), cached)
    assert got == pytest.approx(want, rel=1e-6, abs=1e-6)
    for g, w in zip(grads, want_grads, strict=True):
        torch.testing.assert_close(g, w, **TOL)
    return got


# ---------------------------------------------------------------- the cases exercise what they claim


def _probs(x: Tensor) -> Tensor:
    return torch.softmax(x, -1)


def test_cases_exercise_the_released_details():
    conf = make_micro_batches("confident_student", "adpa")[0]["yhat"]
    top = _probs(conf["dpo"]).topk(K, -1).indices
    assert (_probs(conf["student"]).gather(-1, top) < 1e-7).float().mean() > 0.9  # floors bite
    diff = make_micro_batches("reference_topk_differs", "adpa")[0]["yhat"]
    dpo_ids, ref_ids = _probs(diff["dpo"]).topk(K, -1).indices, _probs(diff["ref"]).topk(K, -1).indices
    assert not LR.in_topk(dpo_ids, ref_ids).all()  # some DPO ids need imputation
    tail = make_micro_batches("tail_below_floor", "adpa")[0]["yhat"]
    p_dpo = _probs(tail["dpo"]).topk(K, -1).values
    p_ref_at = _probs(tail["ref"]).gather(-1, _probs(tail["dpo"]).topk(K, -1).indices)
    assert ((p_dpo < 1e-7) & (p_ref_at < 1e-7)).any()  # both below the floor: advantage 0
    labels = tail["labels"]
    assert LR.no_teacher_positions(labels, EOT).sum() >= 2 and (labels == EOT).sum() < labels.shape[0]


# ---------------------------------------------------------------- the preset equals the released code


@pytest.mark.parametrize("cached", [False, True], ids=["online", "cache"])
@pytest.mark.parametrize("method", ["adpa", "dckd"])
@pytest.mark.parametrize("case", CASES)
def test_preset_matches_released_code(case, method, cached):
    assert_matches(make_micro_batches(case, method), method, None, cached)


SWITCH_METHOD = {  # where each switch acts
    "prob_floors": "dckd",
    "reference_imputation": "adpa",
    "advantage_floor": "adpa",
    "eos_without_teacher": "adpa",
    "micro_batch_mean": "dckd",
    "kl_topk_online": "dckd",
    "unit_beta": "adpa",
}


@pytest.mark.parametrize("off", RELEASED_SWITCHES)
def test_each_switch_off_matches_and_matters(off):
    """With one switch off the library still equals the transcription with that detail off, and the step
    loss differs from the full preset's: every switch does something."""
    method = SWITCH_METHOD[off]
    mbs = make_micro_batches("mixed", method, seed=3)
    beta = 0.5 if off == "unit_beta" else 1.0  # off: objective.beta scales the advantage again
    full = assert_matches(mbs, method, None, cached=False)
    without = assert_matches(mbs, method, off, cached=False, beta=beta)
    assert abs(full - without) > 1e-6


def test_prob_floors_and_eos_also_act_on_adpa():
    mbs = make_micro_batches("mixed", "adpa", seed=4)
    for off in ("prob_floors", "eos_without_teacher", "micro_batch_mean"):
        assert_matches(mbs, "adpa", off, cached=True)


def test_all_switches_off_is_the_exact_library():
    """Every switch off (and no clip): the released-code functions reduce to the exact top-k forms."""
    mbs = make_micro_batches("mixed", "adpa", seed=5)
    off = {name: False for name in RELEASED_SWITCHES}
    obj = ObjectiveConfig(method="adpa", support="topk", k=K, gamma=1.6, released_code=off)
    got, _ = library_step(mbs, "adpa", obj, cached=True)
    want, _ = reference_step([dict(mb) for mb in mbs], "adpa", off, cached=True, clip=None)
    assert got == pytest.approx(want, rel=1e-6, abs=1e-6)


def test_eos_value_is_the_floors_constant_without_gradient():
    """Without teacher data the released KL is (K + 1) 1e-8 log(1e-8 / 1e-7) for any student."""
    g = torch.Generator().manual_seed(0)
    student = torch.randn(1, 2, V, generator=g, dtype=torch.float64, requires_grad=True)
    ids = torch.arange(K).expand(1, 2, K)
    logps = torch.log_softmax(torch.randn(1, 2, V, generator=g, dtype=torch.float64), -1)[..., :K]
    labels = torch.tensor([[9, EOT]])
    empty = LR.no_teacher_positions(labels, EOT)
    per = LR.released_kl_per_token(student, ids, logps, labels, floors=True, no_teacher=empty)
    assert float(per[0, 1]) == pytest.approx((K + 1) * 1e-8 * math.log(0.1), rel=1e-12)
    per[0, 1].backward()
    assert torch.all(student.grad == 0)


@pytest.mark.parametrize("cached", [False, True], ids=["online", "cache"])
@pytest.mark.parametrize("method", ["adpa", "dckd"])
def test_chunked_path_equals_full_logits(method, cached):
    """The chunked path (rows of counted positions, float32 chunks of 4) gives the full path's step."""
    mbs = make_micro_batches("mixed", method, seed=6)
    obj = objective(method)
    full, full_grads = library_step(mbs, method, obj, cached)
    chunked, grads = library_step(mbs, method, obj, cached, chunk=4)
    assert chunked == pytest.approx(full, rel=1e-5)
    for g, w in zip(grads, full_grads, strict=True):
        torch.testing.assert_close(g, w, rtol=1e-4, atol=1e-7)


def test_the_clip_still_pushes_disliked_tokens_down():
    """docs/RESULTS.md: under the clip a negative advantage gives no direct push, but a gradient step still
    moves mass off every token below the student's mean clipped advantage, disliked and neutral alike."""
    from adpa_core import losses as L

    adv = torch.tensor([[[2.0, 0.3, -5.0, 0.0]]], dtype=torch.float64)  # liked, mild, disliked, neutral
    clipped = adv.clamp(1e-8, 1 - 1e-8)
    logits = torch.zeros(1, 1, 4, dtype=torch.float64, requires_grad=True)
    L.adpa_per_token(logits, clipped, torch.tensor([[0]])).sum().backward()
    grad = logits.grad[0, 0]  # descent lowers a logit whose gradient is positive
    assert grad[0] < 0 and grad[2] > 0 and grad[3] > 0
    assert grad[2] == pytest.approx(float(grad[3]), rel=1e-6)  # -5 pushed down no harder than 0
    logits.grad = None
    L.adpa_per_token(logits, adv, torch.tensor([[0]])).sum().backward()
    assert logits.grad[0, 0, 2] > 3 * logits.grad[0, 0, 3]  # unclipped: the disliked token pushed harder
