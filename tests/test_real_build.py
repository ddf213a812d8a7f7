"""`adpa real build` on a tiny stand-in base model: prompts, judged on-policy pairs, the DPO adapter through
`train()`, evaluation and health gates in the manifest, skipping, determinism, and the `real:` names.

The build on SmolLM2 itself is the `real_home` fixture (tests/conftest.py), used by the notebook and
browser tests."""

from __future__ import annotations

import json
import os

import pytest
import yaml

from adpa_core.config import config_from_dict
from adpa_core.data import load_prompts, read_preferences
from adpa_core.evaluate import eval_inputs
from adpa_core.models import load_inference_model
from adpa_core.paths import resolve_model_path
from adpa_core.real.build import build, is_built, summary
from adpa_core.worlds import home_env

from .realkit import RECIPE, tiny_real_world


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    home = tmp_path_factory.mktemp("real-home")
    return home, tiny_real_world(home)


def test_build_writes_data_pairs_teacher_and_manifest(world):
    home, manifest = world
    real = home / "real"
    for split in ("train", "validation", "test", "unseen"):
        assert (real / "data" / f"prompts_{split}.jsonl").exists()
    stats = manifest["pairs"]["stats"]["train"]
    assert stats["prompts"] == 24 and 0 < stats["pairs"] <= 24
    assert stats["chosen_score"] > stats["rejected_score"]
    assert stats["tie_rate"] == pytest.approx(1 - stats["pairs"] / 24)
    status = json.loads((real / "runs" / "teacher_dpo" / "status.json").read_text())
    assert status["state"] == "completed" and status["step"] == 3
    assert (real / "teacher" / "adapter_model.safetensors").exists()
    ev = manifest["evaluation"]
    for name in ("teacher_ref", "teacher"):
        assert ev[name]["test"]["n"] == 8 and ev[name]["unseen"]["n"] == 6
        assert "mean_tokens" in ev[name]["test"] and "any_hack_rate" in ev[name]["test"]
    assert ev["student"] == {"same_as": "teacher_ref"}
    assert set(ev["health"]) == {"teacher_gain", "rank_rate", "teacher_hack_rate"}
    gain = ev["teacher"]["test"]["reward"] - ev["teacher_ref"]["test"]["reward"]
    assert ev["health"]["teacher_gain"]["value"] == pytest.approx(gain)
    assert manifest["build"]["cpu_seconds"] > 0 and "load_average_at_start" in manifest["build"]
    assert "real world (quick, seed 1)" in summary(manifest)


def test_real_names_resolve_in_the_built_home(world):
    home, manifest = world
    with home_env(home):
        assert is_built()
        assert resolve_model_path("real:teacher") == str(home / "real" / "teacher")
        assert resolve_model_path("real:teacher_ref") == manifest["base"]["path"]
        assert resolve_model_path("real:student") == manifest["base"]["path"]
        rows, _ = read_preferences("real:preferences", split="train")
        assert rows and {"prompt", "chosen", "rejected"} <= set(rows[0])
        assert len(load_prompts("real:prompts", split="unseen")) == 6
        model, _ = load_inference_model("real:teacher", device="cpu")
        assert type(model).__name__ == "PeftModelForCausalLM"
        cfg = config_from_dict({"model": {"student": "real:student"}, "data": {"train": "real:preferences"}})
        assert eval_inputs(cfg, None, None) == ("real:prompts", "real")


def test_a_second_build_skips_what_is_built(world):
    home, manifest = world
    weights = home / "real" / "teacher" / "adapter_model.safetensors"
    mtime = os.stat(weights).st_mtime_ns
    again = build(
        home, seed=1, quick=True, progress=False, base=manifest["base"]["path"], recipe=RECIPE, n_threads=1
    )
    assert again["stages"] == manifest["stages"] and again["pairs"] == manifest["pairs"]
    assert again["evaluation"] == manifest["evaluation"]
    assert again["build"]["steps_seconds"] == {}  # nothing sampled, trained or evaluated again
    assert os.stat(weights).st_mtime_ns == mtime


def test_same_seed_same_world(world, tmp_path):
    home, manifest = world
    other = tiny_real_world(tmp_path)
    for name in ("prompts_train.jsonl", "preferences_train.jsonl", "samples_test.jsonl"):
        assert (tmp_path / "real" / "data" / name).read_bytes() == (
            home / "real" / "data" / name
        ).read_bytes()
    assert other["stages"]["teacher_dpo"]["sha256"] == manifest["stages"]["teacher_dpo"]["sha256"]


def test_unknown_or_unbuilt_real_names_say_what_to_do(tmp_path):
    with home_env(tmp_path):
        with pytest.raises(ValueError, match="real:teacher, real:teacher_ref, real:student"):
            resolve_model_path("real:teachers")
        with pytest.raises(FileNotFoundError, match="adpa real build"):
            resolve_model_path("real:teacher")
        with pytest.raises(ValueError, match="adpa real build"):
            load_prompts("real:prompts", split="test")
        assert not is_built()


def test_compare_trains_every_row_from_the_same_student_and_judges_it(world, tmp_path):
    from adpa_core.real.compare import ROWS, compare

    home, _ = world
    extra = ["train.batch_size=2", "objective.max_new_tokens=6"]
    with home_env(home):
        results = compare(seeds=1, steps=1, out=tmp_path, max_new_tokens=6, extra=extra, command="test")
        again = compare(seeds=1, steps=1, out=tmp_path, max_new_tokens=6, extra=extra)  # all reused
    assert list(results["rows"]) == [row[0] for row in ROWS]
    for name, row in results["rows"].items():
        lo, hi = row["test"]["ci"]
        assert lo <= row["test"]["judge"] <= hi and row["seeds"] == 1, name
        assert again["rows"][name] == row
    assert (tmp_path / "table.md").read_text().count("\n") == len(ROWS) + 2
    config = yaml.safe_load((tmp_path / "seed-0" / "runs" / "adpa_plus-seed0" / "config.yaml").read_text())
    assert config["model"]["student"].endswith("dckd-seed0")  # ADPA+ starts from the DCKD run
