"""GPU benchmark (CUDA only): ADPA steps with randomly initialised models of real sizes.

Per case: a student of a real shape (bf16, all weights trained, AdamW) and a teacher pair of a real 7-8B
shape in 4-bit (nf4, double quantization, bf16 compute): one base with a LoRA adapter (r = 16 on the
attention and MLP projections) as the DPO teacher, and the same base with the adapter off as the reference
(`TeacherPair(shares_base=True)`), all built in memory from config numbers (no download). One ADPA step =
`adpa_core.objectives.loss_step` on the chunked path (B chosen rows + B y_hat rows of T tokens, a quarter of
each row prompt) + backward + clipping + AdamW, exactly what `train.optimizer_step` runs per micro-batch. An
SFT step on 2B rows of the same length runs interleaved with it for the FLOP-bound ratio.

Reported: student tokens/s, peak allocated memory, and model-FLOP utilisation
MFU = (6 N_student tokens_student + 2 (N_dpo + N_ref) tokens_teacher) / step time / the card's dense bf16
peak, with N = compute parameters (non-embedding + output layer; attention score FLOPs not counted, the usual
convention). The loss microbenchmark also runs here at all four sizes (`loss_micro_gpu.json`).

On a machine without CUDA it prints that it needs one and exits 0.

    python -m benchmarks.gpu [--quick]       # quick: sized for ~2-3 minutes on an H100
"""

from __future__ import annotations

import argparse
import gc
import time
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from . import common as C
from . import loss_micro

NAME = "gpu"
# Dense bf16 tensor-core peaks (TFLOP/s, no sparsity), NVIDIA datasheets; matched on the device name.
PEAK_BF16_TFLOPS = [
    ("H200", 989.0),
    ("H100 PCIe", 756.0),
    ("H100 NVL", 835.0),
    ("H100", 989.0),
    ("A100", 312.0),
    ("L40S", 362.0),
    ("L4", 121.0),
]


@dataclass(frozen=True)
class ModelShape:
    arch: str  # "qwen2" | "llama"
    hidden: int
    layers: int
    heads: int
    kv_heads: int
    intermediate: int
    rows: int  # embedding rows (may exceed the tokenizer's vocabulary)
    tied: bool


SHAPES = {
    "qwen2.5-0.5b": ModelShape("qwen2", 896, 24, 14, 2, 4864, 151936, True),
    "qwen2.5-7b": ModelShape("qwen2", 3584, 28, 28, 4, 18944, 152064, False),
    "llama-3.2-1b": ModelShape("llama", 2048, 16, 32, 8, 8192, 128256, True),
    "llama-3.1-8b": ModelShape("llama", 4096, 32, 32, 8, 14336, 128256, False),
    # --debug-cpu only: exercises every code path in seconds (4-bit layer sizes multiples of 64)
    "debug-student": ModelShape("qwen2", 64, 2, 2, 1, 128, 4160, True),
    "debug-teacher": ModelShape("qwen2", 128, 2, 2, 1, 256, 4224, False),
}
VOCAB = {"qwen": 151665, "llama": 128256, "debug": 4096}  # len(tokenizer): the losses' V


def case_list(quick: bool, debug: bool) -> list[dict[str, Any]]:
    if debug:
        return [
            {
                "student": "debug-student",
                "teacher": "debug-teacher",
                "vocab": VOCAB["debug"],
                "seq": 64,
                "batch": 2,
            }
        ]
    qwen = {"student": "qwen2.5-0.5b", "teacher": "qwen2.5-7b", "vocab": VOCAB["qwen"]}
    llama = {"student": "llama-3.2-1b", "teacher": "llama-3.1-8b", "vocab": VOCAB["llama"]}
    if quick:
        return [{**qwen, "seq": 1024, "batch": 2}]
    return [
        {**qwen, "seq": 1024, "batch": 4},
        {**qwen, "seq": 2048, "batch": 2},
        {**llama, "seq": 1024, "batch": 4},
    ]


