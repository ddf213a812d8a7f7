"""Per-token teacher advantages of a (prompt, response): the views that notebooks and the workbench show.

At every response position t the token advantage is A(s_t, a) = beta (log pi_dpo(a|s_t) - log pi_ref(a|s_t))
(DESIGN §1, `losses.token_advantages`); its sum over the response's own tokens is the DPO implicit reward
beta (log pi_dpo(y|x) - log pi_ref(y|x)). All tensor math is here; an `AdvantageReport` holds plain Python
lists, floats and strings, so the workbench and the CLI only format it.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field, fields
from typing import Any

import torch
from torch import Tensor, nn

from .data import (
    SFT_GROUPS,
    DataError,
    Dropped,
    collate,
    end_of_turn_id,
    pack_example,
    prompt_ids,
    tokenize_example,
)
from .losses import IGNORE_INDEX, adpa_per_token, sequence_logps, token_advantages
from .models import TeacherPair

Messages = list[dict[str, str]]
_UNLIMITED = 1 << 62  # a length budget that never truncates


@dataclass
class AdvantageReport:
    """Token advantages of one response: one list entry per response token (end-of-turn included)."""

    prompt: Messages
    """The prompt as chat messages."""
    tokens: list[str]
    """Each response token decoded on its own (special tokens such as the end-of-turn token kept)."""
    token_ids: list[int]
    advantage: list[float]
    """A(s_t, y_t) of the token in the response (no clip, no support restriction)."""
    logp_dpo: list[float]
    """log pi_dpo(y_t | s_t)."""
    logp_ref: list[float] | None
    """log pi_ref(y_t | s_t); None without a reference teacher."""
    total: float
    """sum_t advantage[t] = beta (log pi_dpo(y|x) - log pi_ref(y|x)), the DPO implicit reward."""
    alternatives: list[list[dict[str, Any]]]
    """The DPO teacher's top-k tokens per position, most probable first: token, token_id, advantage, p_dpo,
    p_ref (None without a reference), p_student (None without a student)."""
    teacher_expected_advantage: list[float]
    """sum_a pi_dpo(a|s_t) A_t(a) with the training advantages (`support`, `clip`)."""
    student_logp: list[float] | None = None
    """log pi_student(y_t | s_t); None without a student."""
    expected_advantage: list[float] | None = None
    """sum_a pi_student(a|s_t) A_t(a) with the training advantages: what ADPA raises (minus its loss term)."""
    beta: float = 1.0
    support: str = "full"
    support_k: int = 50
    clip: list[float] | None = None
    no_reference: bool = False
    """True when the pair has no reference teacher: A = beta log pi_dpo (all <= 0)."""
    truncated: bool = False
    """True when the response was cut to fit `max_length` (see `notes`)."""
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-serialisable dict (plain lists, floats, strings, None) that shares the report's lists
        (`dataclasses.asdict` deep-copies them: seconds for a reply of 1,000 tokens)."""
        return {f.name: getattr(self, f.name) for f in fields(self)}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> AdvantageReport:
        """The inverse of `to_dict` (unknown keys are ignored)."""
        return cls(**{f.name: data[f.name] for f in fields(cls) if f.name in data})

    def worst(self, n: int = 5) -> list[dict[str, Any]]:
        """The (at most) n positions with the most negative advantage, most negative first.

        Each is {index, token, token_id, advantage}; positions with advantage >= 0 are never listed.
        """
        order = sorted((i for i, a in enumerate(self.advantage) if a < 0), key=lambda i: self.advantage[i])
        adv, tok, ids = self.advantage, self.tokens, self.token_ids
        return [dict(index=i, token=tok[i], token_id=ids[i], advantage=adv[i]) for i in order[:n]]


def prompt_messages(prompt: Messages | str) -> Messages:
    """A plain string becomes one user message; a list of {role, content} messages is copied."""
    if isinstance(prompt, str):
        if not prompt.strip():
            raise DataError("the prompt is empty")
        return [{"role": "user", "content": prompt}]
    return [dict(m) for m in prompt]


def check_response(response: str | Sequence[int]) -> None:
    """Raises DataError for an empty response (blank text or no token ids): there is nothing to score."""
    if not (response.strip() if isinstance(response, str) else len(response)):
        raise DataError("the response is empty; give at least one token to score")


