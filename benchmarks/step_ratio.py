"""Training-step ratios on one student: ADPA and KD steps against an SFT step, side by side.

Each method is a real `adpa_core.train` session (`setup` + `optimizer_step`: batch building, loss_step,
backward, clipping, AdamW) on the synthetic world of `world.py`; the sessions take turns step by step in one
process, so that a slower or busier machine affects them alike. Every session's student sees the same number
of tokens per step (ADPA: B chosen + B y_hat rows; SFT and KD: 2B chosen rows; all of one length), so the
step-time ratios are per-token ratios.

FLOP bound of a step with online teachers (per student token, N = compute parameters, `world.py`):
`1 + 2 (N_teacher + N_ref) f / (6 N_student)`, f = teacher tokens / student tokens. For KD f = 1 and there is
no reference (the issue's formula with N_ref = 0); for ADPA the teachers see only the y_hat half (f = 1/2).

    python -m benchmarks.step_ratio [--quick] [--vocab 32768] [--batch 4] [--steps 5]
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path
from typing import Any

import torch
from accelerate import Accelerator

from adpa_core.runs import RunDir
from adpa_core.teacher import build_teacher_cache
from adpa_core.train import Session, optimizer_step, setup

from . import common as C
from . import world as W

NAME = "step_ratio"
TARGET_CACHED, TARGET_ONLINE = 1.15, 1.15


def sessions_spec(batch: int) -> dict[str, dict[str, Any]]:
    """name -> (method, batch size, objective overrides, teacher f, uses the reference)."""
    return {
        "sft": {"method": "sft", "batch": 2 * batch, "objective": {}, "f": 0.0, "ref": False},
        "adpa_cache": {
            "method": "adpa",
            "batch": batch,
            "objective": {"teacher_source": "cache"},
            "f": 0.0,
            "ref": False,
        },
        "adpa_online": {"method": "adpa", "batch": batch, "objective": {}, "f": 0.5, "ref": True},
        "kd_online": {"method": "kd", "batch": 2 * batch, "objective": {}, "f": 1.0, "ref": False},
    }


def build_sessions(world: W.World, out: Path, batch: int, device: str) -> dict[str, Session]:
    acc = Accelerator(cpu=device == "cpu")
    cache = out / "teacher_cache"
    sessions = {}
    for name, spec in sessions_spec(batch).items():
        objective = dict(spec["objective"])
        if objective.get("teacher_source") == "cache":
            objective["teacher_cache"] = str(cache)
        cfg = W.run_config(world, out, name, spec["method"], spec["batch"], device, objective)
        if spec["method"] == "adpa":
            W.write_yhat(world, cfg)
        if name == "adpa_cache":
            build_teacher_cache(cfg)
        sessions[name] = setup(cfg, RunDir(cfg.run_dir), acc)
    return sessions


def time_sessions(sessions: dict[str, Session], device: torch.device, warmup: int, steps: int) -> dict:
    """Round-robin steps; returns per session the step times after warmup and the tokens per step."""
    times: dict[str, list[float]] = {n: [] for n in sessions}
    tokens: dict[str, float] = {}
    for i in range(warmup + steps):
        for name, s in sessions.items():
            metrics: dict[str, float] = {}
            dt = C.time_calls(lambda s=s, m=metrics: m.update(optimizer_step(s)), device, 0, 1)[0]
            s.loop["step"] += 1
            tokens[name] = metrics["tokens"]
            if i >= warmup:
                times[name].append(dt)
    return {"times": times, "tokens": tokens}


def results(world: W.World, timing: dict, batch: int) -> list[dict[str, Any]]:
    n_s, n_t = world.student_params, world.teacher_params
    base = C.median(timing["times"]["sft"]) / timing["tokens"]["sft"]
    rows = []
    for name, spec in sessions_spec(batch).items():
        step = C.median(timing["times"][name])
        per_token = step / timing["tokens"][name]
        teachers = n_t * (2 if spec["ref"] else 1)
        bound = 1 + 2 * teachers * spec["f"] / (6 * n_s)
        rows.append(
            {
                "session": name,
                "method": spec["method"],
                "rows": spec["batch"] * (2 if spec["method"] == "adpa" else 1),
                "tokens": timing["tokens"][name],
                "step_s": step,
                "times_s": timing["times"][name],
                "tokens_per_s": 1 / per_token,
                "ratio_vs_sft": per_token / base,
                "flop_bound": bound,
                "ratio_vs_bound": per_token / base / bound,
            }
        )
    return rows


def targets(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    by = {r["session"]: r for r in rows}
    return [
        C.target("ADPA step, cached teacher / SFT step", by["adpa_cache"]["ratio_vs_sft"], TARGET_CACHED),
        C.target(
            "ADPA step, online teachers / (SFT step x FLOP bound)",
            by["adpa_online"]["ratio_vs_bound"],
            TARGET_ONLINE,
            f"bound {by['adpa_online']['flop_bound']:.2f}",
        ),
        C.target(
            "KD step, online teacher / (SFT step x FLOP bound)",
            by["kd_online"]["ratio_vs_bound"],
            TARGET_ONLINE,
            f"bound {by['kd_online']['flop_bound']:.2f}",
        ),
    ]


COLUMNS = [
    ("session", "session", ""),
    ("rows", "student rows", ""),
    ("tokens", "tokens/step", ".0f"),
    ("step_s", "step s (median)", ".2f"),
    ("tokens_per_s", "tokens/s", ".0f"),
    ("ratio_vs_sft", "time/token vs SFT", ".3f"),
    ("flop_bound", "FLOP bound", ".3f"),
    ("ratio_vs_bound", "ratio / bound", ".3f"),
]


def render(payload: dict[str, Any]) -> str:
    cfg, w = payload["config"], payload["config"]["world"]
    desc = (
        f"V = {w['vocab']}, student {cfg['student']} ({w['student_params'] / 1e6:.2f} M compute params), "
        f"teachers {cfg['teacher']} ({w['teacher_params'] / 1e6:.2f} M each), {w['seq_tokens']} tokens per "
        f"sequence, chunked loss `{cfg['chunked_loss']}`; median of {cfg['steps']} steps after "
        f"{cfg['warmup']} warmup, sessions interleaved."
    )
    return "\n\n".join(
        [C.header(payload), desc, C.table(payload["results"], COLUMNS), C.targets_table(payload["targets"])]
    )


def parse(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog=f"python -m benchmarks.{NAME}", description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="tiny models, a smoke run (seconds)")
    p.add_argument("--vocab", type=int, default=None, help="vocabulary (default 32768; quick 8192)")
    p.add_argument("--batch", type=int, default=None, help="B: ADPA pairs per step (default 4; quick 2)")
    p.add_argument("--prompt-words", type=int, default=None, help="default 28 (quick 8)")
    p.add_argument("--response-words", type=int, default=None, help="default 95 (quick 24)")
    p.add_argument("--steps", type=int, default=None, help="timed steps per session (default 5; quick 2)")
    p.add_argument("--warmup", type=int, default=None, help="untimed steps (default 2; quick 1)")
    p.add_argument("--device", default="auto")
    p.add_argument("--threads", type=int, default=None, help="CPU threads (default: torch's)")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse(argv)
    C.set_threads(args.threads)
    device = C.pick_device(args.device)
    q = args.quick
    student, teacher = (W.QUICK_STUDENT, W.QUICK_TEACHER) if q else (W.STUDENT, W.TEACHER)
    vocab = args.vocab or (8192 if q else 32768)
    batch = args.batch or (2 if q else 4)
    prompt_words = args.prompt_words or (8 if q else 28)
    response_words = args.response_words or (24 if q else 95)
    steps, warmup = args.steps or (2 if q else 5), args.warmup if args.warmup is not None else (1 if q else 2)
    print(f"{NAME}: V={vocab}, batch {batch}, student {student}, teacher {teacher} on {device}", flush=True)
    with tempfile.TemporaryDirectory(prefix="adpa-bench-") as tmp:
        world = W.build_world(
            Path(tmp) / "world", vocab, student, teacher, 4 * batch, prompt_words, response_words
        )
        sessions = build_sessions(world, Path(tmp) / "runs", batch, device.type)
        chunk = sessions["sft"].ctx.chunk_size
        timing = time_sessions(sessions, device, warmup, steps)
    rows = results(world, timing, batch)
    config = {
        "world": world.as_dict(),
        "student": str(student),
        "teacher": str(teacher),
        "batch": batch,
        "steps": steps,
        "warmup": warmup,
        "chunked_loss": f"auto (chunk {chunk})" if chunk else "auto (full logits)",
        "quick": q,
    }
    command = C.command_line(f"benchmarks.{NAME}", argv)
    payload = C.report(NAME, command, device, config, rows, targets(rows))
    print(render(payload), flush=True)
    return payload


if __name__ == "__main__":
    main()
