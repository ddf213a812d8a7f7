"""The two built worlds the workbench offers, and the real world's build started from the app.

A world is a set of defaults for every field of the app: models, prompts, preference data, the reward that
matches its text (the toy reward for `toy:`, the judge for `real:`; never the toy reward on real text) and
its Align recipes. The real world is built by `adpa real build --quick` in a subprocess whose progress
is read back from its log file, so a page reload shows the same build.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .locations import WorkbenchError

CONFIGS = Path(__file__).resolve().parent.parent / "configs"


@dataclass(frozen=True)
class World:
    name: str
    label: str
    teacher: str
    teacher_ref: str
    student: str
    prompts: str
    preferences: str
    reward: str
    recipes: Path
    lora_rank: int
    scale: float  # the heatmap's colour scale: |A| at full colour
    note: str


WORLDS = {
    "toy": World(
        "toy",
        "toy world",
        "toy:teacher",
        "toy:teacher_ref",
        "toy:student",
        "toy:prompts",
        "toy:preferences",
        "toy",
        CONFIGS / "toy",
        0,
        2.0,
        "Toy world: word-level tokens, a 0.88 M teacher pair and a 0.09 M student (`adpa toy build`); "
        "scored by the toy reward.",
    ),
    "real": World(
        "real",
        "real model (SmolLM2)",
        "real:teacher",
        "real:teacher_ref",
        "real:student",
        "real:prompts",
        "real:preferences",
        "real",
        CONFIGS / "realworld",
        16,
        0.5,  # a DPO adapter's token advantages here are mostly within ±0.5 nats
        "Real-model world: SmolLM2-135M-Instruct. The teacher is a DPO LoRA adapter on it, the reference "
        "teacher the same model with the adapter off, and **the student is that same model** with a fresh "
        "LoRA adapter (`adpa real build`); scored by the judge of the prompts' instructions.",
    ),
}


def world(name: str | None) -> World:
    if name not in WORLDS:
        raise WorkbenchError(f"unknown world {name!r}; choose one of {', '.join(WORLDS)}")
    return WORLDS[name]


def reward_world(spec: str | None) -> str | None:
    """The world whose text a reward spec scores (`toy`, `real`), or None for a reward model."""
    spec = (spec or "").strip()
    return spec if spec in WORLDS else None


def model_world(source: str, depth: int = 0) -> str | None:
    """The world a model belongs to: by its short name, or for a run directory by the student it started
    from (an ADPA+ run: its DCKD run's); None when unknown (a hub id or a folder)."""
    from adpa_core.paths import world_of

    found = world_of(source)
    if found is not None or depth > 3:
        return found
    config = Path(source).expanduser() / "config.yaml"
    if not config.is_file():
        return None
    try:
        import yaml

        student = yaml.safe_load(config.read_text(encoding="utf-8"))["model"]["student"]
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return model_world(str(student), depth + 1)


def check_reward_world(spec: str, source: str | None) -> None:
    """Refuses a world's reward on another world's model (e.g. the toy reward on real text)."""
    want = reward_world(spec)
    have = model_world(source) if source else None
    if want is not None and have is not None and want != have:
        raise WorkbenchError(
            f"the {want} reward scores {want}-world text, but {source!r} is a {have}-world model: use the "
            f"reward {WORLDS[have].reward!r}"
        )


def same_model(a: str, b: str) -> bool:
    """True when two names (short names, paths) resolve to one folder."""
    from adpa_core.paths import resolve_model_path

    def resolved(name: str) -> str:
        try:
            return str(Path(resolve_model_path(name)).expanduser().resolve())
        except (OSError, ValueError):
            return name

    return resolved(a) == resolved(b)


# ---------------------------------------------------------------- what the real world's text needs


def real_example() -> dict[str, str]:
    """A held-out pair whose rejected reply breaks an instruction its chosen reply keeps (the shortest
    such reply), as {prompt, response}; empty strings when the real world is not built."""
    try:
        from adpa_core.data.sources import read_rows
        from adpa_core.real.judge import judge

        rows = [row for _, row in read_rows("real:preferences", "test")[0]]
    except (OSError, ValueError):
        return {"prompt": "", "response": ""}

    def broken(row: dict[str, Any]) -> bool:
        met = lambda text: [m["ok"] for m in judge(row["prompt"], text)["instructions"]]
        return any(c and not r for c, r in zip(met(row["chosen"]), met(row["rejected"]), strict=True))

    ranked = sorted(rows, key=lambda r: (not broken(r), len(r["rejected"])))
    if not ranked:
        return {"prompt": "", "response": ""}
    return {"prompt": ranked[0]["prompt"], "response": ranked[0]["rejected"]}


def token_view(tokenizer: Any, messages: list[dict[str, str]], token_ids: list[int]) -> dict[str, Any]:
    """What the heatmap shows beside the tokens: which are special tokens (shown quietly), and the prompt
    as the model reads it: the chat template's text (a default system prompt is part of it; the words are
    the ones typed, even those the vocabulary lacks)."""
    from adpa_core.data.templates import render

    specials = set(tokenizer.all_special_ids)
    return {
        "special": [i in specials for i in token_ids],
        "prompt_rendered": render(tokenizer, messages, generation_prompt=True),
    }


def judge_details(prompt: str, response: str, stopped: bool) -> dict[str, bool | None]:
    """The real world's judge on one reply as {check: passed}: content, each instruction, no hack, stop."""
    from adpa_core.real.judge import judge

    out = judge(prompt, response, stopped)
    details: dict[str, bool | None] = {
        "right answer" if out["task"] != "open" else "on topic": out["content"]
    }
    details.update({m["label"]: m["ok"] for m in out["instructions"]})
    details.update({f"no {name}": not hit for name, hit in out["hacks"].items()})
    details["stopped"] = out["stopped"]
    return details


# ---------------------------------------------------------------- building the real world from the app


def _files(home: Path) -> tuple[Path, Path]:
    folder = home / "real"
    return folder / "build.log", folder / "build.json"


def start_real_build(home: Path, quick: bool = True) -> dict[str, Any]:
    """Starts `adpa real build` (quick by default) as a subprocess logging to `real/build.log`."""
    state = real_build_status(home)
    if state["state"] == "running":
        raise WorkbenchError("the real world is already being built; see its progress below")
    log, meta = _files(home)
    log.parent.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, "-m", "adpa_core.cli", "real", "build", "--home", str(home)]
    cmd += ["--quick"] if quick else []
    env = {**os.environ, "ADPA_HOME": str(home), "PYTHONUNBUFFERED": "1"}
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            cmd,
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=env,
            start_new_session=True,
        )
    meta.write_text(json.dumps({"pid": proc.pid, "cmd": cmd}), encoding="utf-8")
    return real_build_status(home)


def real_build_status(home: Path) -> dict[str, Any]:
    """{state: idle | running | built | failed, line: the last progress line of the log}."""
    from adpa_core.real.build import is_built

    from .jobs import pid_alive

    log, meta = _files(home)
    try:
        pid = json.loads(meta.read_text(encoding="utf-8")).get("pid")
    except (OSError, ValueError):
        pid = None
    text = log.read_text(encoding="utf-8", errors="replace") if log.is_file() else ""
    lines = [p.strip() for p in text.replace("\r", "\n").splitlines() if p.strip()]
    line = lines[-1] if lines else ""
    if pid_alive(pid):
        return {"state": "running", "line": line}
    if is_built(home):
        return {"state": "built", "line": line}
    return {"state": "failed" if pid is not None else "idle", "line": line}
