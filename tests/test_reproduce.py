"""`adpa reproduce --quick` runs every row of the method table end to end and writes the table."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from adpa_core.config import RELEASED_SWITCHES
from adpa_core.reproduce import ROWS, reproduce
from adpa_core.reproduce_table import (
    ablation_markdown,
    ablations,
    aggregate,
    markdown,
    mean_ci,
    per_seed_markdown,
)


def test_mean_ci_by_hand():
    mean, half = mean_ci([1.0, 2.0, 3.0])  # sd 1, t(0.975, 2) = 4.303 -> 4.303 / sqrt(3)
    assert mean == 2.0 and half == pytest.approx(4.303 / 3**0.5)
    assert mean_ci([5.0]) == (5.0, 0.0)


@pytest.mark.slow
def test_quick_reproduce_runs_every_row(toy_home, tmp_path):
    # the session's quick toy world is seed 0's world: reuse it instead of building it again
    shutil.copytree(Path(toy_home) / "toy", tmp_path / "seed-0" / "home" / "toy")
    results = reproduce(1, tmp_path, quick=True)
    rows = results["per_seed"][0]["rows"]
    assert list(rows) == [r.name for r in ROWS]
    for row in ROWS:
        assert isinstance(rows[row.name]["reward"], float)
        if row.method is not None:  # trained, chosen on validation, scored on test
            assert rows[row.name]["chosen"]["val_reward"] is not None
    table = (tmp_path / "table.md").read_text()
    assert all(r.name in table for r in ROWS)
    switches = results["released_code_switches"]  # one row per switch, measured against its preset
    assert sorted(d["switch"] for d in switches.values()) == sorted(RELEASED_SWITCHES)
    for name, d in switches.items():
        assert rows[name]["chosen"]["settings"] == rows[d["base"]]["chosen"]["settings"]
        assert (
            d["reward"]["n"] == 1
            and d["reward"]["mean_diff"] == rows[name]["reward"] - rows[d["base"]]["reward"]
        )
        assert f"`{d['switch']}`" in table
    assert json.loads((tmp_path / "results.json").read_text())["seeds"] == [0]
    assert "plotly" in (tmp_path / "figure.html").read_text()


def test_markdown_layout():
    per_seed = {
        0: {"rows": {r.name: {"reward": 1.0, "fact_hard": 0.5} for r in ROWS}},
        1: {"rows": {r.name: {"reward": 1.5, "fact_hard": 0.7} for r in ROWS}},
    }
    text = markdown(aggregate(per_seed), [0, 1], "adpa reproduce --seeds 2")
    assert "| SFT student (start) | 1.25 ±" in text and "adpa reproduce --seeds 2" in text


def test_prompt_samples_span_every_kind_and_are_seeded():
    from adpa_core.reproduce import sample_prompts

    rows = [{"id": i, "kind": "fact" if i < 150 else "arith"} for i in range(300)]  # the split files' order
    picked = sample_prompts(rows, 150, seed=1)
    kinds = [r["kind"] for r in picked]
    assert len(picked) == 150 and 50 <= kinds.count("arith") <= 100
    assert [r["id"] for r in picked] == sorted(r["id"] for r in picked)
    assert picked == sample_prompts(rows, 150, seed=1) != sample_prompts(rows, 150, seed=2)
    assert sample_prompts(rows, None, seed=1) == rows
    assert sample_prompts(rows, 5, seed=1, how="first") == rows[:5]


def test_saved_seeds_are_reused_only_for_the_same_world_and_budget(tmp_path, monkeypatch):
    import adpa_core.toy.build as toy_build
    from adpa_core.reproduce import Budget, run_seed

    class Rebuilt(Exception):
        pass

    def build(*args, **kwargs):
        raise Rebuilt

    monkeypatch.setattr(toy_build, "build", build)
    saved = tmp_path / "seed-3" / "result.json"
    saved.parent.mkdir(parents=True)
    healthy = {"teacher_fact_easy": {"value": 1.0, "min": 0.9, "ok": True}}
    rows = {r.name: {"reward": 1.0} for r in ROWS}
    result = {
        "world_key": toy_build.world_key(3),
        "health": healthy,
        "rows": rows,
        "budget": Budget().__dict__,
    }
    saved.write_text(json.dumps(result))
    assert run_seed(3, tmp_path, Budget(), quick=False) == result
    saved.write_text(json.dumps({**result, "rows": {}}))  # saved before rows were added: measured again
    with pytest.raises(Rebuilt):
        run_seed(3, tmp_path, Budget(), quick=False)
    saved.write_text(json.dumps(result))
    with pytest.raises(Rebuilt):  # another budget: the rows are measured again
        run_seed(3, tmp_path, Budget(steps=7), quick=False)
    unhealthy = {**result, "health": {"teacher_fact_easy": {"value": 0.5, "min": 0.9, "ok": False}}}
    saved.write_text(json.dumps(unhealthy))
    assert run_seed(3, tmp_path, Budget(steps=7), quick=False) == unhealthy  # health has no budget
    for key in ("an older world's key", None):  # generator code changed, or saved before keys existed
        saved.write_text(json.dumps({**unhealthy, "world_key": key}))
        with pytest.raises(Rebuilt):
            run_seed(3, tmp_path, Budget(), quick=False)
    assert toy_build.world_key(3) != toy_build.world_key(4) != toy_build.world_key(4, quick=True)


def test_switch_rows_paired_differences_by_hand():
    base, off = "preset", "preset without x"
    per_seed = {
        i: {
            "rows": {base: {"reward": r0, "fact_hard": 0.5}, off: {"reward": r1, "base": base, "switch": "x"}}
        }
        for i, (r0, r1) in enumerate([(1.0, 1.1), (1.2, 1.2), (1.4, 1.7)])
    }
    d = ablations(per_seed)[off]
    # differences 0.1, 0.0, 0.3: mean 0.1333, sd 0.1528, t = mean / (sd / sqrt 3) = 1.512
    assert d["base"] == base and d["reward"]["n"] == 3 and "fact_hard" not in d
    assert d["reward"]["mean_diff"] == pytest.approx(0.4 / 3)
    assert d["reward"]["t"] == pytest.approx((0.4 / 3) / (0.152753 / 3**0.5), rel=1e-5)
    assert d["reward"]["half_width"] == pytest.approx(4.303 * 0.152753 / 3**0.5, rel=1e-5)
    assert "| `x` | preset | +0.133 ± 0.379 | 1.51 | — | — | 3 |" in ablation_markdown(ablations(per_seed))


def test_every_switch_has_a_row_against_its_preset():
    switch_rows = [r for r in ROWS if r.base is not None]
    assert sorted(next(iter(r.objective["released_code"])) for r in switch_rows) == sorted(RELEASED_SWITCHES)
    names = [r.name for r in ROWS]
    for row in switch_rows:
        assert row.base in names and names.index(row.base) < names.index(row.name)  # measured after it


def fake_seed(seed, out, budget, quick):
    """A stand-in for run_seed (top level: the pool pickles it): seed 1's world fails its gates."""
    import time

    time.sleep(0.05 * (3 - seed % 3))  # finish out of order
    return {"health": {"teacher": {"ok": seed != 1}}, "rows": {}, "seed": seed}


