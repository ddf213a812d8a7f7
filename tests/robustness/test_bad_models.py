"""Bad model folders: each fails with one error line of the documented class that names the path.

`ModelLoadError` (an OSError) for paths that are missing, hold no model or cannot be loaded;
`TokenizerMismatchError` (a ValueError) when a model does not share the student's vocabulary. Loading
must not change the folders it reads.
"""

from __future__ import annotations

import json
import re
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest

from adpa_core.config import ModelConfig
from adpa_core.models import (
    ModelLoadError,
    TokenizerMismatchError,
    load_inference_model,
    load_models,
    load_student,
    load_teacher,
    load_tokenizer,
)
from tests.robustness.kit import clear_error
from tests.tiny import WORDS, make_llama, make_tokenizer, save_model


@pytest.fixture(scope="module")
def good(tmp_path_factory) -> Path:
    """A valid tiny model folder (weights, config, tokenizer) that the cases copy and break."""
    tok = make_tokenizer()
    return save_model(tmp_path_factory.mktemp("good") / "model", tok, make_llama(tok, hidden=32, layers=1))


def copy_of(good: Path, root: Path) -> Path:
    return Path(shutil.copytree(good, root / "model"))


def missing(good: Path, root: Path) -> Path:
    return root / "no" / "such" / "model"


def readme_only(good: Path, root: Path) -> Path:
    (root / "model").mkdir()
    (root / "model" / "README.md").write_text("# my model\n")
    return root / "model"


def a_file(good: Path, root: Path) -> Path:
    (root / "model.bin").write_bytes(b"\x00" * 16)
    return root / "model.bin"


def edit_json(path: Path, change: Callable[[dict], None]) -> None:
    data = json.loads(path.read_text())
    change(data)
    path.write_text(json.dumps(data))


def remote_code(good: Path, root: Path) -> Path:
    """A config of a model type transformers does not know, `auto_map` pointing at code in the folder."""
    path = copy_of(good, root)
    auto_map = {"AutoConfig": "configuration_x.XConfig", "AutoModelForCausalLM": "modeling_x.XForCausalLM"}
    edit_json(path / "config.json", lambda c: c.update(model_type="x-custom", auto_map=auto_map))
    (path / "modeling_x.py").write_text("raise SystemExit('this code must never run')\n")
    return path


def remote_tokenizer(good: Path, root: Path) -> Path:
    path = copy_of(good, root)
    auto_map = {"AutoTokenizer": ["tokenization_x.XTokenizer", None]}
    edit_json(
        path / "tokenizer_config.json", lambda c: c.update(tokenizer_class="XTokenizer", auto_map=auto_map)
    )
    return path


def truncated_weights(good: Path, root: Path) -> Path:
    path = copy_of(good, root)
    weights = path / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    return path


def garbage_weights(good: Path, root: Path) -> Path:
    path = copy_of(good, root)
    (path / "model.safetensors").write_bytes(b"not safetensors")
    return path


def no_weights(good: Path, root: Path) -> Path:
    path = copy_of(good, root)
    (path / "model.safetensors").unlink()
    return path


def broken_config(good: Path, root: Path) -> Path:
    path = copy_of(good, root)
    (path / "config.json").write_text('{"model_type": "llama",')
    return path


def config_without_type(good: Path, root: Path) -> Path:
    path = copy_of(good, root)
    edit_json(path / "config.json", lambda c: c.pop("model_type"))
    return path


def broken_tokenizer(good: Path, root: Path) -> Path:
    path = copy_of(good, root)
    (path / "tokenizer.json").write_text("{oops")
    return path


def adapter_without_base(good: Path, root: Path) -> Path:
    (root / "model").mkdir()
    (root / "model" / "adapter_config.json").write_text(json.dumps({"peft_type": "LORA", "r": 4}))
    return root / "model"


def adapter_on_a_missing_base(good: Path, root: Path) -> Path:
    (root / "model").mkdir()
    base = str(root / "gone" / "base")
    (root / "model" / "adapter_config.json").write_text(json.dumps({"base_model_name_or_path": base}))
    return root / "model"


def other_vocabulary(good: Path, root: Path) -> Path:
    words = list(WORDS)
    words[3] = "horse"  # "a" -> "horse" at id 7 + 3
    tok = make_tokenizer(words)
    return save_model(root / "model", tok, make_llama(tok, hidden=32, layers=1))


def other_eos(good: Path, root: Path) -> Path:
    tok = make_tokenizer()
    tok.eos_token = "<pad>"
    return save_model(root / "model", tok, make_llama(tok, hidden=32, layers=1))


def too_few_rows(good: Path, root: Path) -> Path:
    """The student's tokenizer saved with a model whose embedding has fewer rows than it has tokens."""
    small = make_llama(make_tokenizer(words=WORDS[:20], pad_to=32), hidden=32, layers=1)
    path = save_model(root / "model", make_tokenizer(words=WORDS[:20], pad_to=32), small)
    for name in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(good / name, path / name)
    return path


