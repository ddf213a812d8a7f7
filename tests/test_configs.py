"""Run configs: every shipped YAML loads; bad values fail with a message naming the field."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from adpa_core.config import ConfigError, RunConfig, config_from_dict, load_config, save_config

CONFIGS = Path(__file__).parents[1] / "configs"
RUN_CONFIGS = sorted(p for p in CONFIGS.rglob("*.yaml") if "accelerate" not in p.parts)


@pytest.mark.parametrize("path", RUN_CONFIGS, ids=lambda p: str(p.relative_to(CONFIGS)))
def test_every_shipped_run_config_loads(path):
    cfg = load_config(path)
    assert isinstance(cfg, RunConfig)


def test_accelerate_configs_parse():
    for path in (CONFIGS / "accelerate").glob("*.yaml"):
        data = yaml.safe_load(path.read_text())
        assert data["distributed_type"] and data["num_processes"] >= 1


def test_round_trip_and_overrides(tmp_path):
    cfg = config_from_dict({"name": "r", "objective": {"method": "dckd"}, "model": {"teacher": "t"}})
    save_config(cfg, tmp_path / "c.yaml")
    again = load_config(
        tmp_path / "c.yaml", ["train.max_steps=7", "objective.clip=[-1, 2]", "model.lora=true"]
    )
    assert again.train.max_steps == 7 and again.objective.clip == [-1.0, 2.0] and again.model.lora
    assert load_config(tmp_path / "c.yaml") == cfg


def test_reference_code_preset_sets_the_released_choices():
    cfg = config_from_dict(
        {
            "objective": {"method": "adpa", "preset": "reference-code"},
            "model": {"teacher": "t", "teacher_ref": "r"},
        }
    )
    assert (cfg.objective.k, cfg.objective.clip, cfg.objective.gamma) == (50, [1e-8, 1 - 1e-8], 1.6)


BAD = [
    ({"objective": {"method": "ppo"}}, "objective.method"),
    ({"train": {"learning_rate": -1e-4}}, "train.learning_rate"),
    ({"train": {"learning_rate": 0}}, "train.learning_rate"),
    ({"data": {"max_length": 128, "max_prompt_length": 128}}, "max_prompt_length"),
    ({"objective": {"method": "dckd"}}, "needs a teacher"),
    ({"objective": {"method": "adpa"}, "model": {"teacher": "t"}}, "reference teacher"),
    (
        {
            "objective": {"method": "adpa", "use_reference": False, "support": "topk"},
            "model": {"teacher": "t"},
        },
        "support=full",
    ),
    ({"train": {"mixed_precision": "fp16"}, "model": {"dtype": "bfloat16"}}, "contradicts"),
    ({"model": {"teacher": "t", "teacher_ref": "r", "teacher_adapter": "a"}}, "teacher_ref"),
    ({"model": {"student_quantization": "4bit"}}, "lora"),
    ({"objective": {"k": 0}}, "objective.k"),
    ({"objective": {"clip": [1, 0]}}, "objective.clip"),
    ({"train": {"batch_size": 0}}, "train.batch_size"),
    ({"train": {"max_steps": "ten"}}, "train.max_steps"),
    ({"name": "../escape"}, "name"),
    ({"objective": {"metod": "sft"}}, "unknown key objective.metod"),
    ({"data": {"format": "sft"}, "objective": {"method": "dpo"}}, "data.format"),
    ({"objective": {"teacher_source": "cache"}}, "teacher_cache"),
]


@pytest.mark.parametrize(("data", "needle"), BAD, ids=[b[1] for b in BAD])
def test_bad_configs_name_the_field(data, needle):
    with pytest.raises(ConfigError, match=needle.replace(".", r"\.").replace("[", r"\[")):
        config_from_dict(data)


def test_bad_yaml_files(tmp_path):
    broken = tmp_path / "broken.yaml"
    broken.write_text("train: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(broken)
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "missing.yaml")
    listy = tmp_path / "list.yaml"
    listy.write_text("- a\n- b\n")
    with pytest.raises(ConfigError, match="mapping"):
        load_config(listy)
    unsafe = tmp_path / "unsafe.yaml"
    unsafe.write_text("name: !!python/object/apply:os.system ['echo hi']\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(unsafe)


def test_yaml_words_that_yaml_1_1_reads_as_booleans_stay_strings(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("train:\n  mixed_precision: no\n  chunked_loss: off\nmodel:\n  lora: true\n")
    cfg = load_config(path, ["train.chunked_loss=on"])
    assert cfg.train.mixed_precision == "no" and cfg.train.chunked_loss == "on" and cfg.model.lora is True
    assert load_config(path, ["train.mixed_precision=no"]).train.mixed_precision == "no"
