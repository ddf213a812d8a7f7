"""Fuzzing the two input gates: only the documented error types may escape, with one line naming the file.

(a) the preference / SFT validator on arbitrary JSON-like rows written as JSON lines, and on arbitrary
bytes; (b) the YAML config loader on arbitrary text, arbitrary nested mappings and arbitrary `--set`
overrides. Anything else (KeyError, TypeError, UnicodeError, RecursionError, yaml.YAMLError...) is a bug.
"""

from __future__ import annotations

import dataclasses
import json
import tempfile
from pathlib import Path

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from adpa_core.config import (
    ConfigError,
    DataConfig,
    ModelConfig,
    ObjectiveConfig,
    RunConfig,
    TrainConfig,
    load_config,
    save_config,
)
from adpa_core.data import DataError, load_preferences, load_prompts, read_sft

FUZZ = settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@pytest.fixture(scope="module")
def folder():
    with tempfile.TemporaryDirectory(prefix="adpa-fuzz-") as name:
        yield Path(name)


def check_message(exc: BaseException, path: Path) -> None:
    message = str(exc)
    assert "\n" not in message, message
    assert str(path) in message, message


# ---------------------------------------------------------------- (a) the data validator

ODD_TEXT = st.sampled_from(["", " ", "\ud800", "ok \udc00", "<|end|>", "\x00", "é", "null"])
TEXT = st.text(max_size=12) | ODD_TEXT
ROLE = st.sampled_from(["system", "user", "assistant", "bot", "", None, 3])
CONTENT = TEXT | st.none() | st.integers()
MESSAGE = st.fixed_dictionaries({"role": ROLE, "content": CONTENT}) | st.dictionaries(
    TEXT, CONTENT, max_size=3
)
LEAF = st.none() | st.booleans() | st.integers() | st.floats() | TEXT
NESTED = st.recursive(
    LEAF, lambda inner: st.lists(inner, max_size=3) | st.dictionaries(TEXT, inner, max_size=3)
)
VALUE = LEAF | st.lists(MESSAGE, max_size=4) | NESTED
FIELD = st.sampled_from(["id", "prompt", "chosen", "rejected", "messages", "completion", "response"]) | TEXT
# Rows close to the layouts, so that the fuzzer also reaches the deeper checks and the success path.
REPLY = TEXT | st.lists(MESSAGE, min_size=1, max_size=4)
NEAR_ROW = st.fixed_dictionaries(
    {"prompt": TEXT | st.lists(MESSAGE, max_size=3), "chosen": REPLY, "rejected": REPLY},
    optional={"id": TEXT | st.integers(), "messages": st.lists(MESSAGE, max_size=3), "response": TEXT},
)
# plain words, sometimes ending in a lone surrogate (what a JSON \ud800 escape decodes to)
PLAIN = st.builds(
    str.__add__, st.text(alphabet="ab c", min_size=1, max_size=6), st.sampled_from(["", "é", "\ud800"])
)
VALID_ROW = st.fixed_dictionaries(
    {"prompt": PLAIN, "chosen": PLAIN, "rejected": PLAIN}, optional={"id": PLAIN}
)
ROW = st.dictionaries(FIELD, VALUE, max_size=6) | NEAR_ROW | VALID_ROW
LINE = ROW.map(json.dumps) | VALUE.map(json.dumps) | TEXT  # rows, other JSON values, or raw text


def write_lines(path: Path, lines: list[str]) -> None:
    # surrogatepass: a raw lone surrogate in a line becomes bytes that are not UTF-8, as in a corrupt file
    path.write_bytes("\n".join(lines).encode("utf-8", "surrogatepass"))


@FUZZ
@given(lines=st.lists(LINE, max_size=5), skip=st.booleans())
def test_preference_validator_raises_only_data_errors(folder, lines, skip):
    path = folder / "prefs.jsonl"
    write_lines(path, lines)
    try:
        ds = load_preferences(str(path), skip_bad_rows=skip)
    except DataError as exc:
        check_message(exc, path)
        return
    rows = ds.to_list()
    assert len({r["id"] for r in rows}) == len(rows) >= 1
    for r in rows:
        assert r["prompt"][-1]["role"] == "user" and r["chosen"].strip() != r["rejected"].strip()
        json.dumps(r, ensure_ascii=False).encode("utf-8")  # everything kept is valid Unicode


