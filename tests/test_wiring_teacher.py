"""Wiring of the teacher-guided objectives on their non-default paths, against independent values.

The loss functions are tested in test_losses.py against float64 loops. Here the question is whether the
training loop hands them the right things: no reference teacher in the no-reference ablation (online, and
from a cache that holds one), the right bins of a top-k cache at k < V (top-k support, and full support with
its rest bin), the DCKD student and its own replies in ADPA+. Each expected loss comes from the models' logits
through tests/reference.py (float64 loops over positions and vocabulary), or by hand.
"""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from adpa_core.config import ObjectiveConfig
from adpa_core.generate import generate, read_generations_jsonl
from adpa_core.models import load_models
from adpa_core.prepare import load_rows
from adpa_core.run_models import load_run_model
from adpa_core.teacher import TeacherTargets, build_teacher_cache
from adpa_core.terms import term_per_token
from adpa_core.train import run_training, train
from tests import reference as R
from tests.trainkit import build_world, group_logits, make_cfg, step_rows, yhat_rows

ADPA = {"gamma": 0.7, "beta": 2.0, "max_new_tokens": 6}
VOCAB = 64  # tests/tiny.py's tokenizer


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> dict[str, str]:
    return build_world(tmp_path_factory.mktemp("world"))


def _first_loss(cfg) -> float:
    """The loss of the first optimizer step (the initial weights on the first batch)."""
    (record,) = list(train(cfg))  # max_steps 1
    return record["loss"]


def _cache_cfg(world, tmp_path: Path, method: str, objective: dict, **sections):
    cache = {"teacher_source": "cache", "teacher_cache": str(tmp_path / "cache")}
    return make_cfg(world, tmp_path, method, objective={"method": method, **objective, **cache}, **sections)


def _expected_adpa(cfg, student, adpa_per_token) -> float:
    """nll(chosen) + gamma * ADPA term on the run's y_hat, both from `student` on the first batch;
    `adpa_per_token(student_logits, dpo_logits, ref_logits, labels)` -> (B, T) float64."""
    tokenizer, _, pair = load_models(cfg.model, device="cpu")
    pad = tokenizer.pad_token_id
    rows = step_rows(cfg, load_rows(cfg, tokenizer))
    s_c, lab_c = group_logits(student, rows, "chosen", pad)
    with_yhat = yhat_rows(cfg.run_dir, rows)
    s_y, lab_y = group_logits(student, with_yhat, "yhat", pad)
    dpo_y, ref_y = (group_logits(m, with_yhat, "yhat", pad)[0] for m in (pair.dpo, pair.ref))
    per_token = adpa_per_token(s_y, dpo_y, ref_y, lab_y)
    adpa = R.masked_reduce(per_token, lab_y != R.IGNORE_INDEX)
    return float(R.nll_loss(s_c, lab_c) + cfg.objective.gamma * adpa)


def _student(cfg):
    return load_models(cfg.model, device="cpu", teachers=False)[1]


def _full(beta: float, with_ref: bool = True):
    def fn(s, dpo, ref, labels):
        return R.adpa_per_token(s, R.token_advantages(dpo, ref if with_ref else None, beta=beta), labels)

    return fn


# ---------------------------------------------------------------- the no-reference ablation


@pytest.mark.parametrize("source", ["online", "cache"])
def test_no_reference_ablation_never_reads_the_reference_teacher(world, tmp_path, source):
    """Advantage = beta log pi_dpo, although a reference teacher is configured (online) or cached."""
    obj = {"method": "adpa", **ADPA, "support": "full", "use_reference": False}
    if source == "online":
        cfg = make_cfg(world, tmp_path, "adpa", objective=obj, train={"max_steps": 1})
    else:  # a complete cache (k = V) that holds the reference teacher too
        with_ref = _cache_cfg(world, tmp_path, "adpa", {**obj, "use_reference": True, "k": VOCAB}, name="c")
        assert build_teacher_cache(with_ref, logp_dtype="float32")["has_reference"]
        cfg = _cache_cfg(world, tmp_path, "adpa", {**obj, "k": VOCAB}, train={"max_steps": 1})
    assert cfg.model.teacher_ref is not None
    got = _first_loss(cfg)
    student = _student(cfg)
    expected = _expected_adpa(cfg, student, _full(2.0, with_ref=False))
    assert got == pytest.approx(expected, rel=1e-5, abs=1e-6)
    with_reference = _expected_adpa(cfg, student, _full(2.0))
    assert abs(with_reference - expected) > 1e-2  # the test can tell the two advantages apart


# ---------------------------------------------------------------- top-k caches at k < V


