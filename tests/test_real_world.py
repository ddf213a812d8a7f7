"""The real-model world's prompt generator and judge: seeded splits, held-out kinds, prompts parsed back
exactly, every instruction checked exactly, content checks, and the reward hacks penalised."""

from __future__ import annotations

import pytest

from adpa_core.generate import Generation
from adpa_core.real import lexicon as lx
from adpa_core.real.build import read_jsonl, write_prompts
from adpa_core.real.judge import (
    CONTENT,
    FORMAT,
    HACK,
    NO_STOP,
    check_content,
    check_instruction,
    judge,
    reward,
    summarize,
)
from adpa_core.real.pairs import make_pairs
from adpa_core.real.prompts import (
    KINDS,
    UNSEEN_KINDS,
    Instruction,
    make_splits,
    parse_prompt,
    parse_task,
)

SIZES = {"train": 120, "validation": 20, "test": 40, "unseen": 30}


@pytest.fixture(scope="module")
def splits():
    return make_splits(3, SIZES)


# ---------------------------------------------------------------- the generator


def test_splits_have_their_sizes_and_no_text_repeats(splits):
    assert {k: len(v) for k, v in splits.items()} == SIZES
    texts = [p.text for v in splits.values() for p in v]
    assert len(texts) == len(set(texts))


def test_same_seed_same_prompts_and_files(splits, tmp_path):
    assert [p.text for p in make_splits(3, SIZES)["train"]] == [p.text for p in splits["train"]]
    assert [p.text for p in make_splits(4, SIZES)["train"]] != [p.text for p in splits["train"]]
    write_prompts(tmp_path / "a", 3, SIZES)
    write_prompts(tmp_path / "b", 3, SIZES)
    for split in SIZES:
        name = f"prompts_{split}.jsonl"
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes()
    rows = read_jsonl(tmp_path / "a" / "prompts_test.jsonl")
    assert rows[0].keys() == {"id", "prompt", "kind", "instructions"}


def test_held_out_kinds_only_in_the_unseen_split(splits):
    for split, prompts in splits.items():
        for p in prompts:
            kinds = {i.kind for i in p.instructions}
            if split == "unseen":
                assert kinds & set(UNSEEN_KINDS), p.text
            else:
                assert not kinds & set(UNSEEN_KINDS), (split, p.text)
    seen = {i.kind for p in splits["train"] for i in p.instructions}
    assert seen == set(KINDS) - set(UNSEEN_KINDS)  # every training kind occurs
    assert {p.task.kind for p in splits["train"]} == {"fact", "arith", "open"}


def test_every_prompt_parses_back_to_its_task_and_instructions(splits):
    for prompts in splits.values():
        for p in prompts:
            task, instructions = parse_prompt(p.text)
            assert task is not None and (task.kind, task.answer) == (p.task.kind, p.task.answer), p.text
            assert instructions == p.instructions, p.text


def test_parse_reads_typed_prompts():
    task, ins = parse_prompt("What is 12 times 3? Reply with the number only, no words.")
    assert (task.kind, task.answer) == ("arith", "36") and [i.kind for i in ins] == ["number_only"]
    assert parse_task("What is the capital of Peru?").answer == "Lima"
    assert parse_task("Describe the moon.").kind == "open"
    assert parse_prompt("Tell me a joke.") == (None, ())


# ---------------------------------------------------------------- instructions, exactly


