"""The fairness section: its payload is plain JSON, and its metrics, tables, notes and summary are renderings of it."""

import copy
import json

import numpy as np
import pandas as pd
import pytest

from audit.groups import group_metric
from audit.intervals import clopper_pearson
from audit.report import Report
from audit_plugins.fairness_metrics import RATES, SUMMARIES
from audit_plugins.fairness_sections import (
    SECTION_ORDER,
    audit_features,
    compared_summaries,
    fairness_data,
    fairness_section,
    group_accuracy_data,
    summary_lines,
    summary_metric,
)


def _rows(n: int = 2000, seed: int = 0) -> tuple[np.ndarray, np.ndarray, pd.DataFrame]:
    rng = np.random.default_rng(seed)
    groups = pd.DataFrame(
        {"sex": rng.choice(["F", "M"], n), "race": rng.choice(["a", "b", "c"], n, p=[0.6, 0.3, 0.1])}
    )
    y = rng.integers(0, 2, n)
    y[groups["race"].to_numpy() == "c"] = 0  # no positives in race c: its TPR and FNR are undefined
    p = (rng.random(n) < np.where(groups["sex"] == "M", 0.6, 0.3)).astype(int)
    return y, p, groups


def _section(min_group_size: int = 30, intervals: str = "exact"):
    y, p, groups = _rows()
    data = fairness_data(y, p, groups, ["sex", "race"], intervals=intervals, min_group_size=min_group_size)
    return data, fairness_section(data)


def test_payload_round_trips_through_json_and_equals_the_metrics():
    data, section = _section()
    assert json.loads(json.dumps(section.data, allow_nan=False)) == section.data
    assert list(section.data["features"]) == ["sex", "race", "sex&race"]
    for feature, entry in section.data["features"].items():
        assert list(entry["summaries"]) == list(SUMMARIES)
        for name, value in entry["summaries"].items():
            assert section.metrics[f"fairness.{summary_metric(feature, name)}"] == value
        for name, (low, high) in entry["summary_ci"].items():
            assert section.metrics[f"fairness.{summary_metric(feature, name)}.ci_low"] == low
            assert section.metrics[f"fairness.{summary_metric(feature, name)}.ci_high"] == high
        for i, group in enumerate(entry["groups"]):
            assert section.metrics[f"fairness.{group_metric(feature, group, 'size')}"] == entry["sizes"][i]
            for rate in RATES:
                assert (
                    section.metrics[f"fairness.{group_metric(feature, group, rate)}"]
                    == entry["rates"][rate][i]
                )
    assert section.metrics["fairness.race.group.c.tpr"] is None
    assert section.data["features"]["race"]["rates"]["tpr"][2] is None


def test_the_section_survives_the_report_json():
    _, section = _section()
    report = Report(run={})
    report.add_section(section)
    again = Report.from_dict(json.loads(report.to_json())).section("fairness")
    assert again.data == section.data and again.summary == section.summary and again.order == SECTION_ORDER


def test_tables_and_figures_are_rendered_from_the_payload():
    data, section = _section()
    changed = copy.deepcopy(data)
    changed["features"]["sex"]["rates"]["selection_rate"][0] = 0.5
    changed["features"]["sex"]["rate_ci"]["selection_rate"] = [[0.25, 0.3], [0.75, 0.7]]
    again = fairness_section(changed)
    assert again.tables[0].rows[0][2] == "0.500 [0.250, 0.750]"
    assert again.figures[0].series[0].y[0] == 0.5 and again.figures[0].series[0].low == [0.25, 0.3]
    assert section.tables[0].title == "sex: per-group rates (95% exact interval)"
    assert [t.title for t in section.tables[:2]] == [
        "sex: per-group rates (95% exact interval)",
        "sex: summaries",
    ]


def test_without_intervals_rates_are_plain_numbers_and_no_intervals():
    data, section = _section(intervals="none")
    assert data["intervals"] == {"method": "none", "level": None, "simultaneous": None}
    entry = data["features"]["sex"]
    assert entry["rate_ci"] == {} and entry["summary_ci"] == {}
    assert not [name for name in section.metrics if name.endswith((".ci_low", ".ci_high"))]
    assert section.tables[0].rows[0][2] == round(entry["rates"]["selection_rate"][0], 4)
    assert "95% interval" not in section.summary[0]


def test_summary_names_the_extremes_and_the_gap():
    data, section = _section()
    entry = data["features"]["sex"]
    low, high = entry["summary_ci"]["demographic_parity_difference"]
    rates = entry["rates"]["selection_rate"]
    first = section.summary[0]
    assert first.startswith(f"sex: selection rates range from {min(rates):.2f} (F) to {max(rates):.2f} (M); ")
    assert f"demographic-parity difference {entry['summaries']['demographic_parity_difference']:.2f}" in first
    assert f"(95% interval {low:.2f} to {high:.2f})" in first
    assert section.summary == summary_lines(data)


