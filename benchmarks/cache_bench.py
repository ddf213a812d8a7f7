"""Teacher cache: bytes per token (measured and by formula) and build throughput.

`adpa_core.teacher.build_teacher_cache` on (a) the tiny world of tests/trainkit.py (V = 64) at several k, for
DCKD (DPO teacher only) and ADPA (DPO teacher + reference log-probs at the same ids), and (b) the synthetic
world of `world.py` at V = 152,064 (Qwen2.5's embedding rows; ids need more than 16 bits) at k = 50, for the
bytes at a real vocabulary and a throughput that includes full-vocabulary softmaxes. `bytes_per_token` is
the cache's own figure (array payload, no file headers). The format's formula per token: ids as uint16
(2k) plus, when V > 65,536, b = bits(V - 1) - 16 packed high-bit planes (b * ceil(k / 8)); log-probs in
`logp_dtype` (2k each in fp16) for the DPO teacher and, for ADPA, the reference; one float32 rest bin (4)
per teacher.

    python -m benchmarks.cache_bench [--quick]
"""

from __future__ import annotations

import argparse
import math
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from adpa_core.teacher import build_teacher_cache, encode_ids
from tests.trainkit import build_world, make_cfg

from . import common as C
from . import world as W

NAME = "cache_bench"
TARGET_BYTES = 350
PAPER_CODE_BYTES = 800  # the figure for the released code's cache (not measured here)


def formula_bytes(k: int, vocab: int, with_ref: bool, logp_bytes: int = 2) -> int:
    high_bits = max(0, (vocab - 1).bit_length() - 16)
    ids = 2 * k + high_bits * math.ceil(k / 8)
    return ids + (2 if with_ref else 1) * (logp_bytes * k + 4)


def encoder_bytes(k: int, vocab: int, with_ref: bool) -> float:
    """Bytes per token of the library's own encoders on random top-k rows (a check of the formula)."""
    rows = 256
    ids = np.random.default_rng(0).integers(0, vocab, size=(rows, k))
    id_bytes = sum(a.nbytes for a in encode_ids(ids, vocab).values()) / rows
    return id_bytes + (2 if with_ref else 1) * (2 * k + 4)


def _measure(cfg: Any, world: str, method: str, k: int, seq_tokens: int) -> dict[str, Any]:
    with C.PeakMemory(C.pick_device("cpu")) as mem:
        meta = build_teacher_cache(cfg, logp_dtype="float16")
    with_ref = bool(meta["has_reference"])
    batch_logits = cfg.train.batch_size * seq_tokens * meta["vocab_size"] * 4
    return {
        "world": world,
        "method": method,
        "vocab": meta["vocab_size"],
        "k": meta["k"],
        "tokens": meta["tokens"],
        "bytes_per_token": meta["bytes_per_token"],
        "file_bytes_per_token": meta["bytes"] / max(meta["tokens"], 1),
        "formula_bytes": formula_bytes(meta["k"], meta["vocab_size"], with_ref),
        "build_s": meta["build_seconds"],
        "tokens_per_s": meta["tokens_per_s"],
        "build_peak_mib": mem.extra / C.MIB,
        "batch_logits_mib": batch_logits / C.MIB,
    }


def tiny_world_rows(tmp: Path, ks: list[int], methods: list[str]) -> list[dict[str, Any]]:
    world = build_world(tmp / "tiny")
    rows = []
    for method in methods:
        for k in ks:
            cache = tmp / f"tiny-{method}-{k}"
            obj = {"k": k, "teacher_source": "cache", "teacher_cache": str(cache), "max_new_tokens": 6}
            cfg = make_cfg(world, tmp / "runs", method, objective=obj)
            rows.append(_measure(cfg, "tiny (tests/trainkit.py)", method, k, 48))
    return rows


def bench_world_rows(tmp: Path, quick: bool, methods: list[str]) -> list[dict[str, Any]]:
    student, teacher = (W.QUICK_STUDENT, W.QUICK_TEACHER) if quick else (W.STUDENT, W.TEACHER)
    vocab, rows_n, words = (65600, 4, 24) if quick else (152064, 16, 95)  # > 65,536: high-bit id planes
    world = W.build_world(tmp / "bench", vocab, student, teacher, rows_n, 28 if not quick else 8, words)
    rows = []
    for method in methods:
        cache = tmp / f"bench-{method}"
        obj = {"k": 50, "teacher_source": "cache", "teacher_cache": str(cache)}
        cfg = W.run_config(world, tmp / "runs", f"bench-{method}", method, 8, "cpu", obj)
        if method == "adpa":
            W.write_yhat(world, cfg)
        rows.append(_measure(cfg, f"synthetic V={vocab}, teacher {teacher}", method, 50, world.seq_tokens))
    return rows


