"""The toy world's Python reward: what the prompt asks is parsed from its text, the response is checked.

reward = CORRECT * [the answer is right]
       + POLITE  * [no rude word]
       + CONCISE * [no rambling]
       - NO_STOP * [generation did not stop at the end-of-turn token]

with CORRECT = 1.0, POLITE = 0.5, CONCISE = 0.5, NO_STOP = 1.0, so the reward lies in [-1, 2]:

- *answer*: the first city word (fact prompts) or number word (arithmetic prompts) of the response. A
  response without one, or with a different one, is wrong. Prompts of neither kind have no content term
  (`correct` is None) and score as if right, so only their style counts.
- *rude*: any of the rude words (ugh, obviously, duh, dumb, whatever, stupid).
- *rambling*: any filler word (anyway, blah, reminds, weekend, poem, talking, story) or more than 16
  words in all.
- *stopped*: passed in by the caller (generation reports whether it ended with `<|end|>`); text from a data
  set counts as stopped.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence

from adpa_core.toy import lexicon as lx
from adpa_core.toy.world import ToyWorld, evaluate_terms, make_world

CORRECT, POLITE, CONCISE, NO_STOP = 1.0, 0.5, 0.5, 1.0
_NUMBERS = {w: i for i, w in enumerate(lx.NUMBER_WORDS)}
_CITIES = frozenset(lx.CITIES)


def parse_prompt(prompt: str, world: ToyWorld | None = None) -> tuple[str, str, str] | None:
    """(kind, subset, right answer) of a toy prompt, or None if it asks nothing the world knows."""
    world = world if world is not None else make_world(0)
    words = prompt.split()
    for a, b in zip(words, words[1:], strict=False):
        person = f"{a} {b}"
        if person in world.home:
            return "fact", "fact_hard" if person in world.decoy else "fact_easy", world.home[person]
    return _parse_arith(words)


def _parse_arith(words: list[str]) -> tuple[str, str, str] | None:
    for start, word in enumerate(words):
        if word not in _NUMBERS:
            continue
        numbers, ops = [_NUMBERS[word]], []
        i = start + 1
        while i + 1 < len(words) and words[i] in lx.OPERATORS and words[i + 1] in _NUMBERS:
            ops.append(words[i])
            numbers.append(_NUMBERS[words[i + 1]])
            i += 2
        if ops:
            value = evaluate_terms(numbers, ops)[-1]
            truth = lx.NUMBER_WORDS[value] if 0 <= value < len(lx.NUMBER_WORDS) else str(value)
            return "arith", f"arith_{len(ops)}", truth
    return None


def prompt_style(prompt: str) -> str:
    """ "hey", "explain" or "plain": the wording that draws rude / rambling answers in the SFT data."""
    words = prompt.split()
    if "hey" in words:
        return "hey"
    return "explain" if "explain" in words else "plain"


def reward_breakdown(prompt: str, response: str, world: ToyWorld | None = None, stopped: bool = True) -> dict:
    """Every term of the reward: kind, subset, style, answer, expected, correct (bool | None), rude, ramble,
    stopped, and the reward itself."""
    parsed = parse_prompt(prompt, world)
    kind, subset, expected = parsed if parsed else (None, None, None)
    words = response.split()
    answers = _CITIES if kind == "fact" else _NUMBERS if kind == "arith" else ()
    answer = next((w for w in words if w in answers), None)
    correct = None if kind is None else answer == expected
    rude = any(w in lx.RUDE_WORDS for w in words)
    ramble = len(words) > lx.MAX_CONCISE_WORDS or any(w in lx.RAMBLE_WORDS for w in words)
    value = (
        CORRECT * (correct is not False)
        + POLITE * (not rude)
        + CONCISE * (not ramble)
        - NO_STOP * (not stopped)
    )
    return {
        "kind": kind,
        "subset": subset,
        "style": prompt_style(prompt),
        "answer": answer,
        "expected": expected,
        "correct": correct,
        "rude": rude,
        "ramble": ramble,
        "stopped": bool(stopped),
        "reward": value,
    }


def reward(prompt: str, response: str, world: ToyWorld | None = None, stopped: bool = True) -> float:
    """The toy reward in [-1, 2] (see the module docstring); `world=None` is the seed-0 world."""
    return reward_breakdown(prompt, response, world, stopped)["reward"]


def summarize(
    prompts: Sequence[str],
    responses: Sequence[str],
    world: ToyWorld | None = None,
    stopped: Sequence[bool] | None = None,
) -> dict:
    """Mean reward, correctness per subset and per kind, and style rates (rude, ramble, stop) of a set."""
    if len(prompts) != len(responses) or (stopped is not None and len(stopped) != len(prompts)):
        raise ValueError("prompts, responses (and stopped) must have the same length")
    stops = list(stopped) if stopped is not None else [True] * len(prompts)
    rows = [reward_breakdown(p, r, world, s) for p, r, s in zip(prompts, responses, stops, strict=True)]
    n = max(len(rows), 1)
    by_subset: dict[str, list[bool]] = defaultdict(list)
    by_kind: dict[str, list[bool]] = defaultdict(list)
    for row in rows:
        if row["correct"] is not None:
            by_subset[row["subset"]].append(row["correct"])
            by_kind[row["kind"]].append(row["correct"])
    return {
        "n": len(rows),
        "reward": sum(r["reward"] for r in rows) / n,
        "correct": {k: sum(v) / len(v) for k, v in sorted(by_subset.items())},
        "correct_kind": {k: sum(v) / len(v) for k, v in sorted(by_kind.items())},
        "count": {k: len(v) for k, v in sorted(by_subset.items())},
        "rude_rate": sum(r["rude"] for r in rows) / n,
        "ramble_rate": sum(r["ramble"] for r in rows) / n,
        "stop_rate": sum(r["stopped"] for r in rows) / n,
    }
