"""Strips outputs, execution counts and per-run metadata from notebooks, so that git holds only their source.

    python scripts/strip_notebooks.py [--check] [NOTEBOOK ...]     (default: notebooks/*.ipynb)

`--check` changes nothing and exits with status 1 when a notebook is not stripped (`make strip` fixes it).
Cell tags (e.g. the `parameters` tag) and the kernel spec are kept.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import nbformat

ROOT = Path(__file__).resolve().parent.parent
CELL_KEYS_DROPPED = ("execution", "collapsed", "scrolled", "ExecuteTime")
NOTEBOOK_KEYS_KEPT = ("kernelspec", "language_info")


def strip(nb: nbformat.NotebookNode) -> nbformat.NotebookNode:
    """The notebook without outputs, execution counts, widget state or timing metadata (in place)."""
    for cell in nb.cells:
        if cell.cell_type == "code":
            cell.outputs = []
            cell.execution_count = None
        for key in CELL_KEYS_DROPPED:
            cell.metadata.pop(key, None)
    nb.metadata = nbformat.NotebookNode({k: v for k, v in nb.metadata.items() if k in NOTEBOOK_KEYS_KEPT})
    if "language_info" in nb.metadata:  # its version and mime type depend on the machine that ran it
        name = nb.metadata.language_info.get("name", "python")
        nb.metadata.language_info = nbformat.NotebookNode({"name": name})
    return nb


def stripped_text(path: Path) -> str:
    """The file's text as `strip` would write it."""
    return nbformat.writes(strip(nbformat.read(path, as_version=4))) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("notebooks", nargs="*", type=Path, help="default: notebooks/*.ipynb")
    parser.add_argument("--check", action="store_true", help="only report notebooks that are not stripped")
    args = parser.parse_args(argv)
    paths = args.notebooks or sorted((ROOT / "notebooks").glob("*.ipynb"))
    dirty = []
    for path in paths:
        text = stripped_text(path)
        if path.read_text(encoding="utf-8") == text:
            continue
        dirty.append(path)
        if not args.check:
            path.write_text(text, encoding="utf-8")
    verb = "not stripped" if args.check else "stripped"
    for path in dirty:
        print(f"{verb}: {path}")
    return 1 if args.check and dirty else 0


if __name__ == "__main__":
    sys.exit(main())
