"""Formatting only: the handlers' plain data -> HTML and tables (pandas); plotly figures are in figures.py.

Every piece of text that came from a user, a dataset or a model is passed through `html.escape` before it
enters HTML, so a prompt or reply holding `<script>` shows as text. Colours: red = the teacher dislikes the
token (negative advantage), blue = it prefers it (positive), on one fixed symmetric scale ±`scale` that the
user picks (the same for every reply, so a +0.3 never looks as strong as a -3.7; beyond it colours saturate).
"""

from __future__ import annotations

import html
import math
import re
from collections.abc import Sequence
from typing import Any

import pandas as pd

NEG, POS = (202, 0, 32), (5, 113, 176)  # the ends of plotly's "RdBu" scale
SCALES = (0.25, 0.5, 1.0, 2.0, 4.0, 8.0)  # |A| shown at full colour, in nats times beta
DEFAULT_SCALE = 2.0
MEANINGFUL = 0.1  # a token is outlined as the most negative only when A <= -MEANINGFUL * scale


def esc(text: Any) -> str:
    return html.escape(str(text), quote=True)


def code(text: str) -> str:
    """Inline code for Markdown that allows HTML: escaped once, so `<unk>` shows as <unk>."""
    return f"<code>{esc(text)}</code>"


def show_token(token: str) -> str:
    """A token as visible text: newlines and tabs as symbols, a blank token as an open box."""
    shown = token.replace("\n", "\u21b5").replace("\t", "\u21e5")
    return shown if shown.strip() else "\u2423" * max(1, len(shown))


# ---------------------------------------------------------------- advantages


def unit(value: float, scale: float) -> float:
    """`value / scale` clipped to [-1, 1] (NaN as 0): the colour position on the fixed scale."""
    if math.isnan(value):
        return 0.0
    return max(-1.0, min(1.0, value / scale))


def chip_style(s: float) -> str:
    """Background and text colour of a token whose scaled advantage is `s` in [-1, 1]."""
    a = min(1.0, abs(s))
    r, g, b = NEG if s < 0 else POS
    text = "#ffffff" if a > 0.55 else "var(--body-text-color, #111111)"
    return f"background: rgba({r},{g},{b},{0.06 + 0.84 * a:.2f}); color: {text};"


def outlined(report: dict[str, Any], scale: float) -> int | None:
    """The position of the most negative token when its advantage is meaningfully negative, else None."""
    adv = report["advantage"]
    worst = min(range(len(adv)), key=adv.__getitem__)
    return worst if adv[worst] <= -MEANINGFUL * scale else None


def token_detail(report: dict[str, Any], t: int) -> str:
    """Every number of position `t` on one line (the chip's tooltip, label and keyboard detail)."""
    parts = [f"position {t}: {show_token(report['tokens'][t])!r}", f"A = {report['advantage'][t]:+.4f}"]
    parts.append(f"log π_dpo = {report['logp_dpo'][t]:.3f}")
    if report.get("logp_ref") is not None:
        parts.append(f"log π_ref = {report['logp_ref'][t]:.3f}")
    if report.get("student_logp") is not None:
        parts.append(f"π_student = {math.exp(report['student_logp'][t]):.3f}")
    return " · ".join(parts)


def heatmap_html(report: dict[str, Any], scale: float = DEFAULT_SCALE) -> str:
    """The reply as coloured token chips on the fixed scale ±`scale`, each with its advantage under it.

    Chips are focusable buttons (data-pos = the position): clicking one, or Enter on it, selects that
    position (tabs/advantages.py); its numbers are in its aria-label, shown under the heatmap when it is
    hovered or focused (no title tooltip: a second copy of every label made a long reply's page slower).
    """
    if not report or not report.get("tokens"):
        return "<div id='adv-heatmap-empty' style='opacity:.7'>Compute advantages to see the heatmap.</div>"
    worst = outlined(report, scale)
    specials = report.get("special") or [False] * len(report["tokens"])
    flush = subword(
        report["tokens"]
    )  # sub-word pieces (their spaces in their text) sit flush: words read whole
    chips = []
    for t, (token, a) in enumerate(zip(report["tokens"], report["advantage"], strict=True)):
        detail = esc(token_detail(report, t))
        border = "outline: 2px solid #d62728; outline-offset: 1px;" if t == worst else ""
        special = " data-special" if specials[t] else ""
        chips.append(
            f"<span class='adv-token' role='button' tabindex='0' data-pos='{t}'{special} "
            f"aria-label='{detail}' "
            f"style='{chip_style(unit(a, scale))}{border}'>"
            f"<span class='adv-tok'>{esc(token_text(token, flush))}</span>"
            f"<span class='adv-val'>{a:+.2f}</span></span>"
        )
    return (
        f"<div id='adv-heatmap' class='{'adv-flush' if flush else ''}' data-scale='{scale:g}' "
        f"style='line-height:1.3'>{HEATMAP_CSS}{prompt_header(report)}"
        f"<div style='display:flex;flex-wrap:wrap;align-items:flex-start'>{''.join(chips)}</div>"
        f"<div id='adv-token-detail' aria-live='polite' style='font-size:.8em;min-height:1.3em;"
        f"margin-top:6px'></div>{legend(scale, worst is not None)}</div>"
    )


