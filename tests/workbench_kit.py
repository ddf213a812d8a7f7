"""Shared helpers of the workbench tests: a finished run made in-process, the Align form's settings, a free
port, and the browser tests' fixtures (chromium, the launched app, a page per client, screenshots)."""

from __future__ import annotations

import json
import os
import signal
import socket
from contextlib import contextmanager
from pathlib import Path

import pytest

from adpa_core.config import config_from_dict
from adpa_core.runs import RunDir
from adpa_core.train import run_training
from workbench.jobs import pid_alive
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


TRACEBACK = 'Traceback (most recent call last):\n  File "x.py", line 1, in <module>\nKeyError: 3\n'


def fake_run(
    runs_dir: Path, name: str, method: str = "sft", error: str | None = None, log: str = ""
) -> RunDir:
    """A run as it lies on disk without training: `completed` with a final/ folder when `error` is None
    and `log` empty, `failed` with `error` (and a traceback in status.json), or `crashed` (a dead pid)
    when `error` is empty; `log` is its train.log."""
    run = RunDir(Path(runs_dir) / name)
    run.path.mkdir()
    run.config_path.write_text(f"objective:\n  method: {method}\n")
    if error is None and not log:
        run.final_dir.mkdir()
        run.set_status("completed", step=1, max_steps=1)
        return run
    (run.path / "train.log").write_text(log)
    if error:
        run.set_status("failed", step=0, max_steps=5, error=error, traceback=TRACEBACK)
    else:  # a process that died without a final state
        run.set_status("running", step=0, max_steps=5)
        status = json.loads(run.status_path.read_text())
        run.status_path.write_text(json.dumps({**status, "pid": 999_999_999}))
    return run


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


# ---------------------------------------------------------------- browser tests (Playwright + chromium)
CHROMIUM = "/usr/bin/chromium"
ARTIFACTS = Path(__file__).resolve().parent.parent / "test-artifacts"
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--no-first-run",
]
PAGE_TIMEOUT_MS = 120_000  # model loads and a training subprocess on a busy 2-core machine


@pytest.fixture(scope="module")
def browser():
    if not Path(CHROMIUM).exists():
        pytest.skip(f"{CHROMIUM} is missing (make browser-deps installs Debian's chromium)")
    sync_api = pytest.importorskip("playwright.sync_api")
    with sync_api.sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield browser
        browser.close()


@pytest.fixture(scope="module")
def served(browser, toy_home, tmp_path_factory):
    """(url, runs folder) of the workbench on the toy world, served on a free port, with a finished SFT
    run `sft-done`; a run a test leaves going is killed at the end."""
    from workbench.app import build_app

    runs = tmp_path_factory.mktemp("browser-runs")
    finished_run(runs, "sft-done", steps=30)
    app = build_app(toy_home, str(runs), world="toy")  # the session's home may hold the real world too
    with serving(app, runs) as url:
        yield url, runs


@contextmanager
def serving(app, runs: Path):
    """Serves `app` on a free local port and yields its URL; on exit closes it and kills any training
    process a run in `runs` left going (a failed test must not leave one behind)."""
    app.launch(server_name="127.0.0.1", server_port=free_port(), prevent_thread_lock=True, quiet=True)
    ARTIFACTS.mkdir(exist_ok=True)
    try:
        yield app.local_url
    finally:
        app.close()
        for run in runs.iterdir():
            status = RunDir(run).read_status()
            pid = status.get("pid")
            if status.get("state") in ("queued", "running") and pid != os.getpid() and pid_alive(pid):
                os.kill(pid, signal.SIGKILL)


@pytest.fixture(scope="module")
def url(served) -> str:
    return served[0]


@contextmanager
def open_page(browser, url: str):
    """A fresh page (its own browser context: a second client) on the app."""
    context = browser.new_context(viewport={"width": 1400, "height": 1000})
    page = context.new_page()
    page.set_default_timeout(PAGE_TIMEOUT_MS)
    page.goto(url)
    try:
        yield page
    finally:
        context.close()


def shot(page, name: str, full_page: bool = True) -> None:
    page.screenshot(path=str(ARTIFACTS / f"{name}.png"), full_page=full_page)
