"""Data layer: loading and validation, chat-template tokenization, the next-token shift, collation."""

from __future__ import annotations

import json
import logging

import datasets
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from tokenizers import pre_tokenizers

from adpa_core.config import DataConfig
from adpa_core.data import (
    IGNORE_INDEX,
    DataError,
    Dropped,
    collate,
    content_id,
    end_of_turn_id,
    load_preferences,
    load_sft,
    next_token_labels,
    pack_example,
    read_preferences,
    tokenize_example,
    tokenize_preferences,
    tokenize_sft,
)
from tests.tiny import WORDS, make_llama, make_tokenizer

# Ids of the tiny tokenizer: <pad> 0, <bos> 1, <|user|> 2, <|assistant|> 3, <|system|> 4, <|end|> 5, <unk> 6,
# then the words from 7: hello 7, world 8, the 9, ..., yes 26, no 27, please 28, thanks 29.
BOS, USER, ASSISTANT, SYSTEM, END = 1, 2, 3, 4, 5
HELLO, WORLD, YES, NO, PLEASE, THANKS = 7, 8, 26, 27, 28, 29
NO_BOS_TEMPLATE = (
    "{% for m in messages %}<|{{ m['role'] }}|> {{ m['content'] }} <|end|> {% endfor %}"
    "{% if add_generation_prompt %}<|assistant|> {% endif %}"
)


@pytest.fixture(scope="module")
def tok():
    return make_tokenizer()


def user(text):
    return {"role": "user", "content": text}


def assistant(text):
    return {"role": "assistant", "content": text}


# ---------------------------------------------------------------- tokenization and the shift


def test_hand_checked_example(tok):
    ex = tokenize_example(tok, [user("hello world")], "yes please", max_length=32, max_prompt_length=16)
    # <bos> <|user|> hello world <|end|> <|assistant|> | yes please <|end|>
    assert ex["input_ids"] == [BOS, USER, HELLO, WORLD, END, ASSISTANT, YES, PLEASE, END]
    # labels[t] is the token to predict at t: the prompt's last position predicts the first response token,
    # the end-of-turn token is a label, and the last position predicts nothing.
    assert ex["labels"] == [-100, -100, -100, -100, -100, YES, PLEASE, END, -100]
    assert ex["prompt_length"] == 6


def test_hand_checked_multi_turn_with_system(tok):
    prompt = [{"role": "system", "content": "the"}, user("hello"), assistant("no"), user("world")]
    ex = tokenize_example(tok, prompt, "thanks", max_length=32, max_prompt_length=20)
    assert ex["input_ids"] == [BOS, SYSTEM, 9, END, USER, HELLO, END, ASSISTANT, NO, END, USER, WORLD, END,
                               ASSISTANT, THANKS, END]  # fmt: skip
    assert ex["labels"] == [-100] * 13 + [THANKS, END, -100]


def test_next_token_labels_is_the_one_shift():
    assert next_token_labels([10, 11, 12, 13], 2) == [-100, 12, 13, -100]
    assert next_token_labels([10, 11], 1) == [11, -100]
    with pytest.raises(ValueError):
        next_token_labels([10, 11], 0)


def test_logits_align_with_labels_without_a_shift(tok):
    """Our aligned labels give the same NLL as Hugging Face's own loss, which shifts internally."""
    ex = tokenize_example(tok, [user("hello world")], "yes please", max_length=32, max_prompt_length=16)
    input_ids = torch.tensor([ex["input_ids"]])  # (1, T)
    labels = torch.tensor([ex["labels"]])  # (1, T)
    mask = labels != IGNORE_INDEX
    positions = mask[0].nonzero().squeeze(-1)
    assert torch.equal(labels[mask], input_ids[0, positions + 1])  # labels[t] == input_ids[t + 1]
    model = make_llama(tok)
    logits = model(input_ids=input_ids).logits  # (1, T, V)
    ours = torch.nn.functional.cross_entropy(logits[mask], labels[mask])
    hf_labels = input_ids.masked_fill(torch.arange(input_ids.shape[1]) < ex["prompt_length"], IGNORE_INDEX)
    theirs = model(input_ids=input_ids, labels=hf_labels).loss
    torch.testing.assert_close(ours, theirs)


