import pytest

from audit_plugins.robustness import eps_segment
from tests.conftest import read_report, undeclared_metrics

EPS = [0.05, 0.1, 0.2, 0.3]


@pytest.fixture(scope="module")
def digits_report(tmp_path_factory):
    from audit.cli import main

    out = tmp_path_factory.mktemp("r") / "digits"
    assert (
        main(
            [
                "train",
                "--data",
                "digits",
                "--epochs",
                "10",
                "--robustness",
                "--attack",
                "fgsm,pgd",
                "--eps",
                ",".join(map(str, EPS)),
                "--out",
                str(out),
                "-q",
            ]
        )
        == 0
    )
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
    for name in [f"robustness.pgd.{eps_segment(e)}.robust_accuracy" for e in EPS] + [
        "robustness.clean_accuracy"
    ]:
        assert (
            m[f"{name}.ci_low"] <= m[name] <= m[f"{name}.ci_high"]
            and m[f"{name}.ci_high"] - m[f"{name}.ci_low"] < 0.15
        )


def test_adversarial_training_raises_pgd_accuracy(tmp_path, cli):
    out = tmp_path / "adv"
    # --adv-eps off the --eps grid: both models are attacked at 0.1 for the comparison all the same
    assert (
        cli(
            "train",
            "--data",
            "digits",
            "--epochs",
            "10",
            "--robustness",
            "adv-train",
            "--attack",
            "pgd",
            "--eps",
            "0.05,0.2",
            "--adv-eps",
            "0.1",
            "--pgd-steps",
            "5",
            "--out",
            out,
            "-q",
        ).code
        == 0
    )
    m = read_report(out)["metrics"]
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


def test_tabular_robustness_with_groups_through_cli(cli, tmp_path):
    out = tmp_path / "tab"
    assert (
        cli(
            "train",
            "--sensitive",
            "sex",
            "--epochs",
            "2",
            "--robustness",
            "--robustness-samples",
            "300",
            "--out",
            out,
            "-q",
        ).code
        == 0
    )
    m = read_report(out)["metrics"]
    groups = {g: m[f"robustness.sex.{g}.robust_accuracy"] for g in ("Female", "Male")}
    worst = min(groups, key=groups.get)
    assert m["robustness.worst_group_robust_accuracy"] == groups[worst]
    # the worst group's own interval: fewer rows than the whole subset, so wider than the overall one
    assert (
        m["robustness.worst_group_robust_accuracy.ci_low"]
        == m[f"robustness.sex.{worst}.robust_accuracy.ci_low"]
    )
    section = next(s for s in read_report(out)["sections"] if s["name"] == "robustness")
    curves = next(
        t for t in section["tables"] if t["title"] == "Per group: robust accuracy by attack and epsilon"
    )
    assert {(r[1], r[3]) for r in curves["rows"]} == {
        (g, a) for g in ("Female", "Male") for a in ("fgsm", "pgd")
    }
    female_pgd = next(r for r in curves["rows"] if r[1] == "Female" and r[3] == "pgd")
    assert female_pgd[4 + curves["columns"][4:].index("0.25")] == pytest.approx(groups["Female"])
    assert any(f["title"] == "pgd accuracy under attack per sex group" for f in section["figures"])
    width = (
        m["robustness.sex.Female.robust_accuracy.ci_high"] - m["robustness.sex.Female.robust_accuracy.ci_low"]
    )
    assert (
        width
        > m["robustness.pgd.eps_0p25.robust_accuracy.ci_high"]
        - m["robustness.pgd.eps_0p25.robust_accuracy.ci_low"]
    )
