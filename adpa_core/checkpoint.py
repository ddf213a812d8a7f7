"""What a checkpoint holds to resume exactly: trainable weights, optimizer, scheduler, RNG, loop position.

Files in `checkpoints/step-N/`: `trainable.safetensors` (only the parameters being trained: the adapter of a
LoRA student, every weight of a full one), `optimizer.pt`, `scheduler.pt`, `rng-rank<r>.pt` (one per
process), `state.json` (step, tokens seen, elapsed time). Everything is loaded with `weights_only=True`.

Under a sharding engine (FSDP, DeepSpeed ZeRO-3) the trainable weights and the optimizer state are the
engine's own sharded files in `engine/` instead (distributed.save_sharded: torch.distributed.checkpoint, or
DeepSpeed's checkpoint), written by every process; the engines read them back with their own loaders, after
the manifest's hashes have been checked.
"""

from __future__ import annotations

import json
import pickle  # only for its error class: every file is loaded with weights_only=True
import random
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from .runs import CheckpointError


def trainable_state(model: nn.Module) -> dict[str, torch.Tensor]:
    return {name: p.detach().cpu().contiguous() for name, p in model.named_parameters() if p.requires_grad}


def load_trainable_state(model: nn.Module, path: Path) -> None:
    state = load_file(str(path))
    params = dict(model.named_parameters())
    missing = [n for n, p in params.items() if p.requires_grad and n not in state]
    unknown = [n for n in state if n not in params]
    if missing or unknown:
        raise CheckpointError(
            f"{path} does not fit this model ({len(missing)} trainable weights missing, "
            f"{len(unknown)} unknown; "
            f"e.g. {(missing + unknown)[0]}): was the run's model or LoRA setting changed?"
        )
    with torch.no_grad():
        for name, tensor in state.items():
            params[name].copy_(tensor.to(params[name].device, params[name].dtype))


def rng_state() -> dict[str, Any]:
    state: dict[str, Any] = {"torch": torch.get_rng_state(), "python": list(_flatten(random.getstate()))}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _flatten(py_state: tuple) -> list[Any]:
    version, internal, gauss = py_state
    return [version, list(internal), gauss]


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_state(
    folder: Path,
    model: nn.Module,
    optimizer: Any,
    scheduler: Any,
    loop_state: dict[str, Any],
    weights: bool = True,
) -> None:
    """Writes the main process's part of a checkpoint into `folder` (RNG files are written per process).

    `weights=False`: a sharding engine wrote the weights and optimizer state itself (`engine/`)."""
    if weights:
        save_file(trainable_state(model), str(folder / "trainable.safetensors"))
        torch.save(optimizer.state_dict(), folder / "optimizer.pt")
    torch.save(scheduler.state_dict(), folder / "scheduler.pt")
    (folder / "state.json").write_text(json.dumps(loop_state, indent=2, sort_keys=True), encoding="utf-8")


def load_state(
    folder: Path, model: nn.Module, optimizer: Any, scheduler: Any, rank: int, weights: bool = True
) -> dict[str, Any]:
    """Restores a checkpoint written by `save_state` (+ this process's RNG); returns the loop state.

    `weights=False`: the weights and optimizer state were restored by the sharding engine."""
    try:
        if weights:
            load_trainable_state(model, folder / "trainable.safetensors")
            optimizer.load_state_dict(torch.load(folder / "optimizer.pt", weights_only=True))
        scheduler.load_state_dict(torch.load(folder / "scheduler.pt", weights_only=True))
        rng_file = folder / f"rng-rank{rank}.pt"
        if not rng_file.exists():
            rng_file = folder / "rng-rank0.pt"
        set_rng_state(torch.load(rng_file, weights_only=True))
        return json.loads((folder / "state.json").read_text(encoding="utf-8"))
    except (OSError, RuntimeError, ValueError, KeyError, pickle.UnpicklingError) as exc:
        if isinstance(exc, CheckpointError):
            raise
        raise CheckpointError(f"cannot resume from {folder}: {exc}") from exc
