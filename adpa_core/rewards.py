"""Rewards for evaluation: a Python function per example, the toy reward, the real world's judge, or a
reward model.

A reward is a callable `(prompts, responses, stopped) -> list[float]`: `prompts` are chat messages, one
list per example. It may also have a `name` (recorded in eval.json) and a `report_sections(prompts,
responses, stopped) -> dict` method whose sections are added to the report (the toy reward adds "toy":
correctness per subset and style rates; the real world's judge adds "real": content, instructions, hacks).
"""

from __future__ import annotations

import importlib
import json
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import torch
from transformers import AutoModelForSequenceClassification
from transformers.utils import logging as hf_logging

from .models import ModelLoadError, freeze, load_tokenizer, pick_device, pick_dtype
from .paths import toy_dir
from .run_models import resolve_name
from .stats import EvalError

Messages = list[dict[str, str]]


class Reward(Protocol):
    def __call__(
        self, prompts: Sequence[Messages], responses: Sequence[str], stopped: Sequence[bool]
    ) -> list[float]: ...


def prompt_text(messages: Messages) -> str:
    """The last user message of a conversation (the instruction being answered)."""
    for message in reversed(messages):
        if message.get("role") == "user":
            return message["content"]
    return "\n\n".join(m["content"] for m in messages)


@dataclass
class PythonReward:
    """Wraps `fn(prompt_text, response, stopped) -> float`, called once per example."""

    fn: Callable[[str, str, bool], float]
    name: str = "python"
    summarize: Callable[..., dict[str, Any]] | None = None
    """Optional `summarize(prompt_texts, responses, stopped=...) -> dict`, reported under `name`."""
    check: Callable[[Sequence[str]], None] | None = None
    """Optional `check(prompt_texts)` that raises EvalError for prompts the function cannot score."""

    def check_prompts(self, prompts: Sequence[Messages]) -> None:
        """Raises EvalError when the reward cannot score these prompts (called before generating, too)."""
        if self.check is not None:
            self.check([prompt_text(p) for p in prompts])

    def __call__(
        self, prompts: Sequence[Messages], responses: Sequence[str], stopped: Sequence[bool]
    ) -> list[float]:
        _check_lengths(prompts, responses, stopped)
        self.check_prompts(prompts)
        texts = [prompt_text(p) for p in prompts]
        return [float(self.fn(p, r, bool(s))) for p, r, s in zip(texts, responses, stopped, strict=True)]

    def report_sections(
        self, prompts: Sequence[Messages], responses: Sequence[str], stopped: Sequence[bool]
    ) -> dict[str, Any]:
        if self.summarize is None:
            return {}
        texts = [prompt_text(p) for p in prompts]
        return {self.name: self.summarize(texts, list(responses), stopped=[bool(s) for s in stopped])}


def _check_lengths(prompts: Sequence, responses: Sequence, stopped: Sequence) -> None:
    if not len(prompts) == len(responses) == len(stopped):
        raise EvalError(
            f"lengths differ: {len(prompts)} prompts, {len(responses)} responses, "
            f"{len(stopped)} stopped flags"
        )


def python_reward(fn: Callable[[str, str, bool], float], name: str | None = None) -> PythonReward:
    """A reward from a per-example function `fn(prompt_text, response, stopped) -> float`."""
    return PythonReward(fn, name or f"python:{getattr(fn, '__name__', 'reward')}")


def toy_reward(world: Any = None) -> PythonReward:
    """The toy world's exact reward (adpa_core.toy.reward) with its per-subset summary under "toy".

    `world=None` uses the world the toy data was built from (its data/world.json seed), else seed 0.
    """
    try:
        toy = importlib.import_module("adpa_core.toy.reward")
    except ModuleNotFoundError as exc:
        raise EvalError(
            "the toy reward (adpa_core.toy.reward) is not available in this version of ADPA Lab; "
            "give a reward model with --reward PATH"
        ) from exc
    world = _built_toy_world() if world is None else world

    def fn(prompt: str, response: str, stopped: bool) -> float:
        return toy.reward(prompt, response, world=world, stopped=stopped)

    def summarize(prompts: list[str], responses: list[str], stopped: list[bool]) -> dict[str, Any]:
        return toy.summarize(prompts, responses, world=world, stopped=stopped)

    return PythonReward(fn, "toy", summarize, check=require_toy_prompts)


