"""The workbench under load and misuse: concurrent advantage calls, two runs started at once, loopback only.

The load test runs for ADPA_STRESS_SECONDS (default 6 s here; `make stress` runs the full 60 s) and writes
its figures to test-artifacts/workbench_load.json.
"""

from __future__ import annotations

import inspect
import json
import os
import threading
from pathlib import Path

import pytest

from benchmarks.workbench_load import percentile, run_load
from tests.workbench_kit import free_port, start_run_args

ARTIFACTS = Path("test-artifacts")


@pytest.fixture(scope="module")
def served(toy_home, tmp_path_factory):
    from workbench.app import build_app

    runs = tmp_path_factory.mktemp("load-runs")
    app = build_app(toy_home, str(runs))
    app.launch(server_name="127.0.0.1", server_port=free_port(), prevent_thread_lock=True, quiet=True)
    try:
        yield app, runs
    finally:
        app.close()


def test_percentile_by_hand():
    assert percentile([3.0, 1.0, 2.0, 4.0], 0.5) == 2.5
    assert percentile([1.0, 2.0, 3.0, 4.0, 5.0], 0.95) == pytest.approx(4.8)
    assert percentile([7.0], 0.95) == 7.0


@pytest.mark.slow
def test_ten_concurrent_clients_on_the_advantage_api(served):
    app, _ = served
    seconds = float(os.environ.get("ADPA_STRESS_SECONDS", "6"))
    result = run_load(app.local_url, clients=10, seconds=seconds)
    ARTIFACTS.mkdir(exist_ok=True)
    (ARTIFACTS / "workbench_load.json").write_text(json.dumps(result, indent=2))
    print(
        f"\nworkbench load: {result['ok']} calls in {seconds:.0f} s from 10 clients, "
        f"{result['errors']} errors, p50 {result['p50_s']:.3f} s, p95 {result['p95_s']:.3f} s"
    )
    assert result["errors"] == 0, result["first_errors"]
    assert result["hung_clients"] == 0
    assert result["ok"] >= 10  # every client got answers, not just one
    assert result["p50_s"] <= result["p95_s"] <= result["max_s"]


@pytest.mark.slow
def test_two_users_starting_runs_at_once_get_one_run_and_one_clear_refusal(served):
    from gradio_client import Client
    from gradio_client.exceptions import AppError

    from workbench.jobs import pid_alive

    app, runs = served
    clients = [Client(app.local_url, verbose=False) for _ in range(2)]
    go = threading.Barrier(2)
    outcomes: dict[str, object] = {}

    def start(i: int) -> None:
        go.wait()
        try:
            outcomes[f"user{i}"] = clients[i].predict(
                *start_run_args("sft", f"user{i}-run", 100000), api_name="/start_run"
            )
        except AppError as exc:
            outcomes[f"user{i}"] = exc

    threads = [threading.Thread(target=start, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    try:
        refused = [k for k, v in outcomes.items() if isinstance(v, AppError)]
        started = [k for k, v in outcomes.items() if not isinstance(v, AppError)]
        assert len(refused) == 1 and len(started) == 1, outcomes
        assert f"'{started[0]}-run'" in str(outcomes[refused[0]])
        assert "one run at a time" in str(outcomes[refused[0]])
        assert not (runs / f"{refused[0]}-run").exists()  # nothing half-made for the refused user
        assert (runs / f"{started[0]}-run" / "config.yaml").exists()
    finally:
        for path in runs.glob("*/status.json"):
            pid = json.loads(path.read_text()).get("pid")
            if pid and pid != os.getpid() and pid_alive(pid):
                os.kill(pid, 9)


def test_the_workbench_listens_on_loopback_unless_told_otherwise():
    from adpa_core.cli import build_parser
    from workbench.app import launch, serve

    assert inspect.signature(serve).parameters["host"].default == "127.0.0.1"
    assert inspect.signature(launch).parameters["host"].default == "127.0.0.1"
    assert inspect.signature(serve).parameters["share"].default is False
    assert build_parser().parse_args(["workbench"]).host == "127.0.0.1"


def test_a_served_app_is_reachable_on_loopback_only(served):
    import socket

    app, _ = served
    port = int(app.local_url.rstrip("/").rsplit(":", 1)[1])
    with socket.create_connection(("127.0.0.1", port), timeout=5):
        pass
    outward = _outward_address()
    if outward is None:
        pytest.skip("this machine has no non-loopback address to try")
    with pytest.raises(OSError), socket.create_connection((outward, port), timeout=2):
        pass


def _outward_address() -> str | None:
    import socket

    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        try:
            s.connect(("10.255.255.255", 1))  # no packet is sent: only picks the outward interface
            address = s.getsockname()[0]
        except OSError:
            return None
    return None if address.startswith("127.") else address
