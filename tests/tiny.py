"""Tiny tokenizers and models built inside the tests (never downloaded)."""

from __future__ import annotations

from pathlib import Path

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

SPECIALS = ["<pad>", "<bos>", "<|user|>", "<|assistant|>", "<|system|>", "<|end|>", "<unk>"]
WORDS = (
    "hello world the a cat dog sat on mat is what where who how why . , ? ! yes no please thanks "
    "good bad answer question one two three four five six seven eight nine ten plus minus equals "
    "city lives in paris rome oslo lima kyiv sorry rude ok sure i you we they it"
).split()
CHAT_TEMPLATE = (
    "{{ bos_token }}{% for m in messages %}<|{{ m['role'] }}|> {{ m['content'] }} <|end|> {% endfor %}"
    "{% if add_generation_prompt %}<|assistant|> {% endif %}"
)


def make_tokenizer(words: list[str] | None = None, pad_to: int = 64) -> PreTrainedTokenizerFast:
    """A word-level tokenizer with a chat template whose end-of-turn token is `<|end|>`.

    The vocabulary is padded with filler tokens to a multiple of `pad_to` (4-bit layers need 32s).
    """
    vocab_words = SPECIALS + (words if words is not None else WORDS)
    while len(vocab_words) % pad_to:
        vocab_words.append(f"<extra_{len(vocab_words)}>")
    vocab = {w: i for i, w in enumerate(vocab_words)}
    backend = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    backend.decoder = decoders.WordPiece(prefix="##", cleanup=False)
    tok = PreTrainedTokenizerFast(
        tokenizer_object=backend, bos_token="<bos>", eos_token="<|end|>", pad_token="<pad>", unk_token="<unk>"
    )
    tok.chat_template = CHAT_TEMPLATE
    return tok


def make_llama(
    tokenizer,
    hidden: int = 32,
    layers: int = 2,
    intermediate: int = 64,
    heads: int = 2,
    seed: int = 0,
    extra_rows: int = 0,
) -> LlamaForCausalLM:
    """A randomly initialised Llama whose vocabulary is `len(tokenizer) + extra_rows` rows."""
    torch.manual_seed(seed)
    cfg = LlamaConfig(
        vocab_size=len(tokenizer) + extra_rows,
        hidden_size=hidden,
        intermediate_size=intermediate,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=heads,
        max_position_embeddings=256,
        tie_word_embeddings=True,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    model = LlamaForCausalLM(cfg)
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    return model


def save_model(path: Path, tokenizer, model) -> Path:
    """Saves a model and its tokenizer as a Hugging Face folder."""
    path = Path(path)
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path
