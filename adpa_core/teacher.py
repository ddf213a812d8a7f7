"""Teacher signals for training: online forwards, or a top-k cache read from disk.

Both give a `TeacherTargets` per group of sequences, aligned with the student's labels (B, T):
full-vocabulary logits (online) or the DPO teacher's top-k ids with their log-probs, the reference
teacher's log-probs at the same ids, and the log of each teacher's remaining mass (the "rest" bin).

Cache layout (`adpa cache-teacher`): `meta.json` (written last: its presence marks a complete cache),
`index.json` mapping `<group>/<example id>` to `[shard, offset, length, token_hash]`, and shards
`shard-NNNNN/{ids,dpo_logps,ref_logps,dpo_rest,ref_rest}.npy`, fixed-shape arrays (N, K) / (N,) that are
memory-mapped on load (plus `ref_ids`, the reference teacher's own top-k, when the run's
`released_code.reference_imputation` needs it; meta.json lists the switches a cache can serve). The
token hash of each sequence detects a stale cache instead of silently using it.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor
from tqdm.auto import tqdm

from .chunked import OutputLayer, chunk_rows, output_transform
from .config import (
    ADVANTAGE_METHODS,
    RELEASED_SWITCHES,
    STUDENT_GROUPS,
    TEACHER_GROUPS,
    ConfigError,
    ObjectiveConfig,
    RunConfig,
)
from .data import collate
from .losses import IGNORE_INDEX, topk_rest_logp
from .models import TeacherPair, load_models, load_run_tokenizer, model_fingerprint
from .prepare import attach_yhat, load_rows, yhat_path
from .runs import RunDir, atomic_write_json

CACHE_FORMAT = 1
LOGP_DTYPES = ("float16", "bfloat16", "float32")  # numpy has no bfloat16: stored as raw uint16 bits


CACHE_CHUNK = 1024  # rows per teacher projection while caching (capped by chunk_rows for large V)
ROW_FIELDS = (
    "topk_ids",
    "dpo_topk_logps",
    "ref_topk_logps",
    "dpo_rest_logp",
    "ref_rest_logp",
    "ref_topk_ids",
)


class StaleCacheError(RuntimeError):
    """The teacher cache does not match the data, tokenizer or teachers of this run."""


def served_switches(ref_topk: bool) -> list[str]:
    """The `objective.released_code` switches a top-k cache can serve: all of them work from the cached
    bins, except reference imputation, which needs the reference teacher's own top-k ids."""
    return [name for name in RELEASED_SWITCHES if ref_topk or name != "reference_imputation"]


@dataclass
class TeacherTargets:
    """The teacher's view of one group of sequences, aligned with its labels (B, T)."""

    dpo_logits: Tensor | None = None  # (B, T, V) online
    ref_logits: Tensor | None = None  # (B, T, V) online, None without a reference teacher
    topk_ids: Tensor | None = None  # (B, T, K) cached, sorted by the DPO teacher's log-prob
    dpo_topk_logps: Tensor | None = None  # (B, T, K)
    ref_topk_logps: Tensor | None = None  # (B, T, K) the reference's exact log-probs at the same ids
    dpo_rest_logp: Tensor | None = None  # (B, T) log of the DPO teacher's mass outside the ids
    ref_rest_logp: Tensor | None = None  # (B, T)
    ref_topk_ids: Tensor | None = None  # (B, T, K) the reference's own top-k (released-code imputation)

    @property
    def cached(self) -> bool:
        return self.topk_ids is not None


def sequence_hash(input_ids: Tensor, attention_mask: Tensor, labels: Tensor) -> str:
    """A hash of one sequence's real tokens and counted positions (padding and its side do not matter)."""
    keep = attention_mask.bool()
    tokens = input_ids[keep].to(torch.int64).cpu().numpy().tobytes()
    counted = (labels[keep] != IGNORE_INDEX).cpu().numpy().tobytes()
    return hashlib.sha1(tokens + b"|" + counted).hexdigest()[:20]


