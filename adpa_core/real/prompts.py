"""Prompts with verifiable instructions, generated from a seed, and the parser that reads them back.

A prompt is a task (a fact with a known answer, a sum, or an open request on a topic) followed by one or
two instructions in the wordings of `lexicon.INSTRUCTIONS` (word or sentence limits, all lowercase, no
commas, one word, the number only, end with a question, include or avoid a word, JSON with given keys).
`parse_prompt(text)` recovers the task and the instructions from the text alone, so the judge scores any
prompt written in these wordings, typed ones included.

Splits (`make_splits`): `train` (the preference pairs), `validation`, `test` (held-out prompts with the
training kinds of instruction) and `unseen` (held-out prompts that each carry an instruction kind no
training prompt has, `UNSEEN_KINDS`). No prompt text occurs in two splits.
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass, field
from typing import Any

from adpa_core.real import lexicon as lx

KINDS = tuple(lx.INSTRUCTIONS)
UNSEEN_KINDS = ("max_sentences", "avoid_word")
"""Instruction kinds held out of training: only the `unseen` split asks for them."""
TASK_WEIGHTS = {"fact": 0.4, "arith": 0.25, "open": 0.35}
SECOND_INSTRUCTION = 0.5  # share of prompts with two instructions


@dataclass(frozen=True)
class Task:
    """What a prompt asks. `answer`: the right answer (fact, arith); `topic`: words that show an open
    reply is on topic; `group`: answers of one group exclude each other (naming two is hedging)."""

    kind: str  # fact | arith | open
    text: str
    answer: str | None = None
    group: str | None = None
    topic: tuple[str, ...] = ()
    extra: dict[str, str] = field(default_factory=dict, compare=False, hash=False)


@dataclass(frozen=True)
class Instruction:
    kind: str
    arg: Any = None  # n (max_words, max_sentences), a word (include/avoid), two keys (json_keys)

    def text(self) -> str:
        template = lx.INSTRUCTIONS[self.kind]
        if self.kind == "max_words":
            return template.format(n=self.arg)
        if self.kind == "max_sentences":
            return template.format(n=lx.SENTENCE_LIMITS[self.arg])
        if self.kind in ("include_word", "avoid_word"):
            return template.format(w=self.arg)
        if self.kind == "json_keys":
            return template.format(a=self.arg[0], b=self.arg[1])
        return template

    def label(self) -> str:
        """A short name for tables: `max_words<=12`, `include:blue`, `json:name,color`."""
        if self.kind in ("max_words", "max_sentences"):
            return f"{self.kind}<={self.arg}"
        if self.kind in ("include_word", "avoid_word"):
            return f"{self.kind.split('_')[0]}:{self.arg}"
        if self.kind == "json_keys":
            return "json:" + ",".join(self.arg)
        return self.kind


@dataclass(frozen=True)
class Prompt:
    task: Task
    instructions: tuple[Instruction, ...]

    @property
    def text(self) -> str:
        return " ".join([self.task.text, *(i.text() for i in self.instructions)])

    def to_row(self, row_id: str) -> dict[str, Any]:
        return {
            "id": row_id,
            "prompt": self.text,
            "kind": self.task.kind,
            "instructions": [i.label() for i in self.instructions],
        }


# ---------------------------------------------------------------- tasks


def fact_tasks() -> list[Task]:
    """Every fact question in every wording (capitals in three wordings)."""
    tasks = [
        Task("fact", t.format(x=country), capital, "capital")
        for country, capital in lx.CAPITALS.items()
        for t in lx.CAPITAL_TEMPLATES
    ]
    tasks += [Task("fact", q, answer, group) for q, (answer, group) in lx.FACTS.items()]
    return tasks


def arith_task(rng: random.Random) -> Task:
    """A sum, difference or product of small numbers with a result in 0..100."""
    op = rng.choice(list(lx.OPERATORS))
    if op == "*":
        a, b = rng.randint(2, 10), rng.randint(2, 10)
    else:
        a, b = rng.randint(2, 50), rng.randint(2, 50)
        if op == "-" and b > a:
            a, b = b, a
    shown = rng.choice(lx.OPERATORS[op])
    text = rng.choice(lx.ARITH_TEMPLATES).format(a=a, op=shown, b=b)
    return Task("arith", text, str(_apply(op, a, b)), "number", extra={"a": str(a), "b": str(b)})


def _apply(op: str, a: int, b: int) -> int:
    return a + b if op == "+" else a - b if op == "-" else a * b


def open_task(rng: random.Random) -> Task:
    phrase = rng.choice(list(lx.TOPICS))
    words, include, avoid = lx.TOPICS[phrase]
    text = rng.choice(lx.OPEN_TEMPLATES).format(x=phrase)
    return Task("open", text, topic=words, extra={"include": include, "avoid": avoid})


# ---------------------------------------------------------------- instructions


def _candidates(task: Task) -> list[str]:
    """Instruction kinds that make sense for a task."""
    if task.kind == "arith":
        return ["number_only", "max_words", "no_commas", "max_sentences", "end_question"]
    if task.kind == "fact":
        kinds = ["max_words", "lowercase", "no_commas", "max_sentences", "end_question"]
        if task.group == "number":
            kinds.append("number_only")
        elif " " not in (task.answer or ""):
            kinds.append("one_word")
        return kinds
    return [
        "max_words",
        "max_sentences",
        "lowercase",
        "no_commas",
        "end_question",
        "include_word",
        "avoid_word",
        "json_keys",
    ]


# pairs that contradict or repeat each other
_CLASH = {
    frozenset(p)
    for p in [
        ("one_word", "max_words"),
        ("one_word", "max_sentences"),
        ("one_word", "end_question"),
        ("number_only", "max_words"),
        ("number_only", "max_sentences"),
        ("number_only", "end_question"),
        ("number_only", "no_commas"),
        ("max_words", "max_sentences"),
        ("include_word", "avoid_word"),
    ]
}
_ALONE = ("json_keys",)  # JSON replies get no second instruction


def make_instruction(rng: random.Random, kind: str, task: Task) -> Instruction:
    if kind == "max_words":
        return Instruction(kind, rng.choice((5, 8, 10)) if task.kind != "open" else rng.choice((10, 15, 20)))
    if kind == "max_sentences":
        return Instruction(kind, rng.choice((1, 2)))
    if kind == "include_word":
        return Instruction(kind, task.extra["include"])
    if kind == "avoid_word":
        return Instruction(kind, task.extra["avoid"])
    if kind == "json_keys":
        return Instruction(kind, rng.choice(lx.JSON_KEYS))
    return Instruction(kind)


def make_prompt(rng: random.Random, task: Task, kinds: tuple[str, ...], need: str | None = None) -> Prompt:
    """`task` with one or two instructions of `kinds` (`need`: one of them must be this kind)."""
    allowed = [k for k in _candidates(task) if k in kinds]
    first = need if need is not None else rng.choice(allowed)
    chosen = [first]
    if first not in _ALONE and rng.random() < SECOND_INSTRUCTION:
        more = [k for k in allowed if k != first and k not in _ALONE and frozenset((k, first)) not in _CLASH]
        if more:
            chosen.append(rng.choice(more))
    rng.shuffle(chosen)
    return Prompt(task, tuple(make_instruction(rng, k, task) for k in chosen))


def random_task(rng: random.Random, facts: list[Task]) -> Task:
    kind = rng.choices(list(TASK_WEIGHTS), weights=list(TASK_WEIGHTS.values()))[0]
    if kind == "fact":
        return rng.choice(facts)
    return arith_task(rng) if kind == "arith" else open_task(rng)


def make_splits(seed: int, sizes: dict[str, int]) -> dict[str, list[Prompt]]:
    """Prompts per split (`train`, `validation`, `test`, `unseen`: counts in `sizes`); no text repeats
    across or within splits. `unseen` prompts each carry one of `UNSEEN_KINDS`; the others none."""
    rng = random.Random(f"real-world-{seed}")
    facts = fact_tasks()
    seen_kinds = tuple(k for k in KINDS if k not in UNSEEN_KINDS)
    texts: set[str] = set()
    out: dict[str, list[Prompt]] = {}
    for split in ("unseen", "test", "validation", "train"):  # held-out splits first: they claim texts
        prompts: list[Prompt] = []
        tries = 0
        while len(prompts) < sizes[split]:
            tries += 1
            if tries > 1000 * sizes[split]:
                raise ValueError(f"cannot draw {sizes[split]} distinct {split} prompts")
            task = random_task(rng, facts)
            if split == "unseen":
                need = rng.choice([k for k in UNSEEN_KINDS if k in _candidates(task)] or [None])
                if need is None:
                    continue
                prompt = make_prompt(rng, task, KINDS, need)
            else:
                prompt = make_prompt(rng, task, seen_kinds)
            if prompt.text not in texts:
                texts.add(prompt.text)
                prompts.append(prompt)
        out[split] = prompts
    return out


# ---------------------------------------------------------------- parsing


_FACTS_BY_TEXT = {t.text: t for t in fact_tasks()}
_ARITH = re.compile(r"(\d+) (plus|minus|times|\+|-|\*) (\d+)")
_OPS = {w: op for op, words in lx.OPERATORS.items() for w in words}
_PATTERNS = {
    "max_words": re.compile(r"Answer in at most (\d+) words\."),
    "max_sentences": re.compile(
        r"Answer in (" + "|".join(re.escape(v) for v in lx.SENTENCE_LIMITS.values()) + r")\."
    ),
    "include_word": re.compile(r'Include the word "([^"]+)"\.'),
    "avoid_word": re.compile(r'Do not use the word "([^"]+)"\.'),
    "json_keys": re.compile(r'Reply in JSON with the keys "([^"]+)" and "([^"]+)"\.'),
}


def parse_instructions(text: str) -> tuple[Instruction, ...]:
    """The instructions written in `text` (in the order they appear)."""
    found: list[tuple[int, Instruction]] = []
    for kind, template in lx.INSTRUCTIONS.items():
        pattern = _PATTERNS.get(kind)
        if pattern is None:
            at = text.find(template)
            if at >= 0:
                found.append((at, Instruction(kind)))
            continue
        for m in pattern.finditer(text):
            groups = m.groups()
            if kind == "max_words":
                arg: Any = int(groups[0])
            elif kind == "max_sentences":
                arg = next(n for n, v in lx.SENTENCE_LIMITS.items() if v == groups[0])
            elif kind == "json_keys":
                arg = (groups[0], groups[1])
            else:
                arg = groups[0]
            found.append((m.start(), Instruction(kind, arg)))
    return tuple(i for _, i in sorted(found, key=lambda x: x[0]))


def parse_task(text: str) -> Task | None:
    """The task of a prompt: a known fact question, a sum, or an open request on a known topic."""
    for question, task in _FACTS_BY_TEXT.items():
        if text.startswith(question):
            return task
    m = _ARITH.search(text)
    if m:
        a, op, b = int(m.group(1)), _OPS[m.group(2)], int(m.group(3))
        extra = {"a": m.group(1), "b": m.group(3)}
        return Task("arith", m.group(0), str(_apply(op, a, b)), "number", extra=extra)
    for phrase, (words, include, avoid) in lx.TOPICS.items():
        if any(text.startswith(t.format(x=phrase)) for t in lx.OPEN_TEMPLATES):
            return Task("open", phrase, topic=words, extra={"include": include, "avoid": avoid})
    return None


def parse_prompt(text: str) -> tuple[Task | None, tuple[Instruction, ...]]:
    """(task or None, instructions) of a prompt's text."""
    return parse_task(text.strip()), parse_instructions(text)
