"""Typed run configuration: dataclasses with a docstring per field, validation, YAML load/save.

A run is described by one `RunConfig` (model, data, objective, train sections). Every check raises
`ConfigError` (a `ValueError`) with a message that names the field and says what to change.
"""

from __future__ import annotations

import contextlib
import dataclasses
import difflib
import math
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

METHODS = ("sft", "dpo", "kd", "dckd", "adpa", "adpa_plus")
TEACHER_METHODS = ("kd", "dckd", "adpa", "adpa_plus")
ADVANTAGE_METHODS = ("adpa", "adpa_plus")
PRESETS = ("reference-code",)
# Which sequence groups each method feeds the student, and which of them the teacher must see.
STUDENT_GROUPS = {
    "sft": ("chosen",),
    "dpo": ("chosen", "rejected"),
    "kd": ("chosen",),
    "dckd": ("chosen", "rejected"),
    "adpa": ("chosen", "yhat"),
    "adpa_plus": ("chosen", "yhat"),
}
TEACHER_GROUPS = {
    "kd": ("chosen",),
    "dckd": ("chosen", "rejected"),
    "adpa": ("yhat",),
    "adpa_plus": ("yhat",),
}


DATA_FILE_SUFFIXES = (".json", ".jsonl", ".parquet")


def is_local_file(source: str) -> bool:
    """True when a data source is one local file (no splits), not a hub id or a `toy:` name."""
    path = Path(source).expanduser()
    return path.is_file() or path.suffix.lower() in DATA_FILE_SUFFIXES


class ConfigError(ValueError):
    """A configuration value is missing, out of range or contradicts another one."""


class Default:
    """A field's default value, told apart from a value the user gave: a preset replaces a default but never
    a given value (a given value that differs from the preset's is a ConfigError)."""

    def __init__(self, value: Any):
        self.value = value

    def __repr__(self) -> str:
        return f"Default({self.value!r})"


# What `objective.preset` sets; a user may repeat these values but not change them.
PRESET_VALUES = {"reference-code": {"k": 50, "clip": [1e-8, 1 - 1e-8], "gamma": 1.6, "support": "topk"}}


def _check(cond: bool, message: str) -> None:
    if not cond:
        raise ConfigError(message)


def _choice(name: str, value: Any, choices: tuple) -> None:
    _check(value in choices, f"{name}={value!r} is not valid; choose one of {', '.join(map(str, choices))}")


