"""Chat generation: batched responses (the student's own y_hat) and token-by-token streaming for the UI.

Prompts are rendered with the chat template (`add_generation_prompt=True`, the same ids as training uses),
left-padded, and generation stops at the template's end-of-turn token or eos. A reply's text excludes the
stop token and whatever follows it. Greedy decoding (the default) is deterministic.

Decoding uses exactly the settings of `decoding_settings` and nothing from the checkpoint's
`generation_config.json` (a repetition penalty, `no_repeat_ngram_size`, sampling defaults, a minimum length,
suppressed tokens...). transformers fills every setting a caller leaves unset from `model.generation_config`
(`GenerationMixin._prepare_generation_config`: passed config > model's config > library defaults), so a
complete config is passed and the model's own is blank for the duration of the call.
"""

from __future__ import annotations

import json
import os
import queue
import tempfile
import threading
import weakref
from collections.abc import Callable, Generator, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm
from transformers import GenerationConfig, StoppingCriteria, StoppingCriteriaList
from transformers.generation.streamers import BaseStreamer

from adpa_core.data import DataError, end_of_turn_id, pad_sequences, prompt_ids, read_jsonl_text, read_text
from adpa_core.data.sources import BrokenLine

Messages = list[dict[str, str]]


@dataclass
class Generation:
    """One generated reply."""

    text: str
    """The reply without the stop token and what follows it, stripped of surrounding whitespace."""
    token_ids: list[int]
    """The new tokens, ending with the stop token when `stopped`."""
    stopped: bool
    """True when the reply ended with end-of-turn / eos before `max_new_tokens`."""


def _stop_ids(tokenizer: Any, eot_id: int | None) -> list[int]:
    eot = end_of_turn_id(tokenizer) if eot_id is None else eot_id
    eos = tokenizer.eos_token_id
    return [eot] if eos is None or eos == eot else [eot, eos]


def _device(model: Any) -> torch.device:
    return next(model.parameters()).device


def _decode(tokenizer: Any, ids: Sequence[int]) -> str:
    return tokenizer.decode(list(ids), skip_special_tokens=True).strip()


def _finish(tokenizer: Any, new_ids: Sequence[int], stop: Sequence[int]) -> Generation:
    new_ids = [int(t) for t in new_ids]
    for i, token in enumerate(new_ids):
        if token in stop:
            return Generation(_decode(tokenizer, new_ids[:i]), new_ids[: i + 1], True)
    return Generation(_decode(tokenizer, new_ids), new_ids, False)


@contextmanager
def _eval_mode(model: Any) -> Iterator[None]:
    was_training = model.training
    model.eval()
    try:
        yield
    finally:
        model.train(was_training)


@contextmanager
def _seeded(seed: int | None, device: torch.device) -> Iterator[None]:
    """Seeds sampling without changing the caller's random state."""
    if seed is None:
        yield
        return
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        torch.manual_seed(seed)
        yield


def decoding_settings(
    greedy: bool = True,
    temperature: float = 1.0,
    max_new_tokens: int = 128,
    *,
    tokenizer: Any = None,
    eot_id: int | None = None,
) -> dict[str, Any]:
    """The exact decoding settings of a `generate` / `stream_response` call, as a JSON-able dict.

    Every key is a `transformers.GenerationConfig` field, and the config a call decodes with is built from
    this dict alone (nothing comes from the checkpoint's generation_config.json; a setting not listed has the
    library's neutral default: no suppressed, forced or banned tokens). Greedy: plain argmax, no penalty, no
    n-gram block, no minimum length. Sampling: softmax at `temperature` over the whole vocabulary (no top-k /
    top-p / typical / min-p cut). With `tokenizer`, also the stop ids (`eos_token_id`: end-of-turn, then eos
    when it differs) and the pad id. Records and cache keys store this dict.
    """
    if max_new_tokens < 1:
        raise ValueError(f"max_new_tokens={max_new_tokens} must be >= 1")
    if not greedy and not temperature > 0:
        raise ValueError(f"temperature={temperature} must be > 0 when sampling")
    settings: dict[str, Any] = {
        "do_sample": not greedy,
        "num_beams": 1,
        "max_new_tokens": int(max_new_tokens),
        "min_new_tokens": 0,
        "repetition_penalty": 1.0,
        "no_repeat_ngram_size": 0,
    }
    if not greedy:  # sampling-only settings (transformers flags them as invalid for greedy decoding)
        settings.update(temperature=float(temperature), top_k=0, top_p=1.0, typical_p=1.0, min_p=None)
    if tokenizer is not None:
        stop = _stop_ids(tokenizer, eot_id)
        pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else stop[0]
        settings.update(eos_token_id=stop, pad_token_id=int(pad))
    return settings


