"""The six objectives of DESIGN.md section 1, wired from the loss functions: `loss_step()`.

A batch holds the groups a method needs, concatenated along the batch axis so that ONE student forward
serves them all (e.g. DCKD: chosen rows then rejected rows). Each loss term is kept as a numerator and a
count (sequences with a counted token, or counted tokens, or pairs) so that gradient accumulation and
several processes normalise exactly like one big batch: the step's term value is sum(numerators) /
sum(counts) over every micro-batch of every process.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

import torch
from torch import Tensor, nn

from . import losses as L
from . import losses_released as R
from .chunked import OutputLayer, counted_rows, final_hidden, fused_linear_loss, label_logps
from .config import STUDENT_GROUPS, TEACHER_GROUPS, ObjectiveConfig
from .teacher import TeacherTargets
from .terms import term_per_token


def term_weights(obj: ObjectiveConfig) -> dict[str, float]:
    """The weighted terms of each objective (DESIGN.md section 1)."""
    method = obj.method
    if method == "sft":
        return {"nll": 1.0}
    if method == "dpo":
        return {"dpo": 1.0, **({"nll": obj.w_sft} if obj.w_sft > 0 else {})}
    if method == "kd":
        return {"nll": 1.0, "kl_chosen": obj.w_kl_chosen}
    if method == "dckd":
        return {"nll": 1.0, "kl_chosen": obj.w_kl_chosen, "kl_rejected": obj.w_kl_rejected}
    return {"nll": 1.0, "adpa": obj.gamma}


def term_group(term: str) -> str:
    return {
        "nll": "chosen",
        "kl_chosen": "chosen",
        "kl_rejected": "rejected",
        "adpa": "yhat",
        "dpo": "pairs",
    }[term]


def split_groups(tensor: Tensor, groups: tuple[str, ...]) -> dict[str, Tensor]:
    """Splits a (G*B, ...) tensor into its G groups of B rows."""
    return dict(zip(groups, tensor.chunk(len(groups), dim=0), strict=True))


def group_batch(batch: dict[str, Any], groups: tuple[str, ...], wanted: tuple[str, ...]) -> dict[str, Any]:
    """The rows of the `wanted` groups of a concatenated batch, as a batch of the same layout."""
    index = [groups.index(g) for g in wanted]
    out: dict[str, Any] = {"ids": batch["ids"]}
    for key in ("input_ids", "attention_mask", "position_ids", "labels"):
        if key in batch:
            parts = batch[key].chunk(len(groups), dim=0)
            out[key] = torch.cat([parts[i] for i in index], dim=0)
    return out


def reduction(obj: ObjectiveConfig) -> str:
    """`token`, `sequence`, or `micro_batch` (released code: one token mean per micro-batch, then the mean
    over micro-batches)."""
    return "micro_batch" if obj.released_code.micro_batch_mean else obj.reduction


def counts(batch: dict[str, Any], groups: tuple[str, ...], obj: ObjectiveConfig) -> dict[str, float]:
    """The normaliser of each term for this batch, from the labels alone (no forward needed)."""
    labels = split_groups(batch["labels"], groups)
    out = {}
    how = reduction(obj)
    for term in term_weights(obj):
        group = term_group(term)
        if group == "pairs":
            out[term] = float(labels["chosen"].shape[0])
            continue
        mask = labels[group] != L.IGNORE_INDEX  # (B, T)
        if how == "micro_batch":
            out[term] = float(bool(mask.any()))
        else:
            out[term] = float(mask.sum()) if how == "token" else float((mask.sum(-1) > 0).sum())
    return out


class TeacherSource(Protocol):
    """Online teachers or a cache: full targets of a group batch, or targets at its counted rows by chunk."""

    def targets(self, batch: dict[str, Any], group: str, need_ref: bool) -> TeacherTargets: ...

    def row_targets(
        self, batch: dict[str, Any], group: str, need_ref: bool, mask: Tensor
    ) -> Callable[[int, int], TeacherTargets]: ...


@dataclass
class StepContext:
    """What `loss_step` needs besides the batch."""

    student: nn.Module
    objective: ObjectiveConfig
    vocab_size: int
    teacher: TeacherSource | None = None
    reference_logps: Callable[[dict[str, Any]], Tensor] | None = None  # (G*B,) summed logps, frozen student
    chunk_size: int | None = None  # None: full logits; else the chunked path (chunked.py) with this chunk
    head: OutputLayer | None = None  # the student's output layer and logit transform (chunked path)
    end_of_turn_id: int | None = None  # the label that closes a response (released_code.eos_without_teacher)

    def __post_init__(self) -> None:
        if self.objective.released_code.eos_without_teacher and self.end_of_turn_id is None:
            raise ValueError("objective.released_code.eos_without_teacher needs StepContext.end_of_turn_id")


def no_teacher(ctx: StepContext, labels: Tensor) -> Tensor | None:
    """(B, T) positions without teacher data (released_code.eos_without_teacher), or None."""
    if not ctx.objective.released_code.eos_without_teacher:
        return None
    return R.no_teacher_positions(labels, ctx.end_of_turn_id)


def row_weights(labels: Tensor, reduction: str) -> Tensor:
    """Weight of each position (B, T) in a term's numerator: 1 per counted token, 1/n per sequence, or 1/N
    per micro-batch (N counted tokens in it)."""
    mask = (labels != L.IGNORE_INDEX).float()
    if reduction == "micro_batch":
        return mask / mask.sum().clamp(min=1.0)
    return mask if reduction == "token" else mask / mask.sum(-1, keepdim=True).clamp(min=1.0)


def student_logits(ctx: StepContext, batch: dict[str, Any]) -> Tensor:
    inputs = {k: batch[k] for k in ("input_ids", "attention_mask", "position_ids") if k in batch}
    return ctx.student(**inputs).logits[..., : ctx.vocab_size]  # (G*B, T, V)


def loss_step(
    ctx: StepContext, batch: dict[str, Any], norms: dict[str, float] | None = None
) -> tuple[Tensor, dict[str, float]]:
    """One forward of the objective on a concatenated batch: (loss to back-propagate, metrics).

    `norms` are the step's counts per term (all micro-batches, all processes); None uses this batch's, and
    then the loss equals the library's reduced loss. Metrics hold each term's numerator (`num/<term>`) so
    that the caller can sum them over micro-batches; `loss_value` is the exact loss of this call.
    """
    obj = ctx.objective
    groups = STUDENT_GROUPS[obj.method]
    norms = norms or counts(batch, groups, obj)
    labels = split_groups(batch["labels"], groups)
    if ctx.chunk_size is None:
        out = split_groups(student_logits(ctx, batch), groups)
    else:
        out = split_groups(final_hidden(ctx.student, batch), groups)
    loss = out[groups[0]].new_zeros((), dtype=torch.float32)
    metrics: dict[str, float] = {}
    weights = term_weights(obj)
    for group in groups:
        terms = [t for t in weights if term_group(t) == group]
        if not terms:
            continue
        scale = {t: weights[t] / max(norms[t], 1.0) for t in terms}
        run = _group_full if ctx.chunk_size is None else _group_chunked
        value, nums = run(ctx, group_batch(batch, groups, (group,)), out[group], labels[group], terms, scale)
        loss = loss + value
        metrics.update({f"num/{t}": v for t, v in nums.items()})
    if "dpo" in weights:
        value, extra = _dpo(ctx, batch, out, labels, weights["dpo"] / max(norms["dpo"], 1.0))
        loss = loss + value
        metrics.update(extra)
    metrics["loss_value"] = float(loss.detach())
    return loss, metrics


def _needs(ctx: StepContext, group: str) -> tuple[bool, bool]:
    """(this group needs the teacher, it needs the reference teacher too)."""
    method = ctx.objective.method
    needed = group in TEACHER_GROUPS.get(method, ())
    if needed and ctx.teacher is None:
        raise ValueError(f"objective.method={method} needs a teacher but none is loaded")
    return needed, needed and method in ("adpa", "adpa_plus") and ctx.objective.use_reference


def _group_full(ctx, gbatch, logits, labels, terms, scale) -> tuple[Tensor, dict[str, float]]:
    """Terms of one group from its full logits (B, T, V)."""
    need_teacher, need_ref = _needs(ctx, term_group(terms[0]))
    teacher = ctx.teacher.targets(gbatch, term_group(terms[0]), need_ref) if need_teacher else None
    empty = no_teacher(ctx, labels) if need_teacher else None  # (B, T)
    weights = row_weights(labels, reduction(ctx.objective))  # (B, T)
    value, nums = logits.new_zeros((), dtype=torch.float32), {}
    for term in terms:
        num = (term_per_token(term, logits, labels, teacher, ctx.objective, empty) * weights).sum()
        value = value + scale[term] * num
        nums[term] = float(num.detach())
    return value, nums


def _group_chunked(ctx, gbatch, hidden, labels, terms, scale) -> tuple[Tensor, dict[str, float]]:
    """Terms of one group from its final hidden states (B, T, H), through the output layer by chunks."""
    group = term_group(terms[0])
    need_teacher, need_ref = _needs(ctx, group)
    mask = labels != L.IGNORE_INDEX  # (B, T)
    rows, row_labels = hidden[mask], labels[mask]  # (N, H), (N,)
    weights = row_weights(labels, reduction(ctx.objective))[mask]  # (N,)
    teacher = ctx.teacher.row_targets(gbatch, group, need_ref, mask) if need_teacher else None
    empty = no_teacher(ctx, labels) if need_teacher else None
    empty = empty[mask] if empty is not None else None  # (N,)
    nums: dict[str, Any] = dict.fromkeys(terms, 0.0)  # detached: one host sync per term, not per chunk

    def chunk_fn(logits: Tensor, start: int, end: int) -> Tensor:  # logits (C, V)
        t = teacher(start, end) if teacher is not None else None
        value = logits.new_zeros(())
        for term in terms:
            rows_empty = empty[None, start:end] if empty is not None else None
            per = term_per_token(
                term, logits[None], row_labels[None, start:end], t, ctx.objective, rows_empty
            )
            num = (per[0] * weights[start:end]).sum()  # per: (1, C)
            nums[term] = nums[term] + num.detach()
            value = value + scale[term] * num
        return value

    value = fused_linear_loss(rows, ctx.head, chunk_fn, ctx.vocab_size, ctx.chunk_size)
    return value, {t: float(v) for t, v in nums.items()}


def _dpo(ctx, batch, out, labels, scale) -> tuple[Tensor, dict[str, float]]:
    """The DPO term from full logits, or (chunked) from label log-probs by chunk and their exact gradient."""
    if ctx.reference_logps is None:
        raise ValueError("objective.method=dpo needs the frozen initial student as reference")
    ref_w, ref_l = ctx.reference_logps(batch).chunk(2)  # (B,) each
    beta = ctx.objective.beta_dpo
    if ctx.chunk_size is None:
        lp_w = L.sequence_logps(out["chosen"], labels["chosen"])  # (B,)
        lp_l = L.sequence_logps(out["rejected"], labels["rejected"])  # (B,)
        per_pair = L.dpo_per_pair(lp_w, lp_l, ref_w, ref_l, beta)  # (B,)
        value = scale * per_pair.sum()
    else:
        value, lp_w, lp_l, per_pair = _dpo_chunked(ctx, out, labels, ref_w, ref_l, scale)
    r_w, r_l = L.dpo_implicit_rewards(lp_w, lp_l, ref_w, ref_l, beta)
    return value, {
        "num/dpo": float(per_pair.detach().sum()),
        "num/reward_accuracy": float((r_w > r_l).float().sum()),
        "num/reward_margin": float((r_w - r_l).sum()),
    }


def _dpo_chunked(ctx, out, labels, ref_w, ref_l, scale):
    """DPO is not a sum over tokens, so: summed label log-probs without gradient, the pair losses and their
    gradient with respect to those sums, then that (exact) gradient pushed through each token's log-prob."""
    rows, logps = {}, {}
    for g in ("chosen", "rejected"):
        mask, seq = counted_rows(labels[g])
        rows[g] = (out[g][mask], labels[g][mask], seq)
        token = label_logps(out[g][mask].detach(), ctx.head, labels[g][mask], ctx.vocab_size, ctx.chunk_size)
        logps[g] = torch.zeros(mask.shape[0], device=token.device).index_add_(0, seq, token).requires_grad_()
    with torch.enable_grad():
        per_pair = L.dpo_per_pair(logps["chosen"], logps["rejected"], ref_w, ref_l, ctx.objective.beta_dpo)
        coef = dict(zip(logps, torch.autograd.grad(per_pair.sum(), list(logps.values())), strict=True))
    value = scale * per_pair.detach().sum()
    for g, (hidden, row_labels, seq) in rows.items():
        row_coef = scale * coef[g][seq]  # (N,)

        def chunk_fn(logits: Tensor, start: int, end: int, c=row_coef, y=row_labels) -> Tensor:
            picked = L.nll_per_token(logits[None], y[None, start:end])[0]  # (C,) = -log p(label)
            return -(c[start:end] * picked).sum()

        linear = fused_linear_loss(hidden, ctx.head, chunk_fn, ctx.vocab_size, ctx.chunk_size)
        value = value + linear - linear.detach()
    return value, logps["chosen"].detach(), logps["rejected"].detach(), per_pair.detach()
