"""A tiny local training setup for the loop tests: tokenizer, student, teacher pair, preference data."""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

import torch

from adpa_core.config import config_from_dict
from adpa_core.data import collate
from adpa_core.generate import read_generations_jsonl
from adpa_core.train import micro_batch_rows
from tests.tiny import make_llama, make_tokenizer, save_model

SUBJECTS = "cat dog city paris rome oslo".split()
GOOD = "yes please thanks good sure ok".split()
BAD = "no bad rude sorry whatever".split()


def preference_rows(n: int, seed: int = 0) -> list[dict[str, Any]]:
    """Pairs whose chosen replies use polite words and rejected ones rude words (a learnable contrast)."""
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        subject = rng.choice(SUBJECTS)
        prompt = f"where is the {subject} ?"
        chosen = " ".join(rng.choice(GOOD) for _ in range(rng.randint(1, 4)))
        rejected = " ".join(rng.choice(BAD) for _ in range(rng.randint(1, 4)))
        rows.append({"id": f"ex{i:03d}", "prompt": prompt, "chosen": chosen, "rejected": rejected})
    return rows


def write_jsonl(path: Path, rows: list[dict[str, Any]]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def build_world(root: Path) -> dict[str, str]:
    """Student (32 wide), reference teacher and a DPO teacher (its perturbation), all on one tokenizer."""
    root.mkdir(parents=True, exist_ok=True)
    tok = make_tokenizer()
    paths = {"student": str(save_model(root / "student", tok, make_llama(tok, hidden=32, seed=1)))}
    ref = make_llama(tok, hidden=64, intermediate=128, seed=2)
    paths["teacher_ref"] = str(save_model(root / "teacher_ref", tok, ref))
    with torch.no_grad():
        for p in ref.parameters():
            p.add_(0.05 * torch.randn_like(p))
    paths["teacher"] = str(save_model(root / "teacher", tok, ref))
    paths["train"] = str(write_jsonl(root / "train.jsonl", preference_rows(24, seed=0)))
    paths["eval"] = str(write_jsonl(root / "eval.jsonl", preference_rows(6, seed=1)))
    return paths


def make_cfg(world: dict[str, str], out: Path, method: str, **sections: dict[str, Any]) -> Any:
    """A run config for the tiny world; `sections` override e.g. train={"max_steps": 3}."""
    data: dict[str, Any] = {
        "name": f"{method}-run",
        "output_dir": str(out),
        "model": {"student": world["student"], "device": "cpu"},
        "data": {"train": world["train"], "eval": world["eval"], "max_length": 48, "max_prompt_length": 24},
        "objective": {"method": method, "max_new_tokens": 6},
        "train": {"max_steps": 4, "batch_size": 4, "learning_rate": 1e-3, "warmup_ratio": 0.0, "seed": 0},
    }
    if method in ("kd", "dckd", "adpa", "adpa_plus"):
        data["model"].update(teacher=world["teacher"], teacher_ref=world["teacher_ref"])
    for section, values in sections.items():
        if isinstance(data.get(section), dict):
            data[section].update(values)
        else:
            data[section] = values
    return config_from_dict(data)


def step_rows(cfg: Any, rows: list[dict[str, Any]], step: int = 0) -> list[dict[str, Any]]:
    """The rows of optimizer step `step` (one micro-batch, one process), as the training loop draws them."""
    idx = micro_batch_rows(len(rows), cfg.train.seed, step, cfg.train.batch_size, 1, 0)
    return [rows[i] for i in idx]


def yhat_rows(run_dir: Path, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """`rows` with the y_hat replies a run generated (its generations/yhat.jsonl), packed like training
    packs them: prompt + reply tokens, labels aligned (the next-token shift) and counting the reply only."""
    yhat = read_generations_jsonl(Path(run_dir) / "generations" / "yhat.jsonl")
    out = []
    for r in rows:
        gen = yhat[r["id"]]["token_ids"]
        labels = [-100] * (len(r["prompt_input_ids"]) - 1) + gen + [-100]
        out.append({"id": r["id"], "yhat_input_ids": r["prompt_input_ids"] + gen, "yhat_labels": labels})
    return out


@torch.no_grad()
def group_logits(model: Any, rows: list[dict[str, Any]], group: str, pad_id: int) -> tuple[Any, Any]:
    """(logits (B, T, V), labels (B, T)) of one group of rows, collated as the training loop does."""
    b = collate(rows, (group,), pad_id)
    return model(input_ids=b["input_ids"], attention_mask=b["attention_mask"]).logits, b["labels"]
