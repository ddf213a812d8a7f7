"""`preset: reference-code` end to end on a tiny world: the same losses online and from a top-k cache and on
the chunked path; a cache records the released-code switches it serves and refuses the others."""

from __future__ import annotations

import pytest

from adpa_core.config import RELEASED_SWITCHES
from adpa_core.runs import RunDir
from adpa_core.teacher import StaleCacheError, TeacherCache, build_teacher_cache
from adpa_core.train import run_training
from tests.trainkit import build_world, make_cfg


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    return build_world(tmp_path_factory.mktemp("released-world"))


def _losses(run_dir) -> list[float]:
    return [r["loss"] for r in RunDir(run_dir).read_metrics()]


def _cfg(world, out, method, train=None, **objective):
    obj = {"method": method, "preset": "reference-code", "max_new_tokens": 6, **objective}
    return make_cfg(
        world, out, method, objective=obj, train={"max_steps": 3, "batch_size": 4, **(train or {})}
    )


@pytest.mark.parametrize("method", ["dckd", "adpa"])
def test_preset_online_equals_cache(world, tmp_path, method):
    online = _cfg(world, tmp_path / "online", method)
    run_training(online, progress=False)
    cached = _cfg(
        world, tmp_path / "cached", method, teacher_source="cache", teacher_cache=str(tmp_path / "cache")
    )
    meta = build_teacher_cache(cached, logp_dtype="float32")
    adpa = method == "adpa"
    assert meta["k"] == 50 and meta["reference_topk"] is adpa  # only ADPA imputes the reference
    serves = set(RELEASED_SWITCHES) if adpa else set(RELEASED_SWITCHES) - {"reference_imputation"}
    assert set(meta["released_code_serves"]) == serves
    run_training(cached, progress=False)
    assert _losses(cached.run_dir) == pytest.approx(_losses(online.run_dir), rel=1e-5, abs=1e-6)


@pytest.mark.parametrize("method", ["dckd", "adpa"])
def test_preset_chunked_path_equals_full_logits(world, tmp_path, method):
    full = _cfg(world, tmp_path / "full", method, train={"chunked_loss": "off"})
    chunked = _cfg(world, tmp_path / "chunked", method, train={"chunked_loss": "on", "chunk_size": 5})
    run_training(full, progress=False)
    run_training(chunked, progress=False)
    assert _losses(chunked.run_dir) == pytest.approx(_losses(full.run_dir), rel=1e-5, abs=1e-6)


def test_cache_without_the_reference_top_k_is_refused(world, tmp_path):
    source = {"teacher_source": "cache", "teacher_cache": str(tmp_path / "cache")}
    plain = _cfg(world, tmp_path / "a", "adpa", released_code={"reference_imputation": False}, **source)
    meta = build_teacher_cache(plain)
    assert not meta["reference_topk"] and "reference_imputation" not in meta["released_code_serves"]
    assert not any(p.name.startswith("ref_ids") for p in (tmp_path / "cache").rglob("*.npy"))
    run_training(plain, progress=False)  # the switch off: this cache serves it
    preset = _cfg(world, tmp_path / "b", "adpa", **source)
    with pytest.raises(StaleCacheError, match=r"released_code\.reference_imputation"):
        run_training(preset, progress=False)
    assert TeacherCache(tmp_path / "cache").meta["released_code_serves"] == meta["released_code_serves"]