def peak_tflops(device_name: str) -> float | None:
    return next((tf for key, tf in PEAK_BF16_TFLOPS if key in device_name), None)


def build_model(shape: ModelShape, device: torch.device, dtype: torch.dtype, seed: int) -> nn.Module:
    from transformers import AutoModelForCausalLM, LlamaConfig, Qwen2Config

    cls = Qwen2Config if shape.arch == "qwen2" else LlamaConfig
    cfg = cls(
        vocab_size=shape.rows,
        hidden_size=shape.hidden,
        num_hidden_layers=shape.layers,
        num_attention_heads=shape.heads,
        num_key_value_heads=shape.kv_heads,
        intermediate_size=shape.intermediate,
        tie_word_embeddings=shape.tied,
        max_position_embeddings=8192,
    )
    torch.manual_seed(seed)
    with torch.device(device):
        return AutoModelForCausalLM.from_config(cfg, dtype=dtype)


def quantize_4bit_(model: nn.Module, compute_dtype: torch.dtype) -> nn.Module:
    """Replaces every Linear but the output layer by a bitsandbytes nf4 Linear4bit, in place, layer by layer
    (what `from_pretrained(quantization_config=...)` does while loading, without a checkpoint on disk)."""
    import bitsandbytes as bnb

    head = model.get_output_embeddings()
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if type(child) is not nn.Linear or child is head:
                continue
            q = bnb.nn.Linear4bit(
                child.in_features,
                child.out_features,
                bias=child.bias is not None,
                compute_dtype=compute_dtype,
                compress_statistics=True,
                quant_type="nf4",
                device="meta",
            )
            weight = bnb.nn.Params4bit(
                child.weight.data, requires_grad=False, compress_statistics=True, quant_type="nf4", module=q
            )
            q.weight = weight.to(child.weight.device)  # quantizes
            if child.bias is not None:
                q.bias = nn.Parameter(child.bias.data, requires_grad=False)
            setattr(parent, name, q)
    return model


def teacher_pair(shape: ModelShape, device: torch.device, dtype: torch.dtype) -> tuple[Any, int, int]:
    """(TeacherPair on one 4-bit base + LoRA, N_base, N_adapter)."""
    from peft import LoraConfig, get_peft_model

    from adpa_core.models import LLAMA_STYLE_TARGETS, TeacherPair, freeze

    from .world import compute_params

    base = build_model(shape, device, dtype, seed=2)
    n_base = compute_params(base)
    quantize_4bit_(base, dtype)
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
    lora = LoraConfig(r=16, lora_alpha=32, target_modules=list(LLAMA_STYLE_TARGETS), init_lora_weights=False)
    dpo = freeze(get_peft_model(base, lora))
    n_adapter = sum(p.numel() for n, p in dpo.named_parameters() if "lora_" in n)
    return TeacherPair(dpo=dpo, shares_base=True), n_base, n_adapter


def make_batch(groups: int, batch: int, seq: int, vocab: int, device: torch.device, seed: int) -> dict:
    """`groups` x `batch` rows of `seq` random tokens; each row's first quarter is prompt (not counted)."""
    g = torch.Generator().manual_seed(seed)
    rows = groups * batch
    ids = torch.randint(0, vocab, (rows, seq), generator=g)
    labels = torch.full_like(ids, -100)
    prompt = seq // 4
    labels[:, prompt - 1 : -1] = ids[:, prompt:]  # labels[t] = ids[t + 1] on the response
    return {
        "ids": [f"r{i}" for i in range(batch)],
        "input_ids": ids.to(device),
        "attention_mask": torch.ones_like(ids).to(device),
        "position_ids": torch.arange(seq).expand(rows, seq).contiguous().to(device),
        "labels": labels.to(device),
    }


