"""The privacy plugin: DP-SGD runs and their accounting, the section's payload and what is rendered from it."""

import fnmatch
import json

import numpy as np
import pandas as pd
import pytest
import torch
from opacus.accountants import RDPAccountant

from audit.config import RunConfig
from audit_plugins.privacy import (
    DP_DEFAULT_LR,
    PrivacyState,
    audit_config_defaults,
    audit_configure,
    audit_metric_specs,
    default_delta,
    summary_lines,
)
from tests.conftest import read_report

# A short DP-SGD run on the loans table (fixed noise: no calibration).
SHORT_DP = "--dp --noise-multiplier 1.0 --epochs 2 --batch-size 64".split()


def _loans(loans_csv, *extra):
    return ["train", "--data", loans_csv, "--target", "defaulted", *extra]


def _section(report, name="privacy"):
    return next(s for s in report["sections"] if s["name"] == name)


def _rdp_epsilon_independent(q, sigma, steps, delta):
    import dp_accounting

    accountant = dp_accounting.rdp.RdpAccountant()
    event = dp_accounting.SelfComposedDpEvent(
        dp_accounting.PoissonSampledDpEvent(q, dp_accounting.GaussianDpEvent(sigma)), steps
    )
    accountant.compose(event)
    return accountant.get_epsilon(delta)


@pytest.mark.slow
def test_adult_dp_bar_and_independent_accounting(cli, tmp_path):
    out = tmp_path / "dp"
    result = cli(*"train --dp --epsilon 1 --delta 1e-5 --epochs 5 --batch-size 512 -q".split(), "--out", out)
    assert result.code == 0, result.err
    m = read_report(out)["metrics"]
    assert m["privacy.epsilon"] <= 1.0
    assert m["performance.accuracy"] >= 0.84
    independent = _rdp_epsilon_independent(
        m["privacy.sample_rate"], m["privacy.noise_multiplier"], m["privacy.steps"], m["privacy.delta"]
    )
    assert independent == pytest.approx(m["privacy.epsilon"], rel=1e-3)


def _memorise(cli, tmp_path, name, *extra):
    rng = np.random.default_rng(0)
    n = 400
    frame = pd.DataFrame(rng.normal(size=(n, 20)), columns=[f"f{i}" for i in range(20)])
    frame["label"] = rng.integers(0, 2, n)  # random labels: only memorisation can fit them
    path = tmp_path / "mem.csv"
    frame.to_csv(path, index=False)
    out = tmp_path / name
    options = "--hidden 512,512 --dropout 0 --epochs 60 --lr 3e-3 --batch-size 32 --no-early-stopping"
    args = ["train", "--data", path, "--target", "label", *options.split(), "--test-fraction", "0.45"]
    result = cli(*args, "--out", out, "-q", *extra)
    assert result.code == 0, result.err
    return read_report(out)["metrics"]


def test_mia_finds_memorisation_and_dp_hides_it(cli, tmp_path):
    plain = _memorise(cli, tmp_path, "plain")
    private = _memorise(cli, tmp_path, "private", "--dp", "--epsilon", "0.5", "--delta", "1e-4")
    assert plain["privacy.mia_auc"] > 0.8
    assert plain["privacy.empirical_epsilon_lower_bound"] > 0
    assert private["privacy.mia_auc"] < 0.6
    assert private["privacy.epsilon"] <= 0.5
    assert private["privacy.empirical_epsilon_lower_bound"] <= private["privacy.epsilon"]


def test_delta_must_be_below_one_over_n(cli, tmp_path, loans_csv):
    result = cli(*_loans(loans_csv, "--dp", "--epsilon", "1", "--delta", "0.01", "--out", tmp_path / "x"))
    assert result.code == 2 and "not below 1/N" in result.err
    assert default_delta(29304) == 1e-5 and default_delta(1000) == 1e-4


