"""Naive float64 reference implementations of every function in `adpa_core.losses`.

Written independently of the library: Python loops over batch, positions and vocabulary on 0-d float64
tensors, so `torch.autograd` through the loops gives reference gradients. Slow by design: small shapes only.
Per-token forms are 0 at positions whose label is IGNORE_INDEX, as in the library.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch
from torch import Tensor

IGNORE_INDEX = -100


def _zero() -> Tensor:
    return torch.zeros((), dtype=torch.float64)


def _row(x: Tensor, b: int, t: int) -> list[Tensor]:
    """The vocabulary row x[b, t] as a list of 0-d float64 tensors (autograd flows through them)."""
    return list(x[b, t].double().unbind())


def _log_softmax(row: list[Tensor]) -> list[Tensor]:
    shift = max(float(v.detach()) for v in row)  # a constant: avoids overflow, gradient-neutral
    log_total = torch.log(sum(torch.exp(v - shift) for v in row)) + shift
    return [v - log_total for v in row]


def _per_token(fn: Callable[[int, int], Tensor], labels: Tensor) -> Tensor:
    """(B, T) float64 tensor of fn(b, t) at counted positions and 0 elsewhere."""
    n_b, n_t = labels.shape
    return torch.stack(
        [
            torch.stack([fn(b, t) if int(labels[b, t]) != IGNORE_INDEX else _zero() for t in range(n_t)])
            for b in range(n_b)
        ]
    )


def masked_reduce(per_token: Tensor, mask: Tensor, reduction: str = "sequence") -> Tensor:
    n_b, n_t = per_token.shape
    seqs = [[per_token[b, t].double() for t in range(n_t) if bool(mask[b, t])] for b in range(n_b)]
    if reduction == "token":
        flat = [v for seq in seqs for v in seq]
        return sum(flat) / len(flat) if flat else _zero()
    means = [sum(seq) / len(seq) for seq in seqs if seq]
    return sum(means) / len(means) if means else _zero()


def _reduce_by_labels(per_token: Tensor, labels: Tensor, reduction: str) -> Tensor:
    return masked_reduce(per_token, labels != IGNORE_INDEX, reduction)


def sequence_logps(logits: Tensor, labels: Tensor) -> Tensor:
    n_b, n_t = labels.shape
    out = []
    for b in range(n_b):
        total = _zero()
        for t in range(n_t):
            label = int(labels[b, t])
            if label != IGNORE_INDEX:
                total = total + _log_softmax(_row(logits, b, t))[label]
        out.append(total)
    return torch.stack(out)


def nll_per_token(logits: Tensor, labels: Tensor) -> Tensor:
    return _per_token(lambda b, t: -_log_softmax(_row(logits, b, t))[int(labels[b, t])], labels)


def nll_loss(logits: Tensor, labels: Tensor, reduction: str = "sequence") -> Tensor:
    return _reduce_by_labels(nll_per_token(logits, labels), labels, reduction)


def forward_kl_per_token(student_logits: Tensor, teacher_logits: Tensor, labels: Tensor) -> Tensor:
    def kl(b: int, t: int) -> Tensor:
        log_p = [float(v) for v in _log_softmax(_row(teacher_logits.detach(), b, t))]
        log_q = _log_softmax(_row(student_logits, b, t))
        total = _zero()
        for lp, lq in zip(log_p, log_q, strict=True):
            if lp > -math.inf:  # 0 log 0 = 0
                total = total + math.exp(lp) * (lp - lq)
        return total

    return _per_token(kl, labels)


def forward_kl_loss(
    student_logits: Tensor, teacher_logits: Tensor, labels: Tensor, reduction: str = "sequence"
) -> Tensor:
    return _reduce_by_labels(forward_kl_per_token(student_logits, teacher_logits, labels), labels, reduction)


def token_advantages(
    dpo_logits: Tensor,
    ref_logits: Tensor | None,
    beta: float = 1.0,
    clip: Sequence[float] | None = None,
    topk: int | None = None,
) -> Tensor:
    n_b, n_t, n_v = dpo_logits.shape
    out = torch.zeros((n_b, n_t, n_v), dtype=torch.float64)
    with torch.no_grad():
        for b in range(n_b):
            for t in range(n_t):
                log_dpo = [float(v) for v in _log_softmax(_row(dpo_logits, b, t))]
                log_ref = (
                    [0.0] * n_v
                    if ref_logits is None
                    else [float(v) for v in _log_softmax(_row(ref_logits, b, t))]
                )
                order = sorted(range(n_v), key=lambda a: -float(dpo_logits[b, t, a]))
                support = set(order[:topk]) if topk is not None else set(range(n_v))
                for a in range(n_v):
                    value = beta * (log_dpo[a] - log_ref[a])
                    if clip is not None:
                        value = min(max(value, clip[0]), clip[1])
                    out[b, t, a] = value if a in support else 0.0
    return out


def adpa_per_token(student_logits: Tensor, advantages: Tensor, labels: Tensor) -> Tensor:
    def term(b: int, t: int) -> Tensor:
        log_q = _log_softmax(_row(student_logits, b, t))
        adv = [float(v) for v in advantages[b, t]]
        return -sum((torch.exp(lq) * a for lq, a in zip(log_q, adv, strict=True)), _zero())

    return _per_token(term, labels)


def adpa_loss_term(
    student_logits: Tensor, advantages: Tensor, labels: Tensor, reduction: str = "sequence"
) -> Tensor:
    return _reduce_by_labels(adpa_per_token(student_logits, advantages, labels), labels, reduction)


def _dpo_margins(pc: Tensor, pr: Tensor, rc: Tensor, rr: Tensor) -> list[tuple[Tensor, Tensor]]:
    return [
        (pc[i].double() - float(rc[i]), pr[i].double() - float(rr[i]))  # reference: constants
        for i in range(pc.shape[0])
    ]


def dpo_per_pair(
    policy_chosen_logps: Tensor,
    policy_rejected_logps: Tensor,
    ref_chosen_logps: Tensor,
    ref_rejected_logps: Tensor,
    beta: float = 0.1,
) -> Tensor:
    pairs = _dpo_margins(policy_chosen_logps, policy_rejected_logps, ref_chosen_logps, ref_rejected_logps)
    return torch.stack([torch.log(1.0 + torch.exp(-beta * (c - r))) for c, r in pairs])  # -log sigmoid


def dpo_loss(
    policy_chosen_logps: Tensor,
    policy_rejected_logps: Tensor,
    ref_chosen_logps: Tensor,
    ref_rejected_logps: Tensor,
    beta: float = 0.1,
) -> Tensor:
    pairs = _dpo_margins(policy_chosen_logps, policy_rejected_logps, ref_chosen_logps, ref_rejected_logps)
    total = _zero()
    for chosen, rejected in pairs:
        z = beta * (chosen - rejected)
        total = total + torch.log(1.0 + torch.exp(-z))  # -log sigmoid(z)
    return total / len(pairs)


def dpo_implicit_rewards(
    policy_chosen_logps: Tensor,
    policy_rejected_logps: Tensor,
    ref_chosen_logps: Tensor,
    ref_rejected_logps: Tensor,
    beta: float = 0.1,
) -> tuple[Tensor, Tensor]:
    pairs = _dpo_margins(policy_chosen_logps, policy_rejected_logps, ref_chosen_logps, ref_rejected_logps)
    chosen = torch.tensor([beta * float(c) for c, _ in pairs], dtype=torch.float64)
    rejected = torch.tensor([beta * float(r) for _, r in pairs], dtype=torch.float64)
    return chosen, rejected


def log1mexp(x: Tensor) -> Tensor:
    flat = [torch.log1p(-torch.exp(v)) for v in x.double().reshape(-1).unbind()]  # float64: enough here
    return torch.stack(flat).reshape(x.shape)


def topk_rest_logp(topk_logps: Tensor) -> Tensor:
    n_b, n_t, _ = topk_logps.shape
    out = torch.empty((n_b, n_t), dtype=torch.float64)
    for b in range(n_b):
        for t in range(n_t):
            rest = 1.0 - sum(math.exp(float(v)) for v in topk_logps[b, t])
            out[b, t] = math.log(rest) if rest > 1e-12 else -math.inf
    return out


def topk_forward_kl_per_token(
    student_logits: Tensor,
    topk_ids: Tensor,
    teacher_topk_logps: Tensor,
    labels: Tensor,
    teacher_rest_logp: Tensor | None = None,
) -> Tensor:
    def kl(b: int, t: int) -> Tensor:
        log_q = _log_softmax(_row(student_logits, b, t))
        ids = [int(i) for i in topk_ids[b, t]]
        p_top = [math.exp(float(v)) for v in teacher_topk_logps[b, t]]
        given_rest = None if teacher_rest_logp is None else float(teacher_rest_logp[b, t])
        p_rest = 1.0 - sum(p_top) if given_rest is None else math.exp(given_rest)
        total = _zero()
        for p, i in zip(p_top, ids, strict=True):
            if p > 0:
                total = total + p * (math.log(p) - log_q[i])
        if p_rest > 1e-12:  # no rest bin otherwise (k = V)
            q_rest = 1.0 - sum(torch.exp(log_q[i]) for i in ids)
            total = total + p_rest * (math.log(p_rest) - torch.log(q_rest))
        return total

    return _per_token(kl, labels)


def topk_forward_kl_loss(
    student_logits: Tensor,
    topk_ids: Tensor,
    teacher_topk_logps: Tensor,
    labels: Tensor,
    teacher_rest_logp: Tensor | None = None,
    reduction: str = "sequence",
) -> Tensor:
    per_token = topk_forward_kl_per_token(
        student_logits, topk_ids, teacher_topk_logps, labels, teacher_rest_logp
    )
    return _reduce_by_labels(per_token, labels, reduction)


def topk_token_advantages(
    dpo_topk_logps: Tensor, ref_topk_logps: Tensor, beta: float = 1.0, clip: Sequence[float] | None = None
) -> Tensor:
    out = torch.empty(dpo_topk_logps.shape, dtype=torch.float64)
    n_b, n_t, n_k = dpo_topk_logps.shape
    for b in range(n_b):
        for t in range(n_t):
            for k in range(n_k):
                value = beta * (float(dpo_topk_logps[b, t, k]) - float(ref_topk_logps[b, t, k]))
                out[b, t, k] = value if clip is None else min(max(value, clip[0]), clip[1])
    return out


def topk_adpa_per_token(
    student_logits: Tensor,
    topk_ids: Tensor,
    topk_advantages: Tensor,
    labels: Tensor,
    rest_advantage: Tensor | None = None,
) -> Tensor:
    def term(b: int, t: int) -> Tensor:
        log_q = _log_softmax(_row(student_logits, b, t))
        q_top = [torch.exp(log_q[int(i)]) for i in topk_ids[b, t]]
        total = sum((q * float(a) for q, a in zip(q_top, topk_advantages[b, t], strict=True)), _zero())
        if rest_advantage is not None:
            q_rest = torch.clamp(1.0 - sum(q_top), min=0.0)
            total = total + q_rest * float(rest_advantage[b, t])
        return -total

    return _per_token(term, labels)


def topk_adpa_loss_term(
    student_logits: Tensor,
    topk_ids: Tensor,
    topk_advantages: Tensor,
    labels: Tensor,
    rest_advantage: Tensor | None = None,
    reduction: str = "sequence",
) -> Tensor:
    per_token = topk_adpa_per_token(student_logits, topk_ids, topk_advantages, labels, rest_advantage)
    return _reduce_by_labels(per_token, labels, reduction)


# ---------------------------------------------------------------- the released code's semantics
#
# A transcription of the released training script and its precompute scripts, one position at a time:
# teacher data as the precompute stores it (each teacher's own top-k probabilities as {id: p} dicts), the
# margin (advantage) dict built from the two dicts, the loader's clamps as Python conditionals (a value
# replaced by a constant carries no gradient), token means per micro-batch. Each detail is switched by the
# name of its `objective.released_code` switch, so that one can be turned off at a time.

P_LO, P_HI, FLOOR = 1e-8, 1.0 - 1e-8, 1e-7


def _const(x: float) -> Tensor:
    return torch.tensor(x, dtype=torch.float64)


def _clamped(p: Tensor) -> Tensor:
    """torch.clamp(p, 1e-8, 1 - 1e-8): a constant outside (no gradient there)."""
    value = float(p.detach())
    return _const(P_LO) if value < P_LO else _const(P_HI) if value > P_HI else p


def _top(probs: list[float], k: int) -> dict[int, float]:
    """A teacher's compressed top-k as the precompute stores it: {id: probability}, highest first."""
    order = sorted(range(len(probs)), key=lambda a: -probs[a])[:k]
    return {a: probs[a] for a in order}


