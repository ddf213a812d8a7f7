"""Models whose logits are not `hidden @ W.T`: Gemma 2 (`final_logit_softcapping`), Granite (`logits_scaling`)
and Cohere (`logit_scale`). The chunked path and the teacher cache apply each model's own output transform:
chunked equals full logits (values and gradients) for every objective, and a cache with k = V equals the
online teacher. A model with a transform the library does not know is refused by the chunked path."""

from __future__ import annotations

import pytest
import torch
from transformers import (
    CohereConfig,
    CohereForCausalLM,
    Gemma2Config,
    Gemma2ForCausalLM,
    GraniteConfig,
    GraniteForCausalLM,
    LlamaForCausalLM,
)

from adpa_core import chunked, objectives, train
from adpa_core import losses as L
from adpa_core.chunked import (
    LogitTransform,
    chunking_problem,
    final_hidden,
    fused_linear_loss,
    output_layer,
    output_transform,
    sequence_logps_chunked,
)
from adpa_core.config import METHODS, ConfigError
from adpa_core.runs import RunDir
from adpa_core.teacher import build_teacher_cache
from adpa_core.train import _chunk_size, run_training
from tests.tiny import make_llama, make_tokenizer, save_model
from tests.trainkit import make_cfg, preference_rows, write_jsonl

# family: (model class, config class, transform setting, output weight scale). The output rows are scaled
# up so that logits reach several units and each transform changes the losses by a lot.
FAMILIES = {
    "gemma2": (Gemma2ForCausalLM, Gemma2Config, {"final_logit_softcapping": 4.0}, 40.0),
    "granite": (GraniteForCausalLM, GraniteConfig, {"logits_scaling": 0.25}, 10.0),
    "cohere": (CohereForCausalLM, CohereConfig, {"logit_scale": 4.0}, 10.0),
}


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def make_model(family: str, tok, hidden: int = 32, intermediate: int = 64, seed: int = 0):
    """A tiny random model of `family` on the tiny tokenizer, with large output rows."""
    cls, config_cls, transform, scale = FAMILIES[family]
    torch.manual_seed(seed)
    config = config_cls(
        vocab_size=len(tok),
        hidden_size=hidden,
        intermediate_size=intermediate,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=2,
        head_dim=hidden // 2,
        max_position_embeddings=256,
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
        **transform,
    )
    model = cls(config)
    with torch.no_grad():
        model.get_output_embeddings().weight.mul_(scale)
    model.generation_config.pad_token_id = tok.pad_token_id
    model.generation_config.eos_token_id = tok.eos_token_id
    return model


@pytest.fixture(scope="module", params=list(FAMILIES))
def world(request, tmp_path_factory):
    """Student, reference teacher and DPO teacher (its perturbation) of one family, and preference data."""
    family = request.param
    root = tmp_path_factory.mktemp(family)
    tok = make_tokenizer()
    paths = {"family": family}
    paths["student"] = str(save_model(root / "student", tok, make_model(family, tok, seed=1)))
    ref = make_model(family, tok, hidden=64, intermediate=128, seed=2)
    paths["teacher_ref"] = str(save_model(root / "teacher_ref", tok, ref))
    with torch.no_grad():
        for p in ref.parameters():
            p.add_(0.05 * torch.randn_like(p))
    paths["teacher"] = str(save_model(root / "teacher", tok, ref))
    paths["train"] = str(write_jsonl(root / "train.jsonl", preference_rows(16, seed=0)))
    paths["eval"] = str(write_jsonl(root / "eval.jsonl", preference_rows(4, seed=1)))
    return paths


def _batch(tok):
    enc = tok(
        ["hello world the cat sat on the mat", "what is two plus two ?"], return_tensors="pt", padding=True
    )
    return enc["input_ids"], enc["attention_mask"]


@pytest.mark.parametrize("family", list(FAMILIES))
def test_output_layer_reproduces_the_models_logits(family):
    tok = make_tokenizer()
    model = make_model(family, tok).eval()
    assert output_transform(model) != LogitTransform()  # the transform is read from the config
    ids, mask = _batch(tok)
    with torch.no_grad():
        logits = model(input_ids=ids, attention_mask=mask).logits
        hidden = final_hidden(model, {"input_ids": ids, "attention_mask": mask})
        projected = model.get_output_embeddings()(hidden)
    assert (projected - logits).abs().max() > 1.0  # a bare projection would be far off
    torch.testing.assert_close(output_layer(model)(hidden), logits, rtol=1e-5, atol=1e-5)
    assert chunking_problem(model) is None


