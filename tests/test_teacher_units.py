"""adpa_core.teacher piece by piece, without a cache build: the online teacher's logits under padding and
packing, and a cache written by hand (CacheWriter) read back by TeacherCache: full targets and the chunked
path's row targets, uncounted positions, memory-mapped shards, an older cache's switches, and a writer that
discards its half-built folder."""

from __future__ import annotations

import math
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from adpa_core.config import ObjectiveConfig
from adpa_core.teacher import (
    ROW_FIELDS,
    CacheWriter,
    OnlineTeacher,
    StaleCacheError,
    TeacherCache,
    sequence_hash,
)
from tests.tiny import make_llama, make_tokenizer

IG = -100


def test_online_targets_follow_masks_and_position_ids():
    """A packed row (positions restart) and a left-padded row: each teacher's logits are its model's under
    the batch's mask and position ids, cut to the vocabulary; no reference logits unless asked for."""
    tok = make_tokenizer()
    dpo, ref = (make_llama(tok, seed=s, extra_rows=3).eval() for s in (1, 2))
    teacher = OnlineTeacher(SimpleNamespace(dpo_forward=dpo, ref_forward=ref), len(tok))
    batch = {
        "input_ids": torch.tensor([[7, 8, 9, 10, 11, 12], [0, 0, 9, 10, 11, 12]]),
        "attention_mask": torch.tensor([[1, 1, 1, 1, 1, 1], [0, 0, 1, 1, 1, 1]]),
        "position_ids": torch.tensor([[0, 1, 2, 0, 1, 2], [0, 0, 0, 1, 2, 3]]),
        "labels": torch.full((2, 6), 5),
        "ids": ["a", "b"],
    }
    inputs = {k: batch[k] for k in ("input_ids", "attention_mask", "position_ids")}
    with torch.no_grad():
        t = teacher.targets(batch, "yhat", need_ref=True)
        alone = teacher.targets(batch, "yhat", need_ref=False)
        want_dpo, want_ref = dpo(**inputs).logits[..., :64], ref(**inputs).logits[..., :64]
        plain = dpo(input_ids=batch["input_ids"]).logits[..., :64]
    torch.testing.assert_close(t.dpo_logits, want_dpo)
    torch.testing.assert_close(t.ref_logits, want_ref)
    torch.testing.assert_close(alone.dpo_logits, want_dpo)
    assert alone.ref_logits is None and not alone.cached
    assert not torch.allclose(want_dpo[0], plain[0], atol=1e-4)  # packing matters
    assert not torch.allclose(want_dpo[1, 2:], plain[1, 2:], atol=1e-4)  # the mask matters


def _batch() -> dict:
    """Two sequences of 5 tokens; row a counts positions 2..3, row b (left-padded) positions 3..4."""
    return {
        "input_ids": torch.tensor([[5, 6, 7, 8, 9], [0, 11, 12, 13, 14]]),
        "attention_mask": torch.tensor([[1, 1, 1, 1, 1], [0, 1, 1, 1, 1]]),
        "labels": torch.tensor([[IG, IG, 7, 8, IG], [IG, IG, IG, 13, 14]]),
        "ids": ["a", "b"],
    }


def _entry(n: int, k: int, seed: int) -> dict[str, np.ndarray]:
    """n rows of k ids with both teachers' log-probs (summing below 1) and their rest bins."""
    rng = np.random.default_rng(seed)
    out = {"ids": rng.permutation(64)[: n * k].reshape(n, k) % 64}
    for name in ("dpo", "ref"):
        p = rng.dirichlet(np.ones(k + 1), size=n).astype(np.float32)  # (n, k + 1): k ids and the rest
        out[f"{name}_logps"] = np.log(p[:, :k])
        out[f"{name}_rest"] = np.log(p[:, k])
    return out


@pytest.fixture
def cache(tmp_path) -> tuple[TeacherCache, dict, dict]:
    """A cache of the batch's two sequences (k = 3, float32 log-probs) written with CacheWriter."""
    batch, k = _batch(), 3
    writer = CacheWriter(tmp_path / "c", k, 64, "float32")
    entries = {}
    for b, example in enumerate(batch["ids"]):
        entries[example] = _entry(int((batch["labels"][b] != IG).sum()), k, seed=b)
        h = sequence_hash(batch["input_ids"][b], batch["attention_mask"][b], batch["labels"][b])
        writer.add(f"yhat/{example}", h, entries[example])
    writer.close({"has_reference": True, "groups": ["yhat"]})
    return TeacherCache(tmp_path / "c"), batch, entries


def test_cache_targets_at_counted_positions_and_a_distribution_elsewhere(cache):
    c, batch, entries = cache
    t = c.targets(batch, "yhat")
    counted = batch["labels"] != IG
    for b, example in enumerate(batch["ids"]):
        e = entries[example]
        assert torch.equal(t.topk_ids[b, counted[b]], torch.from_numpy(e["ids"]))
        torch.testing.assert_close(t.dpo_topk_logps[b, counted[b]], torch.from_numpy(e["dpo_logps"]))
        torch.testing.assert_close(t.ref_topk_logps[b, counted[b]], torch.from_numpy(e["ref_logps"]))
        torch.testing.assert_close(t.dpo_rest_logp[b, counted[b]], torch.from_numpy(e["dpo_rest"]))
        torch.testing.assert_close(t.ref_rest_logp[b, counted[b]], torch.from_numpy(e["ref_rest"]))
    # every position is a distribution over its k + 1 bins; the uncounted ones uniform over k ids, no rest
    for logps, rest in ((t.dpo_topk_logps, t.dpo_rest_logp), (t.ref_topk_logps, t.ref_rest_logp)):
        total = logps.exp().sum(-1) + rest.exp()
        torch.testing.assert_close(total, torch.ones(2, 5))
        assert torch.equal(logps[~counted], torch.full((int((~counted).sum()), 3), -math.log(3)))
        assert bool((rest[~counted] == -math.inf).all())
    assert torch.equal(t.topk_ids[~counted], torch.arange(3).expand(int((~counted).sum()), 3))


