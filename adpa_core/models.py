"""Model loading: the student (full or LoRA), frozen teachers (optionally 4/8-bit), the tokenizer contract.

Small functions that map a `ModelConfig` to library objects; no training logic. Errors:
`ModelLoadError` (an `OSError`, like the errors transformers raises for missing models) when a path is
missing or holds no model / tokenizer; `TokenizerMismatchError` (a `ValueError`) when models do not share
one vocabulary (DESIGN.md section 1).
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
import json
import os
import re
import shutil
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from peft import LoraConfig, PeftModel, get_peft_model, prepare_model_for_kbit_training
from safetensors import SafetensorError
from torch import Tensor, nn
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer, BitsAndBytesConfig

from .config import ConfigError, ModelConfig
from .data.templates import set_chat_template
from .paths import resolve_model_path

# Llama-style decoders (also Qwen2/3, Mistral, Gemma, SmolLM2, Danube): attention + MLP projections.
LLAMA_STYLE_TYPES = ("llama", "mistral", "qwen2", "qwen3", "gemma", "gemma2")
LLAMA_STYLE_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "tokenizer.model", "vocab.json", "vocab.txt")
# bitsandbytes' packed 4-bit CPU kernel: output sizes in blocks of 32, input sizes in quant blocks of 64.
BNB_CPU_BLOCK_N, BNB_CPU_BLOCK_K = 32, 64
_HUB_ID = re.compile(r"^[A-Za-z0-9_][\w.-]*(/[\w.-]+)?$")


class ModelLoadError(OSError):
    """A model, adapter or tokenizer path is missing, holds no model, or cannot be loaded."""


class TokenizerMismatchError(ValueError):
    """Two models do not share one vocabulary, or a model has fewer embedding rows than the tokenizer."""


def pick_device(name: str = "auto") -> torch.device:
    """`auto`: CUDA when present, else CPU; any other name is passed to `torch.device`."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def pick_dtype(name: str, device: torch.device) -> torch.dtype:
    """`auto`: bf16 on a CUDA device that supports it, else float32 (CPU half precision is slow and lossy)."""
    if name == "auto":
        cuda_bf16 = device.type == "cuda" and torch.cuda.is_available() and torch.cuda.is_bf16_supported()
        return torch.bfloat16 if cuda_bf16 else torch.float32
    return {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[name]


def _resolve(name: str, what: str, marker: tuple[str, ...]) -> str:
    """Resolves `toy:` names and checks that a local folder holds one of the `marker` files.

    Hub ids pass through; they fail fast in `_load` when offline.
    """
    try:
        path = resolve_model_path(name)
    except FileNotFoundError as exc:
        raise ModelLoadError(str(exc)) from exc
    local = Path(path).expanduser()
    if (local / "final").is_dir():  # a run directory: its trained model
        local = local / "final"
    if local.exists():
        if not local.is_dir() or not any((local / f).exists() for f in marker):
            raise ModelLoadError(f"{local} holds no {what} (expected one of {', '.join(marker)})")
        return str(local)
    if not _HUB_ID.match(path):
        raise ModelLoadError(f"{what} path {path} does not exist")
    return path


def _load(fn: Any, path: str, what: str, **kwargs: Any) -> Any:
    try:
        return fn(path, **kwargs)
    except (OSError, ValueError, SafetensorError) as exc:  # offline hub ids end up here at once
        raise ModelLoadError(_load_problem(exc, path, what)) from exc


def _load_problem(exc: Exception, path: str, what: str) -> str:
    """One line naming `path` and what to do (transformers' own messages span several lines)."""
    text = " ".join(str(exc).split())
    local = Path(path).exists()
    if "trust_remote_code" in text:
        source = "folder" if local else "hub repository"
        return (
            f"the {what} in {path} needs custom code shipped with it (auto_map in its config) and "
            f"model.trust_remote_code is off; set model.trust_remote_code=true only if you trust that "
            f"{source}: it runs the Python code from {path}"
        )
    if isinstance(exc, SafetensorError):
        return f"the weights in {path} are corrupt or truncated ({text}); save or copy the model again"
    if local:
        return f"could not load the {what} from {path}: {text}"
    return f"could not load the {what} from {path!r} (not a local folder? offline?): {text}"


def load_tokenizer(
    name_or_path: str, trust_remote_code: bool = False, chat_template: str | None = None
) -> Any:
    """Loads a tokenizer (`toy:` names, local folders, hub ids); sets a pad token when it has none.

    `chat_template`: `model.chat_template` (None: the tokenizer's own, the plain one when it has none).
    """
    path = _resolve(name_or_path, "tokenizer", TOKENIZER_FILES)
    tok = _load(AutoTokenizer.from_pretrained, path, "tokenizer", trust_remote_code=trust_remote_code)
    if tok.pad_token is None:
        # Padding positions are masked (attention mask, labels -100), so reusing EOS as pad is harmless.
        tok.pad_token = tok.eos_token
    set_chat_template(tok, chat_template)
    return tok


def load_run_tokenizer(cfg: ModelConfig) -> Any:
    """The tokenizer of a run: `model.tokenizer` (default: the student's), with `model.chat_template`."""
    return load_tokenizer(cfg.tokenizer or cfg.student, cfg.trust_remote_code, cfg.chat_template)


def _device_map(device: torch.device) -> dict[str, str]:
    return {"": str(torch.device("cuda", 0) if device.type == "cuda" and device.index is None else device)}


def _load_causal_lm(path: str, cfg: ModelConfig, device: torch.device, quant: Any = None) -> nn.Module:
    kwargs: dict[str, Any] = {
        "dtype": pick_dtype(cfg.dtype, device),
        "trust_remote_code": cfg.trust_remote_code,
    }
    if quant is not None:  # bitsandbytes places the weights while loading; .to() is not allowed afterwards
        kwargs.update(quantization_config=quant, device_map=_device_map(device))
    model = _load(AutoModelForCausalLM.from_pretrained, path, "model", **kwargs)
    return model if quant is not None else model.to(device)


def default_lora_targets(model: nn.Module) -> list[str] | str:
    """q/k/v/o + gate/up/down projections for Llama-style models; else peft's `all-linear` (not lm_head)."""
    model_type = getattr(getattr(model, "config", None), "model_type", None)
    names = {name.rsplit(".", 1)[-1] for name, m in model.named_modules() if isinstance(m, nn.Linear)}
    present = [t for t in LLAMA_STYLE_TARGETS if t in names]
    return present if model_type in LLAMA_STYLE_TYPES and present else "all-linear"


def load_student(cfg: ModelConfig, device: torch.device | str | None = None) -> nn.Module:
    """The trainable student in train mode: all weights, or a fresh LoRA adapter (base frozen) if `cfg.lora`.

    Seed the adapter init yourself (`torch.manual_seed`) before calling.
    """
    device = pick_device(cfg.device) if device is None else torch.device(device)
    path = _resolve(cfg.student, "model", ("config.json", "adapter_config.json"))
    adapter = _adapter_base(path)
    if adapter is None:
        quant = _quantization_config(path, cfg, device, cfg.student_quantization)
        model = _load_causal_lm(path, cfg, device, quant)
        if quant is not None:  # QLoRA: frozen k-bit base, float norms, inputs that carry gradients
            model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=False)
    else:  # e.g. ADPA+ from a LoRA DCKD run: that student is the base with its adapter merged in
        model = _load_causal_lm(_resolve(adapter, "model", ("config.json",)), cfg, device)
        model = _load(lambda p: PeftModel.from_pretrained(model, p), path, "LoRA adapter").merge_and_unload()
    if cfg.lora:
        check_lora_rank(cfg, model.config)
        targets = cfg.lora_target_modules or default_lora_targets(model)
        lora = LoraConfig(
            r=cfg.lora_r,
            lora_alpha=cfg.lora_alpha,
            lora_dropout=cfg.lora_dropout,
            target_modules=targets,
            task_type="CAUSAL_LM",
        )
        model = get_peft_model(model, lora)
    return model.train()