def test_end_of_turn_detection(tok):
    assert end_of_turn_id(tok) == END


def test_template_without_bos(tok):
    no_bos = make_tokenizer()
    no_bos.chat_template = NO_BOS_TEMPLATE
    no_bos.bos_token = None
    assert no_bos.bos_token_id is None
    assert end_of_turn_id(no_bos) == END
    ex = tokenize_example(no_bos, [user("hello")], "yes", max_length=16, max_prompt_length=8)
    assert ex["input_ids"] == [USER, HELLO, END, ASSISTANT, YES, END]
    assert ex["labels"] == [-100, -100, -100, YES, END, -100]
    # a long prompt is cut from the left without a BOS to keep
    ex = tokenize_example(no_bos, [user("hello world the")], "yes", max_length=8, max_prompt_length=3)
    assert ex["input_ids"] == [9, END, ASSISTANT, YES, END]


def test_bos_is_not_doubled(tok):
    ex = tokenize_example(tok, [user("hello")], "yes", max_length=16, max_prompt_length=8)
    assert ex["input_ids"].count(BOS) == 1


def test_trailing_newline_after_end_of_turn_is_not_trained():
    nl_tok = make_tokenizer(words=WORDS + ["\n"])
    nl_tok.backend_tokenizer.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.Split("\n", behavior="isolated"), pre_tokenizers.Split(" ", behavior="removed")]
    )
    nl_tok.chat_template = (
        "{{ bos_token }}{% for m in messages %}<|{{ m['role'] }}|> {{ m['content'] }} <|end|>\n{% endfor %}"
        "{% if add_generation_prompt %}<|assistant|> {% endif %}"
    )
    newline = nl_tok.convert_tokens_to_ids("\n")
    full = nl_tok.apply_chat_template([user("hello"), assistant("yes")], tokenize=False)
    assert nl_tok(full, add_special_tokens=False)["input_ids"][-2:] == [END, newline]
    assert end_of_turn_id(nl_tok) == END
    ex = tokenize_example(nl_tok, [user("hello")], "yes", max_length=16, max_prompt_length=8)
    assert ex["input_ids"] == [BOS, USER, HELLO, END, newline, ASSISTANT, YES, END]
    assert ex["labels"] == [-100] * 5 + [YES, END, -100]


def test_template_without_end_of_turn_falls_back_to_eos(caplog):
    plain = make_tokenizer()
    plain.chat_template = (
        "{% for m in messages %}<|{{ m['role'] }}|> {{ m['content'] }} . {% endfor %}"
        "{% if add_generation_prompt %}<|assistant|> {% endif %}"
    )
    with caplog.at_level(logging.WARNING):
        assert end_of_turn_id(plain) == plain.eos_token_id
    assert "no end-of-turn token" in caplog.text
    ex = tokenize_example(plain, [user("hello")], "yes", max_length=16, max_prompt_length=8)
    assert ex["input_ids"][-3:] == [YES, 22, END]  # the model still learns to stop
    assert ex["labels"][-3:] == [22, END, -100]


def test_template_breaking_the_prefix_property_is_an_error():
    broken = make_tokenizer()
    broken.chat_template = (
        "{% for m in messages %}<|{{ m['role'] }}|> {{ m['content'] }} <|end|> {% endfor %}"
        "{% if add_generation_prompt %}<|assistant|> please {% endif %}"
    )
    with pytest.raises(DataError, match="ex-7.*prefix"):
        tokenize_example(
            broken, [user("hello")], "yes", max_length=16, max_prompt_length=8, example_id="ex-7"
        )


