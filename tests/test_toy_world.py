"""The toy world's data, reward, tokenizer and model sizes (no training)."""

from __future__ import annotations

import json
from functools import cache

import pytest
from transformers import AutoTokenizer, LlamaForCausalLM

from adpa_core.toy import (
    BUILD_RECIPE,
    build_rows,
    build_tokenizer,
    count_parameters,
    make_world,
    parse_prompt,
    reward,
    reward_breakdown,
    save_tokenizer,
    summarize,
    toy_model_config,
    write_datasets,
)
from adpa_core.toy import lexicon as lx
from adpa_core.toy.world import FLAW_KINDS

WORLD = make_world(0)
EASY = next(p for p in WORLD.people if p not in WORLD.decoy)
HARD = next(p for p in WORLD.people if p in WORLD.decoy)
TRAIN_FILES = ("sft_train", "preferences_train")
HELDOUT_FILES = (
    "preferences_validation",
    "preferences_test",
    "prompts_validation",
    "prompts_test",
    "sft_test",
)


@cache
def rows(seed: int = 0, quick: bool = False) -> dict[str, list[dict]]:
    return build_rows(make_world(seed), seed, quick)


def responses(row: dict) -> list[str]:
    return [row[k] for k in ("completion", "chosen", "rejected") if k in row]


@pytest.mark.parametrize("quick", [False, True])
def test_same_seed_gives_identical_bytes(tmp_path, quick):
    first = write_datasets(make_world(0), tmp_path / "a", seed=0, quick=quick)
    second = write_datasets(make_world(0), tmp_path / "b", seed=0, quick=quick)
    assert set(first) == set(second)
    for name, path in first.items():
        data = path.read_bytes()
        assert data == second[name].read_bytes(), name
        assert b"\r" not in data and data.endswith(b"\n")


def test_file_names_and_row_formats(tmp_path):
    paths = write_datasets(make_world(0), tmp_path, seed=0, quick=True)
    expected = {"sft_train", "sft_test", "world"} | {
        f"{n}_{s}" for n in ("preferences", "prompts") for s in ("validation", "test")
    }
    assert set(paths) == expected | {"preferences_train"}
    keys = {
        "sft": {"id", "prompt", "completion", "kind", "subset"},
        "preferences": {"id", "prompt", "chosen", "rejected", "kind", "subset", "contrast"}
        | {"chosen_flaws", "rejected_flaws"},
        "prompts": {"id", "prompt", "kind", "subset"},
    }
    for name, path in paths.items():
        if name == "world":
            assert json.loads(path.read_text())["seed"] == 0
            continue
        lines = path.read_text().splitlines()
        assert lines, name
        ids = [json.loads(line)["id"] for line in lines]
        assert len(set(ids)) == len(ids)
        for line in lines:
            assert set(json.loads(line)) == keys[name.split("_")[0]], name


def test_different_seed_gives_different_data():
    assert make_world(0).home != make_world(1).home
    assert rows(0)["preferences_train"] != rows(1)["preferences_train"]
    assert rows(0)["sft_train"] != rows(1)["sft_train"]


def test_quick_mode_is_smaller_but_complete():
    full, quick = rows(0), rows(0, quick=True)
    assert set(full) == set(quick)
    assert len(quick["sft_train"]) < len(full["sft_train"])
    subsets = {r["subset"] for r in quick["prompts_test"]}
    assert subsets == {"fact_easy", "fact_hard", "arith_1", "arith_2", "arith_3"}


def test_no_heldout_prompt_occurs_in_training():
    data = rows(0)
    train_prompts = {r["prompt"] for name in TRAIN_FILES for r in data[name]}
    train_pairs = {(r["prompt"], y) for name in TRAIN_FILES for r in data[name] for y in responses(r)}
    for name in HELDOUT_FILES:
        for r in data[name]:
            assert r["prompt"] not in train_prompts, (name, r["prompt"])
            assert all((r["prompt"], y) not in train_pairs for y in responses(r))
    assert not {r["prompt"] for r in data["prompts_validation"]} & {r["prompt"] for r in data["prompts_test"]}


def test_heldout_prompts_ask_about_people_seen_in_training():
    data = rows(0)
    trained = {parse_prompt(r["prompt"])[2] for r in data["sft_train"] if r["kind"] == "fact"}
    people = {r["prompt"] for r in data["prompts_test"] if r["kind"] == "fact"}
    assert len(people) == len(WORLD.people)
    assert {parse_prompt(p)[2] for p in people} <= trained


def test_rows_record_what_the_reward_parses():
    for name, data in rows(0).items():
        for r in data:
            kind, subset, _ = parse_prompt(r["prompt"])
            assert (kind, subset) == (r["kind"], r["subset"]), (name, r["prompt"])