def require_toy_prompts(prompts: Sequence[str]) -> None:
    """The toy reward parses facts, arithmetic and style from the toy world's own words; on any other
    prompt its score means nothing, so it refuses (EvalError) prompts with words outside the toy lexicon."""
    from .toy.lexicon import all_words

    known = set(all_words())
    foreign = [p for p in prompts if not set(p.split()) <= known]
    if foreign:
        words = sorted(set(foreign[0].split()) - known)[:3]
        raise EvalError(
            f"the toy reward only scores toy-world prompts, but {len(foreign)} of {len(prompts)} prompts are "
            f"not (e.g. {foreign[0][:60]!r}: {', '.join(map(repr, words))} is no toy word); give "
            "--reward (a reward model path or hub id, or py:MODULE:FUNCTION)"
        )


def real_reward() -> PythonReward:
    """The real-model world's judge (adpa_core.real.judge) with its summary under "real": content per task
    kind, each instruction kind met, hack rates."""
    judge = importlib.import_module("adpa_core.real.judge")

    def fn(prompt: str, response: str, stopped: bool) -> float:
        return judge.reward(prompt, response, stopped=stopped)

    return PythonReward(fn, "real", judge.summarize)


def _built_toy_world() -> Any:
    from .toy.world import make_world

    path = toy_dir() / "data" / "world.json"
    try:
        seed = int(json.loads(path.read_text(encoding="utf-8"))["seed"])
    except (OSError, ValueError, KeyError, TypeError):
        seed = 0
    return make_world(seed)


class RewardModel:
    """A Hugging Face sequence-classification reward model; the score of a conversation is logits[:, 0].

    The conversation (prompt messages + the assistant response) is rendered with the reward model's own
    chat template, or as "prompt\\n\\nresponse" when it has none. Frozen, no gradients.
    """

    def __init__(self, model: Any, tokenizer: Any, batch_size: int = 8, name: str = "reward-model"):
        if batch_size < 1:
            raise EvalError(f"batch_size={batch_size} must be >= 1")
        self.model, self.tokenizer, self.batch_size, self.name = model, tokenizer, batch_size, name

    def encode(self, messages: Messages, response: str) -> list[int]:
        tok = self.tokenizer
        if getattr(tok, "chat_template", None):
            chat = [*messages, {"role": "assistant", "content": response}]
            text = tok.apply_chat_template(chat, tokenize=False)
            return tok(text, add_special_tokens=False)["input_ids"]  # the template holds BOS if any
        text = "\n\n".join(m["content"] for m in messages) + "\n\n" + response
        return tok(text)["input_ids"]

    @torch.no_grad()
    def __call__(
        self, prompts: Sequence[Messages], responses: Sequence[str], stopped: Sequence[bool]
    ) -> list[float]:
        _check_lengths(prompts, responses, stopped)
        encoded = [self.encode(p, r) for p, r in zip(prompts, responses, strict=True)]
        order = sorted(range(len(encoded)), key=lambda i: -len(encoded[i]))  # similar lengths per batch
        scores = [0.0] * len(encoded)
        for start in range(0, len(order), self.batch_size):
            idx = order[start : start + self.batch_size]
            for i, score in zip(idx, self._score([encoded[i] for i in idx]), strict=True):
                scores[i] = score
        return scores

    def _score(self, rows: list[list[int]]) -> list[float]:
        """Scores of one batch, right-padded with an id that occurs in no row.

        The classifier pools at the last token that is not the pad id, so a pad id that also ends a text
        (pad = eos is common) would move the pooled position. Without a free id, rows go one by one.
        """
        used = {t for r in rows for t in r}
        pad = next((i for i in range(len(self.tokenizer)) if i not in used), None)
        if pad is None and len(rows) > 1:
            return [s for r in rows for s in self._score([r])]
        device = next(self.model.parameters()).device
        width = max(len(r) for r in rows)
        filler = 0 if pad is None else pad
        input_ids = torch.tensor([r + [filler] * (width - len(r)) for r in rows], device=device)  # (b, L)
        mask = torch.tensor([[1] * len(r) + [0] * (width - len(r)) for r in rows], device=device)  # (b, L)
        with _pad_id(self.model, pad):
            logits = self.model(input_ids=input_ids, attention_mask=mask).logits  # (b, num_labels)
        return [float(x) for x in logits[:, 0].float().cpu()]


