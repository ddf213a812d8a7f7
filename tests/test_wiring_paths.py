"""Wiring of a step on paths the other wiring tests leave out: left padding, an output layer with more rows
than the vocabulary, the chunked path without a teacher, the slicing of a concatenated batch, and DPO's
reward accuracy on a tie.

Left padding: `collate` gives position ids that start at 0 on the first real token whatever the padding
side, so a step must give the same loss, terms and gradients on a left-padded batch as on a right-padded
one; that holds only if the student and the teachers both get the attention mask and the position ids.
"""

from __future__ import annotations

import math

import pytest
import torch

from adpa_core.chunked import output_layer
from adpa_core.config import STUDENT_GROUPS, ObjectiveConfig
from adpa_core.data import collate
from adpa_core.losses import IGNORE_INDEX, sequence_logps
from adpa_core.models import load_models
from adpa_core.objectives import (
    StepContext,
    group_batch,
    loss_step,
    row_weights,
    split_groups,
    student_logits,
    term_weights,
)
from adpa_core.prepare import load_rows
from adpa_core.teacher import OnlineTeacher
from tests import reference as R
from tests.tiny import make_llama, make_tokenizer, save_model
from tests.trainkit import build_world, make_cfg


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> dict[str, str]:
    return build_world(tmp_path_factory.mktemp("world"))


def _step(ctx: StepContext, batch: dict) -> tuple[float, dict[str, float], list[torch.Tensor]]:
    """(loss, metrics, gradients of the student) of one step."""
    ctx.student.zero_grad()
    loss, metrics = loss_step(ctx, batch)
    loss.backward()
    grads = [p.grad.detach().clone() for p in ctx.student.parameters()]
    ctx.student.zero_grad()
    return float(loss.detach()), metrics, grads


def _assert_same_step(got, want) -> None:
    assert got[0] == pytest.approx(want[0], rel=1e-5)
    assert got[1].keys() == want[1].keys()
    for key, value in want[1].items():
        assert got[1][key] == pytest.approx(value, rel=1e-5, abs=1e-6), key
    for g, w in zip(got[2], want[2], strict=True):
        torch.testing.assert_close(g, w, rtol=1e-4, atol=1e-6)


def test_group_batch_takes_every_field_of_the_wanted_groups():
    """Three groups of two rows: the wanted groups' rows of every tensor field, in the order asked for."""
    groups = ("chosen", "rejected", "yhat")
    batch = {
        k: torch.arange(24).reshape(6, 4) + 100 * i
        for i, k in enumerate(("input_ids", "attention_mask", "position_ids", "labels"))
    }
    batch["ids"] = ["a", "b"]
    one = group_batch(batch, groups, ("yhat",))
    assert set(one) == {"ids", "input_ids", "attention_mask", "position_ids", "labels"}
    assert one["ids"] == ["a", "b"]
    for key in ("input_ids", "attention_mask", "position_ids", "labels"):
        assert torch.equal(one[key], batch[key][4:6]), key
    two = group_batch(batch, groups, ("rejected", "chosen"))
    for key in ("input_ids", "attention_mask", "position_ids", "labels"):
        assert torch.equal(two[key], torch.cat([batch[key][2:4], batch[key][0:2]])), key
    assert set(group_batch({"ids": [], "labels": batch["labels"]}, groups, ("chosen",))) == {"ids", "labels"}


def test_micro_batch_weights_with_one_counted_token_and_with_none():
    """One counted token in a micro-batch weighs 1 (a mean over one token), none weighs nothing."""
    ig = IGNORE_INDEX
    assert row_weights(torch.tensor([[ig, 4, ig], [ig, ig, ig]]), "micro_batch").tolist() == [
        [0.0, 1.0, 0.0],
        [0.0, 0.0, 0.0],
    ]
    assert row_weights(torch.full((2, 3), ig), "micro_batch").tolist() == [[0.0] * 3, [0.0] * 3]
    assert row_weights(torch.tensor([[ig, 4, ig]]), "sequence").tolist() == [[0.0, 1.0, 0.0]]


