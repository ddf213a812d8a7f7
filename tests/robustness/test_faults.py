"""Faults during a run: kill -9 anywhere, corrupted checkpoints and caches, a full disk, out of memory.

The promise: a run that dies loses at most the steps since its last checkpoint, a resumed run follows the
uninterrupted loss trajectory exactly, and a failure is recorded in status.json with what to do about it.
"""

from __future__ import annotations

import errno
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from adpa_core.config import save_config
from adpa_core.runs import RunDir
from adpa_core.teacher import StaleCacheError, TeacherCache, build_teacher_cache
from adpa_core.train import OutOfMemory, RunWriteError, run_training, train
from tests.trainkit import build_world, make_cfg

COMMON = {"max_steps": 6, "save_every": 2, "learning_rate": 5e-3, "keep_checkpoints": 3}


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> dict[str, str]:
    return build_world(tmp_path_factory.mktemp("world"))


@pytest.fixture(scope="module")
def reference_losses(world, tmp_path_factory) -> list[float]:
    """The uninterrupted run every faulty run must reproduce."""
    cfg = make_cfg(world, tmp_path_factory.mktemp("ref"), "kd", train=COMMON)
    run_training(cfg, progress=False)
    return _losses(cfg.run_dir)


def _losses(run_dir: Path) -> list[float]:
    return [r["loss"] for r in RunDir(run_dir).read_metrics()]


def _no_partial_files(run_dir: Path) -> None:
    leftovers = [p.name for p in Path(run_dir).rglob(".*tmp*")]
    assert leftovers == [], f"half-written files left behind: {leftovers}"


def _stop_after(cfg, step: int) -> None:
    gen = train(cfg)
    for record in gen:
        if record["step"] == step:
            break
    gen.close()


