"""Where things live on disk: the ADPA home folder, the model cache, and short model names.

Short names work everywhere a model path does (configs, commands, the workbench, notebooks):

- `toy:<model>`: a model of the toy world (`adpa toy build`), under `$ADPA_HOME/toy/<model>`;
- `real:<model>`: a model of the real-model world (`adpa real build`): `real:teacher` is the DPO LoRA adapter
  under `$ADPA_HOME/real/teacher`; `real:teacher_ref` and `real:student` are both that adapter's base,
  SmolLM2-135M-Instruct (the reference teacher is the base with the adapter off; the student is the same
  base, which a run gives a fresh LoRA adapter);
- `smol:base`: SmolLM2-135M-Instruct, fetched by `adpa models get smollm2-135m-instruct` into the model cache.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

TOY_PREFIX = "toy:"
TOY_MODELS = ("teacher", "teacher_ref", "student")
REAL_PREFIX = "real:"
REAL_MODELS = ("teacher", "teacher_ref", "student")
REAL_BASE = "smol:base"  # what real:teacher_ref and real:student are (and real:teacher's base)
WORLD_PREFIXES = (TOY_PREFIX, REAL_PREFIX)
# short name -> (folder name in the model cache, the command that fetches it)
MODEL_ALIASES = {"smol:base": "smollm2-135m-instruct"}


def adpa_home() -> Path:
    """`$ADPA_HOME`, default `~/.cache/adpa`."""
    return Path(os.environ.get("ADPA_HOME") or "~/.cache/adpa").expanduser()


def models_dir() -> Path:
    """The cache of fetched real models: `$ADPA_MODELS`, default `$ADPA_HOME/models`."""
    return Path(os.environ.get("ADPA_MODELS") or adpa_home() / "models").expanduser()


def toy_dir(home: str | Path | None = None) -> Path:
    """The toy world's folder: `<home>/toy`."""
    return (Path(home).expanduser() if home is not None else adpa_home()) / "toy"


def real_dir(home: str | Path | None = None) -> Path:
    """The real-model world's folder: `<home>/real`."""
    return (Path(home).expanduser() if home is not None else adpa_home()) / "real"


def world_of(name: str) -> str | None:
    """`toy` or `real` for a short name of that world (`toy:...`, `real:...`), else None."""
    for prefix in WORLD_PREFIXES:
        if name.startswith(prefix):
            return prefix[:-1]
    return None


def resolve_model_path(name: str) -> str:
    """Maps short names (`toy:<model>`, `real:<model>`, `smol:base`) to their folders; hub ids and paths
    pass through.

    Raises FileNotFoundError with the command to run when the model is not built or fetched yet.
    """
    if name.startswith(REAL_PREFIX):
        return _real_model_path(name)
    if name in MODEL_ALIASES:
        folder = models_dir() / MODEL_ALIASES[name]
        if not (folder / "config.json").exists():
            raise FileNotFoundError(
                f"{name} is not fetched yet (looked in {folder}); run `adpa models get {MODEL_ALIASES[name]}`"
            )
        return str(folder)
    if not name.startswith(TOY_PREFIX):
        return name
    which = name[len(TOY_PREFIX) :]
    if which not in TOY_MODELS:
        raise ValueError(
            f"unknown toy model {name!r}; choose one of {', '.join(TOY_PREFIX + m for m in TOY_MODELS)}"
        )
    path = toy_dir() / which
    if not (path / "config.json").exists():
        raise FileNotFoundError(f"{name} is not built yet (looked in {path}); run `adpa toy build` first")
    return str(path)


def _real_model_path(name: str) -> str:
    which = name[len(REAL_PREFIX) :]
    if which not in REAL_MODELS:
        raise ValueError(
            f"unknown real-world model {name!r}; choose one of "
            + ", ".join(REAL_PREFIX + m for m in REAL_MODELS)
        )
    adapter = real_dir() / "teacher"
    config = adapter / "adapter_config.json"
    if which != "teacher":  # the adapter's base; SmolLM2 until a world is built
        try:
            return json.loads(config.read_text(encoding="utf-8"))["base_model_name_or_path"]
        except (OSError, ValueError, KeyError, TypeError):
            return resolve_model_path(REAL_BASE)
    if not config.exists():
        raise FileNotFoundError(f"{name} is not built yet (looked in {adapter}); run `adpa real build` first")
    return str(adapter)
