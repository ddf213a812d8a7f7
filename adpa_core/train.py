"""The training loop: `train(cfg)` yields one metrics dict per logged step and keeps the run directory.

Explicit and short on purpose. One optimizer step = `grad_accum` micro-batches of `batch_size` examples on
each of the accelerate processes; the data order is a seeded permutation per epoch, so position k of the
stream is known without state and a resumed run reads exactly the batches an uninterrupted one would.
Loss terms are normalised by their counts over the whole step (all micro-batches, all processes), so 2 x 4
accumulation equals 8 x 1 and two processes equal one.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import math
import shutil
import time
import traceback
from collections import defaultdict
from collections.abc import Callable, Iterator
from contextlib import nullcontext
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any

import torch
from accelerate import Accelerator
from accelerate.state import AcceleratorState, GradientState
from torch import nn

from . import distributed as D
from . import objectives as O
from .checkpoint import load_state, rng_state, save_state
from .chunked import chunk_rows, chunking_problem, output_layer, sequence_logps_chunked
from .config import STUDENT_GROUPS, ConfigError, RunConfig, save_config
from .data import chat_template_id, collate, end_of_turn_id
from .losses import sequence_logps
from .models import adapter_disabled, frozen_copy, load_models, load_run_tokenizer, save_student
from .prepare import attach_yhat, load_rows, yhat_path
from .runs import RunDir
from .teacher import OnlineTeacher, open_teacher_cache

logger = logging.getLogger(__name__)

WRITE_ERRNOS = (errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EIO, errno.EFBIG)
DATA_KEYS = ("input_ids", "attention_mask", "position_ids", "labels")
CHUNK_MIN_VOCAB = 8192  # below this, full logits are small and the plain path is as fast


class NonFiniteLossError(RuntimeError):
    """The loss became NaN or infinite; the last good checkpoint is kept."""


class RunCancelled(Exception):
    """Raised (e.g. from a SIGTERM handler) to stop a run and mark it cancelled."""


class OutOfMemory(RuntimeError):
    """The device (or host) ran out of memory; the message says what to change. The last good checkpoint
    is kept."""


class RunWriteError(OSError):
    """Writing the run directory failed (disk full, permissions); the last good checkpoint is kept."""


OOM_ADVICE = (
    "lower train.batch_size and raise train.grad_accum to keep the same effective batch; "
    "set train.chunked_loss: on (the loss never holds full-vocabulary logits); "
    "set train.gradient_checkpointing: true; load the teacher in 4-bit (model.teacher_quantization: 4bit) "
    "or precompute it once (`adpa cache-teacher`, then objective.teacher_source: cache); "
    "or shorten data.max_length"
)


def is_out_of_memory(exc: BaseException) -> bool:
    """True for CUDA OOM and for the host allocator's failure on CPU."""
    if isinstance(exc, (torch.OutOfMemoryError, MemoryError)):
        return True
    text = str(exc).lower()
    return isinstance(exc, RuntimeError) and ("out of memory" in text or "can't allocate memory" in text)


def _explain(exc: BaseException, s: Session | None, run: RunDir) -> BaseException:
    """A user-facing error for resource failures (OOM, disk), naming what to change; others unchanged."""
    oom = is_out_of_memory(exc)
    disk = isinstance(exc, OSError) and not isinstance(exc, RunWriteError) and exc.errno in WRITE_ERRNOS
    if not (oom or disk):
        return exc
    step = s.loop["step"] if s is not None else 0
    ckpt = run.latest_valid_checkpoint()
    kept = f"the last good checkpoint {ckpt.name} is kept" if ckpt else "no checkpoint was written yet"
    if oom:
        where = f"at step {step + 1}" if s is not None else "while loading the models and data"
        return OutOfMemory(
            f"out of memory {where} ({type(exc).__name__}: {exc}); {kept}. To fit: {OOM_ADVICE}"
        )
    return RunWriteError(
        exc.errno,
        f"could not write {exc.filename or run.path} at step {step} ({exc.strerror}); {kept}; "
        "free disk space (or fix permissions) and continue with --resume",
    )


@dataclass
class Session:
    """Everything a running training job holds."""

    cfg: RunConfig
    run: RunDir
    acc: Accelerator
    tokenizer: Any
    student: nn.Module
    ctx: O.StepContext
    rows: list[dict[str, Any]]
    eval_rows: list[dict[str, Any]]
    optimizer: Any
    scheduler: Any
    loop: dict[str, Any] = field(default_factory=lambda: {"step": 0, "tokens": 0, "elapsed_s": 0.0})

    @property
    def groups(self) -> tuple[str, ...]:
        return STUDENT_GROUPS[self.cfg.objective.method]


