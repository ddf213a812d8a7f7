"""Model loading: student (full / LoRA), frozen and quantized teachers, teacher pairs, tokenizer contract."""

from __future__ import annotations

import time
import warnings

import bitsandbytes as bnb
import pytest
import torch
from peft import LoraConfig, PeftModel, get_peft_model
from torch import nn
from transformers import AutoModelForCausalLM, AutoTokenizer

from adpa_core import models
from adpa_core.config import ModelConfig
from adpa_core.models import (
    ModelLoadError,
    TeacherPair,
    TokenizerMismatchError,
    adapter_disabled,
    check_model_fits_tokenizer,
    check_tokenizer_contract,
    frozen_copy,
    load_models,
    load_student,
    load_teacher,
    load_teacher_pair,
    load_tokenizer,
    pick_device,
    pick_dtype,
    save_student,
)
from tests.tiny import SPECIALS, WORDS, make_llama, make_tokenizer, save_model

CPU = torch.device("cpu")
# The test adapter adapts the tied lm_head on purpose (see `world`); peft warns about that on load.
pytestmark = pytest.mark.filterwarnings("ignore:Model has `tie_word_embeddings=True`:UserWarning")


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """Tiny models saved as Hugging Face folders: student, two 4-bit-friendly teachers, an odd-sized one."""
    root = tmp_path_factory.mktemp("models")
    tok = make_tokenizer()
    paths = {
        "student": save_model(root / "student", tok, make_llama(tok, seed=0)),
        "teacher": save_model(root / "teacher", tok, make_llama(tok, hidden=64, intermediate=128, seed=1)),
        "teacher_ref": save_model(
            root / "teacher_ref", tok, make_llama(tok, hidden=64, intermediate=128, seed=2)
        ),
        "odd": save_model(root / "odd", tok, make_llama(tok, hidden=64, intermediate=96, seed=3)),
    }
    # The DPO teacher as a random, non-zero LoRA adapter on the reference base (lm_head adapted too, so
    # that the reference's output layer must switch the adapter off).
    torch.manual_seed(4)
    base = AutoModelForCausalLM.from_pretrained(paths["teacher_ref"])
    lora = LoraConfig(
        r=4, lora_alpha=8, target_modules=["q_proj", "v_proj", "lm_head"], init_lora_weights=False
    )
    with warnings.catch_warnings():  # peft notes the tied lm_head and that it saves embedding layers
        warnings.simplefilter("ignore")
        get_peft_model(base, lora).save_pretrained(root / "adapter")
    paths["adapter"] = root / "adapter"
    return tok, {k: str(v) for k, v in paths.items()}


def batch(tok, n: int = 2):
    enc = tok(
        ["hello world the cat sat on the mat", "what is two plus two ?"], return_tensors="pt", padding=True
    )
    return enc["input_ids"][:n], enc["attention_mask"][:n]


def logits_of(model, tok):
    ids, mask = batch(tok)
    with torch.no_grad():
        return model(input_ids=ids, attention_mask=mask).logits


def lm_loss(model, tok):
    ids, mask = batch(tok)
    return model(input_ids=ids, attention_mask=mask, labels=ids.masked_fill(mask == 0, -100)).loss


def test_pick_device_and_dtype():
    assert pick_device("cpu") == CPU
    assert pick_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    assert pick_dtype("auto", CPU) == torch.float32
    assert pick_dtype("bfloat16", CPU) == torch.bfloat16


def test_load_tokenizer_sets_pad_to_eos(tmp_path):
    tok = make_tokenizer()
    tok.pad_token = None
    tok.save_pretrained(tmp_path)
    loaded = load_tokenizer(str(tmp_path))
    assert loaded.pad_token == loaded.eos_token == "<|end|>"


