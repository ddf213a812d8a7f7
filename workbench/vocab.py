"""Words a tokenizer does not know: lower-cased when the lower-case word is known, and counted otherwise.

Works with any tokenizer that has an unknown token (`unk_token_id`), whatever its tokens are (words,
pieces, bytes); a tokenizer without one (byte-level BPE) reads every text, and these functions change
and count nothing.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

WORD = re.compile(r"\S+")


def _unk(tokenizer: Any) -> int | None:
    return getattr(tokenizer, "unk_token_id", None)


def known_case(tokenizer: Any, text: str) -> tuple[str, list[tuple[str, str]]]:
    """(`text` with every word that has fewer unknown tokens in lower case lower-cased, [(word, lowered)]).

    A word is a run of non-space characters; words the tokenizer reads fully as typed stay as typed.
    """
    unk = _unk(tokenizer)
    words = sorted({w for w in WORD.findall(text or "") if w != w.lower()})
    if unk is None or not words:
        return text, []
    typed = tokenizer(words, add_special_tokens=False)["input_ids"]
    lowered = tokenizer([w.lower() for w in words], add_special_tokens=False)["input_ids"]
    fix = {w: w.lower() for w, a, b in zip(words, typed, lowered, strict=True) if b.count(unk) < a.count(unk)}
    if not fix:
        return text, []
    return WORD.sub(lambda m: fix.get(m.group(0), m.group(0)), text), sorted(fix.items())


def unknown_count(tokenizer: Any, ids: Sequence[int]) -> int:
    """How many of `ids` are the tokenizer's unknown token (0 without one)."""
    unk = _unk(tokenizer)
    return 0 if unk is None else sum(1 for i in ids if i == unk)


def vocabulary_notes(
    tokenizer: Any, prompt: str, response_ids: Sequence[int], lowered: Sequence[tuple[str, str]]
) -> tuple[dict[str, int], list[str]]:
    """({prompt, response}: unknown token counts, notes saying what was lower-cased and what is unknown)."""
    counts = {
        "prompt": unknown_count(tokenizer, tokenizer(prompt, add_special_tokens=False)["input_ids"]),
        "response": unknown_count(tokenizer, response_ids),
    }
    notes = []
    if lowered:
        shown = ", ".join(f"{a} → {b}" for a, b in lowered[:8]) + (" …" if len(lowered) > 8 else "")
        notes.append(f"lower-cased {len(lowered)} word(s) the vocabulary has only in lower case: {shown}")
    if counts["prompt"] or counts["response"]:
        unk = tokenizer.unk_token
        notes.append(
            f"{counts['response']} of {len(response_ids)} reply tokens and {counts['prompt']} prompt "
            f"token(s) are not in the tokenizer's vocabulary and were read as {unk}: the teacher scores "
            f"{unk}, not the text typed"
        )
    return counts, notes