def test_end_of_turn_inside_the_response_drops_the_row(tok):
    out = tokenize_example(tok, [user("hello")], "yes <|end|> no", max_length=16, max_prompt_length=8)
    assert isinstance(out, Dropped) and "end-of-turn" in out.reason


def test_truncation_keeps_at_least_one_response_token(tok):
    prompt = [user("hello world")]  # 6 prompt tokens
    ex = tokenize_example(tok, prompt, "yes please thanks", max_length=7, max_prompt_length=6)
    assert ex["input_ids"] == [BOS, USER, HELLO, WORLD, END, ASSISTANT, YES]
    assert ex["labels"] == [-100] * 5 + [YES, -100]
    dropped = tokenize_example(
        tok, prompt, "yes please", max_length=7, max_prompt_length=6, truncation="drop"
    )
    assert isinstance(dropped, Dropped) and dropped.reason == "response too long"


def test_long_prompt_keeps_its_end_and_the_bos(tok):
    prompt = [user("hello world the a cat")]  # <bos> <|user|> hello world the a cat <|end|> <|assistant|>
    ex = tokenize_example(tok, prompt, "yes", max_length=12, max_prompt_length=4)
    assert ex["input_ids"] == [BOS, 11, END, ASSISTANT, YES, END]
    assert ex["labels"] == [-100, -100, -100, YES, END, -100]
    dropped = tokenize_example(tok, prompt, "yes", max_length=12, max_prompt_length=4, truncation="drop")
    assert isinstance(dropped, Dropped) and dropped.reason == "prompt too long"


@pytest.mark.parametrize("max_length", [2, 3, 5, 8, 13])
@pytest.mark.parametrize("truncation", ["truncate", "drop"])
def test_every_kept_example_fits_and_has_a_label(max_length, truncation):
    for max_prompt in range(1, max_length):
        for prompt_len in (1, 3, 6):
            for resp_len in (1, 2, 7):
                out = pack_example(list(range(10, 10 + prompt_len)), [1] * resp_len, max_length=max_length,
                                   max_prompt_length=max_prompt, truncation=truncation)  # fmt: skip
                if isinstance(out, Dropped):
                    assert truncation == "drop"
                    continue
                assert len(out["input_ids"]) == len(out["labels"]) <= max_length
                assert out["prompt_length"] <= max_prompt
                assert sum(label != IGNORE_INDEX for label in out["labels"]) >= 1


# ---------------------------------------------------------------- layouts and sources

CANONICAL = [
    ([user("hello world")], "yes please", "no"),
    ([user("what is one plus two ?")], "three", "four"),
    (
        [{"role": "system", "content": "be good"}, user("hi"), assistant("hello"), user("where is paris ?")],
        "paris is a city",
        "no",
    ),
]


def layout_rows(layout):
    rows = []
    for prompt, chosen, rejected in CANONICAL:
        if layout == "a":
            rows.append({"prompt": prompt, "chosen": chosen, "rejected": rejected})
        elif layout == "b":
            rows.append({"chosen": [*prompt, assistant(chosen)], "rejected": [*prompt, assistant(rejected)]})
        elif layout == "b_with_prompt":
            rows.append(
                {
                    "prompt": prompt,
                    "chosen": [*prompt, assistant(chosen)],
                    "rejected": [*prompt, assistant(rejected)],
                }
            )
        elif layout == "c":
            rows.append({"prompt": prompt, "chosen": [assistant(chosen)], "rejected": [assistant(rejected)]})
    return rows


def write_source(rows, fmt, tmp_path):
    if fmt == "list":
        return rows
    if fmt == "dataset":
        return datasets.Dataset.from_list(rows)
    path = tmp_path / f"prefs.{fmt}"
    if fmt == "json":
        path.write_text(json.dumps(rows), encoding="utf-8")
    elif fmt == "jsonl":
        path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    elif fmt == "parquet":
        pq.write_table(pa.Table.from_pylist(rows), path)
    return str(path)


