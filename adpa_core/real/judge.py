"""The real-model world's judge: `reward(prompt, response)` checks every instruction of a prompt exactly,
checks the content, and penalises the reward hacks a DPO teacher finds (DESIGN.md section 4b).

score = CONTENT * [content right]
      + FORMAT  * (share of instructions met) * (1 if the content is right, else 1/2)
      - HACK    * [empty, echo or repetition]
      - NO_STOP * [generation did not stop]

with CONTENT = FORMAT = HACK = 0.5 and NO_STOP = 0.25, so the score lies in [-0.75, 1]:

- *content*: a fact's answer named, and no competing answer of its group (`HEDGE_GROUPS`: a reply naming
  two capitals is hedging); for numbers the first number right (a restated sum, "12 + 7 = 19", is
  skipped); an open request answered on topic (one of the topic's words) in at least `MIN_OPEN_WORDS`
  words. A prompt the judge cannot parse has no
  content check (counted as right), so only its instructions and the penalties count.
- *instructions*: each checked exactly (`check_instruction`); a wrong answer earns half the format credit,
  so a fixed wrong number does not pass "number only" at full marks.
- *hacks*: an empty reply (no letter or digit), an echo (six or more consecutive words of the prompt), or
  repetition (a word three times in a row, one content word over a third of six or more words, or a
  three-word phrase three times). A hack loses HACK whatever else the reply does; a repeated keyword
  that passes "include the word" and "lowercase" scores below an honest reply.
- *stopped*: passed in by the caller (generation reports whether it ended with end-of-turn).
"""

from __future__ import annotations

import json
import re
from collections import Counter, defaultdict
from collections.abc import Sequence
from typing import Any

from adpa_core.real import lexicon as lx
from adpa_core.real.prompts import Instruction, Task, fact_tasks, parse_prompt

CONTENT, FORMAT, HACK, NO_STOP = 0.5, 0.5, 0.5, 0.25
MIN_OPEN_WORDS = 4
ECHO_WORDS = 6
_WORD = re.compile(r"[A-Za-z0-9']+")
_NUMBER = re.compile(r"-?\d+(?:\.\d+)?")
_GROUPS: dict[str, set[str]] = defaultdict(set)
for _task in fact_tasks():
    if _task.group in lx.HEDGE_GROUPS:
        _GROUPS[_task.group].add(_task.answer.lower())
_STOP_WORDS = frozenset("the a an is are of and to in it on for".split())
_OP_WORDS = r"(?:plus|minus|times|\+|-|\*|x|×)"


def words(text: str) -> list[str]:
    """Lower-cased words (letters, digits, apostrophes)."""
    return [w.lower() for w in _WORD.findall(text)]


def sentences(text: str) -> list[str]:
    """Non-empty sentences: text split after `.`, `!` or `?` (a decimal point does not split)."""
    parts = re.split(r"(?<=[.!?])(?!\d)\s*", text.strip())
    return [p for p in parts if _WORD.search(p)]


def _has_phrase(haystack: list[str], phrase: str) -> bool:
    needle = words(phrase)
    n = len(needle)
    return n > 0 and any(haystack[i : i + n] == needle for i in range(len(haystack) - n + 1))


def first_number(text: str) -> int | float | None:
    """The first number of a text, in digits or as a number word (zero..twenty, the tens, hundred)."""
    for token in re.findall(r"-?\d+(?:\.\d+)?|[A-Za-z]+", text):
        if _NUMBER.fullmatch(token):
            value = float(token)
            return int(value) if value.is_integer() else value
        if token.lower() in lx.NUMBER_VALUES:
            return lx.NUMBER_VALUES[token.lower()]
    return None


def json_object(text: str) -> dict | None:
    """The reply parsed as one JSON object (a ```json fence around it is allowed), else None."""
    body = text.strip()
    fence = re.fullmatch(r"```(?:json)?\s*(.*?)\s*```", body, flags=re.S)
    body = fence.group(1) if fence else body
    try:
        value = json.loads(body)
    except ValueError:
        return None
    return value if isinstance(value, dict) else None


# ---------------------------------------------------------------- the checks


def check_content(task: Task | None, response: str) -> bool | None:
    """Whether the reply answers the task (see the module docstring); None when there is no task."""
    if task is None:
        return None
    said = words(response)
    if task.kind == "arith" or task.group == "number":
        if task.kind == "arith":  # "12 + 7 = 19": the restated sum is not the answer
            a, b = re.escape(task.extra["a"]), re.escape(task.extra["b"])
            response = re.sub(rf"\b{a}\s*{_OP_WORDS}\s*{b}\b", " ", response)
        value = first_number(response)
        return value is not None and str(value) == task.answer
    if task.kind == "fact":
        if not _has_phrase(said, task.answer):
            return False
        rivals = _GROUPS.get(task.group or "", set()) - {task.answer.lower()}
        return not any(_has_phrase(said, r) for r in rivals)
    on_topic = any(w.startswith(t) for w in said for t in task.topic)
    return on_topic and len(said) >= MIN_OPEN_WORDS


