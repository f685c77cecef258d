"""The fairness plugin: its options, reweighing, the baseline comparison, post-processing and the report it writes."""

import json

import numpy as np
import pytest

from audit.checkpoint import load_checkpoint
from audit.report import spec_for
from audit_plugins.fairness import FairnessState, audit_metric_specs
from audit_plugins.fairness_sections import summary_metric
from tests.conftest import assert_bad_input, make_loans, read_report, undeclared_metrics


def _fairness(report: dict) -> dict:
    return next(s for s in report["sections"] if s["name"] == "fairness")


@pytest.fixture
def loans_800(tmp_path):
    path = tmp_path / "loans800.csv"
    make_loans(800, seed=11).to_csv(path, index=False)
    return path


def test_equals_fairlearn_on_adult(tmp_path, cli):
    out = tmp_path / "adult"
    assert cli("train", "--sensitive", "sex,race", "--epochs", "2", "--out", out, "-q").code == 0
    report = read_report(out)
    from audit.config import RunConfig
    from audit.data import load_dataset

    data = load_dataset(RunConfig(sensitive=["sex", "race"]))
    y = (data.test.y.numpy() == 1).astype(int)
    sex = data.test.groups["sex"].to_numpy()
    m = report["metrics"]
    # Recover the predictions' selection rate per group from the report and check the summary against Fairlearn's.
    rates = [m["fairness.sex.group.Female.selection_rate"], m["fairness.sex.group.Male.selection_rate"]]
    assert m["fairness.sex.demographic_parity_difference"] == pytest.approx(
        abs(rates[1] - rates[0]), abs=1e-12
    )
    assert m["fairness.sex.group.Female.size"] == int((sex == "Female").sum())
    assert m["fairness.sex.group.Male.base_rate"] == pytest.approx(y[sex == "Male"].mean(), abs=1e-12)
    assert "fairness.sex&race.demographic_parity_difference" in m
    for name in ("demographic_parity_difference", "equalized_odds_difference"):
        assert (
            m[f"fairness.sex.{name}.ci_low"] <= m[f"fairness.sex.{name}"] <= m[f"fairness.sex.{name}.ci_high"]
        )


def test_reweigh_on_adult_meets_the_bar(cli, tmp_path):
    out = tmp_path / "fair"
    result = cli(
        "train", "--sensitive", "sex", "--fairness", "reweight", "--fairness-baseline", "--out", out, "-q"
    )
    assert result.code == 0, result.err
    m = read_report(out)["metrics"]
    assert m["fairness.baseline.sex.demographic_parity_difference"] > 0.15
    assert m["fairness.sex.demographic_parity_difference"] < 0.10
    assert m["performance.accuracy"] >= 0.84
    assert m["fairness.mitigation.accuracy_cost"] == pytest.approx(
        m["fairness.mitigation.baseline_accuracy"] - m["performance.accuracy"]
    )


def test_threshold_optimizer_reduces_equalized_odds(cli, tmp_path):
    out = tmp_path / "post"
    assert (
        cli(
            "train",
            "--sensitive",
            "sex",
            "--epochs",
            "3",
            "--postprocess",
            "equalized_odds",
            "--out",
            out,
            "-q",
        ).code
        == 0
    )
    m = read_report(out)["metrics"]
    assert (
        m["fairness.postprocessed.sex.equalized_odds_difference"]
        < m["fairness.sex.equalized_odds_difference"]
    )


def test_small_groups_are_warned_about(cli, tmp_path):
    out = tmp_path / "race"
    assert (
        cli(
            "train", "--sensitive", "race", "--epochs", "1", "--min-group-size", "200", "--out", out, "-q"
        ).code
        == 0
    )
    fairness = [s for s in read_report(out)["sections"] if s["name"] == "fairness"][0]
    assert any("Other" in w for w in fairness["warnings"])


def test_one_group_in_the_audited_rows_leaves_the_gaps_out(cli, tmp_path):
    # a gap over one group is 0 by arithmetic: reporting it would pass any parity gate
    frame = make_loans(600).assign(sex=lambda f: np.where(np.arange(len(f)) < 598, "F", "M"))
    path = tmp_path / "rare.csv"
    frame.to_csv(path, index=False)
    out = tmp_path / "rare"
    assert (
        cli(
            "train",
            "--data",
            path,
            "--target",
            "defaulted",
            "--sensitive",
            "sex",
            "--epochs",
            "1",
            "--out",
            out,
            "-q",
        ).code
        == 0
    )
    report = read_report(out)
    assert not [k for k in report["metrics"] if k.startswith("fairness.sex.") and ".group." not in k]
    fairness = next(s for s in report["sections"] if s["name"] == "fairness")
    assert any("only one group ('F')" in w for w in fairness["warnings"])
    policy = tmp_path / "p.yaml"
    policy.write_text("rules:\n  - fairness.sex.demographic_parity_difference <= 0.1\n")
    assert cli("gate", out / "report.json", "--policy", policy).code == 1  # fails closed
    assert "only one group ('F')" in (out / "model_card.md").read_text()


