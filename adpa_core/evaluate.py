"""Evaluation of runs: greedy responses to held-out prompts, scored by a reward, compared with a baseline.

    evaluate_model   generate (batched, greedy, stop at end-of-turn) + score -> report with a bootstrap CI
    evaluate_run     a run's final/ (or one checkpoint) on a split; optional baseline with win/tie/loss;
                     writes eval.json, generations/eval_<split>.jsonl, generations/alpaca_eval_<split>.json

Rewards: rewards.py; statistics: stats.py; loading a run's final/ or checkpoint weights and caching
generations: run_models.py; the paper's checkpoint selection: selection.py.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np

from .config import RunConfig
from .data import load_prompts
from .generate import Generation, decoding_settings
from .models import load_inference_model
from .paths import world_of
from .rewards import Reward, RewardModel, load_reward, prompt_text, python_reward, reward_model, toy_reward
from .run_models import (
    ModelSource,
    cache_files,
    cached_generations,
    check_sizes,
    generate_rows,
    load_run_model,
    require_run,
    slug,
    write_cache,
)
from .runs import atomic_write_json
from .stats import EvalError, bootstrap_ci, mean_with_ci, win_tie_loss

__all__ = [
    "EvalError",
    "Reward",
    "RewardModel",
    "bootstrap_ci",
    "eval_inputs",
    "evaluate_model",
    "evaluate_run",
    "load_eval_prompts",
    "load_reward",
    "load_run_model",
    "mean_with_ci",
    "python_reward",
    "reward_model",
    "score_generations",
    "toy_reward",
    "win_tie_loss",
]

Row = dict[str, Any]


# ---------------------------------------------------------------- scoring one model


def score_generations(
    rows: list[Row],
    generations: list[Generation],
    reward: Any,
    *,
    n_boot: int = 2000,
    alpha: float = 0.05,
    seed: int = 0,
) -> dict[str, Any]:
    """The report of `generations` (one per row of `rows`, {"id", "prompt"}) under `reward`."""
    if not rows:
        raise EvalError("no prompts to evaluate")
    if len(rows) != len(generations):
        raise EvalError(f"{len(rows)} prompts but {len(generations)} generations")
    prompts = [r["prompt"] for r in rows]
    texts, stopped = [g.text for g in generations], [g.stopped for g in generations]
    rewards = [float(x) for x in reward(prompts, texts, stopped)]
    if len(rewards) != len(rows) or not all(np.isfinite(rewards)):
        raise EvalError(f"the reward returned {len(rewards)} values for {len(rows)} responses (or NaN)")
    mean_ci = mean_with_ci(rewards, n_boot, alpha, seed)
    lengths = [len(g.token_ids) - int(g.stopped) for g in generations]  # the stop token is not counted
    report: dict[str, Any] = {
        "n": len(rows),
        "mean_reward": mean_ci["mean"],
        "reward_ci": mean_ci["ci"],
        "reward_std": mean_ci["std"],
        "mean_length": float(np.mean(lengths)),
        "never_stopped": float(np.mean([not s for s in stopped])),
        "records": [
            {
                "id": r["id"],
                "prompt": r["prompt"],
                "response": g.text,
                "reward": x,
                "stopped": g.stopped,
                "length": n,
            }
            for r, g, x, n in zip(rows, generations, rewards, lengths, strict=True)
        ],
    }
    sections = getattr(reward, "report_sections", None)
    if sections is not None:
        report.update(sections(prompts, texts, stopped))
    return report


def evaluate_model(
    model_or_path: Any,
    tokenizer: Any,
    prompts: list[Row],
    reward: Any,
    *,
    max_new_tokens: int = 128,
    batch_size: int = 16,
    greedy: bool = True,
    n_boot: int = 2000,
    alpha: float = 0.05,
    seed: int = 0,
    device: str | None = None,
    progress: bool = False,
) -> dict[str, Any]:
    """Generates replies to `prompts` ({"id", "prompt"}) and scores them: n, mean_reward, reward_ci,
    reward_std, mean_length (tokens), never_stopped (share), records, plus the reward's own sections.

    `model_or_path`: a model, or anything `load_inference_model` takes (then `tokenizer` may be None).
    `reward`: a reward callable or a spec for `load_reward`.
    """
    check_sizes(max_new_tokens, batch_size)
    reward = load_reward(reward, batch_size=batch_size, device=device)
    model = model_or_path
    if isinstance(model_or_path, str | Path):
        model, own = load_inference_model(str(model_or_path), device)
        tokenizer = tokenizer if tokenizer is not None else own
    gens = generate_rows(
        model,
        tokenizer,
        prompts,
        max_new_tokens=max_new_tokens,
        batch_size=batch_size,
        greedy=greedy,
        seed=seed,
        progress=progress,
    )
    return score_generations(prompts, gens, reward, n_boot=n_boot, alpha=alpha, seed=seed)


# ---------------------------------------------------------------- evaluate_run


def eval_inputs(cfg: RunConfig, data: str | None, reward: Any) -> tuple[str, Any]:
    """(data, reward) with a world's defaults for runs on a built world: toy:prompts and the toy reward
    (`toy`), or real:prompts and the real world's judge (`real`)."""
    if data is not None and reward is not None:
        return data, reward
    world = world_of(cfg.model.student) or world_of(cfg.data.train)
    if world is not None:
        return data or f"{world}:prompts", reward if reward is not None else world
    missing = " and ".join(n for n, v in (("--reward", reward), ("--data", data)) if v is None)
    raise EvalError(
        f"run {cfg.name} does not use a built world, so there is no default reward or data: give {missing} "
        "(--reward: a reward model path or hub id, `toy`, `real`, or py:MODULE:FUNCTION; --data: a prompt, "
        "preference or SFT file, or a hub id)"
    )


