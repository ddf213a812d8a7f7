"""The released code's loss math (`preset: reference-code`), each detail behind a switch of
`objective.released_code` (config.ReleasedCodeConfig); pure torch functions like `losses.py`.

The released training script works on k + 1 probability bins: the DPO teacher's top-k ids and the rest
(k = 50). Its data loader clamps every bin's probability, teacher's and student's, to [1e-8, 1 - 1e-8],
and its KL raises student probabilities below 1e-7 to 1e-7 before the log. Its precompute script builds
the advantage from each teacher's own top-k: probabilities floored at 1e-7, and a DPO id outside the
reference's top-k takes the smallest DPO top-k probability as its reference probability. A clamp or a
floor that bites is a constant: that bin's gradient is 0.

With every switch off these functions equal the exact top-k forms of `losses.py`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from .losses import (
    IGNORE_INDEX,
    _finish,
    _float,
    _gather_logps,
    topk_adpa_per_token,
    topk_forward_kl_per_token,
    topk_rest_logp,
)

PROB_LO, PROB_HI = 1e-8, 1.0 - 1e-8  # the loader's clamp of every bin's probability
FLOOR = 1e-7  # the student's floor in the KL; both teachers' floor in the advantage
LOG_FLOOR = math.log(FLOOR)


def no_teacher_positions(labels: Tensor, end_of_turn_id: int) -> Tensor:
    """(B, T) True at the last counted position of a sequence when its label is the end-of-turn token: the
    appended EOS that the released precompute has no teacher data for."""
    counted = labels != IGNORE_INDEX  # (B, T)
    last = counted & (counted.long().cumsum(-1) == counted.sum(-1, keepdim=True))
    return last & (labels == end_of_turn_id)


@torch.no_grad()
def topk_view(
    dpo_logits: Tensor, ref_logits: Tensor | None, k: int, ref_topk: bool = False
) -> dict[str, Tensor]:
    """What a top-k teacher cache holds, from full teacher logits (B, T, V): `topk_ids` (B, T, K) sorted by
    the DPO teacher, `dpo_topk_logps`, `dpo_rest_logp` (B, T), the reference's log-probs at the same ids and
    its rest, and with `ref_topk` the reference teacher's own top-k ids `ref_topk_ids` (B, T, K)."""
    dpo = F.log_softmax(_float(dpo_logits), dim=-1)  # (B, T, V)
    logps, ids = dpo.topk(min(k, dpo.shape[-1]), dim=-1)  # (B, T, K)
    out = {"topk_ids": ids, "dpo_topk_logps": logps, "dpo_rest_logp": topk_rest_logp(logps)}
    if ref_logits is not None:
        ref = F.log_softmax(_float(ref_logits), dim=-1)  # (B, T, V)
        at_ids = ref.gather(-1, ids)  # (B, T, K)
        out.update(ref_topk_logps=at_ids, ref_rest_logp=topk_rest_logp(at_ids))
        if ref_topk:
            out["ref_topk_ids"] = ref.topk(ids.shape[-1], dim=-1).indices
    return out


def in_topk(ids: Tensor, other_ids: Tensor) -> Tensor:
    """(B, T, K) True where `ids[b, t, j]` is one of `other_ids[b, t, :]` (B, T, K')."""
    return (ids.unsqueeze(-1) == other_ids.unsqueeze(-2)).any(-1)


@torch.no_grad()
def released_advantages(
    dpo_topk_logps: Tensor,
    ref_logps: Tensor,
    *,
    floor: bool,
    ref_in_topk: Tensor | None = None,
    beta: float = 1.0,
    clip: Sequence[float] | None = None,
) -> Tensor:
    """Advantages at the DPO teacher's top-k ids (B, T, K): beta (log p_dpo - log p_ref), then `clip`.

    `floor`: both probabilities floored at 1e-7 first (the advantage floor). `ref_in_topk` (B, T, K): which
    ids the reference's own top-k holds; elsewhere p_ref = max(min_k p_dpo, 1e-7) (reference imputation).
    """
    log_dpo, log_ref = _float(dpo_topk_logps), _float(ref_logps)  # (B, T, K)
    if floor:
        log_dpo, log_ref = log_dpo.clamp(min=LOG_FLOOR), log_ref.clamp(min=LOG_FLOOR)
    if ref_in_topk is not None:
        imputed = _float(dpo_topk_logps).amin(-1, keepdim=True).clamp(min=LOG_FLOOR)  # (B, T, 1)
        log_ref = torch.where(ref_in_topk, log_ref, imputed)
    adv = beta * (log_dpo - log_ref)
    return adv if clip is None else adv.clamp(float(clip[0]), float(clip[1]))


