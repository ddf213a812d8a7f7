"""Workbench handlers on the quick toy world: plain data out, escaping, confinement, runs as subprocesses."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from adpa_core.runs import RunDir
from tests.workbench_kit import finished_run
from workbench import figures, run_views, views
from workbench.cache import ModelCache
from workbench.handlers import Handlers
from workbench.jobs import RunManager, pid_alive
from workbench.locations import Locations, WorkbenchError, check_run_name
from workbench.run_form import config_data


def make_handlers(home: str, runs_dir: Path, max_runs: int = 1) -> Handlers:
    loc = Locations.create(home, runs_dir)
    return Handlers(loc, RunManager(loc, max_runs))


@pytest.fixture(scope="module")
def runs_dir(toy_home, tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("wb-runs")
    finished_run(path, "sft-done")
    return path


@pytest.fixture(scope="module")
def h(toy_home, runs_dir) -> Handlers:
    return make_handlers(toy_home, runs_dir)


def test_import_loads_no_model_and_no_torch():
    code = "import sys, workbench.app; print('torch' in sys.modules)"
    root = Path(__file__).resolve().parent.parent
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=root)
    assert out.stdout.strip() == "False"


def test_advantages_are_plain_data_with_consistent_lengths(h):
    ex = h.example()
    assert ex["prompt"] and ex["response"]
    report = h.advantages(ex["prompt"], ex["response"], k=5)
    json.dumps(report)  # plain data all the way down
    n = len(report["tokens"])
    assert n > 3 and report["tokens"][-1] == "<|end|>"
    for key in (
        "advantage",
        "logp_dpo",
        "logp_ref",
        "student_logp",
        "expected_advantage",
        "teacher_expected_advantage",
        "alternatives",
        "token_ids",
    ):
        assert len(report[key]) == n, key
    assert all(len(alts) == 5 for alts in report["alternatives"])
    assert math.isclose(report["total"], sum(report["advantage"]), rel_tol=1e-6, abs_tol=1e-6)
    assert report["worst"] and report["worst"][0]["advantage"] == min(report["advantage"])
    # the views format every part of it
    assert views.heatmap_html(report).count("class='adv-token'") == n
    assert len(views.token_table(report)) == n
    title, alts = views.alternatives_view(report, 0)
    assert "Position 0" in title and len(alts) == 5
    assert len(figures.alternatives_figure(report).data) == 1
    assert len(figures.expected_figure(report).data) == 3


def test_no_student_means_no_student_columns(h):
    report = h.advantages("which city is nia baker from ?", "lima .", student="")
    assert report["expected_advantage"] is None and report["student_logp"] is None
    assert "student Σ" not in views.summary_markdown(report)
    assert len(figures.expected_figure(report).data) == 2


def test_a_lora_adapter_teacher_has_its_base_as_reference(h, runs_dir):
    finished_run(runs_dir, "lora-run", steps=2, lora_rank=4)
    report = h.advantages("which city is nia baker from ?", "lima .", teacher="lora-run", teacher_ref="")
    assert not report["no_reference"] and len(report["advantage"]) == len(report["tokens"])
    assert math.isclose(report["total"], sum(report["advantage"]), abs_tol=1e-6)
    with pytest.raises(WorkbenchError, match="LoRA adapter"):
        h.advantages(
            "which city is nia baker from ?", "lima .", teacher="lora-run", teacher_ref="toy:teacher"
        )
    reply = list(h.generate_response("which city is nia baker from ?", "lora-run", 8))  # reuses the pair
    assert reply


def test_script_in_prompt_or_response_is_shown_as_text(h):
    evil = "<script>alert(1)</script><img src=x onerror=alert(2)>"
    report = h.advantages(f"{evil} which city is nia baker from ?", f"{evil} lima .")
    fake = {**report, "tokens": [evil] * len(report["tokens"])}  # a tokenizer that keeps the tags whole
    fake["alternatives"] = [[{**a, "token": evil} for a in alts] for alts in report["alternatives"]]
    fake["notes"] = [evil]
    for text in (
        views.heatmap_html(report),
        views.heatmap_html(fake),
        views.summary_markdown(fake),
        views.alternatives_view(fake, 0)[0],
        run_views.progress_html(
            {"name": evil, "method": evil, "display": "failed", "error": evil, "log_tail": evil}
        ),
        run_views.score_markdown(
            {"done": True, "stopped": True, "score": {"reward": 1.0, "name": evil, "details": {}}}
        ),
    ):
        assert "<script" not in text and "<img" not in text
    assert "&lt;script&gt;" in views.heatmap_html(fake)


@pytest.mark.parametrize("bad", ["", " ", "../x", "a/b", "..", ".", "/etc", "x\\y", "a b", "-x", "x" * 101])
def test_run_names_are_never_paths(bad):
    with pytest.raises(WorkbenchError):
        check_run_name(bad)


def test_paths_are_confined_to_the_runs_folder_and_home(h, runs_dir, toy_home, tmp_path):
    assert check_run_name(" my-run_1.2 ") == "my-run_1.2"
    loc = h.loc
    assert loc.source("toy:student") == "toy:student"
    assert loc.source("Qwen/Qwen2.5-0.5B-Instruct") == "Qwen/Qwen2.5-0.5B-Instruct"
    assert loc.source("sft-done") == str(runs_dir / "sft-done")  # a run name
    assert loc.source(str(runs_dir / "sft-done" / "final")) == str(runs_dir / "sft-done" / "final")
    assert loc.source(str(Path(toy_home) / "toy" / "student")).endswith("toy/student")
    for bad in ("/etc", str(tmp_path), f"{runs_dir}/../elsewhere", "../outside/model"):
        with pytest.raises(WorkbenchError, match="outside|not allowed"):
            loc.source(bad)
    with pytest.raises(WorkbenchError, match="outside"):
        h.advantages("hi", "there", teacher="/etc")
    with pytest.raises(WorkbenchError, match="not valid"):
        h.start_run({"method": "sft", "name": "../evil", "steps": 2})
    with pytest.raises(WorkbenchError, match="outside|not allowed"):
        h.start_run({"method": "sft", "name": "ok", "steps": 2, "data": "/etc/passwd"})
    assert not (runs_dir / "ok").exists() and not (runs_dir.parent / "evil").exists()


def test_chat_streams_and_scores(h):
    parts = list(h.chat("which city is nia baker from ?", "sft-done", 24, "toy"))
    assert parts[-1]["done"] and all(not p["done"] for p in parts[:-1])
    final = parts[-1]
    assert final["model"] == "sft-done" and isinstance(final["stopped"], bool)
    assert -1.0 <= final["score"]["reward"] <= 2.0
    assert set(final["score"]["details"]) == {"correct", "polite", "concise", "stopped"}
    assert h.before_model("sft-done") == "toy:student" and h.before_model("") == "toy:student"
    cut = list(h.stream("which city is nia baker from ?", "toy:student", 1))[-1]  # the stream's end says
    assert cut["done"] and cut["stopped"] is False and cut["tokens"] == 1  # whether the reply stopped
    whole = list(h.stream("which city is nia baker from ?", "toy:student", 48))[-1]
    assert whole["stopped"] is True and whole["tokens"] <= 48
    texts = list(h.generate_response("which city is nia baker from ?", "toy:teacher", 24))
    assert texts and all(texts[-1].startswith(t) for t in texts)  # the reply grows token by token
    rude = h.score_response("which city is nia baker from ?", "whatever , lima .", "toy")
    assert rude["details"]["polite"] is False and rude["reward"] < 2.0
    unfinished = h.score_response("which city is nia baker from ?", "lima .", "toy", stopped=False)
    assert unfinished["details"]["stopped"] is False


def test_sample_prompt_and_example(h):
    first = h.sample_prompt("toy:prompts", "test", 0)
    assert first["index"] == 0 and first["count"] > 10 and first["prompt"]
    assert h.sample_prompt("toy:prompts", "test", first["count"])["prompt"] == first["prompt"]
    assert h.sample_prompt()["prompt"]


def test_run_configs_follow_the_recipe_and_the_settings(h, runs_dir):
    data = config_data(
        h.loc,
        "x",
        {
            "method": "dckd",
            "steps": 7,
            "learning_rate": 0.01,
            "alpha": 0.3,
            "lora_rank": 4,
            "max_examples": 16,
        },
    )
    assert data["objective"] == {"method": "dckd", "w_kl_chosen": 0.3, "w_kl_rejected": 0.3}
    assert data["train"]["max_steps"] == 7 and data["train"]["learning_rate"] == 0.01
    assert data["model"]["lora"] is True and data["model"]["lora_r"] == 4
    assert data["data"]["max_examples"] == 16 and data["output_dir"] == str(runs_dir)
    sft = config_data(h.loc, "y", {"method": "sft", "teacher": "toy:teacher"})
    assert "teacher" not in sft["model"]  # SFT loads no teacher
    adpa = config_data(h.loc, "z", {"method": "adpa", "gamma": 0.7, "beta": 2.0, "alpha": None})
    assert adpa["objective"]["gamma"] == 0.7 and adpa["objective"]["beta"] == 2.0  # alpha: unused, hidden
    assert config_data(h.loc, "d", {"method": "dpo", "beta": 0.2})["objective"]["beta_dpo"] == 0.2


def test_adpa_plus_starts_from_a_finished_dckd_run(h, runs_dir):
    with pytest.raises(WorkbenchError, match="finished DCKD run"):
        config_data(h.loc, "p", {"method": "adpa_plus"})
    with pytest.raises(WorkbenchError, match="is a sft run"):
        config_data(h.loc, "p", {"method": "adpa_plus", "dckd_run": "sft-done"})
    fake = RunDir(runs_dir / "fake-dckd")  # what a finished DCKD run looks like on disk
    (fake.final_dir).mkdir(parents=True)
    fake.config_path.write_text("objective:\n  method: dckd\n")
    fake.set_status("completed", step=1, max_steps=1)
    data = config_data(h.loc, "p", {"method": "adpa_plus", "dckd_run": "fake-dckd"})
    assert data["model"]["student"] == str(fake.path)
    assert "fake-dckd" in h.run_names("dckd", finished=True)


def test_a_dead_process_that_never_finished_shows_as_crashed(h, runs_dir):
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    run = RunDir(runs_dir / "crashed-run")
    run.path.mkdir()
    run.config_path.write_text("objective:\n  method: sft\n")
    run.set_status("running", step=3, max_steps=10)
    status = json.loads(run.status_path.read_text())
    status["pid"] = proc.pid  # a pid that has exited
    run.status_path.write_text(json.dumps(status))
    shown = h.run_status("crashed-run")
    assert shown["display"] == "crashed" and shown["state"] == "running"
    assert "crashed" in run_views.progress_html(shown)
    assert {r["name"]: r["display"] for r in h.list_runs()}["crashed-run"] == "crashed"


def test_model_cache_loads_once_and_evicts_the_oldest():
    cache, loads = ModelCache(capacity=2), []
    load = lambda name: lambda: loads.append(name) or name
    assert cache.get(("a", "m"), load("a")) == "a"
    cache.get(("a", "m"), load("a"))
    cache.get(("b", "m"), load("b"))
    cache.get(("a", "m"), load("a"))  # a is now the most recent
    cache.get(("c", "m"), load("c"))  # evicts b
    assert loads == ["a", "b", "c"] and set(cache.keys()) == {("a", "m"), ("c", "m")}
    assert cache.find(lambda k: k[0] == "c") == "c" and cache.find(lambda k: k[0] == "b") is None


def wait_for(predicate, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.3)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


@pytest.mark.slow
def test_start_status_refuse_restart_cancel(toy_home, tmp_path):
    h = make_handlers(toy_home, tmp_path)
    settings = {"method": "sft", "name": "long-run", "steps": 100000, "max_examples": 64, "log_every": 1}
    started = h.start_run(settings)
    assert started["name"] == "long-run" and started["display"] == "queued"
    assert (tmp_path / "long-run" / "config.yaml").exists()
    try:
        with pytest.raises(WorkbenchError, match="'long-run'.*one run at a time"):
            h.start_run({"method": "sft", "name": "second", "steps": 2})
        assert not (tmp_path / "second").exists()
        rows = lambda: len(h.run_status("long-run")["metrics"]) >= 2 and h.run_status("long-run")
        status = wait_for(rows, 120, "two logged steps")
        assert status["display"] == "running" and status["alive"] and status["step"] >= 1
        assert status["eta_s"] is not None and status["metrics"][0]["step"] == 1

        # status.json and metrics.jsonl are two files written one after the other, so one snapshot may
        # hold a step in one and not yet in the other: wait until both have moved on
        def moved_on():
            s = h.run_status("long-run")
            return s["step"] > status["step"] and len(s["metrics"]) > len(status["metrics"]) and s

        later = wait_for(moved_on, 60, "progress in status.json and metrics.jsonl")
        assert later["metrics"][-1]["step"] > status["metrics"][-1]["step"]
        # an app restart (a new manager) sees the same run, running, from disk
        again = make_handlers(toy_home, tmp_path)
        assert [(r["name"], r["display"]) for r in again.list_runs()] == [("long-run", "running")]
        assert "cancelling" in again.cancel_run("long-run")["message"]
        final = h.jobs.wait("long-run", timeout=60)
        assert final["display"] == "cancelled" and final["state"] == "cancelled" and not final["alive"]
        assert "not running" in h.cancel_run("long-run")["message"]
        assert make_handlers(toy_home, tmp_path).run_status("long-run")["display"] == "cancelled"
    finally:
        pid = RunDir(tmp_path / "long-run").read_status().get("pid")
        if pid != os.getpid() and pid_alive(pid):
            os.kill(pid, 9)


def test_serve_builds_the_toy_world_only_when_missing(toy_home, tmp_path, monkeypatch):
    import adpa_core.toy.build
    import workbench.app as wb

    monkeypatch.setenv("ADPA_HOME", toy_home)  # build_app points $ADPA_HOME at the served home
    builds, served = [], []
    monkeypatch.setattr(adpa_core.toy.build, "ensure_world", lambda home, **kw: builds.append((home, kw)))
    monkeypatch.setattr(wb, "launch", lambda app, host, port, share, **kw: served.append((host, port, share)))
    wb.serve(home=str(tmp_path / "fresh"), runs_dir=str(tmp_path / "runs"), port=7999)
    assert builds == [(str(tmp_path / "fresh"), {"quick": True, "progress": True})]
    assert served == [("127.0.0.1", 7999, False)]
    wb.serve(home=toy_home, runs_dir=str(tmp_path / "runs"), toy="full")
    assert len(builds) == 1 and not wb.toy_world_missing(toy_home)
    wb.serve(home=str(tmp_path / "fresh"), runs_dir=str(tmp_path / "runs"), toy=None)
    assert len(builds) == 1 and len(served) == 3