def check_lora_rank(cfg: ModelConfig, config: Any) -> None:
    """ConfigError when `cfg.lora_r` exceeds the student's hidden size (`config`, a transformers config):
    an adapter that wide has as many parameters as the layers it adapts and only costs memory and time."""
    hidden = getattr(config.get_text_config(), "hidden_size", None)
    if cfg.lora and isinstance(hidden, int) and cfg.lora_r > hidden:
        raise ConfigError(
            f"model.lora_r={cfg.lora_r} is larger than the student's hidden size {hidden}; use a rank from 1 "
            f"to {hidden} (typically 8-64), or model.lora=false to train all weights"
        )


def model_config(name: str, trust_remote_code: bool = False) -> Any:
    """The transformers config of a model (`toy:` name, folder, run directory, hub id; for a LoRA adapter:
    its base's), read without loading weights. ModelLoadError when the name does not resolve."""
    path = _resolve(name, "model", ("config.json", "adapter_config.json"))
    base = _adapter_base(path)
    path = path if base is None else _resolve(base, "model", ("config.json",))
    return _load(AutoConfig.from_pretrained, path, "model", trust_remote_code=trust_remote_code)


def _adapter_base(path: str) -> str | None:
    """The base model of a peft adapter folder, or None when `path` holds full weights."""
    config = Path(path) / "adapter_config.json"
    if not config.exists() or (Path(path) / "config.json").exists():
        return None
    base = json.loads(config.read_text(encoding="utf-8")).get("base_model_name_or_path")
    if not base:
        raise ModelLoadError(f"{config} names no base model (base_model_name_or_path)")
    return base


