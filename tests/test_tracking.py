"""--mlflow: each command's report logged to a real MLflow store in a temporary folder, read back with MlflowClient."""

from __future__ import annotations

import json
import re
import sys
import warnings
from importlib import metadata
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from audit.tracking import (
    HISTORY_PREFIX,
    NAME_MAP_ARTIFACT,
    log_or_warn,
    mlflow_names,
    open_tracking,
)
from tests.conftest import assert_bad_input, read_report

with warnings.catch_warnings():
    warnings.simplefilter("ignore")  # mlflow-skinny 2.x warns on importing pkg_resources
    try:
        from mlflow.tracking import MlflowClient
    except ImportError:
        MlflowClient = None

needs_mlflow = pytest.mark.skipif(MlflowClient is None, reason="MLflow is not installed (rai-audit[mlflow])")
# MLflow's rule for metric and param names (mlflow.utils.validation), kept ASCII as rai-audit writes them
MLFLOW_NAME = re.compile(r"^[A-Za-z0-9_.\-]{1,250}$")


@pytest.fixture(autouse=True)
def _default_experiment(monkeypatch):
    monkeypatch.delenv("MLFLOW_EXPERIMENT_NAME", raising=False)  # runs go into the 'rai-audit' experiment


def _train(cli, loans_csv, out, *extra):
    return cli(
        "train", "--data", loans_csv, "--target", "defaulted", "--epochs", "2", "--out", out, "-q", *extra
    )


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """One small trained run (no MLflow), for the commands that read a report or a model."""
    from audit.cli import main
    from tests.conftest import make_loans

    root = tmp_path_factory.mktemp("trained")
    make_loans().to_csv(root / "loans.csv", index=False)
    args = ["train", "--data", root / "loans.csv", "--target", "defaulted", "--sensitive", "sex"]
    assert main([str(a) for a in [*args, "--epochs", "1", "--out", root / "run", "-q"]]) == 0
    return root


def _only_run(uri: str):
    client = MlflowClient(tracking_uri=uri)
    experiment = client.get_experiment_by_name("rai-audit")
    runs = client.search_runs([experiment.experiment_id])
    assert len(runs) == 1
    return client, runs[0]


def _artifacts(client, run) -> set[str]:
    return {a.path for a in client.list_artifacts(run.info.run_id)}


@needs_mlflow
def test_train_logs_params_metrics_history_artifacts_and_tags(cli, loans_csv, tmp_path):
    uri = str(tmp_path / "mlruns")
    out = tmp_path / "run"
    result = _train(
        cli, loans_csv, out, "--sensitive", "sex,purpose", "--fairness-intervals", "exact", "--mlflow", uri
    )
    assert result.code == 0, result.err
    report = read_report(out)
    client, run = _only_run(uri)
    assert run.info.status == "FINISHED"
    assert run.data.params["epochs"] == "2" and run.data.params["sensitive"] == "sex,purpose"
    assert run.data.params["options.dp"] == "False"
    assert run.data.metrics["performance.accuracy"] == pytest.approx(
        report["metrics"]["performance.accuracy"]
    )
    # an intersection's name holds '&', which MLflow refuses: renamed, and the renaming is an artifact
    renamed = json.loads(
        Path(client.download_artifacts(run.info.run_id, NAME_MAP_ARTIFACT, str(tmp_path))).read_text()
    )
    assert (
        renamed["fairness.sex_purpose.demographic_parity_difference"]
        == "fairness.sex&purpose.demographic_parity_difference"
    )
    for new, old in renamed.items():
        assert run.data.metrics[new] == pytest.approx(report["metrics"][old])
    numeric = [k for k, v in report["metrics"].items() if isinstance(v, (int, float))]
    history = next(s for s in report["sections"] if s["name"] == "performance")["data"]["history"]
    assert len(run.data.metrics) == len(numeric) + len(history[0]) - 1  # every column but the epoch
    steps = client.get_metric_history(run.info.run_id, HISTORY_PREFIX + "val_loss")
    assert [(m.step, m.value) for m in steps] == [(h["epoch"], pytest.approx(h["val_loss"])) for h in history]
    assert {"model.pt", "report.json", "report.html", "report.md", "model_card.md"} <= _artifacts(client, run)
    assert (
        run.data.tags["audit.version"] == metadata.version("rai-audit")
        and run.data.tags["audit.command"] == "train"
    )
    assert run.data.tags["audit.report_sha256"] == report["content_sha256"]
    assert "audit.gate" not in run.data.tags  # no policy, no verdict


@needs_mlflow
def test_evaluate_with_a_policy_logs_the_gate_verdict(cli, trained, tmp_path):
    uri = str(tmp_path / "mlruns")
    policy = tmp_path / "policy.yaml"
    policy.write_text("rules:\n  - performance.accuracy >= 0.999\n")
    out = tmp_path / "eval"
    result = cli(
        "evaluate",
        "--model",
        trained / "run" / "model.pt",
        "--data",
        trained / "loans.csv",
        "--out",
        out,
        "--policy",
        policy,
        "-q",
        "--mlflow",
        uri,
    )
    assert result.code == 1, result.err  # the gate failed, and only that
    client, run = _only_run(uri)
    assert run.data.tags["audit.gate"] == "fail" and run.data.tags["audit.command"] == "evaluate"
    assert run.data.metrics["gate.passed"] == 0
    assert run.data.params["model_path"] == str(trained / "run" / "model.pt")
    assert {"report.json", "report.html", "model_card.md"} <= _artifacts(client, run)
    assert "model.pt" not in _artifacts(client, run)  # evaluate writes no model
    assert not [k for k in run.data.metrics if k.startswith(HISTORY_PREFIX)]  # no training, no history