def encode_response(
    tokenizer: Any, messages: Messages, response: str | Sequence[int], max_length: int, eot_id: int
) -> tuple[dict[str, Any], list[str], bool]:
    """(prompt + response packed as in training {input_ids, labels, prompt_length}, notes, truncated).

    Text goes through the chat template (`data.tokenize_example`); token ids (a generated y_hat, its
    end-of-turn token included) are packed after the prompt ids as-is (`data.pack_example`).
    """
    check_response(response)
    if isinstance(response, str):
        full = tokenize_example(
            tokenizer,
            messages,
            response,
            max_length=_UNLIMITED,
            max_prompt_length=_UNLIMITED - 1,
            eot_id=eot_id,
        )
        if isinstance(full, Dropped):
            raise DataError(f"cannot score this response: {full.reason} ({full.detail})")
        cut = full["prompt_length"]
        prompt, resp = full["input_ids"][:cut], full["input_ids"][cut:]
    else:
        resp = [int(i) for i in response]
        bad = [i for i in resp if not 0 <= i < len(tokenizer)]
        if bad:
            raise DataError(f"response token id {bad[0]} is outside the tokenizer's {len(tokenizer)} ids")
        prompt = prompt_ids(tokenizer, messages)
    packed = pack_example(
        prompt, resp, max_length=max_length, max_prompt_length=max_length - 1, bos_id=tokenizer.bos_token_id
    )
    n_prompt, n_resp = packed["prompt_length"], len(packed["input_ids"]) - packed["prompt_length"]
    notes = []
    if n_prompt < len(prompt):
        notes.append(f"prompt cut to its last {n_prompt} of {len(prompt)} tokens (max_length={max_length})")
    if n_resp < len(resp):
        notes.append(f"response cut to its first {n_resp} of {len(resp)} tokens (max_length={max_length})")
    return packed, notes, n_resp < len(resp)


def _device(model: nn.Module) -> torch.device:
    return next(model.parameters()).device


def _check_options(beta: float, k: int, support: str, support_k: int, max_length: int) -> None:
    if not beta > 0:
        raise ValueError(f"beta={beta} must be > 0")
    if k < 1 or support_k < 1:
        raise ValueError(f"k={k} and support_k={support_k} must be >= 1")
    if support not in ("full", "topk"):
        raise ValueError(f"support={support!r}: choose 'full' or 'topk'")
    if max_length < 2:
        raise ValueError(f"max_length={max_length} must be >= 2 (one prompt and one response token)")


def context_length(*models: nn.Module | None) -> int | None:
    """The smallest `max_position_embeddings` of the models' configs (None when none says)."""
    found = [getattr(getattr(m, "config", None), "max_position_embeddings", None) for m in models]
    found = [int(n) for n in found if isinstance(n, int) and n > 0]
    return min(found) if found else None


def _student_outputs(student: nn.Module, input_ids: Tensor) -> Any:
    """The student's forward with dropout off (its train/eval mode is restored afterwards)."""
    was_training = student.training
    student.eval()
    try:
        return student(input_ids=input_ids.to(_device(student)))
    finally:
        student.train(was_training)


def _at(outputs: Any, positions: Tensor, vocab: int, device: torch.device) -> Tensor:
    """Logits at the response positions, cut to the tokenizer's ids (padded rows dropped) (1, N, V)."""
    logits = outputs.logits  # (1, L, V_model)
    return logits[:, positions.to(logits.device), :vocab].to(device)  # (1, N, V)


def _pick(x: Tensor, ids: Tensor) -> list[float]:
    """x (1, N, V) at one id per position, ids (1, N) -> N floats."""
    return x.gather(-1, ids.unsqueeze(-1))[0, :, 0].tolist()


def _alternatives(
    tokenizer: Any, logp_dpo: Tensor, adv: Tensor, logp_ref: Tensor | None, p_student: Tensor | None, k: int
) -> list[list[dict[str, Any]]]:
    """The DPO teacher's top-k tokens at each position, most probable first; inputs (1, N, V)."""
    top, ids = logp_dpo.topk(min(k, logp_dpo.shape[-1]), dim=-1)  # (1, N, k)
    cols = {
        "token_id": ids,
        "advantage": adv.gather(-1, ids),
        "p_dpo": top.exp(),
        "p_ref": None if logp_ref is None else logp_ref.gather(-1, ids).exp(),
        "p_student": None if p_student is None else p_student.gather(-1, ids),
    }
    lists = {name: None if col is None else col[0].tolist() for name, col in cols.items()}  # each (N, k)
    names = decode_each(tokenizer, {i for row in lists["token_id"] for i in row})
    rows = []
    for t in range(ids.shape[1]):
        row = []
        for j in range(ids.shape[2]):
            entry = {name: None if col is None else col[t][j] for name, col in lists.items()}
            row.append({"token": names[entry["token_id"]], **entry})
        rows.append(row)
    return rows