def subword(tokens: Sequence[str]) -> bool:
    """True for a sub-word tokenizer's tokens (some carry a leading space), False for word-level ones."""
    return any(t[:1].isspace() for t in tokens)


QUIET = "font-size:.78em;opacity:.55;font-style:italic;font-weight:400"


def token_text(token: str, flush: bool = False) -> str:
    """A token's text as it reads in the reply. `flush` (sub-word pieces side by side): spaces stay spaces,
    even a token that is only a space, so the reply reads as text; else `show_token`."""
    return token.replace("\n", "\u21b5").replace("\t", "\u21e5") if flush else show_token(token)


def prompt_header(report: dict[str, Any]) -> str:
    """The prompt as the model reads it (the chat template's text, e.g. its default system prompt, included;
    special tokens quiet), or its user messages when the rendered text is not in the report."""
    rendered = report.get("prompt_rendered")
    if not rendered:
        prompt = " ".join(m["content"] for m in report.get("prompt", []) if m.get("role") == "user")
        return f"<div style='font-size:.85em;opacity:.75;margin-bottom:6px'>prompt: {esc(prompt)}</div>"
    parts = re.split(r"(<\|[^|<>]*\|>|<s>|</s>)", rendered)
    body = "".join(
        f"<span style='{QUIET}'>{esc(p)}</span>" if i % 2 else esc(p) for i, p in enumerate(parts) if p
    )
    return (
        "<div class='adv-prompt-rendered' style='font-size:.85em;opacity:.8;margin-bottom:6px;"
        "white-space:pre-wrap'><span style='font-weight:600'>prompt as the model reads it:</span>"
        f"\n{body}</div>"
    )


HEATMAP_CSS = (
    "<style>#adv-heatmap .adv-token{display:inline-flex;flex-direction:column;align-items:center;"
    "margin:2px;padding:2px 6px;border-radius:5px;cursor:pointer}"
    "#adv-heatmap .adv-token:focus-visible{box-shadow:0 0 0 3px #ff9900}"
    "#adv-heatmap .adv-tok{white-space:pre;font-weight:600}"
    "#adv-heatmap .adv-val{font-size:.72em;opacity:.9}"
    "#adv-heatmap.adv-flush .adv-token{margin:2px 1px;padding:2px 1px}"
    f"#adv-heatmap .adv-token[data-special] .adv-tok{{{QUIET}}}</style>"
)


def legend(scale: float, outline: bool) -> str:
    """The fixed colour scale with its numbers: -scale, -scale/2, 0, +scale/2, +scale."""
    (r, g, b), (r2, g2, b2) = NEG, POS
    bar = f"linear-gradient(90deg, rgb({r},{g},{b}), rgba(247,247,247,0.4), rgb({r2},{g2},{b2}))"
    ticks = "".join(
        f"<span style='position:absolute;left:{25 * i}%;transform:translateX(-50%)'>{v:+g}</span>"
        for i, v in enumerate((-scale, -scale / 2, 0, scale / 2, scale))
    ).replace(">+0<", ">0<")
    note = (
        f"outlined: the most negative token (A ≤ {-MEANINGFUL * scale:+g})"
        if outline
        else f"no token at A ≤ {-MEANINGFUL * scale:+g}, so none is outlined"
    )
    return (
        "<div id='adv-legend' style='display:flex;align-items:flex-start;gap:10px;font-size:.78em;"
        "margin-top:8px'><span>teacher dislikes (A &lt; 0)</span>"
        "<span style='display:inline-block;width:220px'>"
        f"<span style='display:block;height:10px;border-radius:5px;background:{bar}'></span>"
        f"<span class='adv-ticks' style='display:block;position:relative;height:1.2em'>{ticks}</span></span>"
        f"<span>teacher prefers (A &gt; 0)</span><span>· fixed scale ±{scale:g} (beyond it the colour "
        f"saturates) · {note} · click or Tab to a token to inspect it</span></div>"
    )


