"""The toy world's data sets: a mixed-quality SFT set, a preference set, and held-out prompts, as JSONL.

- SFT rows `{"id", "prompt", "completion", "kind", "subset"}`: flaws are systematic and prompt-conditional
  (hard facts mostly get their decoy city, "hey" prompts mostly a rude opener, "explain" prompts mostly
  rambling), so a model trained on them is unaligned in ways greedy decoding shows.
- Preference rows `{"id", "prompt", "chosen", "rejected", "kind", "subset", "contrast", "chosen_flaws",
  "rejected_flaws"}`: the rejected response is the chosen one with one more flaw (`contrast`: wrong, rude or
  ramble, uniform), so chosen beats rejected under the reward by construction; chosen responses are
  themselves sometimes flawed. On hard facts the chosen writer mostly makes the SFT writer's slip (right in
  43% of the pairs: always when the contrast is "wrong", 15% otherwise), so imitating the chosen replies
  learns the decoy, and only the preference between the two replies says which city is right.
  Flaws list the whitespace-word positions that carry them.
- Prompt rows `{"id", "prompt", "kind", "subset"}`: held-out prompts for evaluation.

Held-out prompts ask about the same people (facts must be learnable) with wordings that person never gets
in training, and arithmetic prompts whose text never occurs in training (most three-step sums are new
altogether); no held-out prompt text occurs in a training file, validation and test are disjoint.
"""

from __future__ import annotations

import json
import random
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from itertools import islice
from pathlib import Path

from adpa_core.toy import lexicon as lx
from adpa_core.toy.world import (
    Prompt,
    ToyWorld,
    add_flaw,
    arith_prompt,
    fact_prompt,
    make_draft,
    render,
    sample_expression,
)

STYLE_WEIGHTS = {"plain": 0.5, "hey": 0.25, "explain": 0.25}
SFT_FLAW_RATES = {"plain": (0.1, 0.1), "hey": (0.8, 0.1), "explain": (0.1, 0.8)}
"""Prompt style -> (rude rate, ramble rate) of the SFT completions."""
HARD_FACT_RIGHT = 0.4  # SFT: a hard person's right city 40% of the time, their decoy otherwise
CHOSEN_RIGHT = 0.85  # preference set: chosen answers are right this often (unless the contrast is "wrong")
HARD_CHOSEN_RIGHT = 0.15  # ... but on hard facts only this often: the chosen writer shares the SFT slip
CHOSEN_FLAW_RATE = 0.2  # ... and rude / rambling this often (each, never the contrast's own flaw)
CONTRASTS = ("wrong", "rude", "ramble")


@dataclass(frozen=True)
class DataSizes:
    """How much data to write; `quick` builds ask about fewer people so that a small build still learns."""

    n_people: int = 100
    fact_share: float = 0.6
    step_weights: tuple[float, float, float] = (0.3, 0.4, 0.3)
    sft_train: int = 8000
    pairs_train: int = 6000
    arith_heldout: int = 150  # per held-out split

    @classmethod
    def for_mode(cls, quick: bool) -> DataSizes:
        return cls(n_people=36, sft_train=2500, pairs_train=1500, arith_heldout=40) if quick else cls()


def _rng(seed: int, purpose: str) -> random.Random:
    return random.Random(f"toy-data-{seed}-{purpose}")


def _template(rng: random.Random, templates: tuple[tuple[str, str], ...]) -> int:
    style = rng.choices(list(STYLE_WEIGHTS), weights=list(STYLE_WEIGHTS.values()))[0]
    return rng.choice([i for i, (s, _) in enumerate(templates) if s == style])


def heldout_prompts(world: ToyWorld, seed: int, sizes: DataSizes) -> dict[str, list[Prompt]]:
    """Validation and test prompts: one unseen wording per person each, plus unseen arithmetic."""
    rng = _rng(seed, "heldout")
    out: dict[str, list[Prompt]] = {"validation": [], "test": []}
    for person in world.people[: sizes.n_people]:
        first = _template(rng, lx.FACT_TEMPLATES)
        second = first
        while second == first:
            second = _template(rng, lx.FACT_TEMPLATES)
        out["validation"].append(fact_prompt(world, person, first))
        out["test"].append(fact_prompt(world, person, second))
    seen: set[str] = set()
    for split in ("validation", "test"):
        for _ in range(sizes.arith_heldout):
            prompt = _sample_arith(rng, sizes, seen)
            seen.add(prompt.text)
            out[split].append(prompt)
    return out


def _sample_arith(rng: random.Random, sizes: DataSizes, exclude: set[str]) -> Prompt:
    while True:
        steps = rng.choices((1, 2, 3), weights=sizes.step_weights)[0]
        numbers, ops = sample_expression(rng, steps)
        prompt = arith_prompt(numbers, ops, _template(rng, lx.ARITH_TEMPLATES))
        if prompt.text not in exclude:
            return prompt


