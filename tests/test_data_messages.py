"""The data layer's user-facing words, exactly: every refusal of adpa_core.data.rows names the row, the field
and the problem in one line (the messages below are the contract a user reads), the short reason that counts
skipped rows, the load report's summary, content ids, and the accepted multi-turn layouts.

test_data.py checks fragments of these messages through the file readers; here each message is compared
whole, so that a changed field name, a dropped detail or a reworded message fails.
"""

from __future__ import annotations

import hashlib
import json
import logging

import pytest

from adpa_core.data.rows import content_id, normalize_rows, preference_row, prompt_row, sft_row
from adpa_core.data.sources import DataError
from tests.test_data import assistant, user

WHERE = "data.jsonl line 3"
GOOD = {"prompt": "hi", "chosen": "yes", "rejected": "no"}
NINE_FIELDS = {f"k{i}": i for i in range(9)}
UNICODE = "not valid Unicode text (lone surrogate '\\u{}' at character 4; an unpaired \\uXXXX escape?)"
MISSING_PROMPT = "missing field (needed when the responses are not whole conversations)"
ALTERNATE = "(roles must alternate user/assistant after optional system messages)"
ID_TYPE = "must be a non-empty string or an integer, got "
NO_SFT_REPLY = (
    "missing field (give 'messages', or 'prompt' with 'completion' or 'response'; the row has 'prompt')"
)

