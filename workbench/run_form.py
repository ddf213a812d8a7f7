"""From the Align form to a checked `RunConfig`: what `adpa train` would refuse is refused before Start.

The form's settings (plain values: method, name, steps, ...) are applied to the method's recipe in the
student's world (configs/toy/ or configs/realworld/<method>.yaml) and built with
`adpa_core.config.config_from_dict`, the validation `adpa train` runs itself; its `ConfigError` comes back
as one line that starts with the label of the form field. A setting that is absent keeps the recipe's
value; one that is present but empty is an error (never a silent default). `check_models` then resolves
every model, compares the tokenizers and bounds the LoRA rank, so a run that cannot start is never
started. A DPO teacher that is a LoRA adapter (the real world's `real:teacher`) becomes the recipe's
`model.teacher_adapter` on its base.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml

from adpa_core.config import (
    ADVANTAGE_METHODS,
    METHODS,
    TEACHER_METHODS,
    ConfigError,
    RunConfig,
    config_from_dict,
)
from adpa_core.runs import RunDir

from .locations import Locations, WorkbenchError
from .worlds import model_world, same_model, world

RECIPES = Path(__file__).resolve().parent.parent / "configs" / "toy"
# The toy recipe's settings when configs/toy is not shipped (e.g. an installed package).
FALLBACK_RECIPE: dict[str, Any] = {
    "model": {"student": "toy:student", "teacher": "toy:teacher", "teacher_ref": "toy:teacher_ref"},
    "data": {"train": "toy:preferences", "max_length": 128, "max_prompt_length": 64},
    "objective": {},
    "train": {"max_steps": 300, "batch_size": 32, "learning_rate": 1e-3, "warmup_ratio": 0.05},
}
LABELS = {  # form setting -> the label of its field in the Align tab
    "method": "Method",
    "name": "Run name",
    "steps": "Steps",
    "learning_rate": "Learning rate",
    "lora_rank": "LoRA rank",
    "alpha": "α (KL weight)",
    "gamma": "γ (ADPA weight)",
    "beta": "β",
    "dckd_run": "ADPA+ starts from",
    "student": "Student",
    "teacher": "DPO teacher",
    "teacher_ref": "Reference teacher",
    "teacher_adapter": "DPO teacher adapter",
    "data": "Preference data",
    "max_examples": "Use the first N examples",
}
CONFIG_FIELDS = {  # run config key -> the form setting that sets it
    "name": "name",
    "objective.method": "method",
    "train.max_steps": "steps",
    "train.learning_rate": "learning_rate",
    "model.lora_r": "lora_rank",
    "model.lora_alpha": "lora_rank",
    "objective.w_kl_chosen": "alpha",
    "objective.w_kl_rejected": "alpha",
    "objective.gamma": "gamma",
    "objective.beta": "beta",
    "objective.beta_dpo": "beta",
    "model.student": "student",
    "model.teacher": "teacher",
    "model.teacher_ref": "teacher_ref",
    "data.train": "data",
    "data.max_examples": "max_examples",
}
USED_BY = {  # settings only some methods read: the others hide them and ignore their values
    "alpha": ("kd", "dckd"),
    "gamma": ADVANTAGE_METHODS,
    "beta": ("dpo", *ADVANTAGE_METHODS),
    "teacher": TEACHER_METHODS,
    "teacher_ref": ADVANTAGE_METHODS,
    "dckd_run": ("adpa_plus",),
    "student": tuple(m for m in METHODS if m != "adpa_plus"),
}
CONFIG_KEY = re.compile(r"^([a-z_]+(?:\.[a-z_]+)?)[=\s]")


def used(setting: str, method: str) -> bool:
    """Whether `method` reads the form setting (settings not in USED_BY: every method)."""
    return method in USED_BY.get(setting, METHODS)


def field_error(exc: Exception) -> WorkbenchError:
    """A ConfigError as one line led by the label of the form field it is about (when there is one)."""
    text = " ".join(str(exc).split())
    found = CONFIG_KEY.match(text)
    setting = CONFIG_FIELDS.get(found.group(1)) if found else None
    return WorkbenchError(f"{LABELS[setting]}: {text}" if setting else text)


def recipe(method: str, world_name: str = "toy") -> dict[str, Any]:
    """A world's recipe of `method` (configs/toy/ or configs/realworld/<method>.yaml) as plain data."""
    if method not in METHODS:
        choices = ", ".join(METHODS)
        raise WorkbenchError(f"{LABELS['method']}: unknown method {method!r}; choose one of {choices}")
    path = (RECIPES if world_name == "toy" else world(world_name).recipes) / f"{method}.yaml"
    if path.is_file():
        return yaml.safe_load(path.read_text(encoding="utf-8"))
    data = {k: dict(v) for k, v in FALLBACK_RECIPE.items()}
    data["objective"]["method"] = method
    return data


