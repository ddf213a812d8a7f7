"""Tables in the docs are rendered from committed JSON, never typed: `make docs-tables`.

A table lives in a markdown file between two markers that name it:

    <!-- table:real_matrix -->
    ...rendered rows...
    <!-- /table:real_matrix -->

Each name maps to the JSON file(s) a command wrote (committed under docs/data/, docs/realworld/,
docs/reproduce/ or benchmarks/recorded/) and a render function; a benchmark's block is rendered by the
benchmark's own function. `python scripts/docs_tables.py` rewrites every block from its JSON; `--check` only
compares and exits 1 naming the blocks that differ (tests/test_docs_tables.py runs it, so a number edited by
hand fails).
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))
import docs_blocks  # noqa: E402  (renderers of blocks without a module of their own, next to this file)

Renderer = Callable[[Any], str]
# name -> (JSON path relative to the repo, or a tuple of them: the renderer gets a list, render function)
TABLES: dict[str, tuple[str | tuple[str, ...], Renderer]] = {}


def sources(name: str) -> tuple[str, ...]:
    """The JSON files (relative to the repo) that table `name` is rendered from."""
    source = TABLES[name][0]
    return source if isinstance(source, tuple) else (source,)


def _load(source: str) -> Any:
    return json.loads((ROOT / source).read_text(encoding="utf-8"))


def table(name: str, source: str | tuple[str, ...]) -> Callable[[Renderer], Renderer]:
    """Registers `fn` as the renderer of block `name`, fed with the JSON in `source`."""

    def register(fn: Renderer) -> Renderer:
        TABLES[name] = (source, fn)
        return fn

    return register


# ---------------------------------------------------------------- renderers


def _module(name: str) -> Any:
    """`benchmarks.<name>`, imported lazily (benchmarks import torch)."""
    import importlib

    if str(ROOT) not in sys.path:
        sys.path.insert(0, str(ROOT))
    return importlib.import_module(f"benchmarks.{name}")


def _benchmark(name: str, function: str = "render") -> Renderer:
    """A benchmark module's own renderer."""

    def fn(data: Any) -> str:
        text = getattr(_module(name), function)(data)
        return re.sub(r"\A## [^\n]*\n\n", "", text)  # the section's heading stays in the document

    return fn


def recorded(name: str) -> str:
    return f"benchmarks/recorded/{name}.json"


for _name in ("loss_micro", "step_ratio", "trl_peer", "cache_bench", "tokenizer_check", "workbench_load"):
    table(_name, recorded(_name))(_benchmark(_name))
table("workbench_figures", recorded("workbench_figures"))(_benchmark("workbench_figures", "results_section"))
table("plan_memory", recorded("plan_memory"))(_benchmark("plan_memory", "section"))
SUMMARY = ("loss_micro", "step_ratio", "trl_peer", "cache_bench", "tokenizer_check", "workbench_figures")


@table("benchmark_targets", tuple(recorded(n) for n in (*SUMMARY, "plan_memory")))
def benchmark_targets(payloads: list[dict[str, Any]]) -> str:
    """Every recorded benchmark's targets in one table (benchmarks/RESULTS.md's summary)."""
    common = _module("common")
    return common.targets_table(common.all_targets(payloads))


# README's toy world from its recorded build; docs/RELIABILITY.md's case counts from `make stress`.
table("toy_world", "docs/data/toy_world.json")(docs_blocks.toy_world)
table("robustness", "docs/data/robustness.json")(docs_blocks.robustness)


def _reproduce(part: str) -> Renderer:
    """A section of `adpa reproduce`'s results (docs/reproduce/results.json), rows in the order of its
    `ROWS` (JSON keeps them sorted by name)."""

    def fn(data: dict[str, Any]) -> str:
        from adpa_core import reproduce_table as rt
        from adpa_core.reproduce import ROWS

        per_seed = data["per_seed"]
        known = [r.name for r in ROWS]
        names = sorted(rt.row_names(per_seed), key=lambda n: known.index(n) if n in known else len(known))
        if part == "switches":
            diffs = rt.ablations(per_seed)
            return rt.ablation_markdown({n: diffs[n] for n in names if n in diffs}).strip()
        if part == "per_seed":
            return rt.per_seed_markdown(per_seed, names)
        table = rt.aggregate(per_seed)
        return rt.markdown({n: table[n] for n in names}, data["seeds"], data["command"]).strip()

    return fn


for _part in ("table", "per_seed"):  # "switches" gets its block with the run that measures them
    table(f"reproduce_{_part}", "docs/reproduce/results.json")(_reproduce(_part))


table("realworld_builds", docs_blocks.REAL_BUILDS)(docs_blocks.realworld_builds)
table("realworld_eval", docs_blocks.REAL_BUILDS)(docs_blocks.realworld_eval)
table("realworld_pairs", docs_blocks.REAL_BUILDS)(docs_blocks.realworld_pairs)
table("realworld_skills", docs_blocks.REAL_BUILDS)(docs_blocks.realworld_skills)
table("real_matrix", "docs/data/real_matrix.json")(docs_blocks.real_matrix)


# ---------------------------------------------------------------- blocks


def _pattern(name: str) -> re.Pattern[str]:
    return re.compile(rf"(<!-- table:{name} -->)\n(.*?)\n?(<!-- /table:{name} -->)", re.S)


def render(name: str) -> str:
    source, fn = TABLES[name]
    return fn([_load(s) for s in source] if isinstance(source, tuple) else _load(source))


def blocks() -> dict[str, list[Path]]:
    """Each registered table name -> the markdown files that hold its block."""
    found: dict[str, list[Path]] = {name: [] for name in TABLES}
    for path in (
        sorted(ROOT.glob("*.md"))
        + sorted((ROOT / "docs").rglob("*.md"))
        + sorted((ROOT / "benchmarks").glob("*.md"))
    ):
        text = path.read_text(encoding="utf-8")
        for name in re.findall(r"<!-- table:(\w+) -->", text):
            if name not in TABLES:
                raise SystemExit(f"{path}: table block {name!r} has no renderer in scripts/docs_tables.py")
            found[name].append(path)
    return found


def update(check: bool = False) -> list[str]:
    """Rewrites (or, with `check`, compares) every block; returns 'file: name' for each one that differs."""
    stale = []
    for name, paths in blocks().items():
        rendered = render(name)
        for path in paths:
            text = path.read_text(encoding="utf-8")
            new = _pattern(name).sub(lambda m, r=rendered: f"{m.group(1)}\n{r}\n{m.group(3)}", text)
            if new != text:
                stale.append(f"{path.relative_to(ROOT)}: {name}")
                if not check:
                    path.write_text(new, encoding="utf-8")
    return stale


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--check", action="store_true", help="compare only; exit 1 if a table differs")
    args = p.parse_args(argv)
    stale = update(check=args.check)
    for line in stale:
        print(("differs from its JSON: " if args.check else "rendered: ") + line)
    return 1 if args.check and stale else 0


if __name__ == "__main__":
    sys.exit(main())
