"""The workbench's advantage views against the reply's length: build time of the alternatives figure.

The alternatives figure once framed the reply's token with one `fig.add_shape` per position; plotly
re-validates every earlier shape on each add, so the build cost the square of the length (issue 17: 287
tokens 5.2 s; 1,192 tokens 137 s). `workbench.figures` now hands plotly every frame at once and shows at
most `MAX_POSITIONS` positions. Per reply length (synthetic reports of the handler's shape, k = 8
alternatives, every frame present), in this process:

- `shipped_s`: `alternatives_figure` as the app calls it (one pass, capped);
- `one_pass_s`: the same with the cap lifted (every position plotted): the one-pass cost, which must grow
  linearly (target: log-log slope <= 1.2 between the two longest replies);
- `views_s`: everything the Advantages tab builds for a reply (summary, heatmap, table, both figures);
- `add_shape_s`: the previous code (one `add_shape` per frame, uncapped), up to `--max-add-shape` tokens.

Median of `--repeats` calls after one warmup call.

    python -m benchmarks.workbench_figures [--quick] [--threads N]
    python -m benchmarks.workbench_figures --render benchmarks/recorded/workbench_figures.json

The recorded run (benchmarks/recorded/workbench_figures.json) is what benchmarks/RESULTS.md shows,
rendered by `--render` (tests/test_workbench_checks.py checks that the two agree).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import plotly.graph_objects as go

from workbench import figures, views

from . import common as C

NAME = "workbench_figures"
LENGTHS = (25, 50, 100, 200, 400, 800, 1600)
QUICK_LENGTHS = (25, 50, 100, 200)
MAX_SLOPE = 1.2  # log-log slope of the one-pass build between the two longest replies: linear is 1
MAX_VIEWS_S = 1.0  # every view of a 1,600-token reply, one core
K = 8


def synthetic_report(n: int, k: int = K) -> dict[str, Any]:
    """A report of the handler's shape with `n` tokens; the reply's token is one of its k alternatives."""
    adv = [math.sin(t) - (3.0 if t % 97 == 13 else 0.0) for t in range(n)]
    alts = [
        [
            {
                "token": f"tok{(t * 7 + j) % 500}",
                "token_id": t if j == t % k else 10_000 + j,
                "advantage": adv[t] / (j + 1),
                "p_dpo": 0.5 / (j + 1),
                "p_ref": 0.4 / (j + 1),
                "p_student": 0.3 / (j + 1),
            }
            for j in range(k)
        ]
        for t in range(n)
    ]
    return {
        "prompt": [{"role": "user", "content": "a prompt"}],
        "tokens": [f"tok{t % 500}" for t in range(n)],
        "token_ids": list(range(n)),
        "advantage": adv,
        "logp_dpo": [-1.0] * n,
        "logp_ref": [-1.2] * n,
        "student_logp": [-0.8] * n,
        "alternatives": alts,
        "teacher_expected_advantage": [0.1] * n,
        "expected_advantage": [0.05] * n,
        "total": sum(adv),
        "beta": 1.0,
        "support": "full",
        "support_k": 20,
        "no_reference": False,
        "notes": [],
        "worst": [],
    }


def add_shape_figure(report: dict[str, Any]) -> go.Figure:
    """The alternatives figure as it was built before (every position, one add_shape per frame)."""
    n, alts = len(report["tokens"]), report["alternatives"]
    labels = figures.position_labels(report, range(n))
    k = max(len(a) for a in alts)
    fig = go.Figure(
        go.Heatmap(
            z=[[alts[t][j]["advantage"] for t in range(n)] for j in range(k)],
            x=labels,
            y=[f"#{j + 1}" for j in range(k)],
            text=[[alts[t][j]["token"] for t in range(n)] for j in range(k)],
            texttemplate="%{text}",
            colorscale=figures.COLORSCALE,
        )
    )
    for t in range(n):
        for j, a in enumerate(alts[t]):
            if a["token_id"] == report["token_ids"][t]:
                fig.add_shape(type="rect", x0=t - 0.5, x1=t + 0.5, y0=j - 0.5, y1=j + 0.5)
    return fig


def all_views(report: dict[str, Any]) -> None:
    views.summary_markdown(report)
    views.heatmap_html(report)
    views.token_table(report)
    views.alternatives_view(report, 0)
    figures.alternatives_figure(report)
    figures.expected_figure(report)


def seconds(fn: Callable[[], Any], repeats: int) -> float:
    fn()  # warmup
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def measure(lengths: tuple[int, ...], repeats: int, max_add_shape: int) -> list[dict[str, Any]]:
    rows = []
    for n in lengths:
        report = synthetic_report(n)
        row = {
            "tokens": n,
            "shipped_s": seconds(lambda r=report: figures.alternatives_figure(r), repeats),
            "one_pass_s": seconds(lambda r=report, n=n: figures.alternatives_figure(r, limit=n), repeats),
            "views_s": seconds(lambda r=report: all_views(r), repeats),
            "add_shape_s": None,
        }
        if n <= max_add_shape:
            row["add_shape_s"] = seconds(lambda r=report: add_shape_figure(r), 1)
        rows.append(row)
        print(
            f"{n:>5} tokens: shipped {row['shipped_s']:.3f} s, one pass {row['one_pass_s']:.3f} s, views "
            f"{row['views_s']:.3f} s, add_shape {C.fmt(row['add_shape_s'])} s",
            flush=True,
        )
    return rows


def slope(rows: list[dict[str, Any]], key: str) -> float | None:
    """d log(time) / d log(length) between the two longest replies that have `key`."""
    pts = [(r["tokens"], r[key]) for r in rows if r.get(key)]
    if len(pts) < 2:
        return None
    (n0, t0), (n1, t1) = pts[-2], pts[-1]
    return math.log(t1 / t0) / math.log(n1 / n0)


def targets(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    longest = rows[-1]
    return [
        C.target(
            "alternatives figure, one pass: log-log slope of build time vs length <= 1.2 (linear)",
            slope(rows, "one_pass_s"),
            MAX_SLOPE,
            f"between {rows[-2]['tokens']} and {longest['tokens']} tokens",
        ),
        C.target(
            f"every Advantages view of a {longest['tokens']}-token reply <= {MAX_VIEWS_S:g} s",
            longest["views_s"],
            MAX_VIEWS_S,
            "summary, heatmap, table, both figures; one process",
        ),
    ]


def render(payload: dict[str, Any]) -> str:
    """This benchmark's tables with their heading (benchmarks/out/tables.md)."""
    return f"## {payload['benchmark']}\n\n{results_section(payload)}"


