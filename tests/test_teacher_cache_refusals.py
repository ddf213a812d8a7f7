"""The teacher cache's refusals, word for word, on cache folders written by hand (no model is loaded): what
is missing or different, and what to do about it. Plus the writer's own rules (log-prob dtypes, a repeated
id, an atomic replace) and the log-prob encodings."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from adpa_core.config import ConfigError
from adpa_core.teacher import (
    CACHE_FORMAT,
    CacheWriter,
    StaleCacheError,
    TeacherCache,
    _decode_logps,
    _encode_logps,
    cache_identity,
    cache_splits,
    open_teacher_cache,
)
from tests.trainkit import make_cfg

WORLD = {
    "student": "tiny/student",
    "teacher": "tiny/teacher",
    "teacher_ref": "tiny/ref",
    "train": "t",
    "eval": "e",
}
REBUILD = "rebuild it with `adpa cache-teacher` and this config"


def _cache(path: Path, cfg, vocab: int = 64, **meta) -> Path:
    """A cache folder whose meta.json says `meta` (on top of what `cfg` needs), with an empty index."""
    path.mkdir(parents=True, exist_ok=True)
    full = {
        **cache_identity(cfg, vocab),
        "format": CACHE_FORMAT,
        "k": 8,
        "groups": ["yhat"],
        "splits": ["train"],
    }
    full.update({"has_reference": True, "files": {}, **meta})
    (path / "meta.json").write_text(json.dumps(full), encoding="utf-8")
    (path / "index.json").write_text("{}", encoding="utf-8")
    return path


def _cfg(tmp_path: Path, method: str = "adpa", objective: dict | None = None, **sections):
    obj = {"method": method, "teacher_source": "cache", "teacher_cache": str(tmp_path / "cache"), "k": 8}
    return make_cfg(WORLD, tmp_path, method, objective={**obj, **(objective or {})}, **sections)


def _refusal(cfg, error=StaleCacheError, vocab: int = 64) -> str:
    with pytest.raises(error) as info:
        open_teacher_cache(cfg, vocab)
    return str(info.value)


def test_a_cache_that_serves_the_run_opens(tmp_path):
    cfg = _cfg(tmp_path)
    _cache(tmp_path / "cache", cfg)
    cache = open_teacher_cache(cfg, 64)
    assert cache.k == 8 and cache.has_reference and cache.index == {}
    assert cache_splits(cfg) == ("train",)
    assert cache_splits(_cfg(tmp_path, train={"eval_every": 5})) == ("train", "eval")


def test_refusals_of_open_teacher_cache(tmp_path):
    where = tmp_path / "cache"
    cfg = _cfg(tmp_path, "dckd")
    _cache(where, cfg, groups=["chosen"])
    assert _refusal(cfg) == (
        f"{where} holds the teacher on the chosen responses but objective.method=dckd needs rejected too; "
        f"{REBUILD}"
    )
    cfg = _cfg(tmp_path, train={"eval_every": 5}, data={"eval": "e"})
    _cache(where, cfg)
    assert _refusal(cfg) == (
        f"{where} holds the train split only, and train.eval_every=5 evaluates on held-out rows with the "
        f"same cached teacher; {REBUILD} (it then caches the eval split too), or set train.eval_every=0"
    )
    cfg = _cfg(tmp_path, objective={"k": 20})
    _cache(where, cfg)
    assert _refusal(cfg, ConfigError) == (
        f"objective.k=20 but {where} holds the teacher's top-8 only; rebuild it with objective.k=20, or set "
        "objective.k<=8"
    )
    _cache(where, cfg, vocab=8)
    assert open_teacher_cache(cfg, 8).k == 8  # a complete cache (k = V) serves any k
    cfg = _cfg(tmp_path)
    _cache(where, cfg, has_reference=False)
    assert _refusal(cfg) == f"{where} holds no reference teacher log-probs, which ADPA needs; {REBUILD}"
    cfg = _cfg(tmp_path, objective={"use_reference": False, "support": "full"})
    _cache(where, cfg)
    assert _refusal(cfg, ConfigError) == (
        "objective.use_reference=false (the no-reference ablation) needs the DPO teacher's log-prob of every "
        f"token, and {where} holds its top-8 of 64 only; use objective.teacher_source=online (or a cache "
        "built with objective.k >= the vocabulary size)"
    )
    _cache(where, cfg, vocab=8)
    assert open_teacher_cache(cfg, 8).k == 8  # complete: served


def test_refusals_of_the_cache_folder(tmp_path):
    where = tmp_path / "cache"
    with pytest.raises(StaleCacheError) as info:
        TeacherCache(where)
    assert str(info.value) == (
        f"{where} is not a complete teacher cache (no meta.json); build it with `adpa cache-teacher`"
    )
    cfg = _cfg(tmp_path)
    _cache(where, cfg, format=0)
    with pytest.raises(StaleCacheError) as info:
        TeacherCache(where)
    assert str(info.value) == f"{where}: cache format 0 != {CACHE_FORMAT}; rebuild"
    _cache(where, cfg)
    with pytest.raises(StaleCacheError) as info:
        TeacherCache(where, expect={"teacher": "other", "k": 8})
    assert str(info.value) == (
        f"{where} was built with teacher='tiny/teacher' but this run has 'other'; rebuild it with "
        "`adpa cache-teacher` (a stale cache is never used)"
    )
    (where / "shard.npy").write_bytes(b"12345")
    _cache(where, cfg, files={"shard.npy": 5, "gone.npy": 3})
    with pytest.raises(StaleCacheError) as info:
        TeacherCache(where)
    assert str(info.value) == f"{where}: gone.npy is missing; rebuild with `adpa cache-teacher`"
    _cache(where, cfg, files={"shard.npy": 9})
    with pytest.raises(StaleCacheError) as info:
        TeacherCache(where)
    assert str(info.value) == (
        f"{where}: shard.npy has 5 bytes, 9 were written (truncated or corrupted); rebuild with "
        "`adpa cache-teacher`"
    )
    (where / "meta.json").write_text("{not json", encoding="utf-8")
    with pytest.raises(
        StaleCacheError, match=r"meta\.json is unreadable \(.*\); rebuild with `adpa cache-teacher`"
    ):
        TeacherCache(where)


def test_writer_rules(tmp_path):
    with pytest.raises(ValueError) as info:
        CacheWriter(tmp_path / "c", 2, 64, "int8")
    assert str(info.value) == "logp_dtype='int8'; choose one of float16, bfloat16, float32"
    writer = CacheWriter(tmp_path / "c", 2, 64, "float32", shard_tokens=3)
    entry = {
        "ids": np.array([[1, 2], [3, 4]]),
        "dpo_logps": np.log(np.array([[0.5, 0.25], [0.6, 0.3]])),
        "dpo_rest": np.log(np.array([0.25, 0.1])),
    }
    writer.add("yhat/a", "h1", entry)
    writer.add("yhat/a", "h1", entry)  # the same tokens again: skipped
    writer.add("yhat/a", "h2", entry)  # the same id with other tokens: under its hash
    assert list(writer.index) == ["yhat/a", "yhat/a#h2"]
    assert writer.index["yhat/a#h2"] == [0, 2, 2, "h2"]
    assert writer.tokens == 4 and writer.shard == 1  # 4 tokens >= 3: one shard written
    meta = writer.close({"groups": ["yhat"]})
    assert (meta["k"], meta["tokens"], meta["shards"], meta["logp_dtype"]) == (2, 4, 1, "float32")
    assert meta["bytes_per_token"] == 2 * 2 + 2 * 4 + 4  # uint16 ids, float32 log-probs, float32 rest
    assert not (tmp_path / ".c.tmp").exists() and (tmp_path / "c" / "meta.json").exists()
    cache = TeacherCache(tmp_path / "c")
    assert cache.index == {"yhat/a": [0, 0, 2, "h1"], "yhat/a#h2": [0, 2, 2, "h2"]}


@pytest.mark.parametrize(("dtype", "step"), [("float32", 0.0), ("float16", 1e-3), ("bfloat16", 8e-3)])
def test_logp_encodings_round_trip(dtype, step):
    logps = np.array([[-0.001, -1.5, -20.0], [-1e-4, -70000.0, -3.25]], dtype=np.float32)
    back = _decode_logps(_encode_logps(logps, dtype), dtype)
    assert back.dtype == torch.float32 and back.shape == logps.shape
    want = torch.from_numpy(logps)
    if dtype == "float16":
        want = want.clamp(min=float(np.finfo(np.float16).min))  # -70000 is below the float16 range
    torch.testing.assert_close(back, want, rtol=step, atol=0)