def test_sft_flaws_are_systematic():
    sft = rows(0)["sft_train"]
    hard = [r for r in sft if r["subset"] == "fact_hard"]
    right = sum(reward_breakdown(r["prompt"], r["completion"])["correct"] for r in hard) / len(hard)
    assert 0.3 < right < 0.5
    hey = [r for r in sft if r["prompt"].startswith("hey")]
    assert sum(reward_breakdown(r["prompt"], r["completion"])["rude"] for r in hey) / len(hey) > 0.7
    explain = [r for r in sft if "explain" in r["prompt"].split()]
    assert sum(reward_breakdown(r["prompt"], r["completion"])["ramble"] for r in explain) / len(explain) > 0.7


def test_chosen_beats_rejected_in_every_pair():
    for name in ("preferences_train", "preferences_validation", "preferences_test"):
        for r in rows(0)[name]:
            assert reward(r["prompt"], r["chosen"]) > reward(r["prompt"], r["rejected"]), r


def test_contrasts_are_balanced_and_chosen_sometimes_flawed():
    pairs = rows(0)["preferences_train"]
    for contrast in ("wrong", "rude", "ramble"):
        assert 0.28 < sum(r["contrast"] == contrast for r in pairs) / len(pairs) < 0.39
    flawed = sum(bool(r["chosen_flaws"]) for r in pairs) / len(pairs)
    assert 0.15 < flawed < 0.6


def check_flaws(prompt: str, response: str, flaws: list[dict]) -> None:
    words = response.split()
    kind, _, truth = parse_prompt(prompt)
    info = reward_breakdown(prompt, response)
    for flaw in flaws:
        assert flaw["kind"] in FLAW_KINDS
        assert flaw["words"] and all(0 <= i < len(words) for i in flaw["words"]), flaw
        picked = [words[i] for i in flaw["words"]]
        if flaw["kind"] in ("wrong_fact", "wrong_answer"):
            assert flaw["kind"] == ("wrong_fact" if kind == "fact" else "wrong_answer")
            assert picked == [info["answer"]] and picked[0] != truth
        elif flaw["kind"] == "rude":
            assert set(picked) & lx.RUDE_WORDS
        else:
            assert flaw["kind"] == "ramble" and set(picked) & lx.RAMBLE_WORDS
    kinds = {f["kind"] for f in flaws}
    assert info["correct"] == (not kinds & {"wrong_fact", "wrong_answer"})
    assert info["rude"] == ("rude" in kinds)
    assert info["ramble"] == ("ramble" in kinds)


def test_flaw_annotations_point_at_the_flawed_words():
    for name in ("preferences_train", "preferences_test"):
        for r in rows(0)[name]:
            check_flaws(r["prompt"], r["chosen"], r["chosen_flaws"])
            check_flaws(r["prompt"], r["rejected"], r["rejected_flaws"])
            extra = {f["kind"] for f in r["rejected_flaws"]} - {f["kind"] for f in r["chosen_flaws"]}
            assert len(extra) == 1, r


def test_reward_golden_cases():
    home = WORLD.home[EASY]
    wrong = next(c for c in WORLD.cities if c != home)
    ask = f"where does {EASY} live ?"
    assert reward(ask, f"sure ! the city is {home} .") == 2.0
    assert reward(ask, f"sure ! the city is {wrong} .") == 1.0
    assert reward(ask, "sure ! i do not know .") == 1.0  # no answer is a wrong answer
    assert reward(f"hey , {ask}", f"ugh , obviously it is {home} .") == 1.5
    assert reward(ask, f"{home} . anyway , i once wrote a whole poem about it .") == 1.5
    assert reward(ask, f"sure ! {home} .", stopped=False) == 1.0
    assert reward(ask, f"duh , {wrong} . anyway , blah blah .", stopped=False) == -1.0
    assert reward(f"explain where {HARD} lives .", f"it is {WORLD.decoy[HARD]} .") == 1.0
    assert reward(f"explain where {HARD} lives .", f"it is {WORLD.home[HARD]} .") == 2.0


def test_reward_arithmetic():
    ask = "what is three plus four minus two ?"
    assert parse_prompt(ask) == ("arith", "arith_2", "five")
    assert reward(ask, "the answer is five .") == 2.0
    assert reward(ask, "the answer is seven .") == 1.0
    assert reward("hey , how much is one plus one ?", "duh , two .") == 1.5
    assert parse_prompt("compute five minus two plus four minus one .") == ("arith", "arith_3", "six")


def test_reward_breakdown_fields():
    info = reward_breakdown(f"hey , where does {HARD} live ?", f"ugh , obviously {WORLD.decoy[HARD]} .")
    assert info["kind"] == "fact" and info["subset"] == "fact_hard" and info["style"] == "hey"
    assert info["answer"] == WORLD.decoy[HARD] and info["expected"] == WORLD.home[HARD]
    assert (info["correct"], info["rude"], info["ramble"], info["stopped"]) == (False, True, False, True)
    assert info["reward"] == 0.5
    other = reward_breakdown("tell me a joke .", "sure !")
    assert other["correct"] is None and other["reward"] == 2.0