LOADERS: dict[str, Callable[[str, Path], object]] = {
    "student": lambda p, good: load_student(ModelConfig(student=p), "cpu"),
    "teacher": lambda p, good: load_teacher(p, ModelConfig(), "cpu"),
    "tokenizer": lambda p, good: load_tokenizer(p),
    "inference": lambda p, good: load_inference_model(p, "cpu"),
    "as teacher of the good student": lambda p, good: load_models(
        ModelConfig(student=str(good), teacher=p), "cpu"
    ),
    "as student of the good tokenizer": lambda p, good: load_models(
        ModelConfig(student=p, tokenizer=str(good)), "cpu"
    ),
}

# (make the bad path, loader, error class, regex; {path} stands for the escaped path)
CASES = {
    "missing folder": (missing, "student", ModelLoadError, r"model path {path} does not exist"),
    "missing folder (tokenizer)": (
        missing,
        "tokenizer",
        ModelLoadError,
        r"tokenizer path {path} does not exist",
    ),
    "missing folder (teacher)": (missing, "teacher", ModelLoadError, r"model path {path} does not exist"),
    "folder with only a README": (
        readme_only,
        "student",
        ModelLoadError,
        r"{path} holds no model \(expected one of config\.json, adapter_config\.json\)",
    ),
    "folder with only a README (tokenizer)": (
        readme_only,
        "tokenizer",
        ModelLoadError,
        r"{path} holds no tokenizer",
    ),
    "a file, not a folder": (a_file, "inference", ModelLoadError, r"{path} holds no model"),
    "custom code while trust_remote_code is off": (
        remote_code,
        "student",
        ModelLoadError,
        r"the model in {path} needs custom code .*set model\.trust_remote_code=true only if you trust that "
        r"folder: it runs the Python code from {path}$",
    ),
    "custom code (teacher)": (
        remote_code,
        "teacher",
        ModelLoadError,
        r"model\.trust_remote_code=true.*{path}",
    ),
    "custom tokenizer code": (
        remote_tokenizer,
        "tokenizer",
        ModelLoadError,
        r"the tokenizer in {path} needs custom code .*set model\.trust_remote_code=true",
    ),
    "truncated safetensors": (
        truncated_weights,
        "student",
        ModelLoadError,
        r"the weights in {path} are corrupt or truncated \(.*\); save or copy the model again",
    ),
    "garbage safetensors (teacher)": (
        garbage_weights,
        "teacher",
        ModelLoadError,
        r"the weights in {path} are corrupt or truncated",
    ),
    "no weights file": (
        no_weights,
        "student",
        ModelLoadError,
        r"could not load the model from {path}: .*no file named model\.safetensors",
    ),
    "broken config.json": (
        broken_config,
        "student",
        ModelLoadError,
        r"could not load the model from {path}: .*JSON",
    ),
    "config.json without model_type": (
        config_without_type,
        "student",
        ModelLoadError,
        r"could not load the model from {path}: .*model_type",
    ),
    "broken tokenizer.json": (
        broken_tokenizer,
        "tokenizer",
        ModelLoadError,
        r"could not load the tokenizer from {path}",
    ),
    "adapter naming no base": (
        adapter_without_base,
        "student",
        ModelLoadError,
        r"{path}/adapter_config\.json names no base model \(base_model_name_or_path\)",
    ),
    "adapter on a missing base": (
        adapter_on_a_missing_base,
        "inference",
        ModelLoadError,
        r"model path .*gone/base does not exist",
    ),
    "teacher with another vocabulary": (
        other_vocabulary,
        "as teacher of the good student",
        TokenizerMismatchError,
        r"^{path}: student and teacher tokenizers differ first at id 10: "
        r"student has 'a', teacher has 'horse'",
    ),
    "teacher with another eos token": (
        other_eos,
        "as teacher of the good student",
        TokenizerMismatchError,
        r"^{path}: student and teacher tokenizers have different eos_token: '<\|end\|>' vs '<pad>'",
    ),
    "student with too few embedding rows": (
        too_few_rows,
        "as student of the good tokenizer",
        TokenizerMismatchError,
        r"^{path}: the student has 32 embedding rows but the tokenizer has 64 tokens",
    ),
}


@pytest.mark.parametrize("name", list(CASES))
def test_bad_model_path_fails_clearly(name, good, tmp_path):
    make, loader, cls, pattern = CASES[name]
    path = make(good, tmp_path)
    with clear_error(cls, pattern.replace("{path}", re.escape(str(path))), untouched=tmp_path):
        LOADERS[loader](str(path), good)
    assert not (tmp_path / "model" / "__pycache__").exists()  # the custom code never ran


def test_good_folder_still_loads(good):
    """The cases break copies: the original loads (so each failure comes from what the case broke)."""
    tokenizer, student, pair = load_models(ModelConfig(student=str(good), teacher=str(good)), "cpu")
    assert len(tokenizer) == 64 and pair is not None and student.training
