"""`adpa reproduce`: the paper's method table measured on the toy world, with its exact reward.

For each seed: build the toy world (skipping seeds whose teacher fails the health gates of DESIGN.md 4a),
then train the SFT student with every method under the same step budget. Each method's settings (learning
rate, and gamma for ADPA) are chosen on the validation prompts by the small sweep in `ROWS`; the chosen run
is then scored on the test prompts. Across seeds: mean and a 95% t-interval. Writes `table.md`,
`results.json` and `figure.html` to the output folder.
"""

from __future__ import annotations

import json
import math
import random
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .config import config_from_dict
from .data import load_prompts
from .runs import atomic_write_json, atomic_write_text

LR = tuple({"learning_rate": lr} for lr in (3e-4, 1e-3, 3e-3))
DPO_LR = tuple({"learning_rate": lr} for lr in (3e-5, 1e-4, 3e-4))
ADPA = tuple({"learning_rate": lr, "gamma": g} for lr in (1e-3, 3e-3) for g in (0.5, 1.5))
HARD = ("fact_hard", "arith_2", "arith_3")


@dataclass(frozen=True)
class Row:
    """One line of the table: a method, its fixed settings and its sweep."""

    name: str
    method: str | None = None  # None: no training (the model is scored as it is)
    objective: dict[str, Any] = field(default_factory=dict)
    sweep: tuple[dict[str, Any], ...] = ({},)
    model: str = "toy:student"  # "dckd": the selected DCKD run of the same seed (ADPA+)


ROWS = (
    Row("SFT student (start)"),
    Row("SFT on chosen (control)", "sft", sweep=LR),
    Row("DPO", "dpo", {"beta_dpo": 0.1}, DPO_LR),
    Row("KD", "kd", sweep=LR),
    Row("DCKD", "dckd", sweep=LR),
    Row("ADPA (top-20)", "adpa", {"support": "topk", "k": 20}, ADPA),
    Row("ADPA (full vocabulary)", "adpa", {"support": "full"}, ADPA),
    Row("ADPA+ (top-20, from DCKD)", "adpa_plus", {"support": "topk", "k": 20}, ADPA, model="dckd"),
    Row("ADPA without reference", "adpa", {"support": "full", "use_reference": False}, ADPA),
    Row("reference-code preset (top-50 cache, clipped)", "adpa", {"preset": "reference-code"}, LR),
    Row("Teacher (DPO, ceiling)", model="toy:teacher"),
)


@dataclass
class Budget:
    steps: int = 300
    batch_size: int = 32
    val_prompts: int = 150
    test_prompts: int | None = None  # None: all
    max_new_tokens: int = 48
    sweep: bool = True
    max_examples: int | None = None  # training pairs used (None: all)
    # How a prompt split is cut to val_prompts/test_prompts: `random`, a seeded sample across its kinds, or
    # `first` N rows (the split files list all fact prompts before the arithmetic ones: facts only).
    prompt_sample: str = "random"


QUICK = Budget(
    steps=4, batch_size=8, val_prompts=12, test_prompts=24, max_new_tokens=24, sweep=False, max_examples=48
)


def _run_config(row: Row, settings: dict[str, Any], model: str, out: Path, name: str, budget: Budget) -> Any:
    objective = {"method": row.method, "max_new_tokens": budget.max_new_tokens, **row.objective}
    objective["gamma"] = settings.get("gamma", objective.get("gamma", 0.5))
    if row.objective.get("preset") == "reference-code":
        objective.update(teacher_source="cache", teacher_cache=str(out / "caches" / "reference-code"))
        objective.pop("gamma")
    model_cfg: dict[str, Any] = {"student": model, "device": "cpu", "dtype": "float32"}
    if row.method in ("kd", "dckd", "adpa", "adpa_plus"):
        model_cfg.update(teacher="toy:teacher", teacher_ref="toy:teacher_ref")
    return config_from_dict(
        {
            "name": name,
            "output_dir": str(out / "runs"),
            "model": model_cfg,
            "data": {
                "train": "toy:preferences",
                "max_length": 128,
                "max_prompt_length": 64,
                "max_examples": budget.max_examples,
            },
            "objective": objective,
            "train": {
                "max_steps": budget.steps,
                "batch_size": budget.batch_size,
                "lr_schedule": "cosine",
                "warmup_ratio": 0.05,
                "log_every": 10,
                "keep_checkpoints": 1,
                "learning_rate": settings.get("learning_rate", 1e-3),
            },
        }
    )