def test_missing_paths_give_clear_errors(tmp_path, world, monkeypatch):
    tok, paths = world
    assert issubclass(ModelLoadError, OSError) and issubclass(TokenizerMismatchError, ValueError)
    missing = tmp_path / "nowhere" / "model"
    with pytest.raises(ModelLoadError, match=str(missing)):
        load_tokenizer(str(missing))
    with pytest.raises(ModelLoadError, match=str(missing)):
        load_student(ModelConfig(student=str(missing)), CPU)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ModelLoadError, match=f"{empty} holds no model"):
        load_teacher(str(empty), ModelConfig(), CPU)
    make_llama(tok).save_pretrained(tmp_path / "weights_only")
    with pytest.raises(ModelLoadError, match="holds no tokenizer"):
        load_tokenizer(str(tmp_path / "weights_only"))
    with pytest.raises(ModelLoadError, match="holds no LoRA adapter"):
        load_teacher(paths["teacher"], ModelConfig(), CPU, adapter=str(empty))
    monkeypatch.setenv("ADPA_HOME", str(tmp_path / "home-without-a-toy-world"))
    with pytest.raises(ModelLoadError, match="adpa toy build"):
        load_tokenizer("toy:student")


def test_hub_id_fails_fast_offline():  # conftest sets HF_HUB_OFFLINE=1
    start = time.monotonic()
    with pytest.raises(ModelLoadError, match="no-such-org/no-such-model"):
        load_tokenizer("no-such-org/no-such-model")
    assert time.monotonic() - start < 10


def test_lora_student_trains_only_the_adapter(world):
    tok, paths = world
    torch.manual_seed(0)
    model = load_student(ModelConfig(student=paths["student"], lora=True, lora_r=4, lora_alpha=8), CPU)
    assert isinstance(model, PeftModel) and model.training
    assert sorted(model.peft_config["default"].target_modules) == sorted(models.LLAMA_STYLE_TARGETS)
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    before = lm_loss(model, tok)
    before.backward()
    opt.step()
    for name, p in model.named_parameters():
        assert p.requires_grad == ("lora_" in name), name
        assert (p.grad is not None) == ("lora_" in name), name
    assert lm_loss(model, tok).item() != pytest.approx(before.item(), abs=1e-6)


def test_lora_custom_targets(world):
    _, paths = world
    cfg = ModelConfig(student=paths["student"], lora=True, lora_r=2, lora_target_modules=["q_proj"])
    assert set(load_student(cfg, CPU).peft_config["default"].target_modules) == {"q_proj"}


def test_lora_targets_fall_back_to_all_linear():
    class Tiny(nn.Module):
        def __init__(self):
            super().__init__()
            self.config = type("C", (), {"model_type": "unknown"})()
            self.fc = nn.Linear(4, 4)

    assert models.default_lora_targets(Tiny()) == "all-linear"


def test_full_student_all_trainable(world):
    _, paths = world
    model = load_student(ModelConfig(student=paths["student"]), CPU)
    assert model.training and all(p.requires_grad for p in model.parameters())
    assert next(model.parameters()).dtype == torch.float32


def test_teacher_is_frozen(world):
    _, paths = world
    model = load_teacher(paths["teacher"], ModelConfig(), CPU)
    assert not model.training and not any(p.requires_grad for p in model.parameters())


def test_4bit_teacher_runs_on_cpu(world):
    tok, paths = world
    model = load_teacher(
        paths["teacher"], ModelConfig(teacher=paths["teacher"], teacher_quantization="4bit"), CPU
    )
    assert isinstance(model.model.layers[0].self_attn.q_proj, bnb.nn.Linear4bit)
    logits = logits_of(model, tok)
    assert logits.shape == (2, batch(tok)[0].shape[1], len(tok)) and torch.isfinite(logits).all()
    assert not any(p.requires_grad for p in model.parameters())


def test_4bit_cpu_kernel_size_rules():
    tok = make_tokenizer()
    bad = models.cpu_4bit_unsupported(make_llama(tok, hidden=48, intermediate=128))
    layer0 = {name.split("layers.0.")[1] for name in bad if "layers.0." in name}
    # q/k/v/o: 48 outputs; gate/up: 48 inputs; down: 128 -> 48 outputs.
    assert layer0 == {f"self_attn.{p}_proj" for p in "qkvo"} | {
        "mlp.gate_proj",
        "mlp.up_proj",
        "mlp.down_proj",
    }
    assert models.cpu_4bit_unsupported(make_llama(tok, hidden=64, intermediate=128)) == []


