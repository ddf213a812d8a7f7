"""Per-token loss terms (B, T) from the student's logits and the teacher's targets, online or cached.

The exact forms of `losses.py`, or, when `objective.released_code` switches are on, the released code's
(`losses_released.py`). An online teacher is cut to what a top-k cache holds wherever a released-code
switch works on the k + 1 bins, so the two sources give the same numbers.
"""

from __future__ import annotations

import torch
from torch import Tensor

from . import losses as L
from . import losses_released as R
from .config import ObjectiveConfig
from .teacher import TeacherTargets


def _as_topk(t: TeacherTargets, k: int, need_ref: bool, ref_topk: bool) -> TeacherTargets:
    """Cached targets as they are; online logits cut to what a top-k cache would hold."""
    if t.cached:
        return t
    return TeacherTargets(**R.topk_view(t.dpo_logits, t.ref_logits if need_ref else None, k, ref_topk))


def _kl_per_token(
    student_logits: Tensor, t: TeacherTargets, labels: Tensor, obj: ObjectiveConfig, empty: Tensor | None
) -> Tensor:
    rc = obj.released_code
    if not t.cached and not rc.kl_topk_online:
        per = L.forward_kl_per_token(student_logits, t.dpo_logits, labels)
        return per if empty is None else torch.where(empty, 0.0, per)
    t = _as_topk(t, obj.k, need_ref=False, ref_topk=False)
    return R.released_kl_per_token(
        student_logits,
        t.topk_ids,
        t.dpo_topk_logps,
        labels,
        t.dpo_rest_logp,
        floors=rc.prob_floors,
        no_teacher=empty,
    )


def _released_adpa(
    student_logits: Tensor, t: TeacherTargets, labels: Tensor, obj: ObjectiveConfig, empty: Tensor | None
) -> Tensor:
    """The ADPA term with the released code's switches (support topk)."""
    rc, k = obj.released_code, obj.k
    t = _as_topk(t, k, need_ref=True, ref_topk=rc.reference_imputation)
    if t.ref_topk_logps is None:
        raise ValueError("the teacher cache holds no reference teacher log-probs; ADPA needs them")
    member = None
    if rc.reference_imputation:
        if t.ref_topk_ids is None:
            raise ValueError("released_code.reference_imputation needs the reference teacher's own top-k ids")
        member = R.in_topk(t.topk_ids[..., :k], t.ref_topk_ids[..., :k])  # (B, T, K)
    adv = R.released_advantages(
        t.dpo_topk_logps[..., :k],
        t.ref_topk_logps[..., :k],
        floor=rc.advantage_floor,
        ref_in_topk=member,
        beta=obj.beta,
        clip=obj.clip,
    )
    return R.released_adpa_per_token(
        student_logits,
        t.topk_ids[..., :k],
        adv,
        labels,
        floors=rc.prob_floors,
        clip=obj.clip,
        no_teacher=empty,
    )


def _adpa_per_token(
    student_logits: Tensor, t: TeacherTargets, labels: Tensor, obj: ObjectiveConfig, empty: Tensor | None
) -> Tensor:
    rc = obj.released_code
    quirks = rc.prob_floors or rc.reference_imputation or rc.advantage_floor or empty is not None
    if obj.support == "topk" and quirks:
        return _released_adpa(student_logits, t, labels, obj, empty)
    per = _adpa_exact(student_logits, t, labels, obj)
    return per if empty is None else torch.where(empty, 0.0, per)


def _adpa_exact(student_logits: Tensor, t: TeacherTargets, labels: Tensor, obj: ObjectiveConfig) -> Tensor:
    if not t.cached:
        ref = t.ref_logits if obj.use_reference else None
        topk = obj.k if obj.support == "topk" else None
        adv = L.token_advantages(t.dpo_logits, ref, beta=obj.beta, clip=obj.clip, topk=topk)  # (B, T, V)
        return L.adpa_per_token(student_logits, adv, labels)
    if obj.use_reference and t.ref_topk_logps is None:
        raise ValueError("the teacher cache holds no reference teacher log-probs; ADPA needs them")
    k = obj.k if obj.support == "topk" else t.topk_ids.shape[-1]
    ref = t.ref_topk_logps[..., :k] if obj.use_reference else None
    adv = L.topk_token_advantages(t.dpo_topk_logps[..., :k], ref, obj.beta, obj.clip)
    rest = None
    # Without the reference only a complete cache (k = V, checked when it is opened) serves: no rest bin.
    if obj.support == "full" and obj.use_reference:
        # The rest bin aggregates the tokens outside the cached ids (exact when k = V: no rest mass).
        both = (t.dpo_rest_logp > -torch.inf) & (t.ref_rest_logp > -torch.inf)
        rest = torch.where(both, obj.beta * (t.dpo_rest_logp - t.ref_rest_logp), 0.0)  # (B, T)
        if obj.clip is not None:
            rest = rest.clamp(obj.clip[0], obj.clip[1])
    return L.topk_adpa_per_token(student_logits, t.topk_ids[..., :k], adv, labels, rest)


def term_per_token(
    term: str,
    logits: Tensor,
    labels: Tensor,
    teacher: TeacherTargets | None,
    obj: ObjectiveConfig,
    empty: Tensor | None = None,
) -> Tensor:
    """Per-token values (B, T) of one loss term from the student's logits (B, T, V); `empty` (B, T) marks
    positions without teacher data (released_code.eos_without_teacher)."""
    if term == "nll":
        return L.nll_per_token(logits, labels)
    if term == "adpa":
        return _adpa_per_token(logits, teacher, labels, obj, empty)
    return _kl_per_token(logits, teacher, labels, obj, empty)
