"""Runs every benchmark (`make bench`), prints each table and a summary of all targets.

    python -m benchmarks.run_all [--quick] [--only loss_micro,step_ratio] [--threads N]

Results: benchmarks/out/<name>.json per benchmark, benchmarks/out/run_all.json (the summary) and
benchmarks/out/tables.md (every table in markdown, for RESULTS.md).
"""

from __future__ import annotations

import argparse
import importlib
import time
from typing import Any

import torch

from . import common as C

BENCHMARKS = (
    "loss_micro",
    "step_ratio",
    "trl_peer",
    "cache_bench",
    "tokenizer_check",
    "workbench_figures",
    "plan_memory",
    "gpu",
)


def parse(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m benchmarks.run_all", description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="every benchmark's smoke mode")
    p.add_argument("--only", default=",".join(BENCHMARKS), help="comma-separated subset")
    p.add_argument("--threads", type=int, default=None, help="CPU threads (default: torch's)")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse(argv)
    payloads: dict[str, dict[str, Any]] = {}
    seconds: dict[str, float] = {}
    for name in args.only.split(","):
        if name not in BENCHMARKS:
            raise SystemExit(f"unknown benchmark {name!r}; choose from {', '.join(BENCHMARKS)}")
        module = importlib.import_module(f"benchmarks.{name}")
        sub = ["--quick"] if args.quick else []
        if args.threads and name != "gpu":
            sub += ["--threads", str(args.threads)]
        print(f"\n=== {name} {' '.join(sub)}", flush=True)
        t0 = time.perf_counter()
        payloads[name] = module.main(sub)
        seconds[name] = time.perf_counter() - t0
    rows = [{**t, "seconds": seconds[t["benchmark"]]} for t in C.all_targets(list(payloads.values()))]
    summary = {
        "benchmark": "run_all",
        "command": C.command_line("benchmarks.run_all", argv),
        "machine": C.machine(C.pick_device()),
        "config": {
            "quick": args.quick,
            "only": args.only,
            "threads": args.threads or torch.get_num_threads(),
        },
        "results": [{"benchmark": n, "seconds": s} for n, s in seconds.items()],
        "targets": rows,
    }
    C.write_json("run_all", summary)
    tables = [importlib.import_module(f"benchmarks.{n}").render(p) for n, p in payloads.items()]
    tables.append("## All targets\n\n" + C.targets_table(rows))
    path = C.write_text("tables.md", "\n\n".join(tables) + "\n")
    print("\n" + tables[-1], flush=True)
    print(f"\ntables: {path}", flush=True)
    return summary


if __name__ == "__main__":
    main()
