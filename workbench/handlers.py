"""What the workbench's events call: plain data in (strings, numbers), plain data out (dicts, lists).

No Gradio and no tensor math here: advantages come from `adpa_core.advantage`, replies from
`adpa_core.generate`, rewards from `adpa_core.rewards`, runs from `jobs.RunManager`. Models load on first
use and stay in a small LRU cache; `adpa_core`'s torch modules are imported only inside the handlers, so
importing the workbench loads nothing heavy.
"""

from __future__ import annotations

import json
import random
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import yaml

from adpa_core.runs import RunDir

from .cache import ModelCache
from .jobs import RunManager
from .locations import Locations, WorkbenchError, one_line, positive
from .run_form import check_models, fresh_run_name
from .vocab import known_case, vocabulary_notes
from .worlds import (
    WORLDS,
    check_reward_world,
    judge_details,
    real_example,
    reward_world,
    same_model,
    token_view,
)

TOY = {"teacher": "toy:teacher", "teacher_ref": "toy:teacher_ref", "student": "toy:student"}
TOY_PROMPTS = "toy:prompts"


class Handlers:
    """The workbench's operations on one ADPA home and one runs folder."""

    def __init__(self, locations: Locations, jobs: RunManager, cache: ModelCache | None = None) -> None:
        self.loc, self.jobs = locations, jobs
        self.cache = cache or ModelCache()
        self._examples: dict[str, dict[str, str]] = {}

    # ------------------------------------------------------------ models (lazy, cached)
    def inference_model(self, name: str) -> tuple[Any, Any]:
        """(frozen model, tokenizer) of a toy: name, run name (its final/), hub id or confined path."""
        source = self.loc.source(name)
        run = RunDir(source)
        if run.exists() and not run.final_dir.is_dir():
            state = run.read_status().get("state", "unknown")
            raise WorkbenchError(f"run {run.path.name!r} has no final weights yet (state {state})")

        pair = self.cache.find(lambda key: len(key) == 3 and key[0] == source and key[2] == "pair")
        if pair is not None:  # a loaded DPO teacher also serves for generation (no second copy in memory)
            return pair.dpo, self.tokenizer(source)

        def load() -> tuple[Any, Any]:
            from adpa_core.models import load_inference_model

            return load_inference_model(source)

        return self.cache.get((source, "inference"), load)

    def tokenizer(self, name: str) -> Any:
        source = self.loc.source(name)

        def load() -> Any:
            from adpa_core.models import load_tokenizer

            return load_tokenizer(source)

        return self.cache.get((source, "tokenizer"), load)

    def teacher_pair(self, teacher: str, teacher_ref: str | None) -> tuple[Any, Any]:
        """(TeacherPair, the teacher's tokenizer); no reference teacher when `teacher_ref` is empty.

        A DPO teacher that is a LoRA adapter (a folder, or a run whose final/ holds one) is loaded on its
        base, and the reference teacher is that base with the adapter off (one base in memory).
        """
        dpo = self.loc.source(teacher, "teacher")
        ref = self.loc.source(teacher_ref, "reference teacher") if (teacher_ref or "").strip() else None
        tokenizer = self.tokenizer(dpo)
        base = adapter_base(dpo)
        if base is not None and ref is not None and not same_model(ref, base):
            raise WorkbenchError(
                f"the DPO teacher {teacher!r} is a LoRA adapter on {base!r}: its reference teacher is that "
                "base with the adapter off; leave the reference teacher empty (or give that base)"
            )

        def load() -> Any:
            from adpa_core.config import ModelConfig
            from adpa_core.models import load_teacher_pair

            if base is not None:
                cfg = ModelConfig(student=base, teacher=base, teacher_adapter=dpo)
            else:
                cfg = ModelConfig(student=dpo, teacher=dpo, teacher_ref=ref)
            return load_teacher_pair(cfg, tokenizer=tokenizer)

        return self.cache.get((dpo, None if base else ref, "pair"), load), tokenizer

    def reward_fn(self, spec: str) -> Any:
        """`toy` (the toy world's exact reward), `real` (the real world's judge) or a reward model (a hub id
        or confined path)."""
        spec = (spec or "").strip()
        if spec == "toy":
            from adpa_core.rewards import toy_reward

            return self.cache.get((str(self.loc.home), "toy-reward"), toy_reward)
        if spec == "real":
            from adpa_core.rewards import real_reward

            return self.cache.get(("real-reward",), real_reward)
        source = self.loc.source(spec, "reward model")

        def load() -> Any:
            from adpa_core.rewards import reward_model

            return reward_model(source)

        return self.cache.get((source, "reward"), load)

    # ------------------------------------------------------------ prompts
    def prompts(self, dataset: str = TOY_PROMPTS, split: str = "test") -> list[dict[str, Any]]:
        """{id, prompt (messages)} of every row of a prompt, preference or SFT source."""
        source = self.loc.source(dataset, "dataset")

        def load() -> list[dict[str, Any]]:
            from adpa_core.data import load_prompts

            return load_prompts(source, split=split)

        return self.cache.get((source, split, "prompts"), load)

    def sample_prompt(
        self, dataset: str = TOY_PROMPTS, split: str = "test", index: int = -1
    ) -> dict[str, Any]:
        """One prompt of a dataset as text (its last user message): row `index`, or a random one if < 0."""
        from adpa_core.rewards import prompt_text

        rows = self.prompts(dataset, split)
        if not rows:
            raise WorkbenchError(f"{dataset} ({split}) has no prompts")
        i = random.randrange(len(rows)) if index is None or int(index) < 0 else int(index) % len(rows)
        return {"id": rows[i]["id"], "index": i, "count": len(rows), "prompt": prompt_text(rows[i]["prompt"])}

    def example(self, world_name: str = "toy") -> dict[str, str]:
        """The first example of a world: a toy prompt with a rude reply, or a real prompt with a reply
        that breaks one of its instructions; empty strings when the world is not built."""
        if not self._examples.get(world_name):  # looked up again until the world is there
            find = real_example if world_name == "real" else self._find_example
            self._examples[world_name] = find()
        return dict(self._examples[world_name])

    def _find_example(self) -> dict[str, str]:
        try:
            from adpa_core.data import read_preferences
            from adpa_core.rewards import prompt_text
            from adpa_core.toy.lexicon import RUDE_WORDS

            rows, _ = read_preferences("toy:preferences", split="test")
        except (OSError, ValueError):
            return {"prompt": "", "response": ""}
        rude = [r for r in rows if set(r["rejected"].split()) & set(RUDE_WORDS)]
        if not rows:
            return {"prompt": "", "response": ""}
        row = (rude or rows)[0]
        return {"prompt": prompt_text(row["prompt"]), "response": row["rejected"]}

    # ------------------------------------------------------------ advantages
    def advantages(
        self,
        prompt: str,
        response: str,
        teacher: str = TOY["teacher"],
        teacher_ref: str = TOY["teacher_ref"],
        student: str = TOY["student"],
        beta: float = 1.0,
        k: int = 8,
        support: str = "full",
        support_k: int = 20,
    ) -> dict[str, Any]:
        """`AdvantageReport.to_dict()` of (prompt, response) plus `worst` (the most negative positions),
        `unknown` (tokens read as the unknown token) and `models` (what was loaded). Words the tokenizer
        knows only in lower case are lower-cased first (said in `notes`). Without a student: no student
        probabilities or expected advantage."""
        from adpa_core.advantage import check_response, prompt_messages, response_advantages
        from adpa_core.models import check_tokenizer_contract

        prompt_messages(prompt or "")
        check_response(response or "")
        beta = positive(beta, "β")
        pair, tokenizer = self.teacher_pair(teacher, teacher_ref)
        model = None
        if (student or "").strip():
            model, student_tok = self.inference_model(student)
            check_tokenizer_contract(tokenizer, student_tok, ("teacher", "student"))
        prompt, lowered = known_case(tokenizer, prompt)
        response, lowered_reply = known_case(tokenizer, response)
        messages = prompt_messages(prompt)
        report = response_advantages(
            pair,
            tokenizer,
            messages,
            response,
            beta=beta,
            k=int(k),
            student=model,
            support=support,
            support_k=int(positive(support_k, "k of that top-k")) if support == "topk" else 20,
        )
        out = report.to_dict()
        out["unknown"], notes = vocabulary_notes(tokenizer, prompt, report.token_ids, lowered + lowered_reply)
        out["notes"] = notes + out["notes"]
        out["worst"] = report.worst(5)
        out.update(token_view(tokenizer, messages, report.token_ids))
        out["models"] = {"teacher": teacher, "teacher_ref": teacher_ref or None, "student": student or None}
        return out

    # ------------------------------------------------------------ generation and chat
    def stream(self, prompt: str, model: str, max_new_tokens: int = 48) -> Iterator[dict[str, Any]]:
        """The growing reply as {text, done: False}, then {text, done: True, stopped, tokens}."""
        from adpa_core.advantage import prompt_messages
        from adpa_core.generate import stream_response

        messages = prompt_messages(prompt or "")
        lm, tokenizer = self.inference_model(model)
        replies = stream_response(lm, tokenizer, messages, int(max_new_tokens))
        while True:
            try:
                yield {"text": next(replies), "done": False}
            except StopIteration as end:
                gen = end.value
                yield {"text": gen.text, "done": True, "stopped": gen.stopped, "tokens": len(gen.token_ids)}
                return

    def generate_response(
        self, prompt: str, model: str = TOY["student"], max_new_tokens: int = 48
    ) -> Iterator[str]:
        """The growing reply text of `model` (greedy)."""
        for part in self.stream(prompt, model, max_new_tokens):
            yield part["text"]

    def chat(
        self, prompt: str, model: str, max_new_tokens: int = 48, reward: str = "toy"
    ) -> Iterator[dict[str, Any]]:
        """`stream` with `model` in every part, and the reply's `score` (see `score_response`) at the end.
        A reward that cannot score this model's text (another world's) is a `score_error`, like one that
        cannot load: the reply stays."""
        for part in self.stream(prompt, model, max_new_tokens):
            part["model"] = model
            if part["done"] and (reward or "").strip():
                try:  # a reward that cannot load must not hide the reply (check_reward says why, once)
                    part["score"] = self.score_response(prompt, part["text"], reward, part["stopped"], model)
                except (ValueError, OSError) as exc:
                    part["score_error"] = one_line(exc)
            yield part

    def check_reward(self, spec: str) -> str:
        """'' when the reward `spec` loads (it stays cached), else why not, in one line."""
        if not (spec or "").strip():
            return ""
        try:
            self.reward_fn(spec)
        except (ValueError, OSError) as exc:
            return f"Reward {spec.strip()!r}: {one_line(exc)}"
        return ""

    def score_response(
        self, prompt: str, response: str, reward: str = "toy", stopped: bool = True, model: str | None = None
    ) -> dict[str, Any]:
        """{reward, name, details}: the reward of one reply; for the toy reward, details says which terms
        counted (correct answer, no rude word, no rambling, stopped); for the real world's judge, the
        content check, each instruction, the absence of hacks and the stop. `model`: the model the reply
        is scored for (a world's reward is refused on another world's model)."""
        from adpa_core.advantage import prompt_messages

        if model:
            check_reward_world(reward, self.loc.source(model))
        fn = self.reward_fn(reward)
        args = ([prompt_messages(prompt or "")], [response or ""], [bool(stopped)])
        out = {"reward": float(fn(*args)[0]), "name": getattr(fn, "name", reward), "details": {}}
        sections = fn.report_sections(*args) if hasattr(fn, "report_sections") else {}
        toy = sections.get("toy")
        if toy:
            correct = list(toy["correct"].values())
            out["details"] = {
                "correct": bool(correct[0]) if correct else None,
                "polite": not toy["rude_rate"],
                "concise": not toy["ramble_rate"],
                "stopped": bool(toy["stop_rate"]),
            }
        if getattr(fn, "name", None) == "real":
            out["details"] = judge_details(prompt, response or "", bool(stopped))
        return out

    def before_model(self, run: str | None, reward: str | None = None) -> str:
        """The student a run started from (for ADPA+: its DCKD run); without a run, the student of the
        world whose reward is chosen (toy:student for a reward model)."""
        if not (run or "").strip():
            return WORLDS[reward_world(reward) or "toy"].student
        path = self.loc.run_dir(run) / "config.yaml"
        try:
            return yaml.safe_load(path.read_text(encoding="utf-8"))["model"]["student"]
        except (OSError, yaml.YAMLError, KeyError, TypeError) as exc:
            raise WorkbenchError(f"cannot read the student of run {run!r} from {path}: {exc}") from exc

    # ------------------------------------------------------------ runs
    def start_run(self, settings: dict[str, Any]) -> dict[str, Any]:
        """Starts a run from the Align form's settings, once the config validates as in `adpa train` and
        its models resolve (run_form.check_models); a WorkbenchError names the field otherwise."""
        return self.jobs.start(settings, check=self.check_models)

    def check_models(self, cfg: Any) -> None:
        check_models(cfg, self.model_config, self.tokenizer)

    def model_config(self, name: str) -> Any:
        """The transformers config of a model (cached; loads no weights)."""
        from adpa_core.models import model_config

        return self.cache.get((name, "config"), lambda: model_config(name))

    def fresh_run_name(self, method: str) -> str:
        return fresh_run_name(method, self.loc.runs_dir)

    def run_log(self, name: str) -> str | None:
        return self.jobs.log_copy(name)

    def cancel_run(self, name: str) -> dict[str, Any]:
        return self.jobs.cancel(name)

    def run_status(self, name: str) -> dict[str, Any]:
        return self.jobs.status(name)

    def list_runs(self) -> list[dict[str, Any]]:
        return self.jobs.list()

    def run_names(self, method: str | None = None, finished: bool = False) -> list[str]:
        """Names of the runs (newest first), only of `method` and only those with final weights if asked."""
        return [
            r["name"]
            for r in self.jobs.list()
            if (method is None or r.get("method") == method)
            and (not finished or (r["display"] == "completed" and RunDir(r["path"]).final_dir.is_dir()))
        ]


def adapter_base(source: str) -> str | None:
    """The base model of a peft LoRA adapter folder (or of a run whose final/ is one, or a short name such
    as `real:teacher`); None otherwise."""
    from adpa_core.paths import resolve_model_path, world_of

    if world_of(source) is not None:
        try:
            source = resolve_model_path(source)
        except (OSError, ValueError):
            return None
    folder = Path(source).expanduser()
    if (folder / "final").is_dir():
        folder = folder / "final"
    config = folder / "adapter_config.json"
    if not config.is_file() or (folder / "config.json").exists():
        return None
    try:
        return json.loads(config.read_text(encoding="utf-8")).get("base_model_name_or_path") or None
    except (OSError, ValueError):
        return None