@pytest.mark.parametrize(
    ("support", "clip"), [("topk", None), ("full", None), ("full", [-0.3, 0.2])], ids=["topk", "full", "clip"]
)
def test_adpa_from_a_cache_of_k_below_v(world, tmp_path, support, clip):
    """Cache of the DPO teacher's top 8 of 64 tokens. Top-k support reads its first 5 (k = 5 <= 8): the
    advantage is 0 elsewhere, as online. Full support reads all 8 plus the rest bin."""
    obj = {"method": "adpa", **ADPA, "support": support, "k": 8, "clip": clip}
    build_teacher_cache(_cache_cfg(world, tmp_path, "adpa", obj, name="c"), logp_dtype="float32")
    k = 5 if support == "topk" else 8
    cfg = _cache_cfg(world, tmp_path, "adpa", {**obj, "k": k}, train={"max_steps": 1})
    got = _first_loss(cfg)
    student = _student(cfg)
    if support == "topk":

        def fn(s, dpo, ref, labels):
            return R.adpa_per_token(s, R.token_advantages(dpo, ref, beta=2.0, topk=5), labels)

    else:

        def fn(s, dpo, ref, labels):
            return R.cached_full_adpa_per_token(s, dpo, ref, labels, k=8, beta=2.0, clip=clip)

    expected = _expected_adpa(cfg, student, fn)
    assert got == pytest.approx(expected, rel=1e-5, abs=1e-6)
    if support == "full" and clip is None:  # the rest bin matters here: its sign or value can be checked
        without_rest = _expected_adpa(
            cfg, student, lambda s, d, r, lab: R.adpa_per_token(s, R.token_advantages(d, r, 2.0, topk=8), lab)
        )
        assert abs(without_rest - expected) > 1e-2


def test_dckd_from_a_cache_of_k_below_v(world, tmp_path):
    """Both KL terms over the teacher's top 8 of 64 tokens and the rest bin."""
    obj = {"w_kl_chosen": 0.3, "w_kl_rejected": 0.2, "k": 8}
    cfg = _cache_cfg(world, tmp_path, "dckd", obj, train={"max_steps": 1})
    build_teacher_cache(cfg, logp_dtype="float32")
    got = _first_loss(cfg)
    tokenizer, student, pair = load_models(cfg.model, device="cpu")
    rows = step_rows(cfg, load_rows(cfg, tokenizer))
    expected = 0.0
    for group, weight in (("chosen", 0.3), ("rejected", 0.2)):
        s, labels = group_logits(student, rows, group, tokenizer.pad_token_id)
        t = group_logits(pair.dpo, rows, group, tokenizer.pad_token_id)[0]
        mask = labels != R.IGNORE_INDEX
        expected += weight * float(R.masked_reduce(R.cached_kl_per_token(s, t, labels, 8), mask))
        if group == "chosen":
            expected += float(R.nll_loss(s, labels))
    assert got == pytest.approx(expected, rel=1e-5, abs=1e-6)


def _hand_targets(with_ref_rest: bool = True) -> TeacherTargets:
    """One position, V = 4: p_dpo = (.5, .3, .1, .1), p_ref uniform; a cache of the DPO teacher's top 2."""
    dpo, ref = torch.tensor([0.5, 0.3, 0.1, 0.1]).log(), torch.full((4,), 0.25).log()
    return TeacherTargets(
        topk_ids=torch.tensor([[[0, 1]]]),
        dpo_topk_logps=dpo[None, None, :2],
        ref_topk_logps=ref[None, None, :2],
        dpo_rest_logp=torch.tensor([[math.log(0.2)]]),  # 1 - .5 - .3
        ref_rest_logp=torch.tensor([[math.log(0.5)]]),  # 1 - .25 - .25
    )


def _hand_term(term: str, targets: TeacherTargets, **objective) -> float:
    logits, labels = torch.zeros(1, 1, 4), torch.tensor([[2]])  # a uniform student
    obj = ObjectiveConfig(method="adpa", **objective)
    return float(term_per_token(term, logits, labels, targets, obj)[0, 0])


