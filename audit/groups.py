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
    """Each row's group as a string; several columns join with ``&`` (an intersectional group)."""
    if not len(groups):
        return np.array([], dtype=str)
    if len(columns) == 1:
        return groups[columns[0]].astype(str).to_numpy()
    return groups[list(columns)].astype(str).agg(INTERSECTION.join, axis=1).to_numpy()


def group_masks(labels: np.ndarray) -> Iterator[tuple[str, np.ndarray]]:
    """(group, boolean row mask) for every group among ``labels``, in sorted order."""
    for group in sorted(set(labels.tolist())):
        yield group, labels == group


def group_metric(feature: str, group: str, metric: str) -> str:
    """A per-group metric's name below its section: ``<feature>.group.<group>.<metric>``."""
    return f"{metric_segment(feature)}.group.{metric_segment(group)}.{metric}"