def check_prompts(reward: Any, rows: list[Row]) -> None:
    """Raises EvalError when `reward` cannot score the prompts of `rows` (e.g. the toy reward on real
    prompts)."""
    check = getattr(reward, "check_prompts", None)
    if check is not None:
        check([r["prompt"] for r in rows])


def load_eval_prompts(data: str, split: str, limit: int | None = None) -> list[Row]:
    """{"id", "prompt"} rows of a prompt, preference or SFT source (the first `limit` of them)."""
    if limit is not None and limit < 1:
        raise EvalError(f"limit={limit} must be >= 1")
    rows = load_prompts(data, split=split, max_examples=limit)
    if not rows:
        raise EvalError(f"{data} (split {split}) holds no prompts")
    return rows


def summary(report: dict[str, Any]) -> dict[str, Any]:
    """A report without its per-example records."""
    return {k: v for k, v in report.items() if k != "records"}


def _record_extras(report: dict[str, Any], settings: dict[str, Any]) -> list[dict[str, Any]]:
    return [{"reward": r["reward"], **settings} for r in report["records"]]


def _alpaca_export(path: Path, report: dict[str, Any], generator: str) -> None:
    """AlpacaEval's model-outputs file: [{"instruction", "output", "generator"}]."""
    items = [
        {"instruction": prompt_text(r["prompt"]), "output": r["response"], "generator": generator}
        for r in report["records"]
    ]
    atomic_write_json(path, items)


def _baseline_section(
    base: ModelSource,
    run_generations: Path,
    split: str,
    rows: list[Row],
    reward: Any,
    opts: dict[str, Any],
    stats: dict[str, Any],
) -> tuple[dict[str, Any], dict[str, Any]]:
    """(eval.json's "baseline" section, the baseline's full report) on the same prompts.

    Its generations are cached in the baseline run's generations/ (a run directory) or, for any other
    model, in the evaluated run's (see `cache_files`).
    """
    caches = cache_files(base, split, run_generations)
    gens, settings, cached = cached_generations(base, rows, caches, opts)
    report = score_generations(rows, gens, reward, **stats)
    if cached is None:
        cached = caches[-1]
        write_cache(cached, rows, gens, _record_extras(report, settings))
    section = {"name": base.label, "model": base.name, "generations": str(cached), **summary(report)}
    return section, report


