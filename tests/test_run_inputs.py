"""What a run reads besides its models: teacher caches for every teacher layout and split, held-out eval
rows, the student's own replies y_hat, and the order in which inputs are checked (issue: the real path)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from peft import LoraConfig, get_peft_model
from transformers import AutoModelForCausalLM

from adpa_core import train as train_module
from adpa_core.config import ConfigError
from adpa_core.data import DataError
from adpa_core.generate import generate, read_generations_jsonl
from adpa_core.models import load_inference_model, load_tokenizer
from adpa_core.prepare import held_out, load_rows
from adpa_core.runs import RunDir
from adpa_core.teacher import StaleCacheError, build_teacher_cache
from adpa_core.train import run_training
from tests.trainkit import build_world, make_cfg


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> dict[str, str]:
    root = tmp_path_factory.mktemp("world")
    paths = build_world(root)
    # A DPO teacher as a LoRA adapter on the reference teacher (the layout of every real recipe); its B
    # matrices are random so that the adapter changes the teacher.
    base = AutoModelForCausalLM.from_pretrained(paths["teacher_ref"])
    torch.manual_seed(3)
    peft = get_peft_model(base, LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj", "up_proj"]))
    with torch.no_grad():
        for name, p in peft.named_parameters():
            if "lora_B" in name:
                p.normal_(0.0, 0.05)
    peft.save_pretrained(root / "adapter")
    paths["adapter"] = str(root / "adapter")
    return paths


def _losses(cfg) -> list[float]:
    return [r["loss"] for r in RunDir(cfg.run_dir).read_metrics() if "loss" in r]


def _eval_losses(cfg) -> list[float]:
    return [r["eval_loss"] for r in RunDir(cfg.run_dir).read_metrics() if "eval_loss" in r]


LAYOUTS = {
    "two-models": {"teacher": "teacher", "teacher_ref": "teacher_ref"},
    "adapter": {"teacher": "teacher_ref", "teacher_adapter": "adapter"},
    "4bit": {"teacher": "teacher", "teacher_ref": "teacher_ref", "teacher_quantization": "4bit"},
    "adapter-4bit": {"teacher": "teacher_ref", "teacher_adapter": "adapter", "teacher_quantization": "4bit"},
}


def _pair_cfg(world, out: Path, method: str, layout: str, cache: Path | None, **sections):
    model = {k: (world[v] if k != "teacher_quantization" else v) for k, v in LAYOUTS[layout].items()}
    model.update(student=world["student"], device="cpu", teacher_ref=model.get("teacher_ref"))
    objective = {"method": method, "support": "full", "k": 64, "max_new_tokens": 6}
    if cache is not None:
        objective.update(teacher_source="cache", teacher_cache=str(cache))
    objective.update(sections.pop("objective", {}))
    train = {"max_steps": 3, **sections.pop("train", {})}
    return make_cfg(world, out, method, model=model, objective=objective, train=train, **sections)


@pytest.mark.parametrize("layout", list(LAYOUTS))
@pytest.mark.parametrize("method", ["dckd", "adpa"])
def test_cached_teacher_equals_online_for_every_teacher_layout(world, tmp_path, method, layout):
    """The cache serves adapters and quantized teachers exactly like the online path (k = V, float32),
    including the evaluation loss, which reads the eval split from the cache too."""
    extra = {"train": {"eval_every": 2, "max_steps": 4}}
    online = _pair_cfg(world, tmp_path / "online", method, layout, None, **extra)
    run_training(online, progress=False)
    cached = _pair_cfg(world, tmp_path / "cached", method, layout, tmp_path / "cache", **extra)
    meta = build_teacher_cache(cached, logp_dtype="float32")
    assert meta["splits"] == ["train", "eval"] and meta["teacher_quantization"] == LAYOUTS[layout].get(
        "teacher_quantization", "none"
    )
    run_training(cached, progress=False)
    assert _losses(cached) == pytest.approx(_losses(online), rel=1e-5, abs=1e-6)
    assert len(_eval_losses(cached)) == 2
    assert _eval_losses(cached) == pytest.approx(_eval_losses(online), rel=1e-5, abs=1e-6)


def test_cache_without_the_eval_split_is_refused_before_models_load(world, tmp_path, monkeypatch):
    cfg = _pair_cfg(world, tmp_path, "dckd", "two-models", tmp_path / "cache")
    build_teacher_cache(cfg)
    evaluating = _pair_cfg(
        world, tmp_path / "b", "dckd", "two-models", tmp_path / "cache", train={"eval_every": 1}
    )
    monkeypatch.setattr(train_module, "load_models", _no_models)
    with pytest.raises(StaleCacheError, match="train split only.*eval_every"):
        run_training(evaluating, progress=False)


def _no_models(*args, **kwargs):
    raise AssertionError("models were loaded before the cheap checks")


def test_cache_built_for_kd_is_refused_for_dckd(world, tmp_path):
    kd = _pair_cfg(world, tmp_path, "kd", "two-models", tmp_path / "cache")
    build_teacher_cache(kd)
    dckd = _pair_cfg(world, tmp_path / "b", "dckd", "two-models", tmp_path / "cache")
    with pytest.raises(StaleCacheError, match="needs rejected"):
        run_training(dckd, progress=False)


def test_retrained_adapter_in_the_same_folder_makes_the_cache_stale(world, tmp_path):
    adapter = tmp_path / "adapter"
    import shutil

    shutil.copytree(world["adapter"], adapter)
    local = {**world, "adapter": str(adapter)}
    cfg = _pair_cfg(local, tmp_path, "adpa", "adapter", tmp_path / "cache", objective={"k": 8})
    build_teacher_cache(cfg)
    weights = adapter / "adapter_model.safetensors"
    from safetensors.torch import load_file, save_file

    state = load_file(weights)
    save_file({k: v + 0.01 for k, v in state.items()}, weights)  # the adapter was trained again
    later = _pair_cfg(local, tmp_path / "b", "adpa", "adapter", tmp_path / "cache", objective={"k": 8})
    with pytest.raises(StaleCacheError, match="teacher_adapter"):
        run_training(later, progress=False)


# ---------------------------------------------------------------- k and use_reference with a cache


def test_no_reference_ablation_from_a_complete_cache_equals_online(world, tmp_path):
    obj = {"use_reference": False}
    online = _pair_cfg(world, tmp_path / "online", "adpa", "two-models", None, objective=obj)
    run_training(online, progress=False)
    cached = _pair_cfg(world, tmp_path / "cached", "adpa", "two-models", tmp_path / "cache", objective=obj)
    build_teacher_cache(cached, logp_dtype="float32")
    run_training(cached, progress=False)
    with_ref = _pair_cfg(world, tmp_path / "ref", "adpa", "two-models", None)
    run_training(with_ref, progress=False)
    assert _losses(cached) == pytest.approx(_losses(online), rel=1e-5, abs=1e-6)
    assert _losses(cached) != pytest.approx(_losses(with_ref), rel=1e-3)  # the reference really is off


def test_no_reference_ablation_from_a_top_k_cache_is_refused(world, tmp_path):
    cfg = _pair_cfg(world, tmp_path, "adpa", "two-models", tmp_path / "cache", objective={"k": 8})
    build_teacher_cache(cfg)
    ablation = _pair_cfg(
        world,
        tmp_path / "b",
        "adpa",
        "two-models",
        tmp_path / "cache",
        objective={"k": 8, "use_reference": False},
    )
    with pytest.raises(ConfigError, match="use_reference=false.*top-8 of 64"):
        run_training(ablation, progress=False)


def test_k_larger_than_the_cache_is_refused(world, tmp_path):
    cfg = _pair_cfg(world, tmp_path, "dckd", "two-models", tmp_path / "cache", objective={"k": 8})
    build_teacher_cache(cfg)
    wider = _pair_cfg(world, tmp_path / "b", "dckd", "two-models", tmp_path / "cache", objective={"k": 20})
    with pytest.raises(ConfigError, match="objective.k=20.*top-8"):
        run_training(wider, progress=False)


# ---------------------------------------------------------------- held-out eval rows


def test_local_file_with_eval_needs_held_out_rows(world, tmp_path):
    with pytest.raises(ConfigError, match="eval_holdout"):
        make_cfg(world, tmp_path, "sft", data={"eval": None}, train={"eval_every": 1})


def test_eval_holdout_splits_a_local_file_by_id(world, tmp_path):
    cfg = make_cfg(
        world,
        tmp_path,
        "adpa",
        data={"eval": None, "eval_holdout": 0.3},
        train={"eval_every": 2, "max_steps": 2},
    )
    tok = load_tokenizer(world["student"])
    train_ids = {r["id"] for r in load_rows(cfg, tok, "train")}
    eval_ids = {r["id"] for r in load_rows(cfg, tok, "eval")}
    assert train_ids and eval_ids and not train_ids & eval_ids
    assert eval_ids == {i for i in train_ids | eval_ids if held_out(i, 0.3, cfg.train.seed)}
    run_training(cfg, progress=False)
    run = RunDir(cfg.run_dir)
    yhat_train = read_generations_jsonl(run.generations_dir / "yhat.jsonl")
    yhat_eval = read_generations_jsonl(run.generations_dir / "yhat_eval.jsonl")
    assert set(yhat_train) == train_ids and set(yhat_eval) == eval_ids
    assert len(_eval_losses(cfg)) == 1


def test_eval_holdout_and_eval_file_together_are_refused(world, tmp_path):
    with pytest.raises(ConfigError, match="both set"):
        make_cfg(world, tmp_path, "sft", data={"eval_holdout": 0.2})


# ---------------------------------------------------------------- y_hat


def test_yhat_comes_from_the_truncated_prompt_it_is_trained_on(world, tmp_path, monkeypatch):
    import adpa_core.prepare as prepare

    seen = []
    real_generate = prepare.generate
    monkeypatch.setattr(
        prepare, "generate", lambda m, t, p, **kw: seen.extend(p) or real_generate(m, t, p, **kw)
    )
    long_prompt = "where is the city paris rome oslo lima kyiv cat dog ? " * 3
    rows = [
        {"id": f"r{i}", "prompt": f"{long_prompt} {w}", "chosen": "yes", "rejected": "no"}
        for i, w in enumerate(["cat", "dog", "rome", "oslo"])
    ]
    data = tmp_path / "long.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    cfg = make_cfg(
        world,
        tmp_path,
        "adpa",
        data={"train": str(data), "eval": None, "max_length": 40, "max_prompt_length": 12},
        train={"max_steps": 1},
    )
    run_training(cfg, progress=False)
    yhat = read_generations_jsonl(RunDir(cfg.run_dir).generations_dir / "yhat.jsonl")
    model, tok = load_inference_model(world["student"], "cpu")
    trained = {r["id"]: r["prompt_input_ids"] for r in load_rows(cfg, tok, "train")}
    assert all(len(p) == 12 for p in trained.values())  # the prompts really were cut
    assert sorted(map(tuple, seen)) == sorted(map(tuple, trained.values()))  # generated from those tokens
    ids = sorted(trained)
    from_truncated = generate(model, tok, [trained[i] for i in ids], max_new_tokens=6, progress=False)
    assert [yhat[i]["token_ids"] for i in ids] == [g.token_ids for g in from_truncated]


def test_yhat_cache_is_keyed_by_what_produced_it(world, tmp_path, monkeypatch):
    import adpa_core.prepare as prepare

    calls = []
    real_generate = prepare.generate

    def counting(model, tokenizer, prompts, **kw):
        calls.append((len(prompts), kw["max_new_tokens"]))
        return real_generate(model, tokenizer, prompts, **kw)

    monkeypatch.setattr(prepare, "generate", counting)
    cfg = make_cfg(world, tmp_path, "adpa", train={"max_steps": 1})
    run_training(cfg, progress=False)
    n = calls[0][0]
    # same run directory, same student and settings: the replies are reused
    run_training(make_cfg(world, tmp_path, "adpa", train={"max_steps": 2}), resume=True, progress=False)
    assert len(calls) == 1
    # another reply budget: every reply is generated again
    longer = make_cfg(world, tmp_path, "adpa", objective={"max_new_tokens": 9}, train={"max_steps": 3})
    run_training(longer, resume=True, progress=False)
    assert calls[1] == (n, 9)
    # another student writing to the same file: generated again, and the file says which student it was
    other = make_cfg(
        world, tmp_path, "adpa", model={"student": world["teacher_ref"]}, objective={"max_new_tokens": 9}
    )
    model, tok = load_inference_model(world["teacher_ref"], "cpu")
    path = RunDir(cfg.run_dir).generations_dir / "yhat.jsonl"
    prepare.attach_yhat(load_rows(other, tok, "train"), other, model, tok, path)
    assert calls[2] == (n, 9)
    records = read_generations_jsonl(path)
    assert all(world["teacher_ref"] in r["producer"]["student"] for r in records.values())


# ---------------------------------------------------------------- order of checks


def test_bad_data_is_reported_before_any_model_loads(world, tmp_path, monkeypatch):
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"prompt": "hi", "chosen": "yes"}) + "\n")
    cfg = make_cfg(world, tmp_path, "dckd", data={"train": str(bad), "eval": None})
    monkeypatch.setattr(train_module, "load_models", _no_models)
    with pytest.raises(DataError, match="bad.jsonl row 0.*rejected"):
        run_training(cfg, progress=False)
    assert RunDir(cfg.run_dir).read_status()["state"] == "failed"
