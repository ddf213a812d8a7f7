"""`adpa toy build --quick`: the three models through the project's own train(), the manifest, skipping,
and advantages that point at the generator's known flaws."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from adpa_core.models import load_inference_model
from adpa_core.paths import resolve_model_path
from adpa_core.toy.build import STAGES, build


@pytest.fixture(scope="module")
def manifest(toy_home):
    return json.loads((Path(toy_home) / "toy" / "manifest.json").read_text())


def test_every_stage_trained_by_train_and_published(toy_home, manifest):
    toy = Path(toy_home) / "toy"
    for stage, (target, *_rest) in STAGES.items():
        assert manifest["stages"][stage]["sha256"]
        run = toy / "runs" / stage
        status = json.loads((run / "status.json").read_text())
        assert status["state"] == "completed" and (run / "metrics.jsonl").exists()
        assert resolve_model_path(f"toy:{target}") == str(toy / target)
        model, tokenizer = load_inference_model(f"toy:{target}", device="cpu")
        assert len(tokenizer) % 32 == 0 and model.config.hidden_size % 32 == 0
    assert 8 <= manifest["teacher_student_ratio"] <= 11
    for key in ("seed", "mode", "versions", "recipe", "parameters", "build_seconds", "evaluation"):
        assert key in manifest


def test_a_second_build_skips_what_is_built(toy_home, manifest):
    again = build(toy_home, quick=True, progress=False)
    assert again["stages"] == manifest["stages"]  # same keys and weights: nothing was retrained
    assert again["build_seconds"] < 30


def test_record_writes_the_manifest_with_the_command_and_the_machine(toy_home, manifest, tmp_path):
    """`--record` (README's toy block is rendered from such a file): the command as typed, where and when it
    ran with the load average, and the build's own evaluation."""
    from adpa_core.cli import main

    out = tmp_path / "toy_world.json"
    argv = ["toy", "build", "--quick", "--home", toy_home, "--quiet", "--record", str(out)]
    assert main(argv) == 0
    recorded = json.loads(out.read_text())
    assert recorded["command"] == "adpa " + " ".join(argv)
    assert recorded["evaluation"] == manifest["evaluation"]
    assert recorded["mode"] == "quick" and recorded["stages"] == manifest["stages"]
    assert len(recorded["host"]["load_average"]) == 3 and recorded["host"]["cpu_count"] >= 1
    assert recorded["host"]["date_utc"][:2] == "20"


def test_dpo_teacher_improves_on_the_reference_teacher(manifest):
    ev = manifest["evaluation"]
    assert ev["teacher"]["reward"] > ev["teacher_ref"]["reward"]
    assert ev["teacher"]["rude_rate"] < ev["teacher_ref"]["rude_rate"]


def test_advantages_rank_pairs_and_point_at_the_flaws(manifest):
    """Even the quick world's teacher ranks most held-out pairs and puts its most negative advantage on a
    flaw token of the rejected response for each failure kind (the full world's numbers are in the README)."""
    adv = manifest["evaluation"]["advantages"]
    assert adv["pairs"] > 0
    assert adv["rank_rate"] >= 0.8
    assert adv["flaw_hit_rate"] >= 0.7
    for kind in ("wrong", "rude", "ramble"):
        assert adv["flaw_hit_rate_by_kind"][kind] >= 0.5, (kind, adv)