EXPECTED = [
    {"prompt": p, "chosen": c, "rejected": r, "id": content_id({"prompt": p, "chosen": c, "rejected": r})}
    for p, c, r in CANONICAL
]


@pytest.mark.parametrize("fmt", ["json", "jsonl", "parquet", "list", "dataset"])
@pytest.mark.parametrize("layout", ["a", "b", "b_with_prompt", "c"])
def test_every_layout_and_format_gives_the_same_rows(layout, fmt, tmp_path):
    ds = load_preferences(write_source(layout_rows(layout), fmt, tmp_path))
    assert ds.column_names == ["id", "prompt", "chosen", "rejected"]
    assert ds.to_list() == [{k: e[k] for k in ds.column_names} for e in EXPECTED]


def test_string_prompt_equals_one_user_message():
    rows = load_preferences([{"prompt": "hello world", "chosen": "yes please", "rejected": "no"}])
    assert rows[0] == {k: EXPECTED[0][k] for k in ("id", "prompt", "chosen", "rejected")}
    # ultrafeedback style: a string prompt beside whole conversations
    uf = [{"prompt": "hello world", "chosen": [user("hello world"), assistant("yes please")],
           "rejected": [user("hello world"), assistant("no")]}]  # fmt: skip
    assert load_preferences(uf)[0] == rows[0]


def test_ids_are_stable_and_given_ids_are_kept(tmp_path):
    # a literal: ids must not change between runs or versions (caches and generations join on them)
    assert EXPECTED[0]["id"] == "e0395d9d7e774ae7"
    rows = [{"id": "ex-1", **layout_rows("a")[0]}, {"id": 7, **layout_rows("a")[1]}, layout_rows("a")[2]]
    ds = load_preferences(write_source(rows, "jsonl", tmp_path))
    assert ds["id"] == ["ex-1", "7", EXPECTED[2]["id"]]
    # the id never depends on the position of the row
    assert load_preferences(layout_rows("a")[::-1])["id"] == [e["id"] for e in EXPECTED[::-1]]


def test_repeated_content_gets_distinct_stable_ids():
    row = layout_rows("a")[0]
    ids = load_preferences([row, layout_rows("a")[1], row])["id"]
    assert ids == [EXPECTED[0]["id"], EXPECTED[1]["id"], EXPECTED[0]["id"] + "-2"]


def test_json_file_holding_json_lines_and_data_key(tmp_path):
    rows = layout_rows("a")
    lines = tmp_path / "lines.json"
    lines.write_text("\n".join(json.dumps(r) for r in rows), encoding="utf-8")
    wrapped = tmp_path / "wrapped.json"
    wrapped.write_text(json.dumps({"data": rows}), encoding="utf-8")
    assert (
        load_preferences(str(lines))["id"]
        == load_preferences(str(wrapped))["id"]
        == [e["id"] for e in EXPECTED]
    )


def test_max_examples(tmp_path):
    assert len(load_preferences(layout_rows("a"), max_examples=2)) == 2


def test_toy_source(tmp_path, monkeypatch):
    monkeypatch.setenv("ADPA_HOME", str(tmp_path))
    with pytest.raises(DataError, match="adpa toy build"):
        load_preferences("toy:preferences")
    (tmp_path / "toy" / "data").mkdir(parents=True)
    write = tmp_path / "toy" / "data" / "preferences_test.jsonl"
    write.write_text("".join(json.dumps(r) + "\n" for r in layout_rows("a")), encoding="utf-8")
    assert load_preferences("toy:preferences", split="test")["id"] == [e["id"] for e in EXPECTED]


def test_hub_offline_fails_fast(monkeypatch):
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)
    with pytest.raises(DataError, match="unreachable.*not in the local cache") as info:
        load_preferences("someone/no-such-dataset")
    assert "no-such-dataset" in str(info.value) and "\n" not in str(info.value)


