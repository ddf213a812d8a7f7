"""`adpa plan CONFIG`: the memory per GPU of a run under each strategy, from model configs alone.

No weights are loaded: the architecture comes from a local folder's config.json (AutoConfig), or for the hub
ids the recipes name from a built-in table (so the plan works offline), or from the hub cache. Every figure
is a count of the tensors the training loop holds (train.py, chunked.py, distributed.py):

- student weights; the trainable part's gradients and AdamW state (LoRA adapters are float32, as peft keeps
  them); FSDP and ZeRO-3 divide weights, gradients and optimizer state by the number of GPUs and add a working
  set of gathered layers; DDP adds its gradient buckets;
- activations saved for the backward pass, with or without gradient checkpointing;
- the frozen teachers, whole on every process (bf16, or bitsandbytes 8-bit / 4-bit for their Linear layers);
- the loss's peak: full-vocabulary logits (naive) or one chunk of rows at a time (chunked).
The CPU benchmark (benchmarks/plan_memory.py) checks these counts against measured peaks.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .chunked import chunk_rows
from .config import STUDENT_GROUPS, TEACHER_GROUPS, ConfigError, RunConfig

GIB = 1 << 30
STRATEGIES = ("single", "ddp", "fsdp", "zero3", "zero3_offload")
LABELS = {"single": "single", "ddp": "DDP", "fsdp": "FSDP", "zero3": "ZeRO-3", "zero3_offload": "ZeRO-3+off"}
CUDA_RESERVE = 1.5 * GIB  # CUDA context, kernels and allocator slack: not tensors, but not free either
QUANT_BYTES = {"none": None, "8bit": 1.0, "4bit": 0.5 + 0.5 / 64 * 1.03}  # nf4 + double-quantized scales
# Float32 (rows, V) tensors alive at the loss's peak (objectives.py runs the groups one after another):
# naive: the student's logits and their gradient over all rows, then per group its log-softmax and one
# temporary, plus the teacher's logits and log-softmax (KL) or both teachers' and the advantage (ADPA);
# chunked: per chunk of counted rows the logits leaf and its log-softmax, plus the teacher chunk's logits
# and log-softmax (KL) or both teachers' and the advantage (ADPA). Checked by benchmarks/plan_memory.py.
TEACHER_COPIES = {"none": 0, "kl": 2, "adpa": 4}


@dataclass(frozen=True)
class Arch:
    """The shapes of a decoder-only causal LM (Llama / Qwen2 / Mistral style)."""

    vocab: int
    hidden: int
    intermediate: int
    layers: int
    heads: int
    kv_heads: int
    head_dim: int
    tied: bool
    qkv_bias: bool = False
    source: str = ""

    def layer_params(self) -> int:
        h, q, kv = self.hidden, self.heads * self.head_dim, self.kv_heads * self.head_dim
        bias = (q + 2 * kv) if self.qkv_bias else 0
        return 2 * h * q + 2 * h * kv + bias + 3 * h * self.intermediate + 2 * h

    def linear_params(self) -> int:
        """Parameters in the decoder's Linear layers (what bitsandbytes quantizes; not embeddings, head)."""
        h, q, kv = self.hidden, self.heads * self.head_dim, self.kv_heads * self.head_dim
        return self.layers * (2 * h * q + 2 * h * kv + 3 * h * self.intermediate)

    def params(self) -> int:
        head = 0 if self.tied else self.vocab * self.hidden
        return self.vocab * self.hidden + self.layers * self.layer_params() + self.hidden + head

    def lora_params(self, r: int) -> int:
        """A rank-r adapter on q, k, v, o, gate, up, down of every layer (the default targets)."""
        h, q, kv, i = (
            self.hidden,
            self.heads * self.head_dim,
            self.kv_heads * self.head_dim,
            self.intermediate,
        )
        return self.layers * r * ((h + q) * 2 + (h + kv) * 2 + (h + i) * 3)