def test_batchnorm_is_replaced_and_reported(cli, tmp_path, loans_csv, monkeypatch):
    (tmp_path / "bnmodel.py").write_text(
        "from torch import nn\n"
        "def build(input_shape, num_classes):\n"
        "    layers = [nn.Linear(input_shape[0], 16), nn.BatchNorm1d(16), nn.ReLU(), nn.Linear(16, num_classes)]\n"
        "    return nn.Sequential(*layers)\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    out = tmp_path / "bn"
    result = cli(*_loans(loans_csv, "--model", "bnmodel:build", *SHORT_DP, "--out", out, "-q"))
    assert result.code == 0, result.err
    report = read_report(out)
    notes = " ".join(n for s in report["sections"] for n in s["notes"])
    assert "replaced 1 BatchNorm" in notes
    # LayerNorm is off the one-pass path: Opacus computes the per-sample gradients.
    assert "Opacus' GradSampleModule" in notes
    # A model file never chooses code to run: the factory is named again to trust it.
    evaluate = [
        "evaluate",
        "--model",
        out / "model.pt",
        "--model-factory",
        "bnmodel:build",
        "--data",
        loans_csv,
    ]
    evaluated = cli(*evaluate, "--out", tmp_path / "ev", "-q")
    assert evaluated.code == 0
    again = read_report(tmp_path / "ev")
    assert again["metrics"]["privacy.epsilon"] == report["metrics"]["privacy.epsilon"]
    assert _section(again)["data"]["guarantee"] == _section(report)["data"]["guarantee"]


def test_linear_models_take_the_one_pass_clipping_path(cli, tmp_path, loans_csv):
    out = tmp_path / "fast"
    assert cli(*_loans(loans_csv, *SHORT_DP, "--out", out, "-q")).code == 0
    report = read_report(out)
    notes = " ".join(n for s in report["sections"] for n in s["notes"])
    assert "one backward pass" in notes
    history = [
        r
        for s in report["sections"]
        for t in s["tables"]
        if t["title"] == "Training history"
        for r in t["rows"]
    ]
    assert 0 < report["metrics"]["privacy.clip_rate_last_epoch"] <= 1 and len(history) == 2


def test_early_stopping_accounts_only_steps_taken(cli, tmp_path, loans_csv):
    out = tmp_path / "es"
    dp = "--dp --noise-multiplier 1.0 --epochs 30 --patience 1 --batch-size 64".split()
    assert cli(*_loans(loans_csv, *dp, "--out", out, "-q")).code == 0
    m = read_report(out)["metrics"]
    assert m["privacy.steps"] == m["efficiency.steps"]
    assert m["privacy.steps"] < 30 * round(1 / m["privacy.sample_rate"])


def test_reweighing_under_dp_is_accounted_or_flagged(cli, tmp_path, loans_csv):
    base = _loans(loans_csv, "--sensitive", "sex", "--fairness", "reweight", *SHORT_DP, "-q")
    assert cli(*base, "--out", tmp_path / "leak").code == 0
    privacy = _section(read_report(tmp_path / "leak"))
    assert any("outside the DP-SGD guarantee" in w for w in privacy["warnings"])
    assert any("outside the guarantee" in line for line in privacy["summary"])
    assert cli(*base, "--reweight-epsilon", "0.1", "--out", tmp_path / "noisy").code == 0
    noisy = read_report(tmp_path / "noisy")
    m = noisy["metrics"]
    assert m["privacy.epsilon_total"] == pytest.approx(m["privacy.epsilon"] + 0.1)
    assert _section(noisy)["data"]["epsilon_total"] == m["privacy.epsilon_total"]


def test_dp_refuses_a_plugin_that_rewrites_training_batches(cli, tmp_path):
    out = tmp_path / "adv"
    result = cli(
        "train", "--data", "digits", "--dp", "--epsilon", "1", "--robustness", "adv-train", "--out", out
    )
    assert result.code == 2
    assert len(result.err.strip().splitlines()) == 1 and "--dp" in result.err
    assert not out.exists()


def test_dp_gives_its_learning_rate_as_a_default_and_leaves_the_core_option_alone():
    private = RunConfig(options={"dp": True, "epsilon": 1.0})
    audit_configure(private)
    assert private.lr is None  # the core resolves it, from the default the hook gives
    assert audit_config_defaults(private) == {"lr": DP_DEFAULT_LR}
    assert audit_config_defaults(RunConfig(options={"dp": False})) is None


def test_privacy_state_reports_the_guarantee_over_steps_taken():
    accountant = RDPAccountant()
    accountant.history.append((1.0, 0.01, 120))  # (noise multiplier, sample rate, steps)
    state = PrivacyState(
        accountant=accountant,
        accountant_name="rdp",
        delta=1e-5,
        noise_multiplier=1.0,
        max_grad_norm=1.0,
        sample_rate=0.01,
        planned_steps=200,
        target_epsilon=None,
        clip_counts=torch.zeros(2),
        data_uses=[],
    )
    guarantee = json.loads(json.dumps(state.guarantee()))  # it travels in model.pt: JSON-able
    assert guarantee["steps"] == 120 and guarantee["planned_steps"] == 200
    assert guarantee["epsilon"] == pytest.approx(accountant.get_epsilon(delta=1e-5))


def test_section_payload_renders_metrics_tables_and_summary(cli, tmp_path, loans_csv):
    out = tmp_path / "payload"
    args = _loans(loans_csv, "--sensitive", "sex", "--mia-samples", "60", *SHORT_DP, "--out", out, "-q")
    assert cli(*args).code == 0
    report = read_report(out)
    section, metrics = _section(report), report["metrics"]
    data, mia = section["data"], section["data"]["membership_inference"]
    assert section["order"] == 30
    assert data["guarantee"]["epsilon"] == metrics["privacy.epsilon"] and data["guarantee"]["steps"] > 0
    assert [e["epoch"] for e in data["epochs"]] == [1, 2]
    assert mia["skipped"] is None
    best = next(a for a in mia["attacks"] if a["name"] == mia["headline_attack"])
    assert best["auc"] == max(a["auc"] for a in mia["attacks"]) == metrics["privacy.mia_auc"]
    assert best["tpr_at_fpr_0.01"] == metrics["privacy.mia_tpr_at_fpr_0.01"]
    attacks = next(t for t in section["tables"] if t["title"].startswith("Membership-inference attacks"))
    assert [row[:2] for row in attacks["rows"]] == [[a["name"], a["auc"]] for a in mia["attacks"]]
    assert {g["group"] for g in mia["groups"]} == {"F", "M"}
    for group in mia["groups"]:
        assert metrics[f"privacy.sex.group.{group['group']}.mia_auc"] == group["auc"]
        assert min(group["members"], group["nonmembers"]) >= 10
    assert not any(name.startswith("privacy.mia_auc.") for name in metrics)
    assert section["summary"][0].startswith("Trained with DP-SGD: (epsilon, delta) = (")
    assert any(line.startswith("Membership-inference audit: ") for line in section["summary"])


def test_summary_without_dp_and_without_known_training_rows():
    skipped = "the training rows are not known for this evaluation"
    mia = {"delta": 1e-4, "skipped": skipped, "attacks": [], "headline_attack": None, "groups": []}
    data = {"guarantee": None, "data_uses": [], "epsilon_total": None, "dp_baseline": None}
    assert summary_lines({**data, "membership_inference": mia}) == [
        "Trained without differential privacy: no formal guarantee.",
        f"Membership-inference audit skipped: {skipped}.",
    ]


def test_metric_specs_mark_headlines_and_the_renamed_group_metric():
    specs = {spec.name: spec for spec in audit_metric_specs()}
    assert {name for name, spec in specs.items() if spec.headline} == {"privacy.epsilon", "privacy.mia_auc"}
    group = specs["privacy.*.group.*.mia_auc"]
    assert group.former_names == ("privacy.mia_auc.*.*",)
    assert fnmatch.fnmatchcase("privacy.sex.group.F.mia_auc", group.name)