def test_4bit_on_cpu_keeps_unsupported_layers_unquantized(world):
    tok, paths = world
    cfg = ModelConfig(teacher=paths["odd"], teacher_quantization="4bit")
    with pytest.warns(UserWarning, match="stay unquantized"):
        model = load_teacher(paths["odd"], cfg, CPU)
    mlp = model.model.layers[0].mlp
    assert isinstance(mlp.gate_proj, bnb.nn.Linear4bit)  # 64 -> 96: fits the kernel
    assert type(mlp.down_proj) is nn.Linear  # 96 inputs are not a multiple of 64: full precision
    assert type(model.lm_head) is nn.Linear
    logits = logits_of(model, tok)
    assert logits.shape[-1] == len(tok) and torch.isfinite(logits).all()


def test_8bit_teacher_runs_on_cpu(world):
    tok, paths = world
    model = load_teacher(
        paths["teacher"], ModelConfig(teacher=paths["teacher"], teacher_quantization="8bit"), CPU
    )
    assert isinstance(model.model.layers[0].self_attn.q_proj, bnb.nn.Linear8bitLt)
    full = AutoModelForCausalLM.from_pretrained(paths["teacher"])
    logits = logits_of(model, tok)  # bitsandbytes logs that inputs are cast to float16 for the int8 matmul
    assert torch.isfinite(logits).all()
    assert torch.allclose(logits, logits_of(full, tok), atol=0.05)


def test_adapter_pair_shares_one_base(world):
    tok, paths = world
    cfg = ModelConfig(
        student=paths["student"], teacher=paths["teacher_ref"], teacher_adapter=paths["adapter"]
    )
    pair = load_teacher_pair(cfg, CPU)
    assert pair.shares_base and pair.has_reference and pair.ref is None
    assert isinstance(pair.dpo, PeftModel) and not any(p.requires_grad for p in pair.dpo.parameters())
    # One base in memory: the pair holds the base's weights once, plus the adapter.
    base_numel = sum(
        p.numel() for p in AutoModelForCausalLM.from_pretrained(paths["teacher_ref"]).parameters()
    )
    assert sum(p.numel() for n, p in pair.dpo.named_parameters() if "lora_" not in n) == base_numel
    ids, mask = batch(tok)
    dpo = pair.dpo_forward(ids, mask, output_hidden_states=True)
    ref = pair.ref_forward(ids, mask, output_hidden_states=True)
    base = logits_of(AutoModelForCausalLM.from_pretrained(paths["teacher_ref"]), tok)
    assert not torch.allclose(dpo.logits, ref.logits, atol=1e-3)
    torch.testing.assert_close(ref.logits, base, atol=1e-6, rtol=0)
    assert dpo.logits.requires_grad is False
    # The chunked-loss path: output layer applied to the final hidden states gives the logits.
    torch.testing.assert_close(pair.output_layer("ref")(ref.hidden_states[-1]), ref.logits, atol=1e-5, rtol=0)
    torch.testing.assert_close(pair.output_layer("dpo")(dpo.hidden_states[-1]), dpo.logits, atol=1e-5, rtol=0)


def test_two_model_pair_and_no_reference(world):
    tok, paths = world
    cfg = ModelConfig(student=paths["student"], teacher=paths["teacher"], teacher_ref=paths["teacher_ref"])
    pair = load_teacher_pair(cfg, CPU)
    assert not pair.shares_base and pair.has_reference and pair.ref is not pair.dpo
    ids, mask = batch(tok)
    ref = logits_of(AutoModelForCausalLM.from_pretrained(paths["teacher_ref"]), tok)
    torch.testing.assert_close(pair.ref_forward(ids, mask).logits, ref, atol=1e-6, rtol=0)
    assert pair.output_layer("ref") is pair.ref.lm_head
    alone = load_teacher_pair(ModelConfig(student=paths["student"], teacher=paths["teacher"]), CPU)
    assert not alone.has_reference
    with pytest.raises(ValueError, match="no reference teacher"):
        alone.ref_forward(ids, mask)


def test_tokenizer_mismatch_names_first_differing_token():
    words = list(WORDS)
    i = words.index("dog")
    words[i] = "horse"
    with pytest.raises(
        TokenizerMismatchError, match=rf"id {len(SPECIALS) + i}: student has 'dog', teacher has 'horse'"
    ):
        check_tokenizer_contract(make_tokenizer(), make_tokenizer(words))
    check_tokenizer_contract(make_tokenizer(), make_tokenizer())
    other_eos = make_tokenizer()
    other_eos.eos_token = "<pad>"
    with pytest.raises(TokenizerMismatchError, match="eos_token"):
        check_tokenizer_contract(make_tokenizer(), other_eos)


