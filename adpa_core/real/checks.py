"""Held-out measurements of a built real-model world and its health gates (DESIGN.md 4b: look beyond the
mean score, since a DPO teacher on a judge finds hacks: brevity, echoing, a repeated keyword).

One SmolLM2 base sits in memory with the DPO adapter: adapter on = the teacher, adapter off = the
reference teacher (= the student before alignment). Both answer the `test` prompts (training kinds of
instruction) and the `unseen` prompts (held-out kinds) greedily; the judge scores them. The implicit reward
beta (log pi_dpo(y|x) - log pi_ref(y|x)) ranks the chosen over the rejected reply of the held-out pairs.
"""

from __future__ import annotations

from contextlib import nullcontext
from pathlib import Path
from typing import Any

from ..advantage import batch_sequence_advantages
from ..config import ModelConfig
from ..data import load_prompts
from ..data.sources import read_rows
from ..generate import generate
from ..models import load_teacher_pair, load_tokenizer
from ..paths import REAL_BASE
from ..worlds import health
from .judge import summarize
from .pairs import neutral_generation

SPLITS = ("test", "unseen")
# Health gates: the teacher must beat its reference on held-out prompts, its implicit reward must rank the
# held-out pairs, and its gain must not come from hacks the judge penalises.
GATES = {
    "teacher_gain": (">=", 0.05),
    "rank_rate": (">=", 0.7),
    "teacher_hack_rate": ("<=", 0.1),
}


def greedy_summary(model: Any, tokenizer: Any, split: str, settings: dict[str, Any], progress: bool) -> dict:
    """Greedy replies to `real:prompts` of `split`, judged; plus the mean reply length in tokens."""
    rows = load_prompts("real:prompts", split=split)
    gens = generate(
        model,
        tokenizer,
        [r["prompt"] for r in rows],
        max_new_tokens=settings["max_new_tokens"],
        batch_size=settings["batch_size"],
        progress=progress,
    )
    texts = [r["prompt"][-1]["content"] for r in rows]
    out = summarize(texts, [g.text for g in gens], [g.stopped for g in gens])
    out["mean_tokens"] = sum(len(g.token_ids) for g in gens) / max(len(gens), 1)
    return out


def rank_check(pair: Any, tokenizer: Any) -> dict[str, Any]:
    """How often the summed advantage ranks the chosen reply above the rejected one on held-out pairs."""
    rows = [row for _, row in read_rows("real:preferences", "test")[0]]
    if not rows:
        return {"pairs": 0, "rank_rate": 0.0}
    chosen = batch_sequence_advantages(
        pair, tokenizer, [{"prompt": r["prompt"], "response": r["chosen"]} for r in rows]
    )
    rejected = batch_sequence_advantages(
        pair, tokenizer, [{"prompt": r["prompt"], "response": r["rejected"]} for r in rows]
    )
    margins = [c - r for c, r in zip(chosen, rejected, strict=True)]
    return {
        "pairs": len(rows),
        "rank_rate": sum(m > 0 for m in margins) / len(rows),
        "mean_margin": sum(margins) / len(rows),
    }


def evaluate_world(
    real: Path, base: str = REAL_BASE, settings: dict[str, Any] | None = None, progress: bool = False
) -> dict[str, Any]:
    """Both teachers' held-out summaries per split, the rank check, and the health gates.

    `settings`: max_new_tokens and batch_size of the greedy replies.
    """
    settings = settings or {"max_new_tokens": 48, "batch_size": 32}
    tokenizer = load_tokenizer(base)
    cfg = ModelConfig(
        student=base,
        teacher=base,
        teacher_adapter=str(real / "teacher"),
        device="cpu",
        dtype="float32",
    )
    pair = load_teacher_pair(cfg, tokenizer=tokenizer)
    neutral_generation(pair.dpo, tokenizer)
    out: dict[str, Any] = {}
    for name, switch in (("teacher_ref", pair.dpo.disable_adapter), ("teacher", nullcontext)):
        with switch():
            out[name] = {
                split: greedy_summary(pair.dpo, tokenizer, split, settings, progress) for split in SPLITS
            }
    out["student"] = {"same_as": "teacher_ref"}
    out["advantages"] = rank_check(pair, tokenizer)
    test_ref, test_teacher = out["teacher_ref"]["test"], out["teacher"]["test"]
    measured = {
        "teacher_gain": test_teacher["reward"] - test_ref["reward"],
        "rank_rate": out["advantages"]["rank_rate"],
        "teacher_hack_rate": test_teacher["any_hack_rate"],
    }
    out["health"] = health(measured, GATES)
    return out