# (parser, raw row, field, message after "field '<field>': ", short reason when it is not the message)
REFUSED = {
    "not an object": (preference_row, "text", None, "the row must be an object with fields, got str", None),
    "no fields": (preference_row, {}, "chosen", "missing field (the row has no fields)", "missing field"),
    "absent field": (
        preference_row,
        {"prompt": "hi", "chosen": "yes"},
        "rejected",
        "missing field (the row has 'prompt', 'chosen')",
        "missing field",
    ),
    "null field": (
        preference_row,
        {**GOOD, "rejected": None},
        "rejected",
        "missing field (it is null)",
        "missing field",
    ),
    "many fields": (
        preference_row,
        {**NINE_FIELDS, "chosen": "yes"},
        "rejected",
        "missing field (the row has 'k0', 'k1', 'k2', 'k3', 'k4', 'k5', 'k6', 'k7', ...)",
        "missing field",
    ),
    "nine fields": (
        preference_row,
        {f"k{i}": i for i in range(8)} | {"chosen": "yes"},
        "rejected",
        "missing field (the row has 'k0', 'k1', 'k2', 'k3', 'k4', 'k5', 'k6', 'k7', ...)",
        "missing field",
    ),
    "eight fields": (
        preference_row,
        {f"k{i}": i for i in range(7)} | {"chosen": "yes"},
        "rejected",
        "missing field (the row has 'k0', 'k1', 'k2', 'k3', 'k4', 'k5', 'k6', 'chosen')",
        "missing field",
    ),
    "int reply": (
        preference_row,
        {**GOOD, "chosen": 5},
        "chosen",
        "must be a string or a list of messages, got int",
        None,
    ),
    "blank reply": (preference_row, {**GOOD, "chosen": " "}, "chosen", "empty response", None),
    "reply conversation without the reply": (
        preference_row,
        {**GOOD, "chosen": [user("hi")]},
        "chosen",
        "the conversation must end with an assistant message",
        None,
    ),
    "message not an object": (
        preference_row,
        {**GOOD, "chosen": [user("hi"), "x"]},
        "chosen[1]",
        "must be an object with role and content, got str",
        "must be an object with role and content, got str",
    ),
    "surrogate in a reply": (
        preference_row,
        {**GOOD, "chosen": "bad \ud800 text"},
        "chosen",
        UNICODE.format("d800"),
        "not valid Unicode text",
    ),
    "surrogate in the prompt": (
        preference_row,
        {**GOOD, "prompt": "bad \udc00"},
        "prompt",
        UNICODE.format("dc00"),
        "not valid Unicode text",
    ),
    "surrogate in a message": (
        preference_row,
        {**GOOD, "prompt": [user("bad \udc00")]},
        "prompt[0]",
        UNICODE.format("dc00"),
        "not valid Unicode text",
    ),
    "int prompt": (
        preference_row,
        {**GOOD, "prompt": 7},
        "prompt",
        "must be a string or a list of messages, got int",
        None,
    ),
    "blank prompt": (preference_row, {**GOOD, "prompt": "  "}, "prompt", "is empty", None),
    "no messages": (preference_row, {**GOOD, "prompt": []}, "prompt", "has no user message", None),
    "only a system message": (
        preference_row,
        {**GOOD, "prompt": [{"role": "system", "content": "be kind"}]},
        "prompt",
        "has no user message",
        None,
    ),
    "prompt ends with the assistant": (
        preference_row,
        {**GOOD, "prompt": [user("a"), assistant("b")]},
        "prompt",
        "must end with a user message",
        None,
    ),
    "empty assistant turn inside the prompt": (
        preference_row,
        {**GOOD, "prompt": [user("a"), assistant(""), user("c")]},
        "prompt[1]",
        "empty assistant message",
        None,
    ),
    "empty user turn": (
        preference_row,
        {**GOOD, "prompt": [user(" ")]},
        "prompt[0]",
        "empty user message",
        None,
    ),
    "unknown role": (
        preference_row,
        {**GOOD, "prompt": [{"role": "bot", "content": "x"}]},
        "prompt[0]",
        "unknown role 'bot' (use system, user, assistant)",
        "unknown role 'bot'",
    ),
    "content not a string": (
        preference_row,
        {**GOOD, "prompt": [{"role": "user", "content": 3}]},
        "prompt[0]",
        "content must be a string, got int",
        None,
    ),
    "roles do not alternate": (
        preference_row,
        {**GOOD, "prompt": [{"role": "system", "content": "s"}, user("a"), user("b")]},
        "prompt[2]",
        f"role 'user' where 'assistant' was expected {ALTERNATE}",
        "role 'user' where 'assistant' was expected",
    ),
    "no prompt": (
        preference_row,
        {"chosen": "yes", "rejected": "no"},
        "prompt",
        MISSING_PROMPT,
        "missing field",
    ),
    "conversations disagree": (
        preference_row,
        {"chosen": [user("a"), assistant("yes")], "rejected": [user("b"), assistant("no")]},
        "rejected",
        "conversation prefix differs from the one in 'chosen'",
        None,
    ),
    "prompt disagrees": (
        preference_row,
        {"prompt": "x", "chosen": [user("a"), assistant("yes")], "rejected": [user("a"), assistant("no")]},
        "prompt",
        "does not match the conversation in 'chosen'",
        None,
    ),
    "prompt disagrees with the rejected conversation": (
        preference_row,
        {"prompt": "x", "chosen": "yes", "rejected": [user("a"), assistant("no")]},
        "prompt",
        "does not match the conversation in 'rejected'",
        None,
    ),
    "identical replies": (
        preference_row,
        {**GOOD, "rejected": " yes "},
        "rejected",
        "identical to 'chosen'",
        None,
    ),
    "boolean id": (preference_row, {**GOOD, "id": True}, "id", ID_TYPE + "True", None),
    "empty id": (preference_row, {**GOOD, "id": " "}, "id", ID_TYPE + "' '", None),
    "float id": (preference_row, {**GOOD, "id": 2.5}, "id", ID_TYPE + "2.5", None),
    "surrogate in the id": (
        preference_row,
        {**GOOD, "id": "a\ud800"},
        "id",
        UNICODE.format("d800").replace("character 4", "character 1"),
        "not valid Unicode text",
    ),
    "sft conversation ending with the user": (
        sft_row,
        {"messages": [user("a"), assistant("b"), user("c")]},
        "messages",
        "the conversation must end with an assistant message",
        None,
    ),
    "sft turns that do not alternate": (
        sft_row,
        {"messages": [user("a"), user("b"), assistant("c")]},
        "messages[1]",
        f"role 'user' where 'assistant' was expected {ALTERNATE}",
        "role 'user' where 'assistant' was expected",
    ),
    "sft messages not a list": (
        sft_row,
        {"messages": "x"},
        "messages",
        "must be a list of messages, got str",
        None,
    ),
    "sft reply without a user turn": (
        sft_row,
        {"messages": [assistant("hi")]},
        "messages",
        "needs at least one user message before the assistant reply",
        None,
    ),
    "sft without a reply": (sft_row, {"prompt": "hi"}, "response", NO_SFT_REPLY, "missing field"),
    "sft int completion": (
        sft_row,
        {"prompt": "hi", "completion": 3},
        "completion",
        "must be a string or a list of messages, got int",
        None,
    ),
    "sft not an object": (sft_row, 3, None, "the row must be an object with fields, got int", None),
    "prompt row without a prompt": (
        prompt_row,
        {"text": "x"},
        "prompt",
        "missing field (the row has 'text')",
        "missing field",
    ),
    "prompt row with a null prompt": (
        prompt_row,
        {"prompt": None},
        "prompt",
        "missing field (it is null)",
        "missing field",
    ),
    "prompt row ending with the assistant": (
        prompt_row,
        {"prompt": [user("a"), assistant("b")]},
        "prompt",
        "must end with a user message",
        None,
    ),
    "prompt row not an object": (
        prompt_row,
        [1],
        None,
        "the row must be an object with fields, got list",
        None,
    ),
    "prompt row of a bad preference": (prompt_row, {**GOOD, "chosen": " "}, "chosen", "empty response", None),
    "prompt row of a bad sft row": (
        prompt_row,
        {"prompt": "hi", "response": 3},
        "response",
        "must be a string or a list of messages, got int",
        None,
    ),
}