def adapter_base(name: str) -> str | None:
    """The base model of a LoRA adapter given as a folder or a run directory (its final/); None for a
    model with full weights."""
    return _adapter_base(_resolve(name, "model", ("config.json", "adapter_config.json")))


def load_inference_model(
    name: str, device: torch.device | str | None = None, dtype: str = "auto"
) -> tuple[nn.Module, Any]:
    """(frozen model, tokenizer) for generation: a folder, hub id, `toy:` name, run directory or adapter."""
    cfg = ModelConfig(student=name, dtype=dtype)
    device = pick_device(cfg.device) if device is None else torch.device(device)
    path = _resolve(name, "model", ("config.json", "adapter_config.json"))
    base = _adapter_base(path)
    if base is None:
        model = _load_causal_lm(path, cfg, device)
    else:
        model = _load_causal_lm(_resolve(base, "model", ("config.json",)), cfg, device)
        model = _load(lambda p: PeftModel.from_pretrained(model, p, is_trainable=False), path, "LoRA adapter")
    return freeze(model), load_tokenizer(path)


def _quantization_config(
    path: str, cfg: ModelConfig, device: torch.device, mode: str
) -> BitsAndBytesConfig | None:
    """bitsandbytes settings for `mode` (none | 4bit | 8bit): nf4 with double quantization for 4-bit."""
    if mode == "none":
        return None
    if mode == "8bit":
        return BitsAndBytesConfig(load_in_8bit=True)
    skip = _cpu_4bit_skips(path, cfg) if device.type == "cpu" else None
    return BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type="nf4",
        bnb_4bit_use_double_quant=True,
        bnb_4bit_compute_dtype=pick_dtype(cfg.dtype, device),
        llm_int8_skip_modules=skip,
    )


def cpu_4bit_unsupported(model: nn.Module) -> list[str]:
    """Names of the Linear layers (output layer excluded) that bitsandbytes' 4-bit CPU kernel cannot run.

    Its packed kernel (used on AVX512-BF16 CPUs, in the no-grad forward) needs out_features % 32 == 0
    ("N must be divisible by block_n") and in_features % 64 == 0 (the quantization block size).
    """
    head = model.get_output_embeddings()
    return [
        name
        for name, m in model.named_modules()
        if isinstance(m, nn.Linear)
        and m is not head
        and (m.out_features % BNB_CPU_BLOCK_N or m.in_features % BNB_CPU_BLOCK_K)
    ]


