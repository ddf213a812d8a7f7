"""The training loop: every objective trains, the math is wired exactly, resume, caches (accumulation and
the non-default paths: test_wiring_steps.py, test_wiring_teacher.py)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from adpa_core import losses as L
from adpa_core.config import METHODS
from adpa_core.models import load_models
from adpa_core.prepare import load_rows
from adpa_core.runs import RunDir
from adpa_core.teacher import StaleCacheError, build_teacher_cache
from adpa_core.train import run_training, train
from tests.trainkit import build_world, group_logits, make_cfg, step_rows, yhat_rows


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> dict[str, str]:
    return build_world(tmp_path_factory.mktemp("world"))


def _losses(run_dir: Path) -> list[float]:
    return [r["loss"] for r in RunDir(run_dir).read_metrics()]


@pytest.mark.parametrize("method", METHODS)
def test_every_objective_trains_and_its_loss_falls(world, tmp_path, method):
    lr = 2e-3 if method == "dpo" else 1e-2
    cfg = make_cfg(
        world, tmp_path, method, train={"max_steps": 24, "learning_rate": lr, "lr_schedule": "constant"}
    )
    run_training(cfg, progress=False)
    records = RunDir(cfg.run_dir).read_metrics()
    assert [r["step"] for r in records] == list(range(1, 25))
    terms = {
        "sft": ["nll"],
        "dpo": ["dpo", "reward_accuracy"],
        "kd": ["nll", "kl_chosen"],
        "dckd": ["nll", "kl_chosen", "kl_rejected"],
        "adpa": ["nll", "adpa"],
        "adpa_plus": ["nll", "adpa"],
    }
    for term in terms[method] + ["loss", "lr", "tokens_per_s", "elapsed_s"]:
        assert all(term in r for r in records), term
    losses = [r["loss"] for r in records]
    assert sum(losses[-4:]) / 4 < sum(losses[:4]) / 4 - 0.05, losses
    status = RunDir(cfg.run_dir).read_status()
    assert status["state"] == "completed"
    assert (cfg.run_dir / "final" / "config.json").exists()


@pytest.mark.parametrize("method", ["sft", "dckd", "adpa", "dpo"])
def test_first_step_loss_equals_hand_computed(world, tmp_path, method):
    """The loop feeds the right responses to the right teacher with the right weights."""
    cfg = make_cfg(
        world,
        tmp_path,
        method,
        train={"max_steps": 1},
        objective={
            "method": method,
            "w_kl_chosen": 0.3,
            "w_kl_rejected": 0.2,
            "gamma": 0.7,
            "beta": 2.0,
            "k": 9,
            "max_new_tokens": 6,
        },
    )
    record = next(iter(train(cfg)))
    torch.manual_seed(cfg.train.seed)
    tokenizer, student, pair = load_models(cfg.model, device="cpu")
    rows = load_rows(cfg, tokenizer)
    batch_rows = step_rows(cfg, rows)
    pad = tokenizer.pad_token_id

    def fwd(model, group, rows_=batch_rows):
        return group_logits(model, rows_, group, pad)

    s_c, lab_c = fwd(student, "chosen")
    expected = L.nll_loss(s_c, lab_c)
    if method == "dckd":
        s_r, lab_r = fwd(student, "rejected")
        expected = expected + 0.3 * L.forward_kl_loss(s_c, fwd(pair.dpo, "chosen")[0], lab_c)
        expected = expected + 0.2 * L.forward_kl_loss(s_r, fwd(pair.dpo, "rejected")[0], lab_r)
    if method == "adpa":
        with_yhat = yhat_rows(cfg.run_dir, batch_rows)
        s_y, lab_y = fwd(student, "yhat", with_yhat)
        adv = L.token_advantages(
            fwd(pair.dpo, "yhat", with_yhat)[0], fwd(pair.ref, "yhat", with_yhat)[0], beta=2.0, topk=9
        )
        expected = expected + 0.7 * L.adpa_loss_term(s_y, adv, lab_y)
    if method == "dpo":
        s_r, lab_r = fwd(student, "rejected")
        lp_w, lp_l = L.sequence_logps(s_c, lab_c), L.sequence_logps(s_r, lab_r)
        # the reference is the initial student itself: at step 1 the policy equals it -> log 2
        expected = L.dpo_loss(lp_w, lp_l, lp_w, lp_l, beta=0.1)
        assert abs(float(expected) - 0.6931472) < 1e-6
    assert record["loss"] == pytest.approx(float(expected), rel=1e-5, abs=1e-6)


def test_resume_after_interruption_matches_uninterrupted(world, tmp_path):
    common = {"max_steps": 6, "save_every": 2, "learning_rate": 5e-3}
    full = make_cfg(world, tmp_path / "a", "dckd", train=common)
    run_training(full, progress=False)
    part = make_cfg(world, tmp_path / "b", "dckd", train=common)
    gen = train(part)
    for record in gen:
        if record["step"] == 3:  # stop after step 3: the last checkpoint is step 2
            break
    gen.close()
    assert RunDir(part.run_dir).read_status()["state"] == "cancelled"
    run_training(part, resume=True, progress=False)
    a, b = _losses(full.run_dir), _losses(part.run_dir)
    assert len(b) == 6
    assert a == pytest.approx(b, rel=0, abs=1e-6)


@pytest.mark.parametrize("method", ["dckd", "adpa"])
def test_cached_teacher_with_k_equal_v_matches_online(world, tmp_path, method):
    obj = {"method": method, "support": "full", "k": 64, "max_new_tokens": 6}
    online = make_cfg(world, tmp_path / "online", method, objective=obj, train={"max_steps": 3})
    run_training(online, progress=False)
    cached = make_cfg(
        world,
        tmp_path / "cached",
        method,
        train={"max_steps": 3},
        objective={**obj, "teacher_source": "cache", "teacher_cache": str(tmp_path / "cache")},
    )
    meta = build_teacher_cache(cached, logp_dtype="float32")
    assert meta["k"] == 64 and meta["tokens"] > 0
    run_training(cached, progress=False)
    assert _losses(online.run_dir) == pytest.approx(_losses(cached.run_dir), rel=1e-5, abs=1e-6)


def test_stale_cache_is_refused(world, tmp_path):
    cfg = make_cfg(
        world,
        tmp_path,
        "kd",
        objective={
            "method": "kd",
            "teacher_source": "cache",
            "teacher_cache": str(tmp_path / "cache"),
            "k": 8,
        },
    )
    build_teacher_cache(cfg)
    rows = [json.loads(line) for line in Path(world["train"]).read_text().splitlines()]
    rows[0]["chosen"] = "no no no"  # the data changed after caching
    changed = tmp_path / "changed.jsonl"
    changed.write_text("".join(json.dumps(r) + "\n" for r in rows))
    stale = make_cfg(
        world,
        tmp_path / "b",
        "kd",
        data={"train": str(changed)},
        objective={
            "method": "kd",
            "teacher_source": "cache",
            "teacher_cache": str(tmp_path / "cache"),
            "k": 8,
        },
        train={"max_steps": 6, "batch_size": 8},
    )
    with pytest.raises(StaleCacheError, match="different"):
        run_training(stale, progress=False)
    assert RunDir(stale.run_dir).read_status()["state"] == "failed"


def test_nonfinite_loss_fails_the_run_and_keeps_the_checkpoint(world, tmp_path, monkeypatch):
    from adpa_core import objectives
    from adpa_core.train import NonFiniteLossError

    cfg = make_cfg(world, tmp_path, "sft", train={"max_steps": 6, "save_every": 1})
    real, calls = objectives.loss_step, []

    def poisoned(ctx, batch, norms=None):  # the third step's loss overflows
        loss, metrics = real(ctx, batch, norms)
        calls.append(1)
        return (loss * float("inf") if len(calls) == 3 else loss), metrics

    monkeypatch.setattr(objectives, "loss_step", poisoned)
    with pytest.raises(NonFiniteLossError, match="step 3"):
        run_training(cfg, progress=False)
    run = RunDir(cfg.run_dir)
    assert run.read_status()["state"] == "failed"
    assert "NonFiniteLossError" in run.read_status()["error"]
    assert run.latest_valid_checkpoint().name == "step-2"
    assert [r["step"] for r in run.read_metrics()] == [1, 2]


def test_existing_run_needs_resume(world, tmp_path):
    cfg = make_cfg(world, tmp_path, "sft", train={"max_steps": 1})
    run_training(cfg, progress=False)
    with pytest.raises(FileExistsError, match="--resume"):
        run_training(cfg, progress=False)


def test_eval_loss_is_logged(world, tmp_path):
    cfg = make_cfg(world, tmp_path, "adpa", train={"max_steps": 2, "eval_every": 1, "eval_examples": 4})
    run_training(cfg, progress=False)
    records = RunDir(cfg.run_dir).read_metrics()
    assert all("eval_loss" in r and "eval_adpa" in r for r in records)


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.mark.slow
def test_two_processes_match_one_process_with_the_same_global_batch(world, tmp_path):
    """`accelerate launch --config_file configs/accelerate/ddp.yaml` on CPU (torchrun, gloo) vs one."""
    import subprocess
    import sys

    from adpa_core.config import save_config

    one = make_cfg(world, tmp_path, "dckd", name="one", train={"batch_size": 4, "max_steps": 3})
    two = make_cfg(world, tmp_path, "dckd", name="two", train={"batch_size": 2, "max_steps": 3})
    run_training(one, progress=False)
    save_config(two, tmp_path / "two.yaml")
    accelerate = Path(sys.executable).with_name("accelerate")
    cmd = [
        str(accelerate),
        "launch",
        "--config_file",
        str(Path(__file__).parents[1] / "configs" / "accelerate" / "ddp.yaml"),
        "--main_process_port",
        str(_free_port()),
        "-m",
        "adpa_core.cli",
        "train",
        str(tmp_path / "two.yaml"),
        "--quiet",
    ]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    # Same rows, same global normalisation; gloo all-reduce order can move the last float digits.
    assert _losses(one.run_dir) == pytest.approx(_losses(two.run_dir), rel=1e-5)


def test_teacher_dpo_stage_as_qlora_adapter_serves_as_teacher_pair(world, tmp_path):
    """The real-model recipe: DPO on a 4-bit SFT teacher with LoRA, then that adapter + base = the pair."""
    from adpa_core.config import ModelConfig
    from adpa_core.models import load_teacher_pair

    cfg = make_cfg(
        world,
        tmp_path,
        "dpo",
        name="teacher-dpo",
        model={
            "student": world["teacher_ref"],
            "lora": True,
            "lora_r": 4,
            "student_quantization": "4bit",
            "device": "cpu",
        },
        train={"max_steps": 3, "learning_rate": 5e-3},
    )
    run_training(cfg, progress=False)
    adapter = cfg.run_dir / "final"
    assert (adapter / "adapter_config.json").exists()
    pair = load_teacher_pair(
        ModelConfig(
            student=world["student"],
            teacher=world["teacher_ref"],
            teacher_adapter=str(adapter),
            teacher_quantization="4bit",
            device="cpu",
        )
    )
    assert pair.shares_base
    ids = torch.tensor([[1, 2, 20, 21, 5, 3, 30]])
    dpo, ref = pair.dpo_forward(ids).logits, pair.ref_forward(ids).logits
    assert torch.isfinite(dpo).all() and not torch.allclose(dpo, ref)


def test_bf16_mixed_precision_runs(world, tmp_path):
    cfg = make_cfg(world, tmp_path, "adpa", train={"max_steps": 2, "mixed_precision": "bf16"})
    last = run_training(cfg, progress=False)
    assert last["step"] == 2 and torch.isfinite(torch.tensor(last["loss"]))


def test_kill_9_then_resume_gives_the_uninterrupted_losses(world, tmp_path):
    import os
    import signal
    import subprocess
    import sys
    import time

    from adpa_core.config import save_config

    common = {"max_steps": 8, "save_every": 2, "learning_rate": 5e-3}
    full = make_cfg(world, tmp_path, "kd", name="full", train=common)
    run_training(full, progress=False)
    victim = make_cfg(world, tmp_path, "kd", name="victim", train=common)
    save_config(victim, tmp_path / "victim.yaml")
    cmd = [sys.executable, "-m", "adpa_core.cli", "train", str(tmp_path / "victim.yaml"), "--quiet"]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    run = RunDir(victim.run_dir)
    deadline = time.time() + 120
    while len(run.read_metrics()) < 5 and time.time() < deadline and proc.poll() is None:
        time.sleep(0.01)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    killed_at = len(run.read_metrics())
    assert 5 <= killed_at < 8, f"the run was not killed mid-way ({killed_at} steps)"
    assert run.read_status()["state"] == "running"  # nobody could write anything after kill -9
    done = subprocess.run([*cmd[:-1], "--resume", "--quiet"], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert [r["step"] for r in run.read_metrics()] == list(range(1, 9))
    assert _losses(full.run_dir) == pytest.approx(_losses(victim.run_dir), rel=0, abs=1e-6)


def test_same_seed_gives_the_same_model(world, tmp_path):
    weights = []
    for name in ("a", "b"):
        cfg = make_cfg(world, tmp_path, "dckd", name=name, train={"max_steps": 3})
        run_training(cfg, progress=False)
        weights.append((cfg.run_dir / "final" / "model.safetensors").read_bytes())
    assert weights[0] == weights[1]
