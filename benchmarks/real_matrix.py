"""The real-model matrix: every method x teacher source (online, cache) x teacher weights (full, 8-bit,
4-bit) x eval on/off on SmolLM2-135M-Instruct. Each cell runs a few optimizer steps or is refused with a
one-line reason; tokens/s per cell.

    python -m benchmarks.real_matrix [--steps 3] [--out docs/data/real_matrix.json]

The teacher pair is the base with a DPO LoRA adapter trained first on a small built-in preference set
(the layout of the real recipes: reference = adapter off). docs/RELIABILITY.md renders the JSON
(`make docs-tables`).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path
from typing import Any

from adpa_core.config import METHODS, TEACHER_METHODS, config_from_dict
from adpa_core.fetch import fetch_model
from adpa_core.runs import RunDir, atomic_write_json

# (question, plain answer): the rejected reply adds an insult (a contrast a DPO adapter learns in steps).
FACTS = [
    ("What is the capital of France?", "The capital of France is Paris."),
    ("What is the capital of Italy?", "The capital of Italy is Rome."),
    ("What is two plus three?", "Two plus three is five."),
    ("What color is the sky on a clear day?", "The sky is blue on a clear day."),
    ("How many legs does a dog have?", "A dog has four legs."),
    ("What is the largest planet?", "Jupiter is the largest planet."),
    ("What do bees make?", "Bees make honey."),
    ("What is frozen water called?", "Frozen water is called ice."),
    ("Which animal says moo?", "A cow says moo."),
    ("What is the opposite of hot?", "The opposite of hot is cold."),
    ("How many days are in a week?", "A week has seven days."),
    ("What do you call a baby cat?", "A baby cat is called a kitten."),
]


def _write_data(root: Path) -> dict[str, str]:
    rows = [
        {"id": f"q{i:02d}", "prompt": q, "chosen": a, "rejected": f"{a[:-1]}, you idiot."}
        for i, (q, a) in enumerate(FACTS)
    ]
    out = {}
    for name, part in (("train", rows[:9]), ("eval", rows[9:])):
        path = root / f"{name}.jsonl"
        path.write_text("".join(json.dumps(r) + "\n" for r in part), encoding="utf-8")
        out[name] = str(path)
    return out


def _config(root: Path, name: str, base: str, data: dict, objective: dict, model: dict, train: dict) -> Any:
    return config_from_dict(
        {
            "name": name,
            "output_dir": str(root / "runs"),
            "model": {"student": base, "lora": True, "lora_r": 8, "device": "cpu", **model},
            "data": {
                "train": data["train"],
                "eval": data["eval"],
                "max_length": 128,
                "max_prompt_length": 96,
            },
            "objective": {"max_new_tokens": 16, "k": 50, **objective},
            "train": {"batch_size": 2, "learning_rate": 1e-4, "warmup_ratio": 0.0, **train},
        }
    )


def _cell(root: Path, base: str, data: dict, teacher: dict, dckd_run: str, cell: dict, steps: int) -> dict:
    from adpa_core.teacher import build_teacher_cache
    from adpa_core.train import run_training

    method, source, quant = cell["method"], cell["source"], cell["quantization"]
    name = f"{method}-{source}-{quant}-{'eval' if cell['eval'] else 'noeval'}"
    model: dict[str, Any] = {}
    objective: dict[str, Any] = {"method": method}
    if method in TEACHER_METHODS:
        model.update(teacher, teacher_quantization=quant)
        if method == "adpa_plus":
            model["student"] = dckd_run
        if source == "cache":
            objective.update(teacher_source="cache", teacher_cache=str(root / "caches" / name))
    train = {"max_steps": steps, "eval_every": steps if cell["eval"] else 0}
    t0 = time.perf_counter()
    try:
        cfg = _config(root, name, base, data, objective, model, train)
        if source == "cache":
            meta = build_teacher_cache(cfg)
            cell["cache_tokens_per_s"] = meta["tokens_per_s"]
        last = run_training(cfg, progress=False)
    except Exception as exc:  # a refusal is a result of this matrix; its one line is recorded
        cell.update(ok=False, reason=" ".join(f"{type(exc).__name__}: {exc}".split())[:300])
        cell["traceback"] = traceback.format_exc()[-1500:]
    else:
        records = RunDir(cfg.run_dir).read_metrics()
        cell.update(ok=True, tokens_per_s=last["tokens_per_s"], loss=last["loss"])
        cell["eval_logged"] = any("eval_loss" in r for r in records)
    cell["seconds"] = time.perf_counter() - t0
    return cell


def _cells() -> list[dict[str, Any]]:
    cells = []
    for method in METHODS:
        for evaluate in (False, True):
            if method not in TEACHER_METHODS:
                cells.append({"method": method, "source": "-", "quantization": "-", "eval": evaluate})
                continue
            for source in ("online", "cache"):
                for quant in ("none", "8bit", "4bit"):
                    cells.append(
                        {"method": method, "source": source, "quantization": quant, "eval": evaluate}
                    )
    return cells


def main(argv: list[str] | None = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(prog="python -m benchmarks.real_matrix", description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=3, help="optimizer steps per cell")
    p.add_argument("--out", default="docs/data/real_matrix.json")
    p.add_argument("--only", default=None, help="comma-separated methods (default: all)")
    argv = sys.argv[1:] if argv is None else argv
    args = p.parse_args(argv)
    from adpa_core.train import run_training

    base = str(fetch_model("smollm2-135m-instruct"))
    t0 = time.perf_counter()
    load = os.getloadavg()[0]
    with tempfile.TemporaryDirectory(prefix="adpa-matrix-") as tmp:
        root = Path(tmp)
        data = _write_data(root)
        dpo = _config(
            root, "teacher-dpo", base, data, {"method": "dpo"}, {}, {"max_steps": 8, "learning_rate": 5e-4}
        )
        run_training(dpo, progress=False)
        teacher = {"teacher": base, "teacher_adapter": str(dpo.run_dir / "final")}
        dckd = _config(root, "dckd-start", base, data, {"method": "dckd"}, teacher, {"max_steps": 2})
        run_training(dckd, progress=False)
        wanted = set(args.only.split(",")) if args.only else set(METHODS)
        todo = [c for c in _cells() if c["method"] in wanted]
        cells: list[dict] = []
        for cell in todo:
            cells.append(_cell(root, base, data, teacher, str(dckd.run_dir), cell, args.steps))
            c = cells[-1]
            _write(
                args, argv, load, t0, cells, len(todo)
            )  # each finished cell is kept if a later one kills the process
            verdict = f"{c.get('tokens_per_s', 0):.0f} tok/s" if c["ok"] else f"refused: {c['reason']}"
            print(f"{c['method']:<9} {c['source']:<6} {c['quantization']:<4} eval={c['eval']!s:<5} {verdict}")
    return _write(args, argv, load, t0, cells, len(todo))


def _commit() -> str:
    """The checked-out commit the matrix ran on ('' outside a git checkout)."""
    try:
        out = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=True
        )
    except (OSError, subprocess.CalledProcessError):
        return ""
    return out.stdout.strip()


def _write(
    args: argparse.Namespace, argv: list[str], load: float, t0: float, cells: list[dict], planned: int
) -> dict:
    result = {
        "planned": planned,
        "commit": _commit(),
        "command": " ".join(["python -m benchmarks.real_matrix", *argv]),
        "machine": f"{platform.machine()}, {os.cpu_count()} CPU cores, no GPU (load average {load:.1f})",
        "steps": args.steps,
        "seconds": time.perf_counter() - t0,
        "cells": cells,
    }
    atomic_write_json(args.out, result)
    return result


if __name__ == "__main__":
    main()
