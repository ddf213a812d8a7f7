"""`adpa plan`'s memory model against measured peaks of real training steps on CPU, at two small sizes.

    python -m benchmarks.plan_memory [--quick] [--threads 1]
    python -m benchmarks.plan_memory --render     # RESULTS.md's section from the committed JSON (printed)

Each case is a fresh subprocess that loads the run (`train.setup`: models, teachers, optimizer) and runs two
optimizer steps (the first creates AdamW's state). Measured = the resident set's high-water mark during the
steps (reset after loading) minus the resident set before anything was loaded (libraries imported and the
process group set up first), i.e. everything the run holds:
weights, teachers, gradients, optimizer state, activations, the loss. glibc's mmap threshold is fixed at
64 KiB in the children so that freed tensors go back to the system (the high-water mark then tracks tensor
memory). Predicted = `adpa_core.plan.plan(...)`, strategy `single`, device `cpu` (float32, no CUDA reserve),
at the batch's real sequence length. Target: every case within 20%.

A run writes benchmarks/out/plan_memory.json; recorded with `ADPA_BENCH_OUT=benchmarks/recorded` it is the
committed benchmarks/recorded/plan_memory.json, from which `make docs-tables` renders RESULTS.md's section
(`section`).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import tempfile
from dataclasses import replace
from pathlib import Path
from typing import Any

from . import common as C
from . import world as W

COMMITTED = C.REPO_ROOT / "benchmarks" / "recorded" / "plan_memory.json"
SIZES = {  # vocab, student, teacher, prompt words, response words, batch
    "A": (16384, W.Shape(256, 4, 768, 4), W.Shape(512, 4, 1536, 8), 60, 60, 4),
    "B": (32768, W.Shape(384, 6, 1024, 6), W.Shape(512, 6, 1536, 8), 100, 100, 2),
}
QUICK_SIZES = {"Q": (1024, W.QUICK_STUDENT, W.QUICK_TEACHER, 6, 6, 2)}
CASES = {  # method, objective, train, model
    "sft": ("sft", {}, {"chunked_loss": "off"}, {}),
    "sft, checkpointing": ("sft", {}, {"chunked_loss": "off", "gradient_checkpointing": True}, {}),
    "dckd, naive loss": ("dckd", {}, {"chunked_loss": "off"}, {}),
    "dckd, chunked loss": ("dckd", {}, {"chunked_loss": "on"}, {}),
    "adpa, naive loss": ("adpa", {}, {"chunked_loss": "off"}, {}),
    "adpa, chunked loss": ("adpa", {}, {"chunked_loss": "on"}, {}),
    "dckd, LoRA r 16, chunked": ("dckd", {}, {"chunked_loss": "on"}, {"lora": True, "lora_r": 16}),
}
# Two CPU processes under an engine (accelerate launch): the largest per-process peak against the plan of
# that strategy for 2 GPUs (teachers whole on each process, the student sharded).
LAUNCHED = {"fsdp": "FSDP x2", "zero3": "ZeRO-3 x2"}
LAUNCHED_CASE = "dckd, chunked loss"
TOLERANCE = 0.2


def case_config(world: W.World, out: Path, case: str, batch: int) -> Any:
    method, objective, train, model = CASES[case]
    name = re.sub(r"[^a-z0-9]+", "-", case.lower()).strip("-")
    cfg = W.run_config(world, out, name, method, batch, objective=objective, train=train)
    return replace(cfg, model=replace(cfg.model, **model)) if model else cfg


def child(spec: dict[str, Any]) -> dict[str, Any]:
    import torch

    from adpa_core.runs import RunDir
    from adpa_core.train import _accelerator, optimizer_step, setup

    C.set_threads(spec.get("threads"))
    world = W.World(**spec["world"])
    cfg = case_config(world, Path(spec["out"]), spec["case"], spec["batch"])
    if cfg.objective.method == "adpa":
        W.write_yhat(world, cfg)
    acc = _accelerator(cfg)  # the process group and the engine's code are not the run's memory
    if acc.distributed_type == "DEEPSPEED":
        import deepspeed  # noqa: F401  (imported by accelerate's prepare otherwise, inside the region)
    import torch.distributed.checkpoint  # noqa: F401
    import torch.distributed.fsdp  # noqa: F401

    before = C._status_kib("VmRSS") * 1024
    s = setup(cfg, RunDir(cfg.run_dir), acc)
    with C.PeakMemory(torch.device("cpu")) as peak:
        for _ in range(2):
            optimizer_step(s)
            s.loop["step"] += 1
    result = {"measured_mib": (peak.peak - before) / C.MIB, "exact": peak.exact}
    if spec.get("result_dir"):  # launched: one file per process (their stdout lines can interleave)
        rank = os.environ.get("RANK", "0")
        (Path(spec["result_dir"]) / f"rank{rank}.json").write_text(json.dumps(result), encoding="utf-8")
    return result


def predicted_mib(world: W.World, cfg: Any, strategy: str = "single", gpus: int = 1) -> dict[str, Any]:
    from adpa_core.plan import plan, resolve_arch

    real = {"max_length": world.seq_tokens, "max_prompt_length": world.prompt_tokens}  # the batch's lengths
    cfg = replace(cfg, data=replace(cfg.data, **real))
    teacher = resolve_arch(world.teacher) if cfg.model.teacher else None
    p = plan(cfg, resolve_arch(world.student), teacher, gpus=gpus, device="cpu")
    parts = {name: vals[strategy] / C.MIB for name, vals in p.rows.items()}
    return {"predicted_mib": p.total(strategy) / C.MIB, "parts_mib": parts}


def run_launched(engine: str, spec: dict[str, Any], timeout: float) -> dict[str, Any]:
    """`accelerate launch --config_file configs/accelerate/<engine>.yaml` of a case on 2 CPU processes."""
    import socket
    import subprocess
    import sys

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    accelerate = str(Path(sys.executable).with_name("accelerate"))
    config = str(C.REPO_ROOT / "configs" / "accelerate" / f"{engine}.yaml")
    cmd = [accelerate, "launch", "--config_file", config, "--num_processes", "2", "--main_process_port",
           str(port), "-m", "benchmarks.plan_memory", "--child", json.dumps(spec)]  # fmt: skip
    results = Path(spec["result_dir"])
    results.mkdir(parents=True, exist_ok=True)
    try:
        proc = subprocess.run(cmd, cwd=C.REPO_ROOT, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return {"error": f"timed out after {timeout:.0f} s"}
    found = [json.loads(p.read_text(encoding="utf-8")) for p in sorted(results.glob("rank*.json"))]
    if len(found) != 2:
        return {"error": f"exit code {proc.returncode}: {proc.stderr.strip().splitlines()[-1:]}"}
    per = [r["measured_mib"] for r in found]
    return {"measured_mib": max(per), "per_process_mib": per, "exact": all(r["exact"] for r in found)}


def run(sizes: dict, threads: int | None, root: Path) -> list[dict[str, Any]]:
    os.environ["MALLOC_MMAP_THRESHOLD_"] = "65536"  # the children return freed tensors to the system
    rows = []
    for size, (vocab, student, teacher, p_words, r_words, batch) in sizes.items():
        world = W.build_world(root / size, vocab, student, teacher, 8, p_words, r_words)
        for case in CASES:
            spec = {"world": world.__dict__, "out": str(root / size / "runs"), "case": case}
            spec.update(batch=batch, threads=threads)
            got = C.run_child("benchmarks.plan_memory", spec, timeout=1200)
            row = {"size": size, "case": case, "vocab": vocab, "student": str(student), "batch": batch}
            row.update(teacher=str(teacher), seq_tokens=world.seq_tokens, **got)
            row.update(predicted_mib(world, case_config(world, root / size / "runs", case, batch)))
            if "measured_mib" in row:
                row["ratio"] = row["predicted_mib"] / row["measured_mib"]
            rows.append(row)
            print(f"{size} {case}: {got}", flush=True)
        if size != "A":
            continue
        for engine, label in LAUNCHED.items():
            spec = {"world": world.__dict__, "out": str(root / size / engine), "case": LAUNCHED_CASE}
            spec["result_dir"] = str(root / size / f"{engine}-results")
            got = run_launched(engine, {**spec, "batch": batch // 2, "threads": threads}, timeout=1200)
            row = {"size": size, "case": f"{LAUNCHED_CASE}, {label}", "vocab": vocab, "student": str(student)}
            row.update(batch=batch // 2, teacher=str(teacher), seq_tokens=world.seq_tokens, **got)
            cfg = case_config(world, root / size / engine, LAUNCHED_CASE, batch // 2)
            row.update(predicted_mib(world, cfg, engine, gpus=2))
            if "measured_mib" in row:
                row["ratio"] = row["predicted_mib"] / row["measured_mib"]
            rows.append(row)
            print(f"{size} {label}: {got}", flush=True)
    return rows


def render(payload: dict[str, Any]) -> str:
    head = "| size | case | predicted MiB | measured MiB | predicted / measured |\n|---|---|---:|---:|---:|\n"
    lines = [
        f"| {r['size']} | {r['case']} | {r['predicted_mib']:.0f} | {C.fmt(r.get('measured_mib'), '.0f')} "
        f"| {C.fmt(r.get('ratio'), '.2f')} |"
        for r in payload["results"]
    ]
    for t in payload["targets"]:
        status = "met" if t["met"] else "not met" if t["met"] is False else "not measured"
        lines.append(f"\n{t['target']}: {C.fmt(t['measured'], '.2f')} (target <= {t['limit']}: {status})")
    launched = [r for r in payload["results"] if r.get("per_process_mib")]
    per = [f"{r['case']}: {', '.join(f'{m:.0f}' for m in r['per_process_mib'])}" for r in launched]
    if per:
        lines.append("\nper-process peaks (MiB) of the launched rows: " + "; ".join(per))
    sizes = payload["config"]["sizes"]
    legend = [
        f"- size {k}: vocabulary {v[0]:,}, student {v[1]}, teacher {v[2]}, {v[3]} batch rows of {v[4]} tokens"
        for k, v in sizes.items()
    ]
    return head + "\n".join(lines) + "\n\n" + "\n".join(legend) + "\n"


def section(payload: dict[str, Any]) -> str:
    """RESULTS.md's section: what ran where and when, then the table (scripts/docs_tables.py renders it)."""
    return C.header(payload) + "\n\n" + render(payload).rstrip("\n")