def summary_markdown(report: dict[str, Any], scale: float = DEFAULT_SCALE) -> str:
    """The sequence total (the DPO implicit reward), the meaningfully negative tokens, the mean expected
    advantages, the support they run over, and the report's notes (cuts, context, unknown tokens)."""
    if not report or not report.get("tokens"):
        return ""
    what = "β·log π_dpo(y|x)" if report["no_reference"] else "β·(log π_dpo(y|x) − log π_ref(y|x))"
    lines = [
        f"**Sequence total (DPO implicit reward)** {what} = **{report['total']:+.3f}** "
        f"over {len(report['tokens'])} tokens (β = {report['beta']:g})"
    ]
    worst = [w for w in report.get("worst") or [] if w["advantage"] <= -MEANINGFUL * scale]
    if worst:
        shown = [f"{code(show_token(w['token']))} {w['advantage']:+.2f} (pos {w['index']})" for w in worst]
        lines.append("Most negative: " + ", ".join(shown[:3]))
    if report.get("expected_advantage") is not None:
        stu, tea = _mean(report["expected_advantage"]), _mean(report["teacher_expected_advantage"])
        support = (
            f"the DPO teacher's top {report.get('support_k')} tokens"
            if report.get("support") == "topk"
            else "the full vocabulary"
        )
        lines.append(
            f"Mean expected advantage per token over {support}: student Σ π_θ(a)·A(a) = {stu:+.3f}, "
            f"DPO teacher = {tea:+.3f} (ADPA raises the student's)"
        )
    lines += [f"Note: {esc(n)}" for n in report.get("notes", [])]
    if report["no_reference"]:
        lines.append("Note: no reference teacher, so A = β·log π_dpo (all ≤ 0)")
    return "  \n".join(lines)


def _mean(values: Sequence[float]) -> float:
    return sum(values) / len(values) if values else 0.0


def token_table(report: dict[str, Any]) -> pd.DataFrame:
    """One row per reply token: its advantage, both teachers' log-probs, the student's view."""
    columns = [
        "pos",
        "token",
        "A(s,y)",
        "log π_dpo",
        "log π_ref",
        "π_student(y)",
        "E_student[A]",
        "E_teacher[A]",
        "teacher's top",
    ]
    if not report or not report.get("tokens"):
        return pd.DataFrame(columns=columns)
    rows = []
    for t, token in enumerate(report["tokens"]):
        top = report["alternatives"][t][0] if report["alternatives"][t] else None
        rows.append(
            [
                t,
                show_token(token),
                round(report["advantage"][t], 4),
                round(report["logp_dpo"][t], 4),
                None if report.get("logp_ref") is None else round(report["logp_ref"][t], 4),
                None if report.get("student_logp") is None else round(math.exp(report["student_logp"][t]), 4),
                _at(report.get("expected_advantage"), t),
                _at(report.get("teacher_expected_advantage"), t),
                "" if top is None else f"{show_token(top['token'])} ({top['advantage']:+.2f})",
            ]
        )
    return pd.DataFrame(rows, columns=columns)


def _at(values: Sequence[float] | None, t: int) -> float | None:
    return None if values is None else round(values[t], 4)


def alternatives_view(report: dict[str, Any], position: int) -> tuple[str, pd.DataFrame]:
    """(title, table) of the DPO teacher's top alternatives at `position` with the student's probabilities."""
    columns = ["#", "token", "A(s,a)", "π_dpo", "π_ref", "π_student"]
    if not report or not report.get("tokens"):
        return "", pd.DataFrame(columns=columns)
    t = max(0, min(int(position or 0), len(report["tokens"]) - 1))
    actual = report["token_ids"][t]
    rows = [
        [
            j + 1,
            show_token(a["token"]) + (" ◆" if a["token_id"] == actual else ""),
            round(a["advantage"], 4),
            round(a["p_dpo"], 4),
            _round(a["p_ref"]),
            _round(a["p_student"]),
        ]
        for j, a in enumerate(report["alternatives"][t])
    ]
    title = (
        f"**Position {t}**: the reply has {code(show_token(report['tokens'][t]))} "
        f"(A = {report['advantage'][t]:+.3f}); the DPO teacher's top {len(rows)} tokens here "
        "(◆ the reply's token):"
    )
    return title, pd.DataFrame(rows, columns=columns)


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 4)