def test_a_single_group_leaves_the_summaries_out_and_says_why():
    y, p, groups = _rows(200)
    groups["sex"] = "F"
    section = fairness_section(fairness_data(y, p, groups, ["sex"], intervals="exact", min_group_size=1))
    assert section.data["features"]["sex"]["summaries"] == {}
    assert not [name for name in section.metrics if ".group." not in name]
    assert "fairness.sex.group.F.selection_rate" in section.metrics
    assert any("only one group ('F') among the 200 audited rows" in w for w in section.warnings)
    assert "only one group ('F')" in section.summary[0]


def test_small_groups_are_warned_about_smallest_first():
    _, section = _section(min_group_size=300)
    warning = next(w for w in section.warnings if w.startswith("race:"))
    assert "1 group(s) have fewer than 300" in warning and "'c'" in warning


def test_mitigation_baseline_and_postprocessing_are_rendered_from_the_payload():
    data, _ = _section()
    data["mitigation"] = {
        "method": "reweight",
        "source": "training",
        "weights_range": [0.8, 1.25],
        "count_epsilon": None,
        "accuracy": 0.8,
        "baseline_accuracy": 0.82,
        "accuracy_cost": 0.02,
    }
    data["baseline"] = {"summaries": {"sex": {"demographic_parity_difference": 0.4}, "race": {}}}
    data["postprocess"] = {
        "constraint": "demographic_parity",
        "feature": "sex",
        "status": "fitted",
        "reason": None,
        "accuracy": 0.79,
        "summaries": {"demographic_parity_difference": 0.01},
    }
    section = fairness_section(data)
    assert section.metrics["fairness.mitigation.accuracy_cost"] == 0.02
    assert section.metrics["fairness.baseline.sex.demographic_parity_difference"] == 0.4
    assert section.metrics["fairness.postprocessed.sex.demographic_parity_difference"] == 0.01
    assert section.metrics["fairness.postprocessed.accuracy"] == 0.79
    comparison = next(t for t in section.tables if t.title == "Without and with mitigation")
    with_it = data["features"]["sex"]["summaries"]["demographic_parity_difference"]
    assert comparison.rows == [["accuracy", 0.82, 0.8], ["sex.demographic_parity_difference", 0.4, with_it]]
    assert any("weights 0.800 to 1.250" in note for note in section.notes)
    assert any("a cost of 0.020" in line for line in section.summary)
    assert any(
        "demographic-parity difference 0.40 without the mitigation" in line for line in section.summary
    )
    assert section.summary[-1] == (
        "Fairlearn's ThresholdOptimizer (demographic_parity on sex) moves the demographic-parity difference "
        f"from {with_it:.2f} to 0.01, at accuracy 0.790."
    )


@pytest.mark.parametrize(
    ("status", "where", "text"),
    [
        ("skipped", "notes", "--postprocess skipped: no rows"),
        ("failed", "warnings", "could not be fitted on sex"),
    ],
)
def test_postprocessing_that_did_not_run_says_so(status, where, text):
    data, _ = _section()
    data["postprocess"] = {
        "constraint": "equalized_odds",
        "feature": "sex",
        "status": status,
        "reason": "no rows",
        "accuracy": None,
        "summaries": {},
    }
    section = fairness_section(data)
    assert any(text in line for line in getattr(section, where))
    assert not [name for name in section.metrics if "postprocessed" in name]


def test_a_checkpointed_mitigation_is_named_without_a_comparison():
    data, _ = _section()
    data["mitigation"] = {
        "method": "reweight",
        "source": "checkpoint",
        "weights_range": [0.8, 1.25],
        "count_epsilon": 1.0,
        "accuracy": None,
        "baseline_accuracy": None,
        "accuracy_cost": None,
    }
    section = fairness_section(data)
    assert "the model was trained with reweight (from its checkpoint)" in section.notes
    assert not [name for name in section.metrics if "mitigation" in name]
    assert "recorded in its checkpoint" in section.summary[-1]


def test_multiclass_compares_accuracy_with_exact_intervals():
    rng = np.random.default_rng(0)
    groups = pd.DataFrame({"sex": rng.choice(["F", "M"], 900), "one": "x"})
    y = rng.integers(0, 3, 900)
    p = np.where(rng.random(900) < np.where(groups["sex"] == "F", 0.7, 0.5), y, (y + 1) % 3)
    data = group_accuracy_data(y, p, groups, ["sex", "one"], num_classes=3, min_group_size=30)
    section = fairness_section(data)
    assert json.loads(json.dumps(section.data, allow_nan=False)) == section.data
    sex = data["features"]["sex"]
    hits = [int(((y == p) & (groups["sex"] == g).to_numpy()).sum()) for g in sex["groups"]]
    worst = int(np.argmin(sex["rates"]["accuracy"]))
    assert section.metrics["fairness.sex.worst_group_accuracy"] == min(sex["rates"]["accuracy"])
    # simultaneous: both groups' exact intervals at 97.5%, so the worst group's range is [min low, min high]
    bounds = [clopper_pearson(h, n, 0.975) for h, n in zip(hits, sex["sizes"])]
    assert [
        section.metrics["fairness.sex.worst_group_accuracy.ci_low"],
        section.metrics["fairness.sex.worst_group_accuracy.ci_high"],
    ] == pytest.approx([min(b[0] for b in bounds), min(b[1] for b in bounds)], abs=1e-12)
    assert section.metrics["fairness.sex.accuracy_difference.ci_low"] == pytest.approx(
        max(0.0, max(b[0] for b in bounds) - min(b[1] for b in bounds)), abs=1e-12
    )
    assert bounds[worst][0] >= section.metrics["fairness.sex.worst_group_accuracy.ci_low"]
    assert section.metrics["fairness.sex.accuracy_difference"] == pytest.approx(
        max(sex["rates"]["accuracy"]) - min(sex["rates"]["accuracy"])
    )
    assert not [name for name in section.metrics if name.startswith("fairness.one.")]
    assert any("only one group ('x')" in w for w in section.warnings)
    assert section.summary[0].startswith("The target has 3 classes")
    assert section.tables[0].columns == ["group", "size", "accuracy", "95% low", "95% high"]


