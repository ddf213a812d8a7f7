"""The six objectives of DESIGN.md section 1, wired from the loss functions: `loss_step()`.

A batch holds the groups a method needs, concatenated along the batch axis so that ONE student forward
serves them all (e.g. DCKD: chosen rows then rejected rows). Each loss term is kept as a numerator and a
count (sequences with a counted token, or counted tokens, or pairs) so that gradient accumulation and
several processes normalise exactly like one big batch: the step's term value is sum(numerators) /
sum(counts) over every micro-batch of every process.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from . import losses as L
from .config import ObjectiveConfig
from .teacher import TeacherTargets

# Which sequence groups each method feeds the student, and which of them the teacher must see.
STUDENT_GROUPS = {
    "sft": ("chosen",),
    "dpo": ("chosen", "rejected"),
    "kd": ("chosen",),
    "dckd": ("chosen", "rejected"),
    "adpa": ("chosen", "yhat"),
    "adpa_plus": ("chosen", "yhat"),
}
TEACHER_GROUPS = {
    "kd": ("chosen",),
    "dckd": ("chosen", "rejected"),
    "adpa": ("yhat",),
    "adpa_plus": ("yhat",),
}


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


def counts(batch: dict[str, Any], groups: tuple[str, ...], obj: ObjectiveConfig) -> dict[str, float]:
    """The normaliser of each term for this batch, from the labels alone (no forward needed)."""
    labels = split_groups(batch["labels"], groups)
    out = {}
    for term in term_weights(obj):
        group = term_group(term)
        if group == "pairs":
            out[term] = float(labels["chosen"].shape[0])
            continue
        mask = labels[group] != L.IGNORE_INDEX  # (B, T)
        out[term] = float(mask.sum()) if obj.reduction == "token" else float((mask.sum(-1) > 0).sum())
    return out


def numerator(per_token: Tensor, labels: Tensor, reduction: str) -> Tensor:
    """Sum-form of `losses.masked_reduce`: divided by `counts()` it gives the same value."""
    mask = labels != L.IGNORE_INDEX  # (B, T)
    values = torch.where(mask, per_token, 0.0)
    if reduction == "token":
        return values.sum()
    return (values.sum(-1) / mask.sum(-1).clamp(min=1)).sum()


@dataclass
class StepContext:
    """What `loss_step` needs besides the batch. `teacher(group_batch, need_ref)` gives TeacherTargets."""

    student: nn.Module
    objective: ObjectiveConfig
    vocab_size: int
    teacher: Callable[[dict[str, Any], str, bool], TeacherTargets] | None = None
    reference_logps: Callable[[dict[str, Any]], Tensor] | None = None  # (G*B,) summed logps, frozen student
    extra: dict[str, Any] = field(default_factory=dict)


def _kl_per_token(student_logits: Tensor, t: TeacherTargets, labels: Tensor) -> Tensor:
    if t.cached:
        return L.topk_forward_kl_per_token(
            student_logits, t.topk_ids, t.dpo_topk_logps, labels, t.dpo_rest_logp
        )
    return L.forward_kl_per_token(student_logits, t.dpo_logits, labels)


def _adpa_per_token(
    student_logits: Tensor, t: TeacherTargets, labels: Tensor, obj: ObjectiveConfig
) -> Tensor:
    if not t.cached:
        ref = t.ref_logits if obj.use_reference else None
        topk = obj.k if obj.support == "topk" else None
        adv = L.token_advantages(t.dpo_logits, ref, beta=obj.beta, clip=obj.clip, topk=topk)  # (B, T, V)
        return L.adpa_per_token(student_logits, adv, labels)
    if t.ref_topk_logps is None:
        raise ValueError("the teacher cache holds no reference teacher log-probs; ADPA needs them")
    k = obj.k if obj.support == "topk" else t.topk_ids.shape[-1]
    adv = L.topk_token_advantages(t.dpo_topk_logps[..., :k], t.ref_topk_logps[..., :k], obj.beta, obj.clip)
    rest = None
    if obj.support == "full":
        # The rest bin aggregates the tokens outside the cached ids (exact when k = V: no rest mass).
        both = (t.dpo_rest_logp > -torch.inf) & (t.ref_rest_logp > -torch.inf)
        rest = torch.where(both, obj.beta * (t.dpo_rest_logp - t.ref_rest_logp), 0.0)  # (B, T)
        if obj.clip is not None:
            rest = rest.clamp(obj.clip[0], obj.clip[1])
    return L.topk_adpa_per_token(student_logits, t.topk_ids[..., :k], adv, labels, rest)


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
    logits = split_groups(student_logits(ctx, batch), groups)
    labels = split_groups(batch["labels"], groups)
    teacher = _teacher_targets(ctx, batch, groups)
    loss = logits[groups[0]].new_zeros(())
    metrics: dict[str, float] = {}
    for term, weight in term_weights(obj).items():
        if term == "dpo":
            num, extra = _dpo_numerator(ctx, batch, logits, labels)
            metrics.update(extra)
        else:
            group = term_group(term)
            if term == "nll":
                per_token = L.nll_per_token(logits[group], labels[group])
            elif term == "adpa":
                per_token = _adpa_per_token(logits[group], teacher[group], labels[group], obj)
            else:
                per_token = _kl_per_token(logits[group], teacher[group], labels[group])
            num = numerator(per_token, labels[group], obj.reduction)
        loss = loss + weight * num / max(norms[term], 1.0)
        metrics[f"num/{term}"] = float(num.detach())
    metrics["loss_value"] = float(loss.detach())
    return loss, metrics


def _teacher_targets(
    ctx: StepContext, batch: dict[str, Any], groups: tuple[str, ...]
) -> dict[str, TeacherTargets]:
    wanted = TEACHER_GROUPS.get(ctx.objective.method, ())
    if not wanted:
        return {}
    if ctx.teacher is None:
        raise ValueError(f"objective.method={ctx.objective.method} needs a teacher but none is loaded")
    need_ref = ctx.objective.method in ("adpa", "adpa_plus") and ctx.objective.use_reference
    return {g: ctx.teacher(group_batch(batch, groups, (g,)), g, need_ref) for g in wanted}


def _dpo_numerator(
    ctx: StepContext, batch: dict[str, Any], logits: dict[str, Tensor], labels: dict[str, Tensor]
) -> tuple[Tensor, dict[str, float]]:
    if ctx.reference_logps is None:
        raise ValueError("objective.method=dpo needs the frozen initial student as reference")
    lp_w = L.sequence_logps(logits["chosen"], labels["chosen"])  # (B,)
    lp_l = L.sequence_logps(logits["rejected"], labels["rejected"])  # (B,)
    ref = ctx.reference_logps(batch)  # (2B,)
    ref_w, ref_l = ref.chunk(2)
    beta = ctx.objective.beta_dpo
    per_pair = L.dpo_per_pair(lp_w, lp_l, ref_w, ref_l, beta)  # (B,)
    r_w, r_l = L.dpo_implicit_rewards(lp_w, lp_l, ref_w, ref_l, beta)
    extra = {
        "num/reward_accuracy": float((r_w > r_l).float().sum()),
        "num/reward_margin": float((r_w - r_l).sum()),
    }
    return per_pair.sum(), extra
