"""A model trained elsewhere (plain torch), audited through the CLI and the Python API; audit.train/evaluate."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys

import pandas as pd
import pytest
import torch

import audit
from audit.api import Report
from audit.checkpoint import load_checkpoint
from tests.conftest import make_loans, read_report, undeclared_metrics
from tests.elsewhere import FACTORY_MODULE, FEATURES, train_elsewhere


@pytest.fixture(scope="module")
def elsewhere(tmp_path_factory):
    return train_elsewhere(tmp_path_factory.mktemp("elsewhere"))


@pytest.fixture
def on_path(monkeypatch, elsewhere):
    monkeypatch.syspath_prepend(str(elsewhere.folder))
    return elsewhere


def ready_args(e, *extra):
    return ["--data", e.test_csv, "--target", "label", "--sensitive", "sex", "--features-ready", *extra, "-q"]


def test_the_cli_audits_a_state_dict_trained_elsewhere_with_every_plugin(cli, tmp_path, on_path):
    e, out = on_path, tmp_path / "ext"
    args = ["--model", f"{FACTORY_MODULE}:factory", "--weights", e.weights, "--train-data", e.train_csv]
    args += ["--robustness", "--robustness-samples", "100", "--out", out]
    result = cli("evaluate", *args, *ready_args(e))
    assert result.code == 0, result.err
    report = read_report(out)
    metrics = report["metrics"]
    # the audit sees exactly what the team's own code computed
    assert metrics["performance.accuracy"] == pytest.approx(e.accuracy, abs=1e-9)
    assert {"privacy.mia_auc", "robustness.clean_accuracy"} <= set(metrics)
    assert any(k.startswith("fairness.sex.") for k in metrics)
    # how it was trained is unknown: no epsilon, and the summary does not claim "without DP"
    privacy = next(s for s in report["sections"] if s["name"] == "privacy")
    assert "privacy.epsilon" not in metrics and "unknown" in privacy["summary"][0]
    assert "without differential privacy" not in " ".join(privacy["summary"])
    source = report["run"]["model_source"]
    assert source["factory"] == f"{FACTORY_MODULE}:factory"
    assert source["sha256"] == hashlib.sha256(e.weights.read_bytes()).hexdigest()
    assert undeclared_metrics(metrics) == []
    card = (out / "model_card.md").read_text()
    assert "trained outside rai-audit" in card and "hidden layers" not in card  # no architecture it never saw


def test_without_training_rows_the_membership_audit_is_skipped_and_says_why(cli, tmp_path, on_path):
    e, out = on_path, tmp_path / "ext"
    args = ["--model", f"{FACTORY_MODULE}:factory", "--weights", e.weights, "--out", out]
    assert cli("evaluate", *args, *ready_args(e)).code == 0
    report = read_report(out)
    assert "privacy.mia_auc" not in report["metrics"]
    privacy = next(s for s in report["sections"] if s["name"] == "privacy")
    assert "training rows" in privacy["data"]["membership_inference"]["skipped"]


@pytest.mark.parametrize("program", ["torchscript", "exported"])
def test_a_program_file_is_audited_with_no_factory(cli, tmp_path, elsewhere, program):
    path = elsewhere.torchscript if program == "torchscript" else elsewhere.exported
    result = cli("evaluate", "--program", path, "--out", tmp_path / "p", *ready_args(elsewhere))
    assert result.code == 0, result.err
    report = read_report(tmp_path / "p")
    assert report["metrics"]["performance.accuracy"] == pytest.approx(elsewhere.accuracy, abs=1e-9)
    assert report["run"]["model_source"]["kind"].startswith("program")


def test_features_names_the_inputs_in_the_models_order(cli, tmp_path, on_path):
    e = on_path
    shuffled = tmp_path / "shuffled.csv"
    e.test[["label", "is_edu", "sex", "age", "income"]].to_csv(shuffled, index=False)
    base = ["--model", f"{FACTORY_MODULE}:factory", "--weights", e.weights, "--target", "label"]
    base += ["--data", shuffled, "--sensitive", "sex", "--features-ready", "-q"]
    named = cli("evaluate", *base, "--features", ",".join(FEATURES), "--out", tmp_path / "a")
    assert named.code == 0, named.err
    assert read_report(tmp_path / "a")["metrics"]["performance.accuracy"] == pytest.approx(e.accuracy)
    # file order is is_edu, age, income: the same weights read the columns wrongly, so the figure moves
    assert cli("evaluate", *base, "--out", tmp_path / "b").code == 0
    assert read_report(tmp_path / "b")["metrics"]["performance.accuracy"] != pytest.approx(e.accuracy)


def test_the_api_audits_a_module_on_a_dataframe_and_writes_nothing_until_asked(
    monkeypatch, tmp_path, elsewhere
):
    monkeypatch.chdir(tmp_path)
    train = pd.read_csv(elsewhere.train_csv)
    report = audit.evaluate(
        elsewhere.model, data=elsewhere.test, target="label", sensitive=["sex"], train_data=train
    )
    assert isinstance(report, Report) and list(tmp_path.iterdir()) == []
    assert report.metrics["performance.accuracy"] == pytest.approx(elsewhere.accuracy, abs=1e-9)
    assert "privacy.mia_auc" in report.metrics
    assert [s.name for s in report.sections][:2] == ["performance", "efficiency"]
    assert report.to_dict()["metrics"] == report.metrics
    written = report.write(tmp_path / "out")
    on_disk = json.loads((tmp_path / "out" / "report.json").read_text())
    assert on_disk["content_sha256"] == written["content_sha256"] == report.to_dict()["content_sha256"]
    assert "model.pt" not in written["manifest"]  # an evaluation writes no model


def test_the_api_takes_a_factory_with_weights_and_a_loaded_program(on_path):
    e = on_path
    factory, data = f"{FACTORY_MODULE}:factory", {"data": e.test, "target": "label"}
    by_factory = audit.evaluate(factory, weights=e.weights, **data, features=FEATURES)
    exported = audit.evaluate(torch.export.load(e.exported), **data, sensitive=["sex"])
    scripted = audit.evaluate(torch.jit.load(e.torchscript), **data, sensitive=["sex"])
    for report in (by_factory, exported, scripted):
        assert report.metrics["performance.accuracy"] == pytest.approx(e.accuracy, abs=1e-9)


def test_the_api_trains_on_a_dataframe_and_returns_the_model_and_its_report(tmp_path):
    frame = make_loans(400)
    model, report = audit.train(data=frame, target="defaulted", sensitive=["sex"], epochs=1, hidden=[8])
    assert isinstance(model, torch.nn.Module) and report.metrics["performance.accuracy"] > 0
    written = report.write(tmp_path / "run")
    assert "model.pt" in written["manifest"]
    saved = load_checkpoint(str(tmp_path / "run" / "model.pt"))
    # the model stays on the run's device (CUDA when present); the file holds CPU tensors
    assert all(torch.equal(saved["state_dict"][k], v.cpu()) for k, v in model.state_dict().items())
    # the model file it wrote is audited again by the same API
    again = audit.evaluate(tmp_path / "run" / "model.pt", data=frame, target="defaulted", sensitive=["sex"])
    assert "performance.accuracy" in again.metrics


def test_importing_audit_stays_light_and_the_api_loads_on_use():
    code = (
        "import sys, audit; light = 'torch' not in sys.modules and 'audit.api' not in sys.modules; "
        "import audit.api; print(light, audit.evaluate is audit.api.evaluate, audit.train is audit.api.train)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.split() == ["True", "True", "True"]


def test_a_saved_model_on_a_users_file_gets_the_membership_audit_from_train_data(cli, tmp_path):
    train_csv, other_csv = tmp_path / "train.csv", tmp_path / "other.csv"
    make_loans(600, seed=1).to_csv(train_csv, index=False)
    make_loans(300, seed=2).to_csv(other_csv, index=False)
    run = ["--target", "defaulted", "--sensitive", "sex", "--epochs", "1", "-q"]
    assert cli("train", "--data", train_csv, *run, "--out", tmp_path / "t").code == 0
    model = ["--model", tmp_path / "t" / "model.pt", "--data", other_csv, "-q"]
    assert cli("evaluate", *model, "--out", tmp_path / "e1").code == 0
    assert "privacy.mia_auc" not in read_report(tmp_path / "e1")["metrics"]
    result = cli("evaluate", *model, "--train-data", train_csv, "--out", tmp_path / "e2")
    assert result.code == 0, result.err
    report = read_report(tmp_path / "e2")
    assert "privacy.mia_auc" in report["metrics"] and "privacy.sex.group.F.mia_auc" in report["metrics"]
    # the API takes the same rows as DataFrames
    api = audit.evaluate(
        tmp_path / "t" / "model.pt", data=pd.read_csv(other_csv), train_data=pd.read_csv(train_csv)
    )
    assert api.metrics["privacy.mia_auc"] == report["metrics"]["privacy.mia_auc"]
