"""The robustness plugin: curves through the CLI, per-group robust accuracy, adversarial training, and the section's
payload (JSON-able, equal to the metrics, the one source of its tables, figures and summary)."""

import dataclasses
import fnmatch
import json
from types import SimpleNamespace

import pytest

from audit import AuditError
from audit.config import RunConfig
from audit.report import Section
from audit_plugins.robustness import (
    AdvTraining,
    audit_checkpoint_metadata,
    audit_configure,
    audit_metric_specs,
    eps_segment,
    render_section,
)
from tests.conftest import read_report, robustness_section_of_a_linear_model, undeclared_metrics

EPS = [0.05, 0.1, 0.2, 0.3]


@pytest.fixture(scope="module")
def digits_report(tmp_path_factory):
    from audit.cli import main

    out = tmp_path_factory.mktemp("r") / "digits"
    args = ["train", "--data", "digits", "--epochs", "10", "--robustness", "--attack", "fgsm,pgd"]
    assert main([*args, "--eps", ",".join(map(str, EPS)), "--out", str(out), "-q"]) == 0
    return read_report(out)


def test_robust_accuracy_falls_and_pgd_is_stronger(digits_report):
    m = digits_report["metrics"]
    pgd = [m[f"robustness.pgd.{eps_segment(e)}.robust_accuracy"] for e in EPS]
    fgsm = [m[f"robustness.fgsm.{eps_segment(e)}.robust_accuracy"] for e in EPS]
    assert pgd == sorted(pgd, reverse=True) and pgd[0] > pgd[-1]
    assert all(p <= f + 1e-9 for p, f in zip(pgd, fgsm))
    assert pgd[-1] <= 0.1 + 0.05  # ten classes: chance is 0.1
    assert m["robustness.unbounded_pgd_accuracy"] <= 0.15
    assert 0 < m["robustness.pgd.auc"] < m["robustness.clean_accuracy"]
    names = [f"robustness.pgd.{eps_segment(e)}.robust_accuracy" for e in EPS] + ["robustness.clean_accuracy"]
    for name in names:
        low, high = m[f"{name}.ci_low"], m[f"{name}.ci_high"]
        assert low <= m[name] <= high and high - low < 0.15


def test_adversarial_training_raises_pgd_accuracy(tmp_path, cli):
    out = tmp_path / "adv"
    # --adv-eps off the --eps grid: both models are attacked at 0.1 for the comparison all the same
    args = ["--robustness", "adv-train", "--attack", "pgd", "--eps", "0.05,0.2", "--adv-eps", "0.1"]
    result = cli("train", "--data", "digits", "--epochs", "10", *args, "--pgd-steps", "5", "--out", out, "-q")
    assert result.code == 0
    report = read_report(out)
    m = report["metrics"]
    assert (
        m["robustness.adv_train.pgd_robust_accuracy"] > m["robustness.adv_train.baseline_pgd_robust_accuracy"]
    )
    assert (
        m["robustness.pgd.eps_0p05.robust_accuracy"]
        >= m["robustness.adv_train.pgd_robust_accuracy"]
        >= m["robustness.pgd.eps_0p2.robust_accuracy"]
    )
    assert "robustness.adv_train.clean_accuracy_cost" in m
    assert undeclared_metrics(m) == []
    data = next(s for s in report["sections"] if s["name"] == "robustness")["data"]
    assert data["adv_train"]["eps"] == 0.1 and data["adv_train"]["steps"] == 5
    assert data["adv_train"]["pgd_robust_accuracy"] == m["robustness.adv_train.pgd_robust_accuracy"]


@pytest.fixture(scope="module")
def tabular_report(tmp_path_factory):
    from audit.cli import main

    out = tmp_path_factory.mktemp("r") / "tab"
    args = ["train", "--sensitive", "sex", "--epochs", "2", "--robustness", "--robustness-samples", "300"]
    assert main([*args, "--out", str(out), "-q"]) == 0
    return read_report(out)