class OnlineTeacher:
    """Runs the teacher pair on each batch (no grad); logits are cut to the shared vocabulary."""

    def __init__(self, pair: TeacherPair, vocab_size: int):
        self.pair, self.vocab_size = pair, vocab_size

    def targets(self, batch: dict[str, Any], group: str, need_ref: bool) -> TeacherTargets:
        inputs = {k: batch[k] for k in ("input_ids", "attention_mask", "position_ids") if k in batch}
        dpo = self.pair.dpo_forward(**inputs).logits[..., : self.vocab_size]  # (B, T, V)
        ref = None
        if need_ref:
            ref = self.pair.ref_forward(**inputs).logits[..., : self.vocab_size]  # (B, T, V)
        return TeacherTargets(dpo_logits=dpo, ref_logits=ref)

    def row_targets(
        self, batch: dict[str, Any], group: str, need_ref: bool, mask: Tensor
    ) -> Callable[[int, int], TeacherTargets]:
        """Teacher logits at the counted rows `mask` (B, T), projected chunk by chunk (chunked path)."""
        inputs = {k: batch[k] for k in ("input_ids", "attention_mask", "position_ids") if k in batch}
        dpo = self.pair.final_hidden("dpo", **inputs)[mask]  # (N, H)
        ref = self.pair.final_hidden("ref", **inputs)[mask] if need_ref else None  # (N, H)
        ref_model = self.pair.ref if self.pair.ref is not None else self.pair.dpo  # same base when shared
        heads = {  # with each model's own logit transform (Gemma 2 soft-capping, Granite / Cohere scaling)
            "dpo": OutputLayer(self.pair.output_layer("dpo"), output_transform(self.pair.dpo)),
            "ref": OutputLayer(self.pair.output_layer("ref"), output_transform(ref_model))
            if need_ref
            else None,
        }
        vocab = self.vocab_size

        @torch.no_grad()
        def chunk(start: int, end: int) -> TeacherTargets:
            dpo_logits = heads["dpo"](dpo[start:end])[None, :, :vocab]  # (1, C, V)
            ref_logits = heads["ref"](ref[start:end])[None, :, :vocab] if ref is not None else None
            return TeacherTargets(dpo_logits=dpo_logits, ref_logits=ref_logits)

        return chunk


# ---------------------------------------------------------------- cache: writing


def cache_identity(cfg: RunConfig, vocab_size: int) -> dict[str, Any]:
    """What a teacher cache must have been built with to serve a run (checked on load): the teachers'
    names and file fingerprints (retrained weights in the same folder are a different teacher), how they
    were loaded, and the vocabulary."""
    m = cfg.model
    return {
        "teacher": model_fingerprint(m.teacher),
        "teacher_ref": model_fingerprint(m.teacher_ref),
        "teacher_adapter": model_fingerprint(m.teacher_adapter),
        "teacher_quantization": m.teacher_quantization,
        "vocab_size": vocab_size,
    }


def cache_splits(cfg: RunConfig) -> tuple[str, ...]:
    """The splits a run reads from its teacher cache: train, and eval when it evaluates."""
    return ("train", "eval") if cfg.train.eval_every else ("train",)


def build_teacher_cache(
    cfg: RunConfig, out: str | Path | None = None, batch_size: int | None = None, logp_dtype: str = "float16"
) -> dict[str, Any]:
    """`adpa cache-teacher`: the top-k cache of the teacher pair on every sequence the run's teacher sees.

    KD/DCKD: the chosen (and rejected) responses; ADPA: the student's own replies y_hat, generated first
    (and kept in the run directory, where training reuses them). The train split, and the eval split when
    the config evaluates (`train.eval_every`), so that cached training can evaluate too.
    """
    method = cfg.objective.method
    groups = TEACHER_GROUPS.get(method)
    if not groups:
        raise ValueError(f"objective.method={method} uses no teacher; nothing to cache")
    run = RunDir(cfg.run_dir)
    out = Path(out or cfg.objective.teacher_cache or run.path / "teacher_cache")
    tokenizer = load_run_tokenizer(cfg.model)
    vocab = len(tokenizer)
    splits = cache_splits(cfg)
    rows = {split: load_rows(cfg, tokenizer, split) for split in splits}  # data errors before model loading
    _, student, pair = load_models(cfg.model, tokenizer=tokenizer)
    if "yhat" in STUDENT_GROUPS[method]:
        for split in splits:
            rows[split] = attach_yhat(rows[split], cfg, student, tokenizer, yhat_path(run, split))
    del student
    device = next(pair.dpo.parameters()).device
    # Only ADPA needs the reference teacher's log-probs (at the DPO teacher's top-k ids).
    with_ref = method in ("adpa", "adpa_plus") and cfg.objective.use_reference and pair.has_reference
    ref_topk = with_ref and bool(cfg.objective.released_code.reference_imputation)
    k = min(cfg.objective.k, vocab)
    writer = CacheWriter(out, k, vocab, logp_dtype)
    bs = batch_size or cfg.train.batch_size
    t0 = time.perf_counter()
    try:
        for split in splits:
            for group in groups:
                for start in tqdm(range(0, len(rows[split]), bs), desc=f"caching teacher ({split}, {group})"):
                    part = rows[split][start : start + bs]
                    _cache_batch(
                        writer, pair, part, group, tokenizer, cfg, k, vocab, with_ref, device, ref_topk
                    )
        seconds = time.perf_counter() - t0
        meta = {
            **cache_identity(cfg, vocab),
            "groups": list(groups),
            "splits": list(splits),
            "has_reference": with_ref,
            "reference_topk": ref_topk,
            "released_code_serves": served_switches(ref_topk),
            "data": cfg.data.train,
            "build_seconds": seconds,
        }
        meta = writer.close(meta)
    except BaseException:
        writer.discard()  # the half-built cache goes; an older complete cache at `out` stays as it was
        raise
    meta["tokens_per_s"] = meta["tokens"] / max(seconds, 1e-9)
    return meta


