"""FSDP2 and DeepSpeed ZeRO-3 through `accelerate launch` on 2 CPU processes (gloo) against one process.

One launch per engine runs every case (tests/launch_runs.py) and then a run that is killed with SIGKILL
half-way; a second launch resumes it. Each case uses the same global batch as its one-process twin
(2 processes x 2 rows vs 1 x 4, with 2 accumulated micro-batches), so the loss trajectories and the final
weights must agree:
- losses to a relative 1e-5: the only differences are the order of float sums in the engines' reductions
  (measured: about 1e-7);
- final weights to 1e-4 absolute: one optimizer step at lr 1e-3 moves a weight by up to ~1e-3, so a
  gradient that never reached a shard (e.g. the output layer's in the chunked loss) shows up (measured
  differences: a few 1e-6).
A resumed run repeats the killed run's logged steps after its checkpoint exactly.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from torch import nn

from adpa_core.config import ConfigError, save_config
from adpa_core.distributed import check_engine
from adpa_core.runs import RunDir
from adpa_core.train import run_training
from tests.tiny import make_llama, make_tokenizer, save_model
from tests.trainkit import build_world, make_cfg

ROOT = Path(__file__).parents[1]
LOSS_REL = 1e-5
WEIGHT_ABS = 1e-4
COMMON = {"max_steps": 3, "grad_accum": 2, "learning_rate": 1e-3}
CASES = {  # name: (method, student, config sections)
    "dckd-chunked": ("dckd", "student", {"train": {"chunked_loss": "on", "eval_every": 3}}),
    "dckd-full": ("dckd", "student", {"train": {"chunked_loss": "off"}}),
    "adpa-chunked-untied-head": ("adpa", "untied", {"train": {"chunked_loss": "on"}}),
    "adpa-full": ("adpa", "student", {"train": {"chunked_loss": "off"}}),
    "dckd-lora-merged": (
        "dckd",
        "student",
        {
            "train": {"chunked_loss": "on", "save_merged": True},
            "model": {"lora": True, "lora_r": 4, "lora_dropout": 0.0},
        },
    ),
    "dckd-4bit-teacher": (
        "dckd",
        "student",
        {"train": {"chunked_loss": "on"}, "model": {"teacher_quantization": "4bit"}},
    ),
}
VICTIM = {"max_steps": 12, "save_every": 2, "grad_accum": 2, "learning_rate": 5e-3, "chunked_loss": "on"}
ENGINES = [
    "fsdp",
    pytest.param(
        "zero3",
        marks=pytest.mark.skipif(
            importlib.util.find_spec("deepspeed") is None,
            reason="DeepSpeed is not installed (pip install -r requirements.txt)",
        ),
    ),
]


def _untied_student(root: Path) -> str:
    """A student whose output layer is its own matrix (not the embedding): its gradient must reach the
    output layer's shard through the chunked loss alone."""
    tok = make_tokenizer()
    model = make_llama(tok, hidden=32, seed=3)
    model.config.tie_word_embeddings = False
    model.lm_head.weight = nn.Parameter(model.lm_head.weight.detach().clone())
    return str(save_model(root / "untied", tok, model))


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> dict[str, str]:
    root = tmp_path_factory.mktemp("world")
    return {**build_world(root), "untied": _untied_student(root)}


def _cfg(world: dict[str, str], out: Path, case: str, name: str, batch_size: int):
    method, student, sections = CASES[case]
    sections = {k: dict(v) for k, v in sections.items()}
    sections.setdefault("model", {})["student"] = world[student]
    sections["train"] = {**COMMON, **sections.get("train", {}), "batch_size": batch_size}
    return make_cfg(world, out, method, name=name, **sections)


@pytest.fixture(scope="module")
def one_process(world, tmp_path_factory) -> dict[str, Path]:
    """The one-process run of every case (4 rows per micro-batch) and of the victim (uninterrupted)."""
    out = tmp_path_factory.mktemp("one")
    runs = {}
    for case in CASES:
        cfg = _cfg(world, out, case, case, batch_size=4)
        run_training(cfg, progress=False)
        runs[case] = cfg.run_dir
    victim = make_cfg(world, out, "dckd", name="victim", train={**VICTIM, "batch_size": 4})
    run_training(victim, progress=False)
    runs["victim"] = victim.run_dir
    return runs