@dataclass
class ModelConfig:
    student: str = "toy:student"
    """The model to align: a hub id, a local folder, or `toy:student`."""
    teacher: str | None = None
    """The DPO-aligned teacher. With `teacher_adapter` set: the base model that adapter sits on."""
    teacher_ref: str | None = None
    """The reference (SFT) teacher the DPO teacher was trained from. ADPA needs it (or `teacher_adapter`)."""
    teacher_adapter: str | None = None
    """A peft LoRA adapter holding the DPO teacher on top of `teacher`; the reference teacher is then the
    same base with the adapter switched off, so one base sits in memory. Leave `teacher_ref` unset."""
    tokenizer: str | None = None
    """Tokenizer to use; defaults to the student's. All models must share its vocabulary."""
    chat_template: str | None = None
    """How conversations become text: null = the tokenizer's own chat template, or, for a tokenizer without
    one (a base model), the plain template (`User: ...` / `Assistant: ...`, end of turn = eos; a warning
    says so); `plain` = always the plain template; or a path to a Jinja template file. The template is
    saved with the trained student's tokenizer."""
    lora: bool = False
    """Train a LoRA adapter on the student instead of all its weights."""
    lora_r: int = 16
    """LoRA rank."""
    lora_alpha: int = 32
    """LoRA scaling numerator (the update is scaled by alpha / r)."""
    lora_dropout: float = 0.05
    """Dropout on the LoRA input."""
    lora_target_modules: list[str] | None = None
    """Module names that get adapters; None picks a per-architecture default (attention + MLP projections)."""
    teacher_quantization: str = "none"
    """`none`, `4bit` (nf4, double quant) or `8bit` teacher weights via bitsandbytes."""
    student_quantization: str = "none"
    """`none`, or `4bit` / `8bit` student base weights for QLoRA (needs `lora: true`), e.g. the teacher's own
    DPO stage as an adapter on a 4-bit SFT teacher."""
    dtype: str = "auto"
    """Weight dtype: `auto` (bf16 on a GPU that supports it, else float32), `float32`, `bfloat16` or
    `float16`."""
    device: str = "auto"
    """`auto` (CUDA when present), `cpu` or `cuda`."""
    trust_remote_code: bool = False
    """Allow model code shipped with a checkpoint to run. Off unless you trust the source."""

    def __post_init__(self) -> None:
        _check(bool(self.student), "model.student is empty; give a hub id, a local folder or toy:student")
        _check(
            self.chat_template is None or bool(str(self.chat_template).strip()),
            "model.chat_template is empty; use null (the tokenizer's own), plain, or a Jinja file path",
        )
        _choice("model.teacher_quantization", self.teacher_quantization, ("none", "4bit", "8bit"))
        _choice("model.student_quantization", self.student_quantization, ("none", "4bit", "8bit"))
        _check(
            self.student_quantization == "none" or self.lora,
            f"model.student_quantization={self.student_quantization} needs model.lora=true (quantized "
            "weights cannot be trained directly; QLoRA trains an adapter on them)",
        )
        _choice("model.dtype", self.dtype, ("auto", "float32", "bfloat16", "float16"))
        _choice("model.device", self.device, ("auto", "cpu", "cuda"))
        _check(self.lora_r > 0, f"model.lora_r={self.lora_r} must be a positive integer")
        _check(self.lora_alpha > 0, f"model.lora_alpha={self.lora_alpha} must be positive")
        _check(0.0 <= self.lora_dropout < 1.0, f"model.lora_dropout={self.lora_dropout} must be in [0, 1)")
        if self.teacher_adapter is not None:
            _check(
                self.teacher is not None,
                "model.teacher_adapter needs model.teacher (the adapter's base model)",
            )
            _check(
                self.teacher_ref is None,
                "model.teacher_adapter and model.teacher_ref are both set: with an adapter the reference "
                "teacher is the base with the adapter off; remove model.teacher_ref",
            )
        if self.teacher_quantization != "none":
            _check(
                self.teacher is not None, "model.teacher_quantization is set but there is no model.teacher"
            )


