"""Evaluation on tiny runs: rewards (Python, toy, reward model), eval.json and exports, baselines and
their cached generations, checkpoint selection, and the `adpa eval` command."""

from __future__ import annotations

import json
import sys

import pytest
import torch
from transformers import LlamaConfig, LlamaForSequenceClassification

from adpa_core.cli import EXIT_USER_ERROR, main
from adpa_core.config import config_from_dict
from adpa_core.evaluate import (
    EvalError,
    eval_inputs,
    evaluate_model,
    evaluate_run,
    load_reward,
    python_reward,
    reward_model,
    toy_reward,
)
from adpa_core.generate import decoding_settings, read_generations_jsonl
from adpa_core.run_models import load_run_model
from adpa_core.selection import select_checkpoint
from adpa_core.train import run_training
from tests.tiny import make_tokenizer
from tests.trainkit import GOOD, build_world, make_cfg

SUMMARY_KEYS = {"n", "mean_reward", "reward_ci", "reward_std", "mean_length", "never_stopped"}
EVAL_KEYS = SUMMARY_KEYS | {
    "run",
    "checkpoint",
    "data",
    "split",
    "reward",
    "settings",
    "generations",
    "alpaca_eval",
    "created_at",
}
GEN = {"max_new_tokens": 5, "batch_size": 4, "n_boot": 200}


def polite(prompt: str, response: str, stopped: bool) -> float:
    """A Python reward for the tiny world: the reply's polite words ("yes", "please"...), +1 for stopping."""
    return sum(w in GOOD for w in response.split()) + float(stopped)


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    return build_world(tmp_path_factory.mktemp("evalworld"))


@pytest.fixture(scope="module")
def runs(world, tmp_path_factory):
    """A full-weight SFT run with a checkpoint per step (high lr, so weights move), and a LoRA run that
    keeps only its last checkpoint."""
    out = tmp_path_factory.mktemp("evalruns")
    train = {"max_steps": 3, "save_every": 1, "keep_checkpoints": 5, "learning_rate": 3e-2}
    sft = make_cfg(world, out, "sft", train=train)
    lora_train = {**train, "max_steps": 2, "keep_checkpoints": 1}
    lora = make_cfg(world, out, "sft", train=lora_train, model={"lora": True, "lora_r": 4})
    lora.name = "lora-run"
    for cfg in (sft, lora):
        run_training(cfg, progress=False)
    return {"sft": sft.run_dir, "lora": lora.run_dir}


@pytest.fixture(scope="module")
def rm_path(tmp_path_factory):
    """A tiny Llama reward model (one output) whose tokenizer pads with its end-of-turn token."""
    tok = make_tokenizer()
    tok.pad_token = tok.eos_token  # pad == the token that ends every turn: pooling must not skip it
    torch.manual_seed(3)
    cfg = LlamaConfig(
        vocab_size=len(tok),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=1,
        num_attention_heads=2,
        num_key_value_heads=2,
        num_labels=1,
        pad_token_id=tok.pad_token_id,
    )
    path = tmp_path_factory.mktemp("rm") / "rm"
    LlamaForSequenceClassification(cfg).save_pretrained(path)
    tok.save_pretrained(path)
    return path


def _user(text: str) -> list[dict[str, str]]:
    return [{"role": "user", "content": text}]


# ---------------------------------------------------------------- rewards


def test_python_reward_scores_each_example():
    reward = python_reward(polite)
    assert reward.name == "python:polite"
    assert reward([_user("q"), _user("r")], ["yes please no", "no"], [True, False]) == [3.0, 0.0]
    with pytest.raises(EvalError):
        reward([_user("q")], ["yes", "no"], [True, True])


def test_toy_reward_uses_the_toy_world_and_reports_its_summary():
    from adpa_core.toy.world import fact_prompt, make_world

    world = make_world(0)
    prompt = fact_prompt(world, world.people[0], 0)
    reward = toy_reward(world)
    right, wrong = prompt.truth, next(c for c in world.cities if c != prompt.truth)
    scores = reward([_user(prompt.text)] * 3, [right, wrong, right], [True, True, False])
    assert scores[0] == 2.0 and scores[1] < scores[0] and scores[2] == 1.0  # not stopping costs 1
    sections = reward.report_sections([_user(prompt.text)] * 2, [right, wrong], [True, True])
    assert sections["toy"]["n"] == 2 and "rude_rate" in sections["toy"]


