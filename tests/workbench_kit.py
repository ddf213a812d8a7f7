"""Shared helpers of the workbench tests: a finished run made in-process, a launched app, a free port."""

from __future__ import annotations

import socket
from pathlib import Path

from adpa_core.config import config_from_dict
from adpa_core.train import run_training
from workbench.jobs import recipe


def finished_run(
    runs_dir: str | Path, name: str = "sft-done", method: str = "sft", steps: int = 2, lora_rank: int = 0
) -> Path:
    """A completed run of the toy student (a few steps in this process), with its final/ weights (a LoRA
    adapter when `lora_rank` > 0)."""
    data = recipe(method)
    data["name"], data["output_dir"] = name, str(runs_dir)
    data["train"].update(max_steps=steps, log_every=1, save_every=0, batch_size=8)
    if lora_rank:
        data["model"].update(lora=True, lora_r=lora_rank, lora_alpha=2 * lora_rank)
    cfg = config_from_dict(data)
    run_training(cfg, progress=False)
    return cfg.run_dir


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_run_args(method: str, name: str, steps: int) -> list:
    """The positional inputs of the `/start_run` API: method, name, steps, then the Align tab's defaults
    (learning rate, LoRA rank, alpha, gamma, beta, DCKD run, toy models and data, all examples)."""
    rest = [
        0.001,
        0,
        0.1,
        1.5,
        1.0,
        None,
        "toy:student",
        "toy:teacher",
        "toy:teacher_ref",
        "toy:preferences",
        0,
    ]
    return [method, name, steps, *rest]
