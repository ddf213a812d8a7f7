"""Plotly figures of an advantage report: the teacher's alternatives per position, the expected advantages.

Every figure is built in one pass (traces and shapes handed to plotly at once): plotly validates each
`add_shape` against all earlier shapes, so adding them one by one costs the square of the length
(benchmarks/workbench_figures.py measures the build time against the reply length). The alternatives map
shows at most `MAX_POSITIONS` positions (a window around the inspected position, at first the most
negative token, said in its title); the heatmap and the table keep every token.
"""

from __future__ import annotations

from typing import Any

import plotly.graph_objects as go

from .views import DEFAULT_SCALE, NEG, POS, esc, show_token

COLORSCALE = [[0.0, f"rgb{NEG}"], [0.5, "rgb(247,247,247)"], [1.0, f"rgb{POS}"]]
MAX_POSITIONS = 30  # columns of the alternatives map: wider, its token labels overlap (each an SVG text)


def position_labels(report: dict[str, Any], positions: range) -> list[str]:
    return [f"{t}:{show_token(report['tokens'][t])}" for t in positions]


def shown_positions(report: dict[str, Any], centre: int | None = None, limit: int = MAX_POSITIONS) -> range:
    """All positions, or `limit` of them around `centre` (default: the most negative token)."""
    n, adv = len(report["tokens"]), report["advantage"]
    if n <= limit:
        return range(n)
    centre = min(range(n), key=adv.__getitem__) if centre is None else int(centre)
    start = max(0, min(centre - limit // 2, n - limit))
    return range(start, start + limit)


def alternatives_figure(
    report: dict[str, Any],
    scale: float = DEFAULT_SCALE,
    centre: int | None = None,
    limit: int = MAX_POSITIONS,
) -> go.Figure:
    """Positions × the teacher's top-k alternatives, coloured by advantage on the fixed scale ±`scale`,
    labelled with the tokens; a frame marks the reply's own token when it is among them. A reply longer
    than `limit` shows `limit` positions around `centre` (default: the most negative token)."""
    if not report or not report.get("tokens"):
        return empty_figure("Compute advantages to see the alternatives")
    shown = shown_positions(report, centre, limit)
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
            f"<br><sup>positions {shown.start}–{shown.stop - 1} of {len(report['tokens'])}, around the "
            f"{'inspected position' if centre is not None else 'most negative token'} (at most "
            f"{limit} shown; the table has every position)</sup>"
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
    """Per position: the reply token's advantage (bars) and the student's and teacher's expected advantage.

    A reply longer than `MAX_POSITIONS` is drawn with lines over numbered positions (the token in the
    hover text): the browser draws and measures every category label, bar and marker, seconds for 1,000.
    """
    if not report or not report.get("tokens"):
        return empty_figure("Compute advantages to see the expected advantages")
    n = len(report["tokens"])
    long = n > MAX_POSITIONS
    x = list(range(n)) if long else position_labels(report, range(n))
    mode = "lines" if long else "lines+markers"
    traces = [_own_advantage(report, x, long)]
    lines = [("teacher Σ π_dpo(a)·A(a)", "teacher_expected_advantage", {"color": "#2ca02c"})]
    if report.get("expected_advantage") is not None:
        lines.append(("student Σ π_θ(a)·A(a)", "expected_advantage", {"color": "#9467bd", "width": 3}))
    traces += [go.Scatter(x=x, y=report[key], mode=mode, name=name, line=line) for name, key, line in lines]
    layout = figure_layout(380)
    layout.update(
        title="Where the student and the teacher disagree (expected advantage per position)",
        xaxis={"title": "position" if long else "position: token"},
        yaxis={"title": "advantage", "zeroline": True},
        legend={"orientation": "h", "y": -0.35},
    )
    return go.Figure(traces, layout)


def _own_advantage(report: dict[str, Any], x: list, long: bool) -> go.Scatter | go.Bar:
    """The advantage of each reply token: bars coloured by sign, or one filled line for a long reply."""
    adv = report["advantage"]
    common = {
        "x": x,
        "y": adv,
        "name": "A(s_t, y_t) of the reply's token",
        "customdata": [show_token(t) for t in report["tokens"]],
        "hovertemplate": "position %{pointNumber}: %{customdata}<br>A = %{y:+.3f}<extra></extra>",
    }
    if long:
        return go.Scatter(mode="lines", fill="tozeroy", line={"color": f"rgb{NEG}", "width": 1}, **common)
    colours = [f"rgb{NEG}" if a < 0 else f"rgb{POS}" for a in adv]
    return go.Bar(marker={"color": colours, "opacity": 0.45}, **common)


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
