"""Validating and normalizing preference and SFT rows; stable example ids.

Normalized preference row: `id` (str), `prompt` (list of {"role", "content"} messages: optional system
messages, then user/assistant turns alternating, ending with a user turn), `chosen` and `rejected` (str).
Normalized SFT row: `id`, `prompt`, `response` (str).

Accepted preference layouts:
  (a) `prompt` (str or messages) + `chosen` / `rejected` strings;
  (b) `chosen` / `rejected` whole conversations ending with the assistant reply and sharing the same
      prefix (argilla/dpo-mix-7k, TRL), with or without a `prompt` column (when present it must agree);
  (c) `prompt` messages + `chosen` / `rejected` single assistant messages.
SFT layouts: `messages` (a conversation ending with the assistant), or `prompt` + `completion` / `response`.

Ids: a row's own `id` (str or int, unique) is kept; otherwise the id is the first 16 hex digits of the sha1
of the canonical JSON of the normalized content, so it is the same across runs and file formats and never
depends on the row's position. Rows with identical content get `-2`, `-3`, ... appended in order.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from adpa_core.data.sources import BrokenLine, DataError

logger = logging.getLogger(__name__)

ROLES = ("system", "user", "assistant")
Messages = list[dict[str, str]]


@dataclass
class LoadReport:
    """What loading did: rows read, rows kept, and one line per skipped row."""

    source: str
    total: int = 0
    kept: int = 0
    problems: list[str] = field(default_factory=list)
    reasons: Counter = field(default_factory=Counter)

    @property
    def skipped(self) -> int:
        return self.total - self.kept

    def summary(self) -> str:
        text = f"{self.source}: kept {self.kept} of {self.total} rows"
        if self.reasons:
            text += "; skipped: " + ", ".join(f"{n} x {r}" for r, n in self.reasons.most_common())
        return text


class _RowError(Exception):
    """A problem in one field of one row; turned into a DataError with the row's location."""

    def __init__(self, field_name: str, reason: str) -> None:
        super().__init__(reason)
        self.field, self.reason = field_name, reason


def _text(value: str, field_name: str) -> str:
    """`value` if it can be saved as UTF-8: a JSON `\\ud800` escape decodes to a lone surrogate, which
    would break hashing the row, writing it to Arrow and tokenizing it."""
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise _RowError(
            field_name,
            f"not valid Unicode text (lone surrogate {value[exc.start]!r} at character {exc.start}; "
            "an unpaired \\uXXXX escape?)",
        ) from None
    return value


def _missing(row: dict, name: str, hint: str = "") -> _RowError:
    """A 'missing field' error that says whether the field is null or absent (and which fields are there)."""
    if name in row:
        return _RowError(name, f"missing field ({hint}it is null)")
    present = ", ".join(repr(str(k)) for k in list(row)[:8]) + (", ..." if len(row) > 8 else "")
    return _RowError(name, f"missing field ({hint}the row has {present or 'no fields'})")


def _messages(value: Any, field_name: str) -> Messages:
    if not isinstance(value, list):
        raise _RowError(field_name, f"must be a list of messages, got {type(value).__name__}")
    out = []
    for i, msg in enumerate(value):
        where = f"{field_name}[{i}]"
        if not isinstance(msg, dict):
            raise _RowError(where, f"must be an object with role and content, got {type(msg).__name__}")
        role, content = msg.get("role"), msg.get("content")
        if role not in ROLES:
            raise _RowError(where, f"unknown role {role!r} (use {', '.join(ROLES)})")
        if not isinstance(content, str):
            raise _RowError(where, f"content must be a string, got {type(content).__name__}")
        _text(content, where)
        if role != "system" and not content.strip():
            raise _RowError(where, f"empty {role} message")
        out.append({"role": role, "content": content})
    return out