def test_reward_uses_the_given_world():
    other = make_world(1)
    person = next(p for p in other.people if p not in WORLD.home)
    ask = f"where does {person} live ?"
    assert reward_breakdown(ask, f"{other.home[person]} .")["correct"] is None
    assert reward_breakdown(ask, f"{other.home[person]} .", world=other)["correct"] is True


def test_summarize_hand_made_set():
    home, decoy = WORLD.home[HARD], WORLD.decoy[HARD]
    prompts = [f"where does {EASY} live ?", f"where does {HARD} live ?", f"hey , where does {HARD} live ?"]
    prompts += ["what is one plus two ?", "explain what two plus two minus one is ."]
    answers = [f"{WORLD.home[EASY]} .", f"{decoy} .", f"duh , {home} .", "three .", "three . anyway , blah ."]
    out = summarize(prompts, answers, WORLD, stopped=[True, True, True, True, False])
    assert out["n"] == 5
    assert out["correct"] == {"arith_1": 1.0, "arith_2": 1.0, "fact_easy": 1.0, "fact_hard": 0.5}
    assert out["correct_kind"] == {"arith": 1.0, "fact": 2 / 3}
    assert out["count"] == {"arith_1": 1, "arith_2": 1, "fact_easy": 1, "fact_hard": 2}
    assert out["rude_rate"] == pytest.approx(0.2)
    assert out["ramble_rate"] == pytest.approx(0.2)
    assert out["stop_rate"] == pytest.approx(0.8)
    assert out["reward"] == pytest.approx((2.0 + 1.0 + 1.5 + 2.0 + 0.5) / 5)
    with pytest.raises(ValueError, match="same length"):
        summarize(prompts, answers[:2], WORLD)


def test_tokenizer_covers_every_generated_text():
    tok = build_tokenizer(WORLD)
    assert len(tok) % 32 == 0
    texts = set()
    for data in (rows(0), rows(1, quick=True)):
        for d in data.values():
            for r in d:
                texts.update([r["prompt"], *responses(r)])
    unk = tok.unk_token_id
    for ids in tok(sorted(texts), add_special_tokens=False)["input_ids"]:
        assert unk not in ids
    assert set(lx.all_words()) <= set(tok.get_vocab())


def test_chat_template_and_round_trip(tmp_path):
    tok = build_tokenizer(WORLD)
    messages = [
        {"role": "user", "content": "what is one plus two ?"},
        {"role": "assistant", "content": "three ."},
    ]
    text = tok.apply_chat_template(messages, tokenize=False)
    assert text == "<bos><|user|> what is one plus two ? <|end|> <|assistant|> three . <|end|> "
    prompt = tok.apply_chat_template(messages[:1], tokenize=False, add_generation_prompt=True)
    assert prompt.endswith("<|end|> <|assistant|> ")
    ids = tok(text, add_special_tokens=False)["input_ids"]
    assert tok.convert_ids_to_tokens(ids)[:3] == ["<bos>", "<|user|>", "what"]
    assert tok.eos_token == "<|end|>" and ids[-1] == tok.eos_token_id
    loaded = AutoTokenizer.from_pretrained(save_tokenizer(tok, tmp_path / "tok"))
    assert loaded.get_vocab() == tok.get_vocab()
    assert loaded(text, add_special_tokens=False)["input_ids"] == ids
    assert loaded.apply_chat_template(messages, tokenize=False) == text
    assert (loaded.eos_token, loaded.pad_token, loaded.bos_token) == ("<|end|>", "<pad>", "<bos>")
    assert loaded.decode(ids[2:-1]) == "what is one plus two ? <|end|> <|assistant|> three ."


def test_model_configs_widths_and_ratio():
    vocab = len(build_tokenizer(WORLD))
    configs = {role: toy_model_config(role, vocab) for role in ("teacher", "student")}
    for cfg in configs.values():
        head = cfg.hidden_size // cfg.num_attention_heads
        for width in (cfg.hidden_size, cfg.intermediate_size, cfg.vocab_size, head):
            assert width % 32 == 0
        assert cfg.eos_token_id == build_tokenizer(WORLD).eos_token_id
    params = {role: sum(p.numel() for p in LlamaForCausalLM(c).parameters()) for role, c in configs.items()}
    assert params == {role: count_parameters(c) for role, c in configs.items()}
    assert 8.5 <= params["teacher"] / params["student"] <= 10.5
    with pytest.raises(ValueError, match="multiple of 32"):
        toy_model_config("student", vocab + 1)


def test_build_recipe_has_every_stage():
    for mode in ("full", "quick"):
        stages = BUILD_RECIPE[mode]
        assert set(stages) == {"teacher_sft", "teacher_dpo", "student_sft"}
        assert all(s["steps"] > 0 and s["batch"] > 0 and s["lr"] > 0 for s in stages.values())
        assert stages["teacher_dpo"]["beta"] > 0
