"""`make mutate`: mutation testing of the core modules with mutmut (requirements-mutate.txt), one module at a
time; writes docs/mutation.json and renders docs/MUTATION.md from it.

Each module runs in its own folder .mutation/<name>/ (git-ignored): a copy of adpa_core/ and tests/ and a
pyproject.toml whose [tool.mutmut] section names the module and the test files that exercise it. mutmut
first runs those tests once to learn which test calls which function, then runs, for each mutant, only the
tests that call the mutated function (stopping at the first failure). A mutant no test notices "survived";
docs/mutation-equivalent.json explains the survivors that are equivalent to the original code (no test can
tell them apart), each tied to its exact change so that a stale explanation shows.

`--recheck` re-tests only the mutants a full run left alive, against the module's current test list (new
tests for its survivors, run first), in that run's folder: each one is killed when a test fails with it
switched on (mutmut's MUTANT_UNDER_TEST); the survivors explained as equivalent are not re-tested. It
refuses when the module changed since the run (the mutants would be stale); the mutants the full run killed
stay killed, since tests are only ever added. The report gives both dates.

`--max-minutes N` stops each module's run after N minutes; the mutants it did not reach are counted as
"not run" and the score is over the tested ones. `--collect` records a run left in .mutation/<name>/ (e.g.
one stopped by hand with Ctrl-C, which mutmut saves).

    python scripts/mutate.py [--only losses,rows] [--jobs 2] [--render | --recheck | --collect]
        [--max-minutes N]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shutil
import signal
import subprocess
import sys
import time
import tomllib
from concurrent.futures import ThreadPoolExecutor
from importlib.metadata import version
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
WORK = ROOT / ".mutation"
OUT_JSON = ROOT / "docs" / "mutation.json"
OUT_MD = ROOT / "docs" / "MUTATION.md"
NOTES = ROOT / "docs" / "mutation-equivalent.json"
MUTMUT = Path(sys.executable).with_name("mutmut")

# module -> (file, the test files (or test ids) that exercise it: the fastest relevant ones)
MODULES: dict[str, tuple[str, list[str]]] = {
    "losses": ("adpa_core/losses.py", ["tests/test_losses.py", "tests/test_losses_defaults.py"]),
    "objectives": (
        "adpa_core/objectives.py",
        [
            "tests/test_wiring_steps.py",
            "tests/test_wiring_teacher.py",
            "tests/test_wiring_paths.py",
            "tests/test_released_code.py",
            "tests/test_train.py::test_first_step_loss_equals_hand_computed",
        ],
    ),
    "terms": (  # the per-token terms, split out of objectives.py
        "adpa_core/terms.py",
        [
            "tests/test_terms_by_hand.py",
            "tests/test_wiring_teacher.py",
            "tests/test_released_code.py",
            "tests/test_train.py::test_first_step_loss_equals_hand_computed",
        ],
    ),
    "teacher": (
        "adpa_core/teacher.py",
        [
            "tests/test_teacher_units.py",
            "tests/test_teacher_cache.py",
            "tests/test_teacher_cache_refusals.py",
            "tests/test_run_inputs.py",
            "tests/test_released_cache.py",
            "tests/test_wiring_teacher.py",
            "tests/test_train.py::test_cached_teacher_with_k_equal_v_matches_online",
            "tests/test_train.py::test_stale_cache_is_refused",
        ],
    ),
    "chunked": (
        "adpa_core/chunked.py",
        ["tests/test_chunked_units.py", "tests/test_chunked.py", "tests/test_output_transforms.py"],
    ),
    "rows": ("adpa_core/data/rows.py", ["tests/test_data.py", "tests/test_data_messages.py"]),
}
STATUS = {1: "killed", 3: "killed", 0: "survived", 5: "no tests", 33: "no tests", 34: "skipped"}
TIMEOUTS = {36, 24, -24, 152, 255}
ENV = {
    "OMP_NUM_THREADS": "1",
    "MKL_NUM_THREADS": "1",
    "HF_HUB_OFFLINE": "1",
    "HF_DATASETS_OFFLINE": "1",
    "HF_HUB_DISABLE_TELEMETRY": "1",
    "GRADIO_ANALYTICS_ENABLED": "False",
    "TOKENIZERS_PARALLELISM": "false",
}


def _status(code: int | None) -> str:
    if code is None:
        return "not run"
    if code in TIMEOUTS:
        return "timeout"
    return STATUS.get(code, "suspicious")


def prepare(name: str, module: str, tests: list[str]) -> Path:
    """A fresh copy of the package and the tests with this module's mutmut section."""
    work = WORK / name
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    skip = shutil.ignore_patterns("__pycache__", "*.pyc")
    for folder in ("adpa_core", "tests"):
        shutil.copytree(ROOT / folder, work / folder, ignore=skip)
    section = {
        "source_paths": ["adpa_core"],
        "only_mutate": [module],
        "pytest_add_cli_args_test_selection": tests,
        "pytest_add_cli_args": ["-p", "no:cacheprovider", "-W", "ignore", "-m", "not slow and not gpu"],
    }
    body = "\n".join(f"{k} = {json.dumps(v)}" for k, v in section.items())
    text = (ROOT / "pyproject.toml").read_text(encoding="utf-8")
    (work / "pyproject.toml").write_text(f"{text}\n[tool.mutmut]\n{body}\n", encoding="utf-8")
    return work


