"""Runs started from the workbench: each is an `adpa train` subprocess writing a normal run directory.

Everything the app shows about a run is read back from that directory (status.json, metrics.jsonl), so a
page reload or an app restart sees the same runs with their true state. A run's state is trusted only
while its process lives: `running` (or `queued`) with a dead pid means the process crashed.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import yaml

from adpa_core.config import METHODS, TEACHER_METHODS, config_from_dict, save_config
from adpa_core.runs import RunDir, list_runs

from .locations import Locations, WorkbenchError, check_run_name

RECIPES = Path(__file__).resolve().parent.parent / "configs" / "toy"
ACTIVE = ("queued", "running")
LOG_NAME = "train.log"
# The toy recipe's settings when configs/toy is not shipped (e.g. an installed package).
FALLBACK_RECIPE: dict[str, Any] = {
    "model": {"student": "toy:student", "teacher": "toy:teacher", "teacher_ref": "toy:teacher_ref"},
    "data": {"train": "toy:preferences", "max_length": 128, "max_prompt_length": 64},
    "objective": {},
    "train": {"max_steps": 300, "batch_size": 32, "learning_rate": 1e-3, "warmup_ratio": 0.05},
}


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


def recipe(method: str) -> dict[str, Any]:
    """The toy recipe of `method` (configs/toy/<method>.yaml) as plain data."""
    if method not in METHODS:
        raise WorkbenchError(f"unknown method {method!r}; choose one of {', '.join(METHODS)}")
    path = RECIPES / f"{method}.yaml"
    if path.is_file():
        return yaml.safe_load(path.read_text(encoding="utf-8"))
    data = {k: dict(v) for k, v in FALLBACK_RECIPE.items()}
    data["objective"]["method"] = method
    return data


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
        a dead process that never finished), `eta_s` counted down to now, `metrics` and `log_tail`."""
        run = RunDir(self.loc.run_dir(name))
        if not run.exists():
            raise WorkbenchError(f"there is no run named {name!r} in {self.loc.runs_dir}")
        out = self._summary(run)
        out["metrics"] = run.read_metrics()
        if out["display"] in ("failed", "crashed"):
            out["log_tail"] = _tail(run.path / LOG_NAME)
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
            "method": _method(run),
            "alive": alive,
            "display": display,
            "eta_s": eta if display == "running" else None,
        }

    # ------------------------------------------------------------ starting and stopping
    def start(self, settings: dict[str, Any]) -> dict[str, Any]:
        """Writes runs/<name>/config.yaml from the method's recipe and `settings`, marks it queued and
        starts `adpa train` on it. Refuses a run while `max_concurrent` others are active."""
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
            cfg = config_from_dict(self.config_data(name, settings))
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

    def config_data(self, name: str, s: dict[str, Any]) -> dict[str, Any]:
        """The run config as plain data: the method's recipe with the user's settings applied."""
        method = s.get("method") or "sft"
        data = recipe(method)
        data["name"], data["output_dir"] = name, str(self.loc.runs_dir)
        model, obj, train = data.setdefault("model", {}), data.setdefault("objective", {}), data["train"]
        obj["method"] = method
        for key in ("student", "teacher", "teacher_ref"):
            if s.get(key):
                model[key] = self.loc.source(s[key], key.replace("_", " "))
        if method not in TEACHER_METHODS:
            for key in ("teacher", "teacher_ref", "teacher_adapter"):
                model.pop(key, None)
        if method == "adpa_plus":
            model["student"] = self._dckd_student(s.get("dckd_run"))
        if s.get("data"):
            data["data"]["train"] = self.loc.source(s["data"], "training data")
        steps = int(s.get("steps") or train.get("max_steps", 100))
        train["max_steps"] = steps
        train["log_every"] = int(s.get("log_every") or max(1, steps // 100))  # ~100 points per curve
        if s.get("learning_rate"):
            train["learning_rate"] = float(s["learning_rate"])
        if s.get("max_examples"):
            data["data"]["max_examples"] = int(s["max_examples"])
        _objective_settings(method, obj, s)
        rank = int(s.get("lora_rank") or 0)
        if rank > 0:
            model.update(lora=True, lora_r=rank, lora_alpha=2 * rank)
        return data

    def _dckd_student(self, dckd_run: str | None) -> str:
        if not dckd_run:
            raise WorkbenchError("ADPA+ starts from a finished DCKD run: train DCKD first, then pick it")
        run = RunDir(self.loc.run_dir(dckd_run))
        cfg_method = _method(run)
        if cfg_method != "dckd" or not run.final_dir.is_dir():
            state = run.read_status().get("state", "missing")
            raise WorkbenchError(
                f"ADPA+ needs a finished DCKD run; {dckd_run!r} is a {cfg_method or 'missing'} run "
                f"(state {state})"
            )
        return str(run.path)

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


def _objective_settings(method: str, obj: dict[str, Any], s: dict[str, Any]) -> None:
    """alpha: the KL weights (kd, dckd); gamma: the ADPA weight; beta: the advantage or DPO temperature."""
    if s.get("alpha") is not None and method in ("kd", "dckd"):
        obj["w_kl_chosen"] = float(s["alpha"])
        if method == "dckd":
            obj["w_kl_rejected"] = float(s["alpha"])
    if s.get("gamma") is not None and method in ("adpa", "adpa_plus"):
        obj["gamma"] = float(s["gamma"])
    if s.get("beta") is not None:
        if method in ("adpa", "adpa_plus"):
            obj["beta"] = float(s["beta"])
        elif method == "dpo":
            obj["beta_dpo"] = float(s["beta"])


def _method(run: RunDir) -> str | None:
    try:
        data = yaml.safe_load(run.config_path.read_text(encoding="utf-8"))
        return data["objective"]["method"]
    except (OSError, yaml.YAMLError, KeyError, TypeError):
        return None


def _tail(path: Path, lines: int = 15) -> str:
    try:
        return "\n".join(path.read_text(encoding="utf-8", errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


def method_defaults(method: str) -> dict[str, Any]:
    """The settings the Align tab shows for `method`: its recipe's steps and learning rate, and the
    objective's alpha (KL weight), gamma (ADPA weight) and beta (advantage scale; beta_dpo for DPO)."""
    from adpa_core.config import ObjectiveConfig

    data = recipe(method)
    obj = ObjectiveConfig(**{**data.get("objective", {}), "method": method})
    return {
        "steps": int(data["train"]["max_steps"]),
        "learning_rate": float(data["train"]["learning_rate"]),
        "alpha": obj.w_kl_chosen,
        "gamma": obj.gamma,
        "beta": obj.beta_dpo if method == "dpo" else obj.beta,
    }
