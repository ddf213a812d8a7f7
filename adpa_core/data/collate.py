"""Batching tokenized rows: one padded tensor batch per call, all groups stacked for a single forward."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor

from adpa_core.data.tokenizing import IGNORE_INDEX

PREFERENCE_GROUPS = ("chosen", "rejected")
SFT_GROUPS = ("",)


def pad_sequences(
    seqs: Sequence[Sequence[int]], value: int, *, left: bool, length: int | None = None
) -> Tensor:
    """(N, L) long tensor of `seqs` padded with `value` (left or right) to `length` or the longest."""
    length = max(len(s) for s in seqs) if length is None else length
    out = torch.full((len(seqs), length), value, dtype=torch.long)
    for i, seq in enumerate(seqs):
        if len(seq):
            seq = torch.as_tensor(seq, dtype=torch.long)
            if left:
                out[i, length - len(seq) :] = seq
            else:
                out[i, : len(seq)] = seq
    return out


def collate(
    rows: list[dict[str, Any]],
    groups: Sequence[str],
    pad_id: int,
    padding_side: str = "right",
    pad_to_multiple_of: int | None = None,
) -> dict[str, Any]:
    """Stacks the groups of B rows into one batch of G*B sequences (all of group 0 first, then group 1, ...).

    A group `g` reads `{g}_input_ids` / `{g}_labels`; the group "" (SFT_GROUPS) reads `input_ids` / `labels`.
    Returns `input_ids`, `attention_mask`, `labels` (-100 on padding), `position_ids` (G*B, L) long
    tensors — position_ids = cumsum(mask) - 1 clamped at 0, right for either padding side — and `ids`
    (the B row ids). Labels are already shifted (tokenizing.next_token_labels): logits[:, t] predicts
    labels[:, t].
    """
    if padding_side not in ("right", "left"):
        raise ValueError(f"padding_side={padding_side!r} must be 'right' or 'left'")
    if not rows or not groups:
        raise ValueError("collate needs at least one row and one group")
    if pad_id is None:
        raise ValueError("pad_id is None (the tokenizer has no pad token): pass another id, e.g. eos")
    prefixes = [f"{g}_" if g else "" for g in groups]
    seqs = [row[f"{p}input_ids"] for p in prefixes for row in rows]
    labels = [row[f"{p}labels"] for p in prefixes for row in rows]
    for s, lab in zip(seqs, labels, strict=True):
        if len(s) != len(lab):
            raise ValueError(f"input_ids and labels differ in length ({len(s)} vs {len(lab)})")
    length = max(len(s) for s in seqs)
    if pad_to_multiple_of:
        length = -(-length // pad_to_multiple_of) * pad_to_multiple_of
    left = padding_side == "left"
    input_ids = pad_sequences(seqs, pad_id, left=left, length=length)  # (G*B, L)
    attention_mask = pad_sequences([[1] * len(s) for s in seqs], 0, left=left, length=length)  # (G*B, L)
    return {
        "input_ids": input_ids,
        "attention_mask": attention_mask,
        "labels": pad_sequences(labels, IGNORE_INDEX, left=left, length=length),  # (G*B, L)
        "position_ids": (attention_mask.cumsum(-1) - 1).clamp(min=0),  # (G*B, L)
        "ids": [row["id"] for row in rows],
    }
