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


REAL_BUILDS = ("docs/realworld/manifest-quick.json", "docs/realworld/manifest-full.json")


def _build_label(m: dict[str, Any]) -> str:
    dpo = m["recipe"]["teacher_dpo"]
    mode = "`--quick`" if m["mode"] == "quick" else "full"
    return (
        f"{mode}: {m['recipe']['prompts']['train']} train prompts, {dpo['steps']} DPO steps at {dpo['lr']:g}"
    )


def realworld_builds(manifests: list[dict[str, Any]]) -> str:
    header = [
        "build",
        "wall (shared machine)",
        "CPU, one thread",
        "load average at start",
        "sampling pairs / DPO / evaluation (share of wall)",
    ]
    rows = []
    for m in manifests:
        b = m["build"]
        steps = b["steps_seconds"]
        shares = " / ".join(
            f"{100 * steps[k] / b['seconds']:.0f}%" for k in ("pairs", "teacher_dpo", "evaluation")
        )
        load = f"{b['load_average_at_start'][0]:.1f}"
        rows.append(
            [_build_label(m), f"{b['seconds']:,.0f} s", f"**{b['cpu_seconds']:,.0f} s**", load, shares]
        )
    return markdown(header, rows)


def realworld_eval(manifests: list[dict[str, Any]]) -> str:
    header = [
        "model",
        "build",
        "judge, `test`",
        "judge, `unseen` kinds",
        "content right (test)",
        "instructions met (test)",
        "words",
        "hacks",
    ]
    names = {"teacher_ref": "`real:teacher_ref` = `real:student`", "teacher": "`real:teacher` (DPO adapter)"}
    rows = []
    for m in manifests:
        for key, label in names.items():
            test, unseen = m["evaluation"][key]["test"], m["evaluation"][key]["unseen"]
            rows.append(
                [
                    label,
                    m["mode"],
                    f"{test['reward']:.3f}",
                    f"{unseen['reward']:.3f}",
                    f"{test['content_all']:.2f}",
                    f"{test['instructions_all']:.2f}",
                    f"{test['mean_words']:.1f}",
                    f"{test['any_hack_rate']:.2f}",
                ]
            )
    return markdown(header, rows)


def realworld_pairs(manifests: list[dict[str, Any]]) -> str:
    header = [
        "build",
        "pairs (train prompts)",
        "ties",
        "judge: chosen / rejected",
        "implicit reward ranks chosen first (held-out pairs)",
        "gate",
    ]
    rows = []
    for m in manifests:
        train, adv = m["pairs"]["stats"]["train"], m["evaluation"]["advantages"]
        gate = m["evaluation"]["health"]["rank_rate"]
        verdict = "met" if gate["ok"] else f"**below the {100 * gate['min']:.0f}% gate**"
        rows.append(
            [
                m["mode"],
                f"{train['pairs']} of {train['prompts']}",
                f"{100 * train['tie_rate']:.0f}%",
                f"{train['chosen_score']:.2f} / {train['rejected_score']:.2f}",
                f"{100 * adv['rank_rate']:.0f}% of {adv['pairs']}",
                verdict,
            ]
        )
    return markdown(header, rows)


def realworld_skills(manifests: list[dict[str, Any]]) -> str:
    """Per content and instruction kind on the `test` prompts: the reference, then the teacher, per build."""
    header = ["on `test` prompts (count in the full build)"]
    for m in manifests:
        header += [f"reference ({m['mode']})", f"teacher ({m['mode']})"]
    full = manifests[-1]["evaluation"]["teacher"]["test"]
    rows = []
    for group, label in (("content", "right: {}"), ("instructions", "met: {}")):
        for kind in sorted(full[group]):
            count = f" ({full['count'][kind]})" if group == "instructions" else ""
            cells = [label.format(kind.replace("_", " ")) + count]
            for m in manifests:
                for who in ("teacher_ref", "teacher"):
                    value = m["evaluation"][who]["test"][group].get(kind)
                    cells.append("—" if value is None else f"{value:.2f}")
            rows.append(cells)
    cells = ["any hack (echo, repetition, empty)"]
    for m in manifests:
        cells += [f"{m['evaluation'][w]['test']['any_hack_rate']:.2f}" for w in ("teacher_ref", "teacher")]
    return markdown(header, rows + [cells])


def real_matrix(data: dict[str, Any]) -> str:
    """docs/RELIABILITY.md: each cell of `python -m benchmarks.real_matrix` (runs, or its refusal)."""
    header = ["method", "teacher source", "teacher weights", "eval", "result", "tokens/s"]
    rows = []
    for c in data["cells"]:
        result = "runs" if c["ok"] else f"refused: {c['reason']}"
        if c["ok"] and c["eval"]:
            result += ", eval loss logged" if c.get("eval_logged") else ", **no eval loss logged**"
        speed = f"{c['tokens_per_s']:.0f}" if c.get("tokens_per_s") else ""
        rows.append(
            [c["method"], c["source"], c["quantization"], "on" if c["eval"] else "off", result, speed]
        )
    note = (
        f"\n\n`{data['command']}` at commit {data['commit']} on {data['machine']}; {data['steps']} optimizer "
        "steps per cell after loading (tokens/s over those steps, prompt and padding tokens included), "
        f"{data['seconds']:.0f} s in all."
    )
    if len(data["cells"]) < data["planned"]:
        note += f" Interrupted: {len(data['cells'])} of {data['planned']} cells ran."
    return markdown(header, rows) + note
