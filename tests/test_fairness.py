import numpy as np
import pandas as pd
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

from audit_plugins.fairness_metrics import audit_groups, reweighing_weights
from tests.conftest import make_loans, read_report, undeclared_metrics


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


def test_reweighing_makes_label_independent_of_group():
    rng = np.random.default_rng(0)
    g = rng.choice(["m", "f"], 5000, p=[0.7, 0.3])
    y = (rng.random(5000) < np.where(g == "m", 0.3, 0.1)).astype(int)
    w = reweighing_weights(y, g)
    for group in ("m", "f"):
        sel = g == group
        assert np.average(y[sel], weights=w[sel]) == pytest.approx(y.mean(), abs=1e-9)
    assert w.mean() == pytest.approx(1.0, abs=1e-9)


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


def test_decisions_audit_without_a_model(cli, tmp_path):
    rng = np.random.default_rng(0)
    n = 3000
    frame = pd.DataFrame(
        {"group": rng.choice(["x", "y"], n), "outcome": rng.choice(["approved", "denied"], n)}
    )
    frame["decision"] = np.where(
        rng.random(n) < np.where(frame["group"] == "x", 0.6, 0.3), "approved", "denied"
    )
    frame["score"] = rng.random(n)
    path = tmp_path / "decisions.csv"
    frame.to_csv(path, index=False)
    out = tmp_path / "dec"
    result = cli(
        "decisions",
        "--data",
        path,
        "--y-true",
        "outcome",
        "--y-pred",
        "decision",
        "--score",
        "score",
        "--sensitive",
        "group",
        "--positive-label",
        "approved",
        "--out",
        out,
    )
    assert result.code == 0, result.err
    m = read_report(out)["metrics"]
    y = (frame["outcome"] == "approved").astype(int).to_numpy()
    p = (frame["decision"] == "approved").astype(int).to_numpy()
    assert m["fairness.group.demographic_parity_difference"] == pytest.approx(
        demographic_parity_difference(y, p, sensitive_features=frame["group"]), abs=1e-9
    )
    card = (out / "model_card.md").read_text()
    assert "trained or loaded no model" in card and "Target: `outcome`" in card and "`?`" not in card
    assert undeclared_metrics(m) == []
    bad = cli(
        "decisions",
        "--data",
        path,
        "--y-true",
        "nope",
        "--y-pred",
        "decision",
        "--sensitive",
        "group",
        "--out",
        tmp_path / "x",
    )
    assert bad.code == 2 and "no column 'nope'" in bad.err
    bad = cli(
        "decisions",
        "--data",
        path,
        "--y-true",
        "outcome",
        "--y-pred",
        "decision",
        "--sensitive",
        "group",
        "--bootstrap",
        "-1",
        "--out",
        tmp_path / "y",
    )
    assert bad.code == 2 and "--bootstrap must be 0 or more" in bad.err and not (tmp_path / "y").exists()


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
