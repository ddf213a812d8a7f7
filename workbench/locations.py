"""What the workbench may read and write: run names, and model / data names confined to known folders.

A browser can send any string, so every name that reaches the disk goes through here first: run names are
plain names (never paths), and a path is resolved and must lie inside the runs folder, the ADPA home or an
extra model folder given at launch. Short names (`toy:`, `real:`, `smol:base`) and hub ids (owner/name) pass
through unchanged.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from adpa_core.paths import MODEL_ALIASES, world_of

RUN_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")
HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]*/[\w.-]+")


class WorkbenchError(ValueError):
    """A request the workbench refuses, with a message that says what to change."""


def one_line(exc: BaseException) -> str:
    """An error's message on one line (library messages may span several)."""
    return " ".join(str(exc).split())


def positive(value: Any, label: str) -> float:
    """`value` as a positive number; a WorkbenchError naming the field when it is empty or not > 0."""
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise WorkbenchError(f"{label} is empty or not a number: give a positive number") from None
    if not (math.isfinite(number) and number > 0):
        raise WorkbenchError(f"{label}={value}: give a positive number")
    return number


def check_run_name(name: str | None) -> str:
    """The stripped run name; letters, digits, '-', '_' and '.' only, so it can never be a path."""
    name = (name or "").strip()
    if not name:
        raise WorkbenchError("give the run a name (letters, digits, '-', '_' and '.')")
    if not RUN_NAME.fullmatch(name) or name.strip(".") == "" or len(name) > 100:
        raise WorkbenchError(
            f"run name {name!r} is not valid: use letters, digits, '-', '_' and '.' (at most 100 "
            "characters, starting with a letter or digit); a run name is never a path"
        )
    return name


@dataclass(frozen=True)
class Locations:
    """The folders the workbench serves: runs are written under `runs_dir`; models and data may also be
    read from `home` (the ADPA home, holding the toy world) and `model_dirs`."""

    home: Path
    runs_dir: Path
    model_dirs: tuple[Path, ...] = ()

    @classmethod
    def create(cls, home: str | Path, runs_dir: str | Path, model_dirs: tuple[str | Path, ...] = ()):
        resolve = lambda p: Path(p).expanduser().resolve()
        return cls(resolve(home), resolve(runs_dir), tuple(resolve(p) for p in model_dirs))

    @property
    def roots(self) -> tuple[Path, ...]:
        return (self.runs_dir, self.home, *self.model_dirs)

    def run_dir(self, name: str | None) -> Path:
        """`runs_dir / name` for a valid run name."""
        return self.runs_dir / check_run_name(name)

    def confine(self, text: str, what: str = "path") -> Path:
        """The resolved path of `text` (relative to the working folder) if it lies inside an allowed root."""
        raw = Path(text).expanduser()
        if ".." in raw.parts:
            raise WorkbenchError(f"{what} {text!r}: '..' is not allowed; give a path inside {self._roots()}")
        path = (raw if raw.is_absolute() else Path.cwd() / raw).resolve()
        if not any(path.is_relative_to(root) for root in self.roots):
            raise WorkbenchError(
                f"{what} {text!r} is outside the folders the workbench may read ({self._roots()}); "
                "start `adpa workbench --model-dir DIR` to allow another folder"
            )
        return path

    def source(self, text: str | None, what: str = "model") -> str:
        """A model or data name to load: `toy:<name>`, a run name, a hub id, or a confined local path."""
        text = (text or "").strip()
        if not text:
            raise WorkbenchError(f"the {what} is empty: give a toy: name, a run name, a hub id or a path")
        if world_of(text) is not None or text in MODEL_ALIASES:
            return text
        if RUN_NAME.fullmatch(text) and (self.runs_dir / text).is_dir():
            return str(self.runs_dir / text)
        if HUB_ID.fullmatch(text) and ".." not in text and not Path(text).exists():
            return text
        if "/" not in text and "\\" not in text and not Path(text).exists():
            return text  # a bare hub id such as "gpt2" (loading says so clearly when it is not one)
        return str(self.confine(text, what))

    def _roots(self) -> str:
        return ", ".join(str(r) for r in self.roots)
