"""Group fairness metrics from per-group confusion counts, with a count-level bootstrap.

Every count-based rate is a function of the per-group confusion cells (TN, FP, FN, TP), and a
row bootstrap is exactly a multinomial draw over those cells, so both the point estimates and
the intervals cost O(groups) per resample instead of O(rows). Definitions follow Fairlearn's.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Any

import numpy as np

from audit.report import clean_number

RATES = ("selection_rate", "base_rate", "accuracy", "tpr", "fpr", "fnr", "precision")
SUMMARIES = (
    "demographic_parity_difference",
    "demographic_parity_ratio",
    "equalized_odds_difference",
    "equalized_odds_ratio",
    "equal_opportunity_difference",
    "equal_opportunity_ratio",
    "worst_group_accuracy",
    "accuracy_difference",
)


def confusion_counts(
    y_true: np.ndarray, y_pred: np.ndarray, group_codes: np.ndarray, n_groups: int
) -> np.ndarray:
    """(n_groups, 4) counts of TN, FP, FN, TP per group, from one bincount over all rows."""
    cell = group_codes.astype(np.int64) * 4 + y_true.astype(np.int64) * 2 + y_pred.astype(np.int64)
    return np.bincount(cell, minlength=n_groups * 4).reshape(n_groups, 4).astype(np.float64)


def _div(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(den > 0, num / np.where(den > 0, den, 1), np.nan)


def group_rates(counts: np.ndarray) -> dict[str, np.ndarray]:
    """Per-group rates for counts shaped (..., groups, 4); NaN where a rate's denominator is zero."""
    tn, fp, fn, tp = np.moveaxis(counts, -1, 0)
    n = tn + fp + fn + tp
    return {
        "size": n,
        "selection_rate": _div(fp + tp, n),
        "base_rate": _div(fn + tp, n),
        "accuracy": _div(tn + tp, n),
        "tpr": _div(tp, tp + fn),
        "fpr": _div(fp, fp + tn),
        "fnr": _div(fn, tp + fn),
        "precision": _div(tp, tp + fp),
    }


def _spread(values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    with np.errstate(invalid="ignore", divide="ignore"):
        hi, lo = np.nanmax(values, axis=-1), np.nanmin(values, axis=-1)
        return hi - lo, np.where(hi > 0, lo / np.where(hi > 0, hi, 1), np.nan)


def summaries(rates: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Between-group summaries (Fairlearn's 'between_groups' method; equalized odds takes the worst of TPR and FPR)."""
    present = rates["size"] > 0
    masked = {k: np.where(present, v, np.nan) for k, v in rates.items()}
    dp_diff, dp_ratio = _spread(masked["selection_rate"])
    tpr_diff, tpr_ratio = _spread(masked["tpr"])
    fpr_diff, fpr_ratio = _spread(masked["fpr"])
    acc_diff, _ = _spread(masked["accuracy"])
    return {
        "demographic_parity_difference": dp_diff,
        "demographic_parity_ratio": dp_ratio,
        "equalized_odds_difference": np.maximum(tpr_diff, fpr_diff),
        "equalized_odds_ratio": np.minimum(tpr_ratio, fpr_ratio),
        "equal_opportunity_difference": tpr_diff,
        "equal_opportunity_ratio": tpr_ratio,
        "worst_group_accuracy": np.nanmin(masked["accuracy"], axis=-1),
        "accuracy_difference": acc_diff,
    }


@dataclass
class GroupAudit:
    """Point estimates and 95% bootstrap intervals for one sensitive feature (or intersection)."""

    groups: list[str]
    rates: dict[str, np.ndarray]  # name -> (groups,); "size" too
    rate_ci: dict[str, tuple[np.ndarray, np.ndarray]]
    summaries: dict[str, float]
    summary_ci: dict[str, tuple[float, float]]

    @property
    def comparable(self) -> bool:
        """True with two groups or more: a gap over one group is 0 by arithmetic, not by fairness."""
        return len(self.groups) >= 2

    def to_data(self) -> dict[str, Any]:
        """JSON-able form: groups, sizes, rates and their intervals as per-group lists, summaries (NaN as None)."""
        return {
            "groups": list(self.groups),
            "sizes": [int(n) for n in self.rates["size"]],
            "rates": {rate: [clean_number(v) for v in self.rates[rate]] for rate in RATES},
            "rate_ci": {
                rate: [[clean_number(v) for v in low], [clean_number(v) for v in high]]
                for rate, (low, high) in self.rate_ci.items()
            },
            "summaries": {name: clean_number(value) for name, value in self.summaries.items()},
            "summary_ci": {
                name: [clean_number(low), clean_number(high)] for name, (low, high) in self.summary_ci.items()
            },
        }


def audit_groups(
    y_true: np.ndarray,
    y_pred: np.ndarray,
    groups: np.ndarray,
    *,
    n_boot: int = 1000,
    seed: int = 0,
    level: float = 0.95,
) -> GroupAudit:
    """Rates and summaries per group with percentile intervals from ``n_boot`` multinomial resamples of the cells."""
    names, codes = np.unique(np.asarray(groups).astype(str), return_inverse=True)
    counts = confusion_counts(y_true, y_pred, codes, len(names))
    rates = group_rates(counts)
    point = {k: float(v) for k, v in summaries(rates).items()}
    rate_ci, summary_ci = _bootstrap(counts, n_boot, seed, level) if n_boot > 0 else ({}, {})
    return GroupAudit(list(names), rates, rate_ci, point, summary_ci)


def _bootstrap(
    counts: np.ndarray, n_boot: int, seed: int, level: float
) -> tuple[dict[str, tuple[np.ndarray, np.ndarray]], dict[str, tuple[float, float]]]:
    total = int(counts.sum())
    rng = np.random.default_rng(seed)
    draws = rng.multinomial(total, counts.ravel() / total, size=n_boot).reshape(n_boot, *counts.shape)
    boot_rates = group_rates(draws.astype(np.float64))
    q = [(1 - level) / 2 * 100, (1 + level) / 2 * 100]
    # A group absent from a resample leaves all-NaN slices: expected, so NumPy's warnings about them are noise.
    with np.errstate(invalid="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        boot_summaries = summaries(boot_rates)
        rate_ci = {name: tuple(np.nanpercentile(boot_rates[name], q, axis=0)) for name in RATES}
        summary_ci = {
            name: tuple(float(v) for v in np.nanpercentile(values, q))
            for name, values in boot_summaries.items()
        }
    return rate_ci, summary_ci


def cell_counts(y: np.ndarray, groups: np.ndarray) -> tuple[list[str], np.ndarray]:
    """(group names, (groups, classes) count matrix) for reweighing."""
    names, codes = np.unique(np.asarray(groups).astype(str), return_inverse=True)
    n_classes = int(y.max()) + 1
    counts = np.bincount(codes * n_classes + y, minlength=len(names) * n_classes)
    return list(names), counts.reshape(len(names), n_classes).astype(np.float64)


def reweighing_weights(y: np.ndarray, groups: np.ndarray, *, counts: np.ndarray | None = None) -> np.ndarray:
    """Kamiran-Calders weights w(g, y) = P(g) P(y) / P(g, y) per row (optionally from given (group, class) counts)."""
    _, codes = np.unique(np.asarray(groups).astype(str), return_inverse=True)
    counts = np.maximum(cell_counts(y, groups)[1] if counts is None else counts, 1e-9)
    p_joint = counts / counts.sum()
    expected = p_joint.sum(axis=1, keepdims=True) * p_joint.sum(axis=0, keepdims=True)
    return (expected / p_joint)[codes, y]
