"""Group rates and summaries equal Fairlearn's; exact intervals keep their coverage at every gap; Kamiran-Calders."""

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
    audit = audit_groups(y, p, g, intervals="none")
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


def test_exact_interval_covers_and_shrinks_with_n():
    rng = np.random.default_rng(0)
    widths = []
    for n in (1000, 16000):
        g = rng.choice(["a", "b"], n)
        y = rng.integers(0, 2, n)
        p = (rng.random(n) < np.where(g == "a", 0.5, 0.4)).astype(int)
        audit = audit_groups(y, p, g)
        lo, hi = audit.summary_ci["demographic_parity_difference"]
        assert lo <= audit.summaries["demographic_parity_difference"] <= hi
        widths.append(hi - lo)
    assert widths[1] < widths[0] / 2


# Two groups of a known population: P(y=1) = BASE; P(pred=1 | y=1) = TPR (+gap in group b); P(pred=1 | y=0) = FPR
# (+gap in group b). So selection rates differ by exactly `gap`, TPRs and FPRs by `gap`, accuracies by 0.2 gap.
BASE, TPR, FPR = 0.4, 0.7, 0.2
CELLS = ("tn", "fp", "fn", "tp")


def _population(gap: float) -> dict[str, dict[str, float]]:
    truth = {}
    for group, shift in (("a", 0.0), ("b", gap)):
        tpr, fpr = TPR + shift, FPR + shift
        sel = BASE * tpr + (1 - BASE) * fpr
        truth[group] = {
            "selection_rate": sel,
            "base_rate": BASE,
            "accuracy": BASE * tpr + (1 - BASE) * (1 - fpr),
            "tpr": tpr,
            "fpr": fpr,
            "fnr": 1 - tpr,
            "precision": BASE * tpr / sel,
            "cells": [(1 - BASE) * (1 - fpr), (1 - BASE) * fpr, BASE * (1 - tpr), BASE * tpr],
        }
    return truth


def _true_summaries(truth):
    a, b = truth["a"], truth["b"]

    def diff(rate):
        return abs(a[rate] - b[rate])

    def ratio(rate):
        return min(a[rate], b[rate]) / max(a[rate], b[rate])

    return {
        "demographic_parity_difference": diff("selection_rate"),
        "demographic_parity_ratio": ratio("selection_rate"),
        "equalized_odds_difference": max(diff("tpr"), diff("fpr")),
        "equalized_odds_ratio": min(ratio("tpr"), ratio("fpr")),
        "equal_opportunity_difference": diff("tpr"),
        "equal_opportunity_ratio": ratio("tpr"),
        "worst_group_accuracy": min(a["accuracy"], b["accuracy"]),
        "accuracy_difference": diff("accuracy"),
    }


def _draw(rng, truth, n):
    """Rows of two groups of n each: multinomial cell counts per group, laid out as rows (rows are exchangeable)."""
    ys, ps, gs = [], [], []
    for code, group in enumerate(("a", "b")):
        counts = rng.multinomial(n, truth[group]["cells"])
        ys.append(np.repeat([0, 0, 1, 1], counts))
        ps.append(np.repeat([0, 1, 0, 1], counts))
        gs.append(np.full(n, code))
    return np.concatenate(ys), np.concatenate(ps), np.concatenate(gs)


# Per-group rate intervals are exact, not conservative (coverage about 95-96%), so each rate's coverage is pooled
# over the two groups (2 x 400 intervals: standard error 0.8 points) before it is held to 93%.
REPLICATIONS = 400


def _coverage(gap: float, n: int, seed: int) -> dict[str, float]:
    rng = np.random.default_rng(seed)
    truth = _population(gap)
    true_summaries = _true_summaries(truth)
    hits: dict[str, int] = {}
    for _ in range(REPLICATIONS):
        audit = audit_groups(*_draw(rng, truth, n))
        for name, (low, high) in audit.summary_ci.items():
            hits[name] = hits.get(name, 0) + int(low <= true_summaries[name] <= high)
        for rate in RATES:
            low, high = audit.rate_ci[rate]
            for i, group in enumerate(("a", "b")):
                hits[rate] = hits.get(rate, 0) + int(low[i] <= truth[group][rate] <= high[i])
    return {name: count / REPLICATIONS / (2 if name in RATES else 1) for name, count in hits.items()}


@pytest.mark.parametrize("n", [50, 500, 5000])
@pytest.mark.parametrize("gap", [0.0, 0.002, 0.04, 0.2])
def test_every_interval_keeps_95_percent_coverage_at_every_gap(gap, n):
    # The bootstrap this replaces covered gaps of 0 and 0.002 0% of the time and 0.04 75% of the time (issue 13).
    coverage = _coverage(gap, n, seed=int(gap * 1000) * 10 + n)
    assert set(coverage) == set(SUMMARIES) | set(RATES)
    low = {name: c for name, c in coverage.items() if c < 0.93}
    print(
        f"gap {gap} n {n}: minimum coverage {min(coverage.values()):.3f} ({min(coverage, key=coverage.get)})"
    )
    assert low == {}


def test_at_no_gap_the_gap_intervals_reach_zero_and_the_ratios_one():
    rng = np.random.default_rng(5)
    truth = _population(0.0)
    for _ in range(50):
        audit = audit_groups(*_draw(rng, truth, 1000))
        for name in ("demographic_parity_difference", "equalized_odds_difference", "accuracy_difference"):
            assert (
                audit.summary_ci[name][0] == 0.0 < audit.summaries[name] + 1e-12 <= audit.summary_ci[name][1]
            )
        for name in ("demographic_parity_ratio", "equalized_odds_ratio"):
            assert audit.summary_ci[name][0] < 1.0 == audit.summary_ci[name][1]


