"""`adpa reproduce`: the paper's method table measured on the toy world, with its exact reward.

For each seed: build the toy world (skipping seeds whose teacher fails the health gates of DESIGN.md 4a),
then train the SFT student with every method under the same step budget. Each method's settings (learning
rate, and gamma for ADPA) are chosen on the validation prompts by the small sweep in `ROWS`; the chosen run
is then scored on the test prompts. Across seeds: mean and a 95% t-interval. The reference-code preset
rows are followed by one row per `objective.released_code` switch, the preset with that switch alone
turned off (same seed, same settings as the preset row): their paired differences with t-values measure
each detail of the released code. Writes `table.md`, `results.json` and `figure.html` to the output folder.
"""

from __future__ import annotations

import json
import random
import shutil
import time
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from dataclasses import dataclass, field
from multiprocessing import get_context
from pathlib import Path
from typing import Any

from .config import config_from_dict
from .data import load_prompts
from .reproduce_table import HARD, ablation_markdown, ablations, aggregate, figure_html, markdown
from .runs import atomic_write_json, atomic_write_text
from .toy.models import BUILD_RECIPE

LR = tuple({"learning_rate": lr} for lr in (3e-4, 1e-3, 3e-3))
DPO_LR = tuple({"learning_rate": lr} for lr in (3e-5, 1e-4, 3e-4))
ADPA = tuple({"learning_rate": lr, "gamma": g} for lr in (1e-3, 3e-3) for g in (0.5, 1.5))


@dataclass(frozen=True)
class Row:
    """One line of the table: a method, its fixed settings and its sweep."""

    name: str
    method: str | None = None  # None: no training (the model is scored as it is)
    objective: dict[str, Any] = field(default_factory=dict)
    sweep: tuple[dict[str, Any], ...] = ({},)
    model: str = "toy:student"  # "dckd": the selected DCKD run of the same seed (ADPA+)
    base: str | None = None  # an ablation: trained with this row's chosen settings, compared with it


PRESET = "reference-code preset (top-50 cache, clipped)"
PRESET_DCKD = "reference-code preset, DCKD (online teacher)"
# The preset each released-code switch is measured on: the method whose loss it changes the most.
SWITCH_BASE = {
    "reference_imputation": PRESET,
    "advantage_floor": PRESET,
    "eos_without_teacher": PRESET,
    "micro_batch_mean": PRESET,
    "unit_beta": PRESET,
    "prob_floors": PRESET_DCKD,
    "kl_topk_online": PRESET_DCKD,
}
# unit_beta off: the paper's advantage beta log(pi_dpo / pi_ref), with the toy teacher's DPO beta.
TEACHER_BETA = float(BUILD_RECIPE["full"]["teacher_dpo"]["beta"])


def switch_off(switch: str) -> Row:
    """The preset of `SWITCH_BASE[switch]` with that switch alone turned off."""
    method = "adpa" if SWITCH_BASE[switch] == PRESET else "dckd"
    objective: dict[str, Any] = {"preset": "reference-code", "released_code": {switch: False}}
    if switch == "unit_beta":
        objective["beta"] = TEACHER_BETA
    return Row(f"{method.upper()} preset without {switch}", method, objective, base=SWITCH_BASE[switch])


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
    Row(PRESET, "adpa", {"preset": "reference-code"}, LR),
    *(switch_off(s) for s in SWITCH_BASE if SWITCH_BASE[s] == PRESET),
    Row(PRESET_DCKD, "dckd", {"preset": "reference-code"}, LR),
    *(switch_off(s) for s in SWITCH_BASE if SWITCH_BASE[s] == PRESET_DCKD),
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
        objective.pop("gamma")  # the preset's 1.6
        if row.method == "adpa":  # the released ADPA reads a top-k cache; its DCKD row runs online
            objective.update(teacher_source="cache", teacher_cache=str(out / "caches" / "reference-code"))
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


