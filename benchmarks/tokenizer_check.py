"""The tokenizer contract check (`adpa_core.models.check_tokenizer_contract`) at a Gemma-3-sized vocabulary.

Two identical fast tokenizers of V = 262,144 tokens, of which a few hundred are added special tokens (the
layout of Gemma 3 / Llama 3 / Qwen tokenizers; `len()` of such a tokenizer is a call into its backend, tens
of microseconds, not a stored number), built in memory
(word-level; the check only reads the id -> token map and the special tokens). Timed: the check on the
identical pair (the case of every run), and on a pair that differs at the last id (the error path: one
more scan). For comparison, the check as it was before it became linear (one `len()` call per vocabulary
entry), its id -> token comparison kept here as `per_token_check` (the part that grew with V; the
special-token checks after it are cheap). Target: the identical pair in under 1 s.

Time is measured twice: wall clock, and the CPU time of this (single-threaded) process. The check runs on
one thread, so its CPU time is its wall time on an idle core; on a shared machine the wall clock also counts
the time spent waiting for a core (the load average is recorded), so the target is read on the CPU time.

    python -m benchmarks.tokenizer_check [--quick]
    python -m benchmarks.tokenizer_check --render benchmarks/recorded/tokenizer_check.json   # its markdown
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import PreTrainedTokenizerFast

from adpa_core.models import TokenizerMismatchError, check_tokenizer_contract

from . import common as C

NAME = "tokenizer_check"
LIMIT_S = 1.0


def make_tokenizer(vocab: int, added: int, last: str = "<special_last>") -> PreTrainedTokenizerFast:
    """`vocab` tokens: `vocab - added` word-level entries, then `added` special ones (the last: `last`)."""
    words = {f"w{i}": i for i in range(vocab - added - 1)}
    words["<unk>"] = len(words)
    backend = Tokenizer(models.WordLevel(words, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok = PreTrainedTokenizerFast(tokenizer_object=backend, unk_token="<unk>")
    specials = [f"<special_{i}>" for i in range(added - 1)] + [last]
    tok.add_special_tokens({"additional_special_tokens": specials})
    assert len(tok) == vocab, (len(tok), vocab)
    return tok


def per_token_check(reference_tok: Any, other_tok: Any) -> None:
    """The check before it was made linear (the baseline): `len(tok)` once per vocabulary entry."""
    inv = [{i: t for t, i in tok.get_vocab().items() if i < len(tok)} for tok in (reference_tok, other_tok)]
    for i in range(max(len(reference_tok), len(other_tok))):
        if inv[0].get(i) != inv[1].get(i):
            raise TokenizerMismatchError(f"differ at id {i}")


def _time(fn: Callable[[], Any], repeats: int, warmup: int) -> dict[str, float]:
    """Medians of wall and process CPU seconds over `repeats` calls after `warmup` untimed ones."""
    wall, cpu = [], []
    for i in range(warmup + repeats):
        w0, c0 = time.perf_counter(), time.process_time()
        fn()
        if i >= warmup:
            wall.append(time.perf_counter() - w0)
            cpu.append(time.process_time() - c0)
    return {"wall_s": statistics.median(wall), "cpu_s": statistics.median(cpu), "max_cpu_s": max(cpu)}


def _expect_mismatch(a: Any, b: Any) -> None:
    try:
        check_tokenizer_contract(a, b)
    except TokenizerMismatchError:
        return
    raise AssertionError("the tokenizers differ at the last id but the check passed")


def measure(vocab: int, added: int, repeats: int, baseline: bool) -> list[dict[str, Any]]:
    a, b = make_tokenizer(vocab, added), make_tokenizer(vocab, added)
    other = make_tokenizer(vocab, added, last="<special_other>")
    cases = [
        ("identical (library)", lambda: check_tokenizer_contract(a, b), repeats),
        ("differ at the last id (library)", lambda: _expect_mismatch(a, other), repeats),
    ]
    if baseline:
        cases.append(("identical (per-token len(), before)", lambda: per_token_check(a, b), 1))
    rows = []
    for case, fn, n in cases:
        rows.append({"case": case, "vocab": vocab, "added": added, **_time(fn, n, warmup=1 if n > 1 else 0)})
    return rows


COLUMNS = [
    ("case", "case", ""),
    ("vocab", "V", ""),
    ("added", "added special tokens", ""),
    ("cpu_s", "CPU s (median)", ".3f"),
    ("max_cpu_s", "CPU s (max)", ".3f"),
    ("wall_s", "wall s (median)", ".3f"),
]


def render(payload: dict[str, Any]) -> str:
    cfg = payload["config"]
    return "\n\n".join(
        [
            C.header(payload),
            f"Median of {cfg['repeats']} timed calls after 1 warmup (the per-token baseline: one call); "
            f"load average at the end {cfg['load_average_1min']:.1f}.",
            C.table(payload["results"], COLUMNS),
            C.targets_table(payload["targets"]),
        ]
    )


def parse(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog=f"python -m benchmarks.{NAME}", description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="V = 8,192 (seconds)")
    p.add_argument("--vocab", type=int, default=None, help="tokens (default 262,144; quick 8,192)")
    p.add_argument("--added", type=int, default=300, help="added special tokens (default 300)")
    p.add_argument("--repeats", type=int, default=5, help="timed calls per case (default 5)")
    p.add_argument("--no-baseline", action="store_true", help="skip the per-token baseline (~10 s)")
    p.add_argument("--threads", type=int, default=None, help="CPU threads (default: torch's)")
    p.add_argument("--render", metavar="JSON", help="print the markdown of a saved result and exit")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse(argv)
    if args.render:
        payload = json.loads(Path(args.render).read_text(encoding="utf-8"))
        print(render(payload), flush=True)
        return payload
    C.set_threads(args.threads)
    vocab = args.vocab or (8192 if args.quick else 262144)
    print(f"{NAME}: V = {vocab}, {args.added} added special tokens", flush=True)
    rows = measure(vocab, args.added, args.repeats, baseline=not args.no_baseline)
    identical = rows[0]["cpu_s"]
    targets = [
        C.target(
            f"tokenizer check, V = {vocab} with {args.added} added special tokens (s)",
            identical,
            LIMIT_S,
            "identical tokenizers, median CPU time (= wall time on an idle core)",
        )
    ]
    config = {
        "vocab": vocab,
        "added": args.added,
        "repeats": args.repeats,
        "quick": args.quick,
        "load_average_1min": os.getloadavg()[0],  # the machine is shared: how busy it was at the end
    }
    command = C.command_line(f"benchmarks.{NAME}", argv)
    payload = C.report(NAME, command, C.pick_device("cpu"), config, rows, targets)
    print(render(payload), flush=True)
    return payload


if __name__ == "__main__":
    main()
