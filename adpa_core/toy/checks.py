"""Held-out measurements of a built toy world: each model's reward and correctness, and whether the DPO
teacher's token advantages mean something (DESIGN.md section 4a: gate every comparison on these)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..advantage import response_advantages
from ..data import load_prompts
from ..data.sources import read_rows
from ..generate import generate
from ..models import TeacherPair, load_inference_model
from ..worlds import health
from .reward import summarize
from .world import ToyWorld

MODELS = ("teacher_ref", "teacher", "student")
CONTRAST_FLAWS = {"wrong": ("wrong_fact", "wrong_answer"), "rude": ("rude",), "ramble": ("ramble",)}
# Health gates (DESIGN.md 4a): the teacher must know the easy facts, and DPO must rank pairs correctly.
GATES = {"teacher_fact_easy": (">=", 0.9), "advantage_rank_rate": (">=", 0.9)}


def model_summary(path: Path, world: ToyWorld, split: str = "test", progress: bool = False) -> dict[str, Any]:
    """Greedy replies of one model to the held-out prompts, scored by the toy reward."""
    model, tokenizer = load_inference_model(str(path), device="cpu")
    rows = load_prompts("toy:prompts", split=split)
    gens = generate(
        model, tokenizer, [r["prompt"] for r in rows], max_new_tokens=48, batch_size=64, progress=progress
    )
    texts = [r["prompt"][-1]["content"] for r in rows]
    return summarize(texts, [g.text for g in gens], world, [g.stopped for g in gens])


def _flaw_positions(row: dict[str, Any], n_tokens: int, contrast_only: bool) -> set[int]:
    """Token positions of the rejected response's flaws (word-level tokenizer: token i is word i; a ramble
    runs to the end of the response, its end-of-turn token included). `contrast_only`: only the flaw that
    the chosen response lacks."""
    positions: set[int] = set()
    for flaw in row["rejected_flaws"]:
        if not contrast_only or flaw["kind"] in CONTRAST_FLAWS[row["contrast"]]:
            positions.update(flaw["words"])
            if flaw["kind"] == "ramble":
                positions.add(n_tokens - 1)
    return positions


def advantage_checks(pair: TeacherPair, tokenizer: Any, rows: list[dict[str, Any]]) -> dict[str, Any]:
    """How often the summed advantage ranks chosen over rejected, and how often the most negative token
    advantage of a rejected response falls on one of its flaws (chosen responses are realistically flawed
    too, so `contrast_hit_rate` also counts only the flaw the chosen response lacks), per contrast kind."""
    ranked, hits, contrast_hits, per_kind = 0, 0, 0, {}
    for row in rows:
        chosen = response_advantages(pair, tokenizer, row["prompt"], row["chosen"], k=1)
        rejected = response_advantages(pair, tokenizer, row["prompt"], row["rejected"], k=1)
        ranked += chosen.total > rejected.total
        n_tokens = len(rejected.advantage)
        worst = min(range(n_tokens), key=rejected.advantage.__getitem__)
        hit = worst in _flaw_positions(row, n_tokens, contrast_only=False)
        hits += hit
        contrast_hits += worst in _flaw_positions(row, n_tokens, contrast_only=True)
        kind = per_kind.setdefault(row["contrast"], [0, 0])
        kind[0] += hit
        kind[1] += 1
    n = max(len(rows), 1)
    return {
        "pairs": len(rows),
        "rank_rate": ranked / n,
        "flaw_hit_rate": hits / n,
        "contrast_hit_rate": contrast_hits / n,
        "flaw_hit_rate_by_kind": {k: h / c for k, (h, c) in sorted(per_kind.items())},
    }


def evaluate_world(toy: Path, world: ToyWorld, progress: bool = False) -> dict[str, Any]:
    """Held-out summaries of the three models, advantage checks, and the health gates."""
    out: dict[str, Any] = {m: model_summary(toy / m, world, progress=progress) for m in MODELS}
    teacher, tokenizer = load_inference_model(str(toy / "teacher"), device="cpu")
    reference, _ = load_inference_model(str(toy / "teacher_ref"), device="cpu")
    pairs = [row for _, row in read_rows("toy:preferences", "test")[0]]
    out["advantages"] = advantage_checks(TeacherPair(dpo=teacher, ref=reference), tokenizer, pairs)
    measured = {
        "teacher_fact_easy": out["teacher"]["correct"].get("fact_easy", 0.0),
        "advantage_rank_rate": out["advantages"]["rank_rate"],
    }
    out["health"] = health(measured, GATES)
    return out