def _train_row(
    row: Row,
    seed_dir: Path,
    model: str,
    val: list[dict],
    world: Any,
    budget: Budget,
    sweep: tuple[dict[str, Any], ...] | None = None,
) -> dict:
    """Trains every setting of `sweep` (default: the row's); returns the run chosen by validation reward."""
    from .teacher import build_teacher_cache
    from .train import run_training

    candidates = []
    for i, settings in enumerate(sweep or (row.sweep if budget.sweep else row.sweep[:1])):
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
        complete = set(result["rows"]) == {row.name for row in ROWS}
        if same_world and ((result.get("budget") == budget.__dict__ and complete) or gate_failed):
            return result  # (health has no budget)
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
                sweep = (results["rows"][row.base]["chosen"]["settings"],) if row.base else None
                chosen = _train_row(row, seed_dir, model, val, world, budget, sweep)
                model = chosen["run"]
            report = _score(model, test, world, budget)
            baseline = baseline or report
            results["rows"][row.name] = {
                "chosen": chosen,
                **(
                    {"base": row.base, "switch": next(iter(row.objective["released_code"]))}
                    if row.base
                    else {}
                ),
                "seconds": time.perf_counter() - t0,
                **_metrics(report, None if report is baseline else baseline),
            }
        atomic_write_json(saved, results)
        return results


def _run_seeds(
    seeds: int, out: Path, budget: Budget, quick: bool, limit: int, jobs: int, worker: Any = None
) -> tuple[dict[int, dict[str, Any]], dict[int, Any]]:
    """Seeds 0, 1, ... until `seeds` of them pass the health gates (at most `limit` tried), `jobs` at a
    time: (results of the healthy seeds, health of the skipped ones), both keyed by seed in order.
    `worker(seed, out, budget, quick)` is `run_seed` (a picklable top-level function)."""
    worker = worker or run_seed
    per_seed: dict[int, dict[str, Any]] = {}
    skipped: dict[int, Any] = {}

    def record(seed: int, result: dict[str, Any]) -> None:
        healthy = quick or all(g["ok"] for g in result["health"].values())
        (per_seed if healthy else skipped)[seed] = result if healthy else result["health"]
        print(f"seed {seed}: {'done' if healthy else 'skipped (health gates)'}", flush=True)

    next_seed = 0
    if jobs <= 1:
        while len(per_seed) < seeds and next_seed < limit:
            record(next_seed, worker(next_seed, out, budget, quick))
            next_seed += 1
    else:
        with ProcessPoolExecutor(max_workers=jobs, mp_context=get_context("spawn")) as pool:
            pending: dict[Any, int] = {}
            while True:
                while len(per_seed) + len(pending) < seeds and next_seed < limit:
                    pending[pool.submit(worker, next_seed, out, budget, quick)] = next_seed
                    next_seed += 1
                if not pending:
                    break
                done, _ = wait(pending, return_when=FIRST_COMPLETED)
                for future in done:
                    record(pending.pop(future), future.result())
    return dict(sorted(per_seed.items())), dict(sorted(skipped.items()))


def reproduce(
    seeds: int = 3,
    out: str | Path = "results/reproduce",
    quick: bool = False,
    budget: Budget | None = None,
    max_tries: int | None = None,
    command: str = "adpa reproduce",
    jobs: int = 1,
) -> dict[str, Any]:
    """Runs the table on `seeds` seeds whose toy world passes the health gates; writes the results.

    `jobs` seeds run at the same time, each in its own process on one thread (seeds are independent)."""
    out = Path(out)
    budget = budget or (QUICK if quick else Budget())
    per_seed, skipped = _run_seeds(seeds, out, budget, quick, max_tries or seeds + 3, jobs)
    if not per_seed:
        raise RuntimeError(f"no seed passed the toy world's health gates: {skipped}")
    table = aggregate(per_seed)
    diffs = ablations(per_seed)
    results = {
        "seeds": list(per_seed),
        "skipped_seeds": skipped,
        "budget": budget.__dict__,
        "table": table,
        "released_code_switches": diffs,
        "per_seed": per_seed,
        "command": command,
    }
    atomic_write_json(out / "results.json", results)
    text = markdown(table, list(per_seed), command)
    text += "\n## Released-code switches, each turned off alone\n\n" + ablation_markdown(diffs)
    atomic_write_text(out / "table.md", text)
    atomic_write_text(out / "figure.html", figure_html(table))
    return results
