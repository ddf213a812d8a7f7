"""Formatting only: the handlers' plain data -> HTML, tables (pandas) and plotly figures.

Every piece of text that came from a user, a dataset or a model is passed through `html.escape` before it
enters HTML, so a prompt or reply holding `<script>` shows as text. Colours: red = the teacher dislikes the
token (negative advantage), blue = it prefers it (positive); the same diverging scale everywhere.
"""

from __future__ import annotations

import html
import math
from collections.abc import Sequence
from typing import Any

import pandas as pd
import plotly.graph_objects as go

NEG, POS = (202, 0, 32), (5, 113, 176)  # the ends of plotly's "RdBu" scale
COLORSCALE = [[0.0, "rgb(202,0,32)"], [0.5, "rgb(247,247,247)"], [1.0, "rgb(5,113,176)"]]


def esc(text: Any) -> str:
    return html.escape(str(text), quote=True)


def show_token(token: str) -> str:
    """A token as visible text: newlines and tabs as symbols, a blank token as an open box."""
    shown = token.replace("\n", "\u21b5").replace("\t", "\u21e5")
    return shown if shown.strip() else "\u2423" * max(1, len(shown))


# ---------------------------------------------------------------- advantages


def display_scale(values: Sequence[float], quantile: float = 0.98) -> list[float]:
    """`adpa_core.advantage.display_scale`, imported here so this module loads without torch."""
    from adpa_core.advantage import display_scale as scale

    return scale(values, quantile)


def chip_style(s: float) -> str:
    """Background and text colour of a token whose scaled advantage is `s` in [-1, 1]."""
    a = min(1.0, abs(s))
    r, g, b = NEG if s < 0 else POS
    text = "#ffffff" if a > 0.55 else "var(--body-text-color, #111111)"
    return f"background: rgba({r},{g},{b},{0.06 + 0.84 * a:.2f}); color: {text};"


def heatmap_html(report: dict[str, Any]) -> str:
    """The reply as coloured token chips, each with its advantage under it and every number in a tooltip."""
    if not report or not report.get("tokens"):
        return "<div id='adv-heatmap-empty' style='opacity:.7'>Compute advantages to see the heatmap.</div>"
    adv, tokens = report["advantage"], report["tokens"]
    scaled = display_scale(adv)
    worst = min(range(len(adv)), key=adv.__getitem__)
    chips = []
    for t, (token, a, s) in enumerate(zip(tokens, adv, scaled, strict=True)):
        tip = f"position {t}: {token!r}\nA(s_t, y_t) = {a:+.4f}\nlog pi_dpo = {report['logp_dpo'][t]:.3f}"
        if report.get("logp_ref") is not None:
            tip += f"\nlog pi_ref = {report['logp_ref'][t]:.3f}"
        if report.get("student_logp") is not None:
            tip += f"\npi_student(y_t) = {math.exp(report['student_logp'][t]):.3f}"
        border = "outline: 2px solid #d62728; outline-offset: 1px;" if t == worst and a < 0 else ""
        chips.append(
            f"<span class='adv-token' data-pos='{t}' title='{esc(tip)}' style='display:inline-flex;"
            "flex-direction:column;align-items:center;margin:2px 2px;padding:2px 6px;border-radius:5px;"
            f"{chip_style(s)}{border}'><span style='white-space:pre;font-weight:600'>{esc(show_token(token))}"
            f"</span><span style='font-size:0.72em;opacity:.9'>{a:+.2f}</span></span>"
        )
    prompt = " ".join(m["content"] for m in report.get("prompt", []) if m.get("role") == "user")
    return (
        "<div id='adv-heatmap' style='line-height:1.3'>"
        f"<div style='font-size:.85em;opacity:.75;margin-bottom:6px'>prompt: {esc(prompt)}</div>"
        f"<div style='display:flex;flex-wrap:wrap;align-items:flex-start'>{''.join(chips)}</div>"
        f"{_legend()}</div>"
    )


def _legend() -> str:
    r, g, b = NEG
    r2, g2, b2 = POS
    bar = f"linear-gradient(90deg, rgb({r},{g},{b}), rgba(247,247,247,0.4), rgb({r2},{g2},{b2}))"
    return (
        "<div style='display:flex;align-items:center;gap:8px;font-size:.78em;opacity:.85;margin-top:8px'>"
        "<span>teacher dislikes (A &lt; 0)</span>"
        "<span style='display:inline-block;width:140px;height:10px;border-radius:5px;"
        f"background:{bar}'></span>"
        "<span>teacher prefers (A &gt; 0)</span><span>· outlined: the most negative token · "
        "hover a token for its numbers</span></div>"
    )


