"""The top-k teacher cache: compact ids, bytes per token, refusal of stale or incomplete caches."""

from __future__ import annotations

import json

import numpy as np
import pytest

from adpa_core.teacher import StaleCacheError, TeacherCache, build_teacher_cache, decode_ids, encode_ids
from tests.trainkit import build_world, make_cfg


@pytest.mark.parametrize("vocab", [64, 32_000, 65_536, 65_537, 128_256, 152_064, 262_144])
def test_ids_round_trip_at_every_vocabulary_size(vocab):
    rng = np.random.default_rng(vocab)
    ids = rng.integers(0, vocab, size=(29, 50))
    ids[0, :3] = [0, vocab - 1, 65_535 % vocab]
    enc = encode_ids(ids, vocab)
    assert np.array_equal(decode_ids(enc, slice(0, 29), 50), ids)
    assert np.array_equal(decode_ids(enc, slice(5, 9), 50), ids[5:9])


def test_bytes_per_token_at_k50_meets_the_budget():
    """k = 50 ADPA cache: ids + DPO and reference log-probs (fp16) + two float32 rest bins <= 350 bytes."""
    for vocab, id_bytes in ((32_000, 100), (128_256, 107), (152_064, 114)):
        ids = np.zeros((10, 50), dtype=np.int64)
        assert sum(a.nbytes for a in encode_ids(ids, vocab).values()) / 10 == id_bytes
        assert id_bytes + 50 * 2 * 2 + 2 * 4 <= 350


@pytest.fixture(scope="module")
def cached(tmp_path_factory):
    root = tmp_path_factory.mktemp("cache")
    world = build_world(root / "world")
    cfg = make_cfg(
        world,
        root,
        "adpa",
        objective={
            "method": "adpa",
            "k": 50,
            "teacher_source": "cache",
            "teacher_cache": str(root / "cache"),
            "max_new_tokens": 5,
        },
    )
    meta = build_teacher_cache(cfg)
    return cfg, meta


def test_adpa_cache_meta(cached):
    cfg, meta = cached
    assert meta["k"] == 50 and meta["has_reference"] and meta["groups"] == ["yhat"]
    # vocabulary 64: uint16 ids (k * 2) + fp16 DPO and reference log-probs (2 * k * 2) + two float32 rests
    assert meta["bytes_per_token"] == 50 * 2 + 2 * 50 * 2 + 8
    assert meta["tokens"] > 0 and meta["tokens_per_s"] > 0


def test_cache_built_for_other_teachers_is_refused(cached):
    cfg, meta = cached
    with pytest.raises(StaleCacheError, match="teacher_ref"):
        TeacherCache(cfg.objective.teacher_cache, expect={"teacher_ref": "another/model"})


def test_incomplete_cache_is_refused(cached, tmp_path):
    cfg, _ = cached
    with pytest.raises(StaleCacheError, match="not a complete teacher cache"):
        TeacherCache(tmp_path)
    meta_path = tmp_path / "meta.json"
    meta_path.write_text(json.dumps({"format": 0}))
    with pytest.raises(StaleCacheError, match="format"):
        TeacherCache(tmp_path)
