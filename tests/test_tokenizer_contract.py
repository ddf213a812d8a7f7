"""The tokenizer contract check is linear in the vocabulary: one `len()` per tokenizer, never one per token
(`len()` of a tokenizer with many added tokens is costly). Its timing at V = 262,144 is a benchmark
(benchmarks/tokenizer_check.py); here the structure and the verdicts."""

from __future__ import annotations

import pytest

from adpa_core.models import TokenizerMismatchError, check_tokenizer_contract
from tests.tiny import SPECIALS, WORDS, make_tokenizer


@pytest.fixture
def len_calls(monkeypatch):
    """Counts `len(tokenizer)` calls per tokenizer object."""
    cls = type(make_tokenizer())
    real = cls.__len__
    calls: dict[int, int] = {}

    def counted(self):
        calls[id(self)] = calls.get(id(self), 0) + 1
        return real(self)

    monkeypatch.setattr(cls, "__len__", counted)
    return calls


def with_added(n: int, special: bool = True):
    tok = make_tokenizer()
    tok.add_tokens([f"<added_{i}>" for i in range(n)], special_tokens=special)
    return tok


def test_len_is_called_once_per_tokenizer(len_calls):
    a, b = with_added(40), with_added(40)
    assert len(a) > 100
    len_calls.clear()
    check_tokenizer_contract(a, b)
    assert len_calls == {id(a): 1, id(b): 1}


def test_len_is_called_once_per_tokenizer_on_a_mismatch(len_calls):
    a, b = with_added(40), with_added(41)
    len_calls.clear()
    with pytest.raises(TokenizerMismatchError):
        check_tokenizer_contract(a, b)
    assert set(len_calls.values()) == {1}


def test_first_differing_id_is_named():
    words = list(WORDS)
    words[-1] = "zebra"
    i = len(SPECIALS) + len(WORDS) - 1
    with pytest.raises(TokenizerMismatchError, match=rf"id {i}: student has 'it', teacher has 'zebra'"):
        check_tokenizer_contract(make_tokenizer(), make_tokenizer(words))


def test_an_extra_added_token_is_a_mismatch_at_its_id():
    a, b = with_added(3), with_added(4)
    n = len(a)
    msg = rf"id {n}: student has None, teacher has '<added_3>' \(student: {n} tokens, teacher: {n + 1}\)"
    with pytest.raises(TokenizerMismatchError, match=msg):
        check_tokenizer_contract(a, b)
    with pytest.raises(TokenizerMismatchError, match=rf"id {n}: student has '<added_3>', teacher has None"):
        check_tokenizer_contract(b, a)


def test_same_tokens_but_a_different_special_flag():
    a, b = with_added(2, special=True), with_added(2, special=False)
    with pytest.raises(TokenizerMismatchError, match=r"'<added_0>' \(id \d+\) is a special token"):
        check_tokenizer_contract(a, b)


def test_identical_tokenizers_with_many_added_tokens_pass():
    check_tokenizer_contract(with_added(300), with_added(300))