@pytest.mark.parametrize("jobs", [1, 2])
def test_seeds_run_in_parallel_and_skip_unhealthy_ones(tmp_path, jobs):
    from adpa_core.reproduce import Budget, _run_seeds

    per_seed, skipped = _run_seeds(3, tmp_path, Budget(), False, limit=6, jobs=jobs, worker=fake_seed)
    assert list(per_seed) == [0, 2, 3] and all(per_seed[s]["seed"] == s for s in per_seed)
    assert list(skipped) == [1]


def test_per_seed_table_by_hand():
    per_seed = {
        "0": {"rows": {"A": {"reward": 1.5, "chosen": {"settings": {"gamma": 0.5, "learning_rate": 0.001}}}}},
        "3": {
            "rows": {"A": {"reward": 1.25, "chosen": {"settings": {"learning_rate": 0.003, "gamma": 1.5}}}}
        },
    }
    per_seed["0"]["rows"]["start"] = {"reward": 1.0, "chosen": None}
    text = per_seed_markdown(per_seed, ["start", "A"])
    assert text.splitlines() == [
        "| method | seed 0 | seed 3 | settings chosen on validation, per seed |",
        "|---|---|---|---|",
        "| start | 1.000 | — | — |",
        "| A | 1.500 | 1.250 | lr 0.001, γ 0.5; lr 0.003, γ 1.5 |",
    ]