def run_case(case: dict[str, Any], device: torch.device, warmup: int, steps: int, chunk: int) -> dict:
    from adpa_core.chunked import output_layer
    from adpa_core.config import ObjectiveConfig
    from adpa_core.objectives import StepContext, loss_step
    from adpa_core.teacher import OnlineTeacher

    from .world import compute_params

    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    s_shape, t_shape = SHAPES[case["student"]], SHAPES[case["teacher"]]
    vocab, batch, seq = case["vocab"], case["batch"], case["seq"]
    student = build_model(s_shape, device, dtype, seed=1).train()
    n_student = compute_params(student)
    pair, n_base, n_adapter = teacher_pair(t_shape, device, dtype)
    head = output_layer(student)
    optimizer = torch.optim.AdamW(student.parameters(), lr=1e-6)
    contexts = {
        "adpa": StepContext(
            student, ObjectiveConfig(method="adpa"), vocab, OnlineTeacher(pair, vocab), None, chunk, head
        ),
        "sft": StepContext(student, ObjectiveConfig(method="sft"), vocab, None, None, chunk, head),
    }
    batches = {
        "adpa": make_batch(2, batch, seq, vocab, device, 0),
        "sft": make_batch(1, 2 * batch, seq, vocab, device, 1),
    }

    def step(kind: str) -> None:
        loss, _ = loss_step(contexts[kind], batches[kind])
        loss.backward()
        torch.nn.utils.clip_grad_norm_(student.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    times: dict[str, list[float]] = {"adpa": [], "sft": []}
    peaks = {"adpa": 0, "sft": 0}
    for i in range(warmup + steps):
        for kind in ("adpa", "sft"):
            with C.PeakMemory(device, collect=False) as mem:
                dt = C.time_calls(lambda k=kind: step(k), device, 0, 1)[0]
            peaks[kind] = max(peaks[kind], mem.peak)
            if i >= warmup:
                times[kind].append(dt)
    tokens_student = 2 * batch * seq
    tokens_teacher = batch * seq
    n_dpo, n_ref = n_base + n_adapter, n_base
    flops = {
        "adpa": 6 * n_student * tokens_student + 2 * (n_dpo + n_ref) * tokens_teacher,
        "sft": 6 * n_student * tokens_student,
    }
    peak = peak_tflops(torch.cuda.get_device_name(device)) if device.type == "cuda" else None
    out = {**case, "n_student": n_student, "n_teacher_base": n_base, "n_adapter": n_adapter}
    for kind in ("adpa", "sft"):
        t = C.median(times[kind])
        out[f"{kind}_step_s"] = t
        out[f"{kind}_times_s"] = times[kind]
        out[f"{kind}_tokens_per_s"] = tokens_student / t
        out[f"{kind}_peak_gib"] = peaks[kind] / (1 << 30)
        out[f"{kind}_mfu"] = flops[kind] / t / (peak * 1e12) if peak else None
    out["flop_bound"] = 1 + 2 * (n_dpo + n_ref) * (tokens_teacher / tokens_student) / (6 * n_student)
    out["ratio_vs_sft"] = out["adpa_step_s"] / out["sft_step_s"]
    out["ratio_vs_bound"] = out["ratio_vs_sft"] / out["flop_bound"]
    return out


def run_cases(cases: list[dict], device: torch.device, warmup: int, steps: int, chunk: int) -> list[dict]:
    rows = []
    for case in cases:
        print(f"  ADPA step: {case} ...", flush=True)
        t0 = time.perf_counter()
        try:
            row = run_case(case, device, warmup, steps, chunk)
        except torch.OutOfMemoryError as exc:
            row = {**case, "error": f"out of memory: {str(exc).splitlines()[0]}"}
        except Exception as exc:  # one failing case must not lose the others' numbers
            row = {**case, "error": f"{type(exc).__name__}: {exc}"}
        row["wall_s"] = time.perf_counter() - t0
        rows.append(row)
        gc.collect()
        if device.type == "cuda":
            torch.cuda.empty_cache()
    return rows


COLUMNS = [
    ("student", "student", ""),
    ("teacher", "teacher (4-bit + LoRA)", ""),
    ("seq", "T", ""),
    ("batch", "B pairs", ""),
    ("adpa_step_s", "ADPA step s", ".3g"),
    ("adpa_tokens_per_s", "ADPA tokens/s", ".0f"),
    ("adpa_peak_gib", "ADPA peak GiB", ".1f"),
    ("adpa_mfu", "ADPA MFU", ".3f"),
    ("sft_step_s", "SFT step s", ".3g"),
    ("sft_mfu", "SFT MFU", ".3f"),
    ("ratio_vs_sft", "ADPA/SFT", ".2f"),
    ("flop_bound", "FLOP bound", ".2f"),
    ("ratio_vs_bound", "ratio/bound", ".3f"),
    ("error", "error", ""),
]


def targets(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    ok = [r for r in rows if r.get("ratio_vs_bound") is not None]
    worst = max(ok, key=lambda r: r["ratio_vs_bound"]) if ok else None
    note = f"worst case: {worst['student']} T={worst['seq']}" if worst else "needs CUDA"
    return [
        C.target(
            "ADPA step, online 4-bit teachers / (SFT step x FLOP bound)",
            worst and worst["ratio_vs_bound"],
            1.15,
            note,
        )
    ]


def render(payload: dict[str, Any]) -> str:
    if payload["config"].get("skipped"):
        return f"{C.header(payload)}\n\nskipped: {payload['config']['skipped']}"
    cfg = payload["config"]
    desc = (
        f"chunked loss (chunk {cfg['chunk']}), median of {cfg['steps']} steps after {cfg['warmup']} warmup, "
        f"ADPA and SFT steps interleaved; peak bf16 {cfg['peak_tflops']} TFLOP/s for MFU."
    )
    return "\n\n".join(
        [C.header(payload), desc, C.table(payload["results"], COLUMNS), C.targets_table(payload["targets"])]
    )


def parse(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog=f"python -m benchmarks.{NAME}", description=__doc__.splitlines()[0])
    p.add_argument(
        "--quick", action="store_true", help="one Qwen2.5 case + quick loss sizes (~2-3 min, H100)"
    )
    p.add_argument("--steps", type=int, default=None, help="timed steps (default 5; quick 3)")
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--chunk", type=int, default=1024, help="chunked loss rows per chunk")
    p.add_argument("--skip-loss", action="store_true", help="leave out the loss microbenchmark")
    p.add_argument("--debug-cpu", action="store_true", help=argparse.SUPPRESS)  # tiny shapes on CPU
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse(argv)
    command = C.command_line(f"benchmarks.{NAME}", argv)
    if not torch.cuda.is_available() and not args.debug_cpu:
        reason = "benchmarks/gpu.py needs a CUDA device and this machine has none"
        print(f"{NAME}: skipped: {reason}", flush=True)
        payload = C.report(NAME, command, torch.device("cpu"), {"skipped": reason}, [], targets([]))
        return payload
    device = torch.device("cpu") if args.debug_cpu else torch.device("cuda")
    steps = args.steps or (3 if args.quick or args.debug_cpu else 5)
    warmup = 1 if args.debug_cpu else args.warmup
    if not args.skip_loss:
        loss_args = ["--device", str(device), "--name", "loss_micro_gpu"]
        if args.quick or args.debug_cpu:
            loss_args += ["--repeats", "2"]
        if args.debug_cpu:
            loss_args += ["--quick"]
        loss_micro.main(loss_args)
    rows = run_cases(case_list(args.quick, args.debug_cpu), device, warmup, steps, args.chunk)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    config = {
        "quick": args.quick,
        "steps": steps,
        "warmup": warmup,
        "chunk": args.chunk,
        "peak_tflops": peak_tflops(name),
        "debug_cpu": args.debug_cpu,
    }
    payload = C.report(NAME, command, device, config, rows, targets(rows))
    print(render(payload), flush=True)
    return payload


if __name__ == "__main__":
    main()
