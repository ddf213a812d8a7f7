"""Data for a run: load and tokenize the configured source, and attach the student's own responses y_hat.

The result is a list of plain row dicts with `<group>_input_ids` / `<group>_labels` per group the method
needs (`chosen`, `rejected`, `yhat`), ready for `data.collate`.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from torch import nn

from .config import RunConfig
from .data import DataError, load_preferences, load_sft, pack_example, tokenize_preferences, tokenize_sft
from .data.tokenizing import Dropped
from .generate import generate, read_generations_jsonl, write_generations_jsonl

logger = logging.getLogger(__name__)


def load_rows(cfg: RunConfig, tokenizer: Any, split: str = "train") -> list[dict[str, Any]]:
    """Validated, tokenized rows of the train split (or the eval split) of the configured data."""
    data = cfg.data
    source = data.train if split == "train" or data.eval is None else data.eval
    split_name = data.train_split if split == "train" else data.eval_split
    max_examples = data.max_examples if split == "train" else cfg.train.eval_examples
    if data.format == "sft":
        if cfg.objective.method != "sft":
            raise DataError(
                f"data.format=sft holds no rejected responses; objective.method={cfg.objective.method} "
                "needs preference data (data.format=preference)"
            )
        ds = load_sft(source, split=split_name, skip_bad_rows=data.skip_bad_rows, max_examples=max_examples)
        rows = tokenize_sft(ds, tokenizer, data).to_list()
        for row in rows:  # SFT responses play the chosen role
            row["chosen_input_ids"], row["chosen_labels"] = row.pop("input_ids"), row.pop("labels")
        return rows
    ds = load_preferences(
        source, split=split_name, skip_bad_rows=data.skip_bad_rows, max_examples=max_examples
    )
    prompts = {r["id"]: r["prompt"] for r in ds}
    rows = tokenize_preferences(ds, tokenizer, data).to_list()
    for row in rows:
        row["prompt"] = prompts[row["id"]]
    return rows


def attach_yhat(
    rows: list[dict[str, Any]],
    cfg: RunConfig,
    student: nn.Module,
    tokenizer: Any,
    cache_path: Path,
    batch_size: int = 32,
) -> list[dict[str, Any]]:
    """Adds `yhat_input_ids` / `yhat_labels`: the initial student's greedy reply to each prompt.

    Generated once and cached as JSONL keyed by example id (`cache_path`); ids already there are reused.
    Rows whose reply cannot be packed (empty) are dropped with a count.
    """
    cached = read_generations_jsonl(cache_path) if cache_path.exists() else {}
    missing = [r for r in rows if r["id"] not in cached]
    if missing:
        gens = generate(
            student,
            tokenizer,
            [r["prompt"] for r in missing],
            max_new_tokens=cfg.objective.max_new_tokens,
            batch_size=batch_size,
            progress=True,
        )
        for row, gen in zip(missing, gens, strict=True):
            cached[row["id"]] = {
                "id": row["id"],
                "prompt": row["prompt"],
                "response": gen.text,
                "stopped": gen.stopped,
                "token_ids": gen.token_ids,
            }
        ids = sorted(cached)
        write_generations_jsonl(
            cache_path,
            ids,
            [cached[i]["prompt"] for i in ids],
            [cached[i]["response"] for i in ids],
            extra=[{"stopped": cached[i].get("stopped"), "token_ids": cached[i]["token_ids"]} for i in ids],
        )
    kept, dropped = [], 0
    for row in rows:
        packed = pack_example(
            row["prompt_input_ids"],
            list(cached[row["id"]]["token_ids"]),
            max_length=cfg.data.max_length,
            max_prompt_length=cfg.data.max_prompt_length,
            truncation="truncate",
        )
        if isinstance(packed, Dropped):
            dropped += 1
            continue
        kept.append({**row, "yhat_input_ids": packed["input_ids"], "yhat_labels": packed["labels"]})
    if dropped:
        logger.warning("y_hat: dropped %d of %d rows whose student reply was empty", dropped, len(rows))
    if not kept:
        raise DataError(
            "every y_hat reply of the student was empty; check the student and objective.max_new_tokens"
        )
    return kept