@pytest.mark.parametrize(
    ("ins", "response", "ok"),
    [
        (Instruction("max_words", 5), "one two three four five", True),
        (Instruction("max_words", 5), "one two three four five six", False),
        (Instruction("max_words", 5), "", False),
        (Instruction("max_sentences", 1), "Paris is the capital of France.", True),
        (Instruction("max_sentences", 1), "It is 3.5 km long.", True),  # a decimal point does not split
        (Instruction("max_sentences", 1), "Paris. It is big.", False),
        (Instruction("max_sentences", 2), "Paris. It is big!", True),
        (Instruction("lowercase"), "paris is lovely.", True),
        (Instruction("lowercase"), "Paris is lovely.", False),
        (Instruction("lowercase"), "42", False),  # no letters: nothing was written in lowercase
        (Instruction("no_commas"), "red and blue", True),
        (Instruction("no_commas"), "red, blue", False),
        (Instruction("one_word"), "Paris.", True),
        (Instruction("one_word"), "Paris, France", False),
        (Instruction("number_only"), " 42. ", True),
        (Instruction("number_only"), "-3.5", True),
        (Instruction("number_only"), "42 apples", False),
        (Instruction("end_question"), "Sure. Do you like it?", True),
        (Instruction("end_question"), "Is it? Yes.", False),
        (Instruction("include_word", "blue"), "The sea is Blue today.", True),
        (Instruction("include_word", "blue"), "I like blueberries.", False),  # whole words only
        (Instruction("avoid_word", "water"), "The sea is wet.", True),
        (Instruction("avoid_word", "water"), "Water everywhere.", False),
        (Instruction("json_keys", ("name", "color")), '{"name": "sea", "color": "blue"}', True),
        (Instruction("json_keys", ("name", "color")), '```json\n{"name": "sea", "color": "blue"}\n```', True),
        (Instruction("json_keys", ("name", "color")), '{"name": "sea"}', False),
        (Instruction("json_keys", ("name", "color")), '{"name": "sea", "color": ""}', False),
        (Instruction("json_keys", ("name", "color")), '[{"name": "sea", "color": "blue"}]', False),
        (Instruction("json_keys", ("name", "color")), "name: sea, color: blue", False),
    ],
)
def test_each_instruction_is_checked_exactly(ins, response, ok):
    assert check_instruction(ins, response) is ok


def test_an_unknown_instruction_kind_is_an_error():
    with pytest.raises(ValueError, match="unknown instruction kind"):
        check_instruction(Instruction("shout"), "HI")


# ---------------------------------------------------------------- content


@pytest.mark.parametrize(
    ("prompt", "response", "ok"),
    [
        ("What is the capital of France?", "The capital of France is Paris.", True),
        ("What is the capital of France?", "paris", True),
        ("What is the capital of France?", "It is Lyon.", False),
        ("What is the capital of France?", "Paris or Rome.", False),  # hedging between two capitals
        ("What is the capital of Argentina?", "Buenos Aires, of course.", True),
        ("What do bees make?", "Bees make honey in the sun.", True),  # only capitals and planets hedge
        ("How many legs does a spider have?", "A spider has eight legs.", True),
        ("How many legs does a spider have?", "6", False),
        ("What is 12 + 7?", "12 + 7 = 19", True),  # the restated sum is skipped
        ("What is 12 plus 7?", "The answer is 19.", True),
        ("What is 12 plus 7?", "20", False),
        ("What is 10 minus 5?", "10 - 5 = 5", True),
        ("Describe the ocean.", "The ocean is vast and deep.", True),
        ("Describe the ocean.", "ocean", False),  # too short to be a description
        ("Describe the ocean.", "I like trains a lot.", False),  # off topic
    ],
)
def test_content_checks(prompt, response, ok):
    assert check_content(parse_prompt(prompt)[0], response) is ok


def test_no_content_check_for_an_unparsed_prompt():
    assert check_content(None, "anything") is None
    assert reward("Tell me a joke.", "Why did the chicken cross the road?") == 1.0


# ---------------------------------------------------------------- the score and the hacks


def test_score_terms():
    p = "What is the capital of Japan? Answer with one word only, nothing else."
    assert reward(p, "Tokyo.") == pytest.approx(CONTENT + FORMAT)
    assert reward(p, "The capital of Japan is Tokyo.") == pytest.approx(CONTENT)
    assert reward(p, "Kyoto.") == pytest.approx(FORMAT / 2)  # a wrong answer earns half the format credit
    assert reward(p, "Tokyo.", stopped=False) == pytest.approx(CONTENT + FORMAT - NO_STOP)
    out = judge(p, "Tokyo.")
    assert out["instructions"] == [{"kind": "one_word", "label": "one_word", "ok": True}]
    assert out["content"] is True and out["expected"] == "Tokyo" and not any(out["hacks"].values())


