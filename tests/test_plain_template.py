"""Base models without a chat template: the plain template (end of turn = eos) or a template the config names,
through training, y_hat generation, `adpa generate`, `adpa eval` and advantages."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest
import torch

from adpa_core.advantage import response_advantages
from adpa_core.cli import main
from adpa_core.config import ModelConfig
from adpa_core.data import (
    PLAIN_CHAT_TEMPLATE,
    DataError,
    chat_template_id,
    end_of_turn_id,
    prompt_ids,
    tokenize_example,
)
from adpa_core.evaluate import evaluate_run, python_reward
from adpa_core.generate import decoding_settings, generate, read_generations_jsonl
from adpa_core.models import load_teacher_pair, load_tokenizer
from adpa_core.runs import RunDir
from adpa_core.train import run_training
from tests.test_generation_settings import argmax_reply
from tests.tiny import WORDS, make_llama, make_tokenizer, save_model
from tests.trainkit import make_cfg, preference_rows, write_jsonl

USER = [{"role": "user", "content": "where is the cat ?"}]


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def base_tokenizer():
    """The tiny word-level tokenizer with the plain template's words and no chat template."""
    tok = make_tokenizer([*WORDS, "User:", "Assistant:"])
    tok.chat_template = None
    return tok


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """A student, reference teacher and DPO teacher whose tokenizers have no chat template (base models)."""
    root = tmp_path_factory.mktemp("base")
    tok = base_tokenizer()
    paths = {"student": str(save_model(root / "student", tok, make_llama(tok, hidden=32, seed=1)))}
    ref = make_llama(tok, hidden=64, intermediate=128, seed=2)
    paths["teacher_ref"] = str(save_model(root / "teacher_ref", tok, ref))
    with torch.no_grad():
        for p in ref.parameters():
            p.add_(0.05 * torch.randn_like(p))
    paths["teacher"] = str(save_model(root / "teacher", tok, ref))
    paths["train"] = str(write_jsonl(root / "train.jsonl", preference_rows(12, seed=0)))
    paths["eval"] = str(write_jsonl(root / "eval.jsonl", preference_rows(4, seed=1)))
    assert load_tokenizer(paths["student"]).chat_template is None
    return paths


def test_plain_template_renders_and_ends_turns_with_eos(caplog):
    tok = base_tokenizer()
    with caplog.at_level(logging.WARNING):
        ex = tokenize_example(tok, USER, "yes please", max_length=32, max_prompt_length=16)
        tokenize_example(tok, USER, "sure", max_length=32, max_prompt_length=16)
    warned = [r for r in caplog.records if "has no chat template" in r.getMessage()]
    assert len(warned) == 1 and "eos token '<|end|>'" in warned[0].getMessage()  # once per tokenizer
    prompt = tok.decode(ex["input_ids"][: ex["prompt_length"]])
    assert prompt == "<bos> User: where is the cat ? Assistant:"
    response = [t for t in ex["labels"] if t != -100]
    assert tok.convert_ids_to_tokens(response) == ["yes", "please", "<|end|>"]  # trained to stop at eos
    assert end_of_turn_id(tok) == tok.eos_token_id
    assert chat_template_id(tok) == "plain"
    assert chat_template_id(make_tokenizer()).startswith("sha1:")


def test_smollm2_tokenizer_without_its_template(smol_path, tmp_path):
    folder = tmp_path / "smol-base"
    folder.mkdir()
    for f in Path(smol_path).iterdir():
        if f.name != "chat_template.jinja":
            (folder / f.name).symlink_to(f)
    tok = load_tokenizer(str(folder))
    assert tok.chat_template is None and chat_template_id(tok) == "plain"
    ex = tokenize_example(tok, USER, "In the garden.", max_length=64, max_prompt_length=32)
    text = tok.decode(ex["input_ids"])
    assert text == "<|im_start|>User: where is the cat ?\n\nAssistant: In the garden.<|im_end|>"
    assert ex["labels"][-2] == tok.eos_token_id == end_of_turn_id(tok)


def test_the_config_can_name_the_template(tmp_path):
    own = make_tokenizer()
    path = save_model(tmp_path / "m", own, make_llama(own))
    plain = load_tokenizer(str(path), chat_template="plain")
    assert plain.chat_template == PLAIN_CHAT_TEMPLATE
    jinja = tmp_path / "t.jinja"
    jinja.write_text(
        "{% for m in messages %}<|system|> {{ m['content'] }} {% endfor %}"
        "{% if add_generation_prompt %}<|assistant|>{% endif %}"
    )
    custom = load_tokenizer(str(path), chat_template=str(jinja))
    assert custom.decode(prompt_ids(custom, USER)) == "<|system|> where is the cat ? <|assistant|>"
    with pytest.raises(DataError, match=r"model\.chat_template: cannot read the template file .*nope\.jinja"):
        load_tokenizer(str(path), chat_template=str(tmp_path / "nope.jinja"))


def test_training_with_yhat_eval_and_generate_on_base_models(world, tmp_path, capsys):
    cfg = make_cfg(world, tmp_path, "adpa", train={"max_steps": 2}, objective={"max_new_tokens": 4})
    run_training(cfg, progress=False)
    run = RunDir(cfg.run_dir)
    assert run.read_status()["state"] == "completed"
    assert run.read_status()["chat_template"] == "plain"  # stated in the run's records
    yhat = read_generations_jsonl(run.generations_dir / "yhat.jsonl")
    assert len(yhat) == 12
    tok = load_tokenizer(str(run.final_dir))
    assert tok.chat_template is None and chat_template_id(tok) == "plain"  # evaluation renders the same way
    out = evaluate_run(
        cfg.run_dir, world["eval"], "test", python_reward(lambda p, r, s: float(s)), max_new_tokens=4
    )
    assert out["n"] == 4
    gen_out = tmp_path / "gen.jsonl"
    args = ["generate", "--model", str(cfg.run_dir), "--data", world["eval"], "--out", str(gen_out)]
    assert main([*args, "--max-new-tokens", "4"]) == 0
    records = [json.loads(line) for line in gen_out.read_text().splitlines()]
    assert len(records) == 4 and all(r["chat_template"] == "plain" for r in records)


def test_generation_under_the_plain_template_stops_at_eos(world):
    tok = load_tokenizer(world["student"])
    assert decoding_settings(tokenizer=tok)["eos_token_id"] == [tok.eos_token_id]
    model = make_llama(tok, seed=5)
    (gen,) = generate(model, tok, [USER], max_new_tokens=5, progress=False)
    assert gen.token_ids == argmax_reply(model, tok, USER, 5)  # from the plain prompt "... Assistant:"


def test_advantages_on_base_models(world):
    tok = load_tokenizer(world["student"])
    cfg = ModelConfig(student=world["student"], teacher=world["teacher"], teacher_ref=world["teacher_ref"])
    pair = load_teacher_pair(cfg, "cpu", tok)
    report = response_advantages(pair, tok, USER, "yes please", beta=1.0, k=3)
    assert report.tokens == ["yes", "please", "<|end|>"]  # the plain template's end of turn: eos
    args = ["advantages", "--teacher", world["teacher"], "--teacher-ref", world["teacher_ref"], "--json"]
    assert main([*args, "--prompt", "where is the cat ?", "--response", "yes please", "--device", "cpu"]) == 0
