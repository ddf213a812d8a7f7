"""Generation: stopping at end-of-turn, left-padded batches, streaming, JSONL keyed by example id."""

from __future__ import annotations

import copy
import json

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from adpa_core.data import DataError
from adpa_core.generate import (
    Generation,
    generate,
    generate_responses,
    read_generations_jsonl,
    stream_response,
    write_generations_jsonl,
)
from tests.tiny import make_llama, make_tokenizer

END = 5  # <|end|> in the tiny tokenizer
SCRIPT = {"<|assistant|>": "yes", "yes": "please", "please": "thanks", "thanks": "<|end|>"}


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Tiny models run far faster on one thread than on shared, busy cores."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def tok():
    return make_tokenizer()


def scripted_model(tok, script: dict[str, str]) -> LlamaForCausalLM:
    """A Llama whose next token depends only on the current one: `script[token]`, else <|end|>.

    Attention and MLP outputs are zeroed, embeddings are one-hot and the head maps token a to script[a].
    """
    vocab = len(tok)
    cfg = LlamaConfig(
        vocab_size=vocab, hidden_size=vocab, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2,
        num_key_value_heads=2, max_position_embeddings=128, tie_word_embeddings=False,
        bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id,
    )  # fmt: skip
    model = LlamaForCausalLM(cfg)
    head = torch.zeros(vocab, vocab)
    head[END, :] = 0.5
    for current, following in script.items():
        head[tok.convert_tokens_to_ids(following), tok.convert_tokens_to_ids(current)] = 1.0
    with torch.no_grad():
        model.model.embed_tokens.weight.copy_(torch.eye(vocab))
        for layer in model.model.layers:
            layer.self_attn.o_proj.weight.zero_()
            layer.mlp.down_proj.weight.zero_()
        model.lm_head.weight.copy_(head)
    return model


@pytest.fixture(scope="module")
def scripted(tok):
    return scripted_model(tok, SCRIPT)


@pytest.fixture(scope="module")
def random_model(tok):
    """A random float64 Llama with large weights: outputs depend on the whole prompt and differ per prompt."""
    model = make_llama(tok, seed=3)
    with torch.no_grad():
        for param in model.parameters():
            if param.dim() == 2:
                param.normal_(0.0, 0.3)
    return model.double()


def user(text):
    return [{"role": "user", "content": text}]


PROMPTS = [user("hello"), user("hello world the cat sat on the mat"), user("where is paris ?"), user("a"),
           user("what is one plus two ?"), user("the dog")]  # fmt: skip


def test_stops_at_end_of_turn(tok, scripted):
    gens = generate(scripted, tok, PROMPTS[:2], max_new_tokens=10, progress=False)
    for gen in gens:
        assert gen == Generation(text="yes please thanks", token_ids=[26, 28, 29, END], stopped=True)


def test_not_stopped_when_max_new_tokens_is_hit(tok, scripted):
    gen = generate(scripted, tok, [user("hello")], max_new_tokens=2, progress=False)[0]
    assert gen == Generation(text="yes please", token_ids=[26, 28], stopped=False)
    exact = generate(scripted, tok, [user("hello")], max_new_tokens=4, progress=False)[0]
    assert exact.stopped and exact.token_ids[-1] == END


def test_stops_at_end_of_turn_or_eos_when_they_differ(tok, scripted):
    please = tok.convert_tokens_to_ids("please")  # pretend it is the end-of-turn token (eos stays <|end|>)
    gen = generate(scripted, tok, [user("hello")], max_new_tokens=5, eot_id=please, progress=False)[0]
    assert gen == Generation(text="yes", token_ids=[26, please], stopped=True)
    to_eos = scripted_model(tok, {"<|assistant|>": "yes"})  # then <|end|>, the eos
    gen = generate(to_eos, tok, [user("hello")], max_new_tokens=5, eot_id=please, progress=False)[0]
    assert gen == Generation(text="yes", token_ids=[26, END], stopped=True)


def test_batched_equals_one_by_one(tok, random_model):
    lengths = {len(p[0]["content"].split()) for p in PROMPTS}
    assert len(lengths) >= 4  # different prompt lengths share batches: left padding must be right
    batched = generate(random_model, tok, PROMPTS, max_new_tokens=8, batch_size=4, progress=False)
    single = [generate(random_model, tok, [p], max_new_tokens=8, progress=False)[0] for p in PROMPTS]
    assert batched == single
    assert len({tuple(g.token_ids) for g in single}) > 1  # the check is not vacuous


def test_train_mode_is_restored(tok, scripted):
    scripted.train()
    generate(scripted, tok, [user("hello")], max_new_tokens=3, progress=False)
    assert scripted.training
    list(stream_response(scripted, tok, user("hello"), 3))
    assert scripted.training
    scripted.eval()
    generate(scripted, tok, [user("hello")], max_new_tokens=3, progress=False)
    assert not scripted.training