def method_defaults(method: str, world_name: str = "toy") -> dict[str, Any]:
    """The settings the Align tab shows for `method` in a world: its recipe's steps and learning rate, and
    the objective's alpha (KL weight), gamma (ADPA weight) and beta (advantage scale; beta_dpo for DPO)."""
    from adpa_core.config import ObjectiveConfig

    data = recipe(method, world_name)
    obj = ObjectiveConfig(**{**data.get("objective", {}), "method": method})
    return {
        "steps": int(data["train"]["max_steps"]),
        "learning_rate": float(data["train"]["learning_rate"]),
        "alpha": obj.w_kl_chosen,
        "gamma": obj.gamma,
        "beta": obj.beta_dpo if method == "dpo" else obj.beta,
    }


def fresh_run_name(method: str, runs_dir: Path) -> str:
    """`<method>-<MMDD-HHMMSS>`, with a suffix when a run of that name exists: a default that Start takes."""
    base = f"{(method or 'run').replace('_', '-')}-{time.strftime('%m%d-%H%M%S')}"
    name, n = base, 1
    while (runs_dir / name).exists():
        n += 1
        name = f"{base}-{n}"
    return name


def run_method(run: RunDir) -> str | None:
    """The method in a run's config.yaml; None when it cannot be read."""
    try:
        data = yaml.safe_load(run.config_path.read_text(encoding="utf-8"))
        return data["objective"]["method"]
    except (OSError, yaml.YAMLError, KeyError, TypeError):
        return None


def _value(s: dict[str, Any], key: str, method: str, cast: Callable[[Any], Any]) -> Any:
    """The form value of `key` cast to a number; None when absent or not read by `method`."""
    if key not in s or not used(key, method):
        return None
    value = s[key]
    if value is None or (isinstance(value, str) and not value.strip()):
        raise WorkbenchError(f"{LABELS[key]} is empty: give a number")
    try:
        return cast(value)
    except (TypeError, ValueError, OverflowError):
        raise WorkbenchError(f"{LABELS[key]}={value!r} is not a valid number") from None


def _whole(value: Any) -> int:
    number = float(value)
    if not number.is_integer():
        raise ValueError(value)
    return int(number)


