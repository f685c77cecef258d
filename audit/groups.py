"""Sensitive groups: the one way to name a per-group metric and to select a group's rows, for every plugin.

Per-group metrics are named ``<section>.<feature>.group.<group>.<metric>`` everywhere (fairness, privacy,
robustness, third-party plugins); a feature of several columns (an intersection) joins their names with ``&``.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import numpy as np
import pandas as pd

from audit.report import metric_segment

INTERSECTION = "&"


def sensitive_features(
    sensitive: Sequence[str], *, intersection: bool = False
) -> list[tuple[str, list[str]]]:
    """(feature name, columns) per sensitive column, plus their intersection when asked and there are several."""
    features = [(name, [name]) for name in sensitive]
    if intersection and len(sensitive) > 1:
        features.append((INTERSECTION.join(sensitive), list(sensitive)))
    return features


def group_labels(groups: pd.DataFrame, columns: Sequence[str]) -> np.ndarray:
    """Each row's group as a string; several columns join with ``&`` (an intersectional group).

    An intersection numbers each row's combination and joins the names once per combination that occurs, not
    once per row (millions of test rows, a few groups).
    """
    if not len(groups):
        return np.array([], dtype=str)
    if len(columns) == 1:
        return _labels(groups[columns[0]])
    coded = [_codes(_labels(groups[col])) for col in columns]
    sizes = [max(len(names), 1) for _, names in coded]
    if np.prod(sizes, dtype=float) >= 2**62:  # too many combinations to number: join row by row
        return groups[list(columns)].astype(str).agg(INTERSECTION.join, axis=1).to_numpy()
    combined = np.zeros(len(groups), np.int64)
    for codes, names in coded:
        combined = combined * len(names) + codes
    index, seen = pd.factorize(combined)
    return np.asarray([_combination(int(value), coded) for value in seen], dtype=object)[index]


def _combination(value: int, coded: list[tuple[np.ndarray, list[str]]]) -> str:
    """A combination's name, its columns' labels read back from its number (last column the lowest digit)."""
    parts = []
    for _, names in reversed(coded):
        value, digit = divmod(value, len(names))
        parts.append(names[digit])
    return INTERSECTION.join(reversed(parts))


def _labels(column: pd.Series) -> np.ndarray:
    return column.astype(str).to_numpy()


def _codes(labels: np.ndarray) -> tuple[np.ndarray, list[str]]:
    codes, uniques = pd.factorize(labels, use_na_sentinel=False)
    return codes.astype(np.int64), list(uniques)


def group_masks(labels: np.ndarray) -> Iterator[tuple[str, np.ndarray]]:
    """(group, boolean row mask) for every group among ``labels``, in sorted order."""
    for group in sorted(set(labels.tolist())):
        yield group, labels == group


def group_metric(feature: str, group: str, metric: str) -> str:
    """A per-group metric's name below its section: ``<feature>.group.<group>.<metric>``."""
    return f"{metric_segment(feature)}.group.{metric_segment(group)}.{metric}"