def check_instruction(ins: Instruction, response: str) -> bool:
    """Whether `response` meets one instruction, exactly as worded."""
    said = words(response)
    kind = ins.kind
    if kind == "max_words":
        return 0 < len(said) <= int(ins.arg)
    if kind == "max_sentences":
        return 0 < len(sentences(response)) <= int(ins.arg)
    if kind == "lowercase":
        return any(c.isalpha() for c in response) and response == response.lower()
    if kind == "no_commas":
        return "," not in response
    if kind == "one_word":
        return len(said) == 1
    if kind == "number_only":
        return _NUMBER.fullmatch(response.strip().rstrip(".").strip()) is not None
    if kind == "end_question":
        return response.strip().endswith("?")
    if kind == "include_word":
        return str(ins.arg).lower() in said
    if kind == "avoid_word":
        return bool(said) and str(ins.arg).lower() not in said
    if kind == "json_keys":
        obj = json_object(response)
        return obj is not None and all(str(obj.get(k, "")).strip() for k in ins.arg)
    raise ValueError(f"unknown instruction kind {kind!r}")


def echo(prompt: str, response: str, n: int = ECHO_WORDS) -> bool:
    """True when the reply repeats `n` or more consecutive words of the prompt."""
    said, asked = words(response), words(prompt)
    grams = {tuple(asked[i : i + n]) for i in range(len(asked) - n + 1)}
    return any(tuple(said[i : i + n]) in grams for i in range(len(said) - n + 1))


def repetitive(response: str) -> bool:
    """A word three times in a row, one word over a third of six or more words, or a three-word phrase
    three times."""
    said = words(response)
    if any(said[i] == said[i + 1] == said[i + 2] for i in range(len(said) - 2)):
        return True
    content = Counter(w for w in said if w not in _STOP_WORDS)
    if len(said) >= 6 and content and content.most_common(1)[0][1] * 3 > len(said):
        return True
    trigrams = Counter(tuple(said[i : i + 3]) for i in range(len(said) - 2))
    return bool(trigrams) and trigrams.most_common(1)[0][1] >= 3


def judge(prompt: str, response: str, stopped: bool = True) -> dict[str, Any]:
    """Every check of one reply: task, content, instructions [{kind, label, ok}], hacks, stopped, score."""
    task, instructions = parse_prompt(prompt)
    content = check_content(task, response)
    met = [{"kind": i.kind, "label": i.label(), "ok": check_instruction(i, response)} for i in instructions]
    hacks = {
        "empty": not _WORD.search(response),
        "echo": echo(prompt, response),
        "repetition": repetitive(response),
    }
    share = sum(m["ok"] for m in met) / len(met) if met else 1.0
    right = content is not False
    score = (
        CONTENT * right
        + FORMAT * share * (1.0 if right else 0.5)
        - HACK * any(hacks.values())
        - NO_STOP * (not stopped)
    )
    return {
        "task": None if task is None else task.kind,
        "expected": None if task is None else task.answer,
        "content": content,
        "instructions": met,
        "hacks": hacks,
        "stopped": bool(stopped),
        "words": len(words(response)),
        "score": score,
    }


def reward(prompt: str, response: str, stopped: bool = True) -> float:
    """The judge's score in [-0.75, 1] (see the module docstring)."""
    return judge(prompt, response, stopped)["score"]


def summarize(
    prompts: Sequence[str], responses: Sequence[str], stopped: Sequence[bool] | None = None
) -> dict[str, Any]:
    """Mean score; content rate per task kind; the share of each instruction kind met; hack rates (each
    and any); stop rate; mean words."""
    if len(prompts) != len(responses) or (stopped is not None and len(stopped) != len(prompts)):
        raise ValueError("prompts, responses (and stopped) must have the same length")
    stops = list(stopped) if stopped is not None else [True] * len(prompts)
    rows = [judge(p, r, s) for p, r, s in zip(prompts, responses, stops, strict=True)]
    n = max(len(rows), 1)
    content: dict[str, list[bool]] = defaultdict(list)
    met: dict[str, list[bool]] = defaultdict(list)
    for row in rows:
        if row["content"] is not None:
            content[row["task"]].append(row["content"])
        for m in row["instructions"]:
            met[m["kind"]].append(m["ok"])
    hack_names = ("empty", "echo", "repetition")
    return {
        "n": len(rows),
        "reward": sum(r["score"] for r in rows) / n,
        "content": {k: sum(v) / len(v) for k, v in sorted(content.items())},
        "content_all": sum(sum(v) for v in content.values()) / max(sum(map(len, content.values())), 1),
        "instructions": {k: sum(v) / len(v) for k, v in sorted(met.items())},
        "instructions_all": sum(sum(v) for v in met.values()) / max(sum(map(len, met.values())), 1),
        "count": {k: len(v) for k, v in sorted(met.items())},
        "hack_rate": {h: sum(r["hacks"][h] for r in rows) / n for h in hack_names},
        "any_hack_rate": sum(any(r["hacks"].values()) for r in rows) / n,
        "stop_rate": sum(r["stopped"] for r in rows) / n,
        "mean_words": sum(r["words"] for r in rows) / n,
    }
