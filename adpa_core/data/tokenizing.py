"""Chat-template tokenization, the next-token shift, and tokenized preference / SFT datasets.

THE NEXT-TOKEN SHIFT HAPPENS HERE, ONCE (`next_token_labels`). `labels[t]` is the token the model must
predict at position t: `input_ids[t + 1]` when position t + 1 is a response token, else -100; the last
position is always -100. So `model(input_ids).logits[b, t]` (B, T, V) is aligned with `labels[b, t]` (B, T)
and no loss function shifts again. Never pass these labels to a Hugging Face model's `labels=` argument
(it would shift a second time).

A sequence is `prompt tokens + response tokens`: the prompt is the chat template with
`add_generation_prompt=True`; the response is the rest of the full conversation's rendering, cut right after
the template's end-of-turn token (which is trained; trailing tokens such as a "\\n" are not kept).

Rendering with the chat template (and the plain template for base models) is in templates.py.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import datasets
from datasets import Features, List, Value
from tqdm.auto import tqdm

from adpa_core.config import DataConfig
from adpa_core.data.sources import DataError
from adpa_core.data.templates import encode, end_of_turn_id, render

logger = logging.getLogger(__name__)

IGNORE_INDEX = -100


@dataclass(frozen=True)
class Dropped:
    """A row left out by tokenization: a short `reason` (counted) and its `detail`."""

    reason: str
    detail: str = ""


def next_token_labels(input_ids: list[int], response_start: int) -> list[int]:
    """THE shift: labels[t] = input_ids[t + 1] if t + 1 >= response_start, else -100; last position -100."""
    if not 1 <= response_start <= len(input_ids):
        raise ValueError(f"response_start={response_start} must be in [1, {len(input_ids)}]")
    n = len(input_ids)
    return [input_ids[t + 1] if t + 1 >= response_start else IGNORE_INDEX for t in range(n - 1)] + [
        IGNORE_INDEX
    ]


def pack_example(
    prompt: list[int],
    response: list[int],
    *,
    max_length: int,
    max_prompt_length: int,
    truncation: str = "truncate",
    bos_id: int | None = None,
) -> dict[str, Any] | Dropped:
    """Prompt + response ids fitted to the budgets -> {input_ids, labels, prompt_length} or Dropped.

    A prompt over `max_prompt_length` keeps its end (and a leading BOS); a response over the rest of
    `max_length` is cut (`truncate`, >= 1 token kept) or the row dropped (`drop`).
    """
    if not 0 < max_prompt_length < max_length:
        raise ValueError(f"need 0 < max_prompt_length ({max_prompt_length}) < max_length ({max_length})")
    if not response:
        return Dropped("empty response", "no response tokens")
    if len(prompt) > max_prompt_length:
        if truncation == "drop":
            return Dropped("prompt too long", f"{len(prompt)} tokens > max_prompt_length {max_prompt_length}")
        keep_bos = bos_id is not None and prompt[0] == bos_id
        prompt = ([bos_id] if keep_bos else []) + prompt[len(prompt) - max_prompt_length + keep_bos :]
    budget = max_length - len(prompt)
    if len(response) > budget:
        if truncation == "drop":
            return Dropped(
                "response too long", f"{len(response)} tokens > {budget} left of max_length {max_length}"
            )
        response = response[:budget]
    input_ids = list(prompt) + list(response)
    labels = next_token_labels(input_ids, len(prompt))
    assert sum(label != IGNORE_INDEX for label in labels) == len(response) >= 1
    return {"input_ids": input_ids, "labels": labels, "prompt_length": len(prompt)}


def response_ids(
    tokenizer: Any,
    prompt: list[dict[str, str]],
    response: str,
    eot_id: int,
    prompt_text: str,
    example_id: str | None = None,
) -> list[int] | Dropped:
    """Response tokens: the full rendering minus the prompt rendering, cut right after end-of-turn."""
    conversation = [*prompt, {"role": "assistant", "content": response}]
    full = render(tokenizer, conversation, generation_prompt=False, example_id=example_id)
    if not full.startswith(prompt_text):
        raise DataError(
            f"example {example_id!r}: the chat template breaks the prefix property (the prompt rendered with "
            "add_generation_prompt=True is not a prefix of the whole conversation); unsupported template"
        )
    ids = encode(tokenizer, full[len(prompt_text) :])
    ends = [i for i, token in enumerate(ids) if token == eot_id]
    if len(ends) > 1:
        return Dropped(
            "end-of-turn token inside the response", f"token id {eot_id} appears {len(ends)} times"
        )
    if not ends:
        return ids + [eot_id]  # the template does not close the turn (eos fallback): teach the model to stop
    return ids[: ends[0] + 1]


def tokenize_example(
    tokenizer: Any,
    prompt_messages: list[dict[str, str]],
    response: str,
    *,
    max_length: int,
    max_prompt_length: int,
    truncation: str = "truncate",
    eot_id: int | None = None,
    example_id: str | None = None,
) -> dict[str, Any] | Dropped:
    """One (prompt, response) -> {input_ids, labels, prompt_length} (shifted labels), or Dropped(reason)."""
    eot = end_of_turn_id(tokenizer) if eot_id is None else eot_id
    prompt_text = render(tokenizer, prompt_messages, generation_prompt=True, example_id=example_id)
    resp = response_ids(tokenizer, prompt_messages, response, eot, prompt_text, example_id)
    if isinstance(resp, Dropped):
        return resp
    return pack_example(
        encode(tokenizer, prompt_text),
        resp,
        max_length=max_length,
        max_prompt_length=max_prompt_length,
        truncation=truncation,
        bos_id=tokenizer.bos_token_id,
    )


INT_LIST = List(Value("int32"))
PREFERENCE_TOKEN_FEATURES = Features(
    {
        "id": Value("string"),
        "prompt_input_ids": INT_LIST,
        "chosen_input_ids": INT_LIST,
        "chosen_labels": INT_LIST,
        "rejected_input_ids": INT_LIST,
        "rejected_labels": INT_LIST,
    }
)
SFT_TOKEN_FEATURES = Features(
    {"id": Value("string"), "prompt_input_ids": INT_LIST, "input_ids": INT_LIST, "labels": INT_LIST}
)


def _tokenize_row(
    row: dict, tokenizer: Any, cfg: DataConfig, fields: dict[str, str], eot: int
) -> dict | Dropped:
    """One normalized row -> its output columns, or the first Dropped among its responses."""
    out = {"id": row["id"]}
    for column, group in fields.items():
        example = tokenize_example(
            tokenizer,
            row["prompt"],
            row[column],
            max_length=cfg.max_length,
            max_prompt_length=cfg.max_prompt_length,
            truncation=cfg.truncation,
            eot_id=eot,
            example_id=row["id"],
        )
        if isinstance(example, Dropped):
            return example
        # every response of a row shares the same (possibly truncated) prompt
        out["prompt_input_ids"] = example["input_ids"][: example["prompt_length"]]
        out[f"{group}input_ids"], out[f"{group}labels"] = example["input_ids"], example["labels"]
    return out


def _tokenize_rows(
    rows: Any, tokenizer: Any, cfg: DataConfig, fields: dict[str, str], features: Features
) -> datasets.Dataset:
    """Tokenizes each response column of `rows` (`fields`: column -> group prefix); drops as configured."""
    eot = end_of_turn_id(tokenizer)
    columns: dict[str, list] = {name: [] for name in features}
    dropped: dict[str, list[str]] = {}  # reason -> one line per dropped row
    total = 0
    for row in tqdm(rows, desc="tokenizing", disable=None, leave=False):
        total += 1
        out = _tokenize_row(row, tokenizer, cfg, fields, eot)
        if isinstance(out, Dropped):
            dropped.setdefault(out.reason, []).append(f"id {row['id']!r}: {out.reason} ({out.detail})")
            continue
        for name in features:
            columns[name].append(out[name])
    if dropped:
        counts = ", ".join(f"{len(v)} x {k}" for k, v in dropped.items())
        example = next(iter(dropped.values()))[0]
        kept = len(columns["id"])
        logger.warning(
            "tokenization dropped %d of %d rows (%s); e.g. %s", total - kept, total, counts, example
        )
        if not kept:
            raise DataError(
                f"tokenization dropped all {total} rows ({counts}); e.g. {example} with max_length="
                f"{cfg.max_length}, max_prompt_length={cfg.max_prompt_length}, truncation={cfg.truncation}"
            )
    return datasets.Dataset.from_dict(columns, features=features)


def tokenize_preferences(dataset: Any, tokenizer: Any, cfg: DataConfig) -> datasets.Dataset:
    """Normalized preference rows -> `id`, `prompt_input_ids`, `chosen_input_ids`, `chosen_labels`,
    `rejected_input_ids`, `rejected_labels` (labels already shifted; a pair is dropped if either side is)."""
    fields = {"chosen": "chosen_", "rejected": "rejected_"}
    return _tokenize_rows(dataset, tokenizer, cfg, fields, PREFERENCE_TOKEN_FEATURES)


def tokenize_sft(dataset: Any, tokenizer: Any, cfg: DataConfig) -> datasets.Dataset:
    """Normalized SFT rows -> `id`, `prompt_input_ids`, `input_ids`, `labels` (labels already shifted)."""
    return _tokenize_rows(dataset, tokenizer, cfg, {"response": ""}, SFT_TOKEN_FEATURES)
