"""Group rates and summaries equal Fairlearn's; the count-level bootstrap; Kamiran-Calders weights."""

import json

import numpy as np
import pytest
from fairlearn.metrics import (
    MetricFrame,
    demographic_parity_difference,
    demographic_parity_ratio,
    equal_opportunity_difference,
    equalized_odds_difference,
    equalized_odds_ratio,
    false_negative_rate,
    false_positive_rate,
    selection_rate,
    true_positive_rate,
)
from sklearn.metrics import accuracy_score, precision_score

from audit_plugins.fairness_metrics import RATES, SUMMARIES, audit_groups, cell_counts, reweighing_weights


def _compare(y, p, g):
    audit = audit_groups(y, p, g, n_boot=0)
    frame = MetricFrame(
        metrics={
            "selection_rate": selection_rate,
            "tpr": true_positive_rate,
            "fpr": false_positive_rate,
            "fnr": false_negative_rate,
            "accuracy": accuracy_score,
            "precision": lambda a, b: precision_score(a, b, zero_division=0),
        },
        y_true=y,
        y_pred=p,
        sensitive_features=g,
    )
    for name in ("selection_rate", "tpr", "fpr", "fnr", "accuracy", "precision"):
        np.testing.assert_allclose(audit.rates[name], frame.by_group[name].to_numpy(dtype=float), atol=1e-9)
    expected = {
        "demographic_parity_difference": demographic_parity_difference(y, p, sensitive_features=g),
        "demographic_parity_ratio": demographic_parity_ratio(y, p, sensitive_features=g),
        "equalized_odds_difference": equalized_odds_difference(y, p, sensitive_features=g),
        "equalized_odds_ratio": equalized_odds_ratio(y, p, sensitive_features=g),
        "equal_opportunity_difference": equal_opportunity_difference(y, p, sensitive_features=g),
    }
    for name, value in expected.items():
        assert audit.summaries[name] == pytest.approx(value, abs=1e-9), name


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_equals_fairlearn_on_random_data(seed):
    rng = np.random.default_rng(seed)
    n = 4000
    g = rng.choice(["a", "b", "c", "d", "e"], n, p=[0.4, 0.3, 0.2, 0.07, 0.03])
    y = rng.integers(0, 2, n)
    p = (rng.random(n) < np.where(g == "a", 0.6, 0.3)).astype(int)
    _compare(y, p, g)


def test_bootstrap_interval_covers_and_shrinks_with_n():
    rng = np.random.default_rng(0)
    widths = []
    for n in (1000, 16000):
        g = rng.choice(["a", "b"], n)
        y = rng.integers(0, 2, n)
        p = (rng.random(n) < np.where(g == "a", 0.5, 0.4)).astype(int)
        audit = audit_groups(y, p, g, n_boot=1000, seed=1)
        lo, hi = audit.summary_ci["demographic_parity_difference"]
        assert lo <= audit.summaries["demographic_parity_difference"] <= hi
        widths.append(hi - lo)
    assert widths[1] < widths[0] / 2


def test_no_bootstrap_gives_no_intervals():
    audit = audit_groups(
        np.array([0, 1, 1, 0]), np.array([0, 1, 0, 0]), np.array(["a", "a", "b", "b"]), n_boot=0
    )
    assert audit.rate_ci == {} and audit.summary_ci == {}


def test_to_data_is_plain_json_with_undefined_rates_as_none():
    # group "b" has no positive labels, so its TPR and FNR are undefined (NaN in the arrays)
    y = np.array([1, 0, 1, 0, 0, 0, 0, 0])
    p = np.array([1, 0, 0, 1, 0, 1, 0, 0])
    g = np.array(["a", "a", "a", "a", "b", "b", "b", "b"])
    audit = audit_groups(y, p, g, n_boot=20, seed=0)
    data = audit.to_data()
    assert json.loads(json.dumps(data, allow_nan=False)) == data
    assert data["groups"] == ["a", "b"] and data["sizes"] == [4, 4]
    assert data["rates"]["tpr"] == [0.5, None]
    assert set(data["rates"]) == set(RATES) and set(data["summaries"]) == set(SUMMARIES)
    assert [len(bound) for bound in data["rate_ci"]["selection_rate"]] == [2, 2]
    assert data["summaries"]["demographic_parity_difference"] == pytest.approx(0.25)


def test_one_group_is_not_comparable():
    assert not audit_groups(np.array([0, 1]), np.array([1, 1]), np.array(["a", "a"]), n_boot=0).comparable
    assert audit_groups(np.array([0, 1]), np.array([1, 1]), np.array(["a", "b"]), n_boot=0).comparable


def test_reweighing_makes_label_independent_of_group():
    rng = np.random.default_rng(0)
    g = rng.choice(["m", "f"], 5000, p=[0.7, 0.3])
    y = (rng.random(5000) < np.where(g == "m", 0.3, 0.1)).astype(int)
    w = reweighing_weights(y, g)
    for group in ("m", "f"):
        sel = g == group
        assert np.average(y[sel], weights=w[sel]) == pytest.approx(y.mean(), abs=1e-9)
    assert w.mean() == pytest.approx(1.0, abs=1e-9)


def test_reweighing_from_given_counts_equals_counting_the_rows():
    rng = np.random.default_rng(1)
    g = rng.choice(["x", "y", "z"], 500)
    y = rng.integers(0, 2, 500)
    names, counts = cell_counts(y, g)
    assert names == ["x", "y", "z"] and counts.shape == (3, 2) and counts.sum() == 500
    np.testing.assert_array_equal(reweighing_weights(y, g, counts=counts), reweighing_weights(y, g))
