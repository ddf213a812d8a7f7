"""A synthetic world for the training-step benchmarks, built offline in a folder.

A word-level tokenizer of any vocabulary size (filler words `w0`, `w1`, ... after the chat specials of
tests/tiny.py), randomly initialised Llama models saved in Hugging Face format (a student, a reference
teacher and a DPO teacher = the reference slightly perturbed), preference rows whose prompt and responses
have exact token lengths, and the student's replies y_hat written in advance (random filler words of the
response length), so that ADPA runs skip generation and every group has the same length.

Parameter counts (`compute_params`) follow the FLOP convention of the benchmarks: every weight that takes
part in a matrix product per token, i.e. all parameters except the input embedding, plus the output layer
(counted once when it is tied to the input embedding).
"""

from __future__ import annotations

import json
import random
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn
from transformers import LlamaConfig, LlamaForCausalLM
from transformers.utils import logging as hf_logging

from adpa_core.config import RunConfig, config_from_dict
from adpa_core.generate import write_generations_jsonl
from adpa_core.runs import RunDir
from tests.tiny import SPECIALS, make_tokenizer, save_model


@dataclass(frozen=True)
class Shape:
    """Decoder shape of a Llama-style model."""

    hidden: int
    layers: int
    intermediate: int
    heads: int
    kv_heads: int | None = None

    def __str__(self) -> str:
        return f"{self.hidden}x{self.layers} (ffn {self.intermediate})"


# CPU sizes: the teacher has ~3.7x the student's compute parameters at V = 32k.
STUDENT = Shape(hidden=256, layers=4, intermediate=704, heads=4)
TEACHER = Shape(hidden=512, layers=8, intermediate=1408, heads=8)
QUICK_STUDENT = Shape(hidden=32, layers=1, intermediate=64, heads=2)
QUICK_TEACHER = Shape(hidden=64, layers=2, intermediate=128, heads=2)


@dataclass
class World:
    """Paths of a built world and what the benchmarks need to know about it."""

    root: str
    student: str
    teacher: str
    teacher_ref: str
    train: str
    vocab: int
    rows: int
    prompt_tokens: int  # per sequence, chat template included
    response_tokens: int  # counted tokens per response (words + end-of-turn)
    student_params: int  # compute parameters (see the module docstring)
    teacher_params: int

    @property
    def seq_tokens(self) -> int:
        return self.prompt_tokens + self.response_tokens

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "seq_tokens": self.seq_tokens}


def filler_tokenizer(vocab: int):
    """A word-level chat tokenizer with exactly `vocab` tokens (a multiple of 64)."""
    if vocab % 64 or vocab <= len(SPECIALS):
        raise ValueError(f"vocab={vocab} must be a multiple of 64")
    return make_tokenizer(words=[f"w{i}" for i in range(vocab - len(SPECIALS))], pad_to=64)


def random_llama(tokenizer: Any, shape: Shape, seed: int, max_positions: int = 4096) -> LlamaForCausalLM:
    """A randomly initialised Llama with tied embeddings and `len(tokenizer)` rows."""
    torch.manual_seed(seed)
    cfg = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=shape.hidden,
        intermediate_size=shape.intermediate,
        num_hidden_layers=shape.layers,
        num_attention_heads=shape.heads,
        num_key_value_heads=shape.kv_heads or shape.heads,
        max_position_embeddings=max_positions,
        tie_word_embeddings=True,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    model = LlamaForCausalLM(cfg)
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    return model


def compute_params(model: nn.Module) -> int:
    """Parameters that multiply activations per token: all but the input embedding, plus the output layer."""
    unique = {id(p): p for p in model.parameters()}
    emb = model.get_input_embeddings().weight
    head = model.get_output_embeddings().weight
    total = sum(p.numel() for p in unique.values())
    return total if emb is head else total - emb.numel()


def _words(rng: random.Random, vocab_words: int, n: int) -> str:
    return " ".join(f"w{rng.randrange(vocab_words)}" for _ in range(n))


