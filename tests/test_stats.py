"""Benchmark statistics on synthetic numbers whose answers are known."""

from __future__ import annotations

import numpy as np
import pytest

from edgekd.bench.stats import (
    accuracy_diff_ci,
    bootstrap_ci,
    confusion_matrix,
    macro_f1,
    per_class_scores,
    percentiles,
)


def test_percentiles_of_one_to_hundred_interpolate_linearly():
    result = percentiles(list(range(1, 101)))
    assert result["p50"] == pytest.approx(50.5)
    assert result["p90"] == pytest.approx(90.1)
    assert result["p99"] == pytest.approx(99.01)
    assert result["mean"] == pytest.approx(50.5)
    assert result["n"] == 100


def test_percentiles_of_a_constant_are_that_constant():
    result = percentiles([3.25] * 7)
    assert result == {"p50": 3.25, "p90": 3.25, "p99": 3.25, "mean": 3.25, "n": 7}


def test_percentiles_refuse_no_samples():
    with pytest.raises(ValueError):
        percentiles([])


def test_bootstrap_ci_of_a_constant_collapses_to_it():
    assert bootstrap_ci([2.0] * 50) == (2.0, 2.0)


def test_bootstrap_ci_is_reproducible_for_a_seed():
    samples = np.random.default_rng(1).exponential(size=200)
    assert bootstrap_ci(samples, seed=5) == bootstrap_ci(samples, seed=5)
    lo, hi = bootstrap_ci(samples, seed=5)
    assert lo < np.median(samples) < hi


def test_bootstrap_ci_contains_the_true_median_of_a_large_normal_sample():
    samples = np.random.default_rng(0).normal(loc=10.0, scale=2.0, size=5000)
    lo, hi = bootstrap_ci(samples, np.median, n_boot=1000, seed=0)
    assert lo < 10.0 < hi
    # Standard error of the median is about 1.25 * sigma / sqrt(n) = 0.035, so the 95% CI is ~0.14 wide.
    assert 0.05 < hi - lo < 0.3


def test_bootstrap_ci_of_the_mean_covers_the_truth_about_95_percent_of_the_time():
    rng = np.random.default_rng(42)
    hits = 0
    trials = 100
    for trial in range(trials):
        lo, hi = bootstrap_ci(rng.normal(size=100), np.mean, n_boot=400, seed=trial)
        hits += lo < 0.0 < hi
    assert 85 <= hits <= 100


def test_bootstrap_ci_checks_its_arguments():
    with pytest.raises(ValueError):
        bootstrap_ci([1.0, 2.0], n_boot=0)
    with pytest.raises(ValueError):
        bootstrap_ci([1.0, 2.0], confidence=1.0)


def test_accuracy_diff_ci_of_identical_models_is_zero():
    correct = np.random.default_rng(0).random(300) < 0.8
    assert accuracy_diff_ci(correct, correct) == (0.0, 0.0, 0.0)


def test_accuracy_diff_ci_of_always_right_against_always_wrong_is_one():
    assert accuracy_diff_ci([True] * 20, [False] * 20) == (1.0, 1.0, 1.0)


def test_accuracy_diff_ci_brackets_the_observed_difference():
    rng = np.random.default_rng(3)
    a = rng.random(500) < 0.80
    b = rng.random(500) < 0.70
    diff, lo, hi = accuracy_diff_ci(a, b, seed=1)
    assert diff == pytest.approx(a.mean() - b.mean())
    assert lo < diff < hi


def test_paired_bootstrap_sees_a_small_consistent_gain_that_unpaired_intervals_would_miss():
    # Two models that agree on 995 of 1000 texts; model a is right on the 5 where they differ.
    b = np.random.default_rng(7).random(1000) < 0.8
    a = b.copy()
    flip = np.flatnonzero(~b)[:5]
    a[flip] = True
    diff, lo, _ = accuracy_diff_ci(a, b, n_boot=2000, seed=0)
    assert diff == pytest.approx(0.005)
    assert lo > 0.0
    # Each accuracy on its own is uncertain to about +-2.5 points: the unpaired intervals overlap widely.
    a_lo, _ = bootstrap_ci(a.astype(float), np.mean, seed=0)
    _, b_hi = bootstrap_ci(b.astype(float), np.mean, seed=0)
    assert a_lo < b_hi


def test_accuracy_diff_ci_refuses_unpaired_lengths():
    with pytest.raises(ValueError):
        accuracy_diff_ci([True, False], [True])


def test_per_class_scores_by_hand():
    y_true = [0, 0, 1, 1, 2]
    y_pred = [0, 1, 1, 1, 0]
    scores = per_class_scores(y_true, y_pred, 3)
    assert scores[0] == pytest.approx({"precision": 0.5, "recall": 0.5, "f1": 0.5, "support": 2})
    assert scores[1] == pytest.approx({"precision": 2 / 3, "recall": 1.0, "f1": 0.8, "support": 2})
    assert scores[2] == {"precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 1}


def test_macro_f1_by_hand_and_absent_classes_are_left_out():
    y_true = [0, 0, 1, 1, 2]
    y_pred = [0, 1, 1, 1, 0]
    assert macro_f1(y_true, y_pred, 3) == pytest.approx((0.5 + 0.8 + 0.0) / 3)
    assert macro_f1(y_true, y_pred, 5) == pytest.approx((0.5 + 0.8 + 0.0) / 3)
    assert macro_f1([0, 1, 2], [0, 1, 2], 3) == 1.0


def test_confusion_matrix_counts_and_refuses_unknown_ids():
    matrix = confusion_matrix([0, 1, 1, 2], [0, 1, 2, 2], 3)
    assert matrix.tolist() == [[1, 0, 0], [0, 1, 1], [0, 0, 1]]
    with pytest.raises(ValueError):
        confusion_matrix([0, 3], [0, 1], 3)