def _check_prompt(prompt: Messages, field_name: str) -> Messages:
    """System messages first, then user/assistant alternating from user, ending with a user turn."""
    turns = prompt
    while turns and turns[0]["role"] == "system":
        turns = turns[1:]
    start = len(prompt) - len(turns)
    if not turns:
        raise _RowError(field_name, "has no user message")
    for i, msg in enumerate(turns):
        expected = "user" if i % 2 == 0 else "assistant"
        if msg["role"] != expected:
            raise _RowError(
                f"{field_name}[{start + i}]",
                f"role {msg['role']!r} where {expected!r} was expected "
                "(roles must alternate user/assistant after optional system messages)",
            )
    if turns[-1]["role"] != "user":
        raise _RowError(field_name, "must end with a user message")
    return prompt


def _prompt(value: Any) -> Messages:
    if isinstance(value, str):
        if not value.strip():
            raise _RowError("prompt", "is empty")
        return [{"role": "user", "content": _text(value, "prompt")}]
    if not isinstance(value, list):
        raise _RowError("prompt", f"must be a string or a list of messages, got {type(value).__name__}")
    return _messages(value, "prompt")


def _response(value: Any, field_name: str) -> tuple[Messages | None, str]:
    """A reply string or a conversation ending with the assistant -> (conversation prefix or None, reply)."""
    if isinstance(value, str):
        reply, prefix = _text(value, field_name), None
    elif isinstance(value, list):
        conv = _messages(value, field_name)
        if not conv or conv[-1]["role"] != "assistant":
            raise _RowError(field_name, "the conversation must end with an assistant message")
        reply, prefix = conv[-1]["content"], (conv[:-1] or None)
    else:
        raise _RowError(field_name, f"must be a string or a list of messages, got {type(value).__name__}")
    if not reply.strip():
        raise _RowError(field_name, "empty response")
    return prefix, reply


def _resolve_prompt(row: dict, replies: dict[str, Messages | None]) -> Messages:
    """The prompt from the `prompt` column and/or the conversation prefixes, which must agree."""
    prefixes = [(name, p) for name, p in replies.items() if p is not None]
    for name, prefix in prefixes[1:]:
        if prefix != prefixes[0][1]:
            raise _RowError(name, f"conversation prefix differs from the one in {prefixes[0][0]!r}")
    if "prompt" in row and row["prompt"] is not None:
        prompt = _prompt(row["prompt"])
        if prefixes and prefixes[0][1] != prompt:
            same_text = (
                isinstance(row["prompt"], str)
                and prefixes[0][1][-1]["content"].strip() == row["prompt"].strip()
            )
            if not same_text:
                raise _RowError("prompt", f"does not match the conversation in {prefixes[0][0]!r}")
            prompt = prefixes[0][1]
    elif prefixes:
        prompt = prefixes[0][1]
    else:
        raise _RowError("prompt", "missing field (needed when the responses are not whole conversations)")
    return _check_prompt(prompt, "prompt")


def preference_row(row: Any) -> dict[str, Any]:
    """One raw row -> {"prompt", "chosen", "rejected"} (no id); raises _RowError."""
    if not isinstance(row, dict):
        raise _RowError("", _not_an_object(row))
    for name in ("chosen", "rejected"):
        if row.get(name) is None:
            raise _missing(row, name)
    chosen_prefix, chosen = _response(row["chosen"], "chosen")
    rejected_prefix, rejected = _response(row["rejected"], "rejected")
    prompt = _resolve_prompt(row, {"chosen": chosen_prefix, "rejected": rejected_prefix})
    if chosen.strip() == rejected.strip():
        raise _RowError("rejected", "identical to 'chosen'")
    return {"prompt": prompt, "chosen": chosen, "rejected": rejected}


def sft_row(row: Any) -> dict[str, Any]:
    """One raw row -> {"prompt", "response"} (no id); raises _RowError."""
    if not isinstance(row, dict):
        raise _RowError("", _not_an_object(row))
    if row.get("messages") is not None:
        # a conversation only: a string here is not a reply (that layout is prompt + completion)
        prefix, response = _response(_messages(row["messages"], "messages"), "messages")
        if prefix is None:
            raise _RowError("messages", "needs at least one user message before the assistant reply")
        return {"prompt": _check_prompt(prefix, "messages"), "response": response}
    name = "completion" if row.get("completion") is not None else "response"
    if row.get(name) is None:
        raise _missing(row, name, "give 'messages', or 'prompt' with 'completion' or 'response'; ")
    prefix, response = _response(row[name], name)
    return {"prompt": _resolve_prompt(row, {name: prefix}), "response": response}