def evaluate_run(
    run_dir: str | Path,
    data: str | None = None,
    split: str = "test",
    reward: Any = None,
    baseline: str | Path | None = None,
    *,
    checkpoint: str | None = None,
    max_new_tokens: int = 128,
    batch_size: int = 16,
    limit: int | None = None,
    greedy: bool = True,
    tie_margin: float = 0.0,
    n_boot: int = 2000,
    alpha: float = 0.05,
    seed: int = 0,
    device: str | None = None,
    reuse_generations: bool = True,
    progress: bool = False,
) -> dict[str, Any]:
    """Evaluates a run's final/ (or `checkpoint`: "step-N" / "initial") on `split` of `data`; writes and
    returns eval.json.

    `reward`: a reward callable or spec (`toy`, a reward model path, `py:MODULE:FUNCTION`); `data` and
    `reward` default to the toy world's for toy runs. With `baseline` (a run directory or any model name,
    e.g. `toy:student`), the baseline answers the same prompts and win/tie/loss rates are added. Also
    writes generations/eval_<split>.jsonl (with rewards) and generations/alpaca_eval_<split>.json.
    """
    check_sizes(max_new_tokens, batch_size)
    run, cfg = require_run(run_dir)
    data, reward = eval_inputs(cfg, data, reward)
    reward = load_reward(reward, batch_size=batch_size, device=device)
    rows = load_eval_prompts(data, split, limit)
    check_prompts(reward, rows)  # before the (slow) generation
    opts = dict(
        max_new_tokens=max_new_tokens,
        batch_size=batch_size,
        greedy=greedy,
        seed=seed,
        device=device,
        reuse_generations=reuse_generations,
        progress=progress,
    )
    stats = dict(n_boot=n_boot, alpha=alpha, seed=seed)
    src = ModelSource(run.path, checkpoint)
    base = ModelSource(baseline) if baseline is not None else None  # a bad name fails before generating
    caches = cache_files(src, split, run.generations_dir)
    gen_path = caches[0]
    gens, settings, _ = cached_generations(src, rows, caches, opts)
    report = score_generations(rows, gens, reward, **stats)
    write_cache(gen_path, rows, gens, _record_extras(report, settings))
    alpaca_path = run.generations_dir / f"alpaca_eval_{slug(split)}.json"
    _alpaca_export(alpaca_path, report, run.path.name)
    out: dict[str, Any] = {
        "run": run.path.name,
        "checkpoint": src.checkpoint,
        "data": str(data),
        "split": split,
        "reward": getattr(reward, "name", type(reward).__name__),
        "settings": {
            "max_new_tokens": max_new_tokens,
            "batch_size": batch_size,
            "greedy": greedy,
            "decoding": decoding_settings(greedy, max_new_tokens=max_new_tokens),
            "limit": limit,
            "seed": seed,
            "n_boot": n_boot,
            "alpha": alpha,
            "tie_margin": tie_margin,
        },
        "generations": str(gen_path.relative_to(run.path)),
        "alpaca_eval": str(alpaca_path.relative_to(run.path)),
        **summary(report),
    }
    if base is not None:
        section, base_report = _baseline_section(base, run.generations_dir, split, rows, reward, opts, stats)
        out["baseline"] = section
        mine = {r["id"]: r["reward"] for r in report["records"]}
        theirs = {r["id"]: r["reward"] for r in base_report["records"]}
        out["win_tie_loss"] = win_tie_loss(mine, theirs, tie_margin, **stats)
    out["created_at"] = time.time()
    atomic_write_json(run.path / "eval.json", out)
    return out
