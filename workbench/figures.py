"""Plotly figures of an advantage report: the teacher's alternatives per position, the expected advantages.

Every figure is built in one pass (traces and shapes handed to plotly at once): plotly validates each
`add_shape` against all earlier shapes, so adding them one by one costs the square of the length
(benchmarks/workbench_figures.py measures the build time against the reply length). The alternatives map
shows at most `MAX_POSITIONS` positions (a window around the most negative token, said in its title); the
heatmap and the table keep every token.
"""

from __future__ import annotations

from typing import Any

import plotly.graph_objects as go

from .views import DEFAULT_SCALE, NEG, POS, esc, show_token

COLORSCALE = [[0.0, f"rgb{NEG}"], [0.5, "rgb(247,247,247)"], [1.0, f"rgb{POS}"]]
MAX_POSITIONS = 48  # columns of the alternatives map: wider is unreadable, and each cell is an SVG text


def position_labels(report: dict[str, Any], positions: range) -> list[str]:
    return [f"{t}:{show_token(report['tokens'][t])}" for t in positions]


def shown_positions(report: dict[str, Any], limit: int = MAX_POSITIONS) -> range:
    """All positions, or `limit` of them centred on the most negative token when the reply is longer."""
    n, adv = len(report["tokens"]), report["advantage"]
    if n <= limit:
        return range(n)
    worst = min(range(n), key=adv.__getitem__)
    start = max(0, min(worst - limit // 2, n - limit))
    return range(start, start + limit)


def alternatives_figure(report: dict[str, Any], scale: float = DEFAULT_SCALE) -> go.Figure:
    """Positions × the teacher's top-k alternatives, coloured by advantage on the fixed scale ±`scale`,
    labelled with the tokens; a frame marks the reply's own token when it is among them."""
    if not report or not report.get("tokens"):
        return empty_figure("Compute advantages to see the alternatives")
    shown = shown_positions(report)
    alts, ids = report["alternatives"], report["token_ids"]
    k = max(len(alts[t]) for t in shown)
    cell = lambda t, j, key: alts[t][j][key] if j < len(alts[t]) else None  # noqa: E731
    z = [[cell(t, j, "advantage") for t in shown] for j in range(k)]
    text = [[show_token(cell(t, j, "token") or "") for t in shown] for j in range(k)]
    frames = [
        {
            "type": "rect",
            "x0": x - 0.5,
            "x1": x + 0.5,
            "y0": j - 0.5,
            "y1": j + 0.5,
            "line": {"color": "#111", "width": 2.5},
        }
        for x, t in enumerate(shown)
        for j, a in enumerate(alts[t])
        if a["token_id"] == ids[t]
    ]
    title = "The DPO teacher's top alternatives per position (framed: the reply's token)"
    if len(shown) < len(report["tokens"]):
        title += (
            f"<br><sup>positions {shown.start}–{shown.stop - 1} of {len(report['tokens'])}, around the most "
            f"negative token (at most {MAX_POSITIONS} shown; the table has every position)</sup>"
        )
    heat = go.Heatmap(
        z=z,
        x=position_labels(report, shown),
        y=[f"#{j + 1}" for j in range(k)],
        text=text,
        texttemplate="%{text}",
        textfont={"size": 10},
        colorscale=COLORSCALE,
        zmin=-scale,
        zmax=scale,
        zmid=0,
        colorbar={"title": {"text": f"A(s,a)<br>±{scale:g}"}},
        hovertemplate="position %{x}<br>alternative %{y}: %{text}<br>A = %{z:+.3f}<extra></extra>",
    )
    layout = figure_layout(130 + 34 * k)
    layout.update(
        title=title,
        shapes=frames,
        yaxis={"autorange": "reversed", "title": "rank"},
        xaxis={"title": "position: token", "tickangle": -45},
        showlegend=False,
    )
    return go.Figure(heat, layout)


def expected_figure(report: dict[str, Any]) -> go.Figure:
    """Per position: the reply token's advantage (bars) and the student's and teacher's expected advantage."""
    if not report or not report.get("tokens"):
        return empty_figure("Compute advantages to see the expected advantages")
    n = len(report["tokens"])
    long = n > MAX_POSITIONS  # the browser draws and measures every label, bar colour and marker: seconds
    labels = list(range(n)) if long else position_labels(report, range(n))  # for 1,000 of them
    tokens = [show_token(t) for t in report["tokens"]]
    colours = [f"rgb{NEG}" if a < 0 else f"rgb{POS}" for a in report["advantage"]]
    mode = "lines" if long else "lines+markers"
    traces = [
        go.Bar(
            x=labels,
            y=report["advantage"],
            name="A(s_t, y_t) of the reply's token",
            marker={"color": f"rgb{NEG}" if long else colours, "opacity": 0.45},
            customdata=tokens,
            hovertemplate="position %{pointNumber}: %{customdata}<br>A = %{y:+.3f}<extra></extra>",
        ),
        go.Scatter(
            x=labels,
            y=report["teacher_expected_advantage"],
            mode=mode,
            name="teacher Σ π_dpo(a)·A(a)",
            line={"color": "#2ca02c"},
        ),
    ]
    if report.get("expected_advantage") is not None:
        traces.append(
            go.Scatter(
                x=labels,
                y=report["expected_advantage"],
                mode=mode,
                name="student Σ π_θ(a)·A(a)",
                line={"color": "#9467bd", "width": 3},
            )
        )
    layout = figure_layout(380)
    layout.update(
        title="Where the student and the teacher disagree (expected advantage per position)",
        xaxis={"title": "position: token"},
        yaxis={"title": "advantage", "zeroline": True},
        legend={"orientation": "h", "y": -0.35},
    )
    return go.Figure(traces, layout)


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
    return {"height": height, "margin": {"l": 50, "r": 20, "t": 60, "b": 60}, "template": "plotly_white"}
