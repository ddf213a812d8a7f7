"""Malformed preference / SFT data: every kind fails with one DataError line naming file, row and field.

Each case writes one file into an empty folder, loads it with an `adpa_core.data` loader and checks the
exception class (exactly `DataError`), the message (a regex that names what to fix) and that the folder
holds only the input afterwards (loaders write nothing: no caches, no half-written files).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from adpa_core.config import DataConfig, config_from_dict
from adpa_core.data import (
    IGNORE_INDEX,
    DataError,
    load_preferences,
    load_prompts,
    load_sft,
    read_preferences,
    tokenize_example,
    tokenize_preferences,
    tokenize_sft,
)
from adpa_core.train import train
from tests.robustness.kit import clear_error
from tests.tiny import make_llama, make_tokenizer, save_model

GOOD0 = {"prompt": "hello", "chosen": "yes", "rejected": "no"}
GOOD2 = {"prompt": "world", "chosen": "sure", "rejected": "bad"}
SFT0 = {"messages": [{"role": "user", "content": "hello"}, {"role": "assistant", "content": "yes"}]}
SFT2 = {"prompt": "world", "response": "sure"}
ROW1 = r"bad\.jsonl row 1 \(line 2\)"  # the bad row of `lines(...)`
FOLDER = object()  # content marker: a folder named like a data file


def user(text: str) -> dict[str, str]:
    return {"role": "user", "content": text}


def assistant(text: str) -> dict[str, str]:
    return {"role": "assistant", "content": text}


def lines(bad: Any, good: tuple[dict, dict] = (GOOD0, GOOD2)) -> str:
    """Three JSON lines whose second one (row 1, line 2) is `bad`: a row, or raw text when a str."""
    middle = bad if isinstance(bad, str) else json.dumps(bad)
    return f"{json.dumps(good[0])}\n{middle}\n{json.dumps(good[1])}\n"


def sft_lines(bad: Any) -> str:
    return lines(bad, (SFT0, SFT2))


@dataclass(frozen=True)
class Case:
    file: str  # the file name; every message must name it
    content: Any  # str / bytes (written as is), a pyarrow Table (parquet), FOLDER, or None (no file)
    pattern: str  # regex the one-line message must match
    loader: str = "preferences"


CASES = {
    # ---- wrong types and missing values
    "number as chosen": Case(
        "bad.jsonl",
        lines({**GOOD0, "chosen": 5}),
        ROW1 + r": field 'chosen': must be a string or a list of messages, got int",
    ),
    "boolean as rejected": Case(
        "bad.jsonl", lines({**GOOD0, "rejected": True}), ROW1 + r": field 'rejected': .*got bool"
    ),
    "NaN as chosen": Case(
        "bad.jsonl",
        lines('{"prompt": "hi", "chosen": NaN, "rejected": "no"}'),
        ROW1 + r": field 'chosen': .*got float",
    ),
    "object as chosen": Case(
        "bad.jsonl",
        lines({**GOOD0, "chosen": assistant("yes")}),
        ROW1 + r": field 'chosen': must be a string or a list of messages, got dict",
    ),
    "number as prompt": Case(
        "bad.jsonl",
        lines({**GOOD0, "prompt": 42}),
        ROW1 + r": field 'prompt': must be a string or a list of messages, got int",
    ),
    "missing rejected": Case(
        "bad.jsonl",
        lines({"prompt": "hi", "chosen": "yes"}),
        ROW1 + r": field 'rejected': missing field \(the row has 'prompt', 'chosen'\)",
    ),
    "null chosen": Case(
        "bad.jsonl",
        lines({**GOOD0, "chosen": None}),
        ROW1 + r": field 'chosen': missing field \(it is null\)",
    ),
    "null message content": Case(
        "bad.jsonl",
        lines({**GOOD0, "prompt": [{"role": "user", "content": None}]}),
        ROW1 + r": field 'prompt\[0\]': content must be a string, got NoneType",
    ),
    "message is a string": Case(
        "bad.jsonl",
        lines({**GOOD0, "prompt": ["hello"]}),
        ROW1 + r": field 'prompt\[0\]': must be an object with role and content, got str",
    ),
    "row is a list": Case(
        "bad.jsonl", lines("[1, 2]"), ROW1 + r": the row must be an object with fields, got list"
    ),
    "id of a wrong type": Case(
        "bad.jsonl",
        lines({**GOOD0, "id": 1.5}),
        ROW1 + r": field 'id': must be a non-empty string or an integer, got 1\.5",
    ),
    # ---- empty or meaningless values
    "empty chosen": Case(
        "bad.jsonl", lines({**GOOD0, "chosen": ""}), ROW1 + r": field 'chosen': empty response"
    ),
    "whitespace rejected": Case(
        "bad.jsonl", lines({**GOOD0, "rejected": " \t\n "}), ROW1 + r": field 'rejected': empty response"
    ),
    "empty prompt": Case("bad.jsonl", lines({**GOOD0, "prompt": "  "}), ROW1 + r": field 'prompt': is empty"),
    "system-only prompt": Case(
        "bad.jsonl",
        lines({**GOOD0, "prompt": [{"role": "system", "content": "be nice"}]}),
        ROW1 + r": field 'prompt': has no user message",
    ),
    "chosen equals rejected": Case(
        "bad.jsonl",
        lines({**GOOD0, "rejected": " yes "}),
        ROW1 + r": field 'rejected': identical to 'chosen'",
    ),
    "duplicate ids": Case(
        "bad.jsonl",
        lines({"id": "x", **GOOD2}).replace(json.dumps(GOOD0), json.dumps({"id": "x", **GOOD0})),
        ROW1 + r" \(id 'x'\): field 'id': duplicate id \(first used at .*bad\.jsonl row 0 \(line 1\)\)",
    ),
    # ---- conversational layout
    "roles do not alternate": Case(
        "bad.jsonl",
        lines({**GOOD0, "prompt": [user("hello"), user("world")]}),
        ROW1 + r": field 'prompt\[1\]': role 'user' where 'assistant' was expected",
    ),
    "unknown role": Case(
        "bad.jsonl",
        lines({**GOOD0, "prompt": [{"role": "bot", "content": "hi"}]}),
        ROW1 + r": field 'prompt\[0\]': unknown role 'bot' \(use system, user, assistant\)",
    ),
    "prompt ends with the assistant": Case(
        "bad.jsonl",
        lines({**GOOD0, "prompt": [user("hello"), assistant("no")]}),
        ROW1 + r": field 'prompt': must end with a user message",
    ),
    "conversation does not end with the assistant": Case(
        "bad.jsonl",
        lines({"chosen": [user("hi"), user("yes")], "rejected": [user("hi"), assistant("no")]}),
        ROW1 + r": field 'chosen': the conversation must end with an assistant message",
    ),
    "chosen and rejected prompts differ": Case(
        "bad.jsonl",
        lines({"chosen": [user("hello"), assistant("yes")], "rejected": [user("world"), assistant("no")]}),
        ROW1 + r": field 'rejected': conversation prefix differs from the one in 'chosen'",
    ),
    "prompt column contradicts the conversation": Case(
        "bad.jsonl",
        lines(
            {
                "prompt": "cat",
                "chosen": [user("hi"), assistant("yes")],
                "rejected": [user("hi"), assistant("no")],
            }
        ),
        ROW1 + r": field 'prompt': does not match the conversation in 'chosen'",
    ),
    "mixed layouts: an SFT row in preference data": Case(
        "bad.jsonl",
        lines({"messages": [user("hi"), assistant("yes")]}),
        ROW1 + r": field 'chosen': missing field \(the row has 'messages'\)",
    ),
    # ---- broken JSON and encodings
    "broken JSON line": Case(
        "bad.jsonl",
        lines('{"prompt": "hi", "chosen": '),
        r"bad\.jsonl line 2: broken JSON line \(Expecting value",
    ),
    "JSON nested too deeply": Case(
        "bad.jsonl", lines("[" * 100_000), r"bad\.jsonl line 2: broken JSON line \(nested too deeply\)"
    ),
    "integer too long for Python": Case(
        "bad.jsonl",
        lines('{"id": ' + "9" * 5000 + ', "prompt": "hi", "chosen": "a", "rejected": "b"}'),
        r"bad\.jsonl line 2: broken JSON line \(Exceeds the limit \(4300 digits\)",
    ),
    "invalid UTF-8 bytes": Case(
        "bad.jsonl",
        json.dumps(GOOD0).encode() + b'\n{"prompt": "h\xffi", "chosen": "a", "rejected": "b"}\n',
        r"bad\.jsonl line 2: not valid UTF-8 \(byte offset 68: invalid start byte\)",
    ),
    "UTF-16 file": Case("bad.jsonl", lines(GOOD2).encode("utf-16"), r"bad\.jsonl line 1: not valid UTF-8"),
    "lone surrogate escape in a reply": Case(
        "bad.jsonl",
        lines(r'{"prompt": "hi", "chosen": "ok \ud800", "rejected": "no"}'),
        ROW1 + r": field 'chosen': not valid Unicode text \(lone surrogate '\\ud800' at character 3",
    ),
    "lone surrogate escape in an id": Case(
        "bad.jsonl",
        lines(r'{"id": "\udc00", "prompt": "hi", "chosen": "ok", "rejected": "no"}'),
        ROW1 + r": field 'id': not valid Unicode text",
    ),
    "broken .json file": Case(
        "bad.json", '[{"prompt": "hi",\n "chosen": }]', r"bad\.json line 2: broken JSON \(Expecting value"
    ),
    ".json nested too deeply": Case(
        "bad.json", "[" * 100_000, r"bad\.json: broken JSON \(nested too deeply\)"
    ),
    "JSON number at the top": Case(
        "bad.json", "3", r"bad\.json: the top level must be a list of rows .*got int"
    ),
    "JSON object without data": Case(
        "bad.json",
        json.dumps({"rows": [GOOD0]}),
        r"bad\.json: the top level .*got an object with keys \['rows'\]",
    ),
    "bad row inside {data: [...]}": Case(
        "bad.json",
        json.dumps({"data": [GOOD0, {**GOOD0, "chosen": 7}]}),
        r"bad\.json row 1: field 'chosen': .*got int",
    ),
    # ---- files
    "empty file": Case("bad.jsonl", "", r"bad\.jsonl: the file is empty"),
    "blank .json file": Case("bad.json", " \n\t\n", r"bad\.json: the file is empty"),
    "empty list": Case("bad.json", "[]", r"bad\.json: no valid rows \(0 read\)"),
    "unsupported extension": Case(
        "bad.csv", "prompt,chosen,rejected\n", r"bad\.csv: unsupported file type '\.csv'; use \.json, \.jsonl"
    ),
    "no extension": Case("bad", json.dumps(GOOD0), r"bad: unsupported file type '\(none\)'"),
    "missing file": Case("bad.jsonl", None, r"bad\.jsonl: file not found"),
    "a folder named like a file": Case("bad.jsonl", FOLDER, r"bad\.jsonl: is a folder, not a data file"),
    "parquet with wrong columns": Case(
        "bad.parquet",
        pa.table({"question": ["hi"], "answer": ["yes"]}),
        r"bad\.parquet row 0: field 'chosen': missing field \(the row has 'question', 'answer'\)",
    ),
    "parquet with an integer column": Case(
        "bad.parquet",
        pa.table({"prompt": ["hi", "yo"], "chosen": ["a", "b"], "rejected": [1, 2]}),
        r"bad\.parquet row 0: field 'rejected': .*got int",
    ),
    "parquet with null cells": Case(
        "bad.parquet",
        pa.table({"prompt": ["hi", "yo"], "chosen": ["a", None], "rejected": ["b", "c"]}),
        r"bad\.parquet row 1: field 'chosen': missing field \(it is null\)",
    ),
    "truncated parquet": Case("bad.parquet", b"PAR1\x00\x01", r"bad\.parquet: cannot read the parquet file"),
    # ---- SFT and prompt loaders
    "SFT conversation ends with the user": Case(
        "bad.jsonl",
        sft_lines({"messages": [user("hi"), assistant("yes"), user("and?")]}),
        ROW1 + r": field 'messages': the conversation must end with an assistant message",
        "sft",
    ),
    "SFT reply without a question": Case(
        "bad.jsonl",
        sft_lines({"messages": [assistant("yes")]}),
        ROW1 + r": field 'messages': needs at least one user message before the assistant reply",
        "sft",
    ),
    "preference row given as SFT": Case(
        "bad.jsonl",
        sft_lines(GOOD0),
        ROW1 + r": field 'response': missing field \(give 'messages', .*"
        r"the row has 'prompt', 'chosen', 'rejected'\)",
        "sft",
    ),
    "row without a prompt for generation": Case(
        "bad.jsonl",
        lines({"id": "p1", "question": "hi"}),
        ROW1 + r" \(id 'p1'\): field 'prompt': missing field \(the row has 'id', 'question'\)",
        "prompts",
    ),
}
LOADERS = {"preferences": load_preferences, "sft": load_sft, "prompts": load_prompts}


def write(folder: Path, case: Case) -> Path:
    path = folder / case.file
    if case.content is FOLDER:
        path.mkdir()
    elif isinstance(case.content, pa.Table):
        pq.write_table(case.content, path)
    elif isinstance(case.content, bytes):
        path.write_bytes(case.content)
    elif isinstance(case.content, str):
        path.write_text(case.content, encoding="utf-8")
    return path


@pytest.mark.parametrize("name", list(CASES))
def test_bad_data_file_fails_clearly(name, tmp_path):
    case = CASES[name]
    path = write(tmp_path, case)
    with clear_error(DataError, case.pattern, untouched=tmp_path):
        LOADERS[case.loader](str(path))


@pytest.mark.parametrize("name", ["number as chosen", "lone surrogate escape in a reply", "unknown role"])
def test_skip_bad_rows_reports_the_same_problem_and_keeps_the_rest(name, tmp_path):
    path = write(tmp_path, CASES[name])
    rows, report = read_preferences(str(path), skip_bad_rows=True)
    assert [r["chosen"] for r in rows] == ["yes", "sure"] and report.skipped == 1
    assert re.search(CASES[name].pattern, report.problems[0])


def test_a_file_of_only_bad_rows_fails_even_when_skipping(tmp_path):
    path = tmp_path / "bad.jsonl"
    path.write_text("".join(json.dumps({**GOOD0, "chosen": i}) + "\n" for i in range(3)), encoding="utf-8")
    pattern = r"bad\.jsonl: no valid rows \(3 read\); first problem: .*row 0 \(line 1\): field 'chosen'"
    with clear_error(DataError, pattern, untouched=tmp_path):
        load_preferences(str(path), skip_bad_rows=True)


# ---------------------------------------------------------------- rows the tokenizer cannot use


@pytest.fixture(scope="module")
def tok():
    return make_tokenizer()


SYSTEM_REFUSING = (
    "{% if messages[0]['role'] == 'system' %}{{ raise_exception('System role not supported') }}{% endif %}"
)
PREFIX_BREAKING = (
    "{% for m in messages %}{{ m['content'] }} <|end|> {% endfor %}{% if add_generation_prompt %}X{% endif %}"
)


def test_tokenizer_without_chat_template_or_eos(tok):
    """Without a template the plain one is used (tests/test_plain_template.py); it ends turns with eos."""
    bare = make_tokenizer()
    bare.chat_template = None
    bare.eos_token = None
    rows = load_preferences([{"id": "e1", **GOOD0}])
    with clear_error(
        DataError, r"has no chat template and no eos token to end a turn with; set model\.chat_"
    ):
        tokenize_preferences(rows, bare, DataConfig(max_length=16, max_prompt_length=8))


def test_chat_template_that_refuses_a_role(tok):
    gemma_like = make_tokenizer()
    gemma_like.chat_template = SYSTEM_REFUSING + gemma_like.chat_template
    rows = load_preferences(
        [{"id": "sys-1", **GOOD0, "prompt": [{"role": "system", "content": "hi"}, user("hello")]}]
    )
    pattern = (
        r"example 'sys-1': the tokenizer's chat template cannot render messages with roles "
        r"\[system, user\] \(System role not supported\)"
    )
    with clear_error(DataError, pattern):
        tokenize_preferences(rows, gemma_like, DataConfig(max_length=16, max_prompt_length=8))


def test_chat_template_without_the_prefix_property(tok):
    odd = make_tokenizer()
    odd.chat_template = PREFIX_BREAKING
    rows = load_preferences([{"id": "e2", **GOOD0}])
    with clear_error(DataError, r"example 'e2': the chat template breaks the prefix property"):
        tokenize_preferences(rows, odd, DataConfig(max_length=16, max_prompt_length=8))


@pytest.mark.parametrize(
    ("row", "pattern"),
    [
        (
            {"id": "huge", "prompt": "hello " * 500, "chosen": "yes", "rejected": "no"},
            r"dropped all 1 rows \(1 x prompt too long\); e\.g\. id 'huge': prompt too long \(50\d tokens > "
            r"max_prompt_length 8\) with max_length=16, max_prompt_length=8, truncation=drop",
        ),
        (
            {"id": "long", "prompt": "hello", "chosen": "yes " * 500, "rejected": "no"},
            r"dropped all 1 rows \(1 x response too long\); e\.g\. id 'long': response too long",
        ),
        (
            {"id": "eot", "prompt": "hello", "chosen": "yes <|end|> no", "rejected": "no"},
            r"dropped all 1 rows \(1 x end-of-turn token inside the response\); e\.g\. id 'eot'",
        ),
    ],
    ids=["huge prompt", "huge response", "end-of-turn inside the reply"],
)
def test_rows_over_the_length_limits_with_truncation_drop(tok, row, pattern):
    cfg = DataConfig(max_length=16, max_prompt_length=8, truncation="drop")
    with clear_error(DataError, pattern):
        tokenize_preferences(load_preferences([row]), tok, cfg)


def test_huge_sft_row_with_truncation_drop(tok):
    cfg = DataConfig(max_length=16, max_prompt_length=8, truncation="drop")
    with clear_error(DataError, r"dropped all 1 rows \(1 x response too long\); e\.g\. id 'big'"):
        tokenize_sft(load_sft([{"id": "big", "prompt": "hi", "response": "yes " * 300}]), tok, cfg)


def test_huge_prompt_with_truncate_still_trains_on_the_response(tok):
    """`truncate` never leaves a row with nothing to learn: the prompt is cut to max_prompt_length from the
    left, so at least max_length - max_prompt_length response tokens survive."""
    ex = tokenize_example(tok, [user("hello " * 500)], "yes please", max_length=16, max_prompt_length=8)
    counted = [t for t in ex["labels"] if t != IGNORE_INDEX]
    assert len(ex["input_ids"]) <= 16 and ex["prompt_length"] == 8 and len(counted) == 3  # yes please <|end|>


# ---------------------------------------------------------------- a run given bad data


def test_a_run_on_bad_data_stops_before_writing_results(tmp_path):
    """`train()` names the bad line; the run folder keeps its config and a `failed` status, no results."""
    tok = make_tokenizer()
    student = save_model(tmp_path / "student", tok, make_llama(tok, hidden=32, layers=1))
    data = tmp_path / "train.jsonl"
    data.write_text(lines({**GOOD0, "chosen": 5}), encoding="utf-8")
    cfg = config_from_dict(
        {
            "name": "bad-data",
            "output_dir": str(tmp_path / "runs"),
            "model": {"student": str(student), "device": "cpu"},
            "data": {"train": str(data), "max_length": 32, "max_prompt_length": 16},
            "objective": {"method": "sft"},
            "train": {"max_steps": 2, "batch_size": 2},
        }
    )
    with clear_error(DataError, r"train\.jsonl row 1 \(line 2\): field 'chosen'"):
        list(train(cfg))
    run = tmp_path / "runs" / "bad-data"
    names = {p.name for p in run.rglob("*")}
    assert {"config.yaml", "status.json"} <= names, names
    assert not names & {"metrics.jsonl", "checkpoints", "final", "generations"}, names
    assert not [n for n in names if ".tmp" in n], names  # no half-written file left behind
    status = json.loads((run / "status.json").read_text())
    assert status["state"] == "failed" and "line 2" in status["error"] and "DataError" in status["error"]
    # the user fixes the file and runs the same config again: nothing was lost, so no --resume is needed
    data.write_text(lines({**GOOD0, "prompt": "again"}), encoding="utf-8")
    assert [r["step"] for r in train(cfg)] == [1, 2]
    assert json.loads((run / "status.json").read_text())["state"] == "completed"
