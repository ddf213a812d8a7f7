"""Wiring of a training step on its non-default paths: DPO once the policy has left its reference, and
gradient accumulation over micro-batches that count different numbers of tokens.

At step 1 the DPO policy equals its reference and the loss is log 2 whatever the wiring (swapped chosen and
rejected, a wrong beta); so here the reference log-probs are set by hand, or the loss is read at step 2.
Accumulation: 2 x 4 must equal one batch of 8 under both reductions, with uneven micro-batches (a per
micro-batch normalisation would then weigh tokens differently).
"""

from __future__ import annotations

import math

import pytest
import torch
from safetensors.torch import load_file

from adpa_core.chunked import output_layer
from adpa_core.config import STUDENT_GROUPS
from adpa_core.data import collate
from adpa_core.models import load_models
from adpa_core.objectives import StepContext, counts, loss_step
from adpa_core.prepare import attach_yhat, load_rows
from adpa_core.run_models import load_run_model
from adpa_core.runs import RunDir
from adpa_core.teacher import OnlineTeacher
from adpa_core.train import run_training, train
from tests import reference as R
from tests.trainkit import BAD, GOOD, SUBJECTS, build_world, group_logits, make_cfg, step_rows, write_jsonl


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> dict[str, str]:
    return build_world(tmp_path_factory.mktemp("world"))


def _grads(model: torch.nn.Module) -> list[torch.Tensor]:
    return [p.grad.detach().clone() for p in model.parameters()]


# ---------------------------------------------------------------- DPO away from the reference


