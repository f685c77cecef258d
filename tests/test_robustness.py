import pytest
import torch

from audit.config import RunConfig
from audit.data import load_dataset
from audit_plugins.robustness import FeatureView, attack_target, eps_segment, independent, sweep
from tests.conftest import read_report, undeclared_metrics

EPS = [0.05, 0.1, 0.2, 0.3]


@pytest.fixture(scope="module")
def digits_report(tmp_path_factory):
    from audit.cli import main

    out = tmp_path_factory.mktemp("r") / "digits"
    assert main(["train", "--data", "digits", "--epochs", "10", "--robustness", "--attack", "fgsm,pgd",
                 "--eps", ",".join(map(str, EPS)), "--out", str(out), "-q"]) == 0
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
    for name in [f"robustness.pgd.{eps_segment(e)}.robust_accuracy" for e in EPS] + ["robustness.clean_accuracy"]:
        assert m[f"{name}.ci_low"] <= m[name] <= m[f"{name}.ci_high"] and m[f"{name}.ci_high"] - m[f"{name}.ci_low"] < 0.15


def test_adversarial_training_raises_pgd_accuracy(tmp_path, cli):
    out = tmp_path / "adv"
    # --adv-eps off the --eps grid: both models are attacked at 0.1 for the comparison all the same
    assert cli("train", "--data", "digits", "--epochs", "10", "--robustness", "adv-train", "--attack", "pgd", "--eps", "0.05,0.2",
               "--adv-eps", "0.1", "--pgd-steps", "5", "--out", out, "-q").code == 0
    m = read_report(out)["metrics"]
    assert m["robustness.adv_train.pgd_robust_accuracy"] > m["robustness.adv_train.baseline_pgd_robust_accuracy"]
    assert m["robustness.pgd.eps_0p05.robust_accuracy"] >= m["robustness.adv_train.pgd_robust_accuracy"] >= m["robustness.pgd.eps_0p2.robust_accuracy"]
    assert "robustness.adv_train.clean_accuracy_cost" in m
    assert undeclared_metrics(m) == []


@pytest.mark.parametrize("data_name, attack, eps_list, random_start", [
    ("digits", "pgd", EPS, False), ("digits", "pgd-l2", [0.5, 1.0, 2.0, 3.0], False), ("adult", "pgd", [0.1, 0.25, 0.5, 1.0], False),
    ("digits", "pgd", EPS, True), ("digits", "pgd-l2", [0.5, 1.0, 2.0, 3.0], True)])
def test_sweep_never_reports_more_than_independent_torchattacks(tmp_path, cli, data_name, attack, eps_list, random_start):
    out = tmp_path / "d"
    assert cli("train", "--data", data_name, "--epochs", "3", "--out", out, "-q").code == 0
    from audit.models import build_model
    from audit.runner import load_checkpoint

    checkpoint = load_checkpoint(str(out / "model.pt"))
    model = build_model(checkpoint["spec"])
    model.load_state_dict(checkpoint["state_dict"])
    data = load_dataset(RunConfig(data=data_name))
    x, y = data.test.x[:300], data.test.y[:300]
    target = attack_target(model.eval(), data, x, perturb_categorical=False)
    kw = dict(steps=10, alpha=0.25, random_start=random_start, seed=0)  # a random start is drawn as torchattacks draws it
    cascade, fresh = sweep(target, y, attack, eps_list, **kw), independent(target, y, attack, eps_list, **kw)
    assert fresh[eps_list[0]].any() and not fresh[eps_list[-1]].all()  # the attack does something, and not everything
    # torchattacks' own verdicts on a few tabular rows flip with the batch they are attacked in (the sign step
    # amplifies float rounding of near-zero gradients); image rows agree exactly.
    slack = 0 if data_name == "digits" else int(0.02 * len(y))
    for eps in eps_list:
        assert int((cascade[eps] & ~fresh[eps]).sum()) <= slack  # rows torchattacks fools, the sweep fools too
        assert cascade[eps].float().mean() >= fresh[eps].float().mean() - 0.02  # and it is not a weaker evaluation either


def test_tabular_view_moves_only_numeric_features_within_range():
    data = load_dataset(RunConfig(sensitive=["sex"]))
    model = torch.nn.Linear(data.input_shape[0], 2)
    x = data.test.x[:64]
    target = attack_target(model, data, x, perturb_categorical=False)
    view = target.module
    assert isinstance(view, FeatureView)
    rows = torch.arange(64)
    u = target.select(rows)
    assert float(u.min()) >= 0 and float(u.max()) <= 1
    back = view.to_input(u)
    numeric = data.perturbable
    assert torch.allclose(back[:, numeric], x[:, numeric].clamp(data.lower[numeric], data.upper[numeric]), atol=1e-5)
    import torchattacks

    adv = torchattacks.PGD(view, eps=1.0, alpha=0.25, steps=5)(u, data.test.y[:64])
    target.select(rows)
    moved = view.to_input(adv)
    assert torch.equal(moved[:, ~numeric], x[:, ~numeric])  # one-hot columns untouched
    assert (moved[:, numeric] >= data.lower[numeric] - 1e-5).all() and (moved[:, numeric] <= data.upper[numeric] + 1e-5).all()
    # epsilon in the view times the common scale is epsilon in standardised units
    eps_std = 0.1
    adv_small = torchattacks.PGD(view, eps=eps_std / view.scale, alpha=0.25 * eps_std / view.scale, steps=5)(u, data.test.y[:64])
    target.select(rows)
    assert float((view.to_input(adv_small) - back).abs().max()) <= eps_std + 1e-4


def test_tabular_robustness_with_groups_through_cli(cli, tmp_path):
    out = tmp_path / "tab"
    assert cli("train", "--sensitive", "sex", "--epochs", "2", "--robustness", "--robustness-samples", "300", "--out", out, "-q").code == 0
    m = read_report(out)["metrics"]
    groups = {g: m[f"robustness.sex.{g}.robust_accuracy"] for g in ("Female", "Male")}
    worst = min(groups, key=groups.get)
    assert m["robustness.worst_group_robust_accuracy"] == groups[worst]
    # the worst group's own interval: fewer rows than the whole subset, so wider than the overall one
    assert m["robustness.worst_group_robust_accuracy.ci_low"] == m[f"robustness.sex.{worst}.robust_accuracy.ci_low"]
    width = m["robustness.sex.Female.robust_accuracy.ci_high"] - m["robustness.sex.Female.robust_accuracy.ci_low"]
    assert width > m["robustness.pgd.eps_0p25.robust_accuracy.ci_high"] - m["robustness.pgd.eps_0p25.robust_accuracy.ci_low"]