# ---------------------------------------------------------------- bad data

GOOD0 = {"prompt": "hello", "chosen": "yes", "rejected": "no"}
GOOD2 = {"prompt": "world", "chosen": "yes", "rejected": "no"}


def jsonl(bad):
    """A 3-line file whose second line (row 1) is `bad` (a row object, or raw text when a str)."""
    middle = bad if isinstance(bad, str) else json.dumps(bad)
    return f"{json.dumps(GOOD0)}\n{middle}\n{json.dumps(GOOD2)}\n"


BAD = {
    "missing field": ("bad.jsonl", jsonl({"prompt": "hi", "chosen": "yes"}), ["'rejected'", "missing field"]),
    "int response": ("bad.jsonl", jsonl({**GOOD0, "chosen": 5}), ["'chosen'", "int"]),
    "empty response": ("bad.jsonl", jsonl({**GOOD0, "chosen": ""}), ["'chosen'", "empty response"]),
    "whitespace response": (
        "bad.jsonl",
        jsonl({**GOOD0, "rejected": " \t\n"}),
        ["'rejected'", "empty response"],
    ),
    "broken json line": ("bad.jsonl", jsonl('{"prompt": "hi", '), ["line 2", "broken JSON"]),
    "roles do not alternate": (
        "bad.jsonl",
        jsonl({**GOOD0, "prompt": [user("hello"), user("world")]}),
        ["'prompt[1]'", "alternate"],
    ),
    "conversation not ending with assistant": (
        "bad.jsonl",
        jsonl({"chosen": [user("hello"), user("yes")], "rejected": [user("hello"), assistant("no")]}),
        ["'chosen'", "end with an assistant"],
    ),
    "prompt not ending with user": (
        "bad.jsonl",
        jsonl({**GOOD0, "prompt": [user("hello"), assistant("no")]}),
        ["'prompt'", "end with a user"],
    ),
    "unknown role": (
        "bad.jsonl",
        jsonl({**GOOD0, "prompt": [{"role": "bot", "content": "hi"}]}),
        ["'prompt[0]'", "unknown role 'bot'"],
    ),
    "system in the middle": (
        "bad.jsonl",
        jsonl({**GOOD0, "prompt": [user("a"), {"role": "system", "content": "b"}, user("c")]}),
        ["'prompt[1]'", "'system'"],
    ),
    "content not a string": (
        "bad.jsonl",
        jsonl({**GOOD0, "prompt": [{"role": "user", "content": ["hi"]}]}),
        ["'prompt[0]'", "content must be a string"],
    ),
    "prefix mismatch": (
        "bad.jsonl",
        jsonl({"chosen": [user("hello"), assistant("yes")], "rejected": [user("world"), assistant("no")]}),
        ["'rejected'", "prefix differs"],
    ),
    "prompt disagrees with conversation": (
        "bad.jsonl",
        jsonl(
            {
                "prompt": "cat",
                "chosen": [user("hello"), assistant("yes")],
                "rejected": [user("hello"), assistant("no")],
            }
        ),
        ["'prompt'", "does not match"],
    ),
    "chosen equals rejected": (
        "bad.jsonl",
        jsonl({**GOOD0, "rejected": "yes "}),
        ["'rejected'", "identical"],
    ),
    "duplicate ids": (
        "bad.jsonl",
        json.dumps({"id": "x", **GOOD0}) + "\n" + json.dumps({"id": "x", **GOOD2}) + "\n",
        ["row 1 (line 2)", "id 'x'", "duplicate id", "row 0"],
    ),
    "id of a wrong type": ("bad.jsonl", jsonl({**GOOD0, "id": [1]}), ["'id'", "non-empty string"]),
    "boolean id": ("bad.jsonl", jsonl({**GOOD0, "id": True}), ["'id'", "non-empty string", "got True"]),
    "empty assistant turn inside the prompt": (
        "bad.jsonl",
        jsonl({**GOOD0, "prompt": [user("hello"), assistant(" "), user("world")]}),
        ["'prompt[1]'", "empty assistant message"],
    ),
    "row is a string": ("bad.jsonl", jsonl('"just text"'), ["row 1 (line 2)", "must be an object", "str"]),
    "invalid utf-8": (
        "bad.jsonl",
        json.dumps(GOOD0).encode() + b'\n{"prompt": "h\xffi", "chosen": "a", "rejected": "b"}\n',
        ["line 2", "UTF-8", "byte offset"],
    ),
    "empty file": ("bad.jsonl", "", ["bad.jsonl", "empty"]),
    "blank json file": ("bad.json", "  \n", ["bad.json", "empty"]),
    "top-level json not a list": ("bad.json", json.dumps({"rows": 3}), ["bad.json", "must be a list"]),
    "top-level json a number": ("bad.json", "3", ["bad.json", "must be a list", "int"]),
    "broken json file": (
        "bad.json",
        '[{"prompt": "hi",\n "chosen": }]',
        ["bad.json", "line 2", "broken JSON"],
    ),
    "not a parquet file": ("bad.parquet", b"this is not parquet", ["bad.parquet", "cannot read"]),
    "unsupported file type": ("bad.csv", "prompt,chosen,rejected\n", ["bad.csv", "unsupported file type"]),
}