def test_multiclass_target_compares_accuracy_across_groups(cli, tmp_path):
    frame = make_loans(900).assign(grade=lambda f: np.random.default_rng(0).choice(["a", "b", "c"], len(f)))
    path = tmp_path / "multi.csv"
    frame.to_csv(path, index=False)
    out = tmp_path / "multi"
    assert (
        cli(
            "train",
            "--data",
            path,
            "--target",
            "grade",
            "--sensitive",
            "sex",
            "--epochs",
            "1",
            "--out",
            out,
            "-q",
        ).code
        == 0
    )
    m = read_report(out)["metrics"]
    accs = {g: m[f"fairness.sex.group.{g}.accuracy"] for g in ("F", "M")}
    assert m["fairness.sex.worst_group_accuracy"] == min(accs.values())
    assert m["fairness.sex.accuracy_difference"] == pytest.approx(max(accs.values()) - min(accs.values()))
    assert (
        m["fairness.sex.worst_group_accuracy.ci_low"]
        < m["fairness.sex.worst_group_accuracy"]
        < m["fairness.sex.worst_group_accuracy.ci_high"]
    )
    assert undeclared_metrics(m) == []


def test_fairness_data_round_trips_through_json_and_equals_the_metrics(cli, tmp_path, loans_800):
    out = tmp_path / "run"
    result = cli(
        "train",
        *("--data", loans_800, "--target", "defaulted", "--sensitive", "sex,purpose", "--epochs", "2"),
        *("--fairness", "reweight", "--fairness-baseline", "--postprocess", "demographic_parity"),
        *("--fairness-intervals", "exact", "--out", out, "-q"),
    )
    assert result.code == 0, result.err
    report = read_report(out)
    m, section = report["metrics"], _fairness(report)
    data = section["data"]
    assert json.loads(json.dumps(data, allow_nan=False)) == data
    assert list(data["features"]) == ["sex", "purpose", "sex&purpose"]
    for feature, entry in data["features"].items():
        assert entry["summaries"], feature
        for name, value in entry["summaries"].items():
            assert m[f"fairness.{summary_metric(feature, name)}"] == value
            assert (
                m[f"fairness.baseline.{summary_metric(feature, name)}"]
                == data["baseline"]["summaries"][feature][name]
            )
        for name, (low, high) in entry["summary_ci"].items():
            assert (
                m[f"fairness.{summary_metric(feature, name)}.ci_low"],
                m[f"fairness.{summary_metric(feature, name)}.ci_high"],
            ) == (low, high)
    mitigation = data["mitigation"]
    assert mitigation["source"] == "training" and mitigation["method"] == "reweight"
    for name in ("accuracy", "baseline_accuracy", "accuracy_cost"):
        assert m[f"fairness.mitigation.{name}"] == mitigation[name]
    assert mitigation["accuracy"] == m["performance.accuracy"]
    post = data["postprocess"]
    assert post["status"] == "fitted" and post["feature"] == "sex"
    assert m["fairness.postprocessed.accuracy"] == post["accuracy"]
    for name, value in post["summaries"].items():
        assert m[f"fairness.postprocessed.sex.{name}"] == value
    assert section["order"] == 40
    assert any(
        line.startswith("Trained with Kamiran-Calders reweighing: accuracy") for line in section["summary"]
    )
    assert section["headline"] == [
        f"fairness.{feature}.{name}"
        for feature in ("sex", "purpose", "sex&purpose")
        for name in ("demographic_parity_difference", "worst_group_accuracy")
    ]
    assert undeclared_metrics(m) == []


def test_a_reweighed_model_carries_its_mitigation_into_evaluate(cli, tmp_path, loans_800):
    out = tmp_path / "run"
    args = ("--target", "defaulted", "--sensitive", "sex", "--epochs", "1")
    result = cli(
        "train",
        "--data",
        loans_800,
        *args,
        "--fairness",
        "reweight",
        "--reweight-epsilon",
        "2",
        "--reweight-strength",
        "0.5",
        "--out",
        out,
        "-q",
    )
    assert result.code == 0, result.err
    facts = load_checkpoint(str(out / "model.pt"))["metadata"]["fairness"]
    assert set(facts) == {"mitigation", "weights_range", "count_epsilon", "strength"}
    assert facts["mitigation"] == "reweight" and facts["count_epsilon"] == 2.0 and facts["strength"] == 0.5
    assert facts["weights_range"][0] <= 1 <= facts["weights_range"][1]
    assert FairnessState.from_metadata(facts).to_metadata() == facts
    again = tmp_path / "eval"
    result = cli(
        "evaluate",
        "--model",
        out / "model.pt",
        "--data",
        loans_800,
        "--target",
        "defaulted",
        "--out",
        again,
        "-q",
    )
    assert result.code == 0, result.err
    section = _fairness(read_report(again))
    assert "the model was trained with reweight (from its checkpoint)" in section["notes"]
    assert section["data"]["mitigation"]["source"] == "checkpoint"
    assert section["data"]["mitigation"]["weights_range"] == facts["weights_range"]
    assert section["data"]["mitigation"]["strength"] == 0.5
    assert not [k for k in read_report(again)["metrics"] if k.startswith("fairness.mitigation.")]