def results_section(payload: dict[str, Any]) -> str:
    """The body of this benchmark's section in benchmarks/RESULTS.md, from a run's JSON."""
    cols = [
        ("tokens", "reply tokens", ""),
        ("shipped_s", "shipped figure s", ".3f"),
        ("one_pass_s", "one pass, every position s", ".3f"),
        ("views_s", "all views s", ".3f"),
        ("add_shape_s", "previous add_shape s", ".3f"),
    ]
    one, old = (C.fmt(slope(payload["results"], key), ".2f") for key in ("one_pass_s", "add_shape_s"))
    notes = (
        f"Log-log slope of build time against length between the two longest replies timed: one pass {one}, "
        f"previous add_shape {old} (1: linear, 2: quadratic)."
    )
    table = C.table(payload["results"], cols)
    ran = C.header(payload).split("\n\n", 1)[1]  # the command, machine and date (no heading)
    ran += f"; load average {payload['config']['load_average']:.1f} (a shared machine)"
    return "\n\n".join([ran, table, notes, C.targets_table(payload["targets"])])


def main(argv: list[str] | None = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(prog=f"python -m benchmarks.{NAME}", description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help=f"lengths {QUICK_LENGTHS} only")
    p.add_argument("--threads", type=int, default=None, help="CPU threads (default: torch's)")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--max-add-shape", type=int, default=400, help="longest reply timed with add_shape")
    p.add_argument("--render", metavar="JSON", help="print the RESULTS.md section of a recorded run")
    args = p.parse_args(argv)
    if args.render:
        payload = json.loads(Path(args.render).read_text(encoding="utf-8"))
        print(results_section(payload))
        return payload
    C.set_threads(args.threads)
    lengths = QUICK_LENGTHS if args.quick else LENGTHS
    rows = measure(lengths, 1 if args.quick else args.repeats, 50 if args.quick else args.max_add_shape)
    config = {
        "lengths": list(lengths),
        "k": K,
        "max_positions": figures.MAX_POSITIONS,
        "repeats": args.repeats,
        "load_average": os.getloadavg()[0],  # other jobs on the machine when the run started
    }
    payload = C.report(NAME, C.command_line(f"benchmarks.{NAME}", argv), C.pick_device("cpu"), config, rows,
                       targets(rows))  # fmt: skip
    print(render(payload), flush=True)
    return payload


if __name__ == "__main__":
    main()
