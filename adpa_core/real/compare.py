"""`adpa real compare`: the methods side by side on the real-model world.

Every row starts from the same student (SmolLM2 with a fresh LoRA adapter; ADPA+ from the DCKD run of the
same seed) and uses the world's recipe (`configs/realworld/<method>.yaml`) with one step budget; seeds vary
the adapter's initialisation and the data order, not the world. Each model answers the held-out `test`
prompts (instruction kinds seen in training) and `unseen` prompts (kinds held out) greedily; the judge scores
the replies. Per row: the mean judge score over seeds with a 95% bootstrap interval over prompts (each
prompt's score averaged over seeds), the content and instruction rates, hack rate and reply length. Writes
`table.md` and `results.json`; a finished (seed, row) is kept in `seed-N/<row>.json` and reused by a rerun
with the same settings.
"""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path
from typing import Any

import numpy as np

from ..config import load_config
from ..runs import atomic_write_json, atomic_write_text
from ..stats import bootstrap_ci

RECIPES = Path(__file__).resolve().parents[2] / "configs" / "realworld"
# (row name, method or None (scored as it is), model to score when not trained)
ROWS = (
    ("Student (start)", None, "real:student"),
    ("SFT on chosen", "sft", None),
    ("DPO", "dpo", None),
    ("DCKD", "dckd", None),
    ("ADPA", "adpa", None),
    ("ADPA+ (from DCKD)", "adpa_plus", None),
    ("Teacher (DPO adapter)", None, "real:teacher"),
)
SPLITS = ("test", "unseen")


def _slug(name: str) -> str:
    return "".join(c if c.isalnum() else "-" for c in name.lower()).strip("-")


def run_config(method: str, seed: int, steps: int, out: Path, student: str | None, extra: list[str]) -> Any:
    """The world's recipe of `method` with this comparison's budget and seed."""
    overrides = [
        f"name={method}-seed{seed}",
        f"output_dir={out / f'seed-{seed}' / 'runs'}",
        f"train.max_steps={steps}",
        f"train.seed={seed}",
        "train.save_every=0",
        f"train.log_every={max(1, steps // 20)}",
        *([f"model.student={student}"] if student else []),
        *extra,
    ]
    return load_config(RECIPES / f"{method}.yaml", overrides)


def score(model: str, max_new_tokens: int) -> dict[str, Any]:
    """Greedy replies of `model` (a short name or a run directory) to each held-out split, judged."""
    from ..evaluate import evaluate_model, load_eval_prompts
    from ..rewards import real_reward

    out = {}
    for split in SPLITS:
        report = evaluate_model(
            model,
            None,
            load_eval_prompts("real:prompts", split),
            real_reward(),
            max_new_tokens=max_new_tokens,
        )
        out[split] = {
            "rewards": [r["reward"] for r in report["records"]],
            "summary": report["real"],
            "mean_length": report["mean_length"],
        }
    return out


def run_row(row: tuple, seed: int, steps: int, out: Path, dckd: str | None, settings: dict) -> dict[str, Any]:
    """Trains (when the row has a method) and scores one row of one seed; cached in seed-N/<row>.json."""
    name, method, model = row
    saved = out / f"seed-{seed}" / f"{_slug(name)}.json"
    if saved.exists():
        result = json.loads(saved.read_text(encoding="utf-8"))
        if result.get("settings") == settings:
            return result
    t0 = time.perf_counter()
    if method is not None:
        from ..train import run_training

        cfg = run_config(method, seed, steps, out, dckd if method == "adpa_plus" else None, settings["extra"])
        shutil.rmtree(cfg.run_dir, ignore_errors=True)  # a run left by an interrupted comparison
        run_training(cfg, progress=True)
        model = str(cfg.run_dir)
    result = {"row": name, "model": model, "settings": settings, **score(model, settings["max_new_tokens"])}
    result["seconds"] = time.perf_counter() - t0
    atomic_write_json(saved, result)
    return result


def summarize_row(results: list[dict[str, Any]]) -> dict[str, Any]:
    """Across seeds: per split the mean judge score with a 95% bootstrap CI over prompts, and the means of
    the judge's rates."""
    out: dict[str, Any] = {"seeds": len(results)}
    for split in SPLITS:
        per_prompt = np.mean([r[split]["rewards"] for r in results], axis=0)  # (prompts,)
        lo, hi = bootstrap_ci(per_prompt)
        summaries = [r[split]["summary"] for r in results]
        out[split] = {
            "judge": float(per_prompt.mean()),
            "ci": [float(lo), float(hi)],
            "seed_means": [float(np.mean(r[split]["rewards"])) for r in results],
            "content": float(np.mean([s["content_all"] for s in summaries])),
            "instructions": float(np.mean([s["instructions_all"] for s in summaries])),
            "any_hack": float(np.mean([s["any_hack_rate"] for s in summaries])),
            "words": float(np.mean([s["mean_words"] for s in summaries])),
            "stopped": float(np.mean([s["stop_rate"] for s in summaries])),
        }
    return out


def table(rows: dict[str, dict[str, Any]]) -> str:
    head = (
        "| row | judge, test [95% CI] | content | instructions | hacks | words "
        "| judge, unseen kinds [95% CI] |\n|---|---|---|---|---|---|---|"
    )
    lines = [head]
    for name, r in rows.items():
        t, u = r["test"], r["unseen"]
        lines.append(
            f"| {name} | {t['judge']:.3f} [{t['ci'][0]:.3f}, {t['ci'][1]:.3f}] | {t['content']:.2f} | "
            f"{t['instructions']:.2f} | {t['any_hack']:.2f} | {t['words']:.1f} | "
            f"{u['judge']:.3f} [{u['ci'][0]:.3f}, {u['ci'][1]:.3f}] |"
        )
    return "\n".join(lines)


def compare(
    seeds: int = 3,
    steps: int = 60,
    out: str | Path = "results/real-compare",
    max_new_tokens: int = 48,
    extra: list[str] | None = None,
    command: str = "",
) -> dict[str, Any]:
    """Runs the comparison (see the module docstring); returns results.json's content."""
    from ..paths import real_dir
    from ..runs import file_sha256

    out = Path(out)
    manifest = json.loads((real_dir() / "manifest.json").read_text(encoding="utf-8"))
    teacher = real_dir() / "teacher" / "adapter_model.safetensors"
    settings = {
        "steps": steps,
        "max_new_tokens": max_new_tokens,
        "extra": list(extra or []),
        "world": {"seed": manifest["seed"], "mode": manifest["mode"], "teacher_sha256": file_sha256(teacher)},
    }
    t0 = time.perf_counter()
    per_row: dict[str, list[dict[str, Any]]] = {row[0]: [] for row in ROWS}
    for seed in range(seeds):
        dckd = None
        for row in ROWS:
            if row[1] is None and seed > 0:  # untrained rows are the same on every seed: scored once
                per_row[row[0]].append(per_row[row[0]][0])
                continue
            result = run_row(row, seed, steps, out, dckd, settings)
            if row[1] == "dckd":
                dckd = result["model"]
            per_row[row[0]].append(result)
    rows = {name: summarize_row(results) for name, results in per_row.items()}
    results = {
        "command": command,
        "settings": settings,
        "seeds": seeds,
        "rows": rows,
        "seconds": time.perf_counter() - t0,
    }
    atomic_write_json(out / "results.json", results)
    atomic_write_text(out / "table.md", table(rows) + "\n")
    return results