def test_student_logits_follow_the_batch_masks_and_position_ids():
    """Two sequences packed in one row restart their positions; a left-padded row masks its padding: the
    student's logits are the model's under both, cut to the vocabulary."""
    tok = make_tokenizer()
    model = make_llama(tok, extra_rows=3).eval()
    ctx = StepContext(model, ObjectiveConfig(method="sft"), len(tok))
    batch = {
        "input_ids": torch.tensor([[7, 8, 9, 10, 11, 12], [0, 0, 9, 10, 11, 12]]),
        "attention_mask": torch.tensor([[1, 1, 1, 1, 1, 1], [0, 0, 1, 1, 1, 1]]),
        "position_ids": torch.tensor([[0, 1, 2, 0, 1, 2], [0, 0, 0, 1, 2, 3]]),
        "ids": ["a"],
    }
    with torch.no_grad():
        want = model(**{k: v for k, v in batch.items() if k != "ids"}).logits[..., : len(tok)]
        got = student_logits(ctx, batch)
        unpacked = model(input_ids=batch["input_ids"][:1]).logits[..., : len(tok)]
        unmasked = model(input_ids=batch["input_ids"][1:]).logits[..., : len(tok)]
    assert got.shape == (2, 6, len(tok))
    torch.testing.assert_close(got, want)
    assert not torch.allclose(got[:1], unpacked, atol=1e-4)
    assert not torch.allclose(got[1:, 2:], unmasked[:, 2:], atol=1e-4)


@pytest.mark.parametrize("chunk", [None, 3], ids=["full", "chunked"])
def test_left_padding_gives_the_step_of_right_padding(world, tmp_path, chunk):
    """DCKD with online teachers (student and both teacher groups see the padded batch): same loss, terms
    and gradients under both padding sides."""
    cfg = make_cfg(world, tmp_path, "dckd", objective={"method": "dckd", "reduction": "token"})
    tokenizer, student, pair = load_models(cfg.model, device="cpu")
    rows = load_rows(cfg, tokenizer)[:4]
    lengths = {len(r["chosen_input_ids"]) for r in rows} | {len(r["rejected_input_ids"]) for r in rows}
    assert len(lengths) > 1  # padding happens
    groups, pad = STUDENT_GROUPS["dckd"], tokenizer.pad_token_id
    head = output_layer(student) if chunk else None
    teacher = OnlineTeacher(pair, len(tokenizer))
    ctx = StepContext(student, cfg.objective, len(tokenizer), teacher, None, chunk, head)
    right = _step(ctx, collate(rows, groups, pad, "right"))
    left_batch = collate(rows, groups, pad, "left")
    assert int(left_batch["position_ids"][:, 0].max()) == 0 and bool(
        (left_batch["attention_mask"][:, 0] == 0).any()
    )
    _assert_same_step(_step(ctx, left_batch), right)


@pytest.fixture(scope="module")
def padded_world(world, tmp_path_factory) -> dict[str, str]:
    """The world with a student whose output layer has 5 rows more than the vocabulary (padded embeddings:
    never a target, and no probability mass in a loss)."""
    tok = make_tokenizer()
    folder = tmp_path_factory.mktemp("padded") / "student"
    return {
        **world,
        "student": str(save_model(folder, tok, make_llama(tok, hidden=32, seed=1, extra_rows=5))),
    }