_LOCKS: weakref.WeakKeyDictionary[Any, threading.Lock] = weakref.WeakKeyDictionary()
_LOCKS_GUARD = threading.Lock()


@contextmanager
def _only_these_settings(model: Any) -> Iterator[None]:
    """Blanks the generation_config of the model whose `generate` runs (a peft model's base) for one call, so
    that transformers has no checkpoint setting to fill in; one call at a time per model (a chat in the
    workbench may stream on another thread)."""
    target = model.get_base_model() if hasattr(model, "get_base_model") else model
    with _LOCKS_GUARD:
        lock = _LOCKS.setdefault(target, threading.Lock())
    with lock:
        own = target.generation_config
        target.generation_config = GenerationConfig()
        try:
            yield
        finally:
            target.generation_config = own


def _generate_ids(
    model: Any,
    prompts: Sequence[list[int]],
    settings: dict[str, Any],
    **kwargs: Any,
) -> list[list[int]]:
    """One left-padded `model.generate` call with exactly `settings` -> the new token ids of each prompt
    (padding included)."""
    device = _device(model)
    input_ids = pad_sequences(prompts, settings["pad_token_id"], left=True).to(device)  # (b, P)
    attention_mask = pad_sequences([[1] * len(p) for p in prompts], 0, left=True).to(device)  # (b, P)
    with _only_these_settings(model):
        out = model.generate(
            input_ids=input_ids,
            attention_mask=attention_mask,
            generation_config=GenerationConfig(**settings),
            **kwargs,
        )  # (b, P + new)
    return out[:, input_ids.shape[1] :].tolist()


def _is_token_ids(prompt: Any) -> bool:
    return bool(prompt) and all(isinstance(t, int) for t in prompt)


def generate(
    model: Any,
    tokenizer: Any,
    prompts: Sequence[Messages | list[int]],
    *,
    max_new_tokens: int = 128,
    batch_size: int = 16,
    eot_id: int | None = None,
    greedy: bool = True,
    temperature: float = 1.0,
    seed: int | None = None,
    progress: bool = True,
    on_batch: Callable[[int, int], None] | None = None,
) -> list[Generation]:
    """Replies to chat prompts (lists of messages ending with a user turn, or the prompt's token ids
    already rendered with the chat template), in the prompts' order.

    Batches of `batch_size` left-padded prompts (longest first, to waste little padding); the model is put
    in eval mode and restored afterwards; works with peft models. `on_batch(done, total)` is called after
    each batch with the number of prompts answered so far (e.g. to write a run's progress).
    """
    if batch_size < 1:
        raise ValueError(f"batch_size={batch_size} must be >= 1")
    settings = decoding_settings(greedy, temperature, max_new_tokens, tokenizer=tokenizer, eot_id=eot_id)
    encoded = [list(p) if _is_token_ids(p) else prompt_ids(tokenizer, p) for p in prompts]
    order = sorted(range(len(encoded)), key=lambda i: -len(encoded[i]))
    results: list[Generation | None] = [None] * len(encoded)
    starts = range(0, len(order), batch_size)
    with _eval_mode(model), _seeded(seed, _device(model)):
        for start in tqdm(starts, desc="generating", disable=not progress or not order):
            idx = order[start : start + batch_size]
            new = _generate_ids(model, [encoded[i] for i in idx], settings)
            for row, i in enumerate(idx):
                results[i] = _finish(tokenizer, new[row], settings["eos_token_id"])
            if on_batch is not None:
                on_batch(start + len(idx), len(order))
    return results  # type: ignore[return-value]


def generate_responses(model: Any, tokenizer: Any, prompts: Sequence[Messages], **kwargs: Any) -> list[str]:
    """The texts of `generate(model, tokenizer, prompts, **kwargs)`."""
    return [g.text for g in generate(model, tokenizer, prompts, **kwargs)]


class _TokenQueue(BaseStreamer):
    """Receives `generate`'s new tokens on the worker thread; the consumer reads them from `queue`."""

    def __init__(self) -> None:
        self.queue: queue.Queue[list[int] | None] = queue.Queue()
        self._prompt_seen = False

    def put(self, value: torch.Tensor) -> None:
        if not self._prompt_seen:  # generate() first puts the prompt
            self._prompt_seen = True
            return
        self.queue.put(value.reshape(-1).tolist())

    def end(self) -> None:
        self.queue.put(None)