def training_prompts(
    world: ToyWorld, rng: random.Random, sizes: DataSizes, exclude: set[str]
) -> Iterator[Prompt]:
    """An endless stream of training prompts, none of whose texts is in `exclude`."""
    people = world.people[: sizes.n_people]
    while True:
        if rng.random() < sizes.fact_share:
            prompt = fact_prompt(world, rng.choice(people), _template(rng, lx.FACT_TEMPLATES))
            if prompt.text in exclude:
                continue
            yield prompt
        else:
            yield _sample_arith(rng, sizes, exclude)


def sft_completion(rng: random.Random, prompt: Prompt) -> str:
    """A completion as the mixed-quality SFT writer gives it (systematic, prompt-conditional flaws)."""
    rude_rate, ramble_rate = SFT_FLAW_RATES[prompt.style]
    right = HARD_FACT_RIGHT if prompt.subset == "fact_hard" else 1.0
    draft = make_draft(
        rng,
        prompt,
        wrong=rng.random() >= right,
        rude=rng.random() < rude_rate,
        ramble=rng.random() < ramble_rate,
    )
    return render(draft)[0]


def preference_pair(rng: random.Random, prompt: Prompt) -> dict:
    """A realistic pair: chosen sometimes flawed; rejected = chosen plus one more flaw (the contrast)."""
    contrast = rng.choice(CONTRASTS)
    right = HARD_CHOSEN_RIGHT if prompt.subset == "fact_hard" else CHOSEN_RIGHT
    chosen = make_draft(
        rng,
        prompt,
        wrong=contrast != "wrong" and rng.random() >= right,
        rude=contrast != "rude" and rng.random() < CHOSEN_FLAW_RATE,
        ramble=contrast != "ramble" and rng.random() < CHOSEN_FLAW_RATE,
    )
    rejected = add_flaw(rng, prompt, chosen, contrast)
    chosen_text, chosen_flaws = render(chosen)
    rejected_text, rejected_flaws = render(rejected)
    return {
        "chosen": chosen_text,
        "rejected": rejected_text,
        "contrast": contrast,
        "chosen_flaws": chosen_flaws,
        "rejected_flaws": rejected_flaws,
    }


def _row(split: str, i: int, prompt: Prompt, **extra) -> dict:
    return {
        "id": f"{split}-{i:05d}",
        "prompt": prompt.text,
        "kind": prompt.kind,
        "subset": prompt.subset,
        **extra,
    }


def _sft_rows(split: str, prompts: Iterable[Prompt], rng: random.Random) -> list[dict]:
    return [_row(split, i, p, completion=sft_completion(rng, p)) for i, p in enumerate(prompts)]


def _pair_rows(split: str, prompts: Iterable[Prompt], rng: random.Random) -> list[dict]:
    return [_row(split, i, p, **preference_pair(rng, p)) for i, p in enumerate(prompts)]


def build_rows(world: ToyWorld, seed: int, quick: bool = False) -> dict[str, list[dict]]:
    """Every data file's rows, keyed by file stem (e.g. `preferences_train`)."""
    sizes = DataSizes.for_mode(quick)
    heldout = heldout_prompts(world, seed, sizes)
    exclude = {p.text for split in heldout.values() for p in split}

    def train(purpose: str, n: int) -> Iterable[Prompt]:
        return islice(training_prompts(world, _rng(seed, purpose), sizes, exclude), n)

    pair_prompts = train("pair-prompts", sizes.pairs_train)
    rows = {
        "sft_train": _sft_rows("train", train("sft-prompts", sizes.sft_train), _rng(seed, "sft")),
        "preferences_train": _pair_rows("train", pair_prompts, _rng(seed, "pairs")),
        "sft_test": _sft_rows("test", heldout["test"], _rng(seed, "sft-test")),
    }
    for split, prompts in heldout.items():
        rows[f"preferences_{split}"] = _pair_rows(split, prompts, _rng(seed, f"pairs-{split}"))
        rows[f"prompts_{split}"] = [_row(split, i, p) for i, p in enumerate(prompts)]
    return rows


def _dump(path: Path, lines: list[str]) -> None:
    with open(path, "w", encoding="utf-8", newline="\n") as f:
        f.writelines(line + "\n" for line in lines)


def write_datasets(
    world: ToyWorld, out_dir: str | Path, seed: int | None = None, quick: bool = False
) -> dict[str, Path]:
    """Writes `<name>_<split>.jsonl` files and `world.json` under `out_dir`; same seed -> same bytes.

    `seed` (default: the world's) draws the data; returns file stem -> path (`world` for world.json).
    """
    seed = world.seed if seed is None else seed
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths: dict[str, Path] = {}
    for name, rows in build_rows(world, seed, quick).items():
        paths[name] = out / f"{name}.jsonl"
        _dump(paths[name], [json.dumps(r, sort_keys=True, ensure_ascii=True) for r in rows])
    paths["world"] = out / "world.json"
    _dump(paths["world"], [json.dumps(world.to_dict(), sort_keys=True, indent=1)])
    return paths
