"""The fairness report section from labels, decisions and groups: shared by the plugin's audits and ``audit decisions``."""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from audit.report import Figure, Section, Series, Table, metric_segment
from audit_plugins.fairness_metrics import RATES, SUMMARIES, GroupAudit, audit_groups

INTERSECTION = "&"
MIN_GROUP_SIZE, BOOTSTRAP = 30, 1000


def group_labels(groups: pd.DataFrame, columns: list[str]) -> np.ndarray:
    return (
        groups[columns].astype(str).agg(INTERSECTION.join, axis=1).to_numpy()
        if len(groups)
        else np.array([], dtype=str)
    )


def _features(sensitive: list[str]) -> list[tuple[str, list[str]]]:
    features = [(name, [name]) for name in sensitive]
    if len(sensitive) > 1:
        features.append((INTERSECTION.join(sensitive), list(sensitive)))
    return features


def _small_groups_warning(feature: str, sizes: dict[Any, int], min_group_size: int) -> str | None:
    """One warning per feature naming its groups with fewer than ``min_group_size`` audited rows (smallest first)."""
    small = sorted((size, str(group)) for group, size in sizes.items() if size < min_group_size)
    if not small:
        return None
    shown = ", ".join(f"'{group}' ({size})" for size, group in small[:8]) + (
        f" and {len(small) - 8} more" if len(small) > 8 else ""
    )
    return (
        f"{feature}: {len(small)} group(s) have fewer than {min_group_size} audited rows, so their figures say little: "
        f"{shown}"
    )


def _one_group_warning(feature: str, groups: Any, rows: int) -> str:
    # A gap over one group is 0 by arithmetic, not by fairness: the summaries are left out, so a gate on them fails closed.
    only = groups[0] if len(groups) else "-"
    return f"{feature}: only one group ('{only}') among the {rows} audited rows, so its fairness metrics compare nothing and are left out"


def group_accuracy_section(
    y_true: np.ndarray,
    y_pred: np.ndarray,
    groups: pd.DataFrame,
    sensitive: list[str],
    *,
    num_classes: int,
    min_group_size: int,
) -> Section:
    """The fairness section for a multiclass target: accuracy per group (exact 95% intervals), the worst group, the gap."""
    section = Section("fairness", "Fairness")
    section.notes.append(
        f"selection, TPR and FPR gaps need a binary target; this target has {num_classes} classes, so the "
        "section compares accuracy across groups (exact Clopper-Pearson 95% intervals)"
    )
    correct = y_true == y_pred
    for feature, columns in _features(sensitive):
        labels = group_labels(groups, columns)
        names = sorted(set(labels))
        if len(names) < 2:
            section.warnings.append(_one_group_warning(feature, names, len(y_true)))
            continue
        prefix, rows, counts = metric_segment(feature), [], []
        for group in names:
            sel = labels == group
            hits, size = int(correct[sel].sum()), int(sel.sum())
            segment = f"{prefix}.group.{metric_segment(group)}"
            section.add_metric(f"{segment}.size", size)
            accuracy = section.add_proportion(f"{segment}.accuracy", hits, size)
            rows.append(
                [
                    group,
                    size,
                    accuracy,
                    section.metrics[f"fairness.{segment}.accuracy.ci_low"],
                    section.metrics[f"fairness.{segment}.accuracy.ci_high"],
                ]
            )
            counts.append((accuracy, hits, size))
        small = _small_groups_warning(feature, {row[0]: row[1] for row in rows}, min_group_size)
        section.warnings += [small] if small else []
        worst = min(counts)
        section.add_proportion(f"{prefix}.worst_group_accuracy", worst[1], worst[2])
        section.add_metric(f"{prefix}.accuracy_difference", max(counts)[0] - worst[0])
        section.tables.append(
            Table(
                f"{feature}: accuracy per group", ["group", "size", "accuracy", "95% low", "95% high"], rows
            )
        )
    return section


def fairness_section(
    y_true: np.ndarray,
    y_pred: np.ndarray,
    groups: pd.DataFrame,
    sensitive: list[str],
    *,
    n_boot: int,
    seed: int,
    min_group_size: int,
) -> tuple[Section, dict[str, GroupAudit]]:
    """The fairness section for binary labels (1 = positive) and the sensitive features of the same rows."""
    section = Section("fairness", "Fairness")
    audits: dict[str, GroupAudit] = {}
    for feature, columns in _features(sensitive):
        audit = audit_groups(y_true, y_pred, group_labels(groups, columns), n_boot=n_boot, seed=seed)
        audits[feature] = audit
        prefix = metric_segment(feature)
        comparable = len(audit.groups) >= 2
        if not comparable:
            section.warnings.append(_one_group_warning(feature, audit.groups, len(y_true)))
        for name in SUMMARIES if comparable else ():
            section.add_metric(f"{prefix}.{name}", audit.summaries[name])
            if name in audit.summary_ci:
                section.add_metric(f"{prefix}.{name}.ci_low", audit.summary_ci[name][0])
                section.add_metric(f"{prefix}.{name}.ci_high", audit.summary_ci[name][1])
        rows = []
        for i, group in enumerate(audit.groups):
            segment = f"{prefix}.group.{metric_segment(group)}"
            section.add_metric(f"{segment}.size", int(audit.rates["size"][i]))
            row: list[Any] = [group, int(audit.rates["size"][i])]
            for rate in RATES:
                value = float(audit.rates[rate][i])
                section.add_metric(f"{segment}.{rate}", value)
                if rate in audit.rate_ci:
                    lo, hi = float(audit.rate_ci[rate][0][i]), float(audit.rate_ci[rate][1][i])
                    section.add_metric(f"{segment}.{rate}.ci_low", lo)
                    section.add_metric(f"{segment}.{rate}.ci_high", hi)
                    row.append(f"{value:.3f} [{lo:.3f}, {hi:.3f}]" if np.isfinite(value) else "—")
                else:
                    row.append(round(value, 4) if np.isfinite(value) else None)
            rows.append(row)
        small = _small_groups_warning(
            feature, {g: int(n) for g, n in zip(audit.groups, audit.rates["size"])}, min_group_size
        )
        section.warnings += [small] if small else []
        section.tables.append(
            Table(f"{feature}: per-group rates (95% bootstrap interval)", ["group", "size", *RATES], rows)
        )
        if comparable:
            section.tables.append(
                Table(
                    f"{feature}: summaries",
                    ["metric", "value", "95% low", "95% high"],
                    [[n, audit.summaries[n], *audit.summary_ci.get(n, (None, None))] for n in SUMMARIES],
                )
            )
        bars = []
        for rate in ("selection_rate", "tpr", "fpr"):
            lo_hi = audit.rate_ci.get(rate)
            bars.append(
                Series(
                    rate,
                    list(audit.groups),
                    [_f(v) for v in audit.rates[rate]],
                    [_f(v) for v in lo_hi[0]] if lo_hi else None,
                    [_f(v) for v in lo_hi[1]] if lo_hi else None,
                )
            )
        section.figures.append(
            Figure(f"{feature}: rates per group (95% intervals)", "bar", feature, "rate", bars)
        )
    section.notes.append(
        f"intervals: percentile bootstrap, {n_boot} multinomial resamples of the per-group confusion counts "
        f"(equivalent to resampling rows), seed {seed}; definitions follow Fairlearn's"
    )
    return section, audits


def _f(value: float) -> float | None:
    return float(value) if np.isfinite(value) else None
