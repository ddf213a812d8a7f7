"""`adpa toy build`: data, tokenizer, teacher SFT (the reference teacher), teacher DPO (the aligned teacher)
and student SFT (the student to align), all trained by the project's own `train()`.

Layout under `$ADPA_HOME/toy/` (default `~/.cache/adpa/toy`):

    data/                 the JSONL data files and world.json (same seed -> same bytes)
    tokenizer/            the word-level tokenizer with its chat template
    init/{teacher,student}/   the seeded random initialisations
    teacher_ref/ teacher/ student/   the three models (Hugging Face folders), `toy:<name>` anywhere
    runs/<stage>/         each stage's run directory (config, metrics, final)
    manifest.json         sizes, seeds, versions, timings, held-out evaluation of every model

A stage whose inputs (seed, mode, recipe, generator code, upstream stages) are unchanged and whose weights
still match their recorded hash is skipped.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from transformers import LlamaForCausalLM

from ..config import config_from_dict
from ..paths import toy_dir
from ..runs import atomic_write_json
from ..worlds import (
    Stage,
    code_hash,
    complete_manifest,
    home_env,
    host,
    read_manifest,
    run_stages,
    stage_key,
    threads,
    versions,
)
from .datasets import write_datasets
from .models import BUILD_RECIPE, count_parameters, toy_model_config
from .tokenizer import build_tokenizer, save_tokenizer
from .world import make_world

# stage -> (model folder it produces, initial weights, method, data)
STAGES = {
    "teacher_sft": ("teacher_ref", "init/teacher", "sft", "toy:sft"),
    "teacher_dpo": ("teacher", "teacher_ref", "dpo", "toy:preferences"),
    "student_sft": ("student", "init/student", "sft", "toy:sft"),
}
MAX_LENGTH, MAX_PROMPT_LENGTH = 128, 64
EVAL_NEW_TOKENS = 48


# The code that decides the data, the tokenizer, the model sizes and the recipe: a change in it invalidates
# every built stage (changes elsewhere, e.g. in the checks or the reward, keep the built world).
WORLD_CODE = ("world.py", "datasets.py", "lexicon.py", "tokenizer.py", "models.py")


def world_key(seed: int, quick: bool = False) -> str:
    """Names the data and models a build of (`seed`, mode) makes with this code; it changes with the code
    that decides them, so results measured on an older world are never mistaken for this one's."""
    return stage_key(seed, "quick" if quick else "full", code_hash(Path(__file__).parent, WORLD_CODE))


def one_thread():
    """Models this small run faster on one thread (more only adds synchronisation, and on a busy 2-core
    machine oversubscription made steps 15-30x slower)."""
    return threads(1)


@contextmanager
def toy_home(home: str | Path | None) -> Iterator[Path]:
    """Points `$ADPA_HOME` at `home` for the build (so `toy:` names resolve there); yields the toy folder."""
    with home_env(home):
        yield toy_dir()


def _write_init(toy: Path, tokenizer: Any, seed: int) -> dict[str, int]:
    sizes = {}
    for offset, role in enumerate(("teacher", "student")):
        torch.manual_seed(seed * 1000 + offset)
        config = toy_model_config(role, len(tokenizer))
        model = LlamaForCausalLM(config)
        model.generation_config.pad_token_id = tokenizer.pad_token_id
        model.generation_config.eos_token_id = tokenizer.eos_token_id
        model.save_pretrained(toy / "init" / role)
        save_tokenizer(tokenizer, toy / "init" / role)
        sizes[role] = count_parameters(config)
    return sizes


