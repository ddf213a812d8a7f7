"""Statistics of an evaluation: means with percentile-bootstrap confidence intervals, paired win rates.

The unit of resampling is the prompt: a bootstrap draws prompt indices with replacement, and paired
quantities (win / tie / loss against a baseline, reward differences) are resampled jointly, so their
intervals reflect the same draws.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np

Scores = Mapping[str, float] | Sequence[float] | np.ndarray


class EvalError(ValueError):
    """An evaluation input is empty, mismatched or invalid (a user error with a one-line message)."""


def _as_array(values: Any, what: str = "values") -> np.ndarray:
    arr = np.asarray(values, dtype=np.float64)
    if arr.ndim == 0 or arr.shape[0] == 0:
        raise EvalError(f"no {what} to summarize: the input is empty")
    if not np.all(np.isfinite(arr)):
        raise EvalError(f"{what} contain NaN or infinite numbers")
    return arr


def bootstrap_indices(n: int, n_boot: int = 2000, seed: int = 0) -> np.ndarray:
    """(n_boot, n) prompt indices drawn with replacement: one row per bootstrap resample."""
    if n < 1:
        raise EvalError("no values to resample: the input is empty")
    if n_boot < 1:
        raise EvalError(f"n_boot={n_boot} must be >= 1")
    return np.random.default_rng(seed).integers(0, n, size=(n_boot, n))


def bootstrap_ci(
    values: Sequence[float] | np.ndarray,
    statistic: Callable[..., Any] = np.mean,
    n_boot: int = 2000,
    alpha: float = 0.05,
    seed: int = 0,
) -> tuple[Any, Any]:
    """Percentile bootstrap (lo, hi) of `statistic` over prompts, at confidence 1 - alpha.

    `values` is (n,) or (n, k): rows are prompts and are resampled jointly (e.g. one-hot win/tie/loss
    columns), giving (k,) arrays for lo and hi. `statistic(sample, axis=1)` is called on all resamples at
    once, shape (n_boot, n[, k]); a statistic without an `axis` argument is called once per resample.
    """
    if not 0.0 < alpha < 1.0:
        raise EvalError(f"alpha={alpha} must be in (0, 1), e.g. 0.05 for a 95% interval")
    arr = _as_array(values)
    samples = arr[bootstrap_indices(arr.shape[0], n_boot, seed)]  # (n_boot, n[, k])
    try:
        stats = np.asarray(statistic(samples, axis=1), dtype=np.float64)  # (n_boot[, k])
    except TypeError:
        stats = np.asarray([statistic(s) for s in samples], dtype=np.float64)
    lo, hi = np.quantile(stats, [alpha / 2, 1 - alpha / 2], axis=0)
    if np.ndim(lo) == 0:
        return float(lo), float(hi)
    return lo, hi


def mean_with_ci(
    values: Sequence[float] | np.ndarray, n_boot: int = 2000, alpha: float = 0.05, seed: int = 0
) -> dict[str, Any]:
    """{"n", "mean", "std", "ci": [lo, hi]} of per-prompt values (bootstrap CI of the mean)."""
    arr = _as_array(values)
    lo, hi = bootstrap_ci(arr, np.mean, n_boot, alpha, seed)
    std = float(arr.std(ddof=1)) if arr.shape[0] > 1 else 0.0
    return {"n": int(arr.shape[0]), "mean": float(arr.mean()), "std": std, "ci": [lo, hi]}


def _paired(scores: Scores, baseline_scores: Scores) -> tuple[np.ndarray, np.ndarray, int]:
    """(scores, baseline scores) on the shared prompts, and how many prompts had no partner."""
    if isinstance(scores, Mapping) != isinstance(baseline_scores, Mapping):
        raise EvalError("scores and baseline_scores must both be {id: score} mappings or both sequences")
    if isinstance(scores, Mapping):
        shared = [k for k in scores if k in baseline_scores]
        unmatched = len(set(scores) ^ set(baseline_scores))
        if not shared:
            raise EvalError("no prompt id is shared by the scores and the baseline scores")
        a = [scores[k] for k in shared]
        b = [baseline_scores[k] for k in shared]  # type: ignore[index]
        return _as_array(a, "scores"), _as_array(b, "baseline scores"), unmatched
    a, b = _as_array(scores, "scores"), _as_array(baseline_scores, "baseline scores")
    if a.shape != b.shape or a.ndim != 1:
        raise EvalError(f"scores {a.shape} and baseline scores {b.shape} must be 1-D and of one length")
    return a, b, 0


def win_tie_loss(
    scores: Scores,
    baseline_scores: Scores,
    tie_margin: float = 0.0,
    *,
    n_boot: int = 2000,
    alpha: float = 0.05,
    seed: int = 0,
) -> dict[str, Any]:
    """Win / tie / loss rates of `scores` against `baseline_scores` over prompts matched by id.

    Mappings are matched by id (ids present on one side only are counted in `unmatched`); sequences by
    position. A prompt is a win when score - baseline > tie_margin, a loss when < -tie_margin, else a
    tie. Also `win_rate` (wins + half the ties) and `mean_diff`, each with a paired bootstrap CI.
    """
    if not (np.isfinite(tie_margin) and tie_margin >= 0):
        raise EvalError(f"tie_margin={tie_margin} must be >= 0")
    a, b, unmatched = _paired(scores, baseline_scores)
    diff = a - b  # (n,)
    win, loss = diff > tie_margin, diff < -tie_margin
    tie = ~(win | loss)
    # columns: win, tie, loss, win + tie / 2, difference; resampled jointly per prompt
    table = np.stack([win, tie, loss, win + 0.5 * tie, diff], axis=1).astype(np.float64)  # (n, 5)
    lo, hi = bootstrap_ci(table, np.mean, n_boot, alpha, seed)
    means = table.mean(axis=0)
    out: dict[str, Any] = {"n": int(a.shape[0]), "unmatched": unmatched, "tie_margin": float(tie_margin)}
    for j, name in enumerate(("win", "tie", "loss", "win_rate", "mean_diff")):
        out[name] = float(means[j])
        out[f"{name}_ci"] = [float(lo[j]), float(hi[j])]
    return out


# Two-sided 97.5% quantiles of Student's t by degrees of freedom (beyond 9: the normal's 1.96).
T_975 = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447, 7: 2.365, 8: 2.306, 9: 2.262}


def paired_t(values: Sequence[float], baseline: Sequence[float]) -> dict[str, Any]:
    """Paired differences values - baseline (e.g. over seeds): {"n", "mean_diff", "sd", "half_width" (of a
    95% t-interval), "t" (mean / standard error, n - 1 degrees of freedom)}; sd, half-width and t are None
    with one pair, and t is None when every difference is the same."""
    a, b, _ = _paired(values, baseline)
    diff = a - b  # (n,)
    n, mean = int(diff.shape[0]), float(diff.mean())
    if n < 2:
        return {"n": n, "mean_diff": mean, "sd": None, "half_width": None, "t": None}
    sd = float(diff.std(ddof=1))
    se = sd / np.sqrt(n)
    return {
        "n": n,
        "mean_diff": mean,
        "sd": sd,
        "half_width": T_975.get(n - 1, 1.96) * se,
        "t": mean / se if se > 0 else None,
    }
