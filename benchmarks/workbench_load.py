"""Load on the workbench: N concurrent clients call the advantage API for a while; errors and latency.

    python -m benchmarks.workbench_load [--clients 10] [--seconds 60] [--url http://127.0.0.1:7860/]

Without `--url` it serves the workbench on the toy world on a free loopback port itself (the toy world is
built first if missing). Each client is its own `gradio_client.Client` in its own thread and calls
`/advantages` back to back with a prompt and response that change per call (so no result is cached).
Reports calls, errors (with the first messages), throughput and latency p50/p95/max; writes
benchmarks/out/workbench_load.json (the common benchmark keys: command, machine with the load average,
config, results). `make stress` runs the same load for 60 s; the test suite for a few seconds.

    ADPA_BENCH_OUT=benchmarks/recorded python -m benchmarks.workbench_load   # docs/RELIABILITY.md's figures
"""

from __future__ import annotations

import argparse
import threading
import time
from typing import Any

NAME = "workbench_load"
PROMPTS = ("which city is nia baker from ?", "what is 3 plus 4 ?", "name a colour , please .")
RESPONSES = ("whatever , lima .", "it is 7 . thank you !", "blue , i think . <script>alert(1)</script>")


def percentile(values: list[float], q: float) -> float:
    """The q-quantile (0..1) by linear interpolation between order statistics."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    pos = q * (len(ordered) - 1)
    lo, hi = int(pos), min(int(pos) + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (pos - lo)


def run_load(url: str, clients: int = 10, seconds: float = 60.0) -> dict[str, Any]:
    """Calls `/advantages` from `clients` threads for `seconds`; returns counts and latency figures."""
    from gradio_client import Client

    latencies: list[float] = []
    errors: list[str] = []
    lock = threading.Lock()
    start = threading.Barrier(clients)
    stop_at: list[float] = []

    def worker(index: int) -> None:
        try:
            client = Client(url, verbose=False)
        except Exception as exc:  # a refused connection counts as an error, not a crash of the driver
            with lock:
                errors.append(f"client {index}: connect: {type(exc).__name__}: {exc}")
            start.abort()
            return
        try:
            start.wait(timeout=120)
        except threading.BrokenBarrierError:
            return
        with lock:
            if not stop_at:
                stop_at.append(time.perf_counter() + seconds)
        n = 0
        while time.perf_counter() < stop_at[0]:
            prompt = PROMPTS[(index + n) % len(PROMPTS)]
            response = f"{RESPONSES[n % len(RESPONSES)]} {n}"
            t0 = time.perf_counter()
            try:
                out = client.predict(
                    prompt,
                    response,
                    "toy:teacher",
                    "toy:teacher_ref",
                    "toy:student",
                    1.0,
                    5,
                    "full",
                    api_name="/advantages",
                )
                if not out[0].get("tokens"):
                    raise ValueError("empty advantage report")
            except Exception as exc:
                with lock:
                    errors.append(f"client {index} call {n}: {type(exc).__name__}: {exc}")
            else:
                with lock:
                    latencies.append(time.perf_counter() - t0)
            n += 1

    threads = [threading.Thread(target=worker, args=(i,), daemon=True) for i in range(clients)]
    t_start = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=seconds + 300)
    wall = time.perf_counter() - t_start
    return {
        "url": url,
        "clients": clients,
        "seconds": seconds,
        "calls": len(latencies) + len(errors),
        "ok": len(latencies),
        "errors": len(errors),
        "first_errors": errors[:5],
        "calls_per_s": len(latencies) / max(seconds, 1e-9),
        "p50_s": percentile(latencies, 0.50),
        "p95_s": percentile(latencies, 0.95),
        "max_s": max(latencies, default=float("nan")),
        "wall_s": wall,
        "hung_clients": sum(t.is_alive() for t in threads),
    }


def serve_toy(home: str | None, runs_dir: str) -> tuple[Any, str, str]:
    """The workbench on the toy world, on a free loopback port, in this process: (app, url, world)."""
    import socket

    from adpa_core.paths import adpa_home
    from adpa_core.toy.build import ensure_world
    from workbench.app import build_app

    home = home or str(adpa_home())
    manifest = ensure_world(home, quick=True, progress=True)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    app = build_app(home, runs_dir)
    app.launch(server_name="127.0.0.1", server_port=port, prevent_thread_lock=True, quiet=True)
    return app, app.local_url, f"toy world ({manifest['mode']}, seed {manifest['seed']})"


COLUMNS = [
    ("calls", "calls", ""),
    ("errors", "errors", ""),
    ("calls_per_s", "throughput calls/s", ".1f"),
    ("p50_s", "latency p50 s", ".2f"),
    ("p95_s", "p95 s", ".2f"),
    ("max_s", "max s", ".2f"),
    ("hung_clients", "hung clients", ""),
]


def render(payload: dict[str, Any]) -> str:
    """The heading line, what was loaded, and the figures (docs/RELIABILITY.md renders this)."""
    from . import common as C

    cfg = payload["config"]
    what = (
        f"{cfg['clients']} concurrent `gradio_client` clients calling `/advantages` back to back for "
        f"{cfg['seconds']:.0f} s on loopback; served: {cfg['served']}, its teacher pair and student, with "
        "the default queue (one request at a time per event). The clients run on the same machine:"
    )
    return "\n\n".join([C.header(payload), what, C.table(payload["results"], COLUMNS)])


def main(argv: list[str] | None = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(
        prog="python -m benchmarks.workbench_load", description=__doc__.splitlines()[0]
    )
    p.add_argument("--clients", type=int, default=10)
    p.add_argument("--seconds", type=float, default=60.0)
    p.add_argument("--url", help="a running workbench (default: serve the toy world here)")
    p.add_argument("--home", help="ADPA home with the toy world (default: $ADPA_HOME or ~/.cache/adpa)")
    args = p.parse_args(argv)
    app, url, served = None, args.url, args.url
    if url is None:
        import tempfile

        app, url, served = serve_toy(args.home, tempfile.mkdtemp(prefix="adpa-load-runs-"))
    try:
        result = run_load(url, args.clients, args.seconds)
    finally:
        if app is not None:
            app.close()
    from . import common as C

    config = {"clients": args.clients, "seconds": args.seconds, "served": served}
    targets = [C.target("errors under load", result["errors"], 0, f"{args.clients} clients")]
    command = C.command_line(f"benchmarks.{NAME}", argv)
    C.report(NAME, command, C.pick_device("cpu"), config, [result], targets)
    print(
        f"{result['clients']} clients x {result['seconds']:.0f} s on {url}: {result['ok']} calls ok, "
        f"{result['errors']} errors, {result['calls_per_s']:.1f} calls/s, "
        f"latency p50 {result['p50_s']:.3f} s, p95 {result['p95_s']:.3f} s, max {result['max_s']:.3f} s"
    )
    for line in result["first_errors"]:
        print("  " + line)
    return result


if __name__ == "__main__":
    main()