def _cache_batch(writer, pair, part, group, tokenizer, cfg, k, vocab, with_ref, device, ref_topk) -> None:
    batch = collate(part, (group,), tokenizer.pad_token_id, cfg.data.padding_side)
    batch = {key: (v.to(device) if key != "ids" else v) for key, v in batch.items()}
    for b, entry in enumerate(topk_entry(pair, batch, k, vocab, with_ref, ref_topk)):
        token_hash = sequence_hash(batch["input_ids"][b], batch["attention_mask"][b], batch["labels"][b])
        writer.add(f"{group}/{batch['ids'][b]}", token_hash, entry)


@torch.no_grad()
def topk_entry(
    pair: TeacherPair, batch: dict[str, Any], k: int, vocab_size: int, with_ref: bool, ref_topk: bool = False
) -> list[dict[str, np.ndarray]]:
    """Top-k teacher arrays for each sequence of a batch at its counted positions, projected to the
    vocabulary a chunk of rows at a time (no (B, T, V) tensor, no prompt positions); `ref_topk` adds the
    reference teacher's own top-k ids."""
    counted = batch["labels"] != IGNORE_INDEX  # (B, T)
    rows = OnlineTeacher(pair, vocab_size).row_targets(batch, "", with_ref, counted)
    n, k, step = int(counted.sum()), min(k, vocab_size), chunk_rows(CACHE_CHUNK, vocab_size)
    parts: dict[str, list[Tensor]] = {}
    for start in range(0, n, step):
        t = rows(start, min(start + step, n))
        dpo = torch.log_softmax(t.dpo_logits[0].float(), -1)  # (C, V)
        dpo_topk, ids = dpo.topk(k, dim=-1)  # (C, K)
        part = {"ids": ids, "dpo_logps": dpo_topk, "dpo_rest": topk_rest_logp(dpo_topk)}
        if with_ref:
            ref = torch.log_softmax(t.ref_logits[0].float(), -1)  # (C, V)
            ref_at_ids = ref.gather(-1, ids)  # (C, K)
            part.update(ref_logps=ref_at_ids, ref_rest=topk_rest_logp(ref_at_ids))
            if ref_topk:
                part["ref_ids"] = ref.topk(k, dim=-1).indices  # (C, K)
        for name, value in part.items():
            parts.setdefault(name, []).append(value.cpu())
    flat = {name: torch.cat(values).numpy() for name, values in parts.items()}  # (N, ...)
    bounds = [0, *counted.sum(-1).cumsum(0).tolist()]
    return [{name: a[lo:hi] for name, a in flat.items()} for lo, hi in zip(bounds, bounds[1:], strict=False)]


