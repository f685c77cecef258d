"""Group fairness metrics from per-group confusion counts, with a count-level bootstrap.

Every count-based rate is a function of the per-group confusion cells (TN, FP, FN, TP), and a
row bootstrap is exactly a multinomial draw over those cells, so both the point estimates and
the intervals cost O(groups) per resample instead of O(rows). Definitions follow Fairlearn's.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

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
    rates: dict[str, np.ndarray]  # name -> (groups,)
    rate_ci: dict[str, tuple[np.ndarray, np.ndarray]]
    summaries: dict[str, float]
    summary_ci: dict[str, tuple[float, float]]


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
    rate_ci: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    summary_ci: dict[str, tuple[float, float]] = {}
    if n_boot > 0:
        total = int(counts.sum())
        rng = np.random.default_rng(seed)
        draws = (
            rng.multinomial(total, counts.ravel() / total, size=n_boot)
            .reshape(n_boot, *counts.shape)
            .astype(np.float64)
        )
        boot_rates = group_rates(draws)
        boot_summaries = summaries(boot_rates)
        q = [(1 - level) / 2 * 100, (1 + level) / 2 * 100]
        with np.errstate(invalid="ignore"), _quiet_nan():
            for name in RATES:
                lo, hi = np.nanpercentile(boot_rates[name], q, axis=0)
                rate_ci[name] = (lo, hi)
            for name, values in boot_summaries.items():
                lo, hi = np.nanpercentile(values, q)
                summary_ci[name] = (float(lo), float(hi))
    return GroupAudit(list(names), rates, rate_ci, point, summary_ci)


class _quiet_nan:
    """Silence NumPy's all-NaN slice warnings (a group absent from a resample is expected)."""

    def __enter__(self) -> None:
        import warnings

        self._ctx = warnings.catch_warnings()
        self._ctx.__enter__()
        warnings.simplefilter("ignore", RuntimeWarning)

    def __exit__(self, *exc: object) -> None:
        self._ctx.__exit__(*exc)


def reweighing_weights(
    y: np.ndarray, groups: np.ndarray, *, cell_counts: np.ndarray | None = None
) -> np.ndarray:
    """Kamiran-Calders weights w(g, y) = P(g) P(y) / P(g, y) per row (optionally from given (group, class) counts)."""
    names, codes = np.unique(np.asarray(groups).astype(str), return_inverse=True)
    n_classes = int(y.max()) + 1
    counts = (
        cell_counts
        if cell_counts is not None
        else np.bincount(codes * n_classes + y, minlength=len(names) * n_classes)
        .reshape(len(names), n_classes)
        .astype(np.float64)
    )
    counts = np.maximum(counts, 1e-9)
    total = counts.sum()
    p_joint = counts / total
    expected = p_joint.sum(axis=1, keepdims=True) * p_joint.sum(axis=0, keepdims=True)
    return (expected / p_joint)[codes, y]


def cell_counts(y: np.ndarray, groups: np.ndarray) -> tuple[list[str], np.ndarray]:
    """(group names, (groups, classes) count matrix) for reweighing."""
    names, codes = np.unique(np.asarray(groups).astype(str), return_inverse=True)
    n_classes = int(y.max()) + 1
    return list(names), np.bincount(codes * n_classes + y, minlength=len(names) * n_classes).reshape(
        len(names), n_classes
    ).astype(np.float64)