@pytest.mark.parametrize("case", list(BAD))
def test_bad_data_raises_a_one_line_data_error(case, tmp_path):
    name, content, fragments = BAD[case]
    path = tmp_path / name
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        path.write_text(content, encoding="utf-8")
    with pytest.raises(DataError) as info:
        load_preferences(str(path))
    message = str(info.value)
    assert "\n" not in message
    assert name in message
    row_fragments = [f for f in fragments if f.startswith("'")]
    if row_fragments:  # a row problem names row and line (the bad one is row 1)
        assert "row 1 (line 2)" in message
    for fragment in fragments:
        assert fragment in message, (fragment, message)


def test_missing_file_and_bad_source_type(tmp_path):
    with pytest.raises(DataError, match="nope.jsonl: file not found"):
        load_preferences(str(tmp_path / "nope.jsonl"))
    with pytest.raises(DataError, match="unsupported data source"):
        load_preferences(42)


def test_prompt_too_long_with_drop_names_the_example(tok):
    cfg = DataConfig(max_length=8, max_prompt_length=4, truncation="drop")
    ds = load_preferences(
        [{"id": "long-1", "prompt": "hello world the a cat", "chosen": "yes", "rejected": "no"}]
    )
    with pytest.raises(DataError, match="dropped all 1 rows.*long-1.*prompt too long.*truncation=drop"):
        tokenize_preferences(ds, tok, cfg)


def test_skip_bad_rows_keeps_good_rows_and_reports(tmp_path, caplog):
    path = tmp_path / "mixed.jsonl"
    bad = [{**GOOD0, "chosen": ""}, {"prompt": "x"}, {**GOOD0, "rejected": "yes"}, {**GOOD0, "chosen": "  "}]
    lines = [json.dumps(r) for r in [GOOD0, *bad]] + ['{"prompt": "cut', json.dumps(GOOD2)]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    with caplog.at_level(logging.WARNING):
        rows, report = read_preferences(str(path), skip_bad_rows=True)
    assert [r["prompt"][0]["content"] for r in rows] == ["hello", "world"]
    assert (report.total, report.kept, report.skipped) == (7, 2, 5)
    assert report.reasons["chosen: empty response"] == 2
    assert report.reasons["broken JSON line"] == 1
    assert len(report.problems) == 5 and "row 2 (line 3)" in report.problems[1]
    assert "mixed.jsonl line 6: broken JSON line" in report.problems[4]
    assert "kept 2 of 7 rows" in caplog.text and "2 x chosen: empty response" in caplog.text
    assert len(load_preferences(str(path), skip_bad_rows=True)) == 2
    with pytest.raises(DataError, match="no valid rows"):
        load_preferences([{"prompt": "x"}], skip_bad_rows=True)