class _Cancelled(StoppingCriteria):
    """Stops generation once the consumer has stopped reading."""

    def __init__(self, event: threading.Event) -> None:
        self.event = event

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor, **kwargs: Any) -> torch.Tensor:
        return torch.full(
            (input_ids.shape[0],), self.event.is_set(), dtype=torch.bool, device=input_ids.device
        )


def stream_response(
    model: Any,
    tokenizer: Any,
    prompt_messages: Messages,
    max_new_tokens: int = 128,
    *,
    eot_id: int | None = None,
    greedy: bool = True,
    temperature: float = 1.0,
    seed: int | None = None,
) -> Generator[str, None, Generation]:
    """Yields the growing reply text after each new token; the last value equals `generate`'s text.

    The generator's return value (`StopIteration.value`) is the whole reply as a `Generation`, so a caller
    that streams can still tell whether it `stopped` (e.g. for a reward that penalises unfinished replies).

    `model.generate` runs on a worker thread; stopping the iteration early stops it.
    """
    settings = decoding_settings(greedy, temperature, max_new_tokens, tokenizer=tokenizer, eot_id=eot_id)
    stop = settings["eos_token_id"]
    prompt = prompt_ids(tokenizer, prompt_messages)
    streamer, cancel, errors = _TokenQueue(), threading.Event(), []

    def work() -> None:
        try:
            with _seeded(seed, _device(model)):
                criteria = StoppingCriteriaList([_Cancelled(cancel)])
                _generate_ids(model, [prompt], settings, streamer=streamer, stopping_criteria=criteria)
        except BaseException as exc:  # re-raised on the consumer's thread
            errors.append(exc)
            streamer.end()

    new: list[int] = []
    last = None
    with _eval_mode(model):
        thread = threading.Thread(target=work, daemon=True)
        thread.start()
        try:
            while (tokens := streamer.queue.get()) is not None and not (set(tokens) & set(stop)):
                new.extend(tokens)
                text = _decode(tokenizer, new)
                if text != last and not text.endswith("\ufffd"):  # skip half-decoded multi-byte characters
                    last = text
                    yield text
        finally:
            cancel.set()
            thread.join()
    if errors:
        raise errors[0]
    result = _finish(tokenizer, new + (tokens or []), stop)  # `tokens` holds the stop token if one came
    if result.text != last:
        yield result.text
    return result


def write_generations_jsonl(
    path: str | Path,
    ids: Sequence[str],
    prompts: Sequence[Messages],
    generations: Sequence[Generation | str],
    extra: dict[str, Any] | Sequence[dict[str, Any]] | None = None,
) -> Path:
    """Writes one JSON line per example, keyed by `id`, atomically (temp file + os.replace).

    Record: `id`, `prompt`, `response` and, for Generation objects, `stopped` and `token_ids`; `extra` is
    merged into every record (a dict) or per record (a list of dicts).
    """
    n = len(ids)
    extras = list(extra) if isinstance(extra, list | tuple) else [extra or {}] * n
    if not len(prompts) == len(generations) == len(extras) == n:
        raise ValueError(
            f"lengths differ: ids {n}, prompts {len(prompts)}, generations {len(generations)}, "
            f"extra {len(extras)}"
        )
    if len(set(ids)) != n:
        raise ValueError("ids must be unique: generations are joined to examples by id")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            for example_id, prompt, gen, more in zip(ids, prompts, generations, extras, strict=True):
                record: dict[str, Any] = {"id": str(example_id), "prompt": list(prompt)}
                if isinstance(gen, Generation):
                    record.update(response=gen.text, stopped=gen.stopped, token_ids=gen.token_ids)
                else:
                    record["response"] = gen
                record.update(more)
                f.write(json.dumps(record, ensure_ascii=False) + "\n")
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def read_generations_jsonl(path: str | Path) -> dict[str, dict[str, Any]]:
    """{id: record} from a file written by write_generations_jsonl; bad lines are DataErrors."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: generations file not found")
    records: dict[str, dict[str, Any]] = {}
    for location, row in read_jsonl_text(read_text(path), str(path)):
        if isinstance(row, BrokenLine):
            raise DataError(f"{location}: {row.reason}")
        if not isinstance(row, dict) or not isinstance(row.get("id"), str) or "response" not in row:
            raise DataError(f"{location}: field 'id'/'response': a record needs a string id and a response")
        if row["id"] in records:
            raise DataError(f"{location} (id {row['id']!r}): field 'id': duplicate id")
        records[row["id"]] = row
    return records