def _not_an_object(row: Any) -> str:
    if isinstance(row, BrokenLine):
        return row.reason
    return f"the row must be an object with fields, got {type(row).__name__}"


def prompt_row(row: Any) -> dict[str, Any]:
    """One raw row of any layout -> its normalized content with at least "prompt" (ids then match the
    preference / SFT loaders for the same file); a row with only a prompt gives {"prompt"}."""
    if not isinstance(row, dict):
        raise _RowError("", _not_an_object(row))
    if row.get("chosen") is not None:
        return preference_row(row)
    if any(row.get(k) is not None for k in ("messages", "completion", "response")):
        return sft_row(row)
    if row.get("prompt") is None:
        raise _missing(row, "prompt")
    return {"prompt": _check_prompt(_prompt(row["prompt"]), "prompt")}


def content_id(content: dict[str, Any]) -> str:
    """First 16 hex digits of the sha1 of the canonical JSON of a normalized row (without its id)."""
    text = json.dumps(content, sort_keys=True, ensure_ascii=False, separators=(",", ":"))
    return hashlib.sha1(text.encode("utf-8")).hexdigest()[:16]


def _given_id(row: Any) -> str | None:
    if not isinstance(row, dict) or row.get("id") is None:
        return None
    value = row["id"]
    if isinstance(value, bool) or not isinstance(value, str | int) or not str(value).strip():
        raise _RowError("id", f"must be a non-empty string or an integer, got {value!r}")
    return _text(str(value), "id")


def _describe(location: str, given: str | None, exc: _RowError) -> tuple[str, str]:
    """(one-line message naming row, id and field; short reason used to count skipped rows)."""
    where = f"{location}{f' (id {given!r})' if given else ''}"
    if not exc.field:
        return f"{where}: {exc.reason}", exc.reason.split(" (")[0]
    field_kind = re.sub(r"\[\d+\]", "", exc.field)  # prompt[1] -> prompt
    return f"{where}: field '{exc.field}': {exc.reason}", f"{field_kind}: {exc.reason.split(' (')[0]}"


def normalize_rows(
    raw: list[tuple[str, Any]],
    origin: str,
    parse: Callable[[Any], dict[str, Any]],
    *,
    skip_bad_rows: bool = False,
) -> tuple[list[dict[str, Any]], LoadReport]:
    """Validates and normalizes `(location, raw_row)` pairs with `parse` (preference_row or sft_row)."""
    report = LoadReport(source=origin, total=len(raw))
    out: list[dict[str, Any]] = []
    seen: dict[str, str] = {}  # id -> location of its first row
    repeats: Counter = Counter()
    for location, row in raw:
        given = None
        try:
            given = _given_id(row)
            content = parse(row)
            row_id = given
            if row_id is None:
                base = content_id(content)
                repeats[base] += 1
                row_id = base if repeats[base] == 1 else f"{base}-{repeats[base]}"
            if row_id in seen:
                raise _RowError("id", f"duplicate id (first used at {seen[row_id]})")
        except _RowError as exc:
            message, reason = _describe(location, given, exc)
            if not skip_bad_rows:
                raise DataError(message, reason=reason) from None
            report.problems.append(message)
            report.reasons[reason] += 1
            continue
        seen[row_id] = location
        out.append({"id": row_id, **content})
    report.kept = len(out)
    if report.problems:
        logger.warning("%s", report.summary())
    if sum(repeats.values()) > len(repeats):
        logger.info(
            "%s: %d rows repeat another row's content; their ids get a -N suffix",
            origin,
            sum(repeats.values()) - len(repeats),
        )
    if not out:
        first = f"; first problem: {report.problems[0]}" if report.problems else ""
        raise DataError(f"{origin}: no valid rows ({report.total} read){first}")
    return out, report