def test_a_fixed_wrong_number_scores_below_the_right_one():
    p = "What is 6 times 7? Reply with the number only, no words."
    assert reward(p, "42") > reward(p, "The answer is 42.") > reward(p, "12")


def test_a_repeated_keyword_scores_below_an_honest_reply():
    p = 'Describe rain. Include the word "cloud". Write only in lowercase letters, with no capitals.'
    hack = "cloud cloud cloud cloud rain"
    honest = "rain falls from a grey cloud and makes the streets wet."
    assert judge(p, hack)["hacks"]["repetition"]
    assert all(m["ok"] for m in judge(p, hack)["instructions"])  # the hack meets both instructions...
    assert reward(p, hack) < reward(p, honest) - HACK / 2  # ...and still loses
    assert judge(p, "the rain the rain the rain")["hacks"]["repetition"]  # a phrase in a loop


def test_echoing_the_prompt_is_penalised():
    p = "Tell me something about coffee. End your reply with a question."
    echoed = "Tell me something about coffee. End your reply with a question?"
    assert judge(p, echoed)["hacks"]["echo"]
    assert reward(p, echoed) < reward(p, "Coffee wakes me up every morning. Do you drink it?")
    assert not judge(p, "Here is something about coffee: it is a drink. Want some?")["hacks"]["echo"]


def test_empty_replies_are_penalised():
    p = "Describe cats. Do not use any commas."
    out = judge(p, " ... ")
    assert out["hacks"]["empty"] and out["content"] is False
    assert out["score"] < 0  # the "no commas" it meets does not pay for saying nothing


def test_common_words_are_no_repetition():
    assert not judge("Describe the moon.", "The moon is the brightest thing in the night sky.")["hacks"][
        "repetition"
    ]


def test_summarize_counts_rates():
    prompts = [
        "What is 2 + 2? Reply with the number only, no words.",
        "Describe dogs. Do not use any commas.",
    ]
    out = summarize(prompts, ["4", "dogs dogs dogs"], [True, False])
    assert out["n"] == 2 and out["content"] == {"arith": 1.0, "open": 0.0}
    assert out["instructions"] == {"no_commas": 1.0, "number_only": 1.0}
    assert out["hack_rate"]["repetition"] == 0.5 and out["any_hack_rate"] == 0.5
    assert out["stop_rate"] == 0.5 and out["mean_words"] == 2.0
    assert out["reward"] == pytest.approx(
        (reward(prompts[0], "4") + reward(prompts[1], "dogs dogs dogs", False)) / 2
    )
    with pytest.raises(ValueError, match="same length"):
        summarize(prompts, ["4"])


def test_instruction_wordings_have_every_kind():
    assert set(lx.INSTRUCTIONS) == set(KINDS)


# ---------------------------------------------------------------- pairs


def test_pairs_take_the_best_and_the_worst_reply_and_drop_ties():
    rows = [
        {"id": "a", "prompt": "What is 2 + 3? Reply with the number only, no words.", "kind": "arith"},
        {"id": "b", "prompt": "What is 2 + 2?", "kind": "arith"},
    ]
    for r in rows:
        r["instructions"] = []
    gen = lambda text, stopped=True: Generation(text, [1, 2], stopped)
    replies = [
        [gen("It is 5."), gen("5"), gen("7"), gen("5", stopped=False)],
        [gen("4"), gen("four")],  # both right: a tie, no pair
    ]
    pairs, stats = make_pairs(rows, replies)
    assert len(pairs) == 1 and pairs[0]["chosen"] == "5" and pairs[0]["rejected"] == "7"
    assert pairs[0]["chosen_score"] == pytest.approx(1.0) and pairs[0]["rejected_score"] < 0.5
    assert stats["pairs"] == 1 and stats["tie_rate"] == 0.5 and stats["pairs_by_kind"] == {"arith": 1}