def test_row_targets_are_the_counted_rows_chunk_by_chunk(cache):
    c, batch, _ = cache
    mask = batch["labels"] != IG
    full = c.targets(batch, "yhat")
    rows = c.row_targets(batch, "yhat", True, mask)
    for start, end in ((0, 3), (3, 4)):
        part = rows(start, end)
        for f in ROW_FIELDS:
            whole = getattr(full, f)
            if whole is None:
                assert getattr(part, f) is None
            else:
                assert torch.equal(getattr(part, f), whole[mask][None, start:end]), f


def test_shards_are_memory_mapped(cache):
    c, batch, _ = cache
    c.targets(batch, "yhat")
    arrays = c._shard(0)
    assert set(arrays) == {"ids_lo", "dpo_logps", "ref_logps", "dpo_rest", "ref_rest"}
    assert all(isinstance(a, np.memmap) for a in arrays.values())


def test_an_older_cache_without_its_switch_list_serves_all_but_reference_imputation(cache):
    """A cache written before meta.json listed the switches it serves holds no reference top-k ids."""
    c, _, _ = cache
    assert "released_code_serves" not in c.meta
    c.check_serves(ObjectiveConfig(method="adpa", released_code={"prob_floors": True}))
    with pytest.raises(StaleCacheError) as info:
        c.check_serves(ObjectiveConfig(method="adpa", released_code={"reference_imputation": True}))
    assert str(info.value) == (
        f"{c.path} cannot serve objective.released_code.reference_imputation=true (it holds no reference "
        "teacher top-k ids); rebuild it with `adpa cache-teacher` under this run's config, or turn the "
        "switch off"
    )


def test_discard_removes_the_half_built_folder_and_never_raises(tmp_path):
    """build_teacher_cache discards on any error, also once the folder is gone: that must not hide it."""
    writer = CacheWriter(tmp_path / "c", 3, 64)
    writer.add("yhat/a", "h", _entry(2, 3, seed=0))
    assert writer.tmp.exists()
    writer.discard()
    assert not writer.tmp.exists() and not (tmp_path / "c").exists()
    writer.discard()  # nothing left: still quiet


def test_a_missing_or_changed_sequence_is_refused_word_for_word(cache):
    """No entry for an id; the same number of counted tokens but other tokens (a changed tokenizer)."""
    c, batch, _ = cache
    with pytest.raises(StaleCacheError) as info:
        c.targets({**batch, "ids": ["a", "zz"]}, "yhat")
    assert str(info.value) == f"{c.path} has no entry for example 'zz' (yhat); rebuild it"
    changed = {**batch, "input_ids": batch["input_ids"].clone()}
    changed["input_ids"][1, 3] = 20  # row b: still 2 counted tokens
    with pytest.raises(StaleCacheError) as info:
        c.targets(changed, "yhat")
    assert str(info.value) == (
        f"{c.path}: example 'b' (yhat) was cached for different tokens; the data or tokenizer changed "
        "since `adpa cache-teacher` ran — rebuild the cache"
    )


def test_a_cache_without_reference_gives_none_and_large_vocabularies_round_trip(tmp_path):
    """V = 70,000 needs a high bit plane for the ids (and the reference's own top-k ids); a cache without
    the reference teacher gives no reference log-probs (never a uniform stand-in)."""
    batch, k, vocab = _batch(), 3, 70_000
    writer = CacheWriter(tmp_path / "c", k, vocab, "float32")
    entries = {}
    for b, example in enumerate(batch["ids"]):
        n = int((batch["labels"][b] != IG).sum())
        e = {key: v for key, v in _entry(n, k, seed=b).items() if not key.startswith("ref")}
        e["ids"] = e["ids"] + 69_900
        e["ref_ids"] = e["ids"][:, ::-1] - 1000
        entries[example] = e
        h = sequence_hash(batch["input_ids"][b], batch["attention_mask"][b], batch["labels"][b])
        writer.add(f"yhat/{example}", h, e)
    writer.close({"has_reference": False, "reference_topk": True, "groups": ["yhat"]})
    t = TeacherCache(tmp_path / "c").targets(batch, "yhat")
    assert t.ref_topk_logps is None and t.ref_rest_logp is None
    counted = batch["labels"] != IG
    for b, example in enumerate(batch["ids"]):
        assert torch.equal(t.topk_ids[b, counted[b]], torch.from_numpy(entries[example]["ids"].copy()))
        assert torch.equal(
            t.ref_topk_ids[b, counted[b]], torch.from_numpy(entries[example]["ref_ids"].copy())
        )