# ---------------------------------------------------------------- SFT


@pytest.mark.parametrize(
    "row",
    [
        {"messages": [user("hello world"), assistant("yes please")]},
        {"prompt": "hello world", "completion": "yes please"},
        {"prompt": [user("hello world")], "completion": [assistant("yes please")]},
        {"prompt": "hello world", "response": "yes please"},
    ],
)
def test_sft_layouts(row, tmp_path):
    ds = load_sft(write_source([row], "jsonl", tmp_path))
    assert ds.column_names == ["id", "prompt", "response"]
    expected_id = content_id({"prompt": [user("hello world")], "response": "yes please"})
    assert ds[0] == {"id": expected_id, "prompt": [user("hello world")], "response": "yes please"}


def test_sft_errors_and_toy(tmp_path, monkeypatch):
    with pytest.raises(DataError, match=r"<rows> row 0: field 'response': missing field"):
        load_sft([{"prompt": "hi"}])
    with pytest.raises(DataError, match=r"'messages'.*user message"):
        load_sft([{"messages": [assistant("yes")]}])
    monkeypatch.setenv("ADPA_HOME", str(tmp_path))
    (tmp_path / "toy" / "data").mkdir(parents=True)
    (tmp_path / "toy" / "data" / "sft_train.jsonl").write_text(
        json.dumps({"prompt": "a", "response": "b"}) + "\n"
    )
    assert load_sft("toy:sft")["response"] == ["b"]


# ---------------------------------------------------------------- tokenized datasets and collation


def test_tokenize_preferences_columns_and_drops(tok, caplog):
    rows = layout_rows("a")[:2] + [{"id": "long", "prompt": "hello", "chosen": "yes " * 20, "rejected": "no"}]
    ds = load_preferences(rows)
    cfg = DataConfig(max_length=20, max_prompt_length=12, truncation="drop")
    with caplog.at_level(logging.WARNING):
        out = tokenize_preferences(ds, tok, cfg)
    assert out.column_names == [
        "id", "prompt_input_ids", "chosen_input_ids", "chosen_labels", "rejected_input_ids", "rejected_labels"
    ]  # fmt: skip
    assert out["id"] == [EXPECTED[0]["id"], EXPECTED[1]["id"]]
    assert "dropped 1 of 3 rows" in caplog.text and "response too long" in caplog.text
    first = out[0]
    assert first["prompt_input_ids"] == [BOS, USER, HELLO, WORLD, END, ASSISTANT]
    assert first["chosen_input_ids"] == [BOS, USER, HELLO, WORLD, END, ASSISTANT, YES, PLEASE, END]
    assert first["chosen_labels"] == [-100] * 5 + [YES, PLEASE, END, -100]
    assert first["rejected_input_ids"] == [BOS, USER, HELLO, WORLD, END, ASSISTANT, NO, END]
    assert first["rejected_labels"] == [-100] * 5 + [NO, END, -100]
    truncated = tokenize_preferences(ds, tok, DataConfig(max_length=20, max_prompt_length=12))
    assert len(truncated) == 3 and len(truncated[2]["chosen_input_ids"]) == 20


def test_tokenize_sft(tok):
    ds = load_sft([{"id": "s1", "prompt": "hello world", "response": "yes please"}])
    out = tokenize_sft(ds, tok, DataConfig(max_length=16, max_prompt_length=8))
    assert out.column_names == ["id", "prompt_input_ids", "input_ids", "labels"]
    assert out[0] == {
        "id": "s1",
        "prompt_input_ids": [BOS, USER, HELLO, WORLD, END, ASSISTANT],
        "input_ids": [BOS, USER, HELLO, WORLD, END, ASSISTANT, YES, PLEASE, END],
        "labels": [-100] * 5 + [YES, PLEASE, END, -100],
    }