def _stage_config(toy: Path, stage: str, params: dict[str, Any], seed: int) -> Any:
    _, init, method, data = STAGES[stage]
    steps = int(params["steps"])
    # The recipe was calibrated with one mean over all tokens of a batch.
    objective: dict[str, Any] = {"method": method, "reduction": "token"}
    if method == "dpo":
        objective.update(beta_dpo=float(params["beta"]), w_sft=float(params.get("w_sft", 0.0)))
    return config_from_dict(
        {
            "name": stage,
            "output_dir": str(toy / "runs"),
            "model": {"student": str(toy / init), "device": "cpu", "dtype": "float32"},
            "data": {
                "train": data,
                "format": "sft" if method == "sft" else "preference",
                "max_length": MAX_LENGTH,
                "max_prompt_length": MAX_PROMPT_LENGTH,
            },
            "objective": objective,
            "train": {
                "max_steps": steps,
                "batch_size": int(params["batch"]),
                "learning_rate": float(params["lr"]),
                "warmup_ratio": float(params.get("warmup", 0)) / steps,
                "lr_schedule": "cosine",
                "seed": seed,
                "log_every": 10,
                "keep_checkpoints": 1,
                "chunked_loss": "off",
            },
        }
    )


def _stages(toy: Path, mode: str, data_key: str, seed: int) -> list[Stage]:
    """The recipe's stages in order; teacher DPO's key includes teacher SFT's (it starts from it)."""
    stages, upstream = [], {"teacher_sft": data_key, "student_sft": data_key}
    for stage, params in BUILD_RECIPE[mode].items():
        key = stage_key(upstream.get(stage, data_key), stage, params, seed)
        config = lambda stage=stage, params=params: _stage_config(toy, stage, params, seed)
        stages.append(Stage(stage, key, toy / STAGES[stage][0], config))
        if stage == "teacher_sft":
            upstream["teacher_dpo"] = key
    return stages


def build(
    home: str | Path | None = None,
    seed: int = 0,
    quick: bool = False,
    progress: bool = True,
    force: bool = False,
) -> dict[str, Any]:
    """Builds (or completes) the toy world; returns the manifest. See the module docstring."""
    from .checks import evaluate_world

    mode = "quick" if quick else "full"
    with toy_home(home) as toy, one_thread():
        toy.mkdir(parents=True, exist_ok=True)
        manifest_path = toy / "manifest.json"
        old = read_manifest(manifest_path, force)
        stages_old = old.get("stages", {}) if old.get("seed") == seed and old.get("mode") == mode else {}
        t0, load = time.perf_counter(), os.getloadavg()
        world = make_world(seed)
        data_key = world_key(seed, quick)
        if old.get("data_key") != data_key or not (toy / "data" / "world.json").exists():
            write_datasets(world, toy / "data", seed, quick=quick)
            stages_old = {}
        tokenizer = build_tokenizer(world)
        save_tokenizer(tokenizer, toy / "tokenizer")
        sizes = _write_init(toy, tokenizer, seed)
        manifest: dict[str, Any] = {
            "seed": seed,
            "mode": mode,
            "data_key": data_key,
            "vocab_size": len(tokenizer),
            "parameters": sizes,
            "teacher_student_ratio": sizes["teacher"] / sizes["student"],
            "versions": versions(),
            "recipe": BUILD_RECIPE[mode],
        }
        manifest["stages"], _ = run_stages(_stages(toy, mode, data_key, seed), stages_old, progress)
        manifest["build_seconds"] = time.perf_counter() - t0
        manifest["host"] = host(load)  # the load average when the build started
        manifest["evaluation"] = old.get("evaluation") if stages_old == manifest["stages"] else None
        if manifest["evaluation"] is None:
            manifest["evaluation"] = evaluate_world(toy, world, progress=progress)
        atomic_write_json(manifest_path, manifest)
        return manifest


def ensure_world(
    home: str | Path | None = None, quick: bool = True, seed: int = 0, progress: bool = True
) -> dict[str, Any]:
    """The toy world's manifest, building it first when it is missing or incomplete. An existing world is
    kept as it is (its own seed and mode), so a notebook or the workbench never downgrades a full build."""
    with toy_home(home) as toy:
        manifest_path = toy / "manifest.json"
        weights = {stage: toy / target / "model.safetensors" for stage, (target, *_r) in STAGES.items()}
        manifest = complete_manifest(manifest_path, weights)
        if manifest is not None:
            return manifest
        old = read_manifest(manifest_path)
        seed = old.get("seed", seed)
        quick = old.get("mode", "quick" if quick else "full") == "quick"
    return build(home, seed=seed, quick=quick, progress=progress)
