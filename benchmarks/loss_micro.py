"""Loss microbenchmark: naive (full logits) vs chunked (`adpa_core.chunked.fused_linear_loss`).

One forward + backward of a loss over N counted tokens with an output layer of V rows, from hidden states
(N, H) that need gradients and a trainable output weight (V, H):

- naive: `hidden @ W.T` -> (1, N, V) logits, teacher logits the same way, then the `adpa_core.losses`
  per-token terms (the exact path of `loss_step` with `chunk_size=None`);
- chunked: the same per-token terms on chunks of `chunk` rows inside `fused_linear_loss`, teacher logits
  projected chunk by chunk from the teacher's hidden states (what the chunked `loss_step` does).

Terms: `dckd` = NLL + 0.1 * forward KL against the DPO teacher; `adpa` = NLL + 1.5 * ADPA term with the
advantages of a DPO and a reference teacher on the DPO teacher's top-50 (the paper's setting).

    python -m benchmarks.loss_micro [--quick] [--sizes 32k:2k,128k:2k] [--hidden 1024] [--device cpu]
"""

from __future__ import annotations

import argparse
import gc
import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from adpa_core import losses as L
from adpa_core.chunked import chunk_rows, fused_linear_loss

from . import common as C

NAME = "loss_micro"
TERMS = ("dckd", "adpa")
PATHS = ("naive", "chunked")
W_KL, GAMMA, TOPK = 0.1, 1.5, 50
FULL_SIZES = "32k:2k,32k:8k,128k:2k,128k:8k"
# On CPU, 128k x 8k is left out by default: the naive path would need ~28-32 GiB. 32k x 8k has the same N, and
# the memory ratio depends mostly on N / chunk (naive holds (N, V) tensors, chunked (chunk, V) ones).
CPU_SIZES = "32k:2k,128k:2k,32k:8k"
QUICK_SIZES = "4k:512"
# Float32 (N, V) tensors alive at the naive path's peak (inputs excluded), measured on the CPU runs and
# rounded up; used only to skip naive cases that cannot fit before trying them.
NAIVE_NV_TENSORS = {"dckd": 8, "adpa": 8}


@dataclass
class Inputs:
    hidden: Tensor  # (N, H) student final hidden states, requires grad
    head: nn.Linear  # (V, H) student output layer, trainable
    labels: Tensor  # (N,)
    teacher_hidden: Tensor  # (N, H) teacher final hidden states (no grad)
    dpo_head: nn.Linear  # (V, H) DPO teacher output layer (frozen)
    ref_head: nn.Linear  # (V, H) reference teacher output layer (frozen)


def make_inputs(n: int, v: int, h: int, dtype: torch.dtype, device: torch.device, seed: int = 0) -> Inputs:
    """Random hidden states (unit scale, like a normed final layer) and heads (std 0.02, like LM init)."""
    g = torch.Generator(device=device).manual_seed(seed)  # on the device: 128k x 2k heads in a blink

    def rand(*shape: int, scale: float = 1.0) -> Tensor:
        return (torch.randn(*shape, generator=g, device=device) * scale).to(dtype)

    def head(weight: Tensor, trainable: bool) -> nn.Linear:
        layer = nn.Linear(h, v, bias=False, device="meta")
        layer.weight = nn.Parameter(weight, requires_grad=trainable)
        return layer

    dpo_w = rand(v, h, scale=0.02)
    return Inputs(
        hidden=rand(n, h).requires_grad_(),
        head=head(rand(v, h, scale=0.02), True),
        labels=torch.randint(0, v, (n,), generator=g, device=device),
        teacher_hidden=rand(n, h),
        dpo_head=head(dpo_w, False),
        ref_head=head(dpo_w + rand(v, h, scale=0.005), False),
    )


def per_token(term: str, logits: Tensor, labels: Tensor, dpo: Tensor, ref: Tensor | None) -> Tensor:
    """The per-token loss (1, C) of `term` from student logits (1, C, V) and teacher logits (1, C, V)."""
    nll = L.nll_per_token(logits, labels)
    if term == "dckd":
        return nll + W_KL * L.forward_kl_per_token(logits, dpo, labels)
    adv = L.token_advantages(dpo, ref, beta=1.0, topk=TOPK)  # (1, C, V)
    return nll + GAMMA * L.adpa_per_token(logits, adv, labels)


