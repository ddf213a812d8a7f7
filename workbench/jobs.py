"""Runs started from the workbench: each is an `adpa train` subprocess writing a normal run directory.

Everything the app shows about a run is read back from that directory (status.json, metrics.jsonl), so a
page reload or an app restart sees the same runs with their true state. A run's state is trusted only
while its process lives: `running` (or `queued`) with a dead pid means the process crashed.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from adpa_core.config import RunConfig, save_config
from adpa_core.runs import RunDir, list_runs

from .locations import Locations, WorkbenchError, check_run_name
from .run_form import build_config, run_method

ACTIVE = ("queued", "running")
LOG_NAME = "train.log"


def pid_alive(pid: Any) -> bool:
    """True when `pid` names a live process (a zombie, i.e. an exited child not yet reaped, is dead)."""
    if not isinstance(pid, int) or pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    stat = Path(f"/proc/{pid}/stat")
    with contextlib.suppress(OSError, IndexError):
        return stat.read_text().rsplit(")", 1)[1].split()[0] != "Z"
    return True


class RunManager:
    """Starts, watches and cancels runs under `locations.runs_dir`; at most `max_concurrent` at a time."""

    def __init__(self, locations: Locations, max_concurrent: int = 1) -> None:
        if max_concurrent < 1:
            raise ValueError(f"max_concurrent={max_concurrent} must be >= 1")
        self.loc, self.max_concurrent = locations, max_concurrent
        self._procs: dict[str, subprocess.Popen] = {}
        self._cancelled: set[str] = set()
        self._lock = threading.Lock()

    # ------------------------------------------------------------ reading
    def status(self, name: str) -> dict[str, Any]:
        """status.json of a run plus `name`, `method`, `alive`, `display` (the state to show: `crashed` for
        a dead process that never finished), `eta_s` counted down to now, `metrics`, and for a run that
        failed or crashed `error_line` (one line) and `log` (its train.log, which holds any traceback)."""
        run = RunDir(self.loc.run_dir(name))
        if not run.exists():
            raise WorkbenchError(f"there is no run named {name!r} in {self.loc.runs_dir}")
        out = self._summary(run)
        out["metrics"] = run.read_metrics()
        if out["display"] in ("failed", "crashed"):
            out["error_line"] = error_line(run, out)
            log = run.path / LOG_NAME
            out["log"] = str(log) if log.is_file() else None
        return out

    def list(self) -> list[dict[str, Any]]:
        """Every run under the runs folder, newest first, with the state to show."""
        rows = []
        for row in list_runs(self.loc.runs_dir):
            with contextlib.suppress(WorkbenchError):
                rows.append(self._summary(RunDir(self.loc.runs_dir / check_run_name(row["name"]))))
        return rows

    def active(self) -> list[dict[str, Any]]:
        return [r for r in self.list() if r["display"] in ACTIVE]

    def _summary(self, run: RunDir) -> dict[str, Any]:
        name = run.path.name
        proc = self._procs.get(name)
        if proc is not None and proc.poll() is not None:  # reap our finished child
            self._procs.pop(name, None)
        status = run.read_status()
        state = status.get("state", "unknown")
        alive = pid_alive(status.get("pid"))
        display = state
        if state in ACTIVE and not alive:
            if name in self._cancelled:  # killed before its SIGTERM handler was installed
                status = run.set_status("cancelled", error="cancelled by the user before training started")
                display = "cancelled"
            else:
                display = "crashed"
        eta = status.get("eta_s")
        if eta is not None and display == "running":
            eta = max(0.0, float(eta) - (time.time() - float(status.get("updated_at", time.time()))))
        return {
            **status,
            "name": name,
            "path": str(run.path),
            "method": run_method(run),
            "alive": alive,
            "display": display,
            "eta_s": eta if display == "running" else None,
        }

    # ------------------------------------------------------------ starting and stopping
    def start(
        self, settings: dict[str, Any], check: Callable[[RunConfig], None] | None = None
    ) -> dict[str, Any]:
        """Writes runs/<name>/config.yaml from the method's recipe and the form's `settings`, marks it
        queued and starts `adpa train` on it. Before anything is written the config is validated as
        `adpa train` does (`run_form.build_config`) and by `check` (e.g. the models resolve). Refuses a run
        while `max_concurrent` others are active."""
        name = check_run_name(settings.get("name"))
        run = RunDir(self.loc.runs_dir / name)
        with self._lock:
            busy = self.active()
            if len(busy) >= self.max_concurrent:
                names = ", ".join(
                    f"{r['name']!r} ({r['display']}, step {r.get('step', 0)}/{r.get('max_steps', '?')})"
                    for r in busy
                )
                raise WorkbenchError(
                    f"run {names} is still going; the workbench trains one run at a time "
                    f"(max {self.max_concurrent}): wait for it to finish or cancel it"
                )
            if run.path.exists():
                raise WorkbenchError(f"a run named {name!r} already exists; choose another name")
            cfg = build_config(self.loc, name, settings)
            if check is not None:
                check(cfg)
            run.path.mkdir(parents=True)
            save_config(cfg, run.config_path)
            run.set_status("queued", step=0, max_steps=cfg.train.max_steps, error=None)
            proc = self._spawn(run)
            # The child writes its first status only after importing torch and loading models (seconds
            # later), so recording its pid here cannot overwrite a newer state.
            run.set_status("queued", pid=proc.pid)
            self._procs[name] = proc
        return {
            "name": name,
            "message": f"started run {name!r} ({cfg.objective.method}, {cfg.train.max_steps} steps)",
            **self._summary(run),
        }

    def _spawn(self, run: RunDir) -> subprocess.Popen:
        cmd = [sys.executable, "-m", "adpa_core.cli", "train", str(run.config_path), "--quiet"]
        env = {**os.environ, "ADPA_HOME": str(self.loc.home), "PYTHONUNBUFFERED": "1"}
        with open(run.path / LOG_NAME, "ab") as log:  # the child keeps its own handle
            return subprocess.Popen(
                cmd,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env=env,
                start_new_session=True,  # a reload or an app restart does not stop the run
            )

    def log_copy(self, name: str) -> str | None:
        """A copy of a run's train.log in the temporary folder (which Gradio may serve), or None."""
        log = self.loc.run_dir(name) / LOG_NAME
        if not log.is_file():
            return None
        folder = Path(tempfile.gettempdir()) / "adpa-workbench-logs"
        folder.mkdir(exist_ok=True)
        copy = folder / f"{name}-{LOG_NAME}"
        shutil.copyfile(log, copy)
        return str(copy)

    def cancel(self, name: str) -> dict[str, Any]:
        """Sends SIGTERM to the run's process; the CLI turns it into a clean `cancelled` state."""
        run = RunDir(self.loc.run_dir(name))
        summary = self._summary(run) if run.exists() else None
        if summary is None:
            raise WorkbenchError(f"there is no run named {name!r}")
        if summary["display"] not in ACTIVE:
            return {**summary, "message": f"run {name!r} is not running (state {summary['display']})"}
        if summary.get("pid") == os.getpid():
            raise WorkbenchError(f"run {name!r} trains inside this app's own process; stop it there")
        self._cancelled.add(name)
        with contextlib.suppress(ProcessLookupError):
            os.kill(int(summary["pid"]), signal.SIGTERM)
        return {**summary, "message": f"cancelling run {name!r}"}

    def wait(self, name: str, timeout: float = 60.0) -> dict[str, Any]:
        """Waits until the run has ended and its process has exited (tests, scripts); returns its summary."""
        deadline = time.monotonic() + timeout
        while True:
            summary = self._summary(RunDir(self.loc.run_dir(name)))
            ended = summary["display"] not in ACTIVE and not summary["alive"]
            if ended or time.monotonic() > deadline:
                return summary
            time.sleep(0.2)


def error_line(run: RunDir, status: dict[str, Any]) -> str:
    """Why a run failed, in one line: its status error, else the log's last `error:` or final line (the
    exception, never the traceback above it)."""
    if status.get("error"):
        return " ".join(str(status["error"]).split())[:500]
    try:
        lines = [ln.strip() for ln in (run.path / LOG_NAME).read_text(errors="replace").splitlines()]
    except OSError:
        lines = []
    lines = [ln.split("\r")[-1] for ln in lines if ln]
    errors = [ln for ln in lines if ln.startswith("error:")]
    last = (errors or lines or [""])[-1][:500]
    return f"the training process ended without a final state{': ' + last if last else ''}"