def _cpu_4bit_skips(path: str, cfg: ModelConfig) -> list[str] | None:
    """Layers the 4-bit CPU kernel cannot run stay unquantized, with a warning (None: all fit).

    We do not probe CPU flags, so the behaviour is the same on every CPU.
    """
    config = _load(AutoConfig.from_pretrained, path, "model config", trust_remote_code=cfg.trust_remote_code)
    with torch.device("meta"):  # shapes only, no memory
        meta = AutoModelForCausalLM.from_config(config, trust_remote_code=cfg.trust_remote_code)
    bad = cpu_4bit_unsupported(meta)
    if not bad:
        return None
    warnings.warn(
        f"4-bit on CPU: {len(bad)} Linear layers of {path} (e.g. {bad[0]}) have an output size that is not a "
        f"multiple of {BNB_CPU_BLOCK_N} or an input size that is not a multiple of {BNB_CPU_BLOCK_K}; "
        "bitsandbytes' CPU kernel cannot run them, so they stay unquantized. Use such layer sizes, "
        "or teacher_quantization=none, to avoid this.",
        stacklevel=3,
    )
    head = meta.get_output_embeddings()
    heads = {name for name, m in meta.named_modules() if m is head}
    # Setting a skip list replaces bitsandbytes' default one, so the output layer is listed again.
    return sorted(re.escape(name) for name in heads | set(bad))


def freeze(model: nn.Module) -> nn.Module:
    """eval() and no gradients: a teacher or reference model."""
    model.eval()
    model.requires_grad_(False)
    return model


def load_teacher(
    path: str, cfg: ModelConfig, device: torch.device | str | None = None, adapter: str | None = None
) -> nn.Module:
    """A frozen teacher (`cfg.teacher_quantization` applies); with `adapter`, a frozen PeftModel on it."""
    device = pick_device(cfg.device) if device is None else torch.device(device)
    path = _resolve(path, "model", ("config.json",))
    quant = _quantization_config(path, cfg, device, cfg.teacher_quantization)
    model = _load_causal_lm(path, cfg, device, quant)
    if adapter is not None:
        adapter_path = _resolve(adapter, "LoRA adapter", ("adapter_config.json",))
        load_adapter = lambda p: PeftModel.from_pretrained(model, p, is_trainable=False)
        model = _load(load_adapter, adapter_path, "LoRA adapter")
    return freeze(model)


class _AdapterOffHead(nn.Module):
    """Calls an adapted output layer with the adapter switched off (reference teacher on a shared base)."""

    def __init__(self, peft_model: PeftModel, head: nn.Module) -> None:
        super().__init__()
        self.peft_model, self.head = peft_model, head

    def forward(self, hidden: Tensor) -> Tensor:
        with self.peft_model.disable_adapter():
            return self.head(hidden)