@needs_mlflow
def test_decisions_logs_its_report(cli, tmp_path):
    rng = np.random.default_rng(0)
    frame = pd.DataFrame({"group": rng.choice(["a b", "c&d"], 400), "y": rng.integers(0, 2, 400)})
    frame["pred"] = rng.integers(0, 2, 400)
    data = tmp_path / "d.csv"
    frame.to_csv(data, index=False)
    uri = f"file:{tmp_path / 'store'}"
    out = tmp_path / "dec"
    args = [
        "--data",
        data,
        "--y-true",
        "y",
        "--y-pred",
        "pred",
        "--sensitive",
        "group",
        "--intervals",
        "exact",
    ]
    result = cli("decisions", *args, "--out", out, "--mlflow", uri)
    assert result.code == 0, result.err
    report = read_report(out)
    client, run = _only_run(uri)
    assert run.data.tags["audit.command"] == "decisions"
    assert run.data.params["data.target"] == "y" and run.data.params["data.sensitive"] == "group"
    # group names from the data ('a b', 'c&d') are sanitised, deterministically, and every name is one MLflow takes
    assert run.data.metrics["fairness.group.group.c_d.selection_rate"] == pytest.approx(
        report["metrics"]["fairness.group.group.c&d.selection_rate"]
    )
    assert all(MLFLOW_NAME.match(k) for k in run.data.metrics)
    assert {"report.json", "report.html", "report.md", "model_card.md", NAME_MAP_ARTIFACT} == _artifacts(
        client, run
    )
    assert f"mlflow: run {run.info.run_id}" in result.out


@needs_mlflow
def test_gate_logs_the_verdict_and_its_files(cli, trained, tmp_path):
    uri = str(tmp_path / "mlruns")
    policy = tmp_path / "policy.yaml"
    policy.write_text("rules:\n  - performance.accuracy >= 0.1\n")
    junit = tmp_path / "gate.xml"
    report = trained / "run" / "report.json"
    result = cli("gate", report, "--policy", policy, "--junit", junit, "--mlflow", uri)
    assert result.code == 0, result.err
    client, run = _only_run(uri)
    assert run.data.tags["audit.gate"] == "pass" and run.data.tags["audit.command"] == "gate"
    assert run.data.metrics["gate.passed"] == 1
    assert run.data.params["epochs"] == "1"  # the gated run's config
    assert {"report.json", "model.pt", "gate.xml"} <= _artifacts(client, run)


@needs_mlflow
def test_a_bad_tracking_uri_is_refused_before_training(cli, loans_csv, tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    for uri in ("nosuchscheme://host/x", str(blocker / "mlruns")):
        out = tmp_path / "never"
        assert_bad_input(_train(cli, loans_csv, out, "--mlflow", uri), out, says=f"--mlflow {uri}")


@needs_mlflow
def test_an_mlflow_failure_after_writing_warns_in_one_line_and_keeps_the_report(tmp_path, caplog):
    tracking = open_tracking(str(tmp_path / "mlruns"))
    (tmp_path / "report.json").write_text("{}")
    # the store vanishes between opening (before training) and logging (after the files are written)
    import shutil

    shutil.rmtree(tmp_path / "mlruns")
    (tmp_path / "mlruns").write_text("not a folder")
    report = {"run": {"name": "x"}, "metrics": {"performance.accuracy": 0.9}, "sections": []}
    assert log_or_warn(tracking, report=report, files=[tmp_path / "report.json"], command="train") is None
    warning = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert len(warning) == 1 and "MLflow logging" in warning[0] and "\n" not in warning[0]
    assert (tmp_path / "report.json").read_text() == "{}"


def test_mlflow_not_installed_is_exit_2_naming_the_extra(cli, loans_csv, tmp_path, monkeypatch):
    for name in [m for m in sys.modules if m == "mlflow" or m.startswith("mlflow.")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "mlflow", None)  # what Python does for a package that is not there
    out = tmp_path / "never"
    assert_bad_input(_train(cli, loans_csv, out, "--mlflow"), out, says="install 'rai-audit[mlflow]'")


def test_names_are_sanitised_deterministically_and_never_collide():
    names = ["fairness.sex&race.x", "fairness.sex_race.x", "fairness.sex race.x", "a" * 300, "plain.name"]
    mapped = mlflow_names(names)
    assert mapped == mlflow_names(list(reversed(names)))  # the same names, the same mapping, in any order
    assert len(set(mapped.values())) == len(names)
    assert mapped["fairness.sex_race.x"] == "fairness.sex_race.x" and mapped["plain.name"] == "plain.name"
    assert all(MLFLOW_NAME.match(v) for v in mapped.values())


@needs_mlflow
def test_a_sqlite_store_keeps_its_artifacts_beside_the_database(tmp_path, monkeypatch):
    pytest.importorskip("sqlalchemy")
    pytest.importorskip("alembic")
    monkeypatch.chdir(tmp_path)
    (tmp_path / "report.json").write_text("{}")
    (tmp_path / "db").mkdir()
    tracking = open_tracking(f"sqlite:///{tmp_path / 'db' / 'm.db'}")
    report = {"run": {"name": "x"}, "metrics": {"a&b": 0.5}, "sections": []}
    run_id = log_or_warn(tracking, report=report, files=[tmp_path / "report.json"], command="gate")
    run = MlflowClient(tracking_uri=tracking.uri).get_run(run_id)
    assert run.data.metrics == {"a_b": 0.5}
    assert (tmp_path / "db" / "mlartifacts" / run_id / "artifacts" / "report.json").is_file()