def _diff(work: Path, mutant: str) -> str:
    shown = subprocess.run(
        [str(MUTMUT), "show", mutant], cwd=work, capture_output=True, text=True, env={**os.environ, **ENV}
    ).stdout
    lines = [ln for ln in shown.splitlines() if ln[:1] in "+-" and not ln.startswith(("---", "+++"))]
    return "\n".join(lines)


def run_module(name: str, jobs: int, minutes: float | None = None) -> dict:
    """A full mutmut run of one module; with `minutes`, stopped there (the mutants not reached: "not run")."""
    module, tests = MODULES[name]
    work = prepare(name, module, tests)
    print(f"== {name}: {module} with {', '.join(tests)}", flush=True)
    start = time.perf_counter()
    cmd = ["nice", "-n", "10", str(MUTMUT), "run", "--max-children", str(jobs)]
    with open(work / "mutmut.log", "w", encoding="utf-8") as log:
        proc = subprocess.Popen(
            cmd,
            cwd=work,
            stdout=log,
            stderr=subprocess.STDOUT,
            env={**os.environ, **ENV},
            start_new_session=True,
        )
        try:
            code = proc.wait(timeout=None if minutes is None else minutes * 60)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGINT)  # mutmut saves what it has tested and stops
            code = proc.wait()
    if code != 0 and minutes is None:
        tail = (work / "mutmut.log").read_text(encoding="utf-8", errors="replace")[-3000:]
        raise SystemExit(f"mutmut failed on {module} (exit {code}); log tail:\n{tail}")
    return collect(name, time.perf_counter() - start)


def collect(name: str, wall: float | None = None) -> dict:
    """The result of the mutmut run in .mutation/<name>/ (also one stopped by hand: `--collect`)."""
    module, tests = MODULES[name]
    work = WORK / name
    meta_path = work / "mutants" / f"{module}.meta"
    if not meta_path.exists():
        tail = (work / "mutmut.log").read_text(encoding="utf-8", errors="replace")[-3000:]
        raise SystemExit(f"mutmut left no results for {module}; log tail:\n{tail}")
    if wall is None:  # from the folder's creation to mutmut's last result
        wall = meta_path.stat().st_mtime - (work / "pyproject.toml").stat().st_mtime
    run_tests = tomllib.loads((work / "pyproject.toml").read_text(encoding="utf-8"))["tool"]["mutmut"]
    codes = json.loads(meta_path.read_text(encoding="utf-8"))["exit_code_by_key"]
    by_status: dict[str, list[str]] = {}
    for mutant, code in sorted(codes.items(), key=lambda kv: _natural(kv[0])):
        by_status.setdefault(_status(code), []).append(mutant)
    left = {
        s: [{"mutant": m, "change": _diff(work, m)} for m in ms]
        for s, ms in by_status.items()
        if s not in ("killed", "not run")
    }
    result = {
        "module": module,
        "tests": run_tests["pytest_add_cli_args_test_selection"],
        "mutants": len(codes),
        "counts": {s: len(ms) for s, ms in by_status.items()},
        "not_killed": left,
        "wall_s": round(wall, 1),
        "date_utc": time.strftime("%Y-%m-%d %H:%M", time.gmtime(meta_path.stat().st_mtime)),
    }
    print(f"   {result['counts']} in {wall:.0f} s", flush=True)
    return result


PYTEST_ARGS = ["-x", "-q", "-p", "no:cacheprovider", "-W", "ignore", "-m", "not slow and not gpu"]