def test_teacher_pair_rejects_mismatched_teacher(tmp_path, world):
    tok, paths = world
    words = list(WORDS)
    words[0] = "howdy"
    other = make_tokenizer(words)
    save_model(tmp_path / "t", other, make_llama(other))
    with pytest.raises(TokenizerMismatchError, match="'hello', teacher has 'howdy'"):
        load_teacher_pair(ModelConfig(student=paths["student"], teacher=str(tmp_path / "t")), CPU, tok)
    # Padded embedding rows (e.g. 151,936 vs 152,064) are fine.
    save_model(tmp_path / "padded", tok, make_llama(tok, extra_rows=64))
    pair = load_teacher_pair(ModelConfig(student=paths["student"], teacher=str(tmp_path / "padded")), CPU)
    assert pair.dpo_forward(*batch(tok)).logits.shape[-1] == len(tok) + 64


def test_embedding_rows_padded_ok_too_few_rejected():
    tok = make_tokenizer()
    check_model_fits_tokenizer(make_llama(tok, extra_rows=64), tok, "teacher")
    small = make_llama(make_tokenizer(words=WORDS[:20], pad_to=32))
    with pytest.raises(
        TokenizerMismatchError, match=rf"{small.config.vocab_size} embedding rows.*{len(tok)} tokens"
    ):
        check_model_fits_tokenizer(small, tok, "teacher")


def test_save_lora_student_adapter_and_merged(tmp_path, world):
    tok, paths = world
    torch.manual_seed(0)
    model = load_student(ModelConfig(student=paths["student"], lora=True, lora_r=4), CPU)
    with torch.no_grad():  # a non-zero adapter, as after training
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.1)
    model.eval()
    expected = logits_of(model, tok)
    out = save_student(model, tok, tmp_path / "final", merge=True)
    assert (out["adapter"] / "adapter_config.json").exists()
    assert (out["adapter"] / "adapter_model.safetensors").exists()
    base = AutoModelForCausalLM.from_pretrained(paths["student"])
    reloaded = PeftModel.from_pretrained(base, out["adapter"]).eval()
    torch.testing.assert_close(logits_of(reloaded, tok), expected, atol=1e-6, rtol=0)
    merged = AutoModelForCausalLM.from_pretrained(out["merged"]).eval()
    torch.testing.assert_close(logits_of(merged, tok), expected, atol=1e-5, rtol=0)
    assert len(AutoTokenizer.from_pretrained(out["merged"])) == len(tok)
    # The training model keeps its adapter.
    assert isinstance(model, PeftModel)
    torch.testing.assert_close(logits_of(model, tok), expected, atol=0, rtol=0)


def test_save_full_student(tmp_path, world):
    tok, paths = world
    model = load_student(ModelConfig(student=paths["student"]), CPU).eval()
    out = save_student(model, tok, tmp_path / "final", merge=True)
    reloaded = AutoModelForCausalLM.from_pretrained(out["model"])
    torch.testing.assert_close(logits_of(reloaded, tok), logits_of(model, tok), atol=0, rtol=0)
    assert load_tokenizer(str(out["model"])).get_vocab() == tok.get_vocab()


def test_trust_remote_code_off_by_default(monkeypatch, world):
    _, paths = world
    assert ModelConfig().trust_remote_code is False
    seen = []
    for cls in (AutoModelForCausalLM, AutoTokenizer):
        real = cls.from_pretrained

        def spy(*args, _real=real, **kwargs):
            seen.append(kwargs.get("trust_remote_code"))
            return _real(*args, **kwargs)

        monkeypatch.setattr(cls, "from_pretrained", spy)
    load_models(ModelConfig(student=paths["student"], teacher=paths["teacher"]), CPU)
    assert len(seen) >= 4 and all(v is False for v in seen)
    seen.clear()
    load_student(ModelConfig(student=paths["student"], trust_remote_code=True), CPU)
    assert seen == [True]