@dataclass
class DataConfig:
    train: str = "toy:preferences"
    """Preference data: a hub id, a local .json/.jsonl/.parquet file, or `toy:preferences`."""
    format: str = "preference"
    """`preference` rows (prompt, chosen, rejected) or `sft` rows (prompt, response; method sft only)."""
    eval: str | None = None
    """Held-out data for the evaluation loss; None uses `eval_split` of the same source when it exists."""
    train_split: str = "train"
    """Split name for hub datasets and toy data."""
    eval_split: str = "test"
    """Split used for evaluation when `eval` is None (hub datasets and `toy:` data have splits)."""
    eval_holdout: float | None = None
    """Fraction of the training rows held out for evaluation (a local file has no splits): a row is held
    out when a seeded hash of its id falls below it, whatever the row order; held-out rows never train.
    None: evaluate on `eval`, or on `eval_split` of a source that has splits."""
    max_length: int = 512
    """Maximum prompt + response tokens of one sequence."""
    max_prompt_length: int = 256
    """Maximum prompt tokens; must leave room for the response (< max_length)."""
    max_examples: int | None = None
    """Use only the first N examples (after validation); None uses all."""
    skip_bad_rows: bool = False
    """Drop invalid rows (counted and logged with reasons) instead of stopping at the first one."""
    truncation: str = "truncate"
    """Responses longer than the budget: `truncate` them (keeping >= 1 token) or `drop` the row."""
    padding_side: str = "right"
    """Pad batches on the `right` or the `left`."""

    def __post_init__(self) -> None:
        _check(bool(self.train), "data.train is empty; give a hub id, a local file or toy:preferences")
        _check(self.max_length > 1, f"data.max_length={self.max_length} must be > 1")
        _check(self.max_prompt_length > 0, f"data.max_prompt_length={self.max_prompt_length} must be > 0")
        _check(
            self.max_prompt_length < self.max_length,
            f"data.max_prompt_length={self.max_prompt_length} must be smaller than data.max_length="
            f"{self.max_length} so that every example keeps at least one response token",
        )
        _check(
            self.max_examples is None or self.max_examples > 0,
            f"data.max_examples={self.max_examples} must be a positive integer or null",
        )
        _choice("data.format", self.format, ("preference", "sft"))
        if self.eval_holdout is not None:
            _check(
                0.0 < self.eval_holdout < 1.0,
                f"data.eval_holdout={self.eval_holdout} must be a fraction in (0, 1), or null",
            )
            _check(
                self.eval is None,
                "data.eval_holdout and data.eval are both set: evaluate on the eval file or on a held-out "
                "fraction of the training rows, not both",
            )
        _choice("data.truncation", self.truncation, ("truncate", "drop"))
        _choice("data.padding_side", self.padding_side, ("right", "left"))


@dataclass
class ReleasedCodeConfig:
    """The released code's numerical details (`objective.released_code`), each a switch; DESIGN.md section 1
    and docs/RESULTS.md ("Paper vs released code") explain them. Unset (null) switches are on under
    `objective.preset: reference-code` and off otherwise; set one to false to measure its effect."""

    prob_floors: bool | None = None
    """The released loader's probability clamps on the k + 1 bins (the DPO teacher's top-k and the rest):
    in the KD/DCKD KL both distributions are clamped to [1e-8, 1 - 1e-8] and student probabilities below
    1e-7 are set to 1e-7 before the log (that bin's term is capped and its gradient is 0); in the ADPA term
    the student's probabilities are clamped to [1e-8, 1 - 1e-8] (no gradient outside) and the rest bin takes
    part with the advantage 0 passed through `clip`. Off: the exact log-space k + 1-bin forms."""
    reference_imputation: bool | None = None
    """ADPA: the reference teacher's probability is known only at its own top-k ids; a DPO top-k id outside
    them gets the minimum of the DPO teacher's top-k probabilities (floored at 1e-7) instead. A teacher
    cache then stores the reference's own top-k ids. Off: the reference's exact log-prob at every DPO id."""
    advantage_floor: bool | None = None
    """ADPA: both teachers' probabilities are floored at 1e-7 before the log-ratio, so where both are below
    it the advantage is 0 (which a [1e-8, ...] clip turns into 1e-8). Off: exact log-probs."""
    eos_without_teacher: bool | None = None
    """The end-of-turn label that closes a response has no teacher data (the released precompute covers
    the content tokens only): its KL and advantage terms are the constant of empty bins (0, or the floors'
    value; no gradient), but the position still counts in the mean. Off: the teacher at every position."""
    micro_batch_mean: bool | None = None
    """Averaging: each term is one token mean over the micro-batch, and a step the mean over micro-batches
    (and processes); the released recipes ran one sequence per micro-batch, where this equals the mean of
    per-sequence means. Off: `objective.reduction` over the whole step."""
    kl_topk_online: bool | None = None
    """KD/DCKD with an online teacher: the KL over the DPO teacher's top-k + rest bins (as a cache holds
    them), not the full vocabulary. A teacher cache always has k + 1 bins."""
    unit_beta: bool | None = None
    """The released code has no beta in the advantage (beta = 1): `objective.beta` must stay 1. Off:
    `objective.beta` scales the advantage (the paper's A = beta log(pi_dpo / pi_ref))."""

    def resolve(self, preset_on: bool) -> None:
        """Unset switches follow the preset."""
        for f in dataclasses.fields(self):
            if getattr(self, f.name) is None:
                setattr(self, f.name, preset_on)

    def enabled(self) -> list[str]:
        """The names of the switches that are on."""
        return [f.name for f in dataclasses.fields(self) if getattr(self, f.name)]