class CacheWriter:
    """Accumulates top-k entries and writes shards atomically; `close()` writes the index and meta."""

    def __init__(
        self,
        path: str | Path,
        k: int,
        vocab_size: int,
        logp_dtype: str = "float16",
        shard_tokens: int = 1 << 20,
    ):
        if logp_dtype not in LOGP_DTYPES:
            raise ValueError(f"logp_dtype={logp_dtype!r}; choose one of {', '.join(LOGP_DTYPES)}")
        self.path = Path(path)
        self.k, self.vocab_size, self.logp_dtype, self.shard_tokens = k, vocab_size, logp_dtype, shard_tokens
        self.tmp = self.path.with_name(f".{self.path.name}.tmp")
        shutil.rmtree(self.tmp, ignore_errors=True)
        self.tmp.mkdir(parents=True)
        self.index: dict[str, list] = {}
        self.pending: list[dict[str, np.ndarray]] = []
        self.pending_tokens, self.shard, self.tokens, self.payload = 0, 0, 0, 0

    def add(self, key: str, token_hash: str, entry: dict[str, np.ndarray]) -> None:
        """Adds one sequence under `<group>/<id>`. The same id with other tokens (e.g. an eval row that
        reuses a train row's id) goes under `<group>/<id>#<token hash>`; the same tokens again are skipped."""
        if key in self.index:
            if self.index[key][3] == token_hash:
                return
            key = f"{key}#{token_hash}"
            if key in self.index:
                return
        n = len(entry["ids"])
        self.index[key] = [self.shard, self.pending_tokens, n, token_hash]
        self.pending.append(entry)
        self.pending_tokens += n
        self.tokens += n
        if self.pending_tokens >= self.shard_tokens:
            self._flush()

    def _flush(self) -> None:
        if not self.pending:
            return
        folder = self.tmp / f"shard-{self.shard:05d}"
        folder.mkdir()
        for name in self.pending[0]:
            arr = np.concatenate([e[name] for e in self.pending])
            if name in ("ids", "ref_ids"):  # -> ids_lo / ids_hi, ref_ids_lo / ref_ids_hi
                encoded = {f"{name}{key[3:]}": v for key, v in encode_ids(arr, self.vocab_size).items()}
            elif name.endswith("_logps"):
                encoded = {name: _encode_logps(arr, self.logp_dtype)}
            else:
                encoded = {name: arr.astype(np.float32)}
            for key, value in encoded.items():
                np.save(folder / f"{key}.npy", value)
                self.payload += value.nbytes
        self.pending, self.pending_tokens = [], 0
        self.shard += 1

    def discard(self) -> None:
        shutil.rmtree(self.tmp, ignore_errors=True)

    def close(self, meta: dict[str, Any]) -> dict[str, Any]:
        self._flush()
        (self.tmp / "index.json").write_text(json.dumps(self.index), encoding="utf-8")
        sizes = {str(p.relative_to(self.tmp)): p.stat().st_size for p in sorted(self.tmp.rglob("*.npy"))}
        file_bytes = sum(sizes.values())
        meta = {
            "files": {**sizes, "index.json": (self.tmp / "index.json").stat().st_size},
            **meta,
            "format": CACHE_FORMAT,
            "k": self.k,
            "logp_dtype": self.logp_dtype,
            "tokens": self.tokens,
            "shards": self.shard,
            "bytes": file_bytes,
            "bytes_per_token": self.payload / max(self.tokens, 1),  # array data, without file headers
        }
        atomic_write_json(self.tmp / "meta.json", meta)
        shutil.rmtree(self.path, ignore_errors=True)  # the old cache goes only once the new one is complete
        os.replace(self.tmp, self.path)
        return meta


def encode_ids(ids: np.ndarray, vocab_size: int) -> dict[str, np.ndarray]:
    """Token ids (N, K) in few bytes: the low 16 bits as uint16, and for vocabularies above 65,536 the
    remaining high bits as packed bit planes (N, b, ceil(K / 8)) — 2.3 bytes per id at V = 152k, not 4."""
    ids = ids.astype(np.int64)
    out = {"ids_lo": (ids & 0xFFFF).astype(np.uint16)}
    bits = max(0, int(vocab_size - 1).bit_length() - 16)
    if bits:
        planes = [np.packbits(((ids >> (16 + b)) & 1).astype(np.uint8), axis=1) for b in range(bits)]
        out["ids_hi"] = np.stack(planes, axis=1)
    return out


def decode_ids(arrays: dict[str, np.ndarray], rows: slice, k: int) -> np.ndarray:
    """Inverse of `encode_ids` for the rows `rows`: (n, K) int64."""
    ids = np.array(arrays["ids_lo"][rows], dtype=np.int64)
    if "ids_hi" in arrays:
        planes = np.array(arrays["ids_hi"][rows])  # (n, b, ceil(K / 8))
        for b in range(planes.shape[1]):
            ids |= np.unpackbits(planes[:, b], axis=-1, count=k).astype(np.int64) << (16 + b)
    return ids


def _encode_logps(arr: np.ndarray, dtype: str) -> np.ndarray:
    if dtype == "float32":
        return arr.astype(np.float32)
    if dtype == "float16":
        return np.maximum(arr, np.finfo(np.float16).min).astype(np.float16)
    bits = torch.from_numpy(np.ascontiguousarray(arr, dtype=np.float32)).to(torch.bfloat16).view(torch.int16)
    return bits.numpy().view(np.uint16)


