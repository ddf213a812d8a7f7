"""The models of runs and their cached generations, for evaluation and checkpoint selection.

A run is evaluated from `final/`, from the initial student ("initial"), or from a checkpoint ("step-N":
the initial student, rebuilt from config.yaml with the run's seed so that a LoRA adapter has the same
structure, plus the checkpoint's trainable weights). Generations are cached as JSONL keyed by id, each
record carrying the settings that produced it (max_new_tokens, greedy, weights); a cache older than the
weights, or with another prompt or setting for any id, is not used.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import torch

from .checkpoint import load_trainable_state
from .config import RunConfig, load_config
from .data import DataError
from .generate import Generation, decoding_settings, generate, read_generations_jsonl, write_generations_jsonl
from .models import ModelLoadError, load_inference_model, load_run_tokenizer, load_student
from .paths import resolve_model_path
from .runs import RunDir
from .stats import EvalError

Row = dict[str, Any]


def check_sizes(max_new_tokens: int, batch_size: int) -> None:
    if max_new_tokens < 1 or batch_size < 1:
        raise EvalError(f"max_new_tokens={max_new_tokens} and batch_size={batch_size} must be >= 1")


def generate_rows(
    model: Any,
    tokenizer: Any,
    rows: list[Row],
    *,
    max_new_tokens: int,
    batch_size: int,
    greedy: bool = True,
    seed: int = 0,
    progress: bool = False,
) -> list[Generation]:
    """Replies to the prompts of `rows` ({"id", "prompt"}); `seed` only matters when sampling."""
    check_sizes(max_new_tokens, batch_size)
    return generate(
        model,
        tokenizer,
        [r["prompt"] for r in rows],
        max_new_tokens=max_new_tokens,
        batch_size=batch_size,
        greedy=greedy,
        seed=None if greedy else seed,
        progress=progress,
    )


def require_run(run_dir: str | Path) -> tuple[RunDir, RunConfig]:
    """The run directory and its config; an EvalError when `run_dir` is not a run directory."""
    run = RunDir(run_dir)
    if not run.exists():
        raise EvalError(f"{run_dir} is not a run directory (no config.yaml)")
    return run, load_config(run.config_path)


def initial_student(run: RunDir, cfg: RunConfig, device: str | None = None) -> tuple[Any, Any]:
    """(student, tokenizer) as the run started: same model, LoRA setting and seed, so checkpoint weights
    fit it. The caller's random state is left unchanged."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.train.seed)
        model = load_student(cfg.model, device)
    tokenizer = load_run_tokenizer(cfg.model)
    return model.eval(), tokenizer


def load_run_model(run_dir: str | Path, checkpoint: str | None = None, device: str | None = None) -> Any:
    """(model, tokenizer) of a run: `final/` (checkpoint None or "final"), "initial", or "step-N"."""
    run, cfg = require_run(run_dir)
    if checkpoint in (None, "final"):
        if not run.final_dir.is_dir():
            state = run.read_status().get("state")
            raise EvalError(f"run {run.path} has no final/ weights (state: {state}); evaluate a checkpoint")
        return load_inference_model(str(run.path), device)
    model, tokenizer = initial_student(run, cfg, device)
    if checkpoint != "initial":
        path = run.checkpoints_dir / str(checkpoint)
        if not (path / "trainable.safetensors").is_file():
            raise EvalError(f"run {run.path} has no checkpoint {checkpoint} (looked for {path})")
        load_trainable_state(model, path / "trainable.safetensors")
    return model, tokenizer


def resolve_name(name: str) -> str:
    """`toy:` names to folders; a path that looks local but does not exist is a ModelLoadError.

    Hub ids pass through (they fail fast when offline).
    """
    try:
        path = resolve_model_path(name)
    except ValueError as exc:  # an unknown toy: name
        raise EvalError(str(exc)) from exc
    if not Path(path).expanduser().exists() and (path.startswith(("/", ".", "~")) or path.count("/") > 1):
        raise ModelLoadError(f"{path} does not exist (give a run directory, a model folder or a hub id)")
    return path


def _mtime(path: Path) -> float | None:
    files = [path] if path.is_file() else [p for p in path.rglob("*") if p.is_file()] if path.is_dir() else []
    return max((p.stat().st_mtime for p in files), default=None)