@pytest.mark.parametrize(
    ("chunk", "w_sft"), [(None, 0.0), (3, 0.0), (None, 0.5)], ids=["full", "chunked", "sft"]
)
def test_dpo_with_the_policy_away_from_its_reference_by_hand(world, tmp_path, chunk, w_sft):
    """The reference log-probs are set so that the policy's log-ratios log pi/pi_ref are a (chosen) and b
    (rejected) per pair; with beta 0.3 the margins are 0.3 (a - b) = 1.5, -0.6, -0.3, 1.5 and the loss is the
    mean of -log sigmoid(margin). Swapped chosen/rejected flips the margins; another beta scales them."""
    cfg = make_cfg(world, tmp_path, "dpo", objective={"method": "dpo", "beta_dpo": 0.3, "w_sft": w_sft})
    tokenizer, student, _ = load_models(cfg.model, device="cpu")
    batch = collate(load_rows(cfg, tokenizer)[:4], ("chosen", "rejected"), tokenizer.pad_token_id)
    logits = student(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    policy = R.sequence_logps(logits, batch["labels"])  # (8,) float64 with grad: chosen rows, then rejected
    a, b = torch.tensor([2.0, -1.0, 0.5, 3.0]), torch.tensor([-3.0, 1.0, 1.5, -2.0])
    reference = torch.cat([policy[:4].detach() - a, policy[4:].detach() - b]).float()  # (8,)
    margins = [1.5, -0.6, -0.3, 1.5]
    expected = sum(math.log1p(math.exp(-m)) for m in margins) / 4
    if w_sft:
        expected += w_sft * float(R.nll_loss(logits[:4], batch["labels"][:4]))
    head = output_layer(student) if chunk else None
    ctx = StepContext(student, cfg.objective, len(tokenizer), None, lambda _: reference, chunk, head)
    loss, metrics = loss_step(ctx, batch)
    assert float(loss.detach()) == pytest.approx(expected, rel=1e-5)
    assert metrics["num/reward_accuracy"] == 2  # pairs 1 and 4: a margin > 0
    assert metrics["num/reward_margin"] == pytest.approx(sum(margins), abs=1e-4)
    # the gradient is that of the same loss written with the float64 reference
    loss.backward()
    got = _grads(student)
    student.zero_grad()
    ref_loss = R.dpo_loss(policy[:4], policy[4:], reference[:4], reference[4:], beta=0.3)
    if w_sft:
        ref_loss = ref_loss + w_sft * R.nll_loss(logits[:4], batch["labels"][:4])
    ref_loss.backward()
    for g, want in zip(got, _grads(student), strict=True):
        torch.testing.assert_close(g, want.to(g.dtype), rtol=1e-4, atol=1e-6)


def test_dpo_second_step_is_measured_against_the_frozen_initial_student(world, tmp_path):
    """End to end: after one update the policy (checkpoint step-1) differs from the reference, and the
    step-2 loss is the DPO loss of the step-1 weights against the initial student on the step-2 batch."""
    cfg = make_cfg(
        world,
        tmp_path,
        "dpo",
        objective={"method": "dpo", "beta_dpo": 0.5},
        train={"max_steps": 2, "save_every": 1, "keep_checkpoints": 5, "learning_rate": 1e-2},
    )
    records = list(train(cfg))
    assert records[0]["dpo"] == pytest.approx(math.log(2.0), abs=1e-6)  # step 1: policy = reference
    policy, tokenizer = load_run_model(cfg.run_dir, "step-1")
    initial = load_run_model(cfg.run_dir, "initial")[0]
    rows = step_rows(cfg, load_rows(cfg, tokenizer), step=1)
    lp = {
        (name, g): R.sequence_logps(*group_logits(model, rows, g, tokenizer.pad_token_id))
        for name, model in (("policy", policy), ("ref", initial))
        for g in ("chosen", "rejected")
    }
    ratio_w = lp["policy", "chosen"] - lp["ref", "chosen"]
    ratio_l = lp["policy", "rejected"] - lp["ref", "rejected"]
    refs = (lp["ref", "chosen"], lp["ref", "rejected"])
    expected = float(R.dpo_loss(lp["policy", "chosen"], lp["policy", "rejected"], *refs, beta=0.5))
    assert abs(expected - math.log(2.0)) > 1e-2  # the policy moved: step 2 tells the wirings apart
    assert records[1]["dpo"] == pytest.approx(expected, rel=1e-5)
    assert records[1]["reward_margin"] == pytest.approx(float((0.5 * (ratio_w - ratio_l)).mean()), rel=1e-4)
    assert records[1]["reward_accuracy"] == pytest.approx(float((ratio_w > ratio_l).double().mean()))


# ---------------------------------------------------------------- accumulation over uneven micro-batches


def _uneven_rows(n: int = 24) -> list[dict[str, str]]:
    """Pairs whose prompts run from 5 to 9 words and replies from 1 to 11 (chosen) and 1 to 9 (rejected),
    in a scrambled order."""
    return [
        {
            "id": f"u{i:02d}",
            "prompt": f"where is the {SUBJECTS[i % len(SUBJECTS)]} ?" + " please" * (i % 5),
            "chosen": " ".join(GOOD[j % len(GOOD)] for j in range(1 + (7 * i) % 11)),
            "rejected": " ".join(BAD[j % len(BAD)] for j in range(1 + (5 * i) % 9)),
        }
        for i in range(n)
    ]


def _counted(batch: dict, groups: tuple[str, ...]) -> list[int]:
    """Counted tokens of each group of a concatenated batch."""
    return [int((lab != R.IGNORE_INDEX).sum()) for lab in batch["labels"].chunk(len(groups))]


@pytest.mark.parametrize("chunk", [None, 3], ids=["full", "chunked"])
@pytest.mark.parametrize("reduction", ["token", "sequence"])
@pytest.mark.parametrize("method", ["dckd", "adpa"])
def test_loss_step_over_uneven_micro_batches_adds_up_to_one_batch(world, tmp_path, method, reduction, chunk):
    """Four micro-batches of 2 with the step's counts as normalisers: the summed losses and gradients equal
    those of the batch of 8."""
    data = str(write_jsonl(tmp_path / "uneven.jsonl", _uneven_rows()))
    obj = {"method": method, "reduction": reduction, "k": 9}
    # max_length 18 cuts the student's 6-token replies y_hat after the longer prompts: uneven too
    cfg = make_cfg(
        world,
        tmp_path,
        method,
        data={"train": data, "max_length": 18, "max_prompt_length": 14},
        objective=obj,
    )
    tokenizer, student, pair = load_models(cfg.model, device="cpu")
    rows = load_rows(cfg, tokenizer)[:8]
    if method == "adpa":
        rows = attach_yhat(rows, cfg, student, tokenizer, tmp_path / "yhat.jsonl")
    groups, pad = STUDENT_GROUPS[method], tokenizer.pad_token_id
    big = collate(rows, groups, pad)
    micro = [collate(rows[i : i + 2], groups, pad) for i in range(0, 8, 2)]
    per_micro = [_counted(b, groups) for b in micro]
    assert all(len({c[g] for c in per_micro}) > 1 for g in range(len(groups))), per_micro  # uneven
    norms = {
        t: sum(counts(b, groups, cfg.objective)[t] for b in micro) for t in counts(big, groups, cfg.objective)
    }
    assert norms == counts(big, groups, cfg.objective)
    head = output_layer(student) if chunk else None
    ctx = StepContext(
        student, cfg.objective, len(tokenizer), OnlineTeacher(pair, len(tokenizer)), None, chunk, head
    )
    loss_big, _ = loss_step(ctx, big)
    loss_big.backward()
    want = _grads(student)
    student.zero_grad()
    total = 0.0
    for b in micro:
        loss, _ = loss_step(ctx, b, norms)
        loss.backward()
        total += float(loss)
    assert total == pytest.approx(float(loss_big), rel=1e-5)
    for g, w in zip(_grads(student), want, strict=True):
        torch.testing.assert_close(g, w, rtol=1e-4, atol=1e-7)


@pytest.mark.parametrize("reduction", ["token", "sequence"])
def test_training_two_by_four_equals_eight_by_one_with_uneven_micro_batches(world, tmp_path, reduction):
    """The loop end to end: per-step losses, terms and gradient norms, and the final weights."""
    data = str(write_jsonl(tmp_path / "uneven.jsonl", _uneven_rows()))

    def cfg(name: str, batch_size: int, accum: int):
        return make_cfg(
            world,
            tmp_path,
            "dckd",
            name=name,
            data={"train": data},
            objective={"method": "dckd", "reduction": reduction},
            train={"batch_size": batch_size, "grad_accum": accum, "max_steps": 3, "learning_rate": 1e-2},
        )

    runs = {"big": cfg("big", 8, 1), "small": cfg("small", 2, 4)}
    for c in runs.values():
        run_training(c, progress=False)
    records = {name: RunDir(c.run_dir).read_metrics() for name, c in runs.items()}
    for a, b in zip(records["big"], records["small"], strict=True):
        for key in ("loss", "nll", "kl_chosen", "kl_rejected", "grad_norm"):
            assert b[key] == pytest.approx(a[key], rel=1e-5), (a["step"], key)
    weights = {n: load_file(str(c.run_dir / "final" / "model.safetensors")) for n, c in runs.items()}
    for name, w in weights["big"].items():
        torch.testing.assert_close(weights["small"][name], w, rtol=1e-4, atol=1e-5)  # Adam: noise of 1e-7


# ---------------------------------------------------------------- normalisers and refusals, by hand


def test_counts_and_row_weights_by_hand():
    """Chosen rows count 2 and 0 tokens, rejected rows 3 and 1: token counts, sequences with a counted
    token, pairs, and (released code) one per micro-batch with a counted token."""
    from adpa_core.config import ObjectiveConfig
    from adpa_core.objectives import row_weights

    ig = R.IGNORE_INDEX
    chosen = [[5, ig, 7], [ig, ig, ig]]
    batch = {"labels": torch.tensor([*chosen, [1, 2, 3], [4, ig, ig]])}
    groups = ("chosen", "rejected")
    dckd = {"method": "dckd"}
    assert counts(batch, groups, ObjectiveConfig(**dckd, reduction="token")) == {
        "nll": 2.0,
        "kl_chosen": 2.0,
        "kl_rejected": 4.0,
    }
    assert counts(batch, groups, ObjectiveConfig(**dckd)) == {
        "nll": 1.0,
        "kl_chosen": 1.0,
        "kl_rejected": 2.0,
    }
    assert counts(batch, groups, ObjectiveConfig(method="dpo", w_sft=0.5)) == {"dpo": 2.0, "nll": 1.0}
    released = ObjectiveConfig(**dckd, released_code={"micro_batch_mean": True})
    assert counts(batch, groups, released) == {"nll": 1.0, "kl_chosen": 1.0, "kl_rejected": 1.0}
    labels = torch.tensor(chosen)
    assert row_weights(labels, "token").tolist() == [[1.0, 0.0, 1.0], [0.0, 0.0, 0.0]]
    assert row_weights(labels, "sequence").tolist() == [[0.5, 0.0, 0.5], [0.0, 0.0, 0.0]]
    third = torch.tensor([[1 / 3, 1 / 3], [0.0, 1 / 3]])
    torch.testing.assert_close(row_weights(torch.tensor([[5, 6], [ig, 7]]), "micro_batch"), third)


def test_a_step_without_its_teacher_or_reference_is_refused(world, tmp_path):
    cfg = make_cfg(world, tmp_path, "dckd")
    tokenizer, student, _ = load_models(cfg.model, device="cpu", teachers=False)
    batch = collate(load_rows(cfg, tokenizer)[:2], ("chosen", "rejected"), tokenizer.pad_token_id)
    with pytest.raises(ValueError, match=r"^objective.method=dckd needs a teacher but none is loaded$"):
        loss_step(StepContext(student, cfg.objective, len(tokenizer)), batch)
    dpo = make_cfg(world, tmp_path, "dpo").objective
    with pytest.raises(
        ValueError, match=r"^objective.method=dpo needs the frozen initial student as reference$"
    ):
        loss_step(StepContext(student, dpo, len(tokenizer)), batch)