def _decode_logps(arr: np.ndarray, dtype: str) -> Tensor:
    if dtype in ("float16", "float32"):
        return torch.from_numpy(np.array(arr, dtype=np.float32))
    return torch.from_numpy(np.asarray(arr).view(np.int16).copy()).view(torch.bfloat16).float()


# ---------------------------------------------------------------- cache: reading


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise StaleCacheError(f"{path} is unreadable ({exc}); rebuild with `adpa cache-teacher`") from exc


def open_teacher_cache(cfg: RunConfig, vocab_size: int) -> TeacherCache:
    """The run's teacher cache, once it is known to serve this run exactly (else one clear error, before
    any model is loaded): same teachers and vocabulary, the method's response groups, the eval split when
    the run evaluates, at least `objective.k` ids, and the reference teacher's log-probs for ADPA (and its
    own top-k ids when `released_code.reference_imputation` is on)."""
    obj = cfg.objective
    cache = TeacherCache(obj.teacher_cache, expect=cache_identity(cfg, vocab_size))
    where, rebuild = cache.path, "rebuild it with `adpa cache-teacher` and this config"
    missing = [g for g in TEACHER_GROUPS[obj.method] if g not in cache.meta.get("groups", [])]
    if missing:
        raise StaleCacheError(
            f"{where} holds the teacher on the {'/'.join(cache.meta.get('groups', []))} responses but "
            f"objective.method={obj.method} needs {'/'.join(missing)} too; {rebuild}"
        )
    if "eval" in cache_splits(cfg) and "eval" not in cache.meta.get("splits", ["train"]):
        raise StaleCacheError(
            f"{where} holds the train split only, and train.eval_every={cfg.train.eval_every} evaluates on "
            f"held-out rows with the same cached teacher; {rebuild} (it then caches the eval split too), or "
            "set train.eval_every=0"
        )
    complete = cache.k >= vocab_size
    if obj.k > cache.k and not complete:
        raise ConfigError(
            f"objective.k={obj.k} but {where} holds the teacher's top-{cache.k} only; rebuild it with "
            f"objective.k={obj.k}, or set objective.k<={cache.k}"
        )
    if obj.method in ADVANTAGE_METHODS:
        if obj.use_reference and not cache.has_reference:
            raise StaleCacheError(
                f"{where} holds no reference teacher log-probs, which ADPA needs; {rebuild}"
            )
        cache.check_serves(obj)
        if not obj.use_reference and not complete:
            raise ConfigError(
                "objective.use_reference=false (the no-reference ablation) needs the DPO teacher's log-prob "
                f"of every token, and {where} holds its top-{cache.k} of {vocab_size} only; use "
                "objective.teacher_source=online (or a cache built with objective.k >= the vocabulary size)"
            )
    return cache