def config_data(loc: Locations, name: str, s: dict[str, Any]) -> dict[str, Any]:
    """The run config as plain data: the method's recipe with the form's settings applied."""
    method = s.get("method") or "sft"
    data = recipe(method, _student_world(loc, s, method))
    data["name"], data["output_dir"] = name, str(loc.runs_dir)
    model, obj, train = data.setdefault("model", {}), data.setdefault("objective", {}), data["train"]
    obj["method"] = method
    for key in ("student", "teacher", "teacher_ref"):
        if key in s and used(key, method):  # an empty field is refused by name (never the recipe's)
            model[key] = loc.source(s[key], LABELS[key])
    if method not in TEACHER_METHODS:
        for key in ("teacher", "teacher_ref", "teacher_adapter"):
            model.pop(key, None)
    else:
        _adapter_teacher(model)
    if method == "adpa_plus":
        model["student"] = dckd_student(loc, s.get("dckd_run"))
    if "data" in s:
        data["data"]["train"] = loc.source(s["data"], LABELS["data"])
    steps = _value(s, "steps", method, _whole)
    train["max_steps"] = steps if steps is not None else int(train.get("max_steps", 100))
    train["log_every"] = int(s.get("log_every") or max(1, train["max_steps"] // 100))  # ~100 curve points
    lr = _value(s, "learning_rate", method, float)
    if lr is not None:
        train["learning_rate"] = lr
    examples = _value(s, "max_examples", method, _whole)
    if examples is not None and examples < 0:
        raise WorkbenchError(f"{LABELS['max_examples']}={examples}: give 0 (all) or a positive number")
    if examples:
        data["data"]["max_examples"] = examples
    _objective_settings(method, obj, s)
    rank = _value(s, "lora_rank", method, _whole) or 0
    if rank < 0:
        raise WorkbenchError(f"{LABELS['lora_rank']}={rank}: give 0 (train all weights) or a positive rank")
    if rank > 0:
        model.update(lora=True, lora_r=rank, lora_alpha=2 * rank)
    return data


def _student_world(loc: Locations, s: dict[str, Any], method: str) -> str:
    """The world whose recipe a run follows: its student's (ADPA+: its DCKD run's); toy when unknown."""
    if method == "adpa_plus" and s.get("dckd_run"):
        student = dckd_student(loc, s["dckd_run"])
    elif (s.get("student") or "").strip():
        student = loc.source(s["student"], LABELS["student"])
    else:
        return "toy"
    return model_world(student) or "toy"


def _adapter_teacher(model: dict[str, Any]) -> None:
    """A DPO teacher that is a LoRA adapter sits on its base: the reference teacher is that base with the
    adapter off (`model.teacher_adapter`), so a reference teacher given next to it must be that base. A
    full teacher replaces a recipe's adapter."""
    from .handlers import adapter_base

    teacher = model.get("teacher")
    if teacher is None:
        return
    base = adapter_base(teacher)
    if base is None and teacher != model.get("teacher_adapter"):
        model.pop("teacher_adapter", None)
        return
    ref = model.pop("teacher_ref", None)
    if ref is not None and base is not None and not same_model(ref, base):
        raise WorkbenchError(
            f"{LABELS['teacher_ref']}: the DPO teacher {teacher!r} is a LoRA adapter on {base!r}; its "
            f"reference teacher is that base with the adapter off, not {ref!r}"
        )
    model.update(teacher=ref or base, teacher_adapter=teacher)


def _objective_settings(method: str, obj: dict[str, Any], s: dict[str, Any]) -> None:
    """alpha: the KL weights (kd, dckd); gamma: the ADPA weight; beta: the advantage or DPO temperature."""
    alpha, gamma, beta = (_value(s, key, method, float) for key in ("alpha", "gamma", "beta"))
    if alpha is not None:
        obj["w_kl_chosen"] = alpha
        if method == "dckd":
            obj["w_kl_rejected"] = alpha
    if gamma is not None:
        obj["gamma"] = gamma
    if beta is not None:
        obj["beta_dpo" if method == "dpo" else "beta"] = beta


def dckd_student(loc: Locations, dckd_run: str | None) -> str:
    """The folder of the finished DCKD run that ADPA+ starts from."""
    if not dckd_run:
        raise WorkbenchError(
            f"{LABELS['dckd_run']}: ADPA+ starts from a finished DCKD run: train DCKD first, then pick it"
        )
    run = RunDir(loc.run_dir(dckd_run))
    method = run_method(run)
    if method != "dckd" or not run.final_dir.is_dir():
        state = run.read_status().get("state", "missing")
        raise WorkbenchError(
            f"{LABELS['dckd_run']}: ADPA+ needs a finished DCKD run; {dckd_run!r} is a "
            f"{method or 'missing'} run (state {state})"
        )
    return str(run.path)


def build_config(loc: Locations, name: str, settings: dict[str, Any]) -> RunConfig:
    """The validated RunConfig of the form (`adpa train`'s validation); a WorkbenchError names the field."""
    try:
        return config_from_dict(config_data(loc, name, settings))
    except ConfigError as exc:
        raise field_error(exc) from exc


def check_models(cfg: RunConfig, config: Callable[[str], Any], tokenizer: Callable[[str], Any]) -> None:
    """Every model of `cfg` resolves (its config loads), the LoRA rank fits the student, and the teachers
    share the student's vocabulary: what `adpa train` checks after seconds of loading, checked before
    Start. `config` and `tokenizer` load a model's config / tokenizer by name (cached by the caller)."""
    from adpa_core.models import check_lora_rank, check_tokenizer_contract

    student = "dckd_run" if cfg.objective.method == "adpa_plus" else "student"
    m = cfg.model
    names = {student: m.student, "teacher": m.teacher, "teacher_ref": m.teacher_ref}
    names["teacher_adapter"] = m.teacher_adapter  # a recipe's DPO teacher as a LoRA adapter on `teacher`
    names = {key: name for key, name in names.items() if name}
    for key, name in names.items():
        try:
            if key == student:
                check_lora_rank(m, config(name))
                student_tok = tokenizer(name)
            elif key == "teacher_adapter":  # its base is `teacher`, whose vocabulary is checked
                config(name)
            else:
                config(name)
                check_tokenizer_contract(student_tok, tokenizer(name), ("student", key.replace("_", " ")))
        except ConfigError as exc:
            raise field_error(exc) from exc
        except (OSError, ValueError) as exc:  # missing model, offline hub id, another vocabulary
            raise WorkbenchError(f"{LABELS[key]}: {' '.join(str(exc).split())}") from exc