def test_tabular_robustness_with_groups_through_cli(tabular_report):
    m = tabular_report["metrics"]
    groups = {g: m[f"robustness.sex.group.{g}.robust_accuracy"] for g in ("Female", "Male")}
    worst = min(groups, key=groups.get)
    assert m["robustness.worst_group_robust_accuracy"] == groups[worst]
    # the worst group's own interval: fewer rows than the whole subset, so wider than the overall one
    assert (
        m["robustness.worst_group_robust_accuracy.ci_low"]
        == m[f"robustness.sex.group.{worst}.robust_accuracy.ci_low"]
    )
    section = next(s for s in tabular_report["sections"] if s["name"] == "robustness")
    data = section["data"]
    assert {(g["group"], a) for g in data["groups"] for a in g["curves"]} == {
        (g, a) for g in ("Female", "Male") for a in ("fgsm", "pgd")
    }
    female = next(g for g in data["groups"] if g["group"] == "Female")
    assert female["curves"]["pgd"][data["eps"].index(0.25)] == pytest.approx(groups["Female"])
    assert data["worst_group"]["group"] == worst and data["group_reference"] == {"attack": "pgd", "eps": 0.25}
    assert any(f["title"] == "pgd accuracy under attack per sex group" for f in section["figures"])
    width = (
        m["robustness.sex.group.Female.robust_accuracy.ci_high"]
        - m["robustness.sex.group.Female.robust_accuracy.ci_low"]
    )
    overall = (
        m["robustness.pgd.eps_0p25.robust_accuracy.ci_high"]
        - m["robustness.pgd.eps_0p25.robust_accuracy.ci_low"]
    )
    assert width > overall
    assert section["order"] == 50 and any("Worst group" in line for line in section["summary"])
    assert undeclared_metrics(m) == []


# --- the section, straight from the hook ----------------------------------------------------------------------


@pytest.fixture(scope="module")
def adult_section():
    """The plugin's section on Adult (sex groups) for a quickly fitted linear model, called without the runner."""
    options = {"robustness": "eval", "attack": "fgsm,pgd", "eps": [0.1, 0.5, 1.0], "pgd_steps": 3}
    config = RunConfig(sensitive=["sex"], quiet=True, options={**options, "robustness_samples": 200})
    audit_configure(config)
    return robustness_section_of_a_linear_model(config, steps=100)


def test_a_model_that_predicts_one_class_is_not_called_robust_without_the_warning():
    options = {"robustness": "eval", "attack": "pgd", "eps": [0.1], "pgd_steps": 2, "robustness_samples": 50}
    config = RunConfig(sensitive=["sex"], quiet=True, options=options)
    audit_configure(config)
    section = robustness_section_of_a_linear_model(config, steps=0, constant_class=0)
    constant = section.data["constant_predictions"]
    assert constant["share"] == 1.0 and constant["rows"] == 16281 and constant["class"] == "<=50K"
    assert section.warnings[0].startswith(
        "ONE-CLASS MODEL: the model predicts '<=50K' for 100.0% of the 16,281"
    )
    assert section.summary[0].startswith("ONE-CLASS MODEL") and section.summary[1].startswith("No prediction")
    assert (
        section.metrics["robustness.pgd.eps_0p1.robust_accuracy"]
        == section.metrics["robustness.clean_accuracy"]
    )


def test_section_data_round_trips_through_json_and_equals_the_metrics(adult_section):
    data, metrics = adult_section.data, adult_section.metrics
    assert json.loads(json.dumps(data, allow_nan=False)) == data
    assert data["eps"] == [0.1, 0.5, 1.0] and data["samples"] == 200 == metrics["robustness.samples"]
    assert data["clean_accuracy"] == metrics["robustness.clean_accuracy"]
    for attack, curve in data["attacks"].items():
        for i, eps in enumerate(data["eps"]):
            name = f"robustness.{attack}.{eps_segment(eps)}.robust_accuracy"
            assert curve["robust_accuracy"][i] == metrics[name]
            assert (curve["ci_low"][i], curve["ci_high"][i]) == (
                metrics[f"{name}.ci_low"],
                metrics[f"{name}.ci_high"],
            )
        assert curve["auc"] == metrics[f"robustness.{attack}.auc"]
    for group in data["groups"]:
        name = f"robustness.sex.group.{group['group']}.robust_accuracy"
        assert group["robust_accuracy"] == metrics[name] == pytest.approx(group["curves"]["pgd"][1])
    assert data["worst_group"]["robust_accuracy"] == metrics["robustness.worst_group_robust_accuracy"]
    assert (
        data["adv_train"] is None
        and data["unbounded_pgd"]["accuracy"] == metrics["robustness.unbounded_pgd_accuracy"]
    )


