"""The losses of DESIGN.md §1 as pure torch functions: per-token forms (B, T), then a masked reduction.

Every function takes already aligned tensors: `logits[b, t]` predicts `labels[b, t]` (the next-token shift
is done once, in the data/model layer). `labels == IGNORE_INDEX` marks positions that do not count; per-token
forms are 0 there. Softmaxes run in float32 whatever the input dtype (float64 stays float64), so losses are
float32 (float64) scalars. Teachers and advantages never receive gradients.

Top-k forms read a teacher cache that holds, per token, the teacher's top-k ids, their log-probs and the log
of the remaining mass (the "rest" bin, `topk_rest_logp`); KL and the ADPA term then run over k + 1 bins and
equal the full-vocabulary forms when k = V.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

IGNORE_INDEX = -100
REDUCTIONS = ("sequence", "token")


def _float(x: Tensor) -> Tensor:
    """float32 view of half/bfloat16/float32 inputs; float64 stays float64."""
    return x if x.dtype == torch.float64 else x.float()


def _counted(labels: Tensor) -> Tensor:
    return labels != IGNORE_INDEX  # (B, T)


def _finish(per_token: Tensor, labels: Tensor) -> Tensor:
    """Zeroes the positions that do not count (B, T)."""
    return torch.where(_counted(labels), per_token, 0.0)


def _gather_logps(logits: Tensor, ids: Tensor) -> Tensor:
    """log softmax(logits) at `ids` (B, T, K), without a full (B, T, V) log-softmax; negative ids read 0."""
    logits = _float(logits)  # (B, T, V)
    picked = logits.gather(-1, ids.long().clamp(min=0))  # (B, T, K)
    return picked - torch.logsumexp(logits, dim=-1, keepdim=True)


def masked_reduce(per_token: Tensor, mask: Tensor, reduction: str = "sequence") -> Tensor:
    """Reduces per-token values (B, T) over the counted positions `mask` (B, T) to a scalar (DESIGN §1).

    `sequence`: mean over each sequence's counted tokens, then over the sequences that have one. `token`: one
    mean over all counted tokens. No counted token gives exactly 0 that still back-propagates (zero grads).
    """
    if reduction not in REDUCTIONS:
        raise ValueError(f"reduction={reduction!r} is not valid; choose one of {', '.join(REDUCTIONS)}")
    values = torch.where(mask, per_token, 0.0)  # (B, T); NaN/inf in uncounted positions never reach the sum
    counts = mask.sum(-1)  # (B,)
    if reduction == "token":
        return values.sum() / counts.sum().clamp(min=1)
    per_sequence = values.sum(-1) / counts.clamp(min=1)  # (B,)
    return per_sequence.sum() / (counts > 0).sum().clamp(min=1)


def sequence_logps(logits: Tensor, labels: Tensor) -> Tensor:
    """Summed label log-probs of each sequence over its counted positions (B,): the `lp` of the DPO loss."""
    label_logps = _gather_logps(logits, labels.unsqueeze(-1)).squeeze(-1)  # (B, T)
    return _finish(label_logps, labels).sum(-1)


def nll_per_token(logits: Tensor, labels: Tensor) -> Tensor:
    """SFT term `-log pi_theta(y_t | s_t)` per position (B, T)."""
    return _finish(-_gather_logps(logits, labels.unsqueeze(-1)).squeeze(-1), labels)


def nll_loss(logits: Tensor, labels: Tensor, reduction: str = "sequence") -> Tensor:
    """Reduced SFT loss (DESIGN §1 `nll`)."""
    return masked_reduce(nll_per_token(logits, labels), _counted(labels), reduction)


def forward_kl_per_token(student_logits: Tensor, teacher_logits: Tensor, labels: Tensor) -> Tensor:
    """KL(teacher || student) = sum_a p_T(a) (log p_T(a) - log p_S(a)) per position (B, T), temperature 1.

    The DCKD KL constraints (DESIGN §1 `forward_kl`). Tokens the teacher gives probability 0 (logit -inf)
    contribute 0.
    """
    logp_s = F.log_softmax(_float(student_logits), dim=-1)  # (B, T, V)
    with torch.no_grad():
        logp_t = F.log_softmax(_float(teacher_logits), dim=-1)  # (B, T, V)
        p_t = logp_t.exp()  # (B, T, V)
        logp_t.clamp_(min=torch.finfo(logp_t.dtype).min)  # p_T = 0: 0 * finite, never 0 * -inf
    return _finish((p_t * (logp_t - logp_s)).sum(-1), labels)


def forward_kl_loss(
    student_logits: Tensor, teacher_logits: Tensor, labels: Tensor, reduction: str = "sequence"
) -> Tensor:
    """Reduced KL(teacher || student) (DESIGN §1 `forward_kl`)."""
    return masked_reduce(
        forward_kl_per_token(student_logits, teacher_logits, labels), _counted(labels), reduction
    )


@torch.no_grad()
def token_advantages(
    dpo_logits: Tensor,
    ref_logits: Tensor | None,
    beta: float = 1.0,
    clip: Sequence[float] | None = None,
    topk: int | None = None,
) -> Tensor:
    """Token advantages A_t(a) = beta (log pi_dpo(a|s_t) - log pi_ref(a|s_t)) for every token (B, T, V).

    The paper's token-level advantage (DESIGN §1 `advantage`). `ref_logits=None` is the no-reference
    ablation, beta log pi_dpo. `clip=(lo, hi)` clamps A; `topk=k` then sets A to exactly 0 outside the DPO
    teacher's top k tokens (support restriction).
    """
    adv = F.log_softmax(_float(dpo_logits), dim=-1)  # (B, T, V)
    if ref_logits is not None:
        adv -= F.log_softmax(_float(ref_logits), dim=-1)
    adv *= beta
    if clip is not None:
        adv.clamp_(float(clip[0]), float(clip[1]))
    if topk is not None:
        if topk < 1:
            raise ValueError(f"topk={topk} must be >= 1")
        ids = dpo_logits.topk(min(topk, adv.shape[-1]), dim=-1).indices  # (B, T, k)
        adv = torch.zeros_like(adv).scatter_(-1, ids, adv.gather(-1, ids))
    return adv


def adpa_per_token(student_logits: Tensor, advantages: Tensor, labels: Tensor) -> Tensor:
    """Minus the student's expected advantage, -sum_a pi_theta(a|s_t) A_t(a), per position (B, T).

    The ADPA objective's distillation term (DESIGN §1 `adpa_term`); `advantages` (B, T, V) come from
    `token_advantages`.
    """
    probs = F.softmax(_float(student_logits), dim=-1)  # (B, T, V)
    return _finish(-(probs * advantages.detach()).sum(-1), labels)


def adpa_loss_term(
    student_logits: Tensor, advantages: Tensor, labels: Tensor, reduction: str = "sequence"
) -> Tensor:
    """Reduced ADPA term (DESIGN §1 `adpa_term`)."""
    return masked_reduce(adpa_per_token(student_logits, advantages, labels), _counted(labels), reduction)


def _dpo_log_ratios(
    policy_chosen_logps: Tensor,
    policy_rejected_logps: Tensor,
    ref_chosen_logps: Tensor,
    ref_rejected_logps: Tensor,
) -> tuple[Tensor, Tensor]:
    chosen = _float(policy_chosen_logps) - _float(ref_chosen_logps).detach()  # (N,)
    rejected = _float(policy_rejected_logps) - _float(ref_rejected_logps).detach()  # (N,)
    return chosen, rejected


def dpo_per_pair(
    policy_chosen_logps: Tensor,
    policy_rejected_logps: Tensor,
    ref_chosen_logps: Tensor,
    ref_rejected_logps: Tensor,
    beta: float = 0.1,
) -> Tensor:
    """-log sigmoid(beta ((lp_w - lpref_w) - (lp_l - lpref_l))) per pair (N,) (DESIGN §1 `dpo`).

    All inputs (N,) are summed response log-probs (`sequence_logps`); the reference gets no gradient.
    """
    chosen, rejected = _dpo_log_ratios(
        policy_chosen_logps, policy_rejected_logps, ref_chosen_logps, ref_rejected_logps
    )
    return -F.logsigmoid(beta * (chosen - rejected))


def dpo_loss(
    policy_chosen_logps: Tensor,
    policy_rejected_logps: Tensor,
    ref_chosen_logps: Tensor,
    ref_rejected_logps: Tensor,
    beta: float = 0.1,
) -> Tensor:
    """The DPO loss: mean over pairs of `dpo_per_pair` (DESIGN §1 `dpo`)."""
    return dpo_per_pair(
        policy_chosen_logps, policy_rejected_logps, ref_chosen_logps, ref_rejected_logps, beta
    ).mean()


@torch.no_grad()
def dpo_implicit_rewards(
    policy_chosen_logps: Tensor,
    policy_rejected_logps: Tensor,
    ref_chosen_logps: Tensor,
    ref_rejected_logps: Tensor,
    beta: float = 0.1,
) -> tuple[Tensor, Tensor]:
    """DPO implicit rewards beta (lp - lpref) of the chosen and rejected responses, (N,) each (metrics)."""
    chosen, rejected = _dpo_log_ratios(
        policy_chosen_logps, policy_rejected_logps, ref_chosen_logps, ref_rejected_logps
    )
    return beta * chosen, beta * rejected


# ---------------------------------------------------------------- top-k (cached teacher) forms


def log1mexp(x: Tensor) -> Tensor:
    """log(1 - exp(x)) for x <= 0, accurate over the whole range (Maechler 2012, two branches at -log 2).

    -inf at x = 0 (with an infinite gradient): callers keep 0 out of it.
    """
    return torch.where(x > -math.log(2.0), torch.log(-torch.expm1(x)), torch.log1p(-torch.exp(x)))


def topk_rest_logp(topk_logps: Tensor) -> Tensor:
    """Log of the mass outside the top-k bins, log(1 - sum_k p_k), from top-k log-probs (B, T, K) -> (B, T).

    -inf where that mass is below the float resolution (k = V, or all mass on the top k): no rest bin.
    This is the "rest" bin a teacher cache stores (compute it from float32 log-probs before storing them).
    """
    lse = torch.logsumexp(_float(topk_logps), dim=-1)  # (B, T)
    has_rest = lse < -torch.finfo(lse.dtype).eps
    safe = torch.where(has_rest, lse, -1.0)  # keep log1mexp(0) = -inf (and its infinite gradient) out
    return torch.where(has_rest, log1mexp(safe), -math.inf)


def topk_forward_kl_per_token(
    student_logits: Tensor,
    topk_ids: Tensor,
    teacher_topk_logps: Tensor,
    labels: Tensor,
    teacher_rest_logp: Tensor | None = None,
) -> Tensor:
    """KL(teacher || student) over k + 1 bins (the teacher's top-k ids and the rest) per position (B, T).

    sum_k p_T,k (log p_T,k - log p_S(id_k)) + p_T,rest (log p_T,rest - log p_S,rest), with `topk_ids` and
    `teacher_topk_logps` (B, T, K) and `teacher_rest_logp` (B, T), by default from `topk_rest_logp`. The
    student's rest mass is floored at the float resolution so that its log and gradient stay finite.
    """
    logp_s = _gather_logps(student_logits, topk_ids)  # (B, T, K)
    with torch.no_grad():
        logp_t = _float(teacher_topk_logps)  # (B, T, K)
        rest_t = topk_rest_logp(logp_t) if teacher_rest_logp is None else _float(teacher_rest_logp)  # (B, T)
        has_rest = rest_t > -math.inf
        rest_t = torch.where(has_rest, rest_t, 0.0)  # a safe value where there is no rest bin
        p_t, p_rest = logp_t.exp(), rest_t.exp()
        logp_t = logp_t.clamp(min=torch.finfo(logp_t.dtype).min)  # p_T,k = 0: 0 * finite
    eps = torch.finfo(logp_s.dtype).eps
    rest_s = log1mexp(torch.logsumexp(logp_s, dim=-1).clamp(max=-eps))  # (B, T)
    head = (p_t * (logp_t - logp_s)).sum(-1)  # (B, T)
    return _finish(head + torch.where(has_rest, p_rest * (rest_t - rest_s), 0.0), labels)


def topk_forward_kl_loss(
    student_logits: Tensor,
    topk_ids: Tensor,
    teacher_topk_logps: Tensor,
    labels: Tensor,
    teacher_rest_logp: Tensor | None = None,
    reduction: str = "sequence",
) -> Tensor:
    """Reduced top-k KL(teacher || student) (DESIGN §1 `forward_kl`, top-k cache)."""
    per_token = topk_forward_kl_per_token(
        student_logits, topk_ids, teacher_topk_logps, labels, teacher_rest_logp
    )
    return masked_reduce(per_token, _counted(labels), reduction)


@torch.no_grad()
def topk_token_advantages(
    dpo_topk_logps: Tensor,
    ref_topk_logps: Tensor | None,
    beta: float = 1.0,
    clip: Sequence[float] | None = None,
) -> Tensor:
    """Advantages beta (log pi_dpo - log pi_ref) at the cached ids (B, T, K), clamped to `clip` if given;
    `ref_topk_logps=None` is the no-reference ablation, beta log pi_dpo."""
    adv = beta * _float(dpo_topk_logps)  # (B, T, K)
    if ref_topk_logps is not None:
        adv = adv - beta * _float(ref_topk_logps)
    return adv if clip is None else adv.clamp_(float(clip[0]), float(clip[1]))


def topk_adpa_per_token(
    student_logits: Tensor,
    topk_ids: Tensor,
    topk_advantages: Tensor,
    labels: Tensor,
    rest_advantage: Tensor | None = None,
) -> Tensor:
    """ADPA term over k + 1 bins, -[sum_k p_S(id_k) A_k + p_S,rest A_rest], per position (B, T).

    `topk_ids`, `topk_advantages` (B, T, K); `rest_advantage` (B, T) is the rest bin's advantage (0 if None).
    """
    p_s = _gather_logps(student_logits, topk_ids).exp()  # (B, T, K)
    expected = (p_s * topk_advantages.detach()).sum(-1)  # (B, T)
    if rest_advantage is not None:
        rest_s = (1.0 - p_s.sum(-1)).clamp(min=0.0)  # (B, T)
        expected = expected + rest_s * rest_advantage.detach()
    return _finish(-expected, labels)


def topk_adpa_loss_term(
    student_logits: Tensor,
    topk_ids: Tensor,
    topk_advantages: Tensor,
    labels: Tensor,
    rest_advantage: Tensor | None = None,
    reduction: str = "sequence",
) -> Tensor:
    """Reduced top-k ADPA term (DESIGN §1 `adpa_term`, top-k cache)."""
    per_token = topk_adpa_per_token(student_logits, topk_ids, topk_advantages, labels, rest_advantage)
    return masked_reduce(per_token, _counted(labels), reduction)
