"""Where things live on disk: the ADPA home folder, the model cache, and short model names.

Short names work everywhere a model path does (configs, commands, the workbench, notebooks):

- `toy:<model>`: a model of the toy world (`adpa toy build`), under `$ADPA_HOME/toy/<model>`;
- `smol:base`: SmolLM2-135M-Instruct, fetched by `adpa models get smollm2-135m-instruct` into the model cache.
"""

from __future__ import annotations

import os
from pathlib import Path

TOY_PREFIX = "toy:"
TOY_MODELS = ("teacher", "teacher_ref", "student")
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


def resolve_model_path(name: str) -> str:
    """Maps short names (`toy:<model>`, `smol:base`) to their folders; hub ids and paths pass through.

    Raises FileNotFoundError with the command to run when the model is not built or fetched yet.
    """
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
