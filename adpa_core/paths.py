"""Where things live on disk: the ADPA home folder and `toy:` model names."""

from __future__ import annotations

import os
from pathlib import Path

TOY_PREFIX = "toy:"
TOY_MODELS = ("teacher", "teacher_ref", "student")


def adpa_home() -> Path:
    """`$ADPA_HOME`, default `~/.cache/adpa`."""
    return Path(os.environ.get("ADPA_HOME") or "~/.cache/adpa").expanduser()


def toy_dir(home: str | Path | None = None) -> Path:
    """The toy world's folder: `<home>/toy`."""
    return (Path(home).expanduser() if home is not None else adpa_home()) / "toy"


def resolve_model_path(name: str) -> str:
    """Maps `toy:<model>` to its folder under the toy world; other names (hub ids, paths) pass through.

    Raises FileNotFoundError with the command to run when a toy model is not built yet.
    """
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