@pytest.mark.parametrize("case", list(REFUSED))
def test_refused_row_names_row_field_and_problem(case):
    parse, row, field, message, reason = REFUSED[case]
    with pytest.raises(DataError) as info:
        normalize_rows([(WHERE, row)], "data.jsonl", parse)
    expected = f"{WHERE}: field '{field}': {message}" if field else f"{WHERE}: {message}"
    assert str(info.value) == expected
    short = message if reason is None else reason
    field_kind = field.split("[")[0] if field else None
    assert info.value.reason == (f"{field_kind}: {short}" if field else short)


def test_skipped_rows_are_counted_by_reason_and_summarised(caplog):
    raw = [
        ("row 0", GOOD),
        ("row 1", {**GOOD, "chosen": ""}),
        ("row 2", {**GOOD, "prompt": [user("a"), user("b")]}),
        ("row 3", {**GOOD, "rejected": ""}),
        ("row 4", {**GOOD, "chosen": " "}),
    ]
    with caplog.at_level(logging.WARNING, logger="adpa_core.data.rows"):
        rows, report = normalize_rows(raw, "data.jsonl", preference_row, skip_bad_rows=True)
    assert [r["prompt"] for r in rows] == [[user("hi")]]
    assert (report.source, report.total, report.kept, report.skipped) == ("data.jsonl", 5, 1, 4)
    assert report.problems[0] == "row 1: field 'chosen': empty response"
    summary = (
        "data.jsonl: kept 1 of 5 rows; skipped: 2 x chosen: empty response, "
        "1 x prompt: role 'user' where 'assistant' was expected, 1 x rejected: empty response"
    )
    assert report.summary() == summary
    assert caplog.messages == [summary]
    with pytest.raises(DataError) as info:  # the default: the first bad row stops the load
        normalize_rows(raw, "data.jsonl", preference_row)
    assert str(info.value) == "row 1: field 'chosen': empty response"


def test_no_valid_row_names_the_first_problem():
    raw = [("row 0", {**GOOD, "chosen": ""}), ("row 1", "x")]
    with pytest.raises(DataError) as info:
        normalize_rows(raw, "data.jsonl", preference_row, skip_bad_rows=True)
    expected = "data.jsonl: no valid rows (2 read); first problem: row 0: field 'chosen': empty response"
    assert str(info.value) == expected


