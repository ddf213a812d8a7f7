"""Checkpoint selection as the paper does it: the mean reward of greedy replies on a validation split.

Every saved checkpoint (`checkpoints/step-N/`; `train.keep_checkpoints` limits how many exist) is loaded
into the run's initial student (rebuilt from config.yaml with the run's seed, so a LoRA adapter has the same
structure) and evaluated; `final/` is evaluated too unless it is the last checkpoint's weights. The result
goes to `checkpoint_selection.json` with the best one (`"best": "step-N"`; ties go to the earliest).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from .checkpoint import load_trainable_state
from .evaluate import eval_inputs, load_eval_prompts, score_generations, summary
from .rewards import load_reward
from .run_models import (
    check_sizes,
    generate_rows,
    initial_student,
    load_run_model,
    require_run,
    slug,
    write_cache,
)
from .runs import CheckpointError, RunDir, atomic_write_json, verify_checkpoint
from .stats import EvalError

SELECTION_FILE = "checkpoint_selection.json"


def _step(name: str) -> int:
    return int(name.split("-", 1)[1])


def _pruned_note(run: RunDir, cfg: Any) -> str | None:
    t = cfg.train
    expected = t.max_steps // t.save_every + (t.max_steps % t.save_every > 0) if t.save_every else 1
    kept = len(run.checkpoint_dirs())
    if kept >= expected:
        return None
    return (
        f"{kept} of the {expected} checkpoints are on disk (train.keep_checkpoints={t.keep_checkpoints}); "
        "raise keep_checkpoints to select among all of them"
    )


def select_checkpoint(
    run_dir: str | Path,
    data: str | None = None,
    split: str = "validation",
    reward: Any = None,
    *,
    max_new_tokens: int = 128,
    batch_size: int = 16,
    limit: int | None = None,
    greedy: bool = True,
    include_initial: bool = False,
    n_boot: int = 2000,
    alpha: float = 0.05,
    seed: int = 0,
    device: str | None = None,
    progress: bool = False,
) -> dict[str, Any]:
    """Evaluates every checkpoint of a run (and final/, and with `include_initial` the initial student) on
    `split`, writes checkpoint_selection.json and returns it; `best` names the highest mean reward.

    Each candidate's replies go to generations/select_<split>_<name>.jsonl. A corrupted checkpoint is
    recorded with its error and skipped.
    """
    check_sizes(max_new_tokens, batch_size)
    run, cfg = require_run(run_dir)
    data, reward = eval_inputs(cfg, data, reward)
    reward = load_reward(reward, batch_size=batch_size, device=device)
    rows = load_eval_prompts(data, split, limit)
    gen = dict(
        max_new_tokens=max_new_tokens, batch_size=batch_size, greedy=greedy, seed=seed, progress=progress
    )
    stats = dict(n_boot=n_boot, alpha=alpha, seed=seed)

    def evaluate(name: str, step: int | None, model: Any, tokenizer: Any) -> dict[str, Any]:
        gens = generate_rows(model, tokenizer, rows, **gen)
        report = score_generations(rows, gens, reward, **stats)
        path = run.generations_dir / f"select_{slug(split)}_{name}.jsonl"
        extras = [{"reward": r["reward"], "weights": name} for r in report["records"]]
        write_cache(path, rows, gens, extras)
        return {"name": name, "step": step, **summary(report), "generations": str(path.relative_to(run.path))}

    model, tokenizer = initial_student(run, cfg, device)
    entries = [evaluate("initial", 0, model, tokenizer)] if include_initial else []
    for ckpt in run.checkpoint_dirs():
        try:
            verify_checkpoint(ckpt)
            load_trainable_state(model, ckpt / "trainable.safetensors")
        except CheckpointError as exc:
            entries.append({"name": ckpt.name, "step": _step(ckpt.name), "error": str(exc)})
            continue
        entries.append(evaluate(ckpt.name, _step(ckpt.name), model, tokenizer))

    status = run.read_status()
    final_step = status.get("step") if status.get("state") == "completed" else None
    evaluated = {e["name"] for e in entries if "error" not in e}
    final: str | None = None
    if f"step-{final_step}" in evaluated:
        final = f"step-{final_step}"  # training saves a checkpoint at its last step: the same weights
    elif run.final_dir.is_dir():
        final = "final"
        entries.append(evaluate("final", final_step, *load_run_model(run.path, "final", device)))
    scored = [e for e in entries if "error" not in e]
    if not scored:
        raise EvalError(
            f"run {run.path} has no checkpoint or final/ weights to select from "
            "(set train.save_every to keep intermediate checkpoints)"
        )
    best = max(scored, key=lambda e: e["mean_reward"])  # max keeps the first (earliest) of equal ones
    out: dict[str, Any] = {
        "run": run.path.name,
        "data": str(data),
        "split": split,
        "reward": getattr(reward, "name", type(reward).__name__),
        "settings": {**gen, "limit": limit, "n_boot": n_boot, "alpha": alpha},
        "checkpoints": entries,
        "best": best["name"],
        "best_step": best["step"],
        "best_mean_reward": best["mean_reward"],
        "final": final,
        "note": _pruned_note(run, cfg),
        "created_at": time.time(),
    }
    out["settings"].pop("progress")
    atomic_write_json(run.path / SELECTION_FILE, out)
    return out