def parse(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m benchmarks.plan_memory", description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="one tiny size (seconds; not a check of the model)")
    p.add_argument("--threads", type=int, default=None, help="CPU threads per case")
    p.add_argument("--render", action="store_true", help="print RESULTS.md's section from the committed JSON")
    p.add_argument("--child", help=argparse.SUPPRESS)
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse(argv)
    if args.child:
        C.child_result(child(json.loads(args.child)))
        return {}
    if args.render:
        payload = json.loads(COMMITTED.read_text(encoding="utf-8"))
        print(section(payload))
        return payload
    C.set_threads(args.threads)
    sizes = QUICK_SIZES if args.quick else SIZES
    with tempfile.TemporaryDirectory() as tmp:
        rows = run(sizes, args.threads, Path(tmp))
    worst = max((abs(r["ratio"] - 1) for r in rows if "ratio" in r), default=None)
    config = {"sizes": {k: [v[0], str(v[1]), str(v[2]), v[5], v[3] + v[4] + 5] for k, v in sizes.items()}}
    targets = [C.target("max |predicted / measured - 1| over the cases", worst, TOLERANCE)]
    import torch

    payload = C.report(
        "plan_memory",
        C.command_line("benchmarks.plan_memory", argv),
        torch.device("cpu"),
        config,
        rows,
        targets,
    )
    print(render(payload))
    return payload


if __name__ == "__main__":
    main()