@contextmanager
def _pad_id(model: Any, pad: int | None) -> Iterator[None]:
    config = model.config.get_text_config()
    old = config.pad_token_id
    config.pad_token_id = pad
    try:
        yield
    finally:
        config.pad_token_id = old


@contextmanager
def _quiet_load_report() -> Iterator[None]:
    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()
    try:
        yield
    finally:
        hf_logging.set_verbosity(verbosity)


def reward_model(
    path_or_id: str, batch_size: int = 8, device: torch.device | str | None = None, dtype: str = "auto"
) -> RewardModel:
    """Loads a sequence-classification reward model (frozen, trust_remote_code off) and its tokenizer."""
    device = pick_device("auto") if device is None else torch.device(device)
    try:
        path = resolve_name(path_or_id)
        if Path(path).expanduser().exists() and not (Path(path).expanduser() / "config.json").exists():
            raise ModelLoadError(f"{path} holds no model (no config.json)")
        with _quiet_load_report():  # its table of missing weights is replaced by the error below
            model, info = AutoModelForSequenceClassification.from_pretrained(
                path, dtype=pick_dtype(dtype, device), trust_remote_code=False, output_loading_info=True
            )
    except (OSError, ValueError) as exc:
        raise ModelLoadError(f"could not load the reward model {path_or_id!r}: {exc}") from exc
    # transformers fills weights missing from the checkpoint (e.g. the score head of a chat model loaded as
    # a classifier) with random values: such a "reward" would be noise.
    untrained = sorted(info.get("missing_keys", [])) + sorted(
        str(k[0]) for k in info.get("mismatched_keys", [])
    )
    if untrained:
        raise ModelLoadError(
            f"{path_or_id!r} is not a trained reward model: its checkpoint has no weights for "
            f"{', '.join(untrained[:3])}{' ...' if len(untrained) > 3 else ''} (a causal LM or a base model "
            "has no trained score head), so its scores would be random; give a sequence-classification "
            "reward model, `toy`, or py:MODULE:FUNCTION"
        )
    tokenizer = load_tokenizer(path, trust_remote_code=False)
    return RewardModel(freeze(model.to(device)), tokenizer, batch_size, name=f"rm:{path_or_id}")


def load_reward(spec: str | Any, batch_size: int = 8, device: torch.device | str | None = None) -> Any:
    """A reward from a spec: `toy` (the toy reward), `real` (the real-model world's judge),
    `py:MODULE:FUNCTION` (a per-example Python function), or a reward model's path / hub id. A callable
    passes through."""
    if callable(spec):
        return spec
    spec = str(spec)
    if spec == "toy":
        return toy_reward()
    if spec == "real":
        return real_reward()
    if spec.startswith("py:"):
        module, _, attr = spec[3:].partition(":")
        try:
            fn = getattr(importlib.import_module(module), attr)
        except (ImportError, AttributeError, ValueError) as exc:
            raise EvalError(f"reward {spec!r}: cannot import {attr or '?'} from {module!r} ({exc})") from exc
        return python_reward(fn, name=spec)
    return reward_model(spec, batch_size=batch_size, device=device)
