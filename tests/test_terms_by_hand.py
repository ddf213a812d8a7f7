"""adpa_core.terms by hand on one position of a uniform student over V = 4 (probability .25 per token, so
the ADPA term is minus .25 x the advantages at the ids minus .5 x the rest bin's): the rest bin's advantage
where one teacher has no rest mass, its clip, full support reading every cached id, and the online forms
(clip; the no-reference ablation handed a reference it must ignore); the released-code ADPA term with its
probability floors and clipped rest bin.

test_wiring_teacher.py checks the same functions on a cache with both rest bins and a clip that only bounds
the rest bin from below; these are the cases it leaves out.
"""

from __future__ import annotations

import math

import pytest
import torch

from adpa_core.config import ObjectiveConfig
from adpa_core.teacher import TeacherTargets
from adpa_core.terms import term_per_token
from tests import reference as R

LOGITS, LABELS = torch.zeros(1, 1, 4), torch.tensor([[2]])  # the uniform student, one counted position


def _cached(dpo: list[float], ref: list[float], dpo_rest: float, ref_rest: float) -> TeacherTargets:
    """Cached bins at ids 0, 1, ...: the teachers' probabilities there and their rest masses (0: none)."""
    k = len(dpo)
    return TeacherTargets(
        topk_ids=torch.arange(k)[None, None],
        dpo_topk_logps=torch.tensor(dpo).log()[None, None],
        ref_topk_logps=torch.tensor(ref).log()[None, None],
        dpo_rest_logp=torch.tensor([[math.log(dpo_rest) if dpo_rest else -math.inf]]),
        ref_rest_logp=torch.tensor([[math.log(ref_rest) if ref_rest else -math.inf]]),
    )


def _adpa(targets: TeacherTargets, **objective) -> float:
    obj = ObjectiveConfig(method="adpa", **objective)
    return float(term_per_token("adpa", LOGITS, LABELS, targets, obj)[0, 0])


def test_rest_bin_advantage_is_clipped_from_above():
    """p_dpo (.3, .2) rest .5, p_ref (.35, .45) rest .2: A_rest = log 2.5 = 0.92, clipped to 0.2."""
    t = _cached([0.3, 0.2], [0.35, 0.45], 0.5, 0.2)
    a0, a1, rest = math.log(0.3 / 0.35), math.log(0.2 / 0.45), math.log(2.5)
    assert _adpa(t, support="full", k=2) == pytest.approx(-(0.25 * (a0 + a1) + 0.5 * rest), rel=1e-6)
    clipped = -(0.25 * max(a0, -0.5) + 0.25 * max(a1, -0.5) + 0.5 * 0.2)
    assert _adpa(t, support="full", k=2, clip=[-0.5, 0.2]) == pytest.approx(clipped, rel=1e-6)


@pytest.mark.parametrize("without", ["dpo", "ref"])
def test_no_rest_advantage_where_one_teacher_has_no_rest_mass(without):
    """The DPO teacher's top 2 holding all its mass (or the reference's): the rest bin's advantage is 0,
    not log(0 / p) = -inf (or +inf), so only the two ids count."""
    dpo, ref = ([0.6, 0.4], [0.25, 0.25]) if without == "dpo" else ([0.3, 0.2], [0.5, 0.5])
    t = _cached(dpo, ref, 0.0 if without == "dpo" else 0.5, 0.5 if without == "dpo" else 0.0)
    expected = -0.25 * sum(math.log(d / r) for d, r in zip(dpo, ref, strict=True))
    assert _adpa(t, support="full", k=2) == pytest.approx(expected, rel=1e-6)


def test_full_support_reads_every_cached_id_whatever_k():
    """A complete cache (4 ids of V = 4, no rest) under full support with objective.k = 2: all four ids."""
    dpo, ref = [0.4, 0.3, 0.2, 0.1], [0.1, 0.2, 0.3, 0.4]
    t = _cached(dpo, ref, 0.0, 0.0)
    expected = -0.25 * sum(math.log(d / r) for d, r in zip(dpo, ref, strict=True))
    assert _adpa(t, support="full", k=2) == pytest.approx(expected, rel=1e-6)
    assert _adpa(t, support="topk", k=2) == pytest.approx(-0.25 * math.log(4 * 1.5), rel=1e-6)


def _online(seed: int = 0) -> tuple[torch.Tensor, TeacherTargets]:
    g = torch.Generator().manual_seed(seed)
    student, dpo, ref = (torch.randn(2, 3, 6, generator=g) * 2 for _ in range(3))
    return student, TeacherTargets(dpo_logits=dpo, ref_logits=ref)


