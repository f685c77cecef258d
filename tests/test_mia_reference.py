"""Reference-model membership inference: which rows train the references, the two scores, and the attack's bars."""

import copy

import numpy as np
import pandas as pd
import pytest
import torch

from audit.config import RunConfig
from audit.data import load_dataset
from audit.evaluation import per_sample_losses
from audit.training import train_variant
from audit_plugins.membership_inference import draw_sides, loss_attacks, run_attack
from audit_plugins.mia_reference import (
    ATTACKS,
    MIN_POOL_ROWS,
    REFERENCE_MODELS,
    plan_reference_rows,
    reference_scores,
    rmia_scores,
)
from tests.conftest import assert_bad_input, read_report


def test_reference_rows_are_never_audited_rows():
    nonmembers = np.arange(0, 300, 2)
    plan = plan_reference_rows(400, nonmembers, seed=0)
    assert np.intersect1d(plan.pool, plan.nonmembers).size == 0
    assert np.array_equal(
        plan.nonmembers, nonmembers
    )  # enough spare test rows: every drawn row stays audited
    assert np.array_equal(plan.pool, np.setdiff1d(np.arange(400), nonmembers))


def test_too_few_spare_rows_set_half_the_nonmembers_aside():
    nonmembers = np.arange(100)
    plan = plan_reference_rows(100 + MIN_POOL_ROWS - 1, nonmembers, seed=0)
    assert np.intersect1d(plan.pool, plan.nonmembers).size == 0
    assert len(plan.nonmembers) == 50 and len(plan.pool) == 50 + MIN_POOL_ROWS - 1


def test_rmia_rises_with_the_target_and_falls_with_the_references():
    target = np.log(np.array([0.9, 0.9, 0.5]))
    refs = np.log(np.array([[0.9, 0.2, 0.2], [0.8, 0.3, 0.2]]))
    rmia = rmia_scores(target, refs)
    assert rmia[1] > rmia[0]  # same target confidence, the references found row 1 hard: more likely a member
    assert rmia[1] > rmia[2]  # same references, the target is surer of row 1


def _memorising_target(tmp_path):
    """A wide MLP trained 30 epochs on ~300 rows of a noisy but learnable task: it memorises its rows."""
    rng = np.random.default_rng(0)
    x = rng.normal(size=(1200, 10))
    logit = 1.5 * x @ rng.normal(size=10) / np.sqrt(10)
    frame = pd.DataFrame(x, columns=[f"f{i}" for i in range(10)])
    frame["label"] = (rng.random(1200) < 1 / (1 + np.exp(-logit))).astype(int)
    frame.to_csv(tmp_path / "mem.csv", index=False)
    config = RunConfig(
        data=str(tmp_path / "mem.csv"),
        target="label",
        hidden=[256, 256],
        epochs=30,
        lr=3e-3,
        batch_size=64,
        patience=None,
        test_fraction=0.7,  # spare test rows: the references train on as many rows as the target
        quiet=True,
    )
    data = load_dataset(config)
    config.resolve(train_rows=len(data.train), plugin_defaults={})
    target, _ = train_variant(config, data, device=torch.device("cpu"))
    return config, data, target


def test_reference_attack_doubles_the_class_calibrated_tpr_on_a_memorising_model(tmp_path):
    config, data, target = _memorising_target(tmp_path)
    cpu = torch.device("cpu")
    train_losses = per_sample_losses(target, data.train.x, data.train.y, cpu).numpy()
    test_losses = per_sample_losses(target, data.test.x, data.test.y, cpu).numpy()
    members, nonmembers = draw_sides(len(train_losses), len(test_losses), 5000, seed=1)
    y_in, y_out = data.train.y.numpy()[members], data.test.y.numpy()[nonmembers]
    _, calibrated = loss_attacks(
        train_losses[members], y_in, test_losses[nonmembers], y_out, delta=1e-5, seed=0
    )
    plan = plan_reference_rows(len(test_losses), nonmembers, seed=0)
    scores = reference_scores(
        config=config, dataset=data, target=target, members=members, plan=plan, models=8, device=cpu
    )
    rmia = run_attack("rmia", scores.rmia_members, scores.rmia_nonmembers, delta=1e-5, seed=0)
    assert scores.rows_per_model == len(data.train) and scores.models == 8
    assert rmia.tpr_at_fpr[0.01] >= 0.05  # a real low-FPR signal, not 0 against 0
    assert rmia.tpr_at_fpr[0.01] >= 2 * calibrated.tpr_at_fpr[0.01]
    assert rmia.auc > 0.7