class ModelSource:
    """Something to generate with: a run directory (final/ or a checkpoint) or any model name."""

    def __init__(self, name: str | Path, checkpoint: str | None = None):
        self.name = str(name)
        run = RunDir(name)
        self.run = run if run.exists() else None
        self.checkpoint = checkpoint or "final"
        if self.run is None:
            if checkpoint is not None:
                raise EvalError(f"{name} is not a run directory, so it has no checkpoint {checkpoint}")
            resolve_name(self.name)

    @property
    def label(self) -> str:
        return self.run.path.name if self.run is not None else self.name

    @property
    def weights(self) -> str:
        return self.checkpoint if self.run is not None else self.name

    def weights_mtime(self) -> float | None:
        if self.run is None:
            local = Path(resolve_model_path(self.name)).expanduser()
            return _mtime(local) if local.exists() else None
        if self.checkpoint == "final":
            return _mtime(self.run.final_dir)
        return _mtime(self.run.checkpoints_dir / self.checkpoint) if self.checkpoint != "initial" else None

    def load(self, device: str | None) -> tuple[Any, Any]:
        if self.run is not None:
            return load_run_model(self.run.path, self.checkpoint, device)
        return load_inference_model(self.name, device)


def read_cache(path: Path, rows: list[Row], settings: dict[str, Any], newer_than: float | None) -> Any:
    """The cached generations of `rows` when every id is there with the same prompt and settings."""
    if not path.is_file() or (newer_than is not None and path.stat().st_mtime < newer_than):
        return None
    try:
        records = read_generations_jsonl(path)
    except DataError:
        return None
    gens = []
    for row in rows:
        rec = records.get(row["id"])
        if rec is None or rec.get("prompt") != row["prompt"] or "token_ids" not in rec:
            return None
        if any(rec.get(k) != v for k, v in settings.items()):
            return None
        gens.append(Generation(rec["response"], list(rec["token_ids"]), bool(rec.get("stopped"))))
    return gens


def write_cache(path: Path, rows: list[Row], gens: list[Generation], extra: list[dict[str, Any]]) -> None:
    ids, prompts = [r["id"] for r in rows], [r["prompt"] for r in rows]
    write_generations_jsonl(path, ids, prompts, gens, extra)


def generation_settings(src: ModelSource, opts: dict[str, Any]) -> dict[str, Any]:
    """What a cached generation must match: length budget, decoding (and seed when sampling), weights.

    `decoding` is the exact decoding config (`generate.decoding_settings`): a cache written before it was
    recorded, or with other settings, is not reused."""
    settings = {
        "max_new_tokens": opts["max_new_tokens"],
        "greedy": opts["greedy"],
        "decoding": decoding_settings(opts["greedy"], max_new_tokens=opts["max_new_tokens"]),
        "weights": src.weights,
    }
    if not opts["greedy"]:
        settings["seed"] = opts["seed"]
    return settings


def cache_files(src: ModelSource, split: str, fallback_dir: Path) -> list[Path]:
    """Where `src`'s generations on `split` may be cached, the file it writes as a baseline last.

    A run directory: its own eval_<split>.jsonl (written by its evaluation), then
    as_baseline_<split>.jsonl (written when it serves as a baseline, so its own file is never replaced).
    Any other model: baseline_<model>_<split>.jsonl in `fallback_dir` (the evaluated run's generations/).
    """
    if src.run is not None:
        folder = src.run.generations_dir
        return [folder / f"eval_{slug(split)}.jsonl", folder / f"as_baseline_{slug(split)}.jsonl"]
    return [fallback_dir / f"baseline_{slug(src.name)}_{slug(split)}.jsonl"]


def cached_generations(
    src: ModelSource, rows: list[Row], caches: list[Path], opts: dict[str, Any]
) -> tuple[list[Generation], dict[str, Any], Path | None]:
    """(generations, settings, the cache file they came from): from the first valid file of `caches` when
    reuse is on, else freshly generated (None).

    `opts`: max_new_tokens, batch_size, greedy, seed, device, reuse_generations, progress.
    """
    settings = generation_settings(src, opts)
    if opts["reuse_generations"]:
        newer_than = src.weights_mtime()
        for cache in caches:
            gens = read_cache(cache, rows, settings, newer_than)
            if gens is not None:
                return gens, settings, cache
    model, tokenizer = src.load(opts["device"])
    keys = ("max_new_tokens", "batch_size", "greedy", "seed", "progress")
    return generate_rows(model, tokenizer, rows, **{k: opts[k] for k in keys}), settings, None


def slug(text: str) -> str:
    """A file-name-safe form of a split or model name."""
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", text).strip("_") or "model"