def test_compared_summaries_are_plain_and_empty_for_one_group():
    y, p, groups = _rows(300)
    audits = audit_features(y, p, groups, ["sex"], intervals="none")
    assert list(audits) == ["sex"]
    summaries = compared_summaries(audits["sex"])
    assert list(summaries) == list(SUMMARIES) and all(isinstance(v, float) for v in summaries.values())
    groups["sex"] = "M"
    assert compared_summaries(audit_features(y, p, groups, ["sex"], intervals="none")["sex"]) == {}


def test_equal_selection_rates_are_said_once():
    y, _, groups = _rows(400)
    section = fairness_section(
        fairness_data(y, np.ones_like(y), groups, ["sex"], intervals="none", min_group_size=1)
    )
    assert section.summary[1].startswith("sex: selection rate 1.00 in every group (to two decimals); ")


def test_payload_records_the_interval_method_and_the_note_explains_it():
    data, section = _section()
    assert data["intervals"] == {"method": "clopper-pearson", "level": 0.95, "simultaneous": "bonferroni"}
    note = next(n for n in section.notes if n.startswith("intervals:"))
    assert "marginal" in note and "simultaneous 95%" in note and "0 included" in note
    assert data["constant_predictions"] is None
    assert not any(w.startswith("ONE-CLASS") for w in section.warnings)


def test_summary_intervals_hold_the_point_and_rate_intervals_are_exact():
    y, p, groups = _rows()
    data, _ = _section()
    entry = data["features"]["sex"]
    for name, (low, high) in entry["summary_ci"].items():
        assert low <= entry["summaries"][name] <= high, name
    females = (groups["sex"] == "F").to_numpy()
    low, high = (bound[0] for bound in entry["rate_ci"]["selection_rate"])
    assert (low, high) == pytest.approx(clopper_pearson(int(p[females].sum()), int(females.sum())), abs=1e-12)


@pytest.mark.parametrize(
    "by, says", [("model", "the model predicts 'yes'"), ("decisions", "the recorded decisions are 'yes'")]
)
def test_one_class_predictions_are_warned_about_loudly(by, says):
    y, _, groups = _rows(500)
    data = fairness_data(
        y, np.ones_like(y), groups, ["sex"], intervals="exact", min_group_size=1, classes=("no", "yes"), by=by
    )
    section = fairness_section(data)
    assert data["constant_predictions"] == {"class": "yes", "share": 1.0, "rows": 500, "by": by}
    assert section.warnings[0].startswith(f"ONE-CLASS PREDICTIONS: {says} for 100.0% of the 500 audited rows")
    assert "not because it is fair" in section.warnings[0]
    assert section.summary[0].startswith("ONE-CLASS PREDICTIONS")
    assert section.metrics["fairness.sex.demographic_parity_difference"] == 0.0
    varied = fairness_data(y, y, groups, ["sex"], intervals="none", min_group_size=1)
    assert varied["constant_predictions"] is None


def test_one_class_multiclass_predictions_are_warned_about():
    rng = np.random.default_rng(1)
    groups = pd.DataFrame({"sex": rng.choice(["F", "M"], 300)})
    y = rng.integers(0, 3, 300)
    data = group_accuracy_data(
        y, np.full(300, 2), groups, ["sex"], num_classes=3, min_group_size=1, classes=["a", "b", "c"]
    )
    assert data["constant_predictions"]["class"] == "c"
    assert fairness_section(data).warnings[0].startswith("ONE-CLASS PREDICTIONS: the model predicts 'c'")


def test_a_report_from_before_issue_13_renders_with_its_own_interval_method():
    data, _ = _section()
    data["intervals"] = {"method": "bootstrap", "level": 0.95, "resamples": 40, "seed": 3}
    del data["constant_predictions"]
    note = next(n for n in fairness_section(data).notes if n.startswith("intervals:"))
    assert "percentile bootstrap, 40 resamples" in note