def _margin(dpo: dict[int, float], ref: dict[int, float], ref_all: list[float], sw: dict, beta: float):
    """The advantage at each DPO top-k id ({id: A}, before the clip)."""
    floor = (lambda p: max(p, FLOOR)) if sw["advantage_floor"] else (lambda p: p)
    if sw["reference_imputation"]:  # default for every id: the smallest DPO probability, floored
        fallback = max(min(dpo.values()), FLOOR)
        p_ref = {a: floor(ref[a]) if a in ref else fallback for a in dpo}
    else:
        p_ref = {a: floor(ref_all[a]) for a in dpo}
    scale = 1.0 if sw["unit_beta"] else beta
    return {a: scale * math.log(floor(p) / p_ref[a]) for a, p in dpo.items()}


def _released_kl(log_q: list[Tensor], dpo_all: list[float], k: int, sw: dict, topk: bool, data: bool):
    if not topk:  # the full-vocabulary KL
        if not data:
            return _zero()
        return sum((p * (math.log(p) - lq) for p, lq in zip(dpo_all, log_q, strict=True) if p > 0), _zero())
    top = _top(dpo_all, k)
    q = [torch.exp(log_q[a]) for a in top]
    q.append(1.0 - sum(q))  # the student's rest bin, before any clamp
    p = [*top.values(), 1.0 - sum(top.values())]
    if not sw["prob_floors"]:  # exact: the rest bin's mass summed over the tokens outside the top-k
        if not data:
            return _zero()
        q[-1] = sum((torch.exp(lq) for a, lq in enumerate(log_q) if a not in top), _zero())
        terms = [pi * (math.log(pi) - torch.log(qi)) for pi, qi in zip(p, q, strict=True) if pi > 1e-12]
        return sum(terms, _zero())
    if not data:  # no teacher data: both sides all zeros before the clamps
        q, p = [_const(0.0)] * len(q), [0.0] * len(p)
    q = [_clamped(qi) for qi in q]
    q = [_const(FLOOR) if float(qi.detach()) < FLOOR else qi for qi in q]
    p = [min(max(pi, P_LO), P_HI) for pi in p]
    return sum((pi * (math.log(pi) - torch.log(qi)) for pi, qi in zip(p, q, strict=True)), _zero())