@pytest.mark.parametrize("family", list(FAMILIES))
def test_fused_linear_loss_through_the_transform_matches_autograd(family):
    """Values and gradients of NLL + KL through each model's transform (the chunked path computes in float32)
    against plain autograd in float64."""
    tok = make_tokenizer()
    layer = output_layer(make_model(family, tok))
    g = torch.Generator().manual_seed(0)
    hidden = torch.randn(13, 32, generator=g, requires_grad=True)
    labels = torch.randint(0, len(tok), (13,), generator=g)
    teacher = 5 * torch.randn(13, len(tok), generator=g, dtype=torch.float64)

    def per_row(logits, y, t):
        return (
            L.nll_per_token(logits[None], y[None])[0]
            + L.forward_kl_per_token(logits[None], t[None], y[None])[0]
        )

    h64 = hidden.detach().double().requires_grad_()
    w64 = layer.weight.detach().double().requires_grad_()
    expected = per_row(layer.transform(h64 @ w64.T), labels, teacher).sum()
    gh, gw = torch.autograd.grad(expected, [h64, w64])
    out = fused_linear_loss(
        hidden, layer, lambda z, s, e: per_row(z, labels[s:e], teacher[s:e].float()).sum(), len(tok), 4
    )
    ch, cw = torch.autograd.grad(out, [hidden, layer.weight])
    assert abs(out.item() - expected.item()) <= 1e-5 * abs(expected.item())
    torch.testing.assert_close(ch.double(), gh, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(cw.double(), gw, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("family", list(FAMILIES))
def test_chunked_sequence_logps_use_the_transform(family):
    """DPO's frozen reference on the chunked path."""
    tok = make_tokenizer()
    model = make_model(family, tok).eval()
    ids, mask = _batch(tok)
    labels = torch.cat([ids[:, 1:], torch.full_like(ids[:, :1], -100)], 1).masked_fill(mask == 0, -100)
    batch = {"input_ids": ids, "attention_mask": mask, "labels": labels}
    with torch.no_grad():
        full = L.sequence_logps(model(input_ids=ids, attention_mask=mask).logits, labels)
    torch.testing.assert_close(sequence_logps_chunked(model, batch, len(tok), 3), full, rtol=1e-5, atol=1e-4)


def _step_grads(cfg) -> tuple[float, dict[str, torch.Tensor]]:
    """(loss, gradient of every trainable parameter) of one `loss_step` of a training session on 4 rows."""
    s = train.setup(cfg, RunDir(cfg.run_dir), train._accelerator(cfg))
    loss, _ = objectives.loss_step(s.ctx, train.make_batch(s, s.rows[:4]))
    loss.backward()
    return loss.item(), {n: p.grad.clone() for n, p in s.student.named_parameters() if p.requires_grad}


@pytest.mark.parametrize("method", METHODS)
def test_chunked_path_equals_full_logits(world, tmp_path, method, monkeypatch):
    """Loss values and gradients of a training step, chunked vs full logits, for every objective."""
    calls = []
    real = chunked.FusedLinearLoss.apply
    monkeypatch.setattr(chunked.FusedLinearLoss, "apply", lambda *a: calls.append(1) or real(*a))
    obj = {"method": method, "support": "topk", "k": 7, "max_new_tokens": 6}
    out = {}
    for mode in ("off", "on"):
        train_cfg = {"chunked_loss": mode, "chunk_size": 5}
        out[mode] = _step_grads(make_cfg(world, tmp_path / mode, method, objective=obj, train=train_cfg))
        assert bool(calls) == (mode == "on")  # the chunked path really ran (and only when asked)
    (loss_off, grads_off), (loss_on, grads_on) = out["off"], out["on"]
    assert loss_on == pytest.approx(loss_off, rel=1e-5)
    scale = max(float(g.abs().max()) for g in grads_off.values())
    for name, g in grads_off.items():
        torch.testing.assert_close(grads_on[name], g, rtol=1e-4, atol=1e-5 * scale)


@pytest.mark.parametrize("method", ["dckd", "adpa"])
def test_cached_teacher_with_k_equal_v_matches_online(world, tmp_path, method):
    obj = {"method": method, "support": "full", "k": 64, "max_new_tokens": 6}
    online = make_cfg(world, tmp_path / "online", method, objective=obj, train={"max_steps": 2})
    run_training(online, progress=False)
    cached = make_cfg(
        world,
        tmp_path / "cached",
        method,
        train={"max_steps": 2},
        objective={**obj, "teacher_source": "cache", "teacher_cache": str(tmp_path / "cache")},
    )
    meta = build_teacher_cache(cached, logp_dtype="float32")
    assert meta["k"] == 64 and meta["tokens"] > 0
    run_training(cached, progress=False)
    online_losses = [r["loss"] for r in RunDir(online.run_dir).read_metrics()]
    cached_losses = [r["loss"] for r in RunDir(cached.run_dir).read_metrics()]
    assert cached_losses == pytest.approx(online_losses, rel=1e-5, abs=1e-6)


class _Doubled(LlamaForCausalLM):
    """A Llama whose logits are doubled after the output layer, with no config field saying so."""

    def forward(self, *args, **kwargs):
        out = super().forward(*args, **kwargs)
        out.logits = out.logits * 2
        return out


def test_an_unknown_output_transform_refuses_the_chunked_path(tmp_path):
    tok = make_tokenizer()
    plain = make_llama(tok)
    odd = _Doubled(plain.config)
    odd.load_state_dict(plain.state_dict())
    assert chunking_problem(plain) is None
    problem = chunking_problem(odd)
    assert problem is not None and "output transform this library does not apply" in problem
    # in training: `on` is a clear error, `auto` falls back to full logits
    world = {"student": "x", "train": "y", "eval": "z"}
    cfg = make_cfg(world, tmp_path, "sft", train={"chunked_loss": "on"})
    with pytest.raises(ConfigError, match="train.chunked_loss=on cannot be used: .*output transform"):
        _chunk_size(cfg, odd, None, 1 << 16)
    cfg.train.chunked_loss = "auto"
    assert _chunk_size(cfg, odd, None, 1 << 16) is None
    assert _chunk_size(cfg, plain, None, 1 << 16) is not None
