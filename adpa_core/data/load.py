"""Loading preference and SFT data into normalized `datasets.Dataset`s (see rows.py for the layouts)."""

from __future__ import annotations

from typing import Any

import datasets
from datasets import Features, List, Value

from adpa_core.data.rows import LoadReport, normalize_rows, preference_row, prompt_row, sft_row
from adpa_core.data.sources import read_rows

MESSAGES = List({"role": Value("string"), "content": Value("string")})
PREFERENCE_FEATURES = Features(
    {"id": Value("string"), "prompt": MESSAGES, "chosen": Value("string"), "rejected": Value("string")}
)
SFT_FEATURES = Features({"id": Value("string"), "prompt": MESSAGES, "response": Value("string")})


def _to_dataset(rows: list[dict[str, Any]], features: Features) -> datasets.Dataset:
    return datasets.Dataset.from_dict({k: [r[k] for r in rows] for k in features}, features=features)


def read_preferences(
    source: Any, *, split: str = "train", skip_bad_rows: bool = False, max_examples: int | None = None
) -> tuple[list[dict[str, Any]], LoadReport]:
    """Normalized preference rows (`id`, `prompt`, `chosen`, `rejected`) and the load report.

    `source`: a hub id, a .json/.jsonl/.parquet path, `toy:<name>`, a `datasets.Dataset` or a list of dicts.
    Raises DataError at the first bad row unless `skip_bad_rows`; `max_examples` keeps the first N valid rows.
    """
    raw, origin = read_rows(source, split)
    rows, report = normalize_rows(raw, origin, preference_row, skip_bad_rows=skip_bad_rows)
    return rows[:max_examples] if max_examples is not None else rows, report


def load_preferences(
    source: Any, *, split: str = "train", skip_bad_rows: bool = False, max_examples: int | None = None
) -> datasets.Dataset:
    """`read_preferences` as a Dataset with columns `id`, `prompt`, `chosen`, `rejected`."""
    rows, _ = read_preferences(source, split=split, skip_bad_rows=skip_bad_rows, max_examples=max_examples)
    return _to_dataset(rows, PREFERENCE_FEATURES)


def read_sft(
    source: Any, *, split: str = "train", skip_bad_rows: bool = False, max_examples: int | None = None
) -> tuple[list[dict[str, Any]], LoadReport]:
    """Normalized SFT rows (`id`, `prompt`, `response`) and the load report; sources as read_preferences."""
    raw, origin = read_rows(source, split)
    rows, report = normalize_rows(raw, origin, sft_row, skip_bad_rows=skip_bad_rows)
    return rows[:max_examples] if max_examples is not None else rows, report


def load_sft(
    source: Any, *, split: str = "train", skip_bad_rows: bool = False, max_examples: int | None = None
) -> datasets.Dataset:
    """`read_sft` as a Dataset with columns `id`, `prompt`, `response`."""
    rows, _ = read_sft(source, split=split, skip_bad_rows=skip_bad_rows, max_examples=max_examples)
    return _to_dataset(rows, SFT_FEATURES)


def load_prompts(
    source: Any, *, split: str = "train", skip_bad_rows: bool = False, max_examples: int | None = None
) -> list[dict[str, Any]]:
    """`id` + `prompt` (messages) of every row of a prompt, preference or SFT source (for generation)."""
    raw, origin = read_rows(source, split)
    rows, _ = normalize_rows(raw, origin, prompt_row, skip_bad_rows=skip_bad_rows)
    rows = rows[:max_examples] if max_examples is not None else rows
    return [{"id": r["id"], "prompt": r["prompt"]} for r in rows]