@FUZZ
@given(lines=st.lists(LINE, max_size=5))
def test_sft_and_prompt_validators_raise_only_data_errors(folder, lines):
    path = folder / "sft.jsonl"
    write_lines(path, lines)
    for load in (read_sft, load_prompts):
        try:
            load(str(path))
        except DataError as exc:
            check_message(exc, path)


@FUZZ
@given(content=st.binary(max_size=200), suffix=st.sampled_from([".json", ".jsonl", ".parquet"]))
def test_arbitrary_bytes_raise_only_data_errors(folder, content, suffix):
    path = folder / f"bytes{suffix}"
    path.write_bytes(content)
    try:
        load_preferences(str(path))
    except DataError as exc:
        check_message(exc, path)


# ---------------------------------------------------------------- (b) the config loader

SECTIONS = {"model": ModelConfig, "data": DataConfig, "objective": ObjectiveConfig, "train": TrainConfig}
FIELDS = sorted({f.name for cls in SECTIONS.values() for f in dataclasses.fields(cls)})
WORDS = st.sampled_from(
    ["sft", "dpo", "adpa", "kd", "fp16", "bf16", "no", "bfloat16", "float16", "4bit", "topk", "full", "cache"]
)
CONFIG_LEAF = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.integers(min_value=10**300, max_value=10**310)
    | st.floats()
    | st.text(max_size=8)
    | WORDS
)
CONFIG_VALUE = (
    CONFIG_LEAF | st.lists(CONFIG_LEAF, max_size=3) | st.dictionaries(st.text(max_size=3), CONFIG_LEAF)
)
SECTION = st.dictionaries(st.sampled_from(FIELDS) | st.text(max_size=6), CONFIG_VALUE, max_size=5)
TOP = st.dictionaries(
    st.sampled_from([*SECTIONS, "name", "output_dir", "", "a\nb", " train"])
    | st.text(max_size=6)
    | st.integers(),
    SECTION | CONFIG_VALUE,
    max_size=5,
)
YAML_BITS = st.sampled_from(
    ["train:", "model:", "objective:", "\n", "  ", "\t", ": ", "- ", "[", "]", "{", "}", ",", "'", '"', "#",
     "&a ", "*a", "!!python/object:os.system", "!!binary", "? ", "|", ">", "%YAML 1.1\n---\n", "...",
     "max_steps", "learning_rate", "method", "2001-02-30", "1" + "0" * 5000, ".nan", "1e400", "yes", "~"]
)  # fmt: skip
YAML_TEXT = st.lists(YAML_BITS | st.text(max_size=6), max_size=25).map("".join) | st.text()


def load_or_config_error(path: Path, overrides: list[str] | None = None) -> RunConfig | None:
    try:
        return load_config(path, overrides)
    except ConfigError as exc:
        check_message(exc, path)
        return None


@FUZZ
@given(text=YAML_TEXT)
def test_config_loader_on_arbitrary_text(folder, text):
    path = folder / "fuzz.yaml"
    path.write_bytes(text.encode("utf-8", "surrogatepass"))
    load_or_config_error(path)


@FUZZ
@given(data=TOP)
def test_config_loader_on_arbitrary_mappings(folder, data):
    path = folder / "fuzz.yaml"
    path.write_text(yaml.safe_dump(data), encoding="utf-8")
    cfg = load_or_config_error(path)
    if cfg is not None:  # whatever loads is saved and loads again to the same config
        save_config(cfg, folder / "again.yaml")
        assert load_config(folder / "again.yaml") == cfg


OVERRIDE_KEY = st.sampled_from(["train.max_steps", "model.lora", "objective", "a..b", "train.seed.x", "x"])
OVERRIDE = st.text(max_size=20) | st.builds("{}={}".format, OVERRIDE_KEY, YAML_TEXT)


@FUZZ
@given(overrides=st.lists(OVERRIDE, max_size=3))
def test_config_overrides_on_arbitrary_text(folder, overrides):
    path = folder / "base.yaml"
    path.write_text("name: fuzz\ntrain:\n  max_steps: 3\n", encoding="utf-8")
    load_or_config_error(path, overrides)