def test_load_models(world):
    tok, paths = world
    tokenizer, student, pair = load_models(ModelConfig(student=paths["student"]), CPU)
    assert pair is None and tokenizer.get_vocab() == tok.get_vocab() and student.training
    cfg = ModelConfig(
        student=paths["student"], teacher=paths["teacher_ref"], teacher_adapter=paths["adapter"]
    )
    _, _, pair = load_models(cfg, CPU)
    assert isinstance(pair, TeacherPair) and pair.shares_base


def test_one_call_loads_a_4bit_teacher_pair_and_a_lora_student(world):
    import bitsandbytes as bnb

    tok, paths = world
    cfg = ModelConfig(
        student=paths["student"],
        lora=True,
        lora_r=4,
        teacher=paths["teacher_ref"],
        teacher_adapter=paths["adapter"],
        teacher_quantization="4bit",
    )
    _, student, pair = load_models(cfg, CPU)
    trainable = [n for n, p in student.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in n for n in trainable)
    assert any(isinstance(m, bnb.nn.Linear4bit) for m in pair.dpo.modules())
    ids, mask = batch(tok)
    dpo, ref = pair.dpo_forward(ids, mask).logits, pair.ref_forward(ids, mask).logits
    assert torch.isfinite(dpo).all() and not torch.allclose(dpo, ref)


def test_qlora_student_trains_one_step(world):
    import bitsandbytes as bnb

    tok, paths = world
    cfg = ModelConfig(student=paths["teacher"], lora=True, lora_r=4, student_quantization="4bit")
    student = load_student(cfg, CPU)
    assert any(isinstance(m, bnb.nn.Linear4bit) for m in student.modules())
    params = [p for p in student.parameters() if p.requires_grad]
    before = [p.detach().clone() for p in params]
    opt = torch.optim.SGD(params, lr=0.1)
    lm_loss(student, tok).backward()
    opt.step()
    assert any(not torch.equal(b, p) for b, p in zip(before, params, strict=True))


def test_adapter_disabled_and_frozen_copy(world):
    tok, paths = world
    torch.manual_seed(0)
    model = load_student(ModelConfig(student=paths["student"], lora=True, lora_r=4), CPU).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.1)
    base = logits_of(AutoModelForCausalLM.from_pretrained(paths["student"]), tok)
    with adapter_disabled(model):
        torch.testing.assert_close(logits_of(model, tok), base, atol=1e-6, rtol=0)
    assert not torch.allclose(logits_of(model, tok), base, atol=1e-3)
    full = load_student(ModelConfig(student=paths["student"]), CPU)
    with pytest.raises(TypeError, match="frozen_copy"), adapter_disabled(full):
        pass
    ref = frozen_copy(full)
    assert not ref.training and not any(p.requires_grad for p in ref.parameters())
    assert all(p.requires_grad for p in full.parameters()) and full.training


def test_final_hidden_projects_to_the_same_logits(world):
    """The chunked path's teacher hidden states: through the output layer they give the forward's logits."""
    tok, paths = world
    cfg = ModelConfig(
        student=paths["student"], teacher=paths["teacher_ref"], teacher_adapter=paths["adapter"]
    )
    pair = load_teacher_pair(cfg, CPU)
    ids, mask = batch(tok)
    for which, forward in (("dpo", pair.dpo_forward), ("ref", pair.ref_forward)):
        logits = pair.output_layer(which)(pair.final_hidden(which, ids, mask))
        torch.testing.assert_close(logits, forward(ids, mask).logits, rtol=1e-5, atol=1e-5)


def test_only_the_optional_kernel_notice_of_bitsandbytes_is_dropped():
    import logging
    import subprocess
    import sys

    from adpa_core import OPTIONAL_KERNEL_NOTICE

    code = "import adpa_core.models, bitsandbytes"  # importing bitsandbytes is what logs the notice
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and OPTIONAL_KERNEL_NOTICE not in done.stderr
    logger = logging.getLogger("bitsandbytes.backends.cpu.ops")
    keep = logger.makeRecord(logger.name, logging.WARNING, __file__, 1, "another warning", (), None)
    drop = logger.makeRecord(
        logger.name, logging.WARNING, __file__, 1, OPTIONAL_KERNEL_NOTICE + ": %s", ("x",), None
    )
    assert logger.filter(keep) and not logger.filter(drop)