PAIR_ROWS = [
    {"id": "r0", "chosen_input_ids": [1, 2, 3], "chosen_labels": [-100, 3, -100],
     "rejected_input_ids": [1, 2, 4, 5], "rejected_labels": [-100, 4, 5, -100]},
    {"id": "r1", "chosen_input_ids": [1, 6], "chosen_labels": [6, -100],
     "rejected_input_ids": [1, 7, 8], "rejected_labels": [7, 8, -100]},
]  # fmt: skip


def test_collate_right_padding_chosen_then_rejected():
    batch = collate(PAIR_ROWS, groups=["chosen", "rejected"], pad_id=0)
    assert batch["ids"] == ["r0", "r1"]
    assert batch["input_ids"].tolist() == [[1, 2, 3, 0], [1, 6, 0, 0], [1, 2, 4, 5], [1, 7, 8, 0]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1, 0], [1, 1, 0, 0], [1, 1, 1, 1], [1, 1, 1, 0]]
    assert batch["labels"].tolist() == [[-100, 3, -100, -100], [6, -100, -100, -100], [-100, 4, 5, -100],
                                        [7, 8, -100, -100]]  # fmt: skip
    assert batch["position_ids"].tolist() == [[0, 1, 2, 2], [0, 1, 1, 1], [0, 1, 2, 3], [0, 1, 2, 2]]
    assert all(
        batch[k].dtype == torch.long for k in ("input_ids", "attention_mask", "labels", "position_ids")
    )


def test_collate_left_padding_and_multiple_of_8():
    batch = collate(
        PAIR_ROWS, groups=["chosen", "rejected"], pad_id=0, padding_side="left", pad_to_multiple_of=8
    )
    assert batch["input_ids"].shape == (4, 8)
    assert batch["input_ids"][1].tolist() == [0] * 6 + [1, 6]
    assert batch["labels"][1].tolist() == [-100] * 6 + [6, -100]
    assert batch["attention_mask"][1].tolist() == [0] * 6 + [1, 1]
    assert batch["position_ids"][1].tolist() == [0] * 6 + [0, 1]
    assert batch["position_ids"][2].tolist() == [0] * 4 + [0, 1, 2, 3]


def test_collate_sft_group():
    rows = [
        {"id": "a", "input_ids": [1, 2], "labels": [2, -100]},
        {"id": "b", "input_ids": [3], "labels": [-100]},
    ]
    batch = collate(rows, groups=[""], pad_id=9)
    assert batch["input_ids"].tolist() == [[1, 2], [3, 9]]
    assert batch["labels"].tolist() == [[2, -100], [-100, -100]]


def test_left_and_right_padding_give_the_same_logits(tok):
    ds = tokenize_preferences(
        load_preferences(layout_rows("a")), tok, DataConfig(max_length=32, max_prompt_length=24)
    )
    rows = ds.to_list()
    model = make_llama(tok).eval()
    per_side = {}
    for side in ("right", "left"):
        batch = collate(rows, groups=["chosen", "rejected"], pad_id=tok.pad_token_id, padding_side=side)
        with torch.no_grad():
            logits = model(
                input_ids=batch["input_ids"],
                attention_mask=batch["attention_mask"],
                position_ids=batch["position_ids"],
            ).logits  # (G*B, L, V)
        mask = batch["labels"] != IGNORE_INDEX
        per_side[side] = (logits[mask], batch["labels"][mask])
    torch.testing.assert_close(per_side["left"][0], per_side["right"][0], rtol=1e-4, atol=1e-5)
    assert torch.equal(per_side["left"][1], per_side["right"][1])