def _released_adpa(log_q, dpo_all, ref_all, k, sw, beta, clip, data: bool) -> Tensor:
    top = _top(dpo_all, k)
    margin = _margin(top, _top(ref_all, k), ref_all, sw, beta)
    cut = (lambda a: min(max(a, clip[0]), clip[1])) if clip is not None else (lambda a: a)
    ids = list(margin)
    s = [torch.exp(log_q[a]) for a in ids]
    adv = [cut(margin[a]) for a in ids]
    if sw["prob_floors"]:  # the rest bin, with the margin dict's missing rest mass 0 through the clamp
        s.append(1.0 - sum(s))
        adv.append(cut(0.0))
    if not data:
        s, adv = [_const(0.0)] * len(s), [cut(0.0)] * len(adv)
    if sw["prob_floors"]:
        s = [_clamped(si) for si in s]
    return -sum((si * a for si, a in zip(s, adv, strict=True)), _zero())


def released_objective(
    micro_batches: list[dict[str, dict[str, Tensor]]],
    method: str,
    switches: dict[str, bool],
    *,
    k: int,
    eot: int,
    cached: bool = False,
    gamma: float = 1.6,
    beta: float = 1.0,
    clip: Sequence[float] | None = (1e-8, 1 - 1e-8),
    w_kl: float = 0.1,
) -> Tensor:
    """The step loss of `method` (kd, dckd or adpa) over `micro_batches`, each {group: {"student",
    "labels", "dpo", "ref"}} with (B, T, V) logits and (B, T) labels. `cached`: the teacher is a top-k
    cache (KL over k + 1 bins whatever `kl_topk_online` says)."""
    terms = {"nll": ("chosen", 1.0)}
    if method == "adpa":
        terms["adpa"] = ("yhat", gamma)
    else:
        terms["kl_chosen"] = ("chosen", w_kl)
        if method == "dckd":
            terms["kl_rejected"] = ("rejected", w_kl)
    total = _zero()
    for name, (group, weight) in terms.items():
        per_mb = []  # per micro-batch: per sequence: [token values]
        for mb in micro_batches:
            g = mb[group]
            seqs = []
            for b in range(g["labels"].shape[0]):
                counted = [t for t in range(g["labels"].shape[1]) if int(g["labels"][b, t]) != IGNORE_INDEX]
                values = []
                for t in counted:
                    label = int(g["labels"][b, t])
                    log_q = _log_softmax(_row(g["student"], b, t))
                    if name == "nll":
                        values.append(-log_q[label])
                        continue
                    data = not (switches["eos_without_teacher"] and t == counted[-1] and label == eot)
                    dpo_all = [math.exp(float(v)) for v in _log_softmax(_row(g["dpo"].detach(), b, t))]
                    if name == "adpa":
                        ref_all = [math.exp(float(v)) for v in _log_softmax(_row(g["ref"].detach(), b, t))]
                        values.append(_released_adpa(log_q, dpo_all, ref_all, k, switches, beta, clip, data))
                    else:
                        topk = cached or switches["kl_topk_online"]
                        values.append(_released_kl(log_q, dpo_all, k, switches, topk, data))
                if values:
                    seqs.append(values)
            per_mb.append(seqs)
        if switches["micro_batch_mean"]:  # a token mean per micro-batch, then the mean over micro-batches
            means = [sum(v for s in seqs for v in s) / sum(len(s) for s in seqs) for seqs in per_mb if seqs]
        else:  # the library's default: mean of per-sequence means over the whole step
            means = [sum(s) / len(s) for seqs in per_mb for s in seqs]
        total = total + weight * (sum(means) / len(means))
    return total