def _launch(engine: str, args: list[str], log: Path) -> subprocess.Popen:
    port = _free_port()
    cmd = [
        str(Path(sys.executable).with_name("accelerate")),
        "launch",
        "--config_file",
        str(ROOT / "configs" / "accelerate" / f"{engine}.yaml"),
        "--main_process_port",
        str(port),
        *args,
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.Popen(
        cmd, cwd=ROOT, env=env, stdout=log.open("w"), stderr=subprocess.STDOUT, start_new_session=True
    )


def _kill_9(proc: subprocess.Popen) -> None:
    """SIGKILL to the launcher and every process under it (torchrun starts its workers in sessions of
    their own), all at once, like a machine that goes down."""
    import psutil

    try:
        tree = [psutil.Process(proc.pid), *psutil.Process(proc.pid).children(recursive=True)]
    except psutil.NoSuchProcess:
        tree = []
    for p in tree:
        with contextlib.suppress(psutil.NoSuchProcess):
            p.send_signal(signal.SIGKILL)
    proc.wait()


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _losses(run_dir: Path) -> list[float]:
    return [r["loss"] for r in RunDir(run_dir).read_metrics()]


@pytest.fixture(scope="module", params=ENGINES)
def launched(request, world, tmp_path_factory) -> dict:
    """Every case on 2 processes under one engine, then the victim, killed (SIGKILL) after 5 steps."""
    engine = request.param
    out = tmp_path_factory.mktemp(engine)
    paths = []
    for case in CASES:
        save_config(_cfg(world, out, case, case, batch_size=2), out / f"{case}.yaml")
        paths.append(str(out / f"{case}.yaml"))
    victim = make_cfg(world, out, "dckd", name="victim", train={**VICTIM, "batch_size": 2})
    save_config(victim, out / "victim.yaml")
    log = out / "launch.log"
    proc = _launch(engine, ["-m", "tests.launch_runs", *paths, str(out / "victim.yaml")], log)
    run = RunDir(victim.run_dir)
    deadline = time.time() + 500
    while len(run.read_metrics()) < 5 and time.time() < deadline and proc.poll() is None:
        time.sleep(0.01)
    _kill_9(proc)
    assert len(run.read_metrics()) >= 5, log.read_text()[-4000:]
    return {"engine": engine, "out": out, "victim": victim, "log": log}


def test_two_processes_match_one_process(launched, one_process):
    """dckd and adpa, chunked and full logits, tied and untied output layers, a LoRA student saved merged,
    a 4-bit teacher (LoRA dropout is off: its masks depend on how the rows are split over processes)."""
    for case in CASES:
        two = launched["out"] / case
        assert RunDir(two).read_status().get("state") == "completed", (
            case,
            launched["log"].read_text()[-3000:],
        )
        # the engine ran: accelerate's own fallback on CPU (DDP) would write no engine shards
        assert (RunDir(two).latest_valid_checkpoint() / "engine").is_dir(), case
        assert _losses(two) == pytest.approx(_losses(one_process[case]), rel=LOSS_REL), case
        evals = [
            [r["eval_loss"] for r in RunDir(d).read_metrics() if "eval_loss" in r]
            for d in (two, one_process[case])
        ]
        assert evals[0] == pytest.approx(evals[1], rel=LOSS_REL), case  # evaluation under the engine
        assert len(evals[0]) == (1 if case == "dckd-chunked" else 0), case
        weights = "merged/model.safetensors" if "lora" in case else "model.safetensors"
        one_w = load_file(str(one_process[case] / "final" / weights))
        two_w = load_file(str(two / "final" / weights))
        assert set(one_w) <= set(two_w), case  # whole weights, not shards (tied copies may be repeated)
        for name, weight in one_w.items():
            assert two_w[name].shape == weight.shape, (case, name)
            assert float((two_w[name] - weight).abs().max()) < WEIGHT_ABS, (case, name)


def test_kill_9_then_resume_repeats_the_steps_exactly(launched, one_process):
    run = RunDir(launched["victim"].run_dir)
    assert run.read_status()["state"] == "running"  # nobody could write anything after kill -9
    killed_at = len(run.read_metrics())
    assert killed_at < VICTIM["max_steps"], "the run was not killed mid-way"
    ckpt = run.latest_valid_checkpoint()
    assert ckpt is not None and (ckpt / "engine").is_dir(), "the engine's shards are in the checkpoint"
    after = [r for r in run.read_metrics() if r["step"] > int(ckpt.name.split("-")[1])]
    assert after, "some steps were logged after the checkpoint"
    log = launched["out"] / "resume.log"
    yaml = str(launched["out"] / "victim.yaml")
    proc = _launch(launched["engine"], ["-m", "adpa_core.cli", "train", yaml, "--resume", "--quiet"], log)
    assert proc.wait(timeout=500) == 0, log.read_text()[-4000:]
    records = run.read_metrics()
    assert [r["step"] for r in records] == list(range(1, VICTIM["max_steps"] + 1))
    resumed = {r["step"]: r["loss"] for r in records}
    for r in after:  # the same processes, the same shards, the same data: the same numbers
        assert resumed[r["step"]] == pytest.approx(r["loss"], rel=0, abs=1e-7), r["step"]
    assert _losses(run.path) == pytest.approx(_losses(one_process["victim"]), rel=LOSS_REL)


def test_zero3_refuses_what_it_cannot_partition(world, tmp_path):
    qlora = make_cfg(world, tmp_path, "dckd", model={"lora": True, "student_quantization": "4bit"})
    with pytest.raises(ConfigError, match="ZeRO-3 cannot partition bitsandbytes"):
        check_engine(qlora, "deepspeed")
    check_engine(qlora, "fsdp")  # FSDP2 keeps quantized weights unsharded (accelerate), no refusal
    four_bit_teacher = make_cfg(world, tmp_path, "dckd", model={"teacher_quantization": "4bit"})
    check_engine(four_bit_teacher, "deepspeed")  # teachers are never partitioned

    class Plugin:
        zero3_init_flag = True

    with pytest.raises(ConfigError, match="zero3_init_flag: false"):
        check_engine(four_bit_teacher, "deepspeed", Plugin())

    class Fsdp1:
        fsdp_version = 1

    with pytest.raises(ConfigError, match="fsdp_version: 2"):
        check_engine(four_bit_teacher, "fsdp", Fsdp1())


GPU_CASES = {  # engine: what only a GPU machine can run
    "fsdp": {"model": {"lora": True, "lora_r": 4, "lora_dropout": 0.0, "student_quantization": "4bit"}},
    "zero3": {"model": {"teacher_quantization": "4bit"}},
}


@pytest.mark.gpu
@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs 2 CUDA GPUs")
@pytest.mark.parametrize("engine", ["fsdp", pytest.param("zero3", marks=ENGINES[1].marks)])
def test_two_gpus_match_one_gpu_in_bf16(world, tmp_path, engine):
    """On GPUs accelerate sets the engine up itself (no CPU switch), in bf16 mixed precision; FSDP with a
    QLoRA student (accelerate leaves the 4-bit base unsharded) and ZeRO-3 with a 4-bit teacher. bf16
    compute differs between one device and the engines' casts: losses within 2% (measured on CPU in
    float32 the engines agree to 1e-7)."""
    sections = {k: dict(v) for k, v in GPU_CASES[engine].items()}
    sections["model"].update(device="cuda", dtype="float32")
    train = {**COMMON, "mixed_precision": "bf16", "chunked_loss": "on"}
    one = make_cfg(world, tmp_path, "dckd", name="one", train={**train, "batch_size": 4}, **sections)
    two = make_cfg(world, tmp_path, "dckd", name="two", train={**train, "batch_size": 2}, **sections)
    run_training(one, progress=False)
    save_config(two, tmp_path / "two.yaml")
    log = tmp_path / "launch.log"
    proc = _launch(engine, ["-m", "adpa_core.cli", "train", str(tmp_path / "two.yaml"), "--quiet"], log)
    assert proc.wait(timeout=900) == 0, log.read_text()[-4000:]
    assert _losses(two.run_dir) == pytest.approx(_losses(one.run_dir), rel=2e-2)