# --- through the CLI ---------------------------------------------------------------------------------------


def _train(cli, loans_csv, out, *extra):
    args = [
        "train",
        "--data",
        loans_csv,
        "--target",
        "defaulted",
        "--epochs",
        "3",
        *extra,
        "--out",
        out,
        "-q",
    ]
    assert cli(*args).code == 0
    report = read_report(out)
    return next(s for s in report["sections"] if s["name"] == "privacy")["data"]["membership_inference"]


def test_reference_attacks_run_by_default_on_tables_and_show_their_cost(cli, tmp_path, loans_csv):
    mia = _train(cli, loans_csv, tmp_path / "on")
    names = [a["name"] for a in mia["attacks"]]
    assert names == ["loss threshold", "class-calibrated loss", *ATTACKS]
    cost = mia["reference_models"]
    assert cost["models"] == REFERENCE_MODELS and cost["seconds"] > 0 and cost["pool_rows"] > 0
    # three attacks share the 5%: each bound at 98.33%, so their maximum holds at 95%
    assert mia["attack_count"] == 3 and mia["per_attack_confidence"] == pytest.approx(1 - 0.05 / 3)
    assert all(a["confidence"] == mia["per_attack_confidence"] for a in mia["attacks"])
    assert mia["headline_attack"] == max(mia["attacks"], key=lambda a: a["auc"])["name"]
    off = _train(cli, loans_csv, tmp_path / "off", "--mia-reference-models", "0")
    assert [a["name"] for a in off["attacks"]] == names[:2] and off["reference_models"] is None
    three = _train(cli, loans_csv, tmp_path / "three", "--mia-reference-models", "3")
    assert three["reference_models"]["models"] == 3


def test_a_negative_reference_model_count_is_refused(cli, tmp_path, loans_csv):
    out = tmp_path / "out"
    args = [
        "train",
        "--data",
        loans_csv,
        "--target",
        "defaulted",
        "--mia-reference-models",
        "-1",
        "--out",
        out,
    ]
    assert_bad_input(cli(*args), out, says="--mia-reference-models")


@pytest.mark.slow
def test_reference_attacks_see_nothing_on_adult_at_epsilon_1(cli, tmp_path):
    out = tmp_path / "dp"
    args = [
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
        "-q",
    ]
    assert cli(*args, "--out", out).code == 0
    report = read_report(out)
    mia = next(s for s in report["sections"] if s["name"] == "privacy")["data"]["membership_inference"]
    reference = [a for a in mia["attacks"] if a["name"] in ATTACKS]
    assert len(reference) == 1 and reference[0]["members"] == 5000
    assert reference[0]["auc"] <= 0.52


def test_a_second_audited_model_reuses_the_cached_reference_models(tmp_path, monkeypatch):
    """The references never depend on the audited model: a compressed model of the same run scores against them."""
    from audit_plugins import mia_reference

    config, data, target = _memorising_target(tmp_path)
    trained = []
    real_train = mia_reference.train_reference_models

    def counting(*args, **kwargs):
        trained.append(kwargs["models"])
        return real_train(*args, **kwargs)

    monkeypatch.setattr(mia_reference, "train_reference_models", counting)
    cpu = torch.device("cpu")
    members, nonmembers = draw_sides(len(data.train), len(data.test), 5000, seed=1)
    plan = plan_reference_rows(len(data.test), nonmembers, seed=0)
    cache: dict = {}
    common = dict(config=config, dataset=data, members=members, plan=plan, models=2, device=cpu, cache=cache)
    first = reference_scores(target=target, **common)
    again = reference_scores(target=target, **common)
    other = copy.deepcopy(target)  # a stand-in for a second audited model: another output layer
    with torch.no_grad():
        [m for m in other.modules() if isinstance(m, torch.nn.Linear)][-1].bias.add_(1.0)
    changed = reference_scores(target=other, **common)
    assert trained == [2] and len(cache) == 1  # trained once, for all three audits
    np.testing.assert_array_equal(first.rmia_members, again.rmia_members)
    assert not np.array_equal(first.rmia_members, changed.rmia_members)  # scored against the other target