def _score(model: str, prompts: list[dict], world: Any, budget: Budget) -> dict[str, Any]:
    from .evaluate import evaluate_model
    from .rewards import toy_reward

    report = evaluate_model(
        model,
        None,
        prompts,
        toy_reward(world),
        max_new_tokens=budget.max_new_tokens,
        batch_size=64,
        device="cpu",
        n_boot=200,
    )
    return report


def _train_row(row: Row, seed_dir: Path, model: str, val: list[dict], world: Any, budget: Budget) -> dict:
    """Trains every setting of the row's sweep; returns the run chosen by validation reward."""
    from .teacher import build_teacher_cache
    from .train import run_training

    candidates = []
    for i, settings in enumerate(row.sweep if budget.sweep else row.sweep[:1]):
        name = f"{_slug(row.name)}-{i}"
        cfg = _run_config(row, settings, model, seed_dir, name, budget)
        shutil.rmtree(cfg.run_dir, ignore_errors=True)
        _share_yhat(seed_dir, cfg, model)
        if (
            cfg.objective.teacher_source == "cache"
            and not (Path(cfg.objective.teacher_cache) / "meta.json").exists()
        ):
            build_teacher_cache(cfg)
        run_training(cfg, progress=False)
        _keep_yhat(seed_dir, cfg, model)
        score = _score(str(cfg.run_dir), val, world, budget)["mean_reward"]
        candidates.append({"run": str(cfg.run_dir), "settings": settings, "val_reward": score})
    best = max(candidates, key=lambda c: c["val_reward"])
    return {**best, "candidates": candidates}


def _yhat_store(seed_dir: Path, model: str) -> Path:
    return seed_dir / "yhat" / f"{_slug(model)}.jsonl"


def _share_yhat(seed_dir: Path, cfg: Any, model: str) -> None:
    """Every ADPA run of a seed starts from the same student, so its y_hat is generated once."""
    store = _yhat_store(seed_dir, model)
    if cfg.objective.method in ("adpa", "adpa_plus") and store.exists():
        target = cfg.run_dir / "generations" / "yhat.jsonl"
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(store, target)


def _keep_yhat(seed_dir: Path, cfg: Any, model: str) -> None:
    made = cfg.run_dir / "generations" / "yhat.jsonl"
    store = _yhat_store(seed_dir, model)
    if made.exists() and not store.exists():
        store.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(made, store)


def _slug(text: str) -> str:
    return "".join(c if c.isalnum() else "-" for c in text.lower()).strip("-")[:40]


def _metrics(report: dict[str, Any], baseline: dict[str, Any] | None) -> dict[str, Any]:
    from .stats import win_tie_loss

    toy = report["toy"]
    out = {
        "reward": report["mean_reward"],
        "length": report["mean_length"],
        "never_stopped": report["never_stopped"],
        "rude": toy["rude_rate"],
        "ramble": toy["ramble_rate"],
        **{k: toy["correct"].get(k) for k in HARD},
        "fact_easy": toy["correct"].get("fact_easy"),
        "arith_1": toy["correct"].get("arith_1"),
    }
    if baseline is not None:
        scores = {r["id"]: r["reward"] for r in report["records"]}
        base = {r["id"]: r["reward"] for r in baseline["records"]}
        out["win_vs_sft"] = win_tie_loss(scores, base, n_boot=200)["win_rate"]
    return out


def sample_prompts(rows: list[dict], n: int | None, seed: int, how: str = "random") -> list[dict]:
    """`n` rows of a split in their file order: drawn at random (seeded) from the whole split, or the first
    `n` with `how="first"`; all when `n` is None."""
    if how not in ("random", "first"):
        raise ValueError(f"prompt_sample={how!r}; choose random or first")
    if n is None or n >= len(rows):
        return rows
    if how == "first":
        return rows[:n]
    keep = set(random.Random(f"prompts-{seed}").sample(range(len(rows)), n))
    return [row for i, row in enumerate(rows) if i in keep]