class TeacherCache:
    """A memory-mapped top-k teacher cache; `targets()` builds padded (B, T, K) tensors for a batch."""

    def __init__(self, path: str | Path, expect: dict[str, Any] | None = None):
        self.path = Path(path)
        meta_path = self.path / "meta.json"
        if not meta_path.exists():
            raise StaleCacheError(
                f"{self.path} is not a complete teacher cache (no meta.json); build it with "
                "`adpa cache-teacher`"
            )
        self.meta = _read_json(meta_path)
        if self.meta.get("format") != CACHE_FORMAT:
            raise StaleCacheError(
                f"{self.path}: cache format {self.meta.get('format')} != {CACHE_FORMAT}; rebuild"
            )
        for key, want in (expect or {}).items():
            if self.meta.get(key) != want:
                raise StaleCacheError(
                    f"{self.path} was built with {key}={self.meta.get(key)!r} but this run has {want!r}; "
                    "rebuild it with `adpa cache-teacher` (a stale cache is never used)"
                )
        self._verify_files()
        self.index = _read_json(self.path / "index.json")
        self.k = int(self.meta["k"])
        self._shards: dict[int, dict[str, np.ndarray]] = {}

    def _verify_files(self) -> None:
        """Every file the cache was written with is there at its recorded size (cheap: no hashing of
        gigabytes); a truncated or missing shard is refused instead of read as garbage."""
        for name, size in self.meta.get("files", {}).items():
            file = self.path / name
            if not file.exists():
                raise StaleCacheError(f"{self.path}: {name} is missing; rebuild with `adpa cache-teacher`")
            if file.stat().st_size != size:
                raise StaleCacheError(
                    f"{self.path}: {name} has {file.stat().st_size} bytes, {size} were written (truncated or "
                    "corrupted); rebuild with `adpa cache-teacher`"
                )

    @property
    def has_reference(self) -> bool:
        return bool(self.meta.get("has_reference"))

    def check_serves(self, obj: ObjectiveConfig) -> None:
        """Refuses an ADPA run whose released-code switches this cache cannot serve (`served_switches`)."""
        serves = set(self.meta.get("released_code_serves", served_switches(False)))
        missing = [name for name in obj.released_code.enabled() if name not in serves]
        if missing:
            raise StaleCacheError(
                f"{self.path} cannot serve objective.released_code.{missing[0]}=true (it holds no reference "
                "teacher top-k ids); rebuild it with `adpa cache-teacher` under this run's config, or turn "
                "the switch off"
            )

    def _shard(self, i: int) -> dict[str, np.ndarray]:
        if i not in self._shards:
            folder = self.path / f"shard-{i:05d}"
            self._shards[i] = {p.stem: np.load(p, mmap_mode="r") for p in folder.glob("*.npy")}
        return self._shards[i]

    def row_targets(
        self, batch: dict[str, Any], group: str, need_ref: bool, mask: Tensor
    ) -> Callable[[int, int], TeacherTargets]:
        """The cached targets at the counted rows `mask` (B, T), sliced chunk by chunk (chunked path)."""
        full = self.targets(batch, group, need_ref)
        rows = {f: getattr(full, f)[mask] for f in ROW_FIELDS if getattr(full, f) is not None}  # (N, ...)

        def chunk(start: int, end: int) -> TeacherTargets:
            return TeacherTargets(**{f: t[None, start:end] for f, t in rows.items()})

        return chunk

    def targets(self, batch: dict[str, Any], group: str, need_ref: bool = True) -> TeacherTargets:
        labels = batch["labels"]  # (B, T)
        bsz, length = labels.shape
        counted = labels != IGNORE_INDEX
        k = self.k
        # Uncounted positions get a harmless uniform top-k with no rest mass; losses zero them anyway.
        ids = torch.arange(k).expand(bsz, length, k).clone()
        logps = {n: torch.full((bsz, length, k), -float(np.log(k))) for n in ("dpo", "ref")}
        rests = {n: torch.full((bsz, length), -float("inf")) for n in ("dpo", "ref")}
        ref_ids = ids.clone() if self.meta.get("reference_topk") else None
        dtype = self.meta["logp_dtype"]
        for b, example_id in enumerate(batch["ids"]):
            key = f"{group}/{example_id}"
            if key not in self.index:
                raise StaleCacheError(
                    f"{self.path} has no entry for example {example_id!r} ({group}); rebuild it"
                )
            got = sequence_hash(batch["input_ids"][b], batch["attention_mask"][b], labels[b])
            shard, offset, n, token_hash = self.index.get(f"{key}#{got}", self.index[key])
            if got != token_hash or n != int(counted[b].sum()):
                raise StaleCacheError(
                    f"{self.path}: example {example_id!r} ({group}) was cached for different "
                    "tokens; the data or tokenizer changed since `adpa cache-teacher` ran — rebuild the cache"
                )
            arrays = self._shard(shard)
            rows = slice(offset, offset + n)
            ids[b, counted[b]] = torch.from_numpy(decode_ids(arrays, rows, k))
            if ref_ids is not None:
                own = {key[4:]: arrays[key] for key in ("ref_ids_lo", "ref_ids_hi") if key in arrays}
                ref_ids[b, counted[b]] = torch.from_numpy(decode_ids(own, rows, k))
            for name in ("dpo", "ref"):
                if f"{name}_logps" in arrays:
                    logps[name][b, counted[b]] = _decode_logps(arrays[f"{name}_logps"][rows], dtype)
                    rests[name][b, counted[b]] = torch.from_numpy(np.array(arrays[f"{name}_rest"][rows]))
        device = labels.device
        has_ref = self.has_reference
        return TeacherTargets(
            topk_ids=ids.to(device),
            dpo_topk_logps=logps["dpo"].to(device),
            ref_topk_logps=logps["ref"].to(device) if has_ref else None,
            dpo_rest_logp=rests["dpo"].to(device),
            ref_rest_logp=rests["ref"].to(device) if has_ref else None,
            ref_topk_ids=ref_ids.to(device) if ref_ids is not None else None,
        )
