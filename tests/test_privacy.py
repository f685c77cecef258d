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


def _epsilon_independent(kind, q, sigma, steps, delta):
    """dp-accounting's own RDP or PLD accountant over the steps taken: no code of the plugin involved."""
    import dp_accounting

    accountant = dp_accounting.rdp.RdpAccountant() if kind == "rdp" else dp_accounting.pld.PLDAccountant()
    event = dp_accounting.SelfComposedDpEvent(
        dp_accounting.PoissonSampledDpEvent(q, dp_accounting.GaussianDpEvent(sigma)), steps
    )
    accountant.compose(event)
    return accountant.get_epsilon(delta)


def _independent(metrics, kind):
    keys = ("sample_rate", "noise_multiplier", "steps", "delta")
    return _epsilon_independent(kind, *(metrics[f"privacy.{key}"] for key in keys))


@pytest.mark.slow
def test_adult_dp_bar_and_independent_accounting(cli, tmp_path):
    out = tmp_path / "dp"
    result = cli(*"train --dp --epsilon 1 --delta 1e-5 --epochs 5 --batch-size 512 -q".split(), "--out", out)
    assert result.code == 0, result.err
    m = read_report(out)["metrics"]
    assert m["privacy.epsilon"] <= 1.0
    assert m["performance.accuracy"] >= 0.84
    assert m["privacy.epsilon"] == pytest.approx(_independent(m, "pld"), rel=0.02)
    assert m["privacy.epsilon_rdp"] == pytest.approx(_independent(m, "rdp"), rel=1e-3)


def test_calibrated_run_spends_its_target_by_pld_and_states_rdp_beside_it(cli, tmp_path, loans_csv):
    out = tmp_path / "pld"
    dp = "--dp --epsilon 2 --epochs 2 --batch-size 64 --mia-samples 60".split()
    assert cli(*_loans(loans_csv, *dp, "--out", out, "-q")).code == 0
    report = read_report(out)
    m, section = report["metrics"], _section(report)
    assert section["data"]["guarantee"]["accountant"] == "pld" and "privacy.accountant" not in m
    # the reported epsilon is dp-accounting's PLD for the noise and steps taken, and within the target
    assert m["privacy.epsilon"] == pytest.approx(_independent(m, "pld"), rel=0.02)
    assert (
        1.9 < m["privacy.epsilon"] <= 2.0
    )  # every planned step taken: the calibrated noise spends the budget
    assert m["privacy.epsilon_rdp"] == pytest.approx(_independent(m, "rdp"), rel=1e-3)
    assert m["privacy.epsilon_rdp"] > 1.05 * m["privacy.epsilon"]
    assert any("dp-accounting's PLD accountant" in note for note in section["notes"])
    assert (
        f"PLD accountant (RDP would state epsilon {m['privacy.epsilon_rdp']:.4g})." in section["summary"][0]
    )


def _memorise(cli, tmp_path, name, *extra):
    rng = np.random.default_rng(0)
    n = 400
    frame = pd.DataFrame(rng.normal(size=(n, 20)), columns=[f"f{i}" for i in range(20)])
    frame["label"] = rng.integers(0, 2, n)  # random labels: only memorisation can fit them
    path = tmp_path / "mem.csv"
    frame.to_csv(path, index=False)
    out = tmp_path / name
    # no reference models: 8 more wide MLPs per run; their own memorisation bar is in tests/test_mia_reference.py
    options = "--hidden 512,512 --dropout 0 --epochs 60 --lr 3e-3 --batch-size 32 --no-early-stopping"
    options += " --mia-reference-models 0"
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
    # the replacement norm layer is on the one-pass path: no Opacus hooks
    assert "book-keeping ghost clipping: Linear, Conv2d, GroupNorm and LayerNorm" in notes
    assert "Opacus' GradSampleModule" not in notes
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
    assert guarantee["accountant"] == "rdp" and guarantee["epsilon_rdp"] == guarantee["epsilon"]


def test_section_payload_renders_metrics_tables_and_summary(cli, tmp_path, loans_csv):
    out = tmp_path / "payload"
    # the two loss attacks only (the reference-model attacks: tests/test_mia_reference.py)
    extra = ("--mia-samples", "60", "--mia-reference-models", "0")
    args = _loans(loans_csv, "--sensitive", "sex", *extra, *SHORT_DP, "--out", out, "-q")
    assert cli(*args).code == 0
    report = read_report(out)
    section, metrics = _section(report), report["metrics"]
    data, mia = section["data"], section["data"]["membership_inference"]
    assert section["order"] == 30
    assert data["guarantee"]["epsilon"] == metrics["privacy.epsilon"] and data["guarantee"]["steps"] > 0
    assert [e["epoch"] for e in data["epochs"]] == [1, 2]
    assert mia["skipped"] is None
    # the bound on the maximum of the attacks holds at 95%: each attack is bounded at 97.5% (Bonferroni)
    assert mia["confidence"] == 0.95 and mia["attack_count"] == 2
    assert mia["per_attack_confidence"] == pytest.approx(0.975, abs=1e-12)
    assert [a["confidence"] for a in mia["attacks"]] == [mia["per_attack_confidence"]] * 2
    assert mia["epsilon_lower_bound"] == max(a["epsilon_lower_bound"] for a in mia["attacks"])
    level_note = "over the 2 attacks, holds with 95% confidence: each attack's bound is at 97.5% (Bonferroni)"
    assert any(level_note in note for note in section["notes"])
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
