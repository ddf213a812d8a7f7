"""Bootstrap intervals and win rates: hand-worked values, coverage by simulation, degenerate inputs."""

from __future__ import annotations

import numpy as np
import pytest

from adpa_core.stats import EvalError, bootstrap_ci, mean_with_ci, win_tie_loss


def test_win_tie_loss_matches_hand_computed_rates():
    scores = {"a": 1.0, "b": 0.5, "c": 0.2, "d": 0.0, "e": 2.0}
    baseline = {"a": 0.5, "b": 0.5, "c": 0.3, "d": -1.0, "e": 2.05, "z": 9.0}
    # differences on the 5 shared ids: a +0.5 win, b 0 tie, c -0.1 loss, d +1.0 win, e -0.05 loss
    # -> win 2/5, tie 1/5, loss 2/5; win_rate = 0.4 + 0.2 / 2 = 0.5; mean_diff = 1.35 / 5 = 0.27;
    # "z" has no partner (unmatched)
    out = win_tie_loss(scores, baseline, n_boot=500)
    assert (out["n"], out["unmatched"]) == (5, 1)
    assert out["win"] == pytest.approx(0.4) and out["tie"] == pytest.approx(0.2)
    assert out["loss"] == pytest.approx(0.4)
    assert out["win_rate"] == pytest.approx(0.5) and out["mean_diff"] == pytest.approx(0.27)
    for name in ("win", "tie", "loss", "win_rate", "mean_diff"):
        lo, hi = out[f"{name}_ci"]
        assert lo <= out[name] <= hi
    # with a margin of 0.1: c (-0.1) and e (-0.05) become ties -> win 2/5, tie 3/5, loss 0
    out = win_tie_loss(scores, baseline, tie_margin=0.1, n_boot=500)
    assert (out["win"], out["tie"], out["loss"]) == pytest.approx((0.4, 0.6, 0.0))
    assert out["loss_ci"] == [0.0, 0.0]


def test_win_tie_loss_by_position_and_all_ties():
    out = win_tie_loss([1.0, 2.0, 3.0], [1.0, 2.0, 3.0], n_boot=200)
    assert (out["win"], out["tie"], out["loss"]) == (0.0, 1.0, 0.0)
    assert out["tie_ci"] == [1.0, 1.0] and out["win_ci"] == [0.0, 0.0]
    assert out["win_rate"] == 0.5 and out["mean_diff"] == 0.0


def test_paired_rates_resampled_jointly_sum_to_one():
    rng = np.random.default_rng(1)
    a, b = rng.normal(size=30), rng.normal(size=30)
    table = np.stack([a > b, a == b, a < b], axis=1).astype(float)  # (n, 3) one-hot outcomes
    lo, hi = bootstrap_ci(table, n_boot=300)
    assert lo.shape == hi.shape == (3,)
    samples = table[np.random.default_rng(0).integers(0, 30, size=(300, 30))].mean(axis=1)  # (300, 3)
    assert np.allclose(samples.sum(axis=1), 1.0)  # the same draw for all three columns


def test_bootstrap_ci_of_the_mean_covers_the_true_mean_about_95_percent():
    rng = np.random.default_rng(123)
    true_mean, trials, n = 1.0, 200, 40
    data = rng.normal(true_mean, 2.0, size=(trials, n))
    covered = 0
    for i in range(trials):
        lo, hi = bootstrap_ci(data[i], n_boot=1000, seed=i)
        covered += lo <= true_mean <= hi
    assert 0.88 <= covered / trials <= 0.99


def test_statistic_without_axis_argument_is_applied_per_resample():
    values = np.arange(11.0)
    lo, hi = bootstrap_ci(values, statistic=lambda s: float(np.percentile(s, 50)), n_boot=300)
    assert lo <= 5.0 <= hi


def test_constant_sample_and_single_value_give_a_point_interval():
    assert bootstrap_ci([0.7] * 9) == (pytest.approx(0.7), pytest.approx(0.7))
    summary = mean_with_ci([2.5])
    assert summary == {"n": 1, "mean": 2.5, "std": 0.0, "ci": [2.5, 2.5]}


@pytest.mark.parametrize(
    "call",
    [
        lambda: bootstrap_ci([]),
        lambda: mean_with_ci([]),
        lambda: bootstrap_ci([1.0, float("nan")]),
        lambda: bootstrap_ci([1.0, 2.0], alpha=1.5),
        lambda: bootstrap_ci([1.0, 2.0], n_boot=0),
        lambda: win_tie_loss({"a": 1.0}, {"b": 1.0}),
        lambda: win_tie_loss([1.0, 2.0], [1.0]),
        lambda: win_tie_loss([1.0], [1.0], tie_margin=-0.1),
        lambda: win_tie_loss({"a": 1.0}, [1.0]),
        lambda: win_tie_loss([], []),
    ],
)
def test_bad_inputs_are_clear_errors(call):
    with pytest.raises(EvalError):
        call()
