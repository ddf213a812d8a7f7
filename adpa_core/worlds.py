"""What every built world shares (DESIGN.md section 4, STYLE.md habit 14): the toy world and the real-model
world are two instances of one idea, so the build machinery lives here once.

- stage keys: a hash of everything that decides a stage (seed, mode, recipe, generator code, upstream keys);
- `home_env`: `$ADPA_HOME` pointed at a build's home, so short names (`toy:`, `real:`) resolve there;
- `threads`: torch's thread count for a build (deterministic for a seed on one machine and thread count);
- `Stage` + `run_stages`: train each stage with the project's own `train()` unless its key and the hash of
  its published weights are unchanged, and publish the run's `final/` folder atomically;
- manifests (`read_manifest`, `complete_manifest`), library versions, and the health gates.

Each world keeps only what is its own (data, reward or judge, recipe, checks) in its folder.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from . import __version__
from .paths import adpa_home
from .runs import file_sha256


def stage_key(*parts: Any) -> str:
    """A short hash of JSON-able `parts`: equal parts, equal key."""
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:16]


def code_hash(folder: Path, names: Sequence[str]) -> str:
    """A short hash of the files `names` in `folder`: the code that decides a world's data and models."""
    digest = hashlib.sha256()
    for name in names:
        digest.update((folder / name).read_bytes())
    return digest.hexdigest()[:16]


@contextmanager
def threads(n: int) -> Iterator[None]:
    """torch's intra-op threads set to `n` for a block (restored afterwards).

    Results are deterministic for a seed on one machine with one thread count (float sums depend on it).
    """
    old = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(old)


@contextmanager
def home_env(home: str | Path | None) -> Iterator[Path]:
    """Points `$ADPA_HOME` at `home` for a block (so short names resolve there); yields the home folder."""
    old = os.environ.get("ADPA_HOME")
    if home is not None:
        os.environ["ADPA_HOME"] = str(Path(home).expanduser())
    try:
        yield adpa_home()
    finally:
        if home is not None:
            if old is None:
                os.environ.pop("ADPA_HOME", None)
            else:
                os.environ["ADPA_HOME"] = old


def versions() -> dict[str, str]:
    """The library versions a world was built with (recorded in its manifest)."""
    return {
        "adpa": __version__,
        "torch": torch.__version__,
        "transformers": __import__("transformers").__version__,
        "peft": __import__("peft").__version__,
    }


def host(load: Sequence[float] | None = None) -> dict[str, Any]:
    """Where and when something ran: CPU model, cores, UTC date, and the load average (1/5/15 min) `load`
    (default: now). The machine may be shared, so a time means little without the load it ran under."""
    cpu = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {
        "cpu": cpu,
        "cpu_count": os.cpu_count(),
        "date_utc": time.strftime("%Y-%m-%d %H:%M", time.gmtime()),
        "load_average": [round(x, 2) for x in (load if load is not None else os.getloadavg())],
    }


def read_manifest(path: Path, force: bool = False) -> dict[str, Any]:
    """The manifest at `path`, or {} when there is none (or `force` asks for a fresh build)."""
    if force or not path.exists():
        return {}
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}  # a damaged manifest means: build again


def stage_valid(entry: dict[str, Any] | None, key: str, weights: Path) -> bool:
    """True when a recorded stage has `key` and its published weights still match their hash."""
    return (
        bool(entry)
        and entry.get("key") == key
        and weights.exists()
        and file_sha256(weights) == entry["sha256"]
    )


def publish(src: Path, target: Path) -> None:
    """Copies folder `src` to `target` aside and renames it: a half-copied model never stays behind."""
    tmp = target.with_name(f".{target.name}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    shutil.copytree(src, tmp)
    shutil.rmtree(target, ignore_errors=True)
    os.replace(tmp, target)


@dataclass(frozen=True)
class Stage:
    """One trained stage of a world: `config()` is its run config (a `train()` run), whose `final/`
    folder is published as `target`; `weights` is the file in it whose hash the manifest records."""

    name: str
    key: str
    target: Path
    config: Callable[[], Any]
    weights: str = "model.safetensors"


def train_stage(cfg: Any, target: Path, progress: bool) -> float:
    """Trains `cfg` from scratch with `train()` and publishes its `final/` as `target`; returns seconds."""
    from .train import run_training

    shutil.rmtree(cfg.run_dir, ignore_errors=True)  # a rebuilt stage starts from scratch
    start = time.perf_counter()
    run_training(cfg, progress=progress)
    publish(cfg.run_dir / "final", target)
    return time.perf_counter() - start


def run_stages(
    stages: Sequence[Stage], old: dict[str, Any], progress: bool = True
) -> tuple[dict[str, Any], list[str]]:
    """(manifest entries by stage name, names of the stages trained now): each stage is skipped when its
    recorded entry in `old` has the same key and its published weights still match their hash."""
    entries: dict[str, Any] = {}
    trained = []
    for stage in stages:
        entry = old.get(stage.name)
        if not stage_valid(entry, stage.key, stage.target / stage.weights):
            seconds = train_stage(stage.config(), stage.target, progress)
            entry = {"key": stage.key, "seconds": seconds}
            entry["sha256"] = file_sha256(stage.target / stage.weights)
            trained.append(stage.name)
        entries[stage.name] = entry
    return entries, trained


def complete_manifest(path: Path, weights: dict[str, Path]) -> dict[str, Any] | None:
    """The manifest at `path` when the world is complete (evaluated, and every stage's weights, given as
    stage name -> published weights file, match their recorded hash); else None."""
    manifest = read_manifest(path)
    stages = manifest.get("stages", {})
    if manifest.get("evaluation") and all(
        stage_valid(stages.get(name), stages.get(name, {}).get("key", ""), file)
        for name, file in weights.items()
    ):
        return manifest
    return None


def health(measured: dict[str, float], gates: dict[str, tuple[str, float]]) -> dict[str, dict[str, Any]]:
    """Each gate `name -> (">=" | "<=", bound)` checked on `measured[name]`: {value, min | max, ok}."""
    out = {}
    for name, (op, bound) in gates.items():
        value = float(measured[name])
        ok = value >= bound if op == ">=" else value <= bound
        out[name] = {"value": value, "min" if op == ">=" else "max": bound, "ok": bool(ok)}
    return out