@dataclass
class TeacherPair:
    """The DPO teacher and its reference (SFT) teacher; frozen.

    `shares_base`: `dpo` is a PeftModel and the reference is its base with the adapter off (one base in
    memory). `ref` is None then, and also in the no-reference setting (`has_reference` False).
    """

    dpo: nn.Module
    ref: nn.Module | None = None
    shares_base: bool = False

    @property
    def has_reference(self) -> bool:
        return self.shares_base or self.ref is not None

    # no_grad, not inference_mode: the outputs enter losses next to tensors that need gradients.
    @torch.no_grad()
    def dpo_forward(self, input_ids: Tensor, attention_mask: Tensor | None = None, **kw: Any) -> Any:
        """DPO teacher outputs, `.logits` (B, T, V); `**kw` goes to the model (e.g. output_hidden_states)."""
        return self.dpo(input_ids=input_ids, attention_mask=attention_mask, **kw)

    @torch.no_grad()
    def ref_forward(self, input_ids: Tensor, attention_mask: Tensor | None = None, **kw: Any) -> Any:
        """Reference teacher outputs; `.logits` is (B, T, V)."""
        if self.shares_base:
            with self.dpo.disable_adapter():
                return self.dpo(input_ids=input_ids, attention_mask=attention_mask, **kw)
        if self.ref is None:
            raise ValueError(
                "this teacher pair has no reference teacher (set teacher_ref or teacher_adapter)"
            )
        return self.ref(input_ids=input_ids, attention_mask=attention_mask, **kw)

    @torch.no_grad()
    def final_hidden(
        self, which: str, input_ids: Tensor, attention_mask: Tensor | None = None, **kw: Any
    ) -> Tensor:
        """The normed final hidden states (B, T, H) of `dpo` or `ref` from the decoder alone: no logits and
        no per-layer hidden states kept (`output_hidden_states` would hold GBs for a 7B teacher)."""
        model = self.dpo if which == "dpo" or self.shares_base else self.ref
        if model is None:
            raise ValueError("this teacher pair has no reference teacher")
        decoder = model.get_decoder()
        off = self.dpo.disable_adapter() if which == "ref" and self.shares_base else contextlib.nullcontext()
        with off:
            return decoder(input_ids=input_ids, attention_mask=attention_mask, **kw).last_hidden_state

    def output_layer(self, which: str = "dpo") -> nn.Module:
        """The lm_head of `dpo` or `ref`: projects final hidden states (B, T, H) to (B, T, V).

        Feed it `outputs.hidden_states[-1]` (already normed) of the same teacher's forward. A model with an
        output transform (Gemma 2 soft-capping...) applies it after this layer: `chunked.OutputLayer` pairs
        the two.
        """
        if which not in ("dpo", "ref"):
            raise ValueError(f"which={which!r}: choose 'dpo' or 'ref'")
        if which == "ref" and not self.shares_base:
            if self.ref is None:
                raise ValueError("this teacher pair has no reference teacher")
            return self.ref.get_output_embeddings()
        head = self.dpo.get_output_embeddings()
        if which == "ref" and hasattr(head, "lora_A"):  # the adapter reaches the head: switch it off
            return _AdapterOffHead(self.dpo, head)
        return head


def load_teacher_pair(
    cfg: ModelConfig, device: torch.device | str | None = None, tokenizer: Any = None
) -> TeacherPair:
    """Loads the DPO teacher and the reference (two models, or one base + the DPO LoRA adapter).

    Checks both against `tokenizer` (default: the student's, `cfg.tokenizer or cfg.student`).
    """
    if cfg.teacher is None:
        raise ValueError("model.teacher is not set")
    if tokenizer is None:
        tokenizer = load_run_tokenizer(cfg)
    dpo = load_teacher(cfg.teacher, cfg, device, adapter=cfg.teacher_adapter)
    check_model_and_tokenizer(cfg.teacher, dpo, tokenizer, "teacher", cfg.trust_remote_code)
    if cfg.teacher_adapter is not None:
        return TeacherPair(dpo=dpo, shares_base=True)
    ref = None
    if cfg.teacher_ref is not None:
        ref = load_teacher(cfg.teacher_ref, cfg, device)
        check_model_and_tokenizer(cfg.teacher_ref, ref, tokenizer, "reference teacher", cfg.trust_remote_code)
    return TeacherPair(dpo=dpo, ref=ref)


