"""What the core computes once for every plugin: the unmitigated baseline is trained once per run and shared."""

import pytest

import audit.evaluation
from tests.conftest import read_report


def test_baseline_is_trained_once_and_shared_by_the_plugins(cli, tmp_path, loans_csv, monkeypatch):
    calls = []
    real = audit.evaluation.train_variant

    def counting(*args, **kwargs):
        calls.append(kwargs.get("progress"))
        return real(*args, **kwargs)

    monkeypatch.setattr(audit.evaluation, "train_variant", counting)  # a spy: the real training runs
    out = tmp_path / "run"
    assert (
        cli(
            "train",
            "--data",
            loans_csv,
            "--target",
            "defaulted",
            "--sensitive",
            "sex",
            "--epochs",
            "2",
            "--dp",
            "--epsilon",
            "3",
            "--dp-baseline",
            "--fairness",
            "reweight",
            "--fairness-baseline",
            "--out",
            out,
            "-q",
        ).code
        == 0
    )
    m = read_report(out)["metrics"]
    assert calls == [False]  # one retraining, silent under --quiet
    assert m["privacy.baseline_accuracy"] == pytest.approx(
        m["fairness.mitigation.baseline_accuracy"], abs=1e-6
    )
