"""Group fairness metrics from per-group confusion counts, with exact intervals that keep their level at no gap.

Every rate is a binomial proportion of per-group confusion cells (TN, FP, FN, TP), so point estimates and
intervals cost O(groups) after one bincount. Definitions follow Fairlearn's.

Intervals: each per-group rate gets its exact Clopper-Pearson interval (marginal, level ``level``). A between-group
summary (max - min, min / max, the worse of TPR and FPR, the worst group) is a function of several group rates;
its interval is the range that function takes when every true rate it uses lies in its exact interval at level
1 - alpha/k (Bonferroni over those k intervals), so it covers the true summary with probability >= ``level``
whatever the true gap, 0 included. A percentile bootstrap of max - min cannot: the estimate is biased upward
and its resamples never reach 0, so at no gap it covered the truth 0% of the time (issue 13).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from audit.intervals import clopper_pearson_arrays
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


INTERVAL_METHODS = ("exact", "none")
# Each rate as (successes, trials) of the confusion cells TN, FP, FN, TP (indices 0..3).
RATE_CELLS = {
    "selection_rate": ((1, 3), (0, 1, 2, 3)),
    "base_rate": ((2, 3), (0, 1, 2, 3)),
    "accuracy": ((0, 3), (0, 1, 2, 3)),
    "tpr": ((3,), (2, 3)),
    "fpr": ((1,), (0, 1)),
    "fnr": ((2,), (2, 3)),
    "precision": ((3,), (1, 3)),
}
# summary -> (the rates whose group intervals it uses jointly, how the bounds follow from them)
SUMMARY_RATES = {
    "demographic_parity_difference": (("selection_rate",), "difference"),
    "demographic_parity_ratio": (("selection_rate",), "ratio"),
    "equalized_odds_difference": (("tpr", "fpr"), "difference"),
    "equalized_odds_ratio": (("tpr", "fpr"), "ratio"),
    "equal_opportunity_difference": (("tpr",), "difference"),
    "equal_opportunity_ratio": (("tpr",), "ratio"),
    "worst_group_accuracy": (("accuracy",), "minimum"),
    "accuracy_difference": (("accuracy",), "difference"),
}


@dataclass
class GroupAudit:
    """Point estimates and 95% exact intervals for one sensitive feature (or intersection)."""

    groups: list[str]
    rates: dict[str, np.ndarray]  # name -> (groups,); "size" too
    rate_ci: dict[str, tuple[np.ndarray, np.ndarray]]  # marginal per-group intervals
    summaries: dict[str, float]
    summary_ci: dict[str, tuple[float, float]]  # each from simultaneous intervals of the rates it uses

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
    intervals: str = "exact",
    level: float = 0.95,
) -> GroupAudit:
    """Rates and summaries per group; with ``intervals="exact"``, exact rate intervals and simultaneous summary ones."""
    if intervals not in INTERVAL_METHODS:
        raise ValueError(f"intervals must be one of {INTERVAL_METHODS}, got {intervals!r}")
    names, codes = np.unique(np.asarray(groups).astype(str), return_inverse=True)
    counts = confusion_counts(y_true, y_pred, codes, len(names))
    rates = group_rates(counts)
    point = {k: float(v) for k, v in summaries(rates).items()}
    if intervals == "none":
        return GroupAudit(list(names), rates, {}, point, {})
    return GroupAudit(
        list(names), rates, rate_intervals(counts, level), point, summary_intervals(counts, level)
    )


def rate_counts(counts: np.ndarray) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Each rate's (successes, trials) per group, from (groups, 4) confusion counts."""
    return {
        rate: (counts[:, list(hits)].sum(axis=1), counts[:, list(of)].sum(axis=1))
        for rate, (hits, of) in RATE_CELLS.items()
    }


