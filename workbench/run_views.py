"""Formatting of runs and replies: progress bar, loss curves, the runs table, a reply's reward.

All text from disk or a model goes through `views.esc` before it enters HTML.
"""

from __future__ import annotations

import time
from typing import Any

import pandas as pd
import plotly.graph_objects as go

from .figures import empty_figure, figure_layout
from .views import esc

LOSS_TERMS = ("loss", "nll", "kl_chosen", "kl_rejected", "adpa", "dpo")
STATE_COLOURS = {
    "running": "#1f77b4",
    "queued": "#7f7f7f",
    "completed": "#2ca02c",
    "failed": "#d62728",
    "crashed": "#d62728",
    "cancelled": "#ff7f0e",
}


def progress_html(summary: dict[str, Any] | None) -> str:
    """A progress bar: state, step / max_steps, percent, ETA and the last loss; before step 1 the
    preparation phase with its own progress (ADPA: the student's replies y_hat); for a run that failed,
    why in one line (its traceback stays in the log offered below)."""
    if not summary:
        return (
            "<div id='run-progress' style='opacity:.7'>No run selected. Start one, or pick a past run.</div>"
        )
    state = summary.get("display", summary.get("state", "unknown"))
    step, total = int(summary.get("step") or 0), summary.get("max_steps") or 0
    pct = 100.0 if state == "completed" else (100.0 * step / total if total else 0.0)
    bits = [
        f"<b>{esc(summary['name'])}</b>",
        f"{esc(summary.get('method') or '?')}",
        f"<span data-state='{esc(state)}' style='color:{STATE_COLOURS.get(state, '#555')};font-weight:600'>"
        f"{esc(state)}</span>",
        f"step <span class='run-step'>{step}</span> / {total}",
        f"{pct:.0f}%",
    ]
    if summary.get("eta_s") is not None:
        bits.append(f"ETA {format_seconds(summary['eta_s'])}")
    if summary.get("loss") is not None:
        bits.append(f"loss {float(summary['loss']):.4f}")
    colour = STATE_COLOURS.get(state, "#7f7f7f")
    extra = phase_html(summary) if state in ("queued", "running") and step == 0 else ""
    if state in ("failed", "crashed"):
        why = summary.get("error_line") or summary.get("error") or "the training process ended early"
        extra = (
            f"<div class='run-error' style='color:#d62728;margin-top:6px'>{esc(why)}</div>"
            "<div style='font-size:.8em;opacity:.8'>The full log (with any traceback) is below.</div>"
        )
    return (
        f"<div id='run-progress' data-state='{esc(state)}' data-step='{step}'>"
        f"<div style='margin-bottom:6px'>{' · '.join(bits)}</div>{_bar(pct, colour)}{extra}</div>"
    )


def phase_html(summary: dict[str, Any]) -> str:
    """What a run does before its first step: loading, or a phase with its own count and ETA."""
    done, total = summary.get("phase_done"), summary.get("phase_total")
    if summary.get("phase") != "y_hat" or not total:
        note = "loading models and data"
        if summary.get("method") in ("adpa", "adpa_plus"):
            note += ", then the student's own replies (y_hat)"
        return f"<div class='run-phase' style='margin-top:6px'>preparing: {note}…</div>"
    eta = summary.get("phase_eta_s")
    if eta is not None:  # written at the last batch: count it down to now
        eta = max(0.0, float(eta) - (time.time() - float(summary.get("updated_at", time.time()))))
    text = f"preparing: the student's own replies (y_hat) {done} / {total} prompts"
    text += f" · ETA {format_seconds(eta)}" if eta is not None and done else ""
    return (
        f"<div class='run-phase' data-done='{done}' style='margin-top:6px'>{text}</div>"
        f"{_bar(100.0 * int(done or 0) / int(total), '#9467bd', 6)}"
    )


def _bar(pct: float, colour: str, height: int = 14) -> str:
    return (
        f"<div style='background:rgba(127,127,127,.2);border-radius:6px;height:{height}px;overflow:hidden;"
        f"margin-top:4px'><div style='width:{pct:.1f}%;height:100%;background:{colour};"
        "transition:width .5s'></div></div>"
    )


def format_seconds(seconds: float) -> str:
    seconds = max(0, int(round(float(seconds))))
    if seconds < 60:
        return f"{seconds} s"
    minutes, sec = divmod(seconds, 60)
    return f"{minutes} min {sec:02d} s" if minutes < 60 else f"{minutes // 60} h {minutes % 60:02d} min"


def loss_figure(metrics: list[dict[str, Any]], name: str = "") -> go.Figure:
    """One line per loss term over the steps (held-out values dashed)."""
    if not metrics:
        return empty_figure("Waiting for the first logged step…" if name else "No run selected")
    fig = go.Figure()
    steps = [m.get("step") for m in metrics]
    for term in LOSS_TERMS:
        for key, dash in ((term, None), (f"eval_{term}", "dash")):
            if any(key in m for m in metrics):
                pts = [(m["step"], m[key]) for m in metrics if key in m and m[key] is not None]
                fig.add_trace(
                    go.Scatter(
                        x=[p[0] for p in pts],
                        y=[p[1] for p in pts],
                        name=key,
                        mode="lines+markers" if len(pts) < 30 else "lines",
                        line={"dash": dash, "width": 3 if term == "loss" else 2},
                    )
                )
    fig.update_layout(
        title=f"Loss terms of {esc(name)} ({len(steps)} logged steps)",
        xaxis={"title": "step"},
        yaxis={"title": "value"},
        legend={"orientation": "h", "y": -0.25},
        **figure_layout(360),
    )
    return fig


def runs_table(rows: list[dict[str, Any]]) -> pd.DataFrame:
    columns = ["run", "method", "state", "step", "loss", "updated"]
    data = [
        [
            r["name"],
            r.get("method") or "",
            r["display"],
            f"{r.get('step', 0)}/{r.get('max_steps', '?')}",
            None if r.get("loss") is None else round(float(r["loss"]), 4),
            _ago(r.get("updated_at")),
        ]
        for r in rows
    ]
    return pd.DataFrame(data, columns=columns)


def _ago(stamp: float | None) -> str:
    if not stamp:
        return ""
    return f"{format_seconds(time.time() - float(stamp))} ago"


def score_markdown(part: dict[str, Any] | None) -> str:
    """A reply's reward (and for the toy reward which terms counted), or how far streaming got."""
    if not part:
        return ""
    if not part.get("done"):
        return "*generating…*"
    score = part.get("score")
    stop = "" if part.get("stopped") else " · did not stop (hit the token limit)"
    if part.get("score_error"):
        return f"{part.get('tokens', 0)} tokens{stop} · no reward (see the note above)"
    if not score:
        return f"{part.get('tokens', 0)} tokens{stop}"
    marks = " · ".join(f"{'✓' if v else '✗'} {k}" for k, v in score["details"].items() if v is not None)
    return f"**reward {score['reward']:+.2f}** ({esc(score['name'])}){' · ' + marks if marks else ''}{stop}"
