"""The chunked loss path gives the same losses and gradients as full logits, for every objective."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file

from adpa_core import losses as L
from adpa_core import objectives
from adpa_core.chunked import fused_linear_loss
from adpa_core.config import METHODS
from adpa_core.runs import RunDir
from adpa_core.teacher import build_teacher_cache
from adpa_core.train import run_training
from tests.trainkit import build_world, make_cfg


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    return build_world(tmp_path_factory.mktemp("chunkworld"))


def test_fused_linear_loss_matches_autograd_values_and_gradients():
    g = torch.Generator().manual_seed(0)
    hidden = torch.randn(13, 8, generator=g, requires_grad=True)
    head = torch.nn.Linear(8, 11, bias=False)
    labels = torch.randint(0, 9, (13,), generator=g)
    teacher = torch.randn(13, 9, generator=g)

    def per_row(logits, y, t):  # NLL + KL on the first 9 of 11 rows (2 padded embedding rows)
        return (
            L.nll_per_token(logits[None], y[None])[0]
            + L.forward_kl_per_token(logits[None], t[None], y[None])[0]
        )

    expected = per_row((hidden @ head.weight[:9].T), labels, teacher).sum()
    gh, gw = torch.autograd.grad(expected, [hidden, head.weight])
    out = fused_linear_loss(hidden, head, lambda z, s, e: per_row(z, labels[s:e], teacher[s:e]).sum(), 9, 4)
    ch, cw = torch.autograd.grad(out, [hidden, head.weight])
    torch.testing.assert_close(out, expected, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(ch, gh, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(cw, gw, rtol=1e-5, atol=1e-6)
    assert torch.all(cw[9:] == 0)


def test_no_full_vocabulary_tensor_is_kept_for_backward():
    """Saved for backward: only the (N, H) and (V, H) gradients, never an (N, V) tensor."""
    hidden = torch.randn(64, 8, requires_grad=True)
    head = torch.nn.Linear(8, 1000, bias=False)
    labels = torch.randint(0, 1000, (64,))
    saved = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t.shape) or t, lambda t: t):
        out = fused_linear_loss(
            hidden, head, lambda z, s, e: L.nll_per_token(z[None], labels[None, s:e]).sum(), 1000, 16
        )
    out.backward()
    assert saved and all(torch.Size(s).numel() < 64 * 1000 for s in saved), saved


def _trainable(run_dir):
    return load_file(str(RunDir(run_dir).checkpoint_dirs()[-1] / "trainable.safetensors"))


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("lora", [False, True], ids=["full", "lora"])
def test_chunked_path_equals_full_logits(world, tmp_path, method, lora, monkeypatch):
    calls = []
    real = objectives.fused_linear_loss
    monkeypatch.setattr(objectives, "fused_linear_loss", lambda *a: calls.append(1) or real(*a))
    obj = {"method": method, "support": "topk", "k": 7, "max_new_tokens": 6}
    model = {"lora": lora, "lora_r": 4}
    runs = {}
    for mode in ("off", "on"):
        cfg = make_cfg(
            world,
            tmp_path / mode,
            method,
            objective=obj,
            model=model,
            train={"max_steps": 3, "chunked_loss": mode, "chunk_size": 5, "learning_rate": 5e-3},
        )
        run_training(cfg, progress=False)
        runs[mode] = cfg.run_dir
        assert bool(calls) == (mode == "on")  # the chunked path really ran (and only when asked)
    off, on = (RunDir(runs[m]).read_metrics() for m in ("off", "on"))
    assert [r["loss"] for r in on] == pytest.approx([r["loss"] for r in off], rel=1e-5, abs=1e-6)
    a, b = _trainable(runs["off"]), _trainable(runs["on"])
    for name in a:  # after 3 updates the weights agree: the gradients were the same
        torch.testing.assert_close(b[name], a[name], rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("method", ["dckd", "adpa"])
def test_chunked_path_with_a_cached_teacher(world, tmp_path, method):
    obj = {
        "method": method,
        "support": "full",
        "k": 64,
        "max_new_tokens": 6,
        "teacher_source": "cache",
        "teacher_cache": str(tmp_path / "cache"),
    }
    cfg = make_cfg(
        world, tmp_path / "a", method, objective=obj, train={"max_steps": 2, "chunked_loss": "off"}
    )
    build_teacher_cache(cfg, logp_dtype="float32")
    run_training(cfg, progress=False)
    on = make_cfg(
        world,
        tmp_path / "b",
        method,
        objective=obj,
        train={"max_steps": 2, "chunked_loss": "on", "chunk_size": 3},
    )
    run_training(on, progress=False)
    off_losses = [r["loss"] for r in RunDir(cfg.run_dir).read_metrics()]
    on_losses = [r["loss"] for r in RunDir(on.run_dir).read_metrics()]
    assert on_losses == pytest.approx(off_losses, rel=1e-5, abs=1e-6)