def _qwen(vocab: int, hidden: int, inter: int, layers: int, heads: int, kv: int, tied: bool) -> Arch:
    return Arch(vocab, hidden, inter, layers, heads, kv, hidden // heads, tied, True, "built-in table")


# The hub ids the recipes name (their config.json), so that `adpa plan configs/real/...` works offline.
KNOWN = {
    "qwen/qwen2.5-0.5b": _qwen(151936, 896, 4864, 24, 14, 2, True),
    "qwen/qwen2.5-1.5b": _qwen(151936, 1536, 8960, 28, 12, 2, True),
    "qwen/qwen2.5-3b": _qwen(151936, 2048, 11008, 36, 16, 2, True),
    "qwen/qwen2.5-7b": _qwen(152064, 3584, 18944, 28, 28, 4, False),
}


def arch_from_config(c: Any, source: str) -> Arch:
    """Arch from a transformers config object (or anything with its attribute names)."""
    heads = c.num_attention_heads
    return Arch(
        vocab=c.vocab_size,
        hidden=c.hidden_size,
        intermediate=c.intermediate_size,
        layers=c.num_hidden_layers,
        heads=heads,
        kv_heads=getattr(c, "num_key_value_heads", None) or heads,
        head_dim=getattr(c, "head_dim", None) or c.hidden_size // heads,
        tied=bool(getattr(c, "tie_word_embeddings", False)),
        qkv_bias=bool(getattr(c, "attention_bias", False)) or getattr(c, "model_type", "") == "qwen2",
        source=source,
    )


def resolve_arch(name: str) -> Arch:
    """The architecture of `name`: a local folder (or run / adapter folder), a known hub id, the hub cache."""
    from transformers import AutoConfig

    from .paths import resolve_model_path

    folder = Path(resolve_model_path(name)).expanduser()
    folder = folder / "final" if (folder / "final").is_dir() else folder
    if (folder / "adapter_config.json").exists() and not (folder / "config.json").exists():
        base = json.loads((folder / "adapter_config.json").read_text(encoding="utf-8"))
        return resolve_arch(base.get("base_model_name_or_path") or "")
    if (folder / "config.json").exists():
        return arch_from_config(AutoConfig.from_pretrained(str(folder)), str(folder))
    known = KNOWN.get(name.lower().removesuffix("-instruct"))
    if known is not None:
        return known
    try:
        return arch_from_config(AutoConfig.from_pretrained(name), f"{name} (hub config)")
    except (OSError, ValueError) as exc:
        raise ConfigError(
            f"cannot read the architecture of {name!r}: not a local folder, not in the built-in table "
            f"({', '.join(sorted(KNOWN))}), and no config from the hub cache ({exc})"
        ) from exc


def _weight_bytes(dtype: str, device: str) -> int:
    return 4 if dtype == "float32" or (dtype == "auto" and device == "cpu") else 2


def _model_bytes(arch: Arch, quant: str, b_w: int) -> float:
    """Weights of a frozen model: quantized Linear layers at their storage size, the rest at b_w."""
    q = QUANT_BYTES[quant]
    return (
        arch.params() * b_w
        if q is None
        else arch.linear_params() * q + (arch.params() - arch.linear_params()) * b_w
    )


def activation_bytes(arch: Arch, tokens: int, b_act: int, checkpointing: bool, lora: bool) -> float:
    """Student activations saved for backward: per token and layer the inputs of the norms, q/k/v/o, the MLP
    (gate, up, act, down input) and, with LoRA dropout, the adapters' inputs; checkpointing keeps each
    layer's input and recomputes one layer at a time. Attention scores are not stored (SDPA)."""
    h, kv, i = arch.hidden, arch.kv_heads * arch.head_dim, arch.intermediate
    per_layer = 6 * h + 2 * kv + 4 * i + ((6 * h + i) if lora else 0)
    edges = 4 * h  # embedding output, final norm input / output, the hidden rows of the loss
    if checkpointing:
        return tokens * (arch.layers * h + per_layer + edges) * b_act
    return tokens * (arch.layers * per_layer + edges) * b_act


def loss_bytes(cfg: RunConfig, arch: Arch, teacher: str, chunked: bool, head_trainable: bool) -> float:
    """The loss's peak (see TEACHER_COPIES): naive full logits at every position, or chunked: one chunk of
    a group's counted (response) positions, plus the hidden rows of the counted positions and their
    stored gradient, and (trained output layer) the float32 gradient of the output weight that each
    group's FusedLinearLoss keeps until the backward pass. `teacher`: none, kl or adpa."""
    v, d, b = arch.vocab, cfg.data, cfg.train.batch_size
    group, groups = b * d.max_length, len(STUDENT_GROUPS[cfg.objective.method])
    if not chunked:
        return 4 * v * (2 * groups * group + (2 + TEACHER_COPIES[teacher]) * group)
    counted = b * (d.max_length - d.max_prompt_length)
    c = min(chunk_rows(cfg.train.chunk_size, v), counted)
    weight_grads = groups * v * arch.hidden if head_trainable else 0
    return 4 * (v * (2 + TEACHER_COPIES[teacher]) * c + 2 * groups * counted * arch.hidden + weight_grads)


@dataclass
class Plan:
    rows: dict[str, dict[str, float]]  # component -> strategy -> bytes per GPU
    alternatives: dict[str, float]
    notes: list[str]
    gpus: int

    def total(self, strategy: str) -> float:
        return sum(r[strategy] for r in self.rows.values())


def plan(cfg: RunConfig, student: Arch, teacher: Arch | None, gpus: int = 8, device: str = "cuda") -> Plan:
    """Bytes per GPU of each component under each strategy (see the module docstring)."""
    m, t, obj = cfg.model, cfg.train, cfg.objective
    b_w = _weight_bytes(m.dtype, device)
    mp = t.mixed_precision != "no"
    b_act = 2 if (mp or b_w == 2) else 4
    trainable = student.lora_params(m.lora_r) if m.lora else student.params()
    b_t = 4 if (m.lora or (mp and b_w == 2)) else b_w  # peft float32 adapters; FSDP / ZeRO fp32 masters
    frozen = _model_bytes(student, m.student_quantization, b_w) if m.lora else 0.0
    weights = frozen + trainable * (4 if m.lora else b_w)
    per = {"single": 1, "ddp": 1, "fsdp": gpus, "zero3": gpus, "zero3_offload": gpus}
    quantized = m.student_quantization != "none"
    fsdp_weights = (frozen if quantized else frozen / gpus) + trainable * b_t / gpus  # 4-bit: not sharded
    # two units gathered at a time (the current one and the prefetched one) and the output layer's unit,
    # whole during the loss (embedding and head, norm), with their unsharded gradients before the
    # reduce-scatter when they are trained
    unit = 2 * student.layer_params() + student.vocab * student.hidden * (1 if student.tied else 2)
    gathered = unit * (2 if mp or b_w == 2 else 4) * (1 if m.lora else 2)
    optim_single = trainable * 3 * (4 if m.lora else b_w)  # gradient + two AdamW moments
    optim_zero = trainable * (4 + 8 + 4)  # gradient, moments and ZeRO's float32 partition copy
    rows: dict[str, dict[str, float]] = {
        "student weights": {
            "single": weights,
            "ddp": weights,
            "fsdp": fsdp_weights,
            "zero3": weights / gpus,
            "zero3_offload": weights / gpus,
        },
        "gradients + AdamW": {
            "single": optim_single,
            "ddp": optim_single + trainable * (4 if m.lora else b_w),  # DDP's gradient buckets
            "fsdp": trainable * 3 * b_t / gpus,
            "zero3": optim_zero / gpus,
            "zero3_offload": 0.0,  # in host memory
        },
        "gathered layers": {s: (gathered if per[s] > 1 else 0.0) for s in STRATEGIES},
    }
    if obj.method == "dpo" and not m.lora:  # the frozen initial student, whole on every process
        rows["DPO reference (frozen copy)"] = dict.fromkeys(STRATEGIES, student.params() * b_w)
    groups = len(STUDENT_GROUPS[obj.method])
    s_rows = t.batch_size * groups * cfg.data.max_length
    t_rows = t.batch_size * cfg.data.max_length  # the teachers run on one group at a time
    acts = {ck: activation_bytes(student, s_rows, b_act, ck, m.lora) for ck in (False, True)}
    rows["activations"] = dict.fromkeys(STRATEGIES, acts[t.gradient_checkpointing])
    alternatives = {f"activations, checkpointing {'on' if k else 'off'}": v for k, v in acts.items()}
    notes = [
        f"global batch = batch_size x GPUs x grad_accum = {t.batch_size} x {gpus} x {t.grad_accum} = "
        f"{t.batch_size * gpus * t.grad_accum}: divide train.grad_accum by the GPUs to keep a recipe's batch",
        "ZeRO-3+off: offload_optimizer_device cpu (gradients and AdamW state in host memory)",
    ]
    online = teacher is not None and obj.teacher_source == "online" and obj.method in TEACHER_GROUPS
    if online:
        n_models = 1 if (m.teacher_adapter or not m.teacher_ref) else 2
        for quant in ("none", "8bit", "4bit"):
            label = {"none": "bf16" if b_w == 2 else "float32", "8bit": "8-bit", "4bit": "4-bit"}[quant]
            alternatives[f"teachers {label}"] = n_models * _model_bytes(teacher, quant, b_w)
        rows["teachers (whole per process)"] = dict.fromkeys(
            STRATEGIES, n_models * _model_bytes(teacher, m.teacher_quantization, b_w)
        )
        one_layer = t_rows * (4 * teacher.hidden + 3 * teacher.intermediate) * b_act
        rows["teacher forward (transient)"] = dict.fromkeys(STRATEGIES, one_layer)
        if m.teacher_adapter:
            notes.append(
                f"the DPO adapter {m.teacher_adapter} is not counted (a LoRA adapter: < 1% of the base)"
            )
    kind = "none" if not online else ("adpa" if obj.method.startswith("adpa") else "kl")
    chunked = t.chunked_loss == "on" or (t.chunked_loss == "auto" and student.vocab >= 8192)
    losses = {c: loss_bytes(cfg, student, kind, c, not m.lora) for c in (False, True)}
    rows[f"loss peak ({'chunked' if chunked else 'naive'})"] = dict.fromkeys(STRATEGIES, losses[chunked])
    alternatives["loss peak naive"], alternatives["loss peak chunked"] = losses[False], losses[True]
    if device == "cuda":
        rows["CUDA context + allocator reserve"] = dict.fromkeys(STRATEGIES, CUDA_RESERVE)
    return Plan(rows, alternatives, notes, gpus)


def render(p: Plan, gpu_mem_gb: float, header: list[str]) -> str:
    """The plan as a text table (GiB per GPU) with a fits / does not fit line."""
    cols = [f"{LABELS[s]}" + ("" if s == "single" else f" x{p.gpus}") for s in STRATEGIES]
    width = max(len(k) for k in p.rows) + 2
    line = lambda name, vals: name.ljust(width) + "".join(v.rjust(14) for v in vals)
    out = [*header, "", line("memory per GPU (GiB)", cols)]
    for name, vals in p.rows.items():
        out.append(line(name, [f"{vals[s] / GIB:.2f}" for s in STRATEGIES]))
    out.append(line("total", [f"{p.total(s) / GIB:.2f}" for s in STRATEGIES]))
    fits = ["yes" if p.total(s) <= gpu_mem_gb * GIB else "no" for s in STRATEGIES]
    out.append(line(f"fits in {gpu_mem_gb:g} GiB", fits))
    out += ["", "the same on every GPU, other settings (GiB):"]
    out += [f"  {k}: {v / GIB:.2f}" for k, v in p.alternatives.items()]
    out += ["", *[f"note: {n}" for n in p.notes]]
    return "\n".join(out)


def plan_config(cfg: RunConfig, gpus: int, gpu_mem_gb: float) -> str:
    """`adpa plan`: resolves the architectures and renders the plan."""
    student = resolve_arch(cfg.model.student)
    teacher = resolve_arch(cfg.model.teacher) if cfg.model.teacher else None
    m = cfg.model
    header = [f"student {m.student}: {student.params() / 1e9:.3f} B parameters ({student.source})"]
    if m.lora:
        header[0] += f", LoRA r {m.lora_r}: {student.lora_params(m.lora_r) / 1e6:.1f} M trainable"
    if teacher is not None:
        quant = {"none": "unquantized", "8bit": "8-bit", "4bit": "4-bit"}[m.teacher_quantization]
        header.append(
            f"teacher {m.teacher}: {teacher.params() / 1e9:.3f} B parameters ({teacher.source}), {quant}"
        )
    if any(a.source == "built-in table" for a in (student, teacher) if a is not None):
        header.append("(built-in table: shapes from the models' config.json, so this works offline)")
    t = cfg.train
    header.append(
        f"micro-batch {t.batch_size} x {len(STUDENT_GROUPS[cfg.objective.method])} groups x "
        f"{cfg.data.max_length} tokens, method {cfg.objective.method}, mixed precision {t.mixed_precision}, "
        f"gradient checkpointing {'on' if t.gradient_checkpointing else 'off'}, chunked loss {t.chunked_loss}"
    )
    return render(plan(cfg, student, teacher, gpus), gpu_mem_gb, header)
