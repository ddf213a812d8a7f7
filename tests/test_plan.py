"""`adpa plan`: parameter counts against real models, the strategies' arithmetic, the offline CLI, README."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch
from peft import LoraConfig, get_peft_model
from transformers import Qwen2Config, Qwen2ForCausalLM

from adpa_core.cli import main
from adpa_core.config import ConfigError, load_config
from adpa_core.plan import KNOWN, _model_bytes, arch_from_config, plan, resolve_arch
from tests.tiny import make_llama, make_tokenizer, save_model

ROOT = Path(__file__).parents[1]


def _numel(model) -> int:
    return sum(p.numel() for p in {id(p): p for p in model.parameters()}.values())


@pytest.mark.parametrize("tied", [True, False])
def test_parameter_counts_equal_the_models(tmp_path, tied):
    tok = make_tokenizer()
    llama = make_llama(tok, hidden=64, layers=3, intermediate=96, heads=4)
    if not tied:
        llama.config.tie_word_embeddings = False
        llama.lm_head.weight = torch.nn.Parameter(llama.lm_head.weight.detach().clone())
    arch = resolve_arch(str(save_model(tmp_path / "m", tok, llama)))  # from config.json, no weights
    assert arch.params() == _numel(llama)
    qwen_cfg = Qwen2Config(
        vocab_size=128, hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, tie_word_embeddings=tied,
    )  # fmt: skip
    assert arch_from_config(qwen_cfg, "").params() == _numel(Qwen2ForCausalLM(qwen_cfg))  # q/k/v biases


def test_lora_count_equals_peft():
    model = make_llama(make_tokenizer(), hidden=64, layers=2, intermediate=96, heads=4)
    targets = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
    peft = get_peft_model(model, LoraConfig(r=8, target_modules=targets, task_type="CAUSAL_LM"))
    trainable = sum(p.numel() for p in peft.parameters() if p.requires_grad)
    assert arch_from_config(model.config, "").lora_params(8) == trainable


def test_built_in_table_matches_the_published_sizes():
    # the model cards: Qwen2.5-0.5B 0.49 B, 1.5B 1.54 B, 3B 3.09 B, 7B 7.61 B parameters
    published = {"0.5b": 0.49, "1.5b": 1.54, "3b": 3.09, "7b": 7.61}
    for size, billions in published.items():
        assert KNOWN[f"qwen/qwen2.5-{size}"].params() / 1e9 == pytest.approx(billions, abs=0.006), size
    assert resolve_arch("Qwen/Qwen2.5-7B-Instruct") is KNOWN["qwen/qwen2.5-7b"]


def test_unknown_offline_model_is_a_clear_error():
    with pytest.raises(ConfigError, match="built-in table"):
        resolve_arch("nobody/no-such-model-7b")


def test_strategies_divide_what_they_shard():
    cfg = load_config(
        ROOT / "configs" / "real" / "dckd.yaml", ["model.lora=false", "model.teacher_quantization=none"]
    )
    student, teacher = KNOWN["qwen/qwen2.5-0.5b"], KNOWN["qwen/qwen2.5-7b"]
    p = plan(cfg, student, teacher, gpus=8)
    weights, optim = p.rows["student weights"], p.rows["gradients + AdamW"]
    assert weights["single"] == student.params() * 2  # bf16
    # FSDP with mixed precision: accelerate keeps float32 trainable weights, then shards them over 8
    assert weights["fsdp"] == pytest.approx(student.params() * 4 / 8)
    assert weights["zero3"] == pytest.approx(weights["single"] / 8)
    assert optim["zero3"] < optim["single"] and optim["zero3_offload"] == 0.0
    assert optim["ddp"] > optim["single"]  # gradient buckets
    teachers = p.rows["teachers (whole per process)"]
    assert len(set(teachers.values())) == 1  # never sharded
    assert p.total("zero3") < p.total("ddp")
    four, eight, bf16 = (_model_bytes(teacher, q, 2) for q in ("4bit", "8bit", "none"))
    assert four < eight < bf16 and bf16 == teacher.params() * 2
    on = p.alternatives["activations, checkpointing on"]
    assert on < p.alternatives["activations, checkpointing off"] / 5
    assert p.alternatives["loss peak chunked"] < p.alternatives["loss peak naive"] / 10


def test_cli_plan_works_offline_and_the_readme_shows_its_output(capsys):
    assert main(["plan", str(ROOT / "configs" / "real" / "adpa.yaml"), "--gpus", "8", "--gpu-mem", "80"]) == 0
    out = capsys.readouterr().out
    assert "built-in table" in out and "fits in 80 GiB" in out
    for name in ("single", "DDP x8", "FSDP x8", "ZeRO-3 x8"):
        assert name in out
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    assert out.strip() in readme, "README's plan output is stale: run python scripts/readme_plan.py"


def test_plan_reads_a_local_run_config(tmp_path):
    tok = make_tokenizer()
    folder = save_model(tmp_path / "student", tok, make_llama(tok, hidden=32))
    cfg_path = tmp_path / "run.yaml"
    cfg_path.write_text(f"model:\n  student: {folder}\ndata:\n  train: x.jsonl\n", encoding="utf-8")
    done = subprocess.run(
        [sys.executable, "-m", "adpa_core.cli", "plan", str(cfg_path), "--gpus", "2", "--gpu-mem", "0.001"],
        capture_output=True, text=True, cwd=ROOT, timeout=120,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "fits in 0.001 GiB" in done.stdout and " no" in done.stdout