RELEASED_SWITCHES = tuple(f.name for f in dataclasses.fields(ReleasedCodeConfig))


@dataclass
class ObjectiveConfig:
    method: str = "sft"
    """One of sft, dpo, kd, dckd, adpa, adpa_plus (DESIGN.md section 1)."""
    preset: str | None = None
    """`reference-code` reproduces the released code: k 50, advantage clipped to [1e-8, 1 - 1e-8], gamma 1.6,
    support topk, and every `released_code` switch left unset turned on. A value you set that differs
    from the preset's is an error, never silently replaced. Never the default."""
    reduction: str = "sequence"
    """`sequence`: mean over each sequence's tokens, then over sequences; `token`: mean over all tokens."""
    beta_dpo: float = 0.1
    """DPO temperature (method dpo)."""
    w_sft: float = 0.0
    """Weight of the SFT term added to DPO."""
    w_kl_chosen: float = 0.1
    """Weight of KL(teacher || student) on the chosen response (kd, dckd)."""
    w_kl_rejected: float = 0.1
    """Weight of KL(teacher || student) on the rejected response (dckd)."""
    gamma: float = Default(0.5)
    """Weight of the ADPA term (adpa, adpa_plus). Default from the method table (docs/RESULTS.md): gamma 0.5
    won the validation sweep {0.5, 1.5} in 13 of 20 ADPA selections (4 ADPA rows x 5 seeds; 19 of 20 on the
    earlier toy worlds). The paper used 1.5 (configs/real keep it); the reference-code preset sets 1.6."""
    beta: float = 1.0
    """Scale of the token advantage beta * (log pi_dpo - log pi_ref)."""
    clip: list[float] | None = Default(None)
    """Optional [lo, hi] clip applied to the advantage (the reference-code preset: [1e-8, 1 - 1e-8])."""
    support: str = Default("topk")
    """Tokens the ADPA expectation runs over: the DPO teacher's `topk` (advantage 0 elsewhere) or `full`.
    Default from the method table: top-20 and the full vocabulary tie (1.59 vs 1.60 held-out reward over 5
    seeds, within the intervals), and top-20 costs less and is the form a teacher cache can store."""
    k: int = Default(20)
    """Size of the top-k support / cache (default 20, the table's top-k row; the paper's code used 50, as
    configs/real and `preset: reference-code` do)."""
    use_reference: bool = True
    """False: the no-reference ablation, advantage = beta * log pi_dpo over the full vocabulary."""
    teacher_source: str = "online"
    """`online`: teacher forwards every batch; `cache`: read a top-k cache built by `adpa cache-teacher`."""
    teacher_cache: str | None = None
    """Folder of the teacher cache (teacher_source=cache)."""
    max_new_tokens: int = 128
    """Length budget of the student's own greedy responses y_hat (adpa, adpa_plus)."""
    released_code: ReleasedCodeConfig = field(default_factory=ReleasedCodeConfig)
    """The released code's numerical details, each a switch (see ReleasedCodeConfig); all off unless the
    reference-code preset turns them on."""

    def __post_init__(self) -> None:
        _choice("objective.method", self.method, METHODS)
        if self.preset is not None:
            _choice("objective.preset", self.preset, PRESETS)
        self._apply_preset()
        _choice("objective.reduction", self.reduction, ("sequence", "token"))
        _choice("objective.support", self.support, ("topk", "full"))
        _choice("objective.teacher_source", self.teacher_source, ("online", "cache"))
        for name in ("beta_dpo", "beta"):
            value = getattr(self, name)
            _check(math.isfinite(value) and value > 0, f"objective.{name}={value} must be a positive number")
        for name in ("w_sft", "w_kl_chosen", "w_kl_rejected", "gamma"):
            value = getattr(self, name)
            _check(math.isfinite(value) and value >= 0, f"objective.{name}={value} must be >= 0")
        _check(self.k >= 1, f"objective.k={self.k} must be >= 1")
        _check(self.max_new_tokens >= 1, f"objective.max_new_tokens={self.max_new_tokens} must be >= 1")
        if not self.use_reference:
            _check(
                self.support == "full",
                "objective.use_reference=false (no-reference ablation) needs objective.support=full: with "
                "top-k, the rest bin at advantage 0 would rank unlikely tokens above the teacher's choices",
            )
        if self.teacher_source == "cache":
            _check(
                self.teacher_cache is not None, "objective.teacher_source=cache needs objective.teacher_cache"
            )
        self._check_switches()

    def _apply_preset(self) -> None:
        """Fills the preset's values where the user gave none; a given value that differs is refused."""
        values = PRESET_VALUES.get(self.preset, {})
        for name in ("gamma", "clip", "support", "k"):
            given = getattr(self, name)
            if isinstance(given, Default):
                setattr(self, name, values.get(name, given.value))
                continue
            if name == "clip" and given is not None:
                _check(
                    len(given) == 2 and float(given[0]) < float(given[1]),
                    f"objective.clip={given} must be [lo, hi] with lo < hi, or null",
                )
                setattr(self, name, [float(given[0]), float(given[1])])
            if name in values and getattr(self, name) != values[name]:
                raise ConfigError(
                    f"objective.{name}={given!r} conflicts with objective.preset={self.preset}, which sets "
                    f"{name}={values[name]!r}; remove objective.{name} or the preset"
                )
        if isinstance(self.released_code, dict):  # built in Python from plain data
            self.released_code = ReleasedCodeConfig(**self.released_code)
        self.released_code.resolve(self.preset == "reference-code")

    def _check_switches(self) -> None:
        rc = self.released_code
        if rc.unit_beta:
            _check(
                self.beta == 1.0,
                f"objective.beta={self.beta} conflicts with objective.released_code.unit_beta=true (the "
                "released code has no beta: advantage = log-ratio); set released_code.unit_beta=false to "
                "scale the advantage",
            )
        if rc.micro_batch_mean:
            _check(
                self.reduction == "sequence",
                f"objective.reduction={self.reduction} conflicts with objective.released_code."
                "micro_batch_mean=true (each micro-batch is one token mean); set one of them differently",
            )
        for name in ("reference_imputation", "advantage_floor"):
            _check(
                not getattr(rc, name) or self.support == "topk",
                f"objective.released_code.{name}=true needs objective.support=topk (it acts on the DPO "
                "teacher's top-k ids)",
            )