def test_ids_given_repeated_and_duplicated(caplog):
    raw = [("row 0", {**GOOD, "id": 7}), ("row 1", GOOD), ("row 2", GOOD), ("row 3", {**GOOD, "id": "x"})]
    with caplog.at_level(logging.INFO, logger="adpa_core.data.rows"):
        rows, _ = normalize_rows(raw, "data.jsonl", preference_row)
    base = content_id({"prompt": [user("hi")], "chosen": "yes", "rejected": "no"})
    assert [r["id"] for r in rows] == ["7", base, f"{base}-2", "x"]
    assert caplog.messages == ["data.jsonl: 1 rows repeat another row's content; their ids get a -N suffix"]
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="adpa_core.data.rows"):
        normalize_rows(raw[:2], "data.jsonl", preference_row)
    assert caplog.messages == []  # no repeat, no note
    duplicate = [
        ("row 0", {**GOOD, "id": "x"}),
        ("row 1", {"prompt": "b", "chosen": "c", "rejected": "d", "id": "x"}),
    ]
    with pytest.raises(DataError) as info:
        normalize_rows(duplicate, "data.jsonl", preference_row)
    assert str(info.value) == "row 1 (id 'x'): field 'id': duplicate id (first used at row 0)"
    assert info.value.reason == "id: duplicate id"


def test_content_id_is_the_sha1_of_the_canonical_json():
    """Sorted keys, no spaces, UTF-8 text (not \\u escapes): the same id whatever the key order or format."""
    content = {"rejected": "non", "prompt": [user("où est le café ?")], "chosen": "là"}
    canonical = '{"chosen":"là","prompt":[{"content":"où est le café ?","role":"user"}],"rejected":"non"}'
    assert content_id(content) == hashlib.sha1(canonical.encode("utf-8")).hexdigest()[:16]
    assert content_id(dict(reversed(list(content.items())))) == content_id(content)
    assert json.loads(canonical) == content


def test_accepted_multi_turn_layouts():
    turns = [{"role": "system", "content": "be brief"}, user("a"), assistant("b"), user("c")]
    conv = {"chosen": [*turns, assistant("yes")], "rejected": [*turns, assistant("no")]}
    want = {"prompt": turns, "chosen": "yes", "rejected": "no"}
    assert preference_row(conv) == want
    assert preference_row({**conv, "prompt": " c "}) == want  # the last user turn's text: the conversation's
    assert preference_row({**conv, "prompt": turns}) == want
    assert preference_row({"prompt": turns, "chosen": [assistant("yes")], "rejected": "no"}) == want
    assert sft_row({"messages": [*turns, assistant("yes")]}) == {"prompt": turns, "response": "yes"}
    assert sft_row({"prompt": "c", "completion": "ok", "response": "other"}) == {
        "prompt": [user("c")],
        "response": "ok",
    }
    assert prompt_row({"prompt": turns}) == {"prompt": turns}
    assert prompt_row({**conv}) == want
    assert prompt_row({"messages": [*turns, assistant("yes")]}) == {"prompt": turns, "response": "yes"}


def test_no_row_at_all():
    with pytest.raises(DataError) as info:
        normalize_rows([], "data.jsonl", preference_row, skip_bad_rows=True)
    assert str(info.value) == "data.jsonl: no valid rows (0 read)"


def test_a_parser_called_alone_raises_the_reason():
    """Outside normalize_rows (which adds row and field), the error's text is the problem itself."""
    with pytest.raises(Exception, match=r"^empty response$"):
        preference_row({**GOOD, "chosen": " "})


def test_accepted_single_conversations_and_empty_system_messages():
    """One reply a conversation and the other a string: the prompt is that conversation's prefix (whether
    or not a `prompt` column repeats its last user turn); a system message may be empty; an SFT row with
    `prompt` + `completion` is an SFT row for prompt_row too."""
    conv = [user("c"), assistant("yes")]
    want = {"prompt": [user("c")], "chosen": "yes", "rejected": "no"}
    assert preference_row({"chosen": conv, "rejected": "no"}) == want
    assert preference_row({"prompt": " c", "chosen": conv, "rejected": "no"}) == want
    system = [{"role": "system", "content": ""}, user("c")]
    assert preference_row({"prompt": system, "chosen": "yes", "rejected": "no"})["prompt"] == system
    assert prompt_row({"prompt": "c", "completion": "ok"}) == {"prompt": [user("c")], "response": "ok"}
