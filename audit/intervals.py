"""Exact binomial intervals for the report's proportions (accuracies and group rates counted on finite rows)."""

from __future__ import annotations

import numpy as np
from scipy.stats import beta

CONFIDENCE = 0.95


def clopper_pearson(successes: int, trials: int, confidence: float = CONFIDENCE) -> tuple[float, float]:
    """The exact two-sided interval of a binomial proportion: it covers the true rate >= ``confidence`` of the time.

    Conservative by construction (never narrower than the nominal level), so a gate on its lower bound is safe.
    """
    if trials <= 0:
        return 0.0, 1.0
    alpha = 1 - confidence
    low = beta.ppf(alpha / 2, successes, trials - successes + 1) if successes > 0 else 0.0
    high = beta.ppf(1 - alpha / 2, successes + 1, trials - successes) if successes < trials else 1.0
    return float(low), float(high)


def clopper_pearson_arrays(
    successes: np.ndarray, trials: np.ndarray, confidence: float | np.ndarray = CONFIDENCE
) -> tuple[np.ndarray, np.ndarray]:
    """``clopper_pearson`` over arrays at once (``confidence`` may be an array too); (0, 1) where trials <= 0."""
    k, n = np.broadcast_arrays(np.asarray(successes, dtype=np.float64), np.asarray(trials, dtype=np.float64))
    alpha = 1 - np.asarray(confidence, dtype=np.float64)
    # Shape parameters must be positive even where np.where discards the result, so clamp them first.
    low = np.where(k > 0, beta.ppf(alpha / 2, np.maximum(k, 1), np.maximum(n - k + 1, 1)), 0.0)
    high = np.where(k < n, beta.ppf(1 - alpha / 2, k + 1, np.maximum(n - k, 1)), 1.0)
    empty = n <= 0
    return np.where(empty, 0.0, low), np.where(empty, 1.0, high)
