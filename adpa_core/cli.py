"""The `adpa` command (DESIGN.md section 3). Each subcommand is a thin wrapper over the library."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable

EXIT_NOT_BUILT = 3

SUBCOMMANDS: dict[str, str] = {
    "toy": "build the offline toy world (data, tokenizer, teachers, student)",
    "train": "one alignment run (sft | dpo | kd | dckd | adpa | adpa_plus) from a YAML config",
    "generate": "student responses (y_hat) or chat outputs to JSONL",
    "cache-teacher": "top-k teacher (and reference teacher) log-prob cache",
    "advantages": "per-token teacher advantages of a (prompt, response)",
    "eval": "rewards and win rates of runs",
    "reproduce": "the method table on the toy world",
    "workbench": "the Gradio workbench in the browser",
}

# Subcommand name -> handler(args) -> exit code. Modules register here as they are built.
HANDLERS: dict[str, Callable[[argparse.Namespace], int]] = {}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="adpa",
        description="ADPA Lab: align small language models by distilling preference knowledge from an aligned "
        "teacher (DCKD, ADPA, ADPA+).",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, help_text in SUBCOMMANDS.items():
        sub.add_parser(name, help=help_text, description=help_text)
    sub.add_parser("demo", help=argparse.SUPPRESS)
    return parser


def _not_built(name: str) -> int:
    print(
        f"adpa {name}: not built yet in this version of ADPA Lab. Available now: "
        f"{', '.join(sorted(HANDLERS)) or 'the loss library (adpa_core.losses)'}.",
        file=sys.stderr,
    )
    return EXIT_NOT_BUILT


def _demo(_: argparse.Namespace) -> int:
    """`make demo`: launches the workbench once it exists; until then says what there is."""
    if "workbench" in HANDLERS:
        return HANDLERS["workbench"](_)
    print("ADPA Lab — the workbench is not built yet. What exists now:")
    print("  adpa_core.config   typed run configs with validation (YAML load/save, --set overrides)")
    print("  adpa_core.losses   exact DCKD / ADPA / DPO losses (see README)")
    print("  make test          runs the test suite offline")
    print("Commands: " + ", ".join(f"adpa {n}" + ("" if n in HANDLERS else " (not built yet)") for n in SUBCOMMANDS))
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args, _rest = parser.parse_known_args(argv)
    if args.command is None:
        parser.print_help()
        return 0
    if args.command == "demo":
        return _demo(args)
    handler = HANDLERS.get(args.command)
    if handler is None:
        return _not_built(args.command)
    return handler(args)


if __name__ == "__main__":
    sys.exit(main())
