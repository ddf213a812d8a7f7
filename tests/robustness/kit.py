"""Shared checks of the bad-input suite: one clear error of the documented class, and nothing written."""

from __future__ import annotations

import re
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest


def snapshot(folder: Path) -> dict[str, tuple[int, int] | None]:
    """Every file (size, mtime) and folder (None) under `folder`, by relative path."""
    out: dict[str, tuple[int, int] | None] = {}
    for p in sorted(folder.rglob("*")):
        stat = p.stat()
        out[str(p.relative_to(folder))] = None if p.is_dir() else (stat.st_size, stat.st_mtime_ns)
    return out


@contextmanager
def clear_error(cls: type[BaseException], pattern: str, untouched: Path | None = None) -> Iterator[None]:
    """The block must raise exactly `cls` with a one-line message matching `pattern` (re.search), and
    leave `untouched` (a folder) as it was: no new, changed or half-written files."""
    before = snapshot(untouched) if untouched is not None else None
    with pytest.raises(Exception) as info:
        yield
    exc = info.value
    assert type(exc) is cls, f"expected {cls.__name__}, got {type(exc).__name__}: {exc}"
    message = str(exc)
    assert "\n" not in message, f"the message is not one line: {message!r}"
    assert re.search(pattern, message), f"{pattern!r} not found in {message!r}"
    if untouched is not None:
        assert snapshot(untouched) == before, f"{untouched} changed"