def rate_intervals(counts: np.ndarray, level: float) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Marginal exact (Clopper-Pearson) interval of every per-group rate; NaN where the rate is undefined."""
    out = {}
    for rate, (k, n) in rate_counts(counts).items():
        low, high = clopper_pearson_arrays(k, n, level)
        out[rate] = (np.where(n > 0, low, np.nan), np.where(n > 0, high, np.nan))
    return out


def simultaneous_intervals(
    successes: np.ndarray, trials: np.ndarray, level: float
) -> tuple[np.ndarray, np.ndarray]:
    """Exact intervals that hold together with probability >= ``level`` (Bonferroni over the defined ones).

    Entries with no trials are undefined (NaN) and do not count towards k. Bonferroni needs no independence
    between the intervals; Sidak's (1 - alpha)^(1/k) would be valid here too and narrower by under 1%.
    """
    defined = trials > 0
    k = max(int(defined.sum()), 1)
    low, high = clopper_pearson_arrays(successes, trials, 1 - (1 - level) / k)
    return np.where(defined, low, np.nan), np.where(defined, high, np.nan)


def bound_summary(low: np.ndarray, high: np.ndarray, how: str) -> tuple[float, float]:
    """The range of a summary of group rates when every true rate lies in [low, high] (NaN entries left out)."""
    low, high = low[~np.isnan(low)], high[~np.isnan(high)]
    if low.size == 0:
        return float("nan"), float("nan")
    if how == "minimum":
        return float(low.min()), float(high.min())
    if how == "difference":
        return float(max(0.0, low.max() - high.min())), float(high.max() - low.min())
    # min / max: smallest with the lowest rate over the highest; at most 1, and 1 when no rate is surely > 0
    upper = 1.0 if low.max() <= 0 else min(1.0, float(high.min() / low.max()))
    return float(low.min() / high.max()), upper


def summary_intervals(counts: np.ndarray, level: float) -> dict[str, tuple[float, float]]:
    """Every summary's interval from simultaneous exact intervals of the group rates it uses (absent groups out)."""
    present = counts.sum(axis=1) > 0
    by_rate = rate_counts(counts[present])
    out = {}
    for name, (used, how) in SUMMARY_RATES.items():
        k = np.concatenate([by_rate[rate][0] for rate in used])
        n = np.concatenate([by_rate[rate][1] for rate in used])
        low, high = simultaneous_intervals(k, n, level)
        if len(used) == 1:
            out[name] = bound_summary(low, high, how)
            continue
        # equalized odds: the worse of the TPR and FPR summaries, each bounded on its share of the joint intervals
        parts = [bound_summary(lo, hi, how) for lo, hi in zip(np.split(low, 2), np.split(high, 2))]
        pick = (
            np.max if how == "difference" else np.min
        )  # NaN (an undefined part) propagates, as in the point
        out[name] = (float(pick([p[0] for p in parts])), float(pick([p[1] for p in parts])))
    return out


def accuracy_summary_intervals(
    hits: np.ndarray, sizes: np.ndarray, level: float
) -> dict[str, tuple[float, float]]:
    """Worst-group accuracy and accuracy difference intervals from simultaneous exact per-group intervals."""
    low, high = simultaneous_intervals(np.asarray(hits), np.asarray(sizes), level)
    return {
        "worst_group_accuracy": bound_summary(low, high, "minimum"),
        "accuracy_difference": bound_summary(low, high, "difference"),
    }


def cell_counts(y: np.ndarray, groups: np.ndarray) -> tuple[list[str], np.ndarray]:
    """(group names, (groups, classes) count matrix) for reweighing."""
    names, codes = np.unique(np.asarray(groups).astype(str), return_inverse=True)
    n_classes = int(y.max()) + 1
    counts = np.bincount(codes * n_classes + y, minlength=len(names) * n_classes)
    return list(names), counts.reshape(len(names), n_classes).astype(np.float64)


def reweighing_weights(
    y: np.ndarray, groups: np.ndarray, *, counts: np.ndarray | None = None, strength: float = 1.0
) -> np.ndarray:
    """Kamiran-Calders weights w(g, y) = P(g) P(y) / P(g, y) per row (optionally from given (group, class) counts),
    moved towards 1 by ``strength`` s: (1 - s) + s w. s = 1 is full reweighing, s = 0 no reweighing."""
    if not 0.0 <= strength <= 1.0:
        raise ValueError(f"strength must lie in [0, 1], got {strength}")
    _, codes = np.unique(np.asarray(groups).astype(str), return_inverse=True)
    counts = np.maximum(cell_counts(y, groups)[1] if counts is None else counts, 1e-9)
    p_joint = counts / counts.sum()
    expected = p_joint.sum(axis=1, keepdims=True) * p_joint.sum(axis=0, keepdims=True)
    # Linear, so the weighted training distribution is the mixture (1 - s) P(g, y) + s P(g) P(y).
    return ((1.0 - strength) + strength * (expected / p_joint))[codes, y]