def format_rows() -> list[dict[str, Any]]:
    """Bytes per token at k = 50 for the vocabularies of DESIGN.md section 6."""
    out = []
    for vocab in (32000, 49152, 128256, 152064):
        for method, with_ref in (("dckd", False), ("adpa", True)):
            out.append(
                {
                    "vocab": vocab,
                    "method": method,
                    "formula_bytes": formula_bytes(50, vocab, with_ref),
                    "encoder_bytes": encoder_bytes(50, vocab, with_ref),
                    "int32_ids_bytes": 4 * 50 + (2 if with_ref else 1) * (2 * 50 + 4),
                    "paper_code_bytes": PAPER_CODE_BYTES,
                }
            )
    return out


def targets(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    out = []
    for method in ("dckd", "adpa"):
        at = [r for r in rows if r["method"] == method and r["k"] == 50]
        value = max(at, key=lambda r: r["vocab"])["bytes_per_token"] if at else None
        note = "DPO teacher only" if method == "dckd" else "DPO teacher + reference log-probs"
        vocab = max((r["vocab"] for r in at), default=None)
        out.append(C.target(f"{method} cache bytes/token, k = 50, V = {vocab}", value, TARGET_BYTES, note))
    return out


COLUMNS = [
    ("world", "world", ""),
    ("method", "method", ""),
    ("k", "k", ""),
    ("tokens", "tokens", ""),
    ("bytes_per_token", "bytes/token", ".1f"),
    ("formula_bytes", "formula", ""),
    ("file_bytes_per_token", "file bytes/token", ".1f"),
    ("tokens_per_s", "build tokens/s", ".0f"),
    ("build_peak_mib", "build peak MiB", ".0f"),
    ("batch_logits_mib", "one batch's logits MiB", ".0f"),
]
FORMAT_COLUMNS = [
    ("vocab", "V", ""),
    ("method", "method", ""),
    ("formula_bytes", "ours (formula)", ""),
    ("encoder_bytes", "ours (library encoder)", ".1f"),
    ("int32_ids_bytes", "same with int32 ids", ""),
    ("paper_code_bytes", "released code (issue's figure)", ""),
]


def render(payload: dict[str, Any]) -> str:
    return "\n\n".join(
        [
            C.header(payload),
            "Measured (fp16 log-probs; tokens = counted response tokens; throughput includes the teacher "
            "forwards; build peak = resident-set peak above the start of the build, models loaded inside it; "
            "one batch's logits = batch x sequence x V x 4 bytes, the (B, T, V) float32 tensor the build "
            "forms per teacher):",
            C.table(payload["results"], COLUMNS),
            "Format at k = 50, fp16 log-probs (formula, checked against `adpa_core.teacher.encode_ids`):",
            C.table(payload["formats"], FORMAT_COLUMNS),
            C.targets_table(payload["targets"]),
        ]
    )


def parse(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog=f"python -m benchmarks.{NAME}", description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="fewer k, tiny models (seconds)")
    p.add_argument("--ks", default=None, help="k values on the tiny world (default 8,20,50; quick 8,50)")
    p.add_argument("--threads", type=int, default=None, help="CPU threads (default: torch's)")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse(argv)
    C.set_threads(args.threads)
    ks = [int(k) for k in (args.ks or ("8,50" if args.quick else "8,20,50")).split(",")]
    methods = ["dckd", "adpa"]
    print(f"{NAME}: k {ks} on the tiny world, k 50 on the synthetic world", flush=True)
    with tempfile.TemporaryDirectory(prefix="adpa-bench-") as tmp:
        rows = tiny_world_rows(Path(tmp), ks, methods) + bench_world_rows(Path(tmp), args.quick, methods)
    config = {"ks": ks, "logp_dtype": "float16", "quick": args.quick}
    command = C.command_line(f"benchmarks.{NAME}", argv)
    device = C.pick_device("cpu")
    payload = C.report(NAME, command, device, config, rows, targets(rows), formats=format_rows())
    print(render(payload), flush=True)
    return payload


if __name__ == "__main__":
    main()
