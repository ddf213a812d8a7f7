"""Preference and SFT data: load and validate -> tokenize with the chat template -> collate batches.

    sources.py     read raw rows: .json / .jsonl / .parquet, hub id, `toy:<name>`, a Dataset or a list
    rows.py        validate and normalize the layouts; stable content-hash ids; LoadReport
    load.py        load_preferences / load_sft -> Dataset(id, prompt, chosen, rejected | response)
    templates.py   chat template (the plain one for base models), prompt ids, end-of-turn token
    tokenizing.py  THE next-token shift, budgets and truncation, tokenized datasets
    collate.py     padded (G*B, L) batches, chosen rows first then rejected rows

THE NEXT-TOKEN SHIFT IS DONE ONCE, in `next_token_labels`: `labels[t]` is the token to predict at position
t (`input_ids[t + 1]` for response tokens, -100 elsewhere and at the last position). So
`model(input_ids).logits[:, t]` is aligned with `labels[:, t]`; losses never shift, and these labels must
never be passed to a Hugging Face model's `labels=` argument (it would shift again).

Every validation problem is a `DataError` (a ValueError) whose one-line message names the file or source,
the row (and id when known) and the field.
"""

from adpa_core.data.collate import PREFERENCE_GROUPS, SFT_GROUPS, collate, pad_sequences
from adpa_core.data.load import (
    PREFERENCE_FEATURES,
    SFT_FEATURES,
    load_preferences,
    load_prompts,
    load_sft,
    read_preferences,
    read_sft,
)
from adpa_core.data.rows import LoadReport, content_id
from adpa_core.data.sources import DataError, read_jsonl_text, read_text
from adpa_core.data.templates import (
    PLAIN_CHAT_TEMPLATE,
    chat_template_id,
    end_of_turn_id,
    prompt_ids,
    set_chat_template,
)
from adpa_core.data.tokenizing import (
    IGNORE_INDEX,
    PREFERENCE_TOKEN_FEATURES,
    SFT_TOKEN_FEATURES,
    Dropped,
    next_token_labels,
    pack_example,
    tokenize_example,
    tokenize_preferences,
    tokenize_sft,
)

__all__ = [
    "IGNORE_INDEX",
    "PLAIN_CHAT_TEMPLATE",
    "PREFERENCE_FEATURES",
    "PREFERENCE_GROUPS",
    "PREFERENCE_TOKEN_FEATURES",
    "SFT_FEATURES",
    "SFT_GROUPS",
    "SFT_TOKEN_FEATURES",
    "DataError",
    "Dropped",
    "LoadReport",
    "chat_template_id",
    "collate",
    "content_id",
    "end_of_turn_id",
    "load_preferences",
    "load_prompts",
    "load_sft",
    "next_token_labels",
    "pack_example",
    "pad_sequences",
    "prompt_ids",
    "read_jsonl_text",
    "read_preferences",
    "read_sft",
    "read_text",
    "set_chat_template",
    "tokenize_example",
    "tokenize_preferences",
    "tokenize_sft",
]