def test_kill_9_at_random_points_then_resume_loses_nothing(world, tmp_path):
    """Up to three kill -9 at seeded random moments (mid-step, mid-checkpoint, mid-log), then --resume."""
    steps, margin = 40, 8  # a step of this tiny run takes milliseconds: kill well before the end
    common = {**COMMON, "max_steps": steps, "save_every": 3}
    full = make_cfg(world, tmp_path, "kd", name="full", train=common)
    run_training(full, progress=False)
    victim = make_cfg(world, tmp_path, "kd", name="victim", train=common)
    save_config(victim, tmp_path / "victim.yaml")
    cmd = [sys.executable, "-m", "adpa_core.cli", "train", str(tmp_path / "victim.yaml"), "--quiet"]
    run, rng, kills = RunDir(victim.run_dir), random.Random(2026), []
    for attempt in range(3):
        if len(run.read_metrics()) + 1 > steps - margin:
            break
        target = rng.randint(len(run.read_metrics()) + 1, steps - margin)
        proc = subprocess.Popen(
            cmd + (["--resume"] if attempt else []), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        deadline = time.time() + 180
        while len(run.read_metrics()) < target and time.time() < deadline and proc.poll() is None:
            time.sleep(0.005)
        time.sleep(rng.uniform(0.0, 0.02))  # land anywhere in the next step, its checkpoint or its log line
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        kills.append(len(run.read_metrics()))
        if kills[-1] >= steps:
            break
    assert kills[0] < steps, f"the first kill came too late ({kills})"
    done = subprocess.run([*cmd, "--resume"], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert run.read_status()["state"] == "completed"
    assert [r["step"] for r in run.read_metrics()] == list(range(1, steps + 1))
    assert _losses(victim.run_dir) == pytest.approx(_losses(full.run_dir), rel=0, abs=1e-6)
    _no_partial_files(victim.run_dir)


@pytest.mark.parametrize("damage", ["truncate", "flip", "delete", "manifest"])
def test_a_corrupted_latest_checkpoint_is_skipped_for_the_previous_one(
    world, tmp_path, reference_losses, damage
):
    cfg = make_cfg(world, tmp_path, "kd", train=COMMON)
    _stop_after(cfg, 5)  # checkpoints step-2 and step-4
    run = RunDir(cfg.run_dir)
    assert [p.name for p in run.checkpoint_dirs()] == ["step-2", "step-4"]
    latest = run.checkpoint_dirs()[-1]
    weights = latest / "trainable.safetensors"
    if damage == "truncate":
        weights.write_bytes(weights.read_bytes()[:-100])
    elif damage == "flip":
        data = bytearray(weights.read_bytes())
        data[len(data) // 2] ^= 0xFF
        weights.write_bytes(bytes(data))
    elif damage == "delete":
        (latest / "optimizer.pt").unlink()
    else:
        (latest / "manifest.json").write_text("{not json")
    assert run.latest_valid_checkpoint().name == "step-2"
    run_training(cfg, resume=True, progress=False)
    assert [r["step"] for r in run.read_metrics()] == list(range(1, 7))
    assert _losses(cfg.run_dir) == pytest.approx(reference_losses, rel=0, abs=1e-6)


def test_a_half_written_checkpoint_folder_is_ignored_and_cleaned(world, tmp_path, reference_losses):
    cfg = make_cfg(world, tmp_path, "kd", train=COMMON)
    _stop_after(cfg, 5)
    run = RunDir(cfg.run_dir)
    partial = run.checkpoints_dir / ".step-5.tmp"  # what a kill during a checkpoint write leaves
    partial.mkdir()
    (partial / "trainable.safetensors").write_bytes(b"\x00" * 10)
    assert run.latest_valid_checkpoint().name == "step-4"
    run_training(cfg, resume=True, progress=False)
    assert _losses(cfg.run_dir) == pytest.approx(reference_losses, rel=0, abs=1e-6)
    _no_partial_files(cfg.run_dir)


def _enospc(path: object) -> OSError:
    return OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))


def test_disk_full_while_checkpointing_fails_the_run_and_keeps_the_last_checkpoint(
    world, tmp_path, monkeypatch, reference_losses
):
    from adpa_core import checkpoint

    real, calls = checkpoint.save_file, []

    def full_disk(state, path, *args, **kwargs):
        calls.append(path)
        if len(calls) == 2:  # the second checkpoint (step 4) hits a full disk
            Path(path).write_bytes(b"\x00" * 7)  # a partial file, as a real ENOSPC leaves
            raise _enospc(path)
        return real(state, path, *args, **kwargs)

    monkeypatch.setattr(checkpoint, "save_file", full_disk)
    cfg = make_cfg(world, tmp_path, "kd", train=COMMON)
    with pytest.raises(RunWriteError, match=r"No space left on device.*step-2 is kept.*--resume"):
        run_training(cfg, progress=False)
    run = RunDir(cfg.run_dir)
    status = run.read_status()
    assert status["state"] == "failed" and "No space left" in status["error"]
    assert [p.name for p in run.checkpoint_dirs()] == ["step-2"]
    assert run.latest_valid_checkpoint().name == "step-2"
    _no_partial_files(cfg.run_dir)
    monkeypatch.setattr(checkpoint, "save_file", real)  # space freed: the run continues
    run_training(cfg, resume=True, progress=False)
    assert run.read_status()["state"] == "completed"
    assert _losses(cfg.run_dir) == pytest.approx(reference_losses, rel=0, abs=1e-6)


def test_disk_full_while_saving_the_final_model_leaves_no_half_saved_model(world, tmp_path, monkeypatch):
    import transformers

    cfg = make_cfg(world, tmp_path, "sft", train={"max_steps": 2})

    def full_disk(self, path, *args, **kwargs):
        Path(path).mkdir(parents=True, exist_ok=True)
        (Path(path) / "model.safetensors").write_bytes(b"\x00" * 7)
        raise _enospc(Path(path) / "model.safetensors")

    monkeypatch.setattr(transformers.PreTrainedModel, "save_pretrained", full_disk)
    with pytest.raises(RunWriteError, match="No space left on device"):
        run_training(cfg, progress=False)
    run = RunDir(cfg.run_dir)
    assert run.read_status()["state"] == "failed"
    assert not run.final_dir.exists()
    assert run.latest_valid_checkpoint().name == "step-2"  # the finished training itself is kept
    _no_partial_files(cfg.run_dir)


@pytest.mark.parametrize(
    "error",
    [
        torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB"),
        RuntimeError("[enforce fail at alloc_cpu.cpp:117] DefaultCPUAllocator: can't allocate memory"),
    ],
    ids=["cuda", "cpu"],
)
def test_out_of_memory_is_reported_with_concrete_advice(world, tmp_path, monkeypatch, error):
    from adpa_core import objectives

    real, calls = objectives.loss_step, []

    def hungry(ctx, batch, norms=None):
        calls.append(1)
        if len(calls) == 3:
            raise error
        return real(ctx, batch, norms)

    monkeypatch.setattr(objectives, "loss_step", hungry)
    cfg = make_cfg(world, tmp_path, "kd", train={"max_steps": 4, "save_every": 2})
    with pytest.raises(OutOfMemory) as info:
        run_training(cfg, progress=False)
    message = str(info.value)
    advice = ("at step 3", "train.batch_size", "train.grad_accum", "chunked_loss", "4bit", "cache-teacher")
    assert all(a in message for a in advice), message
    status = RunDir(cfg.run_dir).read_status()
    assert status["state"] == "failed" and "train.batch_size" in status["error"]
    assert RunDir(cfg.run_dir).latest_valid_checkpoint().name == "step-2"


def test_out_of_memory_through_the_cli_is_one_clear_line(world, tmp_path, monkeypatch, capsys):
    from adpa_core import objectives
    from adpa_core.cli import EXIT_USER_ERROR, main

    def hungry(ctx, batch, norms=None):
        raise torch.OutOfMemoryError("CUDA out of memory")

    monkeypatch.setattr(objectives, "loss_step", hungry)
    cfg = make_cfg(world, tmp_path, "sft", train={"max_steps": 2})
    save_config(cfg, tmp_path / "run.yaml")
    assert main(["train", str(tmp_path / "run.yaml"), "--quiet"]) == EXIT_USER_ERROR
    err = capsys.readouterr().err  # weight-loading progress bars, then the one error line
    assert (
        err.strip().splitlines()[-1].startswith("error: out of memory at step 1") and "Traceback" not in err
    )


@pytest.fixture(scope="module")
def cache(world, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("cache") / "teacher_cache"
    build_teacher_cache(_cache_cfg(world, out), out)
    return out


def _cache_cfg(world, out: Path):
    cache = {"teacher_source": "cache", "teacher_cache": str(out), "support": "topk", "k": 8}
    return make_cfg(world, out.parent, "kd", objective=cache)


@pytest.mark.parametrize("damage", ["truncate_shard", "delete_shard", "index", "meta"])
def test_a_damaged_teacher_cache_is_refused(cache, tmp_path, damage):
    import shutil

    copy = tmp_path / "cache"
    shutil.copytree(cache, copy)
    TeacherCache(copy)  # intact: loads
    shard = sorted(copy.rglob("*.npy"))[0]
    if damage == "truncate_shard":
        shard.write_bytes(shard.read_bytes()[:-16])
    elif damage == "delete_shard":
        shard.unlink()
    elif damage == "index":
        (copy / "index.json").write_text('{"broken')
    else:
        (copy / "meta.json").write_bytes(b"\xff\xfe not json")
    with pytest.raises(StaleCacheError, match="rebuild"):
        TeacherCache(copy)


def test_an_interrupted_cache_build_leaves_the_old_cache_untouched(world, cache, tmp_path, monkeypatch):
    import shutil

    from adpa_core import teacher

    target = tmp_path / "cache"
    shutil.copytree(cache, target)
    before = {p.relative_to(target): p.read_bytes() for p in target.rglob("*") if p.is_file()}
    cfg = _cache_cfg(world, target)

    def dies(*args, **kwargs):
        raise _enospc(target)

    monkeypatch.setattr(teacher.np, "save", dies)
    with pytest.raises(OSError, match="No space left"):
        build_teacher_cache(cfg, target)
    after = {p.relative_to(target): p.read_bytes() for p in target.rglob("*") if p.is_file()}
    assert after == before
    TeacherCache(target)