def summary_markdown(report: dict[str, Any]) -> str:
    """The sequence total (the DPO implicit reward), the worst tokens and the mean expected advantages."""
    if not report or not report.get("tokens"):
        return ""
    what = "β·log π_dpo(y|x)" if report["no_reference"] else "β·(log π_dpo(y|x) − log π_ref(y|x))"
    lines = [
        f"**Sequence total (DPO implicit reward)** {what} = **{report['total']:+.3f}** "
        f"over {len(report['tokens'])} tokens (β = {report['beta']:g})"
    ]
    worst = report.get("worst") or []
    if worst:
        lines.append(
            "Most negative: "
            + ", ".join(
                f"`{esc(show_token(w['token']))}` {w['advantage']:+.2f} (pos {w['index']})" for w in worst[:3]
            )
        )
    if report.get("expected_advantage") is not None:
        stu, tea = _mean(report["expected_advantage"]), _mean(report["teacher_expected_advantage"])
        lines.append(
            f"Mean expected advantage per token: student Σ π_θ(a)·A(a) = {stu:+.3f}, "
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
        f"**Position {t}**: the reply has `{esc(show_token(report['tokens'][t]))}` "
        f"(A = {report['advantage'][t]:+.3f}); the DPO teacher's top {len(rows)} tokens here "
        "(◆ the reply's token):"
    )
    return title, pd.DataFrame(rows, columns=columns)


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 4)


def _position_labels(report: dict[str, Any]) -> list[str]:
    return [f"{t}:{show_token(tok)}" for t, tok in enumerate(report["tokens"])]


def alternatives_figure(report: dict[str, Any]) -> go.Figure:
    """Positions × the teacher's top-k alternatives, coloured by advantage, labelled with the tokens; a
    diamond marks the reply's own token when it is among them."""
    if not report or not report.get("tokens"):
        return empty_figure("Compute advantages to see the alternatives")
    labels = _position_labels(report)
    k = max(len(a) for a in report["alternatives"])
    z = [[_cell(report["alternatives"][t], j, "advantage") for t in range(len(labels))] for j in range(k)]
    text = [
        [show_token(_cell(report["alternatives"][t], j, "token") or "") for t in range(len(labels))]
        for j in range(k)
    ]
    bound = max((abs(v) for row in z for v in row if v is not None), default=1.0) or 1.0
    fig = go.Figure(
        go.Heatmap(
            z=z,
            x=labels,
            y=[f"#{j + 1}" for j in range(k)],
            text=text,
            texttemplate="%{text}",
            textfont={"size": 10},
            colorscale=COLORSCALE,
            zmin=-bound,
            zmax=bound,
            zmid=0,
            colorbar={"title": {"text": "A(s,a)"}},
            hovertemplate="position %{x}<br>alternative %{y}: %{text}<br>A = %{z:+.3f}<extra></extra>",
        )
    )
    for t, alts in enumerate(report["alternatives"]):  # a frame around the reply's own token
        for j, a in enumerate(alts):
            if a["token_id"] == report["token_ids"][t]:
                fig.add_shape(
                    type="rect",
                    x0=t - 0.5,
                    x1=t + 0.5,
                    y0=j - 0.5,
                    y1=j + 0.5,
                    line={"color": "#111", "width": 2.5},
                )
    fig.update_layout(
        title="The DPO teacher's top alternatives per position (framed: the reply's token)",
        yaxis={"autorange": "reversed", "title": "rank"},
        xaxis={"title": "position: token", "tickangle": -45},
        showlegend=False,
        **figure_layout(120 + 34 * k),
    )
    return fig


def _cell(alts: list[dict[str, Any]], j: int, key: str) -> Any:
    return alts[j][key] if j < len(alts) else None


def expected_figure(report: dict[str, Any]) -> go.Figure:
    """Per position: the reply token's advantage (bars) and the student's and teacher's expected advantage."""
    if not report or not report.get("tokens"):
        return empty_figure("Compute advantages to see the expected advantages")
    labels = _position_labels(report)
    colours = [f"rgb{NEG}" if a < 0 else f"rgb{POS}" for a in report["advantage"]]
    fig = go.Figure(
        go.Bar(
            x=labels,
            y=report["advantage"],
            name="A(s_t, y_t) of the reply's token",
            marker={"color": colours, "opacity": 0.45},
        )
    )
    fig.add_trace(
        go.Scatter(
            x=labels,
            y=report["teacher_expected_advantage"],
            mode="lines+markers",
            name="teacher Σ π_dpo(a)·A(a)",
            line={"color": "#2ca02c"},
        )
    )
    if report.get("expected_advantage") is not None:
        fig.add_trace(
            go.Scatter(
                x=labels,
                y=report["expected_advantage"],
                mode="lines+markers",
                name="student Σ π_θ(a)·A(a)",
                line={"color": "#9467bd", "width": 3},
            )
        )
    fig.update_layout(
        title="Where the student and the teacher disagree (expected advantage per position)",
        xaxis={"title": "position: token"},
        yaxis={"title": "advantage", "zeroline": True},
        legend={"orientation": "h", "y": -0.35},
        **figure_layout(380),
    )
    return fig


def empty_figure(message: str) -> go.Figure:
    fig = go.Figure()
    fig.add_annotation(
        text=esc(message),
        showarrow=False,
        x=0.5,
        y=0.5,
        xref="paper",
        yref="paper",
        font={"size": 14, "color": "#888"},
    )
    fig.update_layout(xaxis={"visible": False}, yaxis={"visible": False}, **figure_layout(260))
    return fig


def figure_layout(height: int) -> dict[str, Any]:
    return {"height": height, "margin": {"l": 50, "r": 20, "t": 50, "b": 60}, "template": "plotly_white"}