def test_a_reweighing_strength_moves_the_trained_weights_towards_1(cli, tmp_path, loans_800):
    ranges = {}
    for strength in ("1", "0.25"):
        out = tmp_path / strength
        result = cli(
            "train", "--data", loans_800, "--target", "defaulted", "--sensitive", "sex", "--epochs", "1",
            "--fairness", "reweight", "--reweight-strength", strength, "--out", out, "-q",
        )  # fmt: skip
        assert result.code == 0, result.err
        section = _fairness(read_report(out))
        ranges[strength] = section["data"]["mitigation"]["weights_range"]
    assert ranges["0.25"] == pytest.approx([1 + 0.25 * (w - 1) for w in ranges["1"]])
    assert any("Kamiran-Calders reweighing at strength 0.25 (weights" in note for note in section["notes"])
    assert any(
        line.startswith("Trained with Kamiran-Calders reweighing at strength 0.25:")
        for line in section["summary"]
    )


def test_state_and_checkpoint_facts():
    state = FairnessState("reweight", (0.5, 2.0), None)
    assert state.to_metadata() == {
        "mitigation": "reweight",
        "weights_range": [0.5, 2.0],
        "count_epsilon": None,
        "strength": 1.0,
    }
    assert FairnessState.from_metadata(state.to_metadata()) == state
    # a model saved before --reweight-strength existed was fully reweighed
    old = {"mitigation": "reweight", "weights_range": [0.5, 2.0], "count_epsilon": None}
    assert FairnessState.from_metadata(old) == state
    assert FairnessState.from_metadata(None) is None and FairnessState.from_metadata({}) is None


def test_parity_and_worst_group_accuracy_are_the_headline():
    specs = audit_metric_specs()
    headline = {
        name: spec_for(name, specs).headline
        for name in (
            "fairness.sex.demographic_parity_difference",
            "fairness.sex&race.worst_group_accuracy",
            "fairness.sex.equalized_odds_difference",
            "fairness.baseline.sex.demographic_parity_difference",
            "fairness.postprocessed.sex.worst_group_accuracy",
            "fairness.mitigation.accuracy_cost",
        )
    }
    assert headline == {
        "fairness.sex.demographic_parity_difference": True,
        "fairness.sex&race.worst_group_accuracy": True,
        "fairness.sex.equalized_odds_difference": False,
        "fairness.baseline.sex.demographic_parity_difference": False,
        "fairness.postprocessed.sex.worst_group_accuracy": False,
        "fairness.mitigation.accuracy_cost": False,
    }
    assert spec_for("fairness.baseline.sex.demographic_parity_difference", specs).higher_is_better is False


def test_the_removed_bootstrap_flag_is_refused_naming_its_replacement(cli, tmp_path, loans_800):
    out = tmp_path / "run"
    result = cli(
        "train",
        *("--data", loans_800, "--target", "defaulted", "--sensitive", "sex", "--fairness-bootstrap", "50"),
        *("--out", out, "-q"),
    )
    assert_bad_input(result, out, says="--fairness-bootstrap was removed")
    assert "--fairness-intervals exact|none" in result.err


def test_a_one_class_model_gets_a_loud_fairness_warning_end_to_end(cli, tmp_path):
    frame = make_loans(2000, seed=3)
    frame["defaulted"] = 0
    frame.loc[frame.index[:60], "defaulted"] = 1  # 3% positives: a short run predicts 0 for every row
    path = tmp_path / "rare.csv"
    frame.to_csv(path, index=False)
    out = tmp_path / "run"
    result = cli(
        "train",
        *("--data", path, "--target", "defaulted", "--sensitive", "sex", "--epochs", "1", "--out", out, "-q"),
    )
    assert result.code == 0, result.err
    section = _fairness(read_report(out))
    constant = section["data"]["constant_predictions"]
    assert constant["by"] == "model" and constant["share"] >= 0.99 and constant["class"] == "0"
    assert section["warnings"][0].startswith("ONE-CLASS PREDICTIONS: the model predicts '0' for ")
    assert "not because it is fair" in section["warnings"][0]
    assert "ONE-CLASS PREDICTIONS" in (out / "report.html").read_text()
