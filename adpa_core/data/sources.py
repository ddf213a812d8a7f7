"""Reading raw rows from a data source: a local file, a hub id, `toy:<name>` / `real:<name>` (the data of
a built world) or rows in memory.

Nothing here knows the layouts; `rows.py` validates and normalizes. Each raw row comes with a location
label (`data.jsonl row 2 (line 3)`) that every later error message starts with.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import datasets

from adpa_core.config import DATA_FILE_SUFFIXES as FILE_SUFFIXES
from adpa_core.paths import adpa_home, world_of


class DataError(ValueError):
    """Invalid data: the message names the source, the row (and id when known) and the field, in one line.

    `reason` is a short, row-independent description (used to count skipped rows by reason).
    """

    def __init__(self, message: str, reason: str | None = None) -> None:
        super().__init__(message)
        self.reason = reason or message


def _rows_from_dataset(ds: Any, origin: str) -> list[tuple[str, Any]]:
    return [(f"{origin} row {i}", row) for i, row in enumerate(ds.to_list())]


def read_rows(source: Any, split: str = "train") -> tuple[list[tuple[str, Any]], str]:
    """Returns `([(location, raw_row), ...], origin)` for any supported source."""
    if isinstance(source, datasets.DatasetDict):
        if split not in source:
            raise DataError(f"<DatasetDict>: no split {split!r}; splits: {', '.join(source)}")
        source = source[split]
    if isinstance(source, datasets.Dataset):
        return _rows_from_dataset(source, "<Dataset>"), "<Dataset>"
    if isinstance(source, list | tuple):
        return [(f"<rows> row {i}", row) for i, row in enumerate(source)], "<rows>"
    if not isinstance(source, str | os.PathLike):
        raise DataError(
            f"unsupported data source of type {type(source).__name__}; give a file path, a hub id, "
            "toy:<name>, real:<name>, a datasets.Dataset or a list of dicts"
        )
    name = os.fspath(source)
    if world_of(name) is not None:
        return read_file(world_data_path(name, split)), name
    path = Path(name).expanduser()
    if path.is_file() or path.suffix.lower() in FILE_SUFFIXES:
        return read_file(path), str(path)
    return _read_hub(name, split), name


def world_data_path(name: str, split: str) -> Path:
    """`toy:<name>` / `real:<name>` -> `$ADPA_HOME/<world>/data/<name>_<split>.jsonl`; an error says how to
    build it, or which splits there are."""
    world = world_of(name)
    which = name[len(world) + 1 :]
    folder = adpa_home() / world / "data"
    path = folder / f"{which}_{split}.jsonl"
    if not path.is_file():
        splits = sorted(p.stem[len(which) + 1 :] for p in folder.glob(f"{which}_*.jsonl"))
        if splits:
            raise DataError(f"{world} data {name!r} has no split {split!r}; splits: {', '.join(splits)}")
        raise DataError(
            f"{world} data {name!r} (split {split!r}) is not built yet (looked for {path}); "
            f"run `adpa {world} build` first"
        )
    return path


def read_file(path: str | Path) -> list[tuple[str, Any]]:
    """Reads .json (a list of rows or {"data": [...]}; JSON lines accepted too), .jsonl or .parquet."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in FILE_SUFFIXES:
        raise DataError(
            f"{path}: unsupported file type {suffix or '(none)'!r}; use .json, .jsonl or .parquet"
        )
    if path.is_dir():
        raise DataError(f"{path}: is a folder, not a data file; give the .json/.jsonl/.parquet file in it")
    if not path.is_file():
        raise DataError(f"{path}: file not found")
    if suffix == ".parquet":
        return _read_parquet(path)
    text = read_text(path)
    if not text.strip():
        raise DataError(f"{path}: the file is empty")
    if suffix == ".jsonl":
        return read_jsonl_text(text, str(path))
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        if exc.msg == "Extra data" and text.lstrip().startswith("{"):
            return read_jsonl_text(text, str(path))  # a .json file that actually holds JSON lines
        raise DataError(f"{path} line {exc.lineno}: broken JSON ({exc.msg}, column {exc.colno})") from None
    except (ValueError, RecursionError) as exc:
        raise DataError(f"{path}: broken JSON ({_json_problem(exc)})") from None
    if isinstance(data, dict) and isinstance(data.get("data"), list):
        data = data["data"]
    if not isinstance(data, list):
        kind = f"an object with keys {sorted(data)[:5]}" if isinstance(data, dict) else type(data).__name__
        raise DataError(f'{path}: the top level must be a list of rows (or {{"data": [...]}}), got {kind}')
    return [(f"{path} row {i}", row) for i, row in enumerate(data)]


def read_text(path: str | Path) -> str:
    """A text file's content; bytes that are not UTF-8 give a DataError naming the line and byte offset."""
    try:
        raw = Path(path).read_bytes()
    except OSError as exc:
        raise DataError(f"{path}: cannot read the file ({exc.strerror or exc})") from None
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = raw[: exc.start].count(b"\n") + 1
        raise DataError(
            f"{path} line {line}: not valid UTF-8 (byte offset {exc.start}: {exc.reason})"
        ) from None


@dataclass(frozen=True)
class BrokenLine:
    """A JSON line that does not parse: validation reports (or skips) it like a bad row."""

    reason: str


def read_jsonl_text(text: str, origin: str) -> list[tuple[str, Any]]:
    """Parses JSON lines (blank lines skipped); a broken line becomes a BrokenLine located by its number."""
    rows = []
    for lineno, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except (ValueError, RecursionError) as exc:
            rows.append((f"{origin} line {lineno}", BrokenLine(f"broken JSON line ({_json_problem(exc)})")))
            continue
        rows.append((f"{origin} row {len(rows)} (line {lineno})", row))
    return rows


def _json_problem(exc: ValueError | RecursionError) -> str:
    """Why `json.loads` refused a text: a syntax error, nesting past Python's recursion limit, or a value
    Python will not convert (an integer of more than 4300 digits)."""
    if isinstance(exc, json.JSONDecodeError):
        return f"{exc.msg}, column {exc.colno}"
    if isinstance(exc, RecursionError):
        return "nested too deeply"
    return str(exc).split(";")[0]


def _read_parquet(path: Path) -> list[tuple[str, Any]]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        table = pq.read_table(path)
    except (pa.ArrowException, OSError) as exc:
        raise DataError(f"{path}: cannot read the parquet file ({str(exc).splitlines()[0]})") from None
    return [(f"{path} row {i}", row) for i, row in enumerate(table.to_pylist())]


def _read_hub(name: str, split: str) -> list[tuple[str, Any]]:
    try:
        ds = datasets.load_dataset(name, split=split)
    except Exception as exc:  # datasets raises many unrelated types; the user needs one line
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        hint = (
            "the hub is unreachable (offline?) and the dataset is not in the local cache; "
            "use a local .json/.jsonl/.parquet file or toy:<name>"
            if isinstance(exc, ConnectionError)
            else "check the name and the split"
        )
        raise DataError(f"cannot load dataset {name!r} split {split!r}: {hint} ({first})") from None
    return _rows_from_dataset(ds, f"{name}[{split}]")