def test_missing_toy_reward_is_a_clear_error(monkeypatch):
    monkeypatch.setitem(sys.modules, "adpa_core.toy.reward", None)
    with pytest.raises(EvalError, match="toy reward"):
        toy_reward()


def test_reward_model_scores_the_last_token_whatever_the_padding(rm_path):
    rm = reward_model(str(rm_path), batch_size=3, device="cpu")
    assert not rm.model.training and not any(p.requires_grad for p in rm.model.parameters())
    prompts = [_user("where is the cat ?"), _user("hello"), _user("what is one plus two ?"), _user("hi")]
    responses = ["yes", "the cat sat on the mat", "three", ""]
    batched = rm(prompts, responses, [True] * 4)
    rm.model.config.pad_token_id = None  # one sequence, no padding: logits of its very last position
    with torch.no_grad():
        ids = [torch.tensor([rm.encode(p, r)]) for p, r in zip(prompts, responses, strict=True)]
        alone = [float(rm.model(x).logits[0, 0]) for x in ids]
    rm.model.config.pad_token_id = rm.tokenizer.pad_token_id
    assert batched == pytest.approx(alone, abs=1e-5)
    assert rm.encode(prompts[0], "yes")[-1] == rm.tokenizer.eos_token_id  # the text ends with the pad id
    assert len(set(round(s, 6) for s in batched)) == 4


def test_reward_model_without_chat_template_scores_plain_text(rm_path, tmp_path):
    rm = reward_model(str(rm_path), device="cpu")
    rm.tokenizer.chat_template = None
    ids = rm.encode(_user("where is the cat ?"), "yes please")
    assert (
        rm.tokenizer.decode(ids, skip_special_tokens=True).split() == "where is the cat ? yes please".split()
    )
    assert len(rm([_user("where is the cat ?")], ["yes please"], [True])) == 1


def test_load_reward_specs(rm_path):
    assert load_reward("py:tests.test_evaluate:polite").name == "py:tests.test_evaluate:polite"
    assert load_reward("toy").name == "toy"
    assert load_reward(str(rm_path)).name.startswith("rm:")
    with pytest.raises(EvalError):
        load_reward("py:tests.test_evaluate:no_such_function")


def test_eval_inputs_defaults_only_for_toy_runs():
    toy = config_from_dict({"model": {"student": "toy:student"}})
    assert eval_inputs(toy, None, None) == ("toy:prompts", "toy")
    other = config_from_dict({"model": {"student": "some/model"}, "data": {"train": "a.jsonl"}})
    with pytest.raises(EvalError, match="--reward"):
        eval_inputs(other, "a.jsonl", None)


# ---------------------------------------------------------------- evaluate_model / evaluate_run


def test_evaluate_model_reports_and_records(world):
    prompts = [{"id": f"p{i}", "prompt": _user(f"where is the {w} ?")} for i, w in enumerate(["cat", "dog"])]
    report = evaluate_model(world["student"], None, prompts, python_reward(polite), **GEN)
    assert set(report) >= SUMMARY_KEYS and report["n"] == 2
    lo, hi = report["reward_ci"]
    assert lo <= report["mean_reward"] <= hi
    assert [r["id"] for r in report["records"]] == ["p0", "p1"]
    assert set(report["records"][0]) == {"id", "prompt", "response", "reward", "stopped", "length"}
    assert all(0 <= r["length"] <= 5 for r in report["records"])
    assert report["never_stopped"] == sum(not r["stopped"] for r in report["records"]) / 2