def test_chunked_dpo_with_sft_and_a_padded_output_layer_equals_the_full_path(padded_world, tmp_path):
    """DPO + SFT (no teacher: the chunked path projects the chosen rows for the NLL term on its own) with an
    output layer of V + 5 rows: the chunked path's loss, terms, reward metrics and gradients equal those of
    the full logits cut to the vocabulary."""
    cfg = make_cfg(padded_world, tmp_path, "dpo", objective={"method": "dpo", "beta_dpo": 0.3, "w_sft": 0.5})
    tokenizer, student, _ = load_models(cfg.model, device="cpu")
    vocab = len(tokenizer)
    assert student.get_output_embeddings().weight.shape[0] == vocab + 5
    batch = collate(load_rows(cfg, tokenizer)[:4], ("chosen", "rejected"), tokenizer.pad_token_id)
    offsets = torch.tensor([2.0, -1.0, 0.5, 3.0, -3.0, 1.0, 1.5, -2.0])
    with torch.no_grad():
        logits = student(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        reference = sequence_logps(logits[..., :vocab], batch["labels"]) - offsets  # (8,) policy moved
    full = StepContext(student, cfg.objective, vocab, None, lambda _: reference)
    chunked = StepContext(student, cfg.objective, vocab, None, lambda _: reference, 3, output_layer(student))
    want = _step(full, batch)
    assert want[1]["num/reward_accuracy"] == 2  # margins 0.3 * (a - b) = 1.5, -0.6, -0.3, 1.5
    _assert_same_step(_step(chunked, batch), want)


@pytest.mark.parametrize("chunk", [None, 3], ids=["full", "chunked"])
def test_dpo_reward_accuracy_counts_no_tie(world, tmp_path, chunk):
    """Pairs whose rejected reply is the chosen one tie: equal rewards, so no pair is ranked right (accuracy
    0, as TRL's `chosen_rewards > rejected_rewards`), the margin is 0 and the loss log 2."""
    cfg = make_cfg(world, tmp_path, "dpo", objective={"method": "dpo", "beta_dpo": 0.3})
    tokenizer, student, _ = load_models(cfg.model, device="cpu")
    rows = [
        {**r, "rejected_input_ids": r["chosen_input_ids"], "rejected_labels": r["chosen_labels"]}
        for r in load_rows(cfg, tokenizer)[:4]
    ]
    batch = collate(rows, ("chosen", "rejected"), tokenizer.pad_token_id)
    head = output_layer(student) if chunk else None
    reference = torch.tensor([-5.0, -6.0, -7.0, -8.0] * 2)  # (8,): the same for both replies of a pair
    ctx = StepContext(student, cfg.objective, len(tokenizer), None, lambda _: reference, chunk, head)
    loss, metrics = loss_step(ctx, batch)
    assert metrics["num/reward_margin"] == 0.0
    assert metrics["num/reward_accuracy"] == 0
    assert float(loss) == pytest.approx(0.6931471805599453, rel=1e-6)


class _Recording(OnlineTeacher):
    """An online teacher that records which group it serves and whether the reference teacher runs."""

    def __init__(self, *args):
        super().__init__(*args)
        self.calls: list[tuple[str, bool]] = []

    def targets(self, batch, group, need_ref):
        self.calls.append((group, need_ref))
        return super().targets(batch, group, need_ref)

    def row_targets(self, batch, group, need_ref, mask):
        self.calls.append((group, need_ref))
        return super().row_targets(batch, group, need_ref, mask)


@pytest.mark.parametrize("chunk", [None, 3], ids=["full", "chunked"])
@pytest.mark.parametrize(
    ("method", "use_reference", "calls"),
    [
        ("kd", True, [("chosen", False)]),
        ("dckd", True, [("chosen", False), ("rejected", False)]),
        ("adpa", True, [("yhat", True)]),
        ("adpa", False, [("yhat", False)]),
        ("adpa_plus", True, [("yhat", True)]),
    ],
)
def test_the_teacher_runs_on_its_groups_and_the_reference_only_for_advantages(
    world, tmp_path, chunk, method, use_reference, calls
):
    """KD and DCKD read the DPO teacher only (a reference forward would be wasted work); ADPA reads the
    reference too, except in the no-reference ablation; groups without a teacher term never call it."""
    obj = {"method": method, "use_reference": use_reference, **({} if use_reference else {"support": "full"})}
    cfg = make_cfg(world, tmp_path, method, objective=obj)
    tokenizer, student, pair = load_models(cfg.model, device="cpu")
    rows = [
        {**r, "yhat_input_ids": r["rejected_input_ids"], "yhat_labels": r["rejected_labels"]}
        for r in load_rows(cfg, tokenizer)[:2]
    ]
    batch = collate(rows, STUDENT_GROUPS[method], tokenizer.pad_token_id)
    teacher = _Recording(pair, len(tokenizer))
    head = output_layer(student) if chunk else None
    loss, _ = loss_step(
        StepContext(student, cfg.objective, len(tokenizer), teacher, None, chunk, head), batch
    )
    assert teacher.calls == calls
    assert torch.isfinite(loss)


def test_a_released_code_step_without_the_end_of_turn_id_is_refused():
    obj = ObjectiveConfig(method="dckd", released_code={"eos_without_teacher": True})
    model = make_llama(make_tokenizer())
    with pytest.raises(ValueError) as err:
        StepContext(model, obj, 64)
    assert str(err.value) == "objective.released_code.eos_without_teacher needs StepContext.end_of_turn_id"
    assert StepContext(model, obj, 64, end_of_turn_id=5).end_of_turn_id == 5


@pytest.mark.parametrize("chunk", [None, 3], ids=["full", "chunked"])
def test_a_batch_of_one_pair_is_not_halved(world, tmp_path, chunk):
    """One pair: each term's normaliser is 1 (one pair, one sequence), so the loss is -log sigmoid(margin)
    plus w_sft times the mean NLL of the one chosen reply; `loss_value` reports it."""
    cfg = make_cfg(world, tmp_path, "dpo", objective={"method": "dpo", "beta_dpo": 0.3, "w_sft": 0.5})
    tokenizer, student, _ = load_models(cfg.model, device="cpu")
    batch = collate(load_rows(cfg, tokenizer)[:1], ("chosen", "rejected"), tokenizer.pad_token_id)
    with torch.no_grad():
        logits = student(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        policy = R.sequence_logps(logits, batch["labels"])  # (2,) float64
    reference = (policy - torch.tensor([2.0, -3.0], dtype=torch.float64)).float()  # margin 0.3 * 5 = 1.5
    expected = math.log1p(math.exp(-1.5)) + 0.5 * float(R.nll_loss(logits[:1], batch["labels"][:1]))
    head = output_layer(student) if chunk else None
    ctx = StepContext(student, cfg.objective, len(tokenizer), None, lambda _: reference, chunk, head)
    loss, metrics = loss_step(ctx, batch)
    assert float(loss.detach()) == pytest.approx(expected, rel=1e-5)
    assert metrics["loss_value"] == float(loss.detach())


def test_term_weights_of_each_method():
    """DESIGN.md section 1: each objective's terms and weights (DPO's SFT term only when weighted)."""
    w = {"w_kl_chosen": 0.3, "w_kl_rejected": 0.2, "gamma": 0.7}
    assert term_weights(ObjectiveConfig(method="sft")) == {"nll": 1.0}
    assert term_weights(ObjectiveConfig(method="dpo")) == {"dpo": 1.0}
    assert term_weights(ObjectiveConfig(method="dpo", w_sft=0.0)) == {"dpo": 1.0}
    assert term_weights(ObjectiveConfig(method="dpo", w_sft=0.5)) == {"dpo": 1.0, "nll": 0.5}
    assert term_weights(ObjectiveConfig(method="kd", **w)) == {"nll": 1.0, "kl_chosen": 0.3}
    assert term_weights(ObjectiveConfig(method="dckd", **w)) == {
        "nll": 1.0,
        "kl_chosen": 0.3,
        "kl_rejected": 0.2,
    }
    for method in ("adpa", "adpa_plus"):
        assert term_weights(ObjectiveConfig(method=method, **w)) == {"nll": 1.0, "adpa": 0.7}


def test_a_batch_that_is_not_one_row_per_group_is_refused():
    with pytest.raises(ValueError):
        split_groups(torch.zeros(1, 3), ("chosen", "rejected"))
    parts = split_groups(torch.arange(4)[:, None], ("chosen", "rejected"))
    assert {g: t[:, 0].tolist() for g, t in parts.items()} == {"chosen": [0, 1], "rejected": [2, 3]}


@pytest.mark.parametrize("chunk", [None, 3], ids=["full", "chunked"])
def test_kd_step_by_hand(world, tmp_path, chunk):
    """KD: NLL of the chosen replies plus w_kl_chosen times the forward KL from the DPO teacher, both
    against the float64 references; the terms' numerators are reported."""
    obj = {"method": "kd", "w_kl_chosen": 0.3}
    cfg = make_cfg(world, tmp_path, "kd", objective=obj)
    tokenizer, student, pair = load_models(cfg.model, device="cpu")
    vocab = len(tokenizer)
    batch = collate(load_rows(cfg, tokenizer)[:3], ("chosen",), tokenizer.pad_token_id)
    inputs = {k: batch[k] for k in ("input_ids", "attention_mask")}
    with torch.no_grad():
        logits = student(**inputs).logits[..., :vocab]
        teacher = pair.dpo(**inputs).logits[..., :vocab]
    nll = float(R.nll_loss(logits, batch["labels"]))
    kl = float(R.forward_kl_loss(logits, teacher, batch["labels"]))
    assert kl > 1e-3  # the teacher differs from the student
    head = output_layer(student) if chunk else None
    ctx = StepContext(student, cfg.objective, vocab, OnlineTeacher(pair, vocab), None, chunk, head)
    loss, metrics = loss_step(ctx, batch)
    assert float(loss.detach()) == pytest.approx(nll + 0.3 * kl, rel=1e-5)
    assert metrics["num/nll"] == pytest.approx(3 * nll, rel=1e-5)  # 3 sequences
    assert metrics["num/kl_chosen"] == pytest.approx(3 * kl, rel=1e-5)
