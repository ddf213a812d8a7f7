"""Data for a run: load and tokenize the configured source, and attach the student's own responses y_hat.

The result is a list of plain row dicts with `<group>_input_ids` / `<group>_labels` per group the method
needs (`chosen`, `rejected`, `yhat`), ready for `data.collate`.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

from torch import nn

from .config import RunConfig, is_local_file
from .data import DataError, pack_example, read_preferences, read_sft, tokenize_preferences, tokenize_sft
from .data.tokenizing import Dropped
from .generate import decoding_settings, generate, read_generations_jsonl, write_generations_jsonl
from .models import model_fingerprint
from .runs import RunDir

logger = logging.getLogger(__name__)


def held_out(example_id: str, fraction: float, seed: int) -> bool:
    """True when a row belongs to the seeded hold-out (`data.eval_holdout`): decided by a hash of its id,
    so the same rows are held out whatever their order or how many rows there are."""
    digest = hashlib.sha256(f"{seed}:{example_id}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64 < fraction


def load_rows(cfg: RunConfig, tokenizer: Any, split: str = "train") -> list[dict[str, Any]]:
    """Validated, tokenized rows of the train split (or the eval split) of the configured data.

    Eval rows come from `data.eval`, from `data.eval_split` of a source with splits, or from the seeded
    hold-out `data.eval_holdout` of the training rows (which then leaves training); never the train rows.
    """
    data = cfg.data
    holdout = data.eval_holdout
    if split == "eval" and data.eval is None and holdout is None and is_local_file(data.train):
        raise DataError(
            f"data.train={data.train} is a local file with no eval split; set data.eval or data.eval_holdout"
        )
    source = data.eval if split == "eval" and data.eval is not None else data.train
    split_name = data.eval_split if split == "eval" and holdout is None else data.train_split
    max_examples = data.max_examples if split == "train" else cfg.train.eval_examples
    if data.format == "sft":
        if cfg.objective.method != "sft":
            raise DataError(
                f"data.format=sft holds no rejected responses; objective.method={cfg.objective.method} "
                "needs preference data (data.format=preference)"
            )
        rows, _ = read_sft(source, split=split_name, skip_bad_rows=data.skip_bad_rows)
    else:
        rows, _ = read_preferences(source, split=split_name, skip_bad_rows=data.skip_bad_rows)
    if holdout is not None:
        keep = split == "eval"
        rows = [r for r in rows if held_out(r["id"], holdout, cfg.train.seed) == keep]
        if not rows:
            raise DataError(
                f"data.eval_holdout={holdout} leaves no {split} rows of {data.train}; change the fraction"
            )
    rows = rows[:max_examples] if max_examples is not None else rows
    if data.format == "sft":
        tokenized = tokenize_sft(rows, tokenizer, data).to_list()
        for row in tokenized:  # SFT responses play the chosen role
            row["chosen_input_ids"], row["chosen_labels"] = row.pop("input_ids"), row.pop("labels")
        return tokenized
    prompts = {r["id"]: r["prompt"] for r in rows}
    tokenized = tokenize_preferences(rows, tokenizer, data).to_list()
    for row in tokenized:
        row["prompt"] = prompts[row["id"]]
    return tokenized


def yhat_path(run: RunDir, split: str) -> Path:
    """Where a run keeps the student's replies y_hat for one split (train or eval)."""
    return run.generations_dir / ("yhat.jsonl" if split == "train" else "yhat_eval.jsonl")


def yhat_producer(cfg: RunConfig, tokenizer: Any) -> dict[str, Any]:
    """What decides the student's replies besides the prompt: the student's files, its loading and the
    exact decoding settings (stop ids included). A cached reply is reused only when all of it (and its
    prompt tokens) match."""
    return {
        "student": model_fingerprint(cfg.model.student),
        "student_quantization": cfg.model.student_quantization,
        "dtype": cfg.model.dtype,
        "decoding": decoding_settings(True, max_new_tokens=cfg.objective.max_new_tokens, tokenizer=tokenizer),
    }


def yhat_key(producer: dict[str, Any], prompt_ids: list[int]) -> str:
    text = json.dumps([producer, list(map(int, prompt_ids))], sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:24]


def attach_yhat(
    rows: list[dict[str, Any]],
    cfg: RunConfig,
    student: nn.Module,
    tokenizer: Any,
    cache_path: Path,
    batch_size: int = 32,
    on_progress: Callable[[int, int], None] | None = None,
) -> list[dict[str, Any]]:
    """Adds `yhat_input_ids` / `yhat_labels`: the initial student's greedy reply to each prompt.

    The reply is generated from the same (possibly truncated) prompt tokens the row is trained on, once,
    and cached as JSONL keyed by example id (`cache_path`) with the key of what produced it
    (`yhat_producer` + the prompt tokens): a changed student, prompt or decoding setting regenerates.
    Rows whose reply cannot be packed (empty) are dropped with a count. `on_progress(done, total)`: the
    prompts answered so far (`generate`'s `on_batch`).
    """
    producer = yhat_producer(cfg, tokenizer)
    keys = {r["id"]: yhat_key(producer, r["prompt_input_ids"]) for r in rows}
    cached = read_generations_jsonl(cache_path) if cache_path.exists() else {}
    missing = [r for r in rows if cached.get(r["id"], {}).get("key") != keys[r["id"]]]
    if missing:
        gens = generate(
            student,
            tokenizer,
            [r["prompt_input_ids"] for r in missing],
            max_new_tokens=cfg.objective.max_new_tokens,
            batch_size=batch_size,
            progress=True,
            on_batch=on_progress,
        )
        for row, gen in zip(missing, gens, strict=True):
            cached[row["id"]] = {
                "id": row["id"],
                "prompt": row["prompt"],
                "response": gen.text,
                "stopped": gen.stopped,
                "token_ids": gen.token_ids,
                "key": keys[row["id"]],
            }
        ids = sorted(cached)
        extra = [{k: cached[i].get(k) for k in ("stopped", "token_ids", "key")} for i in ids]
        write_generations_jsonl(
            cache_path,
            ids,
            [cached[i]["prompt"] for i in ids],
            [cached[i]["response"] for i in ids],
            extra=[{**e, "producer": producer} for e in extra],
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