def test_rest_bin_of_a_cache_by_hand():
    """Cached ids 0 and 1 have advantages log(.5/.25) = log 2 and log(.3/.25) = log 1.2 (beta 1). The rest
    bin holds .2 of the DPO teacher and .5 of the reference: A_rest = log(.2/.5) = log .4, NEGATIVE (the
    aligned teacher took mass away from those tokens). The uniform student puts .25, .25 and .5 on the three
    bins; the ADPA term is minus its expected advantage."""
    t = _hand_targets()
    log2, log12, log04 = math.log(2.0), math.log(1.2), math.log(0.4)
    full = -(0.25 * log2 + 0.25 * log12 + 0.5 * log04)
    assert full == pytest.approx(0.239278, abs=1e-6)  # the negative rest bin outweighs the two ids
    assert _hand_term("adpa", t, support="full", k=2) == pytest.approx(full, rel=1e-6)
    assert _hand_term("adpa", t, support="full", k=2, beta=3.0) == pytest.approx(3 * full, rel=1e-6)
    clipped = -(0.25 * 0.5 + 0.25 * log12 + 0.5 * -0.5)  # clip [-0.5, 0.5] bounds log 2 and the rest bin
    assert _hand_term("adpa", t, support="full", k=2, clip=[-0.5, 0.5]) == pytest.approx(clipped, rel=1e-6)
    # top-k support: advantage 0 outside the ids, no rest bin; k = 1 reads only the first cached id
    assert _hand_term("adpa", t, support="topk", k=2) == pytest.approx(
        -(0.25 * log2 + 0.25 * log12), rel=1e-6
    )
    assert _hand_term("adpa", t, support="topk", k=1) == pytest.approx(-0.25 * log2, rel=1e-6)
    # the KL terms use the DPO teacher's bins: sum_k p log(p / q) over the ids and the rest bin
    kl = 0.5 * math.log(0.5 / 0.25) + 0.3 * math.log(0.3 / 0.25) + 0.2 * math.log(0.2 / 0.5)
    assert _hand_term("kl_chosen", t) == pytest.approx(kl, rel=1e-6)
    assert _hand_term("kl_rejected", t) == pytest.approx(kl, rel=1e-6)


def test_no_reference_ablation_from_a_complete_cache_by_hand():
    """k = V: A = beta log p_dpo for every token, even though the cache holds the reference's log-probs."""
    p = [0.5, 0.3, 0.1, 0.1]
    t = TeacherTargets(
        topk_ids=torch.tensor([[[0, 1, 2, 3]]]),
        dpo_topk_logps=torch.tensor(p).log()[None, None],
        ref_topk_logps=torch.full((1, 1, 4), 0.25).log(),
        dpo_rest_logp=torch.tensor([[-math.inf]]),
        ref_rest_logp=torch.tensor([[-math.inf]]),
    )
    expected = -sum(0.25 * 2.0 * math.log(x) for x in p)
    got = _hand_term("adpa", t, support="full", k=4, beta=2.0, use_reference=False)
    assert got == pytest.approx(expected, rel=1e-6)


# ---------------------------------------------------------------- ADPA+ from a DCKD run


def test_adpa_plus_starts_from_the_dckd_run_and_its_replies(world, tmp_path):
    dckd = make_cfg(
        world,
        tmp_path,
        "dckd",
        name="dckd",
        train={"max_steps": 6, "learning_rate": 2e-2, "lr_schedule": "constant"},
    )
    run_training(dckd, progress=False)
    plus = make_cfg(
        world,
        tmp_path,
        "adpa_plus",
        name="plus",
        model={"student": str(dckd.run_dir)},
        objective={"method": "adpa_plus", **ADPA, "k": 9},
        train={"max_steps": 1},
    )
    got = _first_loss(plus)
    trained, tokenizer = load_run_model(dckd.run_dir)
    start = load_run_model(dckd.run_dir, "initial")[0]
    rows = load_rows(plus, tokenizer)
    prompts = [r["prompt_input_ids"] for r in rows]
    yhat = read_generations_jsonl(plus.run_dir / "generations" / "yhat.jsonl")
    replies = {
        name: [g.token_ids for g in generate(m, tokenizer, prompts, max_new_tokens=6, progress=False)]
        for name, m in (("trained", trained), ("start", start))
    }
    assert [yhat[r["id"]]["token_ids"] for r in rows] == replies["trained"]  # y_hat: the DCKD student's
    assert replies["trained"] != replies["start"]  # DCKD changed the replies: the check can tell

    def topk9(s, dpo, ref, labels):
        return R.adpa_per_token(s, R.token_advantages(dpo, ref, beta=2.0, topk=9), labels)

    expected = _expected_adpa(plus, trained, topk9)
    assert got == pytest.approx(expected, rel=1e-5, abs=1e-6)
    assert abs(_expected_adpa(plus, start, topk9) - expected) > 1e-3  # the initial student: another loss


def test_cached_adpa_without_what_it_needs_is_refused():
    """A cache without the reference teacher's log-probs (exact and released-code forms), and released-code
    reference imputation without the reference's own top-k ids."""
    t = _hand_targets()
    t.ref_topk_logps = None
    message = r"^the teacher cache holds no reference teacher log-probs; ADPA needs them$"
    with pytest.raises(ValueError, match=message):
        _hand_term("adpa", t, support="full", k=2)
    with pytest.raises(ValueError, match=message):
        _hand_term("adpa", t, support="topk", k=2, released_code={"prob_floors": True})
    with pytest.raises(
        ValueError, match=r"^released_code.reference_imputation needs the reference teacher's own"
    ):
        _hand_term("adpa", _hand_targets(), support="topk", k=2, released_code={"reference_imputation": True})
