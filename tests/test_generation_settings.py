"""Greedy decoding uses exactly the stated settings, never the checkpoint's generation_config.json.

The real case: SmolLM2 with a generation_config.json that asks for a repetition penalty, an n-gram block, a
minimum length and sampling must still decode by plain argmax (y_hat, `adpa generate`, `adpa eval` and the
workbench chat all go through `adpa_core.generate`), and the settings used are recorded.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from adpa_core.cli import main
from adpa_core.data import end_of_turn_id, prompt_ids
from adpa_core.generate import decoding_settings, generate, stream_response
from tests.tiny import make_llama, make_tokenizer, save_model

PROMPTS = [
    [{"role": "user", "content": "What is the capital of France? Answer in one sentence."}],
    [{"role": "user", "content": "Name three colours of the rainbow."}],
]
NEW = 24
# Settings a checkpoint may carry; each one changes greedy replies if it leaks into generation.
LEAKY = {
    "repetition_penalty": 1.5,
    "no_repeat_ngram_size": 2,
    "min_new_tokens": 12,
    "do_sample": True,
    "temperature": 0.2,
    "top_k": 3,
}


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@torch.no_grad()
def argmax_reply(model, tokenizer, messages, max_new_tokens: int) -> list[int]:
    """A hand-written greedy loop over model(...) logits, no cache, stopping at end-of-turn or eos."""
    stop = {end_of_turn_id(tokenizer), tokenizer.eos_token_id}
    ids = prompt_ids(tokenizer, messages)
    new: list[int] = []
    for _ in range(max_new_tokens):
        logits = model(input_ids=torch.tensor([ids + new])).logits[0, -1]  # (V,)
        new.append(int(logits.argmax()))
        if new[-1] in stop:
            break
    return new


def leaky_copy(src: str | Path, dst: Path, extra: dict | None = None) -> Path:
    """A copy of a model folder (weights linked, not copied) whose generation_config.json adds LEAKY."""
    dst.mkdir(parents=True)
    for f in Path(src).iterdir():
        if f.is_file() and f.name != "generation_config.json":
            (dst / f.name).symlink_to(f.resolve())
    config = json.loads((Path(src) / "generation_config.json").read_text())
    (dst / "generation_config.json").write_text(json.dumps({**config, **LEAKY, **(extra or {})}))
    return dst


@pytest.fixture(scope="module")
def smol_leaky(smol_path, tmp_path_factory):
    path = leaky_copy(smol_path, tmp_path_factory.mktemp("smol") / "leaky")
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
    assert model.generation_config.repetition_penalty == 1.5  # the copy really carries the settings
    return path, model, AutoTokenizer.from_pretrained(path)


@pytest.mark.slow
def test_greedy_on_smollm2_is_the_argmax_loop_whatever_its_generation_config(smol_leaky):
    _, model, tok = smol_leaky
    expected = [argmax_reply(model, tok, p, NEW) for p in PROMPTS]
    got = generate(model, tok, PROMPTS, max_new_tokens=NEW, batch_size=1, progress=False)
    assert [g.token_ids for g in got] == expected
    assert "Paris" in got[0].text and got[0].stopped  # stops at <|im_end|>
    # The checkpoint's settings do change the reply when they are used: the test can fail.
    ids = torch.tensor([prompt_ids(tok, PROMPTS[0])])
    torch.manual_seed(0)
    own = model.generate(input_ids=ids, max_new_tokens=NEW, eos_token_id=expected[0][-1])[0, ids.shape[1] :]
    assert own.tolist() != expected[0]
    assert model.generation_config.repetition_penalty == 1.5  # the model's own config is left as it was


def test_stream_response_decodes_like_generate(smol_leaky):
    """The workbench chat streams through `stream_response`: the same settings, the same reply."""
    _, model, tok = smol_leaky
    stream = stream_response(model, tok, PROMPTS[0], NEW)
    while True:
        try:
            next(stream)
        except StopIteration as end:
            result = end.value
            break
    assert result.token_ids == argmax_reply(model, tok, PROMPTS[0], NEW)


def test_generate_passes_exactly_the_recorded_settings():
    tok = make_tokenizer()
    model = make_llama(tok, seed=3)
    seen = []
    real = model.generate

    def spy(**kw):
        seen.append((kw["generation_config"], model.generation_config))
        return real(**kw)

    model.generate = spy
    for greedy in (True, False):
        generate(model, tok, PROMPTS[:1], max_new_tokens=4, greedy=greedy, temperature=0.7, seed=0)
        passed, blank = seen[-1]
        settings = decoding_settings(greedy, 0.7, 4, tokenizer=tok)
        assert json.loads(json.dumps(settings)) == settings  # JSON-able
        assert {k: getattr(passed, k) for k in settings} == settings
        # nothing left for transformers to fill in from the checkpoint
        assert blank.to_diff_dict() == type(blank)().to_diff_dict()
    assert settings["eos_token_id"] == [tok.convert_tokens_to_ids("<|end|>")]
    assert decoding_settings(True, max_new_tokens=4) == {
        "do_sample": False,
        "num_beams": 1,
        "max_new_tokens": 4,
        "min_new_tokens": 0,
        "repetition_penalty": 1.0,
        "no_repeat_ngram_size": 0,
    }
    with pytest.raises(ValueError, match="temperature"):
        decoding_settings(False, 0.0)


def test_suppressed_and_banned_tokens_of_a_checkpoint_do_not_leak(tmp_path):
    """Settings whose neutral value is None (suppress_tokens, bad_words_ids...) cannot be overridden by a
    passed config in transformers 5: the model's own config is blanked during the call."""
    tok = make_tokenizer()
    path = save_model(tmp_path / "tiny", tok, make_llama(tok, seed=3))
    clean = AutoModelForCausalLM.from_pretrained(path)
    expected = argmax_reply(clean, tok, PROMPTS[0], 6)
    banned = {"suppress_tokens": expected[:1], "bad_words_ids": [expected[1:2]]}
    leaky = leaky_copy(path, tmp_path / "leaky", banned)
    model = AutoModelForCausalLM.from_pretrained(leaky)
    assert generate(model, tok, PROMPTS[:1], max_new_tokens=6, progress=False)[0].token_ids == expected


def test_adpa_generate_records_the_decoding_settings(tmp_path, capsys):
    tok = make_tokenizer()
    path = leaky_copy(save_model(tmp_path / "tiny", tok, make_llama(tok, seed=3)), tmp_path / "leaky")
    data = tmp_path / "prompts.jsonl"
    data.write_text(json.dumps({"id": "a", "prompt": "hello world"}) + "\n")
    out = tmp_path / "out.jsonl"
    args = ["generate", "--model", str(path), "--data", str(data), "--out", str(out), "--max-new-tokens", "5"]
    assert main(args) == 0
    record = json.loads(out.read_text())
    assert record["decoding"] == decoding_settings(True, max_new_tokens=5, tokenizer=tok)
    assert json.loads(capsys.readouterr().out)["decoding"] == record["decoding"]
    model = AutoModelForCausalLM.from_pretrained(path)
    assert record["token_ids"] == argmax_reply(model, tok, [{"role": "user", "content": "hello world"}], 5)