@dataclass
class TrainConfig:
    max_steps: int = 100
    """Optimizer steps to run."""
    batch_size: int = 8
    """Examples per micro-batch on each process."""
    grad_accum: int = 1
    """Micro-batches accumulated per optimizer step."""
    learning_rate: float = 1e-4
    """Peak learning rate (AdamW)."""
    lr_schedule: str = "cosine"
    """`cosine`, `linear` or `constant`, after a linear warmup."""
    warmup_ratio: float = 0.1
    """Fraction of max_steps spent warming up."""
    weight_decay: float = 0.0
    """AdamW weight decay."""
    max_grad_norm: float = 1.0
    """Gradient clipping norm; 0 turns clipping off."""
    mixed_precision: str = "no"
    """`no`, `bf16` or `fp16` autocast (accelerate)."""
    seed: int = 0
    """Seed for data order, initialisation of adapters and dropout."""
    log_every: int = 1
    """Write a metrics line every N optimizer steps."""
    eval_every: int = 0
    """Evaluation loss on the held-out split every N steps; 0 turns it off."""
    eval_examples: int = 64
    """Held-out examples used for the evaluation loss."""
    save_every: int = 0
    """Checkpoint every N steps (0: only at the end)."""
    keep_checkpoints: int = 2
    """How many recent checkpoints to keep."""
    chunked_loss: str = "auto"
    """`auto`, `on` or `off`: compute log-probs chunk by chunk from hidden states (no full (B,T,V) tensor)."""
    chunk_size: int = 1024
    """Tokens per chunk of the chunked loss path (fewer for large vocabularies: one (chunk, V) float32
    tensor stays <= 128 MiB)."""
    gradient_checkpointing: bool = False
    """Recompute student activations in the backward pass to save memory."""
    save_merged: bool = False
    """Also write merged full weights to final/merged (LoRA students)."""

    def __post_init__(self) -> None:
        for name in ("max_steps", "batch_size", "grad_accum", "log_every", "chunk_size", "keep_checkpoints"):
            value = getattr(self, name)
            _check(isinstance(value, int) and value >= 1, f"train.{name}={value} must be an integer >= 1")
        for name in ("eval_every", "save_every", "eval_examples"):
            value = getattr(self, name)
            _check(isinstance(value, int) and value >= 0, f"train.{name}={value} must be an integer >= 0")
        _check(
            math.isfinite(self.learning_rate) and self.learning_rate > 0,
            f"train.learning_rate={self.learning_rate} must be a positive number (e.g. 1e-4)",
        )
        _choice("train.lr_schedule", self.lr_schedule, ("cosine", "linear", "constant"))
        _check(0.0 <= self.warmup_ratio < 1.0, f"train.warmup_ratio={self.warmup_ratio} must be in [0, 1)")
        _check(self.weight_decay >= 0, f"train.weight_decay={self.weight_decay} must be >= 0")
        _check(self.max_grad_norm >= 0, f"train.max_grad_norm={self.max_grad_norm} must be >= 0")
        _choice("train.mixed_precision", self.mixed_precision, ("no", "bf16", "fp16"))
        _choice("train.chunked_loss", self.chunked_loss, ("auto", "on", "off"))