def lr_lambda(cfg: RunConfig):
    """Warmup then cosine / linear decay to 0, or constant."""
    total, warmup = cfg.train.max_steps, int(round(cfg.train.warmup_ratio * cfg.train.max_steps))
    schedule = cfg.train.lr_schedule

    def fn(step: int) -> float:
        if step < warmup:
            return (step + 1) / (warmup + 1)
        progress = (step - warmup) / max(1, total - warmup)
        if schedule == "cosine":
            return 0.5 * (1.0 + math.cos(math.pi * min(progress, 1.0)))
        return max(0.0, 1.0 - progress) if schedule == "linear" else 1.0

    return fn


@lru_cache(maxsize=4)
def _epoch_order(n: int, seed: int, epoch: int) -> list[int]:
    return torch.randperm(n, generator=torch.Generator().manual_seed(seed * 1_000_003 + epoch)).tolist()


def micro_batch_rows(n: int, seed: int, index: int, batch_size: int, world: int, rank: int) -> list[int]:
    """Row indices of micro-batch `index` for process `rank`: a slice of the seeded epoch stream."""
    start = (index * world + rank) * batch_size
    return [_epoch_order(n, seed, pos // n)[pos % n] for pos in range(start, start + batch_size)]


def make_batch(
    s: Session, rows: list[dict[str, Any]], groups: tuple[str, ...] | None = None
) -> dict[str, Any]:
    batch = collate(rows, groups or s.groups, s.tokenizer.pad_token_id, s.cfg.data.padding_side)
    return {k: (v.to(s.acc.device) if k in DATA_KEYS else v) for k, v in batch.items()}


def _chunk_size(cfg: RunConfig, student: nn.Module, pair: Any, vocab_size: int) -> int | None:
    """The chunked loss path's chunk size, or None for full logits (DESIGN: used by default when it helps)."""
    mode = cfg.train.chunked_loss
    if mode == "off" or (mode == "auto" and vocab_size < CHUNK_MIN_VOCAB):
        return None
    models = [student] + ([pair.dpo] + ([pair.ref] if pair.ref is not None else []) if pair else [])
    problem = next((p for m in models if (p := chunking_problem(m)) is not None), None)
    if problem is not None and mode == "on":
        raise ConfigError(
            f"train.chunked_loss=on cannot be used: {problem}; use train.chunked_loss=auto or off"
        )
    if problem is not None:
        logger.warning("full-vocabulary logits (train.chunked_loss=auto): %s", problem)
        return None
    return chunk_rows(cfg.train.chunk_size, vocab_size)


def _reference_fn(cfg: RunConfig, student: nn.Module, vocab_size: int, chunk: int | None):
    """DPO's reference: the frozen initial student (LoRA: the same weights with the adapter off)."""
    if cfg.objective.method != "dpo":
        return None
    frozen = None if cfg.model.lora else frozen_copy(student)

    @torch.no_grad()
    def fn(batch: dict[str, Any]) -> torch.Tensor:
        inputs = {k: batch[k] for k in ("input_ids", "attention_mask", "position_ids")}
        ctx = adapter_disabled(student) if frozen is None else nullcontext()
        with ctx:
            if chunk is not None:
                return sequence_logps_chunked(frozen or student, batch, vocab_size, chunk)  # (2B,)
            logits = (frozen or student)(**inputs).logits[..., :vocab_size]
        return sequence_logps(logits, batch["labels"])  # (2B,)

    return fn


def setup(cfg: RunConfig, run: RunDir, acc: Accelerator) -> Session:
    """Loads what a run needs. Cheap checks come first: the data is validated and tokenized and a teacher
    cache is checked before any model is loaded (a 7B teacher takes minutes to load)."""
    m = cfg.model
    tokenizer = load_run_tokenizer(m)
    if acc.is_main_process:  # the template the run renders with (`plain` for a base model without one)
        run.set_status("running", chat_template=chat_template_id(tokenizer))
    vocab = len(tokenizer)
    rows = load_rows(cfg, tokenizer, "train")
    eval_rows = load_rows(cfg, tokenizer, "eval") if cfg.train.eval_every else []
    online = cfg.objective.teacher_source == "online"
    cache = None if online else open_teacher_cache(cfg, vocab)
    torch.manual_seed(cfg.train.seed)
    _, student, pair = load_models(m, device=acc.device, tokenizer=tokenizer, teachers=online)
    if cfg.train.gradient_checkpointing:
        student.gradient_checkpointing_enable()
        if m.lora:
            student.enable_input_require_grads()
    if "yhat" in STUDENT_GROUPS[cfg.objective.method]:
        report = _phase_progress(run, "y_hat") if acc.is_main_process else None
        with acc.main_process_first():
            rows = attach_yhat(rows, cfg, student, tokenizer, yhat_path(run, "train"), on_progress=report)
            if eval_rows:
                eval_rows = attach_yhat(eval_rows, cfg, student, tokenizer, yhat_path(run, "eval"))
    chunk = _chunk_size(cfg, student, pair, vocab)
    reference = _reference_fn(cfg, student, vocab, chunk)
    params = [p for p in student.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=cfg.train.learning_rate, weight_decay=cfg.train.weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda(cfg))
    prepared, optimizer = acc.prepare(student, optimizer)
    head = output_layer(student) if chunk else None
    teacher = cache if cache is not None else OnlineTeacher(pair, vocab) if pair is not None else None
    eot = end_of_turn_id(tokenizer) if cfg.objective.released_code.eos_without_teacher else None
    ctx = O.StepContext(prepared, cfg.objective, vocab, teacher, reference, chunk, head, eot)
    return Session(cfg, run, acc, tokenizer, student, ctx, rows, eval_rows, optimizer, scheduler)


def _phase_progress(run: RunDir, phase: str) -> Callable[[int, int], None]:
    """Writes a preparation phase's progress (done / total, ETA) to status.json, before step 1."""
    start = time.perf_counter()

    def report(done: int, total: int) -> None:
        eta = (time.perf_counter() - start) / done * (total - done) if done else None
        run.set_status("running", step=0, phase=phase, phase_done=done, phase_total=total, phase_eta_s=eta)

    return report


def optimizer_step(s: Session) -> dict[str, float]:
    """One optimizer step over `grad_accum` micro-batches; returns the step's metrics."""
    cfg, acc = s.cfg, s.acc
    accum, step = cfg.train.grad_accum, s.loop["step"]
    batches = []
    for i in range(accum):
        idx = micro_batch_rows(
            len(s.rows),
            cfg.train.seed,
            step * accum + i,
            cfg.train.batch_size,
            acc.num_processes,
            acc.process_index,
        )
        batches.append(make_batch(s, [s.rows[j] for j in idx]))
    norms = _global_sums(acc, [O.counts(b, s.groups, cfg.objective) for b in batches])
    sums: dict[str, float] = defaultdict(float)
    tokens = 0
    for i, batch in enumerate(batches):
        with D.micro_batch(acc, s.ctx.student, last=i == accum - 1), acc.autocast():
            loss, metrics = O.loss_step(s.ctx, batch, norms)
            if not torch.isfinite(loss):
                raise NonFiniteLossError(f"the loss became {float(loss.detach())} at step {step + 1}")
            acc.backward(loss * D.loss_scale(acc, accum))  # engines average gradients; counts are global
        for k, v in metrics.items():
            sums[k] += v
        tokens += int(batch["attention_mask"].sum())
    grad_norm = None
    if cfg.train.max_grad_norm > 0:
        grad_norm = float(acc.clip_grad_norm_(s.ctx.student.parameters(), cfg.train.max_grad_norm))
    s.optimizer.step()
    s.scheduler.step()
    s.optimizer.zero_grad(set_to_none=True)
    out = _term_values(cfg, _global_sums(acc, [dict(sums)]), norms)
    out["lr"] = s.scheduler.get_last_lr()[0]
    if grad_norm is not None:
        out["grad_norm"] = grad_norm
    out["tokens"] = float(_global_sums(acc, [{"t": float(tokens)}])["t"])
    return out


def _global_sums(acc: Accelerator, parts: list[dict[str, float]]) -> dict[str, float]:
    keys = sorted({k for p in parts for k in p})
    local = torch.tensor(
        [sum(p.get(k, 0.0) for p in parts) for k in keys], dtype=torch.float64, device=acc.device
    )
    total = acc.reduce(local, reduction="sum") if acc.num_processes > 1 else local
    return dict(zip(keys, total.tolist(), strict=True))


def _term_values(cfg: RunConfig, sums: dict[str, float], norms: dict[str, float]) -> dict[str, float]:
    """Each term's step value (numerator / count) and the weighted total `loss`."""
    out: dict[str, float] = {}
    loss = 0.0
    for term, weight in O.term_weights(cfg.objective).items():
        out[term] = sums.get(f"num/{term}", 0.0) / max(norms[term], 1.0)
        loss += weight * out[term]
    for extra in ("reward_accuracy", "reward_margin"):
        if f"num/{extra}" in sums:
            out[extra] = sums[f"num/{extra}"] / max(norms["dpo"], 1.0)
    out["loss"] = loss
    return out


@torch.no_grad()
def evaluate_loss(s: Session) -> dict[str, float]:
    """The objective on the held-out rows (no gradient), with the model in eval mode."""
    model = s.ctx.student
    was_training = model.training
    model.eval()
    sums: dict[str, float] = defaultdict(float)
    norms: dict[str, float] = defaultdict(float)
    bs = s.cfg.train.batch_size
    try:
        for start in range(0, len(s.eval_rows), bs):
            batch = make_batch(s, s.eval_rows[start : start + bs])
            counts = O.counts(batch, s.groups, s.cfg.objective)
            with s.acc.autocast():
                _, metrics = O.loss_step(s.ctx, batch, counts)
            for k, v in metrics.items():
                sums[k] += v
            for k, v in counts.items():
                norms[k] += v
    finally:
        model.train(was_training)
    return {f"eval_{k}": v for k, v in _term_values(s.cfg, sums, norms).items()}


def save_checkpoint(s: Session) -> None:
    acc, run, step = s.acc, s.run, s.loop["step"]
    tmp = run.checkpoints_dir / f".step-{step}.tmp"
    if acc.is_main_process:
        tmp = run.begin_checkpoint(step)
    acc.wait_for_everyone()
    sharded = D.is_sharded(acc)
    try:
        torch.save(rng_state(), tmp / f"rng-rank{acc.process_index}.pt")
        if sharded:  # every process writes its shards (FSDP / DeepSpeed)
            D.save_sharded(acc, s.ctx.student, s.optimizer, tmp / D.ENGINE_DIR)
        acc.wait_for_everyone()
        if acc.is_main_process:
            model = acc.unwrap_model(s.ctx.student)
            save_state(tmp, model, s.optimizer, s.scheduler, s.loop, weights=not sharded)
            run.commit_checkpoint(step, tmp)
    except BaseException:
        if acc.is_main_process:  # a half-written checkpoint never stays behind (nor fills the disk)
            shutil.rmtree(tmp, ignore_errors=True)
        raise
    if acc.is_main_process:  # older checkpoints go only once the new one is complete
        run.prune_checkpoints(s.cfg.train.keep_checkpoints)
    acc.wait_for_everyone()


def _accelerator(cfg: RunConfig) -> Accelerator:
    """One Accelerator per run. accelerate keeps process-wide state, so a notebook that trains several
    times with other precision settings resets it first (the process-group part is kept)."""
    AcceleratorState._reset_state()
    GradientState._reset_state()
    return D.make_accelerator(cfg)


def _check_start(run: RunDir, resume: bool) -> None:
    """Read-only: every process checks before any process writes."""
    if run.exists() and not resume:
        state = run.read_status().get("state")
        # a run queued by the workbench, or one that failed before its first step (bad data, a wrong
        # path), has nothing to lose: it starts again; anything else needs --resume or another name
        fresh = state in ("queued", "failed") and not run.read_metrics() and not run.checkpoint_dirs()
        if not fresh:
            raise FileExistsError(
                f"run directory {run.path} already exists (state {state}); use --resume to "
                "continue it or choose another run name"
            )


def _resume(s: Session) -> None:
    if s.acc.is_main_process:  # what a kill in the middle of a write left behind
        s.run.discard_partial_writes()
    s.acc.wait_for_everyone()
    ckpt = s.run.latest_valid_checkpoint()
    if ckpt is None:
        return
    sharded = D.check_resume(s.acc, ckpt)
    if sharded:
        D.load_sharded(s.acc, s.ctx.student, s.optimizer, ckpt / D.ENGINE_DIR)
    model = s.acc.unwrap_model(s.ctx.student)
    s.loop = load_state(ckpt, model, s.optimizer, s.scheduler, s.acc.process_index, weights=not sharded)
    if s.acc.is_main_process:
        s.run.truncate_metrics(s.loop["step"])


def train(cfg: RunConfig, *, resume: bool = False) -> Iterator[dict[str, Any]]:
    """Runs `cfg` and yields each logged step's metrics; writes the run directory as it goes.

    On success the student is in `final/` and status.json says `completed`; an exception marks the run
    `failed` (with the error) and a `RunCancelled` / KeyboardInterrupt marks it `cancelled`. The last good
    checkpoint is always kept.
    """
    run = RunDir(cfg.run_dir)
    acc = _accelerator(cfg)
    _check_start(run, resume)
    acc.wait_for_everyone()
    main = acc.is_main_process
    if main:
        run.path.mkdir(parents=True, exist_ok=True)
        save_config(cfg, run.config_path)
        run.set_status("running", step=0, max_steps=cfg.train.max_steps, error=None)
    s: Session | None = None
    try:
        s = setup(cfg, run, acc)
        if resume:
            _resume(s)
        yield from _loop(s)
        _finish(s)
    except (KeyboardInterrupt, RunCancelled, GeneratorExit):
        if main:
            run.set_status("cancelled", error="cancelled by the user")
        raise
    except BaseException as exc:
        explained = _explain(exc, s, run)
        if main:
            tb = traceback.format_exc()[-4000:]
            # the disk that failed may refuse the status too; the raised error still says what happened
            with contextlib.suppress(OSError):
                run.set_status("failed", error=f"{type(explained).__name__}: {explained}", traceback=tb)
        if explained is exc:
            raise
        raise explained from exc


def _loop(s: Session) -> Iterator[dict[str, Any]]:
    cfg, run, acc = s.cfg, s.run, s.acc
    t_cfg = cfg.train
    while s.loop["step"] < t_cfg.max_steps:
        t0 = time.perf_counter()
        metrics = optimizer_step(s)
        dt = time.perf_counter() - t0
        s.loop["step"] += 1
        s.loop["tokens"] += int(metrics.pop("tokens"))
        s.loop["elapsed_s"] += dt
        step = s.loop["step"]
        record = {
            "step": step,
            **metrics,
            "tokens_per_s": s.loop["tokens"] / max(s.loop["elapsed_s"], 1e-9),
            "elapsed_s": s.loop["elapsed_s"],
        }
        evaluated = bool(t_cfg.eval_every) and step % t_cfg.eval_every == 0
        if evaluated:
            record.update(evaluate_loss(s))
        if evaluated or step % t_cfg.log_every == 0 or step == t_cfg.max_steps:
            if acc.is_main_process:
                run.append_metrics(record)
                eta = s.loop["elapsed_s"] / step * (t_cfg.max_steps - step)
                run.set_status(
                    "running", step=step, max_steps=t_cfg.max_steps, loss=record["loss"], eta_s=eta
                )
            yield record
        if t_cfg.save_every and step % t_cfg.save_every == 0 and step < t_cfg.max_steps:
            save_checkpoint(s)


def _finish(s: Session) -> None:
    save_checkpoint(s)
    sharded = D.is_sharded(s.acc)
    state = D.full_state_dict(s.acc, s.ctx.student) if sharded else None  # every process gathers
    if s.acc.is_main_process:
        model, merge = s.acc.unwrap_model(s.ctx.student), s.cfg.train.save_merged
        paths = save_student(model, s.tokenizer, s.run.final_dir, merge=merge, state_dict=state)
        s.run.set_status("completed", step=s.loop["step"], final={k: str(v) for k, v in paths.items()})
    s.acc.wait_for_everyone()


def run_training(cfg: RunConfig, *, resume: bool = False, progress: bool = True) -> dict[str, Any]:
    """Runs `train()` to the end with a tqdm bar; returns the last metrics."""
    from tqdm.auto import tqdm

    last: dict[str, Any] = {}
    with tqdm(
        total=cfg.train.max_steps, desc=f"{cfg.name} ({cfg.objective.method})", disable=not progress
    ) as bar:
        for record in train(cfg, resume=resume):
            bar.n = record["step"]
            bar.set_postfix(loss=f"{record['loss']:.4f}", tok_s=f"{record['tokens_per_s']:.0f}")
            bar.refresh()
            last = record
    return last