def test_sampling_is_seeded_and_leaves_the_global_rng_alone(tok, random_model):
    state = torch.random.get_rng_state()
    kwargs = {"max_new_tokens": 6, "greedy": False, "temperature": 1.5, "seed": 7, "progress": False}
    first = generate(random_model, tok, PROMPTS[:3], **kwargs)
    assert generate(random_model, tok, PROMPTS[:3], **kwargs) == first
    assert torch.equal(torch.random.get_rng_state(), state)
    with pytest.raises(ValueError, match="temperature"):
        generate(random_model, tok, PROMPTS[:1], greedy=False, temperature=0.0)


def test_generate_responses_is_the_texts(tok, scripted):
    assert (
        generate_responses(scripted, tok, PROMPTS[:3], max_new_tokens=10, progress=False)
        == ["yes please thanks"] * 3
    )


@pytest.mark.parametrize("which", ["scripted", "random_model"])
def test_stream_grows_to_the_batched_result(tok, which, request):
    model = request.getfixturevalue(which)
    for prompt in PROMPTS[:3]:
        texts = list(stream_response(model, tok, prompt, 8))
        assert texts, "the stream yields at least once"
        for shorter, longer in zip(texts, texts[1:], strict=False):
            assert longer.startswith(shorter) and len(longer) > len(shorter)
        assert texts[-1] == generate(model, tok, [prompt], max_new_tokens=8, progress=False)[0].text


def test_stream_yields_each_step(tok, scripted):
    assert list(stream_response(scripted, tok, user("hello"), 10)) == [
        "yes",
        "yes please",
        "yes please thanks",
    ]
    assert list(stream_response(scripted, tok, user("hello"), 2)) == ["yes", "yes please"]


def test_stream_can_be_closed_early(tok, random_model):
    random_model.train()
    stream = stream_response(random_model, tok, user("hello"), 50)
    assert next(stream)
    assert not random_model.training  # eval mode while streaming
    stream.close()  # stops the worker thread and restores the mode
    assert random_model.training
    random_model.eval()


def test_peft_model(tok, random_model):
    peft = pytest.importorskip("peft")
    config = peft.LoraConfig(r=2, target_modules=["q_proj", "v_proj"])
    lora = peft.get_peft_model(copy.deepcopy(random_model), config)  # LoRA starts as a no-op
    expected = generate(random_model, tok, PROMPTS[:3], max_new_tokens=5, progress=False)
    assert generate(lora, tok, PROMPTS[:3], max_new_tokens=5, progress=False) == expected
    assert list(stream_response(lora, tok, PROMPTS[0], 5))[-1] == expected[0].text


# ---------------------------------------------------------------- JSONL keyed by example id


def test_jsonl_round_trip(tmp_path, tok, scripted):
    gens = generate(scripted, tok, PROMPTS[:2], max_new_tokens=10, progress=False)
    path = tmp_path / "run" / "generations" / "y_hat.jsonl"
    write_generations_jsonl(path, ["b", "a"], PROMPTS[:2], gens, extra={"model": "tiny"})
    records = read_generations_jsonl(path)
    assert list(records) == ["b", "a"]
    assert records["a"] == {
        "id": "a", "prompt": PROMPTS[1], "response": "yes please thanks", "stopped": True,
        "token_ids": [26, 28, 29, END], "model": "tiny",
    }  # fmt: skip
    assert [p.name for p in path.parent.iterdir()] == ["y_hat.jsonl"]  # no temp file left behind
    write_generations_jsonl(path, ["x"], PROMPTS[:1], ["plain text"], extra=[{"reward": 1.5}])
    assert read_generations_jsonl(path) == {"x": {"id": "x", "prompt": PROMPTS[0], "response": "plain text",
                                                  "reward": 1.5}}  # fmt: skip


def test_jsonl_errors(tmp_path):
    with pytest.raises(ValueError, match="unique"):
        write_generations_jsonl(tmp_path / "g.jsonl", ["a", "a"], PROMPTS[:2], ["x", "y"])
    with pytest.raises(ValueError, match="lengths differ"):
        write_generations_jsonl(tmp_path / "g.jsonl", ["a"], PROMPTS[:2], ["x", "y"])
    assert not (tmp_path / "g.jsonl").exists()
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"id": "a", "response": "x"}) + "\n{broken\n", encoding="utf-8")
    with pytest.raises(DataError, match="bad.jsonl line 2: broken JSON"):
        read_generations_jsonl(bad)
    bad.write_text(json.dumps({"id": "a", "response": "x"}) + "\n" + json.dumps({"id": "a", "response": "y"}))
    with pytest.raises(DataError, match="duplicate id"):
        read_generations_jsonl(bad)
    with pytest.raises(DataError, match="not found"):
        read_generations_jsonl(tmp_path / "missing.jsonl")
