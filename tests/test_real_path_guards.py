"""Smaller defects of the real-model path: run names for `adpa advantages`, reward models without a trained
score head, the toy reward on real prompts, and bitsandbytes' per-call 8-bit casting notice."""

from __future__ import annotations

import json
import logging

import pytest
import torch

from adpa_core.cli import EXIT_USER_ERROR, main
from adpa_core.config import ModelConfig
from adpa_core.evaluate import EvalError, evaluate_run
from adpa_core.models import ModelLoadError, load_teacher_pair
from adpa_core.rewards import require_toy_prompts, reward_model, toy_reward
from adpa_core.runs import RunDir
from adpa_core.toy.datasets import build_rows
from adpa_core.toy.world import make_world
from adpa_core.train import run_training
from tests.tiny import make_llama, make_tokenizer, save_model
from tests.trainkit import build_world, make_cfg

ASK = ["--prompt", "where is the cat ?", "--response", "yes please", "--json", "--device", "cpu"]


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    return build_world(tmp_path_factory.mktemp("guards"))


@pytest.fixture(scope="module")
def lora_dpo_run(world, tmp_path_factory):
    """A DPO teacher trained as a LoRA adapter on the tiny student: its final/ is an adapter folder."""
    out = tmp_path_factory.mktemp("runs")
    cfg = make_cfg(world, out, "dpo", model={"lora": True, "lora_r": 4}, train={"max_steps": 2})
    run_training(cfg, progress=False)
    assert (RunDir(cfg.run_dir).final_dir / "adapter_config.json").is_file()
    return cfg.run_dir


def _advantages(capsys, args: list[str]) -> dict:
    capsys.readouterr()
    assert main(["advantages", *args, *ASK]) == 0
    return json.loads(capsys.readouterr().out)


def test_advantages_accepts_a_run_directory_and_a_run_name(world, lora_dpo_run, capsys):
    explicit = _advantages(
        capsys, ["--teacher", world["student"], "--teacher-adapter", str(lora_dpo_run / "final")]
    )
    by_dir = _advantages(capsys, ["--teacher", str(lora_dpo_run)])
    by_name = _advantages(capsys, ["--teacher", lora_dpo_run.name, "--runs-dir", str(lora_dpo_run.parent)])
    assert by_dir == explicit == by_name
    assert explicit["logp_ref"] is not None and explicit["total"] != 0  # the base, with the adapter off


def test_advantages_with_a_lora_run_and_another_reference_is_one_error_line(world, lora_dpo_run, capsys):
    args = ["advantages", "--teacher", str(lora_dpo_run), "--teacher-ref", world["teacher_ref"], *ASK]
    assert main(args) == EXIT_USER_ERROR
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "is a LoRA adapter on" in err[0] and "leave out --teacher-ref" in err[0]


def test_a_chat_model_is_refused_as_a_reward_model(tmp_path, world, capsys):
    tok = make_tokenizer()
    chat = save_model(tmp_path / "chat", tok, make_llama(tok))
    with pytest.raises(ModelLoadError, match=r"not a trained reward model: .*score\.weight"):
        reward_model(str(chat))
    run = tmp_path / "runs"
    cfg = make_cfg(world, run, "sft", train={"max_steps": 1})
    run_training(cfg, progress=False)
    args = ["eval", str(cfg.run_dir), "--data", world["eval"], "--reward", str(chat), "--quiet"]
    capsys.readouterr()
    assert main(args) == EXIT_USER_ERROR
    err = capsys.readouterr().err
    assert err.strip().splitlines()[-1].startswith("error: ") and "not a trained reward model" in err
    assert "LOAD REPORT" not in err  # transformers' table of missing weights gives way to the one error


def test_the_toy_reward_refuses_prompts_that_are_not_toy_prompts(world, tmp_path):
    rows = build_rows(make_world(0), 0, quick=True)
    require_toy_prompts([r["prompt"] for split in rows.values() for r in split])  # every toy prompt passes
    reward = toy_reward()
    toy = [{"role": "user", "content": rows["prompts_test"][0]["prompt"]}]
    assert len(reward([toy], ["seven ."], [True])) == 1
    real = [{"role": "user", "content": "What is the capital of France?"}]
    with pytest.raises(EvalError, match=r"only scores toy-world prompts, but 1 of 2 .*'What'"):
        reward([toy, real], ["seven .", "Paris."], [True, True])
    cfg = make_cfg(world, tmp_path, "sft", train={"max_steps": 1})
    run_training(cfg, progress=False)
    with pytest.raises(EvalError, match="only scores toy-world prompts"):
        evaluate_run(cfg.run_dir, world["eval"], "test", "toy", max_new_tokens=3)
    assert not (RunDir(cfg.run_dir).generations_dir / "eval_test.jsonl").exists()  # refused before generating


def test_an_8bit_teacher_step_logs_the_casting_notice_at_most_once(world, tmp_path, caplog):
    cfg = ModelConfig(student=world["student"], teacher=world["teacher"], teacher_quantization="8bit")
    pair = load_teacher_pair(cfg, "cpu")
    ids = torch.tensor([[1, 10, 11, 12, 13, 14, 5]])
    with caplog.at_level(logging.WARNING):
        for _ in range(4):
            pair.dpo_forward(ids)
    bnb = [r for r in caplog.records if r.name.startswith("bitsandbytes")]
    assert len(bnb) <= 1, [r.getMessage() for r in bnb[:3]]
    assert all("shown once" in r.getMessage() for r in bnb)
    # a training step with the 8-bit teacher: at most that one line
    run = make_cfg(world, tmp_path, "kd", model={"teacher_quantization": "8bit"}, train={"max_steps": 2})
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        run_training(run, progress=False)
    assert len([r for r in caplog.records if r.name.startswith("bitsandbytes")]) <= 1