# ---------------------------------------------------------------- a cached teacher, from the full logits


def _top_ids(row: list[float], k: int) -> list[int]:
    """The ids of the k largest values of a row, largest first."""
    return sorted(range(len(row)), key=lambda a: -row[a])[:k]


def cached_kl_per_token(student_logits: Tensor, teacher_logits: Tensor, labels: Tensor, k: int) -> Tensor:
    """KL(teacher || student) as a top-k cache of the teacher gives it: the teacher's k most likely tokens,
    and one rest bin holding the remaining mass of each model (B, T)."""

    def kl(b: int, t: int) -> Tensor:
        log_p = [float(v) for v in _log_softmax(_row(teacher_logits.detach(), b, t))]
        log_q = _log_softmax(_row(student_logits, b, t))
        ids = _top_ids(log_p, k)
        total = sum((math.exp(log_p[i]) * (log_p[i] - log_q[i]) for i in ids), _zero())
        p_rest = 1.0 - sum(math.exp(log_p[i]) for i in ids)
        if p_rest > 1e-12:
            q_rest = 1.0 - sum(torch.exp(log_q[i]) for i in ids)
            total = total + p_rest * (math.log(p_rest) - torch.log(q_rest))
        return total

    return _per_token(kl, labels)


def cached_full_adpa_per_token(
    student_logits: Tensor,
    dpo_logits: Tensor,
    ref_logits: Tensor,
    labels: Tensor,
    k: int,
    beta: float = 1.0,
    clip: Sequence[float] | None = None,
) -> Tensor:
    """The ADPA term with `support: full` read from a top-k cache (B, T): the DPO teacher's k most likely
    tokens each with its advantage, plus one rest bin for every other token, whose advantage is
    beta * (log pi_dpo(rest) - log pi_ref(rest)) with pi(rest) = 1 - the model's mass on the k ids."""

    def term(b: int, t: int) -> Tensor:
        log_dpo = [float(v) for v in _log_softmax(_row(dpo_logits, b, t))]
        log_ref = [float(v) for v in _log_softmax(_row(ref_logits, b, t))]
        log_q = _log_softmax(_row(student_logits, b, t))
        ids = _top_ids(log_dpo, k)

        def clipped(value: float) -> float:
            return value if clip is None else min(max(value, clip[0]), clip[1])

        total = sum((torch.exp(log_q[i]) * clipped(beta * (log_dpo[i] - log_ref[i])) for i in ids), _zero())
        dpo_rest = 1.0 - sum(math.exp(log_dpo[i]) for i in ids)
        ref_rest = 1.0 - sum(math.exp(log_ref[i]) for i in ids)
        if dpo_rest > 1e-12 and ref_rest > 1e-12:
            q_rest = 1.0 - sum(torch.exp(log_q[i]) for i in ids)
            total = total + q_rest * clipped(beta * (math.log(dpo_rest) - math.log(ref_rest)))
        return -total

    return _per_token(term, labels)