def run_seed(seed: int, out: Path, budget: Budget, quick: bool) -> dict[str, Any]:
    """Builds the toy world of `seed` and scores every row on its test prompts; a world that fails the
    health gates is not used (its rows stay empty) unless `quick`. Finished seeds are kept in
    `seed-N/result.json` and reused by a rerun with the same budget on the same world (`world_key`)."""
    from .toy.build import build, one_thread, toy_home, world_key
    from .toy.world import make_world

    seed_dir = out / f"seed-{seed}"
    saved = seed_dir / "result.json"
    if saved.exists():
        result = json.loads(saved.read_text(encoding="utf-8"))
        gate_failed = not quick and not all(g["ok"] for g in result["health"].values())
        same_world = result.get("world_key") == world_key(seed, quick)
        if same_world and (result.get("budget") == budget.__dict__ or gate_failed):  # health has no budget
            return result
    world = make_world(seed)
    with toy_home(seed_dir / "home"), one_thread():
        manifest = build(seed_dir / "home", seed=seed, quick=quick, progress=False)
        results: dict[str, Any] = {
            "world_key": manifest["data_key"],
            "health": manifest["evaluation"]["health"],
            "rows": {},
            "budget": budget.__dict__,
        }
        if not quick and not all(g["ok"] for g in results["health"].values()):
            atomic_write_json(saved, results)
            return results
        val, test = (
            sample_prompts(load_prompts("toy:prompts", split=split), n, seed, budget.prompt_sample)
            for split, n in (("validation", budget.val_prompts), ("test", budget.test_prompts))
        )
        baseline = None
        for row in ROWS:
            t0 = time.perf_counter()
            chosen = None
            model = row.model
            if row.model == "dckd":
                model = results["rows"]["DCKD"]["chosen"]["run"]
            if row.method is not None:
                chosen = _train_row(row, seed_dir, model, val, world, budget)
                model = chosen["run"]
            report = _score(model, test, world, budget)
            baseline = baseline or report
            results["rows"][row.name] = {
                "chosen": chosen,
                "seconds": time.perf_counter() - t0,
                **_metrics(report, None if report is baseline else baseline),
            }
        atomic_write_json(saved, results)
        return results


# ---------------------------------------------------------------- across seeds

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
T_975 = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447, 7: 2.365, 8: 2.306, 9: 2.262}


def mean_ci(values: list[float]) -> tuple[float, float]:
    """Mean and the half-width of a 95% t-interval over seeds (0 for one seed)."""
    n = len(values)
    mean = sum(values) / n
    if n < 2:
        return mean, 0.0
    sd = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1))
    return mean, T_975.get(n - 1, 1.96) * sd / math.sqrt(n)


def aggregate(per_seed: dict[int, dict[str, Any]]) -> dict[str, dict[str, list[float]]]:
    """{row: {column: [mean, half_width]}} over the seeds."""
    table: dict[str, dict[str, list[float]]] = {}
    for row in ROWS:
        cells = {}
        for key, _ in COLUMNS:
            values = [s["rows"][row.name].get(key) for s in per_seed.values()]
            values = [v for v in values if v is not None]
            if values:
                cells[key] = list(mean_ci(values))
        table[row.name] = cells
    return table


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


def reproduce(
    seeds: int = 3,
    out: str | Path = "results/reproduce",
    quick: bool = False,
    budget: Budget | None = None,
    max_tries: int | None = None,
    command: str = "adpa reproduce",
) -> dict[str, Any]:
    """Runs the table on `seeds` seeds whose toy world passes the health gates; writes the results."""
    out = Path(out)
    budget = budget or (QUICK if quick else Budget())
    per_seed: dict[int, dict[str, Any]] = {}
    skipped: dict[int, Any] = {}
    seed = 0
    while len(per_seed) < seeds and seed < (max_tries or seeds + 3):
        result = run_seed(seed, out, budget, quick)
        healthy = all(g["ok"] for g in result["health"].values())
        (per_seed if healthy or quick else skipped)[seed] = result if healthy or quick else result["health"]
        seed += 1
    if not per_seed:
        raise RuntimeError(f"no seed passed the toy world's health gates: {skipped}")
    table = aggregate(per_seed)
    results = {
        "seeds": list(per_seed),
        "skipped_seeds": skipped,
        "budget": budget.__dict__,
        "table": table,
        "per_seed": per_seed,
        "command": command,
    }
    atomic_write_json(out / "results.json", results)
    atomic_write_text(out / "table.md", markdown(table, list(per_seed), command))
    atomic_write_text(out / "figure.html", figure_html(table))
    return results