def test_evaluate_run_writes_eval_json_generations_and_alpaca_export(world, runs, rm_path):
    run = runs["sft"]
    out = evaluate_run(run, world["eval"], "test", python_reward(polite), **GEN)
    on_disk = json.loads((run / "eval.json").read_text())
    assert set(on_disk) == EVAL_KEYS and on_disk["n"] == 6 and on_disk["checkpoint"] == "final"
    assert on_disk["mean_reward"] == pytest.approx(out["mean_reward"])
    records = read_generations_jsonl(run / "generations" / "eval_test.jsonl")
    assert len(records) == 6 and sum(r["reward"] for r in records.values()) / 6 == pytest.approx(
        out["mean_reward"]
    )
    assert all(r["max_new_tokens"] == 5 and r["weights"] == "final" for r in records.values())
    decoding = decoding_settings(True, max_new_tokens=5)  # the exact settings, recorded and part of the key
    assert on_disk["settings"]["decoding"] == decoding
    assert all(r["decoding"] == decoding for r in records.values())
    alpaca = json.loads((run / "generations" / "alpaca_eval_test.json").read_text())
    assert len(alpaca) == 6 and all(set(a) == {"instruction", "output", "generator"} for a in alpaca)
    assert alpaca[0]["instruction"].startswith("where is the") and alpaca[0]["generator"] == "sft-run"
    assert [a["output"] for a in alpaca] == [r["response"] for r in records.values()]

    by_rm = evaluate_run(run, world["eval"], "test", str(rm_path), limit=3, **GEN)
    assert by_rm["n"] == 3 and by_rm["reward"] == f"rm:{rm_path}"


def test_baseline_adds_win_tie_loss_and_caches_its_generations(world, runs):
    run, lora = runs["sft"], runs["lora"]
    out = evaluate_run(run, world["eval"], "test", python_reward(polite), baseline=world["student"], **GEN)
    wtl = out["win_tie_loss"]
    assert wtl["win"] + wtl["tie"] + wtl["loss"] == pytest.approx(1.0) and wtl["n"] == 6
    assert out["baseline"]["n"] == 6 and set(out["baseline"]) >= SUMMARY_KEYS
    cached = list((run / "generations").glob("baseline_*_test.jsonl"))
    assert len(cached) == 1  # a plain model folder: cached in the evaluated run

    reward = python_reward(polite)
    out = evaluate_run(run, world["eval"], "test", reward, baseline=str(lora), **GEN)
    assert out["baseline"]["name"] == "lora-run"
    cache = lora / "generations" / "as_baseline_test.jsonl"
    assert out["baseline"]["generations"] == str(cache)  # a run directory: cached in the baseline run
    # the cache is used: a marked reply comes back; reuse off regenerates
    lines = [json.loads(x) for x in cache.read_text().splitlines()]
    lines[0]["response"] = "yes yes yes yes yes yes yes"
    gain = polite("", lines[0]["response"], lines[0]["stopped"]) - lines[0]["reward"]
    cache.write_text("".join(json.dumps(x) + "\n" for x in lines))
    again = evaluate_run(run, world["eval"], "test", reward, baseline=str(lora), **GEN)
    assert gain > 0
    assert again["baseline"]["mean_reward"] == pytest.approx(out["baseline"]["mean_reward"] + gain / 6)
    fresh = evaluate_run(run, world["eval"], "test", reward, str(lora), reuse_generations=False, **GEN)
    assert fresh["baseline"]["mean_reward"] == pytest.approx(out["baseline"]["mean_reward"])

    # the baseline run's own evaluation is reused, and never replaced by other settings' replies
    evaluate_run(lora, world["eval"], "test", reward, **GEN)
    own = lora / "generations" / "eval_test.jsonl"
    before = own.read_text()
    out = evaluate_run(run, world["eval"], "test", reward, baseline=str(lora), **GEN)
    assert out["baseline"]["generations"] == str(own)
    evaluate_run(run, world["eval"], "test", reward, baseline=str(lora), **{**GEN, "max_new_tokens": 3})
    assert own.read_text() == before
    assert {r["max_new_tokens"] for r in read_generations_jsonl(cache).values()} == {3}


