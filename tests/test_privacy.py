import numpy as np
import pandas as pd
import pytest

from audit_plugins.membership_inference import epsilon_lower_bound
from audit_plugins.privacy import default_delta
from tests.conftest import read_report


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
    result = cli(
        "train",
        "--dp",
        "--epsilon",
        "1",
        "--delta",
        "1e-5",
        "--epochs",
        "5",
        "--batch-size",
        "512",
        "--out",
        out,
        "-q",
    )
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
    result = cli(
        "train",
        "--data",
        path,
        "--target",
        "label",
        "--hidden",
        "512,512",
        "--dropout",
        "0",
        "--epochs",
        "60",
        "--lr",
        "3e-3",
        "--batch-size",
        "32",
        "--no-early-stopping",
        "--test-fraction",
        "0.45",
        "--out",
        out,
        "-q",
        *extra,
    )
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


def test_epsilon_lower_bound_is_zero_for_indistinguishable_scores():
    rng = np.random.default_rng(0)
    assert epsilon_lower_bound(rng.normal(size=2000), rng.normal(size=2000), delta=1e-5) == 0.0
    assert epsilon_lower_bound(rng.normal(3, 1, size=2000), rng.normal(size=2000), delta=1e-5) > 1.0


def test_delta_must_be_below_one_over_n(cli, tmp_path, loans_csv):
    result = cli(
        "train",
        "--data",
        loans_csv,
        "--target",
        "defaulted",
        "--dp",
        "--epsilon",
        "1",
        "--delta",
        "0.01",
        "--out",
        tmp_path / "x",
    )
    assert result.code == 2 and "not below 1/N" in result.err
    assert default_delta(29304) == 1e-5 and default_delta(1000) == 1e-4


def test_batchnorm_is_replaced_and_reported(cli, tmp_path, loans_csv, monkeypatch):
    (tmp_path / "bnmodel.py").write_text(
        "from torch import nn\n"
        "def build(input_shape, num_classes):\n"
        "    return nn.Sequential(nn.Linear(input_shape[0], 16), nn.BatchNorm1d(16), nn.ReLU(), nn.Linear(16, num_classes))\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    out = tmp_path / "bn"
    result = cli(
        "train",
        "--data",
        loans_csv,
        "--target",
        "defaulted",
        "--model",
        "bnmodel:build",
        "--dp",
        "--noise-multiplier",
        "1.0",
        "--epochs",
        "2",
        "--batch-size",
        "64",
        "--out",
        out,
        "-q",
    )
    assert result.code == 0, result.err
    report = read_report(out)
    notes = " ".join(n for s in report["sections"] for n in s["notes"])
    assert "replaced 1 BatchNorm" in notes
    assert (
        "Opacus' GradSampleModule" in notes
    )  # LayerNorm is off the one-pass path: Opacus computes per-sample gradients
    assert (
        cli("evaluate", "--model", out / "model.pt", "--data", loans_csv, "--out", tmp_path / "ev", "-q").code
        == 0
    )
    assert read_report(tmp_path / "ev")["metrics"]["privacy.epsilon"] == report["metrics"]["privacy.epsilon"]


def test_linear_models_take_the_one_pass_clipping_path(cli, tmp_path, loans_csv):
    out = tmp_path / "fast"
    assert (
        cli(
            "train",
            "--data",
            loans_csv,
            "--target",
            "defaulted",
            "--dp",
            "--noise-multiplier",
            "1.0",
            "--epochs",
            "2",
            "--batch-size",
            "64",
            "--out",
            out,
            "-q",
        ).code
        == 0
    )
    report = read_report(out)
    notes = " ".join(n for s in report["sections"] for n in s["notes"])
    assert "one backward pass" in notes
    clip_rates = [
        row for t in report["sections"][0]["tables"] if t["title"] == "Training history" for row in t["rows"]
    ]
    assert 0 < report["metrics"]["privacy.clip_rate_last_epoch"] <= 1 and len(clip_rates) == 2


def test_early_stopping_accounts_only_steps_taken(cli, tmp_path, loans_csv):
    out = tmp_path / "es"
    assert (
        cli(
            "train",
            "--data",
            loans_csv,
            "--target",
            "defaulted",
            "--dp",
            "--noise-multiplier",
            "1.0",
            "--epochs",
            "30",
            "--patience",
            "1",
            "--batch-size",
            "64",
            "--out",
            out,
            "-q",
        ).code
        == 0
    )
    m = read_report(out)["metrics"]
    assert m["privacy.steps"] == m["efficiency.steps"]
    assert m["privacy.steps"] < 30 * round(1 / m["privacy.sample_rate"])


def test_reweighing_under_dp_is_accounted_or_flagged(cli, tmp_path, loans_csv):
    base = [
        "train",
        "--data",
        loans_csv,
        "--target",
        "defaulted",
        "--sensitive",
        "sex",
        "--fairness",
        "reweight",
        "--dp",
        "--noise-multiplier",
        "1.0",
        "--epochs",
        "2",
        "--batch-size",
        "64",
        "-q",
    ]
    assert cli(*base, "--out", tmp_path / "leak").code == 0
    privacy = [s for s in read_report(tmp_path / "leak")["sections"] if s["name"] == "privacy"][0]
    assert any("outside the DP-SGD guarantee" in w for w in privacy["warnings"])
    assert cli(*base, "--reweight-epsilon", "0.1", "--out", tmp_path / "noisy").code == 0
    m = read_report(tmp_path / "noisy")["metrics"]
    assert m["privacy.epsilon_total"] == pytest.approx(m["privacy.epsilon"] + 0.1)