def build_world(
    root: Path,
    vocab: int,
    student: Shape,
    teacher: Shape,
    rows: int,
    prompt_words: int,
    response_words: int,
    seed: int = 0,
) -> World:
    """Tokenizer, three models and `rows` preference pairs under `root` (a fresh folder)."""
    hf_logging.disable_progress_bar()
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    tok = filler_tokenizer(vocab)
    positions = 2 * (prompt_words + response_words) + 64
    s_model = random_llama(tok, student, seed + 1, positions)
    ref = random_llama(tok, teacher, seed + 2, positions)
    paths = {"student": save_model(root / "student", tok, s_model)}
    paths["teacher_ref"] = save_model(root / "teacher_ref", tok, ref)
    with torch.no_grad():
        for p in ref.parameters():
            p.add_(0.01 * torch.randn_like(p))
    paths["teacher"] = save_model(root / "teacher", tok, ref)
    n_words = vocab - len(SPECIALS)
    rng = random.Random(seed)
    lines = []
    for i in range(rows):
        row = {
            "id": f"r{i:05d}",
            "prompt": _words(rng, n_words, prompt_words),
            "chosen": _words(rng, n_words, response_words),
            "rejected": _words(rng, n_words, response_words),
        }
        lines.append(json.dumps(row) + "\n")
    train = root / "train.jsonl"
    train.write_text("".join(lines), encoding="utf-8")
    # Chat template of tests/tiny.py: <bos> <|user|> prompt <|end|> <|assistant|> | response <|end|>
    return World(
        root=str(root),
        student=str(paths["student"]),
        teacher=str(paths["teacher"]),
        teacher_ref=str(paths["teacher_ref"]),
        train=str(train),
        vocab=vocab,
        rows=rows,
        prompt_tokens=prompt_words + 4,
        response_tokens=response_words + 1,
        student_params=compute_params(s_model),
        teacher_params=compute_params(ref),
    )


def write_yhat(world: World, cfg: RunConfig, seed: int = 1) -> Path:
    """The student's replies y_hat for `cfg`'s run directory: random words of the response length."""
    tok = filler_tokenizer(world.vocab)
    rng = random.Random(seed)
    rows = [json.loads(line) for line in Path(world.train).read_text(encoding="utf-8").splitlines()]
    ids, prompts, texts, extra = [], [], [], []
    for row in rows:
        text = _words(rng, world.vocab - len(SPECIALS), world.response_tokens - 1)
        token_ids = list(tok(text, add_special_tokens=False)["input_ids"]) + [tok.eos_token_id]
        ids.append(row["id"])
        prompts.append([{"role": "user", "content": row["prompt"]}])
        texts.append(text)
        extra.append({"stopped": True, "token_ids": token_ids})
    path = RunDir(cfg.run_dir).generations_dir / "yhat.jsonl"
    return write_generations_jsonl(path, ids, prompts, texts, extra=extra)


def run_config(
    world: World,
    out: Path,
    name: str,
    method: str,
    batch_size: int,
    device: str = "cpu",
    objective: dict[str, Any] | None = None,
    train: dict[str, Any] | None = None,
) -> RunConfig:
    """A run on the world: constant learning rate, no warmup, clipping at 1 (the library default)."""
    model: dict[str, Any] = {"student": world.student, "device": device}
    if method in ("kd", "dckd", "adpa", "adpa_plus"):
        model.update(teacher=world.teacher, teacher_ref=world.teacher_ref)
    data = {
        "name": name,
        "output_dir": str(out),
        "model": model,
        "data": {
            "train": world.train,
            "max_length": world.seq_tokens + 8,
            "max_prompt_length": world.prompt_tokens + 4,
        },
        "objective": {"method": method, "max_new_tokens": world.response_tokens, **(objective or {})},
        "train": {
            "max_steps": 1000,
            "batch_size": batch_size,
            "learning_rate": 1e-5,
            "lr_schedule": "constant",
            "warmup_ratio": 0.0,
            "seed": 0,
            **(train or {}),
        },
    }
    return config_from_dict(data)
