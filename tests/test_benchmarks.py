"""The benchmarks' quick modes run and write the documented JSON (so that `make bench` does not rot)."""

from __future__ import annotations

import importlib
import importlib.util
import json
import math

import pytest
import torch

KEYS = {"benchmark", "command", "machine", "config", "results", "targets"}
TARGET_KEYS = {"target", "limit", "measured", "met", "note"}


# One thread: on a busy machine, multi-threaded small ops wait for descheduled workers (benchmarks/common).
QUICK = ["--quick", "--threads", "1"]


@pytest.fixture(autouse=True)
def bench_out(tmp_path, monkeypatch):
    """Results of the smoke runs go to a temporary folder, never over real ones in benchmarks/out/."""
    monkeypatch.setenv("ADPA_BENCH_OUT", str(tmp_path))
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):  # --threads sets them; restored after the test
        monkeypatch.delenv(var, raising=False)
    threads = torch.get_num_threads()
    yield tmp_path
    torch.set_num_threads(threads)


def _run(name: str, out, argv: list[str]) -> dict:
    payload = importlib.import_module(f"benchmarks.{name}").main(argv)
    written = json.loads((out / f"{name}.json").read_text(encoding="utf-8"))
    assert set(written) >= KEYS, set(written)
    assert written["benchmark"] == name
    assert {"cpu", "torch", "device", "date_utc", "load_average"} <= set(written["machine"])
    assert len(written["machine"]["load_average"]) == 3  # 1, 5, 15 min: the machine is shared
    # the recorded command names the output folder it chose, so a recorded run says how it was recorded
    assert written["command"].startswith(f"ADPA_BENCH_OUT={out} python -m benchmarks.{name}")
    for t in written["targets"]:
        assert set(t) >= TARGET_KEYS, t
        assert t["met"] is None or t["met"] == (t["measured"] <= t["limit"])
    return payload


def test_loss_micro_quick(bench_out):
    payload = _run("loss_micro", bench_out, QUICK)
    rows = payload["comparison"]
    assert {r["term"] for r in rows} == {"dckd", "adpa"}
    for r in rows:
        assert r["naive_s"] > 0 and r["chunked_s"] > 0 and r["time_ratio"] > 0
        assert r["loss_rel_diff"] < 1e-4  # both paths compute the same loss


def test_step_ratio_quick(bench_out):
    payload = _run("step_ratio", bench_out, QUICK)
    by = {r["session"]: r for r in payload["results"]}
    assert set(by) == {"sft", "adpa_cache", "adpa_online", "kd_online"}
    assert len({r["tokens"] for r in by.values()}) == 1  # every session's student sees the same tokens
    assert by["sft"]["ratio_vs_sft"] == 1.0 and by["sft"]["flop_bound"] == 1.0
    # KD: one teacher on every student token; ADPA: two teachers on the y_hat half. Same extra FLOPs here.
    assert by["kd_online"]["flop_bound"] == pytest.approx(by["adpa_online"]["flop_bound"])
    assert by["adpa_online"]["flop_bound"] > 1.0


def test_trl_peer_quick(bench_out):
    # trl is a test requirement (requirements-bench.txt, installed by `make setup`): the comparison must run.
    assert importlib.util.find_spec("trl") is not None, "trl is not installed: run `make setup`"
    payload = _run("trl_peer", bench_out, QUICK)
    by = {r["case"]: r for r in payload["comparison"]}
    assert by["ours_kd"]["median_s"] > 0 and by["ours_kd_full"]["median_s"] > 0
    assert not by["trl_gkd"].get("error"), by["trl_gkd"]["error"]
    # Same models, data and loss: the first step's forward KL is the same number in both trainers.
    assert math.isclose(by["ours_kd"]["first_kl"], by["trl_gkd"]["first_kl"], rel_tol=1e-3)


def test_cache_bench_quick(bench_out):
    payload = _run("cache_bench", bench_out, QUICK)
    for r in payload["results"]:
        assert r["bytes_per_token"] == r["formula_bytes"]
    for r in payload["formats"]:
        assert r["encoder_bytes"] == r["formula_bytes"]


def test_tokenizer_check_quick(bench_out):
    payload = _run("tokenizer_check", bench_out, QUICK)
    cases = [r["case"] for r in payload["results"]]
    assert cases == [
        "identical (library)",
        "differ at the last id (library)",
        "identical (per-token len(), before)",
    ]
    assert all(r["cpu_s"] > 0 and r["wall_s"] > 0 for r in payload["results"])


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the clean exit without CUDA")
def test_gpu_script_exits_cleanly_without_cuda(bench_out):
    payload = _run("gpu", bench_out, [])
    assert "needs a CUDA device" in payload["config"]["skipped"]
    assert payload["results"] == [] and payload["targets"][0]["met"] is None


@pytest.mark.skipif(torch.cuda.is_available(), reason="runs only the CUDA script's clean exit")
def test_run_all_writes_summary_and_tables(bench_out):
    summary = importlib.import_module("benchmarks.run_all").main(["--only", "gpu"])
    assert set(summary) >= KEYS
    assert [t["benchmark"] for t in summary["targets"]] == ["gpu"]
    assert json.loads((bench_out / "run_all.json").read_text(encoding="utf-8"))["benchmark"] == "run_all"
    assert "## All targets" in (bench_out / "tables.md").read_text(encoding="utf-8")


def test_gpu_script_code_path_on_cpu(bench_out):
    """The CUDA script's step (4-bit teacher + LoRA, chunked ADPA, SFT) with tiny shapes on CPU."""
    torch.set_num_threads(1)  # restored by the fixture
    payload = _run("gpu", bench_out, ["--debug-cpu", "--skip-loss", "--steps", "1"])
    (row,) = payload["results"]
    assert row.get("error") is None, row.get("error")
    assert row["adpa_step_s"] > 0 and row["sft_step_s"] > 0 and row["flop_bound"] > 1
    assert row["n_adapter"] > 0 and row["n_teacher_base"] > row["n_student"]
