"""The run directory (DESIGN.md section 2): the unit that the CLI, notebooks and workbench share.

    runs/<name>/
      config.yaml          the full resolved config
      status.json          state (queued|running|completed|failed|cancelled), error, timestamps, progress
      metrics.jsonl        one JSON object per logged step
      checkpoints/step-N/  everything needed to resume exactly, with a manifest of file hashes
      final/               the trained weights or adapter (+ tokenizer)
      generations/*.jsonl  generated responses keyed by example id

Every file that a crash could leave half-written is written to a temporary name and renamed.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
from pathlib import Path
from typing import Any

STATES = ("queued", "running", "completed", "failed", "cancelled")
MANIFEST = "manifest.json"


class CheckpointError(RuntimeError):
    """A checkpoint is missing files or its contents do not match its manifest."""


def atomic_write_text(path: str | Path, text: str) -> None:
    """Writes `text` to `path` through a temporary file and a rename (never a half-written file)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def atomic_write_json(path: str | Path, data: Any) -> None:
    atomic_write_text(path, json.dumps(data, indent=2, sort_keys=True) + "\n")


def file_sha256(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


class RunDir:
    """Reads and writes one run directory. Cheap to construct; touches the disk only when asked."""

    def __init__(self, path: str | Path):
        self.path = Path(path)

    # ------------------------------------------------------------ layout
    @property
    def config_path(self) -> Path:
        return self.path / "config.yaml"

    @property
    def status_path(self) -> Path:
        return self.path / "status.json"

    @property
    def metrics_path(self) -> Path:
        return self.path / "metrics.jsonl"

    @property
    def checkpoints_dir(self) -> Path:
        return self.path / "checkpoints"

    @property
    def final_dir(self) -> Path:
        return self.path / "final"

    @property
    def generations_dir(self) -> Path:
        return self.path / "generations"

    def exists(self) -> bool:
        return self.config_path.exists()

    # ------------------------------------------------------------ status
    def read_status(self) -> dict[str, Any]:
        try:
            return json.loads(self.status_path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return {"state": "unknown"}
        except (json.JSONDecodeError, OSError) as exc:
            return {"state": "unknown", "error": f"unreadable status.json: {exc}"}

    def set_status(self, state: str, **fields: Any) -> dict[str, Any]:
        """Updates status.json (merging `fields`), stamping the time of each state change."""
        if state not in STATES:
            raise ValueError(f"unknown run state {state!r}; one of {STATES}")
        status = self.read_status()
        status.pop("state", None)
        now = time.time()
        status.update(fields)
        status["state"] = state
        status["updated_at"] = now
        status.setdefault(f"{state}_at", now)
        if state == "running":
            status.setdefault("started_at", now)
            status["pid"] = os.getpid()
        atomic_write_json(self.status_path, status)
        return status

    # ------------------------------------------------------------ metrics
    def append_metrics(self, record: dict[str, Any]) -> None:
        """Appends one JSON line and flushes it to disk (readers see whole lines only)."""
        self.path.mkdir(parents=True, exist_ok=True)
        with open(self.metrics_path, "a", encoding="utf-8") as f:
            f.write(json.dumps(record, sort_keys=True) + "\n")
            f.flush()
            os.fsync(f.fileno())

    def read_metrics(self) -> list[dict[str, Any]]:
        """All complete metric lines (a torn last line from a crash is ignored)."""
        if not self.metrics_path.exists():
            return []
        records = []
        for line in self.metrics_path.read_text(encoding="utf-8").splitlines():
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError:
                continue
        return records

    def truncate_metrics(self, after_step: int) -> None:
        """Drops metric lines past `after_step` (used on resume, so the log has no duplicates)."""
        kept = [r for r in self.read_metrics() if r.get("step", 0) <= after_step]
        atomic_write_text(self.metrics_path, "".join(json.dumps(r, sort_keys=True) + "\n" for r in kept))

    # ------------------------------------------------------------ checkpoints
    def checkpoint_dirs(self) -> list[Path]:
        """Complete checkpoints (those with a manifest), oldest first."""
        if not self.checkpoints_dir.exists():
            return []
        found = [p for p in self.checkpoints_dir.glob("step-*") if (p / MANIFEST).exists()]
        return sorted(found, key=lambda p: int(p.name.split("-", 1)[1]))

    def begin_checkpoint(self, step: int) -> Path:
        """A fresh temporary folder to fill with checkpoint files; `commit_checkpoint` publishes it."""
        tmp = self.checkpoints_dir / f".step-{step}.tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        return tmp

    def commit_checkpoint(self, step: int, tmp: Path) -> Path:
        """Writes the manifest of file hashes, then renames the folder to step-N (atomic publish)."""
        final = self.checkpoints_dir / f"step-{step}"
        files = sorted(p for p in tmp.rglob("*") if p.is_file())
        manifest = {"step": step, "files": {str(p.relative_to(tmp)): file_sha256(p) for p in files}}
        atomic_write_json(tmp / MANIFEST, manifest)
        shutil.rmtree(final, ignore_errors=True)
        os.replace(tmp, final)
        return final

    def discard_partial_writes(self) -> None:
        """Removes what a crash in the middle of a write left: temporary files that were never renamed
        into place and checkpoint folders that were never published. Only for a run that is not running."""
        for folder in (self.path, self.generations_dir, self.checkpoints_dir):
            if not folder.exists():
                continue
            for tmp in folder.glob(".*.tmp*"):
                if tmp.is_dir():
                    shutil.rmtree(tmp, ignore_errors=True)
                else:
                    tmp.unlink(missing_ok=True)

    def prune_checkpoints(self, keep: int) -> None:
        for old in self.checkpoint_dirs()[:-keep]:
            shutil.rmtree(old, ignore_errors=True)

    def latest_valid_checkpoint(self) -> Path | None:
        """The newest checkpoint whose files match its manifest; corrupted ones are skipped."""
        for ckpt in reversed(self.checkpoint_dirs()):
            try:
                verify_checkpoint(ckpt)
                return ckpt
            except CheckpointError:
                continue
        return None


def verify_checkpoint(path: str | Path) -> dict[str, Any]:
    """Checks every file of a checkpoint against its manifest; returns the manifest."""
    path = Path(path)
    try:
        manifest = json.loads((path / MANIFEST).read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise CheckpointError(f"{path}: unreadable manifest ({exc})") from exc
    for name, digest in manifest.get("files", {}).items():
        file = path / name
        if not file.exists():
            raise CheckpointError(f"{path}: missing {name}")
        if file_sha256(file) != digest:
            raise CheckpointError(f"{path}: {name} does not match its recorded hash (truncated or corrupted)")
    return manifest


def list_runs(root: str | Path = "runs") -> list[dict[str, Any]]:
    """Summaries of the run directories under `root`, newest first."""
    root = Path(root)
    if not root.exists():
        return []
    rows = []
    for path in root.iterdir():
        run = RunDir(path)
        if not run.exists():
            continue
        status = run.read_status()
        rows.append({"name": path.name, "path": str(path), **status})
    return sorted(rows, key=lambda r: r.get("updated_at", 0), reverse=True)
