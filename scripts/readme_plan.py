"""Writes the output of `adpa plan configs/real/adpa.yaml --gpus 8 --gpu-mem 80` into README.md.

    python scripts/readme_plan.py

The block between the README's `adpa plan` markers is replaced by the command's output (never retyped);
tests/test_plan.py checks that it is current.
"""

from __future__ import annotations

import contextlib
import io
from pathlib import Path

from adpa_core.cli import main

ROOT = Path(__file__).resolve().parents[1]
COMMAND = ["plan", "configs/real/adpa.yaml", "--gpus", "8", "--gpu-mem", "80"]
BEGIN, END = "<!-- adpa plan:begin -->", "<!-- adpa plan:end -->"


def render() -> str:
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        main([COMMAND[0], str(ROOT / COMMAND[1]), *COMMAND[2:]])
    return f"```\n$ adpa {' '.join(COMMAND)}\n{out.getvalue().rstrip()}\n```\n"


if __name__ == "__main__":
    readme = ROOT / "README.md"
    text = readme.read_text(encoding="utf-8")
    start, end = text.index(BEGIN) + len(BEGIN), text.index(END)
    readme.write_text(text[:start] + "\n" + render() + text[end:], encoding="utf-8")
