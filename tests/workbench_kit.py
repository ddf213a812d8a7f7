"""Shared helpers of the workbench tests: a finished run made in-process, a launched app, a free port."""

from __future__ import annotations

import socket
from pathlib import Path

from adpa_core.config import config_from_dict
from adpa_core.train import run_training
from workbench.run_form import recipe


def finished_run(
    runs_dir: str | Path,
    name: str = "sft-done",
    method: str = "sft",
    steps: int = 2,
    lora_rank: int = 0,
    max_examples: int | None = None,
) -> Path:
    """A completed run of the toy student (a few steps in this process), with its final/ weights (a LoRA
    adapter when `lora_rank` > 0), on the first `max_examples` preference pairs (default all)."""
    data = recipe(method)
    data["name"], data["output_dir"] = name, str(runs_dir)
    data["train"].update(max_steps=steps, log_every=1, save_every=0, batch_size=8)
    data["data"]["max_examples"] = max_examples
    if lora_rank:
        data["model"].update(lora=True, lora_r=lora_rank, lora_alpha=2 * lora_rank)
    cfg = config_from_dict(data)
    run_training(cfg, progress=False)
    return cfg.run_dir


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# The Align form's settings as the Start button sends them (the ADPA toy defaults, all examples).
FORM = {
    "method": "adpa",
    "name": "run",
    "steps": 2,
    "learning_rate": 0.001,
    "lora_rank": 0,
    "alpha": 0.1,
    "gamma": 0.5,
    "beta": 1.0,
    "dckd_run": None,
    "student": "toy:student",
    "teacher": "toy:teacher",
    "teacher_ref": "toy:teacher_ref",
    "data": "toy:preferences",
    "max_examples": 0,
}


def start_run_args(method: str, name: str, steps: int, **change) -> list:
    """The positional inputs of the `/start_run` API (the form's fields in order, see `FORM`)."""
    return list({**FORM, "method": method, "name": name, "steps": steps, **change}.values())
