"""Records how many robustness cases ran and passed, per test file, in test-artifacts/robustness.json (or
the file $ADPA_ROBUSTNESS_JSON names: `ADPA_ROBUSTNESS_JSON=docs/data/robustness.json make stress` writes
the copy that docs/RELIABILITY.md is rendered from), with the command, the machine and its load average.

Files that ran in this session replace their earlier entry; files that did not run keep theirs.
"""

from __future__ import annotations

import json
import os
import sys
import time
from collections import Counter
from pathlib import Path

import pytest

_OUTCOMES: dict[str, Counter] = {}


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    if "tests/robustness/" not in report.nodeid.replace(os.sep, "/"):
        return
    # one outcome per case: its call, or the setup that failed or skipped it
    if report.when == "call" or (report.when == "setup" and not report.passed):
        _OUTCOMES.setdefault(report.nodeid.split("::")[0], Counter())[report.outcome] += 1


def pytest_sessionfinish(session: pytest.Session) -> None:
    if not _OUTCOMES:
        return
    root = Path(session.config.rootpath)
    path = root / os.environ.get("ADPA_ROBUSTNESS_JSON", "test-artifacts/robustness.json")
    try:
        files = json.loads(path.read_text(encoding="utf-8")).get("files", {})
    except (OSError, ValueError, AttributeError):
        files = {}
    now = time.strftime("%Y-%m-%dT%H:%M:%S")
    for name, counts in _OUTCOMES.items():
        files[name] = {
            "cases": sum(counts.values()),
            **{k: counts[k] for k in ("passed", "failed", "skipped")},
        }
        files[name]["recorded_at"] = now
    totals = {k: sum(f[k] for f in files.values()) for k in ("cases", "passed", "failed", "skipped")}
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    from adpa_core.worlds import host

    record = {"command": _command(), "machine": host(), "totals": totals}
    tmp.write_text(json.dumps({**record, "files": dict(sorted(files.items()))}, indent=2) + "\n")
    os.replace(tmp, path)


def _command() -> str:
    env = [f"{k}={os.environ[k]}" for k in ("ADPA_STRESS_SECONDS", "ADPA_ROBUSTNESS_JSON") if k in os.environ]
    return " ".join([*env, "pytest", *sys.argv[1:]])
