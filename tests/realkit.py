"""A real-model world built on a tiny stand-in base (the word-level test tokenizer and a random tiny Llama):
the same `adpa real build` machinery in seconds, for tests of the build, the `real:` names and the
workbench. The build on SmolLM2 itself is the `real_home` fixture (tests/conftest.py)."""

from __future__ import annotations

from pathlib import Path

from adpa_core.real.build import build

from .tiny import make_llama, make_tokenizer, save_model

RECIPE = {
    "prompts": {"train": 24, "validation": 4, "test": 8, "unseen": 6},
    "sampling": {"samples": 4, "temperature": 1.5, "max_new_tokens": 10, "batch_size": 48},
    "teacher_dpo": {"steps": 3, "batch": 4, "lr": 1e-3, "beta": 0.1, "lora_r": 4, "warmup": 0},
    "eval": {"max_new_tokens": 10, "batch_size": 48},
}


# The real-model world the tests build on SmolLM2 (the `real_home` fixture): the quick build's machinery
# and settings with a quarter of the prompts, fewer samples, shorter replies and a third of the DPO steps,
# so that `make test` pays a fraction of the quick build's ~8 CPU-minutes. It is the real model, tokenizer
# and judge; its teacher is weaker than the quick build's, and no test reads its quality.
SMOL_RECIPE = {
    "prompts": {"train": 16, "validation": 4, "test": 8, "unseen": 4},
    "sampling": {"samples": 3, "temperature": 0.8, "max_new_tokens": 24, "batch_size": 32},
    "teacher_dpo": {"steps": 4, "batch": 4, "lr": 5e-4, "beta": 0.1, "lora_r": 16, "warmup": 0},
    "eval": {"max_new_tokens": 24, "batch_size": 32},
}


def tiny_real_world(home: Path, seed: int = 1) -> dict:
    """Builds the tiny real world into `home` (its base model in `home/tiny-base`); returns the manifest."""
    tokenizer = make_tokenizer()
    base = save_model(Path(home) / "tiny-base", tokenizer, make_llama(tokenizer, hidden=32, layers=2))
    return build(home, seed=seed, quick=True, progress=False, base=str(base), recipe=RECIPE, n_threads=1)