def test_a_small_cell_gets_an_honest_interval():
    # group "s": 3 positives, none found; the bootstrap gave its TPR [0, 0] (issue 13)
    y = np.array([1, 1, 1, 0, 0] + [1, 0] * 50)
    p = np.array([0, 0, 0, 0, 1] + [1, 0] * 50)
    g = np.array(["s"] * 5 + ["t"] * 100)
    audit = audit_groups(y, p, g)
    low, high = (bound[0] for bound in audit.rate_ci["tpr"])
    assert audit.rates["tpr"][0] == 0.0 and low == 0.0
    assert high == pytest.approx(1 - 0.025 ** (1 / 3), abs=1e-9)  # about 0.71
    assert audit.rates["tpr"][1] == 1.0 and audit.rate_ci["tpr"][1][1] == 1.0


def test_undefined_rates_have_no_interval_and_do_not_count_in_the_gap():
    y = np.array([0, 0, 0, 1, 1, 0, 0])
    p = np.array([0, 1, 0, 1, 0, 1, 0])
    g = np.array(["a", "a", "a", "b", "b", "b", "b"])  # "a" has no positives: its TPR is undefined
    audit = audit_groups(y, p, g)
    assert np.isnan(audit.rate_ci["tpr"][0][0]) and np.isnan(audit.rate_ci["tpr"][1][0])
    low, high = audit.summary_ci["equal_opportunity_difference"]
    assert (
        low == 0.0 and high > 0
    )  # one group with a defined TPR: its gap is 0 by arithmetic, bounds stay valid


def test_no_intervals_gives_no_intervals():
    audit = audit_groups(
        np.array([0, 1, 1, 0]), np.array([0, 1, 0, 0]), np.array(["a", "a", "b", "b"]), intervals="none"
    )
    assert audit.rate_ci == {} and audit.summary_ci == {}


def test_to_data_is_plain_json_with_undefined_rates_as_none():
    # group "b" has no positive labels, so its TPR and FNR are undefined (NaN in the arrays)
    y = np.array([1, 0, 1, 0, 0, 0, 0, 0])
    p = np.array([1, 0, 0, 1, 0, 1, 0, 0])
    g = np.array(["a", "a", "a", "a", "b", "b", "b", "b"])
    audit = audit_groups(y, p, g)
    data = audit.to_data()
    assert json.loads(json.dumps(data, allow_nan=False)) == data
    assert data["groups"] == ["a", "b"] and data["sizes"] == [4, 4]
    assert data["rates"]["tpr"] == [0.5, None]
    assert set(data["rates"]) == set(RATES) and set(data["summaries"]) == set(SUMMARIES)
    assert [len(bound) for bound in data["rate_ci"]["selection_rate"]] == [2, 2]
    assert data["summaries"]["demographic_parity_difference"] == pytest.approx(0.25)


def test_one_group_is_not_comparable():
    assert not audit_groups(
        np.array([0, 1]), np.array([1, 1]), np.array(["a", "a"]), intervals="none"
    ).comparable
    assert audit_groups(np.array([0, 1]), np.array([1, 1]), np.array(["a", "b"]), intervals="none").comparable


def test_reweighing_makes_label_independent_of_group():
    rng = np.random.default_rng(0)
    g = rng.choice(["m", "f"], 5000, p=[0.7, 0.3])
    y = (rng.random(5000) < np.where(g == "m", 0.3, 0.1)).astype(int)
    w = reweighing_weights(y, g)
    for group in ("m", "f"):
        sel = g == group
        assert np.average(y[sel], weights=w[sel]) == pytest.approx(y.mean(), abs=1e-9)
    assert w.mean() == pytest.approx(1.0, abs=1e-9)


@pytest.mark.parametrize("strength", [0.0, 0.3, 0.75, 1.0])
def test_a_reweighing_strength_trains_on_the_mixture_of_the_data_and_its_reweighed_form(strength):
    rng = np.random.default_rng(2)
    g = rng.choice(["m", "f"], 4000, p=[0.6, 0.4])
    y = (rng.random(4000) < np.where(g == "m", 0.35, 0.12)).astype(int)
    full, w = reweighing_weights(y, g), reweighing_weights(y, g, strength=strength)
    np.testing.assert_allclose(w, 1.0 + strength * (full - 1.0))
    # the weighted positive rate of each group lies the same fraction of the way from its own rate to the overall one
    for group in ("m", "f"):
        sel = g == group
        own = y[sel].mean()
        assert np.sum(w[sel] * y[sel]) / sel.sum() == pytest.approx(
            own + strength * (y.mean() - own), abs=1e-9
        )
    assert w.min() > 0 and w.mean() == pytest.approx(1.0, abs=1e-9)


def test_a_strength_outside_0_to_1_is_refused():
    with pytest.raises(ValueError, match="strength must lie in"):
        reweighing_weights(np.array([0, 1]), np.array(["a", "b"]), strength=1.2)


def test_reweighing_from_given_counts_equals_counting_the_rows():
    rng = np.random.default_rng(1)
    g = rng.choice(["x", "y", "z"], 500)
    y = rng.integers(0, 2, 500)
    names, counts = cell_counts(y, g)
    assert names == ["x", "y", "z"] and counts.shape == (3, 2) and counts.sum() == 500
    np.testing.assert_array_equal(reweighing_weights(y, g, counts=counts), reweighing_weights(y, g))