def decode_each(tokenizer: Any, ids: Any) -> dict[int, str]:
    """{id: the token decoded on its own} for each distinct id (a long reply repeats most of its ids)."""
    return {i: tokenizer.decode([i]) for i in set(ids)}


@torch.no_grad()
def response_advantages(
    pair: TeacherPair,
    tokenizer: Any,
    prompt: Messages | str,
    response: str | list[int],
    *,
    beta: float = 1.0,
    k: int = 10,
    student: nn.Module | None = None,
    support: str = "full",
    support_k: int = 50,
    clip: Sequence[float] | None = None,
    max_length: int = 2048,
) -> AdvantageReport:
    """Runs both teachers (and the student, if given) once on prompt + response; see `AdvantageReport`.

    `support`, `support_k` and `clip` shape the advantages of the expected-advantage views exactly as in
    training (`support="topk"`: A = 0 outside the DPO teacher's top `support_k`); `advantage`, `total` and
    the alternatives always show the raw A.
    """
    _check_options(beta, k, support, support_k, max_length)
    messages = prompt_messages(prompt)
    eot = end_of_turn_id(tokenizer)
    packed, notes, truncated = encode_response(tokenizer, messages, response, max_length, eot)
    vocab, device = len(tokenizer), _device(pair.dpo)
    input_ids = torch.tensor([packed["input_ids"]], device=device)  # (1, L)
    all_labels = torch.tensor(packed["labels"])  # (L,)
    positions = (all_labels != IGNORE_INDEX).nonzero().squeeze(-1)  # (N,)
    labels = all_labels[positions].unsqueeze(0).to(device)  # (1, N)
    dpo = _at(pair.dpo_forward(input_ids), positions, vocab, device)  # (1, N, V)
    ref = _at(pair.ref_forward(input_ids), positions, vocab, device) if pair.has_reference else None
    adv = token_advantages(dpo, ref, beta)  # (1, N, V)
    train_adv = token_advantages(dpo, ref, beta, clip=clip, topk=support_k if support == "topk" else None)
    logp_dpo = torch.log_softmax(dpo.float(), -1)  # (1, N, V)
    logp_ref = None if ref is None else torch.log_softmax(ref.float(), -1)  # (1, N, V)
    stu = None if student is None else _at(_student_outputs(student, input_ids), positions, vocab, device)
    logp_stu = None if stu is None else torch.log_softmax(stu.float(), -1)  # (1, N, V)
    if ref is None and support == "topk":
        notes.append(
            "no reference teacher: A = beta log pi_dpo <= 0, so a top-k support ranks the tokens outside "
            "it (A = 0) above the teacher's choices; use support='full'"
        )
    context = context_length(pair.dpo, pair.ref, student)
    if context is not None and input_ids.shape[1] > context:
        past = max(0, context - int(packed["prompt_length"]))
        notes.append(
            f"prompt + response are {input_ids.shape[1]} tokens, longer than the models' context of "
            f"{context}: the values from response position {past} on are past what the models were "
            "trained on"
        )
    ids = labels[0].tolist()
    names = decode_each(tokenizer, ids)
    token_adv = adv.gather(-1, labels.unsqueeze(-1))  # (1, N, 1)
    return AdvantageReport(
        prompt=messages,
        tokens=[names[i] for i in ids],
        token_ids=ids,
        advantage=token_adv[0, :, 0].tolist(),
        logp_dpo=_pick(logp_dpo, labels),
        logp_ref=None if logp_ref is None else _pick(logp_ref, labels),
        total=float(token_adv.double().sum()),
        alternatives=_alternatives(
            tokenizer, logp_dpo, adv, logp_ref, None if logp_stu is None else logp_stu.exp(), k
        ),
        teacher_expected_advantage=(-adpa_per_token(dpo, train_adv, labels))[0].tolist(),
        student_logp=None if logp_stu is None else _pick(logp_stu, labels),
        expected_advantage=None if stu is None else (-adpa_per_token(stu, train_adv, labels))[0].tolist(),
        beta=float(beta),
        support=support,
        support_k=int(support_k),
        clip=None if clip is None else [float(clip[0]), float(clip[1])],
        no_reference=ref is None,
        truncated=truncated,
        notes=notes,
    )