def load_models(
    cfg: ModelConfig,
    device: torch.device | str | None = None,
    *,
    tokenizer: Any = None,
    teachers: bool = True,
) -> tuple[Any, nn.Module, TeacherPair | None]:
    """(tokenizer, student, teacher pair or None): everything a run needs, with all contracts checked.

    `tokenizer`: the run's tokenizer when already loaded; `teachers=False` leaves the teachers on disk
    (a run that reads a teacher cache).
    """
    if tokenizer is None:
        tokenizer = load_run_tokenizer(cfg)
    student = load_student(cfg, device)
    check_model_and_tokenizer(cfg.student, student, tokenizer, "student", cfg.trust_remote_code)
    pair = load_teacher_pair(cfg, device, tokenizer) if teachers and cfg.teacher is not None else None
    return tokenizer, student, pair


WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".gguf")


def model_fingerprint(name: str | None) -> str | None:
    """A cheap identity of a model's files, so that caches built from a model notice when it changes.

    Local folders (also `toy:` / `smol:` names, run directories and adapters): a hash of the config files
    and, per weight file, its name, size and first and last MiB (retraining into the same folder changes
    it; no full hash of many GB). Hub ids and None are returned as they are.
    """
    if name is None:
        return None
    try:
        path = Path(_resolve(name, "model", ("config.json", "adapter_config.json")))
    except ModelLoadError:
        return name
    if not path.is_dir():
        return name
    digest = hashlib.sha256()
    for file in sorted(path.iterdir()):
        if file.name in ("config.json", "adapter_config.json"):
            digest.update(file.name.encode() + file.read_bytes())
        elif file.suffix in WEIGHT_SUFFIXES:
            size = file.stat().st_size
            with open(file, "rb") as f:
                head = f.read(1 << 20)
                f.seek(max(0, size - (1 << 20)))
                tail = f.read()
            digest.update(f"{file.name}:{size}".encode() + head + tail)
    return f"{name}@{digest.hexdigest()[:16]}"


# ---------------------------------------------------------------- tokenizer contract


def _id_to_token(vocab: dict[str, int], n: int) -> list[str | None]:
    """The token of each id < n (None where the vocabulary has a gap)."""
    tokens: list[str | None] = [None] * n
    for token, i in vocab.items():
        if i < n:
            tokens[i] = token
    return tokens


def _special_ids(tok: Any, n: int) -> set[int]:
    return {i for i, t in tok.added_tokens_decoder.items() if t.special and i < n}


def check_tokenizer_contract(
    reference_tok: Any, other_tok: Any, names: tuple[str, str] = ("student", "teacher")
) -> None:
    """Raises TokenizerMismatchError at the first id whose token differs, or a differing special token.

    Compares the id -> token maps on ids < len(tokenizer), bos/eos/unk and the added special tokens. The
    pad token is not compared: only the student's tokenizer pads, and padded positions are masked.
    Linear in the vocabulary, with one `len()` per tokenizer (`len()` is a call into the tokenizer's backend,
    not a stored number: once per token it cost seconds at V = 262,144); under a second there
    (benchmarks/tokenizer_check.py).
    """
    a, b = names
    sizes = [len(reference_tok), len(other_tok)]
    vocabs = [reference_tok.get_vocab(), other_tok.get_vocab()]  # token -> id
    if sizes[0] != sizes[1] or vocabs[0] != vocabs[1]:  # a C-level dict comparison in the common case
        n = max(sizes)
        x, y = (_id_to_token(v, size) + [None] * (n - size) for v, size in zip(vocabs, sizes, strict=True))
        i = next((i for i in range(n) if x[i] != y[i]), None)
        if i is not None:
            raise TokenizerMismatchError(
                f"{a} and {b} tokenizers differ first at id {i}: {a} has {x[i]!r}, {b} has "
                f"{y[i]!r} ({a}: {sizes[0]} tokens, {b}: {sizes[1]}); all models must share one vocabulary"
            )
    for attr in ("bos_token", "eos_token", "unk_token"):
        x, y = getattr(reference_tok, attr), getattr(other_tok, attr)
        if x != y:
            raise TokenizerMismatchError(f"{a} and {b} tokenizers have different {attr}: {x!r} vs {y!r}")
    only = _special_ids(reference_tok, sizes[0]) ^ _special_ids(other_tok, sizes[0])
    if only:
        i = min(only)
        token = reference_tok.convert_ids_to_tokens(i)
        raise TokenizerMismatchError(
            f"{a} and {b} tokenizers disagree on whether {token!r} (id {i}) is a special token"
        )


