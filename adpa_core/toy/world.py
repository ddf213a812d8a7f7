"""The toy world: who lives where, arithmetic prompts, and responses whose flaws are recorded word by word.

The world is a pure function of its seed (`make_world`). Prompts come in two kinds:

- `fact`: "where does ada baker live ?" -> a city. A third of the people are *hard*: the SFT data gives
  their right city only 40% of the time and one fixed wrong city (their `decoy`) otherwise. 100 people,
  few enough that the teacher memorises them within the build's budget (with 150 it did on some seeds
  only). The student memorises them too: facts are knowledge both hold, and the hard ones are content the
  SFT data gets wrong and the preference data puts right.
- `arith`: "what is three plus four minus two ?" -> a number word. Operands one..five, one to three
  steps, every running value in zero..ten; the number of steps is the subset (`arith_1` .. `arith_3`).
  The SFT data always gets sums right, but at the build's training budget the student learns them far
  less well than the teacher (facts it learns at least as fast). A wrong three-step answer forgets the
  last step.

Names are two words, so a model must combine both to recall a fact; answers never repeat the name.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field, replace
from functools import lru_cache

from adpa_core.toy import lexicon as lx

N_PEOPLE = 100
HARD_EVERY = 3  # every third person (in the seeded order) is hard, so any prefix keeps the ratio
MAX_STEPS = 3
OPERAND_MAX = 5
MAX_VALUE = len(lx.NUMBER_WORDS) - 1
FLAW_KINDS = ("wrong_fact", "wrong_answer", "rude", "ramble")


@dataclass(frozen=True)
class ToyWorld:
    """People (two-word names, in a seeded order), their home cities, and which of them are hard."""

    seed: int
    people: tuple[str, ...]
    home: dict[str, str] = field(hash=False)
    decoy: dict[str, str] = field(hash=False)
    """Hard person -> the fixed wrong city the SFT data gives them most of the time."""
    cities: tuple[str, ...] = tuple(lx.CITIES)

    @property
    def hard(self) -> frozenset[str]:
        return frozenset(self.decoy)

    def to_dict(self) -> dict:
        return {
            "seed": self.seed,
            "people": [{"name": p, "home": self.home[p], "decoy": self.decoy.get(p)} for p in self.people],
            "cities": list(self.cities),
        }


@lru_cache(maxsize=8)
def make_world(seed: int = 0) -> ToyWorld:
    """The world of a seed: `N_PEOPLE` people, homes spread evenly over the cities, every third one hard."""
    rng = random.Random(f"toy-world-{seed}")
    names = [f"{f} {last}" for f in lx.FIRST_NAMES for last in lx.LAST_NAMES]
    people = rng.sample(names, N_PEOPLE)
    homes = [lx.CITIES[i % len(lx.CITIES)] for i in range(N_PEOPLE)]
    rng.shuffle(homes)
    home = dict(zip(people, homes, strict=True))
    decoy = {}
    for i, p in enumerate(people):
        if i % HARD_EVERY == HARD_EVERY - 1:
            decoy[p] = rng.choice([c for c in lx.CITIES if c != home[p]])
    return ToyWorld(seed=seed, people=tuple(people), home=home, decoy=decoy)


@dataclass(frozen=True)
class Prompt:
    """One question: its text, what it asks, the right answer and its systematic wrong one (if any)."""

    text: str
    kind: str  # "fact" | "arith"
    subset: str  # "fact_easy" | "fact_hard" | "arith_1" | "arith_2" | "arith_3"
    style: str  # "plain" | "hey" | "explain"
    truth: str
    slip: str | None = None  # the systematic mistake: a hard person's decoy; a 3-step sum minus its last step


def fact_prompt(world: ToyWorld, person: str, template: int) -> Prompt:
    """Where `person` lives, in wording `template` (an index into `FACT_TEMPLATES`)."""
    style, text = lx.FACT_TEMPLATES[template]
    hard = person in world.decoy
    return Prompt(
        text=text.format(x=person),
        kind="fact",
        subset="fact_hard" if hard else "fact_easy",
        style=style,
        truth=world.home[person],
        slip=world.decoy.get(person),
    )


def evaluate_terms(numbers: list[int], ops: list[str]) -> list[int]:
    """Running values of `n0 op1 n1 op2 n2 ...`, left to right."""
    values = [numbers[0]]
    for op, n in zip(ops, numbers[1:], strict=True):
        values.append(values[-1] + lx.OPERATORS[op] * n)
    return values


def sample_expression(rng: random.Random, steps: int) -> tuple[list[int], list[str]]:
    """Operands one..five, `steps` operators; every running value stays in zero..ten."""
    while True:
        numbers = [rng.randint(1, OPERAND_MAX) for _ in range(steps + 1)]
        ops = [rng.choice(list(lx.OPERATORS)) for _ in range(steps)]
        if all(0 <= v <= MAX_VALUE for v in evaluate_terms(numbers, ops)):
            return numbers, ops


def arith_prompt(numbers: list[int], ops: list[str], template: int) -> Prompt:
    """The sum `numbers[0] ops[0] numbers[1] ...` in wording `template` (an index into `ARITH_TEMPLATES`)."""
    style, text = lx.ARITH_TEMPLATES[template]
    words = [lx.NUMBER_WORDS[numbers[0]]]
    for op, n in zip(ops, numbers[1:], strict=True):
        words += [op, lx.NUMBER_WORDS[n]]
    values = evaluate_terms(numbers, ops)
    return Prompt(
        text=text.format(x=" ".join(words)),
        kind="arith",
        subset=f"arith_{len(ops)}",
        style=style,
        truth=lx.NUMBER_WORDS[values[-1]],
        slip=lx.NUMBER_WORDS[values[-2]] if len(ops) == MAX_STEPS else None,
    )


@dataclass(frozen=True)
class Draft:
    """A response before rendering: which opener, frame and answer, and which flaws it carries."""

    kind: str
    opener: str
    frame: str
    answer: str
    wrong: bool = False
    rude: bool = False
    rambles: tuple[str, ...] = ()


def render(draft: Draft) -> tuple[str, list[dict]]:
    """Response text and its flaws: `[{"kind": ..., "words": [word positions]}]` (whitespace words)."""
    words: list[str] = []
    flaws: list[dict] = []

    def add(text: str, flaw: str | None) -> None:
        piece = text.split()
        if flaw and piece:
            flaws.append({"kind": flaw, "words": list(range(len(words), len(words) + len(piece)))})
        words.extend(piece)

    add(draft.opener, "rude" if draft.rude else None)
    before, after = draft.frame.split("{a}")
    add(before, None)
    add(draft.answer, ("wrong_fact" if draft.kind == "fact" else "wrong_answer") if draft.wrong else None)
    add(after, None)
    if draft.rambles:
        add(" ".join(draft.rambles), "ramble")
    return " ".join(words), flaws


def wrong_answer(rng: random.Random, prompt: Prompt) -> str:
    """The mistake a sloppy writer makes: the systematic slip when there is one, else a near miss."""
    if prompt.slip is not None:
        return prompt.slip
    if prompt.kind == "fact":
        return rng.choice([c for c in lx.CITIES if c != prompt.truth])
    value = lx.NUMBER_WORDS.index(prompt.truth)
    near = [v for v in (value - 2, value - 1, value + 1, value + 2) if 0 <= v <= MAX_VALUE]
    return lx.NUMBER_WORDS[rng.choice(near)]


def make_draft(rng: random.Random, prompt: Prompt, *, wrong: bool, rude: bool, ramble: bool) -> Draft:
    """A response to `prompt` with the requested flaws, wording drawn from `rng`."""
    frames = lx.FACT_FRAMES if prompt.kind == "fact" else lx.ARITH_FRAMES
    draft = Draft(
        kind=prompt.kind,
        opener=rng.choice(lx.POLITE_OPENERS),
        frame=rng.choice(frames),
        answer=prompt.truth,
    )
    return add_flaw(
        rng, prompt, draft, *(f for f, on in (("wrong", wrong), ("rude", rude), ("ramble", ramble)) if on)
    )


def add_flaw(rng: random.Random, prompt: Prompt, draft: Draft, *flaws: str) -> Draft:
    """`draft` with more flaws: `wrong` swaps the answer, `rude` the opener, `ramble` adds filler."""
    for flaw in flaws:
        if flaw == "wrong":
            draft = replace(draft, answer=wrong_answer(rng, prompt), wrong=True)
        elif flaw == "rude":
            draft = replace(draft, opener=rng.choice(lx.RUDE_OPENERS), rude=True)
        elif flaw == "ramble":
            draft = replace(draft, rambles=(lx.RAMBLE_OPENER, rng.choice(lx.RAMBLES)))
        else:
            raise ValueError(f"unknown flaw {flaw!r}; choose wrong, rude or ramble")
    return draft
