"""The toy world's word-level tokenizer, built offline and saved in Hugging Face format."""

from __future__ import annotations

from pathlib import Path

from tokenizers import Tokenizer, decoders, models, pre_tokenizers
from transformers import PreTrainedTokenizerFast

from adpa_core.toy import lexicon as lx
from adpa_core.toy.world import ToyWorld

SPECIALS = ("<pad>", "<bos>", "<|user|>", "<|assistant|>", "<|system|>", "<|end|>", "<unk>")
END_OF_TURN = "<|end|>"
VOCAB_MULTIPLE = 32  # 4-bit layers need output sizes that are multiples of 32
CHAT_TEMPLATE = (
    "{{ bos_token }}{% for m in messages %}<|{{ m['role'] }}|> {{ m['content'] }} <|end|> {% endfor %}"
    "{% if add_generation_prompt %}<|assistant|> {% endif %}"
)


def vocabulary(world: ToyWorld | None = None) -> list[str]:
    """Specials, then every word of the lexicon (sorted), padded with `<extra_N>` to a multiple of 32.

    The world only decides who lives where, never which words exist, so every seed shares the vocabulary.
    """
    words = [*SPECIALS, *lx.all_words()]
    while len(words) % VOCAB_MULTIPLE:
        words.append(f"<extra_{len(words)}>")
    return words


def build_tokenizer(world: ToyWorld | None = None) -> PreTrainedTokenizerFast:
    """Whitespace-split word-level tokenizer; `<|end|>` ends a turn and is the EOS token."""
    vocab = {w: i for i, w in enumerate(vocabulary(world))}
    backend = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    backend.decoder = decoders.WordPiece(prefix="##", cleanup=False)
    tok = PreTrainedTokenizerFast(
        tokenizer_object=backend,
        bos_token="<bos>",
        eos_token=END_OF_TURN,
        pad_token="<pad>",
        unk_token="<unk>",
        additional_special_tokens=["<|user|>", "<|assistant|>", "<|system|>"],
    )
    tok.chat_template = CHAT_TEMPLATE
    return tok


def save_tokenizer(tok: PreTrainedTokenizerFast, path: str | Path) -> Path:
    """Saves `tok` as a Hugging Face tokenizer folder (reload with `AutoTokenizer.from_pretrained`)."""
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    tok.save_pretrained(path)
    return path