def naive_loss(term: str, x: Inputs) -> Tensor:
    n = x.labels.shape[0]
    logits = (x.hidden @ x.head.weight.T)[None]  # (1, N, V)
    with torch.no_grad():
        dpo = (x.teacher_hidden @ x.dpo_head.weight.T)[None]  # (1, N, V)
        ref = (x.teacher_hidden @ x.ref_head.weight.T)[None] if term == "adpa" else None
    return per_token(term, logits, x.labels[None], dpo, ref).sum() / n


def chunked_loss(term: str, x: Inputs, chunk: int) -> Tensor:
    n, v = x.labels.shape[0], x.head.weight.shape[0]

    def chunk_fn(logits: Tensor, start: int, end: int) -> Tensor:  # logits (C, V)
        with torch.no_grad():
            rows = x.teacher_hidden[start:end]  # (C, H)
            dpo = x.dpo_head(rows)[None]  # (1, C, V)
            ref = x.ref_head(rows)[None] if term == "adpa" else None
        return per_token(term, logits[None], x.labels[None, start:end], dpo, ref).sum() / n

    return fused_linear_loss(x.hidden, x.head, chunk_fn, v, chunk_rows(chunk, v))  # rows as training uses


def step_fn(spec: dict[str, Any], x: Inputs) -> Callable[[], float]:
    def step() -> float:
        x.hidden.grad = x.head.weight.grad = None
        if spec["path"] == "naive":
            loss = naive_loss(spec["term"], x)
        else:
            loss = chunked_loss(spec["term"], x, spec["chunk"])
        loss.backward()
        return float(loss.detach())

    return step


def run_case(spec: dict[str, Any]) -> dict[str, Any]:
    """One (term, path, V, N) case: times of forward + backward and the peak memory above the inputs."""
    device = torch.device(spec["device"])
    dtype = getattr(torch, spec["dtype"])
    x = make_inputs(spec["tokens"], spec["vocab"], spec["hidden"], dtype, device)
    step = step_fn(spec, x)
    losses: list[float] = []
    with C.PeakMemory(device) as mem:
        times = C.time_calls(lambda: losses.append(step()), device, spec["warmup"], spec["repeats"])
    return {**spec, "median_s": C.median(times), "times_s": times, "loss": losses[-1], **mem.as_dict()}


def parse_sizes(text: str) -> list[tuple[int, int]]:
    """'32k:2k,128k:8k' -> [(32768, 2048), (131072, 8192)] (k = 1024)."""

    def num(s: str) -> int:
        return int(float(s[:-1]) * 1024) if s.lower().endswith("k") else int(s)

    return [(num(v), num(n)) for v, n in (item.split(":") for item in text.split(",") if item)]


def _naive_need(term: str, vocab: int, tokens: int) -> float:
    return NAIVE_NV_TENSORS[term] * vocab * tokens * 4


def run_all_cases(args: argparse.Namespace, device: torch.device) -> list[dict[str, Any]]:
    in_process = device.type == "cuda" or args.in_process
    rows = []
    for vocab, tokens in parse_sizes(args.sizes):
        for term in args.terms.split(","):
            for path in PATHS:
                spec = {
                    "term": term,
                    "path": path,
                    "vocab": vocab,
                    "tokens": tokens,
                    "hidden": args.hidden,
                    "chunk": args.chunk,
                    "dtype": args.dtype,
                    "device": str(device),
                    "warmup": args.warmup,
                    "repeats": args.repeats,
                }
                need = _naive_need(term, vocab, tokens)
                if device.type == "cpu" and path == "naive" and need > 0.85 * C.available_memory_bytes():
                    avail = C.available_memory_bytes() / (1 << 30)
                    reason = f"would need ≈ {need / (1 << 30):.0f} GiB (estimate); {avail:.0f} GiB available"
                    rows.append({**spec, "skipped": reason})
                    print(f"  {term} {path} V={vocab} N={tokens}: skipped, {reason}", flush=True)
                    continue
                print(f"  {term} {path} V={vocab} N={tokens} ...", flush=True)
                rows.append(_run_one(spec, device, in_process, args.timeout))
    return rows


