"""The core's data-derived defaults train tables of every shape: as accurate as a LogisticRegression, not one class.

Each table has a logistic ground truth (``make_mixed_table``), so scikit-learn's LogisticRegression on the same
split and the same preprocessed features is the reference a default run must reach within one point."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from sklearn.linear_model import LogisticRegression

from audit.config import RunConfig
from audit.data import load_dataset
from audit.engine import predict_logits, train
from audit.training import attach_scheduler, build_setup, model_spec_for, seed_everything
from tests.conftest import make_mixed_table, read_report

ONE_POINT = 0.01 + 1e-9  # one test row in 100 is exactly a point: float rounding must not fail it


def reference_accuracy(dataset) -> float:
    """LogisticRegression on the run's own preprocessed training tensors, scored on its test split."""
    model = LogisticRegression(max_iter=2000).fit(dataset.train.x.numpy(), dataset.train.y.numpy())
    return float(model.score(dataset.test.x.numpy(), dataset.test.y.numpy()))


def default_run(
    data: str | Path, target: str | None = "target"
) -> tuple[RunConfig, float, np.ndarray, object]:
    """Train with every core default (as ``audit train`` resolves them); test accuracy and predictions."""
    config = RunConfig(data=str(data), target=target)
    generator = seed_everything(config.seed)
    dataset = load_dataset(config)
    config.resolve(train_rows=len(dataset.train), plugin_defaults={})
    setup = build_setup(config, dataset, torch.device("cpu"), generator, model_spec_for(config, dataset))
    attach_scheduler(setup)
    train(setup, progress=False)
    pred = predict_logits(setup.base_model, dataset.test.x, torch.device("cpu")).argmax(1).numpy()
    return config, float((pred == dataset.test.y.numpy()).mean()), pred, dataset


@pytest.mark.parametrize(
    "shape",
    [
        dict(n=500, numeric=8, categorical=0),  # numeric only, 360 training rows
        dict(n=1000, numeric=15, categorical=25),  # 40 mixed columns, 720 training rows
        dict(n=2000, numeric=6, categorical=6, positive_rate=0.1, signal=3.0),  # a 10% minority class
        dict(n=24_000, numeric=10, categorical=5),  # the large-table defaults (batch 1024)
    ],
    ids=["500x8", "1000x40", "2000x12-minority10", "24000x15"],
)
def test_default_run_reaches_the_reference_accuracy(tmp_path, shape):
    path = tmp_path / "table.csv"
    make_mixed_table(**shape).to_csv(path, index=False)
    config, accuracy, pred, dataset = default_run(path)
    reference = reference_accuracy(dataset)
    assert accuracy >= reference - ONE_POINT, (accuracy, reference, config.batch_size, config.epochs)
    # not one class: the minority class is predicted too, for a share of rows near its own
    share = np.bincount(pred, minlength=2) / len(pred)
    assert share.min() >= 0.5 * np.bincount(dataset.test.y.numpy(), minlength=2).min() / len(pred), share


def test_a_1000_row_credit_table_through_the_cli_leaves_the_majority_class(cli, tmp_path):
    # the case: 1,000 rows, 20 mixed columns, 30% positive; 10 epochs at batch 256 predicted "good" for all
    path = tmp_path / "credit.csv"
    make_mixed_table(1000, numeric=7, categorical=13, seed=2).to_csv(path, index=False)
    out = tmp_path / "run"
    assert cli("train", "--data", path, "--target", "target", "--out", out, "--quiet").code == 0
    report = read_report(out)
    dataset = load_dataset(RunConfig(data=str(path), target="target"))
    assert report["metrics"]["performance.accuracy"] >= reference_accuracy(dataset) - ONE_POINT
    assert report["metrics"]["performance.balanced_accuracy"] > 0.6
    sources = report["run"]["config_sources"]
    assert sources["epochs"].startswith("default for 720 training rows at batch 64 (12 steps an epoch)")
    assert sources["patience"] == "default for 12 steps an epoch: at least 80 steps without improvement"
    assert sources["batch_size"] == "default for 720 training rows"


def test_explicit_values_beat_the_derived_defaults(cli, tmp_path):
    path = tmp_path / "credit.csv"
    make_mixed_table(1000, numeric=7, categorical=13, seed=2).to_csv(path, index=False)
    out = tmp_path / "run"
    flags = ("--epochs", "2", "--batch-size", "256", "--patience", "3", "--lr", "0.002")
    assert cli("train", "--data", path, "--target", "target", *flags, "--out", out, "--quiet").code == 0
    run = read_report(out)["run"]
    assert {k: run["config"][k] for k in ("epochs", "batch_size", "patience", "lr")} == {
        "epochs": 2,
        "batch_size": 256,
        "patience": 3,
        "lr": 0.002,
    }
    assert all(run["config_sources"][k] == "command line" for k in ("epochs", "batch_size", "patience", "lr"))


@pytest.mark.slow
def test_adult_defaults_keep_their_accuracy():
    config, accuracy, pred, dataset = default_run("adult", target=None)
    assert (config.batch_size, config.lr, config.epochs, config.patience) == (1024, 3e-3, 10, 3)
    assert accuracy >= 0.855, accuracy


@pytest.mark.slow
def test_digits_cnn_defaults_keep_their_accuracy():
    config, accuracy, pred, dataset = default_run("digits", target=None)
    assert accuracy >= 0.95, (accuracy, config.batch_size, config.epochs)