@torch.no_grad()
def batch_sequence_advantages(
    pair: TeacherPair,
    tokenizer: Any,
    rows: Sequence[dict[str, Any]],
    beta: float = 1.0,
    batch_size: int = 8,
    max_length: int = 2048,
) -> list[float]:
    """Summed token advantages, beta (log pi_dpo(y|x) - log pi_ref(y|x)), of each {prompt, response} row.

    The batched form of `AdvantageReport.total` (one float per row, in order); a response may be text or
    token ids. Without a reference teacher: beta log pi_dpo(y|x).
    """
    _check_options(beta, 1, "full", 1, max_length)
    if batch_size < 1:
        raise ValueError(f"batch_size={batch_size} must be >= 1")
    eot, vocab, device = end_of_turn_id(tokenizer), len(tokenizer), _device(pair.dpo)
    pad_id = eot if tokenizer.pad_token_id is None else tokenizer.pad_token_id
    encoded = []
    for i, row in enumerate(rows):
        try:
            packed, _, _ = encode_response(
                tokenizer, prompt_messages(row["prompt"]), row["response"], max_length, eot
            )
        except DataError as exc:
            raise DataError(f"row {i}: {exc}") from exc
        encoded.append({"id": str(i), **packed})
    totals: list[float] = []
    for start in range(0, len(encoded), batch_size):
        batch = collate(encoded[start : start + batch_size], SFT_GROUPS, pad_id)
        inputs = {key: batch[key].to(device) for key in ("input_ids", "attention_mask", "position_ids")}
        labels = batch["labels"].to(device)  # (B, L)
        logps = sequence_logps(pair.dpo_forward(**inputs).logits[..., :vocab], labels)  # (B,)
        if pair.has_reference:
            logps = logps - sequence_logps(pair.ref_forward(**inputs).logits[..., :vocab], labels)
        totals += (beta * logps.double()).tolist()
    return totals


def most_negative_position(report: AdvantageReport) -> int | None:
    """Index (into `report.tokens`) of the most negative token advantage; None for an empty report."""
    if not report.advantage:
        return None
    return min(range(len(report.advantage)), key=report.advantage.__getitem__)


def display_scale(values: Sequence[float], quantile: float = 0.98) -> list[float]:
    """Signed values -> [-1, 1] for a diverging colour map: v / s clipped, s a robust scale of |v|.

    Why robust: one extreme value, typically a -12 on the end-of-turn token of a reply that should have gone
    on, would make every other token nearly white under max-abs scaling. `s` is the `quantile` of |v| taken
    at the nearest rank below (so with fewer than ~50 values it is the second largest |v|: a single outlier
    saturates at +-1 and the rest keep their contrast); if that is 0, the largest |v|. 0 stays 0 (symmetric);
    NaN shows as 0.
    """
    if not 0.0 < quantile <= 1.0:
        raise ValueError(f"quantile={quantile} must be in (0, 1]")
    values = [float(v) for v in values]
    mags = sorted(abs(v) for v in values if math.isfinite(v))
    scale = (mags[math.floor(quantile * (len(mags) - 1))] or mags[-1]) if mags else 0.0
    return [_unit(v, scale) for v in values]


def _unit(v: float, scale: float) -> float:
    if math.isnan(v):
        return 0.0
    if math.isinf(v):
        return math.copysign(1.0, v)
    return max(-1.0, min(1.0, v / scale)) if scale > 0 else 0.0


def report_table(report: AdvantageReport) -> str:
    """A fixed-width text table of a report (the `adpa advantages` output)."""
    has_student = report.expected_advantage is not None
    head = f"{'pos':>4}  {'token':<14} {'advantage':>10} {'logp_dpo':>9} {'logp_ref':>9}"
    head += f" {'logp_stu':>9} {'E_stu[A]':>9}" if has_student else ""
    lines = [head + "  top alternatives of the DPO teacher (advantage)"]
    for t, token in enumerate(report.tokens):
        ref = "" if report.logp_ref is None else f"{report.logp_ref[t]:.3f}"
        line = f"{t:>4}  {repr(token):<14} {report.advantage[t]:>+10.3f} {report.logp_dpo[t]:>9.3f} {ref:>9}"
        if has_student:
            line += f" {report.student_logp[t]:>9.3f} {report.expected_advantage[t]:>+9.3f}"
        alts = "  ".join(f"{a['token']!r} {a['advantage']:+.2f}" for a in report.alternatives[t])
        lines.append(f"{line}  {alts}")
    what = "beta * log pi_dpo(y|x)" if report.no_reference else "beta * (log pi_dpo(y|x) - log pi_ref(y|x))"
    lines.append(f"total advantage = {what} = {report.total:+.4f}  (beta={report.beta:g})")
    if report.no_reference:
        lines.append("note: no reference teacher; advantages are beta * log pi_dpo")
    lines += [f"note: {n}" for n in report.notes]
    return "\n".join(lines)