def _run_one(spec: dict[str, Any], device: torch.device, in_process: bool, timeout: float) -> dict:
    if not in_process:
        return {**spec, **C.run_child(f"benchmarks.{NAME}", spec, timeout)}
    try:
        return run_case(spec)
    except torch.OutOfMemoryError as exc:
        return {**spec, "error": f"out of memory: {str(exc).splitlines()[0]}"}
    finally:
        if device.type == "cuda":
            gc.collect()
            torch.cuda.empty_cache()


def compare(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per (term, V, N): naive and chunked side by side with the chunked/naive ratios."""
    out = []
    keys = sorted(
        {(r["term"], r["vocab"], r["tokens"]) for r in rows}, key=lambda k: (TERMS.index(k[0]), k[1:])
    )
    for term, vocab, tokens in keys:
        pair = {r["path"]: r for r in rows if (r["term"], r["vocab"], r["tokens"]) == (term, vocab, tokens)}
        naive, chunked = pair.get("naive", {}), pair.get("chunked", {})
        diff = None
        if naive.get("loss") is not None and chunked.get("loss") is not None:
            diff = abs(naive["loss"] - chunked["loss"]) / max(abs(naive["loss"]), 1e-12)
        out.append(
            {
                "term": term,
                "vocab": vocab,
                "tokens": tokens,
                "naive_s": naive.get("median_s"),
                "chunked_s": chunked.get("median_s"),
                "time_ratio": C.ratio(chunked.get("median_s"), naive.get("median_s")),
                "naive_mib": naive.get("peak_extra_mib"),
                "chunked_mib": chunked.get("peak_extra_mib"),
                "memory_ratio": C.ratio(chunked.get("peak_extra_mib"), naive.get("peak_extra_mib")),
                "loss_rel_diff": diff,
                "note": "; ".join(
                    f"{p}: {r.get('skipped') or r.get('error')}"
                    for p, r in pair.items()
                    if r.get("skipped") or r.get("error")
                ),
            }
        )
    return out


def targets(comparison: list[dict[str, Any]]) -> list[dict[str, Any]]:
    out = []
    for term in TERMS:
        rows = [r for r in comparison if r["term"] == term]
        if not rows:
            continue
        at = next((r for r in rows if (r["vocab"], r["tokens"]) == (131072, 8192)), None)
        mem = at["memory_ratio"] if at else None
        note = ""
        if mem is None:
            measured = [r for r in rows if r["memory_ratio"] is not None]
            same_n = [r for r in measured if r["tokens"] == 8192]
            same_v = [r for r in measured if r["vocab"] == 131072]
            parts = ["not measured here"]
            for r in [max(same_n, key=lambda r: r["vocab"])] if same_n else []:
                parts.append(f"N=8k at V={r['vocab']}: {r['memory_ratio']:.3f}")
            for r in [max(same_v, key=lambda r: r["tokens"])] if same_v else []:
                parts.append(f"V=128k at N={r['tokens']}: {r['memory_ratio']:.3f}")
            note = "; ".join(parts)
        out.append(C.target(f"{term}: chunked/naive peak memory, V=128k, N=8k", mem, 0.25, note))
        times = [r for r in rows if r["time_ratio"] is not None]
        worst = max(times, key=lambda r: r["time_ratio"]) if times else None
        note = f"worst of {len(times)} sizes: V={worst['vocab']}, N={worst['tokens']}" if worst else ""
        out.append(C.target(f"{term}: chunked/naive time", worst and worst["time_ratio"], 1.15, note))
    return out


COLUMNS = [
    ("term", "term", ""),
    ("vocab", "V", ""),
    ("tokens", "N", ""),
    ("naive_s", "naive s", ".3g"),
    ("chunked_s", "chunked s", ".3g"),
    ("time_ratio", "time chunked/naive", ".3f"),
    ("naive_mib", "naive MiB", ".0f"),
    ("chunked_mib", "chunked MiB", ".0f"),
    ("memory_ratio", "memory chunked/naive", ".3f"),
    ("loss_rel_diff", "loss rel. diff", ".1e"),
    ("note", "note", ""),
]


def render(payload: dict[str, Any]) -> str:
    cfg = payload["config"]
    return "\n\n".join(
        [
            C.header(payload),
            f"H = {cfg['hidden']}, {cfg['dtype']}, chunk = {cfg['chunk']} rows, median of {cfg['repeats']} "
            f"after {cfg['warmup']} warmup; memory = peak above the inputs ({cfg['memory']}).",
            C.table(payload["comparison"], COLUMNS),
            C.targets_table(payload["targets"]),
        ]
    )


def parse(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog=f"python -m benchmarks.{NAME}", description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="tiny sizes, a smoke run (seconds)")
    p.add_argument("--sizes", help=f"V:N list (default: {FULL_SIZES} on CUDA, {CPU_SIZES} on CPU)")
    p.add_argument("--terms", default=",".join(TERMS))
    p.add_argument("--hidden", type=int, default=None, help="H (default: 2048 on CUDA, 256 on CPU; quick 64)")
    p.add_argument("--chunk", type=int, default=1024, help="rows per chunk (train.chunk_size default)")
    p.add_argument(
        "--dtype", default=None, help="float32 | bfloat16 (default: bfloat16 on CUDA, float32 on CPU)"
    )
    p.add_argument("--device", default="auto")
    p.add_argument("--warmup", type=int, default=None, help="untimed calls (default 1)")
    p.add_argument("--repeats", type=int, default=None, help="timed calls (default: 3 on CUDA, 2 on CPU)")
    p.add_argument("--threads", type=int, default=None, help="CPU threads (default: torch's)")
    p.add_argument("--in-process", action="store_true", help="CPU: no subprocess per case (inexact memory)")
    p.add_argument("--timeout", type=float, default=900.0, help="seconds per subprocess case")
    p.add_argument("--name", default=NAME, help="output: benchmarks/out/<name>.json")
    p.add_argument("--child", help=argparse.SUPPRESS)
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse(argv)
    if args.child:
        C.child_result(run_case(json.loads(args.child)))
        return {}
    C.set_threads(args.threads)
    device = C.pick_device(args.device)
    cuda = device.type == "cuda"
    if args.quick:
        args.sizes = args.sizes or QUICK_SIZES
        args.hidden = args.hidden or 64
        args.chunk = min(args.chunk, 256)
        args.in_process = True
        args.repeats = args.repeats or 1
    args.sizes = args.sizes or (FULL_SIZES if cuda else CPU_SIZES)
    args.hidden = args.hidden or (2048 if cuda else 256)
    args.dtype = args.dtype or ("bfloat16" if cuda else "float32")
    args.repeats = args.repeats or (3 if cuda else 2)
    args.warmup = 1 if args.warmup is None else args.warmup  # a fresh process's first call is up to 2x slower
    print(f"{NAME}: sizes {args.sizes}, H={args.hidden}, {args.dtype} on {device}", flush=True)
    rows = run_all_cases(args, device)
    comparison = compare(rows)
    memory = "CUDA allocator peak" if cuda else "resident-set peak"
    if not cuda:
        memory += ", in process (inexact)" if args.in_process else ", one subprocess per case"
    config = {
        k: getattr(args, k) for k in ("sizes", "terms", "hidden", "chunk", "dtype", "warmup", "repeats")
    }
    config.update(quick=args.quick, memory=memory, naive_nv_tensors=NAIVE_NV_TENSORS)
    command = C.command_line(f"benchmarks.{NAME}", argv)
    payload = C.report(args.name, command, device, config, rows, targets(comparison), comparison=comparison)
    print(render(payload), flush=True)
    return payload


if __name__ == "__main__":
    main()
