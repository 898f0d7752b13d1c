"""Benchmark statistics: latency percentiles, bootstrap confidence intervals, classification scores.

Pure numpy, so the numbers in a report can be recomputed from its raw files without the training stack.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

# Bootstrap resamples are drawn in blocks so that a large test set never needs an (n_boot x n) matrix at once.
_MAX_BLOCK_ELEMENTS = 4_000_000


def percentiles(samples: Sequence[float] | np.ndarray) -> dict[str, float]:
    """Latency summary: median, tail percentiles and mean.

    Args:
        samples: One value per request (e.g. milliseconds).

    Returns:
        {"p50", "p90", "p99", "mean", "n"}; percentiles use linear interpolation between order statistics.

    Raises:
        ValueError: When `samples` is empty.
    """
    values = _as_1d(samples)
    p50, p90, p99 = np.percentile(values, [50, 90, 99])
    return {
        "p50": float(p50),
        "p90": float(p90),
        "p99": float(p99),
        "mean": float(values.mean()),
        "n": int(values.size),
    }


def box_stats(samples: Sequence[float] | np.ndarray) -> dict[str, float]:
    """The five numbers of a box plot plus the tails: min, p5, p25, p50, p75, p95, max.

    Raises:
        ValueError: When `samples` is empty.
    """
    values = _as_1d(samples)
    keys = ("min", "p5", "p25", "p50", "p75", "p95", "max")
    return {
        key: float(v) for key, v in zip(keys, np.percentile(values, [0, 5, 25, 50, 75, 95, 100]), strict=True)
    }


def bootstrap_ci(
    samples: Sequence[float] | np.ndarray,
    stat: Callable[..., Any] = np.median,
    n_boot: int = 1000,
    seed: int = 0,
    confidence: float = 0.95,
    clusters: Sequence[int] | np.ndarray | None = None,
) -> tuple[float, float]:
    """Percentile-bootstrap confidence interval of a statistic.

    Args:
        samples: The observed values.
        stat: Reduction taking an array and `axis=1` (np.median, np.mean, ...), applied to each resample.
        n_boot: Number of resamples.
        seed: Seed of the resampling RNG, so a report is reproducible.
        confidence: Coverage of the interval (0.95 gives the 2.5th..97.5th percentiles of the resampled stat).
        clusters: Per sample, the group it was measured in (e.g. its benchmark round). Given, whole groups are
            resampled (a cluster bootstrap), so what moves a whole group (the machine slowing down for a
            round) widens the interval as it should; resampling single samples would treat it as independent.

    Returns:
        (lo, hi).

    Raises:
        ValueError: When `samples` is empty or the arguments are out of range.
    """
    values = _as_1d(samples)
    _check_bootstrap_args(n_boot, confidence)
    boot = _resampled_stats([values], lambda x: stat(x, axis=1), n_boot, seed, clusters)
    return _interval(boot, confidence)


def accuracy_diff_ci(
    correct_a: Sequence[bool] | np.ndarray,
    correct_b: Sequence[bool] | np.ndarray,
    n_boot: int = 1000,
    seed: int = 0,
    confidence: float = 0.95,
) -> tuple[float, float, float]:
    """Paired bootstrap of accuracy(a) - accuracy(b) on the same examples.

    Resampling examples (not each model separately) keeps the pairing: both models see the same resample, so
    the interval reflects how often they disagree, and is much narrower than two independent intervals.

    Args:
        correct_a: Per example, whether model a was right.
        correct_b: Per example, whether model b was right (same examples, same order).
        n_boot: Number of resamples.
        seed: Seed of the resampling RNG.
        confidence: Coverage of the interval.

    Returns:
        (difference, lo, hi) as fractions (multiply by 100 for points).

    Raises:
        ValueError: When the inputs are empty or of different lengths.
    """
    a = _as_1d(correct_a).astype(np.float64)
    b = _as_1d(correct_b).astype(np.float64)
    if a.shape != b.shape:
        raise ValueError(f"paired samples differ in length: {a.size} vs {b.size}")
    _check_bootstrap_args(n_boot, confidence)
    per_example = a - b
    boot = _resampled_stats([per_example], lambda x: np.mean(x, axis=1), n_boot, seed)
    lo, hi = _interval(boot, confidence)
    return float(per_example.mean()), lo, hi


def paired_diff_ci(
    a: Sequence[float] | np.ndarray,
    b: Sequence[float] | np.ndarray,
    stat: Callable[..., Any] = np.median,
    n_boot: int = 1000,
    seed: int = 0,
    confidence: float = 0.95,
    clusters: Sequence[int] | np.ndarray | None = None,
) -> tuple[float, float, float]:
    """Paired bootstrap of stat(a) - stat(b), where a[i] and b[i] were measured on the same item.

    Each resample draws item indices once and applies them to both, so what the two measurements share (the
    same text, the same round on a shared machine) cancels, as in `accuracy_diff_ci`.

    Args:
        a: One value per item (e.g. the candidate's latency of request i).
        b: The other's values for the same items, in the same order.
        stat: Reduction taking an array and `axis=1` (np.median, np.mean, `percentile_stat(90)`, ...).
        n_boot: Number of resamples.
        seed: Seed of the resampling RNG.
        confidence: Coverage of the interval.
        clusters: Per item, its group (see `bootstrap_ci`): whole groups are resampled.

    Returns:
        (stat(a) - stat(b), lo, hi).

    Raises:
        ValueError: When the inputs are empty or of different lengths.
    """
    first, second = _as_1d(a).astype(np.float64), _as_1d(b).astype(np.float64)
    if first.shape != second.shape:
        raise ValueError(f"paired samples differ in length: {first.size} vs {second.size}")
    _check_bootstrap_args(n_boot, confidence)

    def difference(x: np.ndarray, y: np.ndarray) -> np.ndarray:
        return np.asarray(stat(x, axis=1) - stat(y, axis=1))

    boot = _resampled_stats([first, second], difference, n_boot, seed, clusters)
    lo, hi = _interval(boot, confidence)
    return float(difference(first[None, :], second[None, :])[0]), lo, hi


def percentile_stat(q: float) -> Callable[..., Any]:
    """The q-th percentile as a `stat` for `bootstrap_ci` (linear interpolation, as `percentiles` uses)."""

    def stat(values: np.ndarray, axis: int = -1) -> Any:
        return np.percentile(values, q, axis=axis)

    return stat


def confusion_matrix(y_true: Sequence[int], y_pred: Sequence[int], n_classes: int) -> np.ndarray:
    """Counts with true classes as rows and predicted classes as columns.

    Raises:
        ValueError: When the inputs differ in length or hold ids outside [0, n_classes).
    """
    true = np.asarray(y_true, dtype=np.int64)
    pred = np.asarray(y_pred, dtype=np.int64)
    if true.shape != pred.shape:
        raise ValueError(f"y_true and y_pred differ in length: {true.size} vs {pred.size}")
    for name, ids in (("y_true", true), ("y_pred", pred)):
        if ids.size and (ids.min() < 0 or ids.max() >= n_classes):
            raise ValueError(f"{name} holds class ids outside [0, {n_classes})")
    matrix = np.zeros((n_classes, n_classes), dtype=np.int64)
    np.add.at(matrix, (true, pred), 1)
    return matrix


def per_class_scores(y_true: Sequence[int], y_pred: Sequence[int], n_classes: int) -> list[dict[str, float]]:
    """Precision, recall, F1 and support of every class (0 where a ratio has nothing to divide by).

    Returns:
        One dict per class id: {"precision", "recall", "f1", "support"}.
    """
    matrix = confusion_matrix(y_true, y_pred, n_classes)
    true_pos = np.diag(matrix).astype(np.float64)
    predicted = matrix.sum(axis=0).astype(np.float64)
    actual = matrix.sum(axis=1).astype(np.float64)
    precision = _safe_divide(true_pos, predicted)
    recall = _safe_divide(true_pos, actual)
    f1 = _safe_divide(2 * precision * recall, precision + recall)
    return [
        {"precision": float(p), "recall": float(r), "f1": float(f), "support": int(s)}
        for p, r, f, s in zip(precision, recall, f1, actual, strict=True)
    ]


def macro_f1(y_true: Sequence[int], y_pred: Sequence[int], n_classes: int) -> float:
    """Unweighted mean F1 over the classes that occur in `y_true` or `y_pred` (as scikit-learn does).

    A class that never occurs in either is left out rather than counted as F1 = 0, so a small test set that
    lacks a rare class is not penalised for it.
    """
    matrix = confusion_matrix(y_true, y_pred, n_classes)
    present = (matrix.sum(axis=0) + matrix.sum(axis=1)) > 0
    if not present.any():
        return 0.0
    scores = per_class_scores(y_true, y_pred, n_classes)
    return float(np.mean([s["f1"] for s, keep in zip(scores, present, strict=True) if keep]))


def _as_1d(samples: Sequence[Any] | np.ndarray) -> np.ndarray:
    values = np.asarray(samples)
    if values.ndim != 1:
        values = values.reshape(-1)
    if values.size == 0:
        raise ValueError("no samples")
    return values


def _check_bootstrap_args(n_boot: int, confidence: float) -> None:
    if n_boot < 1:
        raise ValueError(f"n_boot must be at least 1, got {n_boot}")
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")


def _resampled_stats(
    arrays: Sequence[np.ndarray],
    stat: Callable[..., np.ndarray],
    n_boot: int,
    seed: int,
    clusters: Sequence[int] | np.ndarray | None = None,
) -> np.ndarray:
    """`stat(*(a[idx] for a in arrays))` over `n_boot` resamples `idx` (rows of index arrays), the same indices
    for every array so that paired values stay paired; whole clusters are drawn where `clusters` is given."""
    rng = np.random.default_rng(seed)
    n = arrays[0].size
    out = np.empty(n_boot, dtype=np.float64)
    if clusters is not None:
        members = _cluster_members(clusters, n)
        for i in range(n_boot):
            # Resampled clusters differ in size, so each resample is its own row.
            idx = np.concatenate([members[c] for c in rng.integers(0, len(members), size=len(members))])
            out[i] = stat(*(a[idx][None, :] for a in arrays))[0]
        return out
    block = max(1, _MAX_BLOCK_ELEMENTS // n)
    for start in range(0, n_boot, block):
        rows = min(block, n_boot - start)
        idx = rng.integers(0, n, size=(rows, n))
        out[start : start + rows] = stat(*(a[idx] for a in arrays))
    return out


def _cluster_members(clusters: Sequence[int] | np.ndarray, n: int) -> list[np.ndarray]:
    """The sample indices of each cluster, in the order the clusters first appear."""
    ids = np.asarray(clusters)
    if ids.shape != (n,):
        raise ValueError(f"clusters name {ids.size} samples, not {n}")
    return [np.flatnonzero(ids == c) for c in dict.fromkeys(ids.tolist())]


def _interval(boot: np.ndarray, confidence: float) -> tuple[float, float]:
    tail = (1.0 - confidence) / 2.0 * 100.0
    lo, hi = np.percentile(boot, [tail, 100.0 - tail])
    return float(lo), float(hi)


def _safe_divide(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    out = np.zeros_like(num, dtype=np.float64)
    np.divide(num, den, out=out, where=den > 0)
    return out
