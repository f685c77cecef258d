"""Exact binomial intervals for the report's proportions (accuracies measured on a finite set of rows)."""

from __future__ import annotations

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