def _student_bins(student_logits: Tensor, ids: Tensor) -> Tensor:
    """The student's k + 1 bin probabilities (B, T, K + 1): at `ids`, then the rest 1 - sum (unclamped)."""
    top = _gather_logps(student_logits, ids).exp()  # (B, T, K)
    return torch.cat([top, (1.0 - top.sum(-1)).unsqueeze(-1)], dim=-1)


def _clamp(probs: Tensor) -> Tensor:
    return probs.clamp(PROB_LO, PROB_HI)  # no gradient outside, like the loader's torch.clamp


def released_kl_per_token(
    student_logits: Tensor,
    topk_ids: Tensor,
    teacher_topk_logps: Tensor,
    labels: Tensor,
    teacher_rest_logp: Tensor | None = None,
    *,
    floors: bool,
    no_teacher: Tensor | None = None,
) -> Tensor:
    """KL(teacher || student) over the k + 1 bins per position (B, T), as the released KD term computes it.

    `floors`: both distributions clamped to [1e-8, 1 - 1e-8] and student bins below 1e-7 set to 1e-7 (a
    constant: zero gradient). `no_teacher` (B, T): positions without teacher data, whose bins are all 0
    before the floors (value 0 without floors, (K + 1) 1e-8 log(1e-8 / 1e-7) with them; no gradient).
    """
    if not floors:
        per = topk_forward_kl_per_token(
            student_logits, topk_ids, teacher_topk_logps, labels, teacher_rest_logp
        )
        return per if no_teacher is None else torch.where(no_teacher, 0.0, per)
    q = _student_bins(student_logits, topk_ids)  # (B, T, K + 1)
    with torch.no_grad():
        logp = _float(teacher_topk_logps)  # (B, T, K)
        rest = topk_rest_logp(logp) if teacher_rest_logp is None else _float(teacher_rest_logp)  # (B, T)
        p = torch.cat([logp, rest.unsqueeze(-1)], dim=-1).exp()  # (B, T, K + 1)
    if no_teacher is not None:
        q = torch.where(no_teacher.unsqueeze(-1), 0.0, q)
        p = torch.where(no_teacher.unsqueeze(-1), 0.0, p)
    q = _clamp(q)
    q = torch.where(q < FLOOR, FLOOR, q)  # the KD term's student floor
    p = _clamp(p)
    return _finish((p * (p.log() - q.log())).sum(-1), labels)


def released_adpa_per_token(
    student_logits: Tensor,
    topk_ids: Tensor,
    advantages: Tensor,
    labels: Tensor,
    *,
    floors: bool,
    clip: Sequence[float] | None = None,
    no_teacher: Tensor | None = None,
) -> Tensor:
    """Minus the student's expected advantage over the k + 1 bins per position (B, T), as released.

    `advantages` (B, T, K) from `released_advantages`. `floors`: the student's bin probabilities clamped to
    [1e-8, 1 - 1e-8], and the rest bin counted with the advantage 0 passed through `clip`. `no_teacher`
    (B, T): positions without teacher data (student bins 0, advantages clip(0); no gradient).
    """
    empty = 0.0 if clip is None else min(max(0.0, float(clip[0])), float(clip[1]))  # clip(0)
    if not floors:
        per = topk_adpa_per_token(student_logits, topk_ids, advantages, labels)
        return per if no_teacher is None else torch.where(no_teacher, 0.0, per)
    s = _student_bins(student_logits, topk_ids)  # (B, T, K + 1)
    a = torch.cat([advantages.detach(), torch.full_like(advantages[..., :1], empty)], dim=-1)
    if no_teacher is not None:
        s = torch.where(no_teacher.unsqueeze(-1), 0.0, s)
        a = torch.where(no_teacher.unsqueeze(-1), empty, a)
    return _finish(-(_clamp(s) * a).sum(-1), labels)