@dataclass
class RunConfig:
    name: str = "run"
    """Run name: the folder under `output_dir` (letters, digits, `-`, `_`, `.`)."""
    output_dir: str = "runs"
    """Folder that holds run directories."""
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    objective: ObjectiveConfig = field(default_factory=ObjectiveConfig)
    train: TrainConfig = field(default_factory=TrainConfig)

    def __post_init__(self) -> None:
        _check(
            bool(self.name)
            and all(c.isalnum() or c in "-_." for c in self.name)
            and self.name not in (".", ".."),
            f"name={self.name!r} must be non-empty and use only letters, digits, '-', '_' and '.'",
        )
        method = self.objective.method
        _check(
            self.data.format == "preference" or method == "sft",
            f"data.format=sft has no rejected responses; objective.method={method} needs "
            "data.format=preference",
        )
        if method in TEACHER_METHODS:
            _check(
                self.model.teacher is not None or self.objective.teacher_source == "cache",
                f"objective.method={method} needs a teacher: set model.teacher (or a teacher cache)",
            )
        if (
            method in ADVANTAGE_METHODS
            and self.objective.use_reference
            and self.objective.teacher_source == "online"
        ):
            _check(
                self.model.teacher_ref is not None or self.model.teacher_adapter is not None,
                f"objective.method={method} needs the reference teacher: set model.teacher_ref, or "
                "model.teacher_adapter (reference = base with the adapter off), or "
                "objective.use_reference=false",
            )
        if self.train.eval_every and self.data.eval is None and self.data.eval_holdout is None:
            _check(
                not is_local_file(self.data.train),
                f"train.eval_every={self.train.eval_every} needs held-out data, but data.train="
                f"{self.data.train} is a local file (it has no {self.data.eval_split!r} split): set "
                "data.eval to a held-out file, or data.eval_holdout (e.g. 0.05) to hold out a seeded "
                "fraction of its rows, or train.eval_every=0",
            )
        if self.train.mixed_precision == "fp16" and self.model.dtype == "bfloat16":
            raise ConfigError(
                "train.mixed_precision=fp16 contradicts model.dtype=bfloat16; use mixed_precision=bf16 or no"
            )
        # fp16 autocast scales the loss; the scaler refuses float16 gradients ("cannot unscale FP16"),
        # which full fine-tuning of float16 weights has (LoRA adapters stay float32).
        _check(
            not (
                self.train.mixed_precision == "fp16" and self.model.dtype == "float16" and not self.model.lora
            ),
            "train.mixed_precision=fp16 with model.dtype=float16 trains float16 weights, whose gradients the "
            "fp16 loss scaler cannot unscale; use model.dtype=float32 (or auto), or model.lora=true",
        )

    @property
    def run_dir(self) -> Path:
        return Path(self.output_dir) / self.name


