"""On-policy preference pairs: several sampled replies per prompt from the model itself, ranked by the judge.

chosen = the best-scored reply, rejected = the worst; a prompt whose replies all score the same gives no
pair (a tie). Sampling is seeded; `repetition_penalty` is 1 and the stop / pad ids are set explicitly, so
no setting of the checkpoint's generation_config changes what is sampled.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

from adpa_core.generate import Generation, generate
from adpa_core.real.judge import judge


def neutral_generation(model: Any, tokenizer: Any) -> None:
    """No penalty or sampling default of the checkpoint applies: repetition_penalty 1, pad and eos set."""
    config = model.generation_config
    config.repetition_penalty = 1.0
    config.no_repeat_ngram_size = 0
    config.pad_token_id = tokenizer.pad_token_id
    config.eos_token_id = tokenizer.eos_token_id


def sample_replies(
    model: Any,
    tokenizer: Any,
    prompts: list[str],
    n: int,
    *,
    temperature: float,
    max_new_tokens: int,
    seed: int,
    batch_size: int = 32,
    progress: bool = True,
) -> list[list[Generation]]:
    """`n` sampled replies per prompt (in one seeded pass over the prompts repeated `n` times)."""
    neutral_generation(model, tokenizer)
    messages = [[{"role": "user", "content": p}] for p in prompts for _ in range(n)]
    gens = generate(
        model,
        tokenizer,
        messages,
        max_new_tokens=max_new_tokens,
        batch_size=batch_size,
        greedy=False,
        temperature=temperature,
        seed=seed,
        progress=progress,
    )
    return [gens[i * n : (i + 1) * n] for i in range(len(prompts))]


def make_pairs(rows: list[dict[str, Any]], replies: list[list[Generation]]) -> tuple[list[dict], dict]:
    """(preference rows, statistics) from prompt rows {id, prompt, kind, instructions} and their replies.

    A pair row: id, prompt, chosen, rejected, their judge scores, kind, instructions. Statistics: prompts,
    pairs, tie rate, mean chosen / rejected score, mean score of all samples, pairs per task kind.
    """
    pairs, all_scores, kinds = [], [], Counter()
    for row, gens in zip(rows, replies, strict=True):
        scored = [(judge(row["prompt"], g.text, g.stopped)["score"], g) for g in gens]
        all_scores += [s for s, _ in scored]
        best = max(scored, key=lambda x: x[0])
        worst = min(scored, key=lambda x: x[0])
        if best[0] == worst[0] or not best[1].text.strip() or not worst[1].text.strip():
            continue  # a tie (or an empty reply, which no chat template can hold as a turn)
        kinds[row["kind"]] += 1
        pairs.append(
            {
                "id": row["id"],
                "prompt": row["prompt"],
                "chosen": best[1].text,
                "rejected": worst[1].text,
                "chosen_score": best[0],
                "rejected_score": worst[0],
                "kind": row["kind"],
                "instructions": row["instructions"],
            }
        )
    n_pairs = max(len(pairs), 1)
    stats = {
        "prompts": len(rows),
        "samples_per_prompt": len(replies[0]) if replies else 0,
        "pairs": len(pairs),
        "tie_rate": 1 - len(pairs) / max(len(rows), 1),
        "chosen_score": sum(p["chosen_score"] for p in pairs) / n_pairs,
        "rejected_score": sum(p["rejected_score"] for p in pairs) / n_pairs,
        "sample_score": sum(all_scores) / max(len(all_scores), 1),
        "pairs_by_kind": dict(sorted(kinds.items())),
    }
    return pairs, stats