def check_model_fits_tokenizer(model: nn.Module, tokenizer: Any, name: str = "model") -> None:
    """Embedding rows >= len(tokenizer) is fine (padded rows are ignored); fewer is an error."""
    rows = model.get_input_embeddings().num_embeddings
    if rows < len(tokenizer):
        raise TokenizerMismatchError(
            f"the {name} has {rows} embedding rows but the tokenizer has {len(tokenizer)} tokens; "
            "they must come from the same vocabulary"
        )


def check_model_and_tokenizer(
    path: str, model: nn.Module, tokenizer: Any, name: str, trust_remote_code: bool = False
) -> None:
    """Checks `model` (loaded from `path`) and the tokenizer saved with it, if any, against `tokenizer`.

    A TokenizerMismatchError names `path`.
    """
    with _naming(path):
        check_model_fits_tokenizer(model, tokenizer, name)
    try:
        own = load_tokenizer(path, trust_remote_code)
    except ModelLoadError:
        warnings.warn(
            f"no tokenizer could be loaded from {path}; checked its embedding size only", stacklevel=2
        )
        return
    with _naming(path):
        check_tokenizer_contract(tokenizer, own, ("student", name))


@contextmanager
def _naming(path: str) -> Iterator[None]:
    try:
        yield
    except TokenizerMismatchError as exc:
        raise TokenizerMismatchError(f"{path}: {exc}") from None


# ---------------------------------------------------------------- saving and reference models


def save_student(
    model: nn.Module,
    tokenizer: Any,
    path: str | Path,
    merge: bool = False,
    state_dict: dict[str, Tensor] | None = None,
) -> dict[str, Path]:
    """Saves the (unwrapped) student with its tokenizer; returns the folders written.

    LoRA: the peft adapter in `path` (`adapter`), and with `merge=True` full merged weights in
    `path/merged` (`merged`, loadable with AutoModelForCausalLM). The merge runs on a deep copy, so the
    training model keeps its adapter (at the cost of one extra model in memory while saving).
    Full fine-tuning: `save_pretrained` into `path` (`model`); `merge` has nothing to do.
    `state_dict`: the whole weights gathered from a sharded model (FSDP / ZeRO-3), whose own parameters are
    shards; the merge then reloads the saved adapter on its base, on the CPU.
    """
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp")  # written aside and renamed: never a half-saved model
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        model.save_pretrained(tmp, state_dict=state_dict)
        tokenizer.save_pretrained(tmp)
        if isinstance(model, PeftModel) and merge:
            if state_dict is None:
                merged = copy.deepcopy(model).merge_and_unload()
            else:
                merged = load_inference_model(str(tmp), device="cpu")[0].merge_and_unload()
            merged.save_pretrained(tmp / "merged")
            tokenizer.save_pretrained(tmp / "merged")
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    shutil.rmtree(path, ignore_errors=True)
    os.replace(tmp, path)
    if not isinstance(model, PeftModel):
        return {"model": path}
    return {"adapter": path, **({"merged": path / "merged"} if merge else {})}


@contextmanager
def adapter_disabled(model: nn.Module) -> Iterator[nn.Module]:
    """Runs a peft model with its adapter off (DPO with a LoRA student: the reference is the base).

    Raises TypeError for a non-peft model: use `frozen_copy(model)`, taken before training, as the reference.
    """
    if not isinstance(model, PeftModel):
        raise TypeError(f"{type(model).__name__} has no adapter; use frozen_copy(model) as the reference")
    with model.disable_adapter():
        yield model


def frozen_copy(model: nn.Module) -> nn.Module:
    """A frozen deep copy (eval, no gradients): the reference for DPO with a fully fine-tuned student."""
    return freeze(copy.deepcopy(model))
