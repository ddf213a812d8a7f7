"""Toy model sizes (Llama architecture, every width a multiple of 32) and the build recipe.

Teacher 128 x 4 layers (~0.88 M parameters with the toy vocabulary), student 64 x 2 (~0.09 M): ~9.3x.
"""

from __future__ import annotations

from transformers import LlamaConfig

from adpa_core.toy.tokenizer import SPECIALS

# role -> (hidden, layers, intermediate, heads). Head width 32 for both; the teacher has ~9.5x the parameters.
SIZES: dict[str, tuple[int, int, int, int]] = {
    "teacher": (128, 4, 384, 4),
    "student": (64, 2, 128, 2),
}
MAX_POSITIONS = 128  # the longest toy chat (prompt, two rambles, specials) is under 60 tokens


def toy_model_config(role: str, vocab_size: int) -> LlamaConfig:
    """The `LlamaConfig` of the toy teacher or student; token ids follow the toy tokenizer's specials."""
    if role not in SIZES:
        raise ValueError(f"unknown toy role {role!r}; choose one of {', '.join(SIZES)}")
    if vocab_size % 32:
        raise ValueError(f"vocab_size {vocab_size} is not a multiple of 32; pad the vocabulary")
    hidden, layers, intermediate, heads = SIZES[role]
    return LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=hidden,
        intermediate_size=intermediate,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=heads,
        max_position_embeddings=MAX_POSITIONS,
        tie_word_embeddings=True,
        pad_token_id=SPECIALS.index("<pad>"),
        bos_token_id=SPECIALS.index("<bos>"),
        eos_token_id=SPECIALS.index("<|end|>"),
    )


def count_parameters(config: LlamaConfig) -> int:
    """Parameters of a model built from `config` (tied embeddings counted once), without building it."""
    h, i, v, n = config.hidden_size, config.intermediate_size, config.vocab_size, config.num_hidden_layers
    kv = config.num_key_value_heads * (h // config.num_attention_heads)
    per_layer = h * h * 2 + h * kv * 2 + 3 * h * i + 2 * h
    return v * h * (1 if config.tie_word_embeddings else 2) + n * per_layer + h


# Hyper-parameters of `adpa toy build` per stage: AdamW (no weight decay, gradient clip 1.0), linear warmup
# for `warmup` steps, then cosine to 0. `steps` are optimizer steps, `batch` sequences (SFT) or pairs (DPO).
# Teacher and student get the same SFT budget, each its own learning rate (the student's is its best at that
# budget). DPO adds `w_sft` x the NLL of the chosen responses: without it, a learning rate large enough to
# move the hard facts also pushed down every token after a flaw (answers degraded, and the most negative
# advantage left the flaw). On one thread of a shared 2-core machine the full recipe took ~175-220 s
# (teacher SFT) + ~65 s (DPO) + ~30 s (student SFT); quick mode ~45 s in all.
BUILD_RECIPE: dict[str, dict[str, dict[str, float | int]]] = {
    "full": {
        "teacher_sft": {"steps": 900, "batch": 64, "lr": 1.5e-3, "warmup": 45},
        "teacher_dpo": {"steps": 200, "batch": 32, "lr": 1e-4, "beta": 0.5, "w_sft": 1.0, "warmup": 13},
        "student_sft": {"steps": 900, "batch": 64, "lr": 2e-2, "warmup": 45},
    },
    "quick": {
        "teacher_sft": {"steps": 300, "batch": 32, "lr": 5e-3, "warmup": 15},
        "teacher_dpo": {"steps": 60, "batch": 16, "lr": 2e-4, "beta": 0.5, "w_sft": 1.0, "warmup": 4},
        "student_sft": {"steps": 300, "batch": 32, "lr": 2e-2, "warmup": 15},
    },
}