def test_tables_and_figures_are_renderings_of_the_data(adult_section):
    again = Section("robustness", "Adversarial robustness", data=json.loads(json.dumps(adult_section.data)))
    render_section(again)
    assert again.tables == adult_section.tables and again.figures == adult_section.figures
    titles = [t.title for t in again.tables]
    assert titles == [
        "Robust accuracy per attack and epsilon",
        "Per group: pgd at epsilon 0.5",
        "Per group: robust accuracy by attack and epsilon",
        "Sanity checks for broken evaluations",
    ]


def test_summary_reads_the_middle_epsilon_and_the_worst_group(adult_section):
    data, summary = adult_section.data, adult_section.summary
    pgd = next(
        line
        for line in summary
        if line.startswith("Under PGD (L-inf, 3 steps) at epsilon 0.5 standardised units")
    )
    assert f"{data['attacks']['pgd']['robust_accuracy'][1]:.2f} (95% interval" in pgd
    assert "area under the curve" in pgd
    assert any(line.startswith("Under FGSM (L-inf, one step) at epsilon 0.5") for line in summary)
    worst = next(line for line in summary if line.startswith("Worst group under PGD"))
    assert f"sex = {data['worst_group']['group']}" in worst
    assert any("checks for a broken evaluation" in line for line in summary)


# --- options, saved state and specs ----------------------------------------------------------------------------


def test_configure_defaults_and_normalises_the_attack_list():
    config = RunConfig(options={"robustness": "eval", "attack": " pgd, fgsm,"})
    audit_configure(config)
    assert config.option("attack") == "pgd,fgsm" and config.option("pgd_steps") == 10
    with pytest.raises(AuditError, match="--attack 'cw' is unknown"):
        audit_configure(RunConfig(options={"robustness": "eval", "attack": "pgd,cw"}))


def test_adv_train_is_refused_on_evaluate_and_leaves_dp_to_the_privacy_plugin():
    with pytest.raises(AuditError, match="--robustness adv-train trains a model"):
        audit_configure(RunConfig(command="evaluate", options={"robustness": "adv-train"}))
    audit_configure(RunConfig(options={"robustness": "adv-train", "dp": True}))  # another plugin's option


def test_checkpoint_metadata_holds_the_adversarial_training_settings():
    state = AdvTraining(adv_eps=0.1, adv_steps=5)
    assert audit_checkpoint_metadata(SimpleNamespace(artifacts={"robustness": state})) == {
        "robustness": {"adv_eps": 0.1, "adv_steps": 5}
    }
    assert audit_checkpoint_metadata(SimpleNamespace(artifacts={})) is None
    assert dataclasses.asdict(state) == json.loads(json.dumps(dataclasses.asdict(state)))


def test_group_metrics_name_their_former_names_and_headlines_are_marked():
    specs = {s.name: s for s in audit_metric_specs()}
    group = specs["robustness.*.group.*.robust_accuracy"]
    assert group.former_names == ("robustness.*.*.robust_accuracy",)
    assert fnmatch.fnmatchcase("robustness.sex.Female.robust_accuracy", group.former_names[0])
    assert not fnmatch.fnmatchcase("robustness.pgd.eps_0p1.robust_accuracy", group.name)
    headline = {name for name, s in specs.items() if s.headline}
    assert headline == {
        "robustness.eps_*.robust_accuracy",
        "robustness.*.auc",
        "robustness.worst_group_robust_accuracy",
        "robustness.clean_accuracy",
    }


def test_the_summary_leads_with_how_often_the_strongest_attack_flips_a_prediction(adult_section):
    data, lead = adult_section.data, adult_section.summary[0]
    strongest = min(data["attacks"], key=lambda a: data["attacks"][a]["robust_accuracy"][1])
    rate = data["attacks"][strongest]["attack_success_rate"][1]
    assert lead.startswith(
        f"The model's prediction changes for {rate:.0%} of the rows it classified correctly"
    )
    assert "under a perturbation of 0.5 standard deviations of each numeric feature" in lead
