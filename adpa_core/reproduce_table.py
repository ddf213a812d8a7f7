"""The method table from `adpa reproduce`'s per-seed results: means with 95% t-intervals over seeds, the
released-code switch rows' paired differences with t-values, markdown and a plotly figure."""

from __future__ import annotations

import math
from typing import Any

from .stats import T_975, paired_t

HARD = ("fact_hard", "arith_2", "arith_3")

COLUMNS = (
    ("reward", "reward"),
    ("fact_hard", "hard facts"),
    ("arith_2", "arith 2-step"),
    ("arith_3", "arith 3-step"),
    ("rude", "rude"),
    ("ramble", "ramble"),
    ("win_vs_sft", "win vs SFT"),
    ("length", "length"),
    ("never_stopped", "no stop"),
)


def mean_ci(values: list[float]) -> tuple[float, float]:
    """Mean and the half-width of a 95% t-interval over seeds (0 for one seed)."""
    n = len(values)
    mean = sum(values) / n
    if n < 2:
        return mean, 0.0
    sd = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1))
    return mean, T_975.get(n - 1, 1.96) * sd / math.sqrt(n)


def row_names(per_seed: dict[int, dict[str, Any]]) -> list[str]:
    """Every row of the seeds' results, in the order they were measured."""
    return list(dict.fromkeys(name for s in per_seed.values() for name in s["rows"]))


def aggregate(per_seed: dict[int, dict[str, Any]]) -> dict[str, dict[str, list[float]]]:
    """{row: {column: [mean, half_width]}} over the seeds."""
    table: dict[str, dict[str, list[float]]] = {}
    for name in row_names(per_seed):
        cells = {}
        for key, _ in COLUMNS:
            values = [s["rows"].get(name, {}).get(key) for s in per_seed.values()]
            values = [v for v in values if v is not None]
            if values:
                cells[key] = list(mean_ci(values))
        table[name] = cells
    return table


DIFF_COLUMNS = (("reward", "reward"), ("fact_hard", "hard facts"))


def ablations(per_seed: dict[int, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """For each switch row (one with a `base` row): its switch and base, and per column the paired
    differences (switch off - base) over the seeds that have both (`stats.paired_t`: mean, 95% half-width,
    t)."""
    out: dict[str, dict[str, Any]] = {}
    for name in row_names(per_seed):
        first = next(s["rows"][name] for s in per_seed.values() if name in s["rows"])
        if not first.get("base"):
            continue
        base = first["base"]
        cells: dict[str, Any] = {"switch": first["switch"], "base": base}
        for key, _ in DIFF_COLUMNS:
            pairs = [
                (s["rows"][name].get(key), s["rows"][base].get(key))
                for s in per_seed.values()
                if name in s["rows"] and base in s["rows"]
            ]
            pairs = [(a, b) for a, b in pairs if a is not None and b is not None]
            if pairs:
                cells[key] = paired_t([a for a, _ in pairs], [b for _, b in pairs])
        out[name] = cells
    return out


def ablation_markdown(diffs: dict[str, dict[str, Any]]) -> str:
    """The switch rows' paired differences as a markdown table."""
    head = "| switch turned off | against | " + " | ".join(f"Δ {label} | t" for _, label in DIFF_COLUMNS)
    lines = [head + " | seeds |", "|" + "---|" * (3 + 2 * len(DIFF_COLUMNS))]
    for cells in diffs.values():
        values, n = [], 0
        for key, _ in DIFF_COLUMNS:
            d = cells.get(key)
            n = max(n, d["n"] if d else 0)
            width = f" ± {d['half_width']:.3f}" if d and d["half_width"] is not None else ""
            values.append(f"{d['mean_diff']:+.3f}{width}" if d else "—")
            values.append(f"{d['t']:.2f}" if d and d["t"] is not None else "—")
        lines.append(f"| `{cells['switch']}` | {cells['base']} | " + " | ".join(values) + f" | {n} |")
    note = (
        "\nPaired by seed: each switch row is the preset with that switch alone turned off, trained with "
        "the preset row's chosen settings; Δ = switch off − preset, mean ± half-width of a 95% t-interval, "
        "t with n − 1 degrees of freedom (— with one seed, or when every difference is the same).\n"
    )
    return "\n".join(lines) + "\n" + note


def markdown(table: dict[str, dict[str, list[float]]], seeds: list[int], command: str) -> str:
    head = "| method | " + " | ".join(label for _, label in COLUMNS) + " |"
    lines = [head, "|" + "---|" * (len(COLUMNS) + 1)]
    for name, cells in table.items():
        values = [f"{cells[k][0]:.2f} ± {cells[k][1]:.2f}" if k in cells else "—" for k, _ in COLUMNS]
        lines.append(f"| {name} | " + " | ".join(values) + " |")
    note = (
        f"\nSeeds {seeds}; mean ± half-width of a 95% t-interval over seeds. Reward in [-1, 2] on the "
        f"held-out test prompts (greedy). Command: `{command}`\n"
    )
    return "\n".join(lines) + "\n" + note


def _settings(settings: dict[str, Any] | None) -> str:
    if not settings:
        return "—"
    names = {"learning_rate": "lr", "gamma": "γ", "beta": "β"}
    keys = sorted(settings, key=lambda k: (list(names).index(k) if k in names else len(names), k))
    return ", ".join(f"{names.get(k, k)} {settings[k]}" for k in keys)


def per_seed_markdown(per_seed: dict[Any, dict[str, Any]], order: list[str]) -> str:
    """Held-out reward per seed for each row of `order`, and the settings validation chose per seed."""
    seeds = list(per_seed)
    head = (
        "| method | "
        + " | ".join(f"seed {s}" for s in seeds)
        + " | settings chosen on validation, per seed |"
    )
    lines = [head, "|" + "---|" * (len(seeds) + 2)]
    for name in order:
        rows = [per_seed[s]["rows"].get(name) for s in seeds]
        rewards = [f"{r['reward']:.3f}" if r else "—" for r in rows]
        chosen = [(r or {}).get("chosen") or {} for r in rows]
        settings = "; ".join(_settings(c.get("settings")) for c in chosen) if any(chosen) else "—"
        lines.append(f"| {name} | " + " | ".join(rewards) + f" | {settings} |")
    return "\n".join(lines)


def figure(table: dict[str, dict[str, list[float]]]) -> Any:
    """A plotly figure of the table: reward and hard-subset correctness per method, with 95% intervals."""
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    names = list(table)
    fig = make_subplots(rows=1, cols=2, subplot_titles=("held-out reward", "hard-subset correctness"))
    rewards = [table[n].get("reward", [0, 0]) for n in names]
    fig.add_trace(
        go.Bar(
            x=[r[0] for r in rewards],
            y=names,
            orientation="h",
            name="reward",
            error_x={"type": "data", "array": [r[1] for r in rewards]},
        ),
        1,
        1,
    )
    for key in HARD:
        vals = [table[n].get(key, [0, 0]) for n in names]
        fig.add_trace(
            go.Bar(
                x=[v[0] for v in vals],
                y=names,
                orientation="h",
                name=key,
                error_x={"type": "data", "array": [v[1] for v in vals]},
            ),
            1,
            2,
        )
    fig.update_layout(height=120 + 40 * len(names), barmode="group", margin={"l": 260})
    fig.update_yaxes(autorange="reversed")
    return fig


def figure_html(table: dict[str, dict[str, list[float]]]) -> str:
    return figure(table).to_html(include_plotlyjs="cdn", full_html=True)