# ---------------------------------------------------------------- dict / YAML conversion


class _SafeLoader12(yaml.SafeLoader):
    """Safe loading with YAML 1.2 booleans: only true/false, so `mixed_precision: no` or
    `chunked_loss: off` stay the strings they look like (YAML 1.1 would read them as false)."""


_SafeLoader12.yaml_implicit_resolvers = {
    first: [r for r in resolvers if r[0] != "tag:yaml.org,2002:bool"]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
_SafeLoader12.add_implicit_resolver(
    "tag:yaml.org,2002:bool", re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"), list("tTfF")
)


def yaml_load(text: str) -> Any:
    """YAML from text with the safe loader and YAML 1.2 booleans."""
    return yaml.load(text, Loader=_SafeLoader12)  # noqa: S506 - a SafeLoader subclass


def _parse_yaml(text: str, where: str) -> Any:
    """`yaml_load`, every failure a one-line ConfigError that starts with `where` and gives the line."""
    try:
        return yaml_load(text)
    except yaml.YAMLError as exc:
        mark, start = getattr(exc, "problem_mark", None), getattr(exc, "context_mark", None)
        at = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        detail = getattr(exc, "problem", None) or str(exc)
        if getattr(exc, "context", None):
            started = f" started at line {start.line + 1}" if start is not None and mark is not None else ""
            detail += f" ({exc.context}{started})"
        raise ConfigError(f"{where}: not valid YAML{at}: {' '.join(detail.split())}") from exc
    except RecursionError:
        raise ConfigError(f"{where}: not valid YAML: nested too deeply") from None
    except (ValueError, OverflowError) as exc:  # PyYAML builds e.g. dates and ints with Python's checks
        raise ConfigError(f"{where}: not valid YAML: a value cannot be read ({exc})") from exc


def _coerce(value: Any, annotation: Any, where: str) -> Any:
    """Checks `value` against a resolved field annotation; YAML-style strings become floats."""
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(value, arg, where)
            except ConfigError as exc:
                errors.append(str(exc))
        raise ConfigError(errors[0] if errors else f"{where}: invalid value {value!r}")
    if origin is list:
        _check(isinstance(value, list | tuple), f"{where}={value!r} must be a list")
        return [_coerce(v, args[0], f"{where}[{i}]") for i, v in enumerate(value)] if args else list(value)
    if annotation is bool:
        _check(isinstance(value, bool), f"{where}={value!r} must be true or false")
        return value
    if annotation is int:
        _check(
            isinstance(value, int) and not isinstance(value, bool), f"{where}={value!r} must be an integer"
        )
        return value
    if annotation is float:
        if isinstance(value, str):
            with contextlib.suppress(ValueError):
                value = float(value)  # YAML 1.1 reads "1e-4" as a string
        _check(
            isinstance(value, int | float) and not isinstance(value, bool),
            f"{where}={value!r} must be a number",
        )
        try:
            return float(value)
        except OverflowError:
            raise ConfigError(f"{where}={value} is too large for a number") from None
    if annotation is str:
        _check(isinstance(value, str), f"{where}={value!r} must be a string")
        return value
    return value


def _key_name(key: Any) -> str:
    """A key as typed when it is a plain word, else its repr (a YAML key may be empty or hold a newline)."""
    text = str(key)
    return text if text and text.isprintable() and text.strip() == text else repr(key)


def _build(cls: type, data: Any, where: str) -> Any:
    _check(isinstance(data, dict), f"{where or 'config'} must be a mapping, got {type(data).__name__}")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted((k for k in data if k not in fields), key=str)  # YAML keys need not be strings
    if unknown:
        prefix = f"{where}." if where else ""
        close = difflib.get_close_matches(str(unknown[0]), list(fields), n=1)
        hint = f"did you mean {prefix}{close[0]}? " if close else ""
        key = _key_name(unknown[0])
        raise ConfigError(f"unknown key {prefix}{key}; {hint}valid keys here: {', '.join(fields)}")
    hints = typing.get_type_hints(cls)
    kwargs = {}
    for name, value in data.items():
        sub = f"{where}.{name}" if where else name
        if dataclasses.is_dataclass(hints[name]):
            kwargs[name] = _build(hints[name], value if value is not None else {}, sub)
        else:
            kwargs[name] = _coerce(value, hints[name], sub)
    return cls(**kwargs)


def config_from_dict(data: dict[str, Any]) -> RunConfig:
    """Builds and validates a RunConfig from nested plain data."""
    return _build(RunConfig, data, "")


def config_to_dict(cfg: RunConfig) -> dict[str, Any]:
    return dataclasses.asdict(cfg)


def apply_overrides(data: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Applies `key.sub=value` overrides (value parsed as YAML) to nested plain data, in place."""
    for item in overrides:
        _check("=" in item, f"override {item!r} must look like section.key=value")
        key, raw = item.split("=", 1)
        parts = key.strip().split(".")
        _check(all(parts), f"override {item!r} has an empty key part")
        node = data
        for part in parts[:-1]:
            if node.get(part) is None:  # `model:` with nothing under it is an empty section
                node[part] = {}
            node = node[part]
            _check(isinstance(node, dict), f"override {item!r}: {_key_name(part)} is not a section")
        node[parts[-1]] = _parse_yaml(raw, f"override {item!r}") if raw.strip() else None
    return data


def load_config(path: str | Path, overrides: list[str] | None = None) -> RunConfig:
    """Loads a YAML run config (safe loader), applies `--set` overrides and validates; every problem
    (unreadable or empty file, bad YAML, bad value) is a one-line ConfigError that names the file."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError as exc:
        raise ConfigError(f"config file not found: {path}") from exc
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"cannot read config file {path}: {exc}") from exc
    data = _parse_yaml(text, str(path))
    _check(
        data is not None,
        f"{path} is empty (no settings); write the sections you change, e.g. `objective: {{method: sft}}`, "
        "or start from a file in configs/",
    )
    _check(
        isinstance(data, dict),
        f"{path}: the top level must be a mapping of sections, got {type(data).__name__}",
    )
    try:
        return config_from_dict(apply_overrides(data, overrides or []))
    except ConfigError as exc:
        raise ConfigError(f"{path}: {exc}") from exc


def save_config(cfg: RunConfig, path: str | Path) -> None:
    """Writes the full resolved config as YAML."""
    Path(path).write_text(yaml.safe_dump(config_to_dict(cfg), sort_keys=False), encoding="utf-8")