def test_evaluating_a_checkpoint_and_bad_names(world, runs):
    out = evaluate_run(runs["sft"], world["eval"], "test", python_reward(polite), checkpoint="step-1", **GEN)
    assert out["checkpoint"] == "step-1"
    with pytest.raises(EvalError, match="step-99"):
        evaluate_run(runs["sft"], world["eval"], "test", python_reward(polite), checkpoint="step-99", **GEN)
    with pytest.raises(EvalError, match="not a run directory"):
        evaluate_run(world["student"], world["eval"], "test", python_reward(polite), **GEN)
    with pytest.raises(EvalError):
        evaluate_run(runs["sft"], world["eval"], "test", python_reward(polite), baseline="toy:nope", **GEN)


# ---------------------------------------------------------------- checkpoint selection


def test_select_checkpoint_marks_the_best_of_every_checkpoint(world, runs):
    run = runs["sft"]
    sel = select_checkpoint(
        run, world["eval"], "validation", python_reward(polite), include_initial=True, **GEN
    )
    names = [e["name"] for e in sel["checkpoints"]]
    assert names == ["initial", "step-1", "step-2", "step-3"] and sel["final"] == "step-3"
    assert sel["note"] is None
    rewards = [e["mean_reward"] for e in sel["checkpoints"]]
    assert len(set(rewards)) > 1  # the checkpoints answer differently, so the choice means something
    best = max(sel["checkpoints"], key=lambda e: e["mean_reward"])
    assert sel["best"] == best["name"] and sel["best_mean_reward"] == best["mean_reward"]
    assert json.loads((run / "checkpoint_selection.json").read_text())["best"] == sel["best"]

    def replies(name: str) -> list[str]:
        path = run / "generations" / f"select_validation_{name}.jsonl"
        return [r["response"] for r in read_generations_jsonl(path).values()]

    assert replies("initial") != replies("step-3")  # the checkpoint's weights were loaded
    # initial student + step-3's weights == final/ (training saves its last step as a checkpoint)
    evaluate_run(run, world["eval"], "validation", python_reward(polite), **GEN)
    final = read_generations_jsonl(run / "generations" / "eval_validation.jsonl")
    assert [r["response"] for r in final.values()] == replies("step-3")


def test_select_checkpoint_on_a_lora_run(world, runs):
    sel = select_checkpoint(runs["lora"], world["eval"], "validation", python_reward(polite), **GEN)
    assert [e["name"] for e in sel["checkpoints"]] == ["step-2"] and sel["final"] == "step-2"
    assert "1 of the 2 checkpoints" in sel["note"]  # keep_checkpoints=1 pruned step-1
    model, _ = load_run_model(runs["lora"], "step-2", device="cpu")
    assert any("lora_" in n for n, _ in model.named_parameters())
    # the rebuilt adapter + step-2's weights answer exactly like final/ (base + saved adapter)
    evaluate_run(runs["lora"], world["eval"], "validation", python_reward(polite), **GEN)
    gens = runs["lora"] / "generations"
    final = read_generations_jsonl(gens / "eval_validation.jsonl")
    step = read_generations_jsonl(gens / "select_validation_step-2.jsonl")
    assert [r["token_ids"] for r in final.values()] == [r["token_ids"] for r in step.values()]


# ---------------------------------------------------------------- adpa eval


def test_adpa_eval_prints_a_table_and_writes_eval_json(world, runs, capsys):
    args = ["eval", str(runs["sft"]), str(runs["lora"]), "--data", world["eval"], "--quiet"]
    args += ["--reward", "py:tests.test_evaluate:polite", "--baseline", world["student"]]
    assert main([*args, "--max-new-tokens", "4", "--limit", "4", "--select-checkpoint"]) == 0
    captured = capsys.readouterr()
    lines = captured.out.strip().splitlines()
    assert lines[0].split()[:3] == ["run", "weights", "n"]
    assert "(baseline)" in lines[1] and lines[2].startswith("sft-run") and lines[3].startswith("lora-run")
    assert "best checkpoint on validation" in captured.err
    saved = json.loads((runs["lora"] / "eval.json").read_text())
    assert saved["n"] == 4 and saved["checkpoint"].startswith("step-") and "win_tie_loss" in saved


def test_adpa_eval_without_reward_for_a_non_toy_run_is_one_error_line(world, runs, capsys):
    assert main(["eval", str(runs["sft"]), "--data", world["eval"]]) == EXIT_USER_ERROR
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error:") and "--reward" in err[0]