@pytest.mark.parametrize("support", ["full", "topk"])
def test_online_advantages_are_clipped(support):
    student, t = _online()
    labels = torch.tensor([[1, 2, -100], [3, 4, 5]])
    obj = ObjectiveConfig(method="adpa", support=support, k=3, beta=2.0, clip=[-0.3, 0.2])
    topk = 3 if support == "topk" else None
    adv = R.token_advantages(t.dpo_logits, t.ref_logits, beta=2.0, clip=[-0.3, 0.2], topk=topk)
    want = R.adpa_per_token(student.double(), adv, labels)
    got = term_per_token("adpa", student, labels, t, obj)
    torch.testing.assert_close(got.double(), want, rtol=1e-5, atol=1e-6)


def test_no_reference_ablation_ignores_a_reference_it_is_handed():
    """use_reference=false: A = beta log p_dpo even when the targets carry reference logits."""
    student, t = _online(1)
    labels = torch.tensor([[1, 2, 3], [3, 4, 5]])
    obj = ObjectiveConfig(method="adpa", support="full", use_reference=False, beta=2.0)
    want = R.adpa_per_token(student.double(), R.token_advantages(t.dpo_logits, None, beta=2.0), labels)
    got = term_per_token("adpa", student, labels, t, obj)
    torch.testing.assert_close(got.double(), want, rtol=1e-5, atol=1e-6)


def test_released_adpa_with_probability_floors_counts_the_clipped_rest_bin():
    """released_code.prob_floors: the student's k + 1 bins, the rest bin with advantage clip(0). p_dpo (.5,
    .3), p_ref (.25, .25): A = log 2, log 1.2, clipped to [0.2, 1]: 0.69, 0.2, and 0.2 for the rest bin."""
    t = _cached([0.5, 0.3], [0.25, 0.25], 0.2, 0.5)
    obj = {"support": "topk", "k": 2, "clip": [0.2, 1.0], "released_code": {"prob_floors": True}}
    expected = -(0.25 * math.log(2.0) + 0.25 * 0.2 + 0.5 * 0.2)
    assert _adpa(t, **obj) == pytest.approx(expected, rel=1e-6)
    exact = -(0.25 * math.log(2.0) + 0.25 * 0.2)  # the exact top-k form: no rest bin
    assert _adpa(t, **{**obj, "released_code": {}}) == pytest.approx(exact, rel=1e-6)


def test_kl_uses_the_stored_rest_bin_and_is_zero_where_not_counted():
    """The cache's stored rest mass (.1 here) is used as given, not 1 - .5 - .3 from the stored ids (a cache
    rounds the log-probs it stores, not the rest it computed before); an uncounted position gives 0."""
    t = _cached([0.5, 0.3], [0.25, 0.25], 0.1, 0.5)
    obj = ObjectiveConfig(method="kd")
    kl = 0.5 * math.log(0.5 / 0.25) + 0.3 * math.log(0.3 / 0.25) + 0.1 * math.log(0.1 / 0.5)
    assert float(term_per_token("kl_chosen", LOGITS, LABELS, t, obj)[0, 0]) == pytest.approx(kl, rel=1e-6)
    two = TeacherTargets(**{f: torch.cat([v, v], dim=1) for f, v in vars(t).items() if v is not None})
    got = term_per_token("kl_chosen", torch.zeros(1, 2, 4), torch.tensor([[2, -100]]), two, obj)
    assert got[0, 1].item() == 0.0 and got[0, 0].item() == pytest.approx(kl, rel=1e-6)


def test_advantage_floor_alone_takes_the_released_form():
    """released_code.advantage_floor: probabilities below 1e-7 are floored before the log ratio, so a
    reference probability of 1e-9 counts as 1e-7."""
    t = _cached([0.5, 0.3], [1e-9, 0.25], 0.2, 0.75 - 1e-9)
    obj = {"support": "topk", "k": 2, "released_code": {"advantage_floor": True}}
    expected = -0.25 * (math.log(0.5 / 1e-7) + math.log(0.3 / 0.25))
    assert _adpa(t, **obj) == pytest.approx(expected, rel=1e-6)


def test_full_support_keeps_its_exact_form_under_released_switches():
    """The released-code ADPA form is top-k only: under full support the exact k + 1-bin form stays, with
    the positions without teacher data (released_code.eos_without_teacher) at 0."""
    t = _cached([0.5, 0.3], [0.25, 0.25], 0.2, 0.5)
    full = -(0.25 * math.log(2.0) + 0.25 * math.log(1.2) + 0.5 * math.log(0.4))
    obj = ObjectiveConfig(method="adpa", support="full", k=2, released_code={"prob_floors": True})
    assert float(term_per_token("adpa", LOGITS, LABELS, t, obj)[0, 0]) == pytest.approx(full, rel=1e-6)
    two = TeacherTargets(**{f: torch.cat([v, v], dim=1) for f, v in vars(t).items() if v is not None})
    empty = torch.tensor([[False, True]])
    got = term_per_token("adpa", torch.zeros(1, 2, 4), torch.tensor([[2, 3]]), two, obj, empty)
    assert got[0, 1].item() == 0.0 and got[0, 0].item() == pytest.approx(full, rel=1e-6)
