"""Renderers of blocks that no module of their own renders (registered in scripts/docs_tables.py): README's
toy world from the manifest `adpa toy build --record` wrote, and docs/RELIABILITY.md's case counts from the
robustness suite's JSON; and the markdown table helper they share with docs_tables."""

from __future__ import annotations

from typing import Any


def markdown(header: list[str], rows: list[list[Any]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def _pct(x: float) -> str:
    return f"{100 * x:.0f}%"


def toy_world(m: dict[str, Any]) -> str:
    """README's toy-world block from `adpa toy build --record docs/data/toy_world.json` (its manifest)."""
    ev, host, p = m["evaluation"], m.get("host", {}), m["parameters"]
    count = ev["teacher"]["count"]
    load = host.get("load_average")
    busy = f", load average {load[0]:.1f} when it started" if load else ""
    lines = [
        f"`{m['command']}` — {m['mode']} world, seed {m['seed']}, built in {m['build_seconds']:.0f} s on "
        f"{host.get('cpu', 'an unrecorded CPU')} ({host.get('cpu_count', '?')} cores{busy}), "
        f"{host.get('date_utc', '?')} UTC. Teacher {p['teacher'] / 1e6:.2f} M parameters, student "
        f"{p['student'] / 1e6:.2f} M ({m['teacher_student_ratio']:.1f}× smaller), a {m['vocab_size']}-token "
        "vocabulary.",
        f"Held-out test prompts: {count['fact_easy']} easy and {count['fact_hard']} hard fact prompts, "
        f"{count['arith_1']} / {count['arith_2']} / {count['arith_3']} arithmetic prompts of 1 / 2 / 3 "
        "steps; correctness per subset, rude and rambling rates of the replies (greedy):",
    ]
    names = {"teacher_ref": "teacher SFT", "teacher": "teacher DPO", "student": "student SFT"}
    rows = []
    for name, label in names.items():
        e, c = ev[name], ev[name]["correct"]
        arith = " / ".join(f"{c[f'arith_{i}']:.2f}" for i in (1, 2, 3))
        rates = [e["reward"], c["fact_easy"], c["fact_hard"]]
        rows.append([f"`toy:{name}` ({label})", *(f"{x:.2f}" for x in rates), arith])
        rows[-1] += [f"{e['rude_rate']:.2f}", f"{e['ramble_rate']:.2f}"]
    header = ["model", "reward", "easy facts", "hard facts", "arith 1 / 2 / 3 steps", "rude", "ramble"]
    adv = ev["advantages"]
    kinds = ", ".join(f"{k} {_pct(v)}" for k, v in adv["flaw_hit_rate_by_kind"].items())
    gates = "; ".join(
        f"{k} {g['value']:.2f} ({'>=' if 'min' in g else '<='} {g.get('min', g.get('max'))}: "
        f"{'passed' if g['ok'] else 'FAILED'})"
        for k, g in ev["health"].items()
    )
    lines += [
        markdown(header, rows),
        f"The teacher's summed token advantages rank the chosen reply above the rejected one on "
        f"{_pct(adv['rank_rate'])} of {adv['pairs']} held-out pairs; the most negative token advantage of a "
        f"rejected reply falls on one of its flaw tokens in {_pct(adv['flaw_hit_rate'])} of them ({kinds}). "
        f"Health gates: {gates}.",
    ]
    return "\n\n".join(lines)


def robustness(r: dict[str, Any]) -> str:
    """docs/RELIABILITY.md's counts per test file, from the JSON tests/robustness/conftest.py wrote."""
    m, t = r["machine"], r["totals"]
    head = (
        f"`{r['command']}` — {m['cpu']} ({m['cpu_count']} cores), {m['date_utc']} UTC, load average "
        f"{m['load_average'][0]:.1f} at the end: **{t['cases']} cases, {t['passed']} passed, {t['failed']} "
        f"failed, {t['skipped']} skipped**."
    )
    files = r["files"]
    mixed = len({f["recorded_at"] for f in files.values()}) > 1  # entries kept from an earlier run
    cols = ["test file", "cases", "passed", "failed", "skipped"] + (["recorded at"] if mixed else [])
    rows = []
    for name, f in files.items():
        rows.append([f"`{name.split('/')[-1]}`", f["cases"], f["passed"], f["failed"], f["skipped"]])
        rows[-1] += [f["recorded_at"]] if mixed else []
    return head + "\n\n" + markdown(cols, rows)