def _pytest(mutants: Path, tests: list[str], mutant: str, timeout: float) -> int | None:
    """Exit code of the tests run in mutmut's `mutants/` folder with `mutant` switched on (None: timeout)."""
    cmd = ["nice", "-n", "10", sys.executable, "-m", "pytest", *PYTEST_ARGS, *tests]
    env = {**os.environ, **ENV, "MUTANT_UNDER_TEST": mutant}
    try:
        return subprocess.run(cmd, cwd=mutants, env=env, capture_output=True, timeout=timeout).returncode
    except subprocess.TimeoutExpired:
        return None


def recheck_module(name: str, result: dict, jobs: int) -> dict:
    """The full run's `result` with its not-killed mutants re-tested against the current test list."""
    module, tests = MODULES[name]
    tests = [t for t in tests if t not in result["tests"]] + [t for t in tests if t in result["tests"]]
    work = WORK / name
    mutants = work / "mutants"
    if not (mutants / module).exists():
        raise SystemExit(f"{name}: no mutmut folder at {work}; run `make mutate MUTATE_ARGS='--only {name}'`")
    if (work / module).read_bytes() != (ROOT / module).read_bytes():
        raise SystemExit(
            f"{name}: {module} changed since its mutation run; run the module again (no --recheck)"
        )
    shutil.rmtree(mutants / "tests")
    shutil.copytree(ROOT / "tests", mutants / "tests", ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    start = time.perf_counter()
    if _pytest(mutants, tests, "", 3600) != 0:
        raise SystemExit(f"{name}: the tests fail without a mutant; fix them first")
    clean = time.perf_counter() - start
    notes = _notes()  # explained equivalents: no test can kill them, so they are not re-tested
    left = [
        (status, m)
        for status, ms in result["not_killed"].items()
        for m in ms
        if notes.get(m["mutant"], {}).get("change") != m["change"]
    ]
    print(
        f"== {name}: re-testing {len(left)} mutants with {', '.join(tests)} (clean run {clean:.0f} s)",
        flush=True,
    )
    with ThreadPoolExecutor(jobs) as pool:
        codes = list(pool.map(lambda sm: _pytest(mutants, tests, sm[1]["mutant"], 10 * clean + 60), left))
    counts = dict(result["counts"])
    not_killed: dict[str, list[dict]] = {}
    kept = {m["mutant"] for _, m in left}
    for status, ms in result["not_killed"].items():
        not_killed[status] = [m for m in ms if m["mutant"] not in kept]
    for (status, m), code in zip(left, codes, strict=True):
        now = "killed" if code == 1 else ("timeout" if code is None else status)
        if now != status:
            counts[status] -= 1
            counts[now] = counts.get(now, 0) + 1
        if now != "killed":
            not_killed.setdefault(now, []).append(m)
    for ms in not_killed.values():
        ms.sort(key=lambda m: _natural(m["mutant"]))
    wall = time.perf_counter() - start
    print(f"   {counts} in {wall:.0f} s", flush=True)
    return {
        **result,
        "counts": {s: n for s, n in counts.items() if n},
        "not_killed": {s: ms for s, ms in not_killed.items() if ms},
        "recheck": {
            "tests": tests,
            "wall_s": round(wall, 1),
            "date_utc": time.strftime("%Y-%m-%d %H:%M", time.gmtime()),
        },
    }


def _natural(mutant: str) -> tuple:
    return tuple(int(p) if p.isdigit() else p for p in re.split(r"(\d+)", mutant))


def _notes() -> dict[str, dict[str, str]]:
    if not NOTES.exists():
        return {}
    return {n["mutant"]: n for n in json.loads(NOTES.read_text(encoding="utf-8"))}


def scores(result: dict, notes: dict[str, dict[str, str]]) -> dict:
    """Counts of one module: killed, equivalent (explained survivors whose change still matches), the rest."""
    killed = result["counts"].get("killed", 0)
    left = [m for ms in result["not_killed"].values() for m in ms]
    equivalent = [m for m in left if m["mutant"] in notes and notes[m["mutant"]]["change"] == m["change"]]
    total = result["mutants"]
    not_run = result["counts"].get("not run", 0)  # a time-limited run: the score is over the tested ones
    return {
        "killed": killed,
        "equivalent": len(equivalent),
        "not_killed": len(left) - len(equivalent),
        "not_run": not_run,
        "score": killed / max(total - not_run - len(equivalent), 1),
        "raw": killed / max(total, 1),
    }


HEADER = """# Mutation testing

<!-- Rendered by `python scripts/mutate.py --render` from docs/mutation.json (written by `make mutate`)
and docs/mutation-equivalent.json (the explanations of equivalent survivors); do not edit by hand. -->

A mutant is a copy of a module with one small change (an operator, a constant, a condition, a removed
argument, a string). Tests that notice every change that matters kill every mutant except the equivalent ones
(changes that no input can tell apart). `make mutate` runs [mutmut](https://mutmut.readthedocs.io) {mutmut}
over each module with the test files listed below; for each mutant mutmut runs only the tests that call the
mutated function. mutmut does not mutate decorated functions (e.g. `@torch.no_grad()`) nor code outside
functions.

Command: `make mutate` (one module: `make mutate MUTATE_ARGS='--only rows'`; only the survivors of the last
run, against the current tests: `make mutate MUTATE_ARGS='--recheck --only rows'`); {machine}.

| module | mutants | killed | equivalent | not killed | not run | score | killed / all | wall time |
|---|---:|---:|---:|---:|---:|---:|---:|---:|
"""


def render(data: dict) -> str:
    notes = _notes()
    out = [HEADER.format(mutmut=data["mutmut"], machine=data["machine"]).rstrip("\n")]
    for r in data["modules"].values():
        s = scores(r, notes)
        cells = [
            r["mutants"],
            s["killed"],
            s["equivalent"],
            s["not_killed"],
            s["not_run"],
            f"{s['score']:.1%}",
            f"{s['raw']:.1%}",
        ]
        out.append(f"| `{r['module']}` | " + " | ".join(map(str, cells)) + f" | {r['wall_s'] / 60:.1f} min |")
    out += [
        "",
        "score = killed / (mutants - not run - equivalent); not killed = survived, no test calls it, or"
        " timeout; not run = mutants a run stopped early (`--max-minutes`, or by hand and recorded with"
        " `--collect`) did not reach.",
        "",
    ]
    for r in data["modules"].values():
        tests = ", ".join(f"`{t}`" for t in r["tests"])
        line = f"Tests: {tests} (run {r['date_utc']} UTC)."
        if "recheck" in r:
            again = ", ".join(f"`{t}`" for t in r["recheck"]["tests"])
            line += f" Its survivors re-tested {r['recheck']['date_utc']} UTC (`--recheck`) with: {again}."
        out += [f"## `{r['module']}`", "", line, ""]
        for status, mutants in r["not_killed"].items():
            for m in mutants:
                note = notes.get(m["mutant"])
                why = note["why"] if note and note["change"] == m["change"] else None
                out += [
                    f"- `{m['mutant']}` ({f'equivalent: {why}' if why else status.upper()})",
                    "",
                    "  ```diff",
                ]
                out += [f"  {line}" for line in m["change"].splitlines()] + ["  ```", ""]
    return "\n".join(out).rstrip() + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument(
        "--only", default="", help="comma-separated module names (default: all): " + ", ".join(MODULES)
    )
    ap.add_argument("--jobs", type=int, default=2, help="mutants tested in parallel")
    ap.add_argument(
        "--render", action="store_true", help="only render docs/MUTATION.md from docs/mutation.json"
    )
    ap.add_argument(
        "--recheck", action="store_true", help="re-test only the last run's surviving mutants (see above)"
    )
    ap.add_argument("--max-minutes", type=float, help="stop each module's run after this long")
    ap.add_argument(
        "--collect", action="store_true", help="record the runs left in .mutation/ (e.g. stopped by hand)"
    )
    args = ap.parse_args(argv)
    data = json.loads(OUT_JSON.read_text(encoding="utf-8")) if OUT_JSON.exists() else {"modules": {}}
    if args.recheck:
        for name in [n for n in args.only.split(",") if n] or list(data["modules"]):
            result = recheck_module(name, data["modules"][name], args.jobs)
            data = json.loads(OUT_JSON.read_text(encoding="utf-8"))
            data["modules"][name] = result
            OUT_JSON.write_text(json.dumps(data, indent=1) + "\n", encoding="utf-8")
    elif not args.render:
        names = [n for n in args.only.split(",") if n] or list(MODULES)
        for name in names:
            result = collect(name) if args.collect else run_module(name, args.jobs, args.max_minutes)
            data = json.loads(OUT_JSON.read_text(encoding="utf-8")) if OUT_JSON.exists() else {"modules": {}}
            data["modules"][name] = result  # saved module by module: an interrupted pass keeps what it did
            data["modules"] = {n: data["modules"][n] for n in MODULES if n in data["modules"]}
            data.update(
                mutmut=version("mutmut"),
                machine=f"{os.cpu_count()} CPU cores ({platform.machine()}), {args.jobs} mutants at once",
            )
            OUT_JSON.write_text(json.dumps(data, indent=1) + "\n", encoding="utf-8")
    OUT_MD.write_text(render(data), encoding="utf-8")
    print(f"wrote {OUT_MD.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
