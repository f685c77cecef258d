"""audit.groups: sensitive features (and their intersection), group labels, masks, and per-group metric names."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from audit.groups import INTERSECTION, group_labels, group_masks, group_metric, sensitive_features
from audit.report import metric_segment


def test_sensitive_features_one_per_column():
    assert sensitive_features(["sex", "race"]) == [("sex", ["sex"]), ("race", ["race"])]
    assert sensitive_features([]) == []


def test_sensitive_features_with_intersection():
    assert INTERSECTION == "&"
    assert sensitive_features(["sex", "race"], intersection=True) == [
        ("sex", ["sex"]),
        ("race", ["race"]),
        ("sex&race", ["sex", "race"]),
    ]


def test_one_column_has_no_intersection():
    assert sensitive_features(["sex"], intersection=True) == [("sex", ["sex"])]


@pytest.fixture
def groups():
    return pd.DataFrame(
        {"sex": ["F", "M", "F", "M", "F"], "race": ["White", "Black", "Black", "White", "White"]}
    )


def test_group_labels_of_one_column(groups):
    labels = group_labels(groups, ["sex"])
    assert labels.tolist() == ["F", "M", "F", "M", "F"]


def test_group_labels_of_a_non_string_column_are_strings():
    labels = group_labels(pd.DataFrame({"band": [1, 2, 1]}), ["band"])
    assert labels.tolist() == ["1", "2", "1"]


def test_group_labels_of_several_columns_join_with_ampersand(groups):
    labels = group_labels(groups, ["sex", "race"])
    assert labels.tolist() == ["F&White", "M&Black", "F&Black", "M&White", "F&White"]
    assert group_labels(groups, ["race", "sex"])[0] == "White&F"  # in the order the columns are named


@pytest.mark.parametrize("columns", [["sex"], ["sex", "race"]])
def test_group_labels_of_an_empty_frame(columns):
    labels = group_labels(pd.DataFrame({"sex": [], "race": []}), columns)
    assert isinstance(labels, np.ndarray) and len(labels) == 0


def test_group_masks_are_sorted_and_cover_every_row_once(groups):
    labels = group_labels(groups, ["sex", "race"])
    masks = list(group_masks(labels))
    names = [name for name, _ in masks]
    assert names == sorted(set(labels.tolist())) == ["F&Black", "F&White", "M&Black", "M&White"]
    stacked = np.stack([mask for _, mask in masks])
    assert stacked.dtype == bool and stacked.shape == (4, len(labels))
    assert (stacked.sum(axis=0) == 1).all()  # each row in exactly one group
    for name, mask in masks:
        assert (labels[mask] == name).all()
    assert dict(masks)["F&White"].tolist() == [True, False, False, False, True]


def test_group_masks_of_no_rows_yield_nothing():
    assert list(group_masks(np.array([], dtype=str))) == []


def test_group_metric_name():
    assert group_metric("sex", "F", "selection_rate") == "sex.group.F.selection_rate"
    assert group_metric("sex&race", "F&White", "auc") == "sex&race.group.F&White.auc"


@pytest.mark.parametrize(
    ("feature", "group", "expected"),
    [
        ("race", "Asian-Pac-Islander", "race.group.Asian-Pac-Islander.tpr"),
        ("age", "(30, 40]", "age.group.30_40.tpr"),
        ("native country", "United.States", "native_country.group.United_States.tpr"),
        ("sex", "", "sex.group._.tpr"),
    ],
)
def test_group_metric_cleans_free_text_into_one_segment_each(feature, group, expected):
    name = group_metric(feature, group, "tpr")
    assert name == expected
    assert name == f"{metric_segment(feature)}.group.{metric_segment(group)}.tpr"
    assert name.count(".") == 3  # a dot inside a group never adds a segment
