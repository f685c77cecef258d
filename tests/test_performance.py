"""audit.performance and audit.reference: the performance section on a tiny context, checked against counts and a
logistic regression made here; the reference's warnings through the real CLI."""

from __future__ import annotations

import dataclasses
import warnings

import numpy as np
import pytest
import torch
from sklearn.exceptions import ConvergenceWarning
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import balanced_accuracy_score
from torch import nn

import audit.reference
from audit.config import RunConfig
from audit.data import load_dataset
from audit.evaluation import build_context
from audit.intervals import clopper_pearson
from audit.models import build_model, model_spec
from audit.performance import SECTION_ORDER, below_reference, performance_section
from audit.reference import fit_reference
from audit.training import train_variant
from tests.conftest import make_loans, read_report, run_audit, undeclared_metrics


def _model(dataset, seed=0):
    torch.manual_seed(seed)
    spec = model_spec(
        name="mlp",
        input_shape=dataset.input_shape,
        num_classes=dataset.num_classes,
        hidden=[8],
        channels=[],
        dropout=0.0,
    )
    return build_model(spec).eval()


def _context(config, dataset, model, training=None):
    return build_context(
        config=config,
        dataset=dataset,
        model=model,
        device=torch.device("cpu"),
        training=training,
        artifacts={},
        checkpoint_metadata={},
    )


@pytest.fixture(scope="module")
def loans(tmp_path_factory):
    path = tmp_path_factory.mktemp("perf") / "loans.csv"
    make_loans(400).to_csv(path, index=False)
    config = RunConfig(data=str(path), target="defaulted", quiet=True)
    return config, load_dataset(config)


@pytest.fixture(scope="module")
def section_and_counts(loans):
    config, dataset = loans
    model = _model(dataset)
    with torch.no_grad():
        logits = model(dataset.test.x)
    y = dataset.test.y.numpy()
    return performance_section(_context(config, dataset, model)), logits, y


def test_accuracy_is_the_count_of_correct_rows(section_and_counts):
    section, logits, y = section_and_counts
    pred = logits.argmax(1).numpy()
    correct, n = int((pred == y).sum()), len(y)
    assert 0 < correct < n  # a random model: neither extreme, so the interval is two-sided
    m = section.metrics
    assert m["performance.accuracy"] == correct / n
    assert m["performance.test_rows"] == n == 80


def test_accuracy_carries_its_exact_interval(section_and_counts):
    section, logits, y = section_and_counts
    correct = int((logits.argmax(1).numpy() == y).sum())
    m = section.metrics
    assert (m["performance.accuracy.ci_low"], m["performance.accuracy.ci_high"]) == clopper_pearson(
        correct, len(y)
    )
    assert m["performance.accuracy.ci_low"] < m["performance.accuracy"] < m["performance.accuracy.ci_high"]
    assert m["performance.accuracy.ci_high"] - m["performance.accuracy.ci_low"] > 0.15  # 80 rows: wide


def test_balanced_accuracy_log_loss_and_auc_match_manual_counts(section_and_counts, loans):
    section, logits, y = section_and_counts
    _, dataset = loans
    pred = logits.argmax(1).numpy()
    recalls = [np.mean(pred[y == c] == c) for c in range(dataset.num_classes)]
    m = section.metrics
    assert m["performance.balanced_accuracy"] == pytest.approx(np.mean(recalls))
    log_loss = float(-torch.log_softmax(logits, 1)[torch.arange(len(y)), torch.from_numpy(y)].mean())
    assert m["performance.log_loss"] == pytest.approx(log_loss, rel=1e-5)
    # ROC AUC as the share of (positive, negative) pairs the positive class's score orders correctly
    positive = dataset.positive_index
    scores = torch.softmax(logits, 1)[:, positive].numpy()
    pos, neg = scores[y == positive], scores[y != positive]
    pairs = (pos[:, None] > neg[None, :]).mean() + 0.5 * (pos[:, None] == neg[None, :]).mean()
    assert m["performance.roc_auc"] == pytest.approx(pairs)


def test_section_place_and_confusion_matrix(section_and_counts, loans):
    section, logits, y = section_and_counts
    _, dataset = loans
    assert section.name == "performance" and section.order == SECTION_ORDER == 10
    assert all(name.startswith("performance.") for name in section.metrics)
    (table,) = section.tables
    assert table.columns == ["true \\ predicted", *dataset.classes]
    counts = np.array([row[1:] for row in table.rows])
    assert counts.sum() == len(y)
    assert np.trace(counts) == int((logits.argmax(1).numpy() == y).sum())
    assert [row[0] for row in table.rows] == dataset.classes
    assert section.figures == []  # no training: no curves


def test_a_multiclass_target_has_no_roc_auc(tmp_path):
    path = tmp_path / "purpose.csv"
    make_loans(300).to_csv(path, index=False)
    config = RunConfig(data=str(path), target="purpose")
    dataset = load_dataset(config)
    section = performance_section(_context(config, dataset, _model(dataset)))
    assert dataset.num_classes == 3
    assert "performance.roc_auc" not in section.metrics
    assert len(section.tables[0].rows) == 3


def test_a_perfect_model_gets_accuracy_one_and_an_interval_below_it(loans):
    config, dataset = loans

    class Oracle(nn.Module):
        """Answers each test row with its label (looked up by the row's features)."""

        def forward(self, x):
            match = (x[:, None, :] == dataset.test.x[None, :, :]).all(-1).float().argmax(1)
            return nn.functional.one_hot(dataset.test.y[match], dataset.num_classes).float() * 10

    section = performance_section(_context(config, dataset, Oracle()))
    m = section.metrics
    assert m["performance.accuracy"] == 1.0 and m["performance.accuracy.ci_high"] == 1.0
    low = m["performance.accuracy.ci_low"]
    assert low == clopper_pearson(80, 80)[0] == pytest.approx(0.025 ** (1 / 80))  # exact: (alpha/2)^(1/n)


def test_training_adds_curves_and_history(loans):
    config, dataset = loans
    trained = RunConfig(
        data=config.data, target="defaulted", epochs=2, hidden=[8], batch_size=64, lr=1e-2, patience=None
    )
    model, result = train_variant(trained, dataset, device=torch.device("cpu"))  # the context is on the CPU
    section = performance_section(_context(trained, dataset, model, training=result))
    assert [f.title for f in section.figures] == ["Loss per epoch", "Validation accuracy per epoch"]
    assert section.figures[0].series[0].x == [1, 2]
    history = next(t for t in section.tables if t.title == "Training history")
    assert len(history.rows) == 2
    assert any(
        note.startswith(f"kept the weights of epoch {result.best_epoch} of 2") for note in section.notes
    )


# --- the reference model and the warnings it and a one-class model raise ---

CONSTANT = f"{__name__}:constant_model"


class Constant(nn.Module):
    """Answers ``label`` for every row, whatever its features (a bias only: training barely moves it)."""

    def __init__(self, num_classes: int, label: int = 0):
        super().__init__()
        self.bias = nn.Parameter(torch.nn.functional.one_hot(torch.tensor(label), num_classes).float() * 20)

    def forward(self, x):
        return x[:, :1] * 0.0 + self.bias  # through x: efficiency's FLOP counter needs an output with a graph


def constant_model(input_shape, num_classes):
    """A user's factory for a model that predicts class 0 for every row."""
    return Constant(num_classes)


def _fitted_here(dataset):
    """The reference as the README describes it: LogisticRegression(lbfgs, C=1) on the (flattened) tensors."""
    flat = [s.x.reshape(len(s.x), -1).numpy() for s in (dataset.train, dataset.test)]
    lr = LogisticRegression(solver="lbfgs", C=1.0, max_iter=1000).fit(flat[0], dataset.train.y.numpy())
    return lr, lr.predict(flat[1])


def _performance(out):
    return next(s for s in read_report(out)["sections"] if s["name"] == "performance")


def test_reference_metrics_equal_a_logistic_regression_fitted_here(section_and_counts, loans):
    section, _, y = section_and_counts
    _, pred = _fitted_here(loans[1])
    correct = int((pred == y).sum())
    m = section.metrics
    assert m["performance.reference_accuracy"] == correct / len(y)
    assert (m["performance.reference_accuracy.ci_low"], m["performance.reference_accuracy.ci_high"]) == (
        clopper_pearson(correct, len(y))
    )
    assert m["performance.reference_balanced_accuracy"] == pytest.approx(balanced_accuracy_score(y, pred))
    data = section.data["reference"]
    assert data["correct"] == correct and data["train_rows"] == data["train_rows_available"] == 288
    assert data["converged"] and data["fit_s"] > 0 and data["flattened"] is False
    assert any(n.startswith("reference: a logistic regression") for n in section.notes)


def test_below_reference_is_strict_on_the_models_upper_bound():
    assert below_reference(0.8, 0.8000001)
    assert not below_reference(0.8, 0.8)
    assert not below_reference(0.8, 0.5)


def test_a_constant_model_is_flagged_loudly_and_as_below_the_reference(loans):
    config, dataset = loans
    minority = int(np.bincount(dataset.test.y.numpy()).argmin())
    section = performance_section(_context(config, dataset, Constant(dataset.num_classes, minority)))
    m, data = section.metrics, section.data
    assert m["performance.accuracy.ci_high"] < m["performance.reference_accuracy"]
    assert data["model_below_reference"] is True
    assert data["predictions"] == {
        "dominant_class": dataset.classes[minority],
        "dominant_share": 1.0,
        "one_class": True,
        "one_class_threshold": 0.99,
    }
    loud, below = section.warnings[:2]  # the one-class warning comes first
    assert loud.startswith(f"ONE-CLASS MODEL: the model predicts '{dataset.classes[minority]}' for 100.0% of")
    assert "every fairness and per-group figure of this report says nothing" in loud
    assert below.startswith(f"the model's accuracy {m['performance.accuracy']:.3f}")
    assert "below that of a logistic regression" in below
    assert any(
        line.startswith(f"The model predicts '{dataset.classes[minority]}'") for line in section.summary
    )


def test_a_model_as_good_as_the_reference_gets_neither_warning(loans):
    config, dataset = loans
    lr, pred = _fitted_here(dataset)
    linear = nn.Linear(dataset.input_shape[0], 2).double()
    with torch.no_grad():  # the reference's own decision function, as a torch model: the same predictions
        linear.weight.copy_(torch.from_numpy(np.stack([-lr.coef_[0], lr.coef_[0]]) / 2))
        linear.bias.copy_(torch.from_numpy(np.array([-lr.intercept_[0], lr.intercept_[0]]) / 2))

    class AsReference(nn.Module):
        def forward(self, x):
            return linear(x.double()).float()

    section = performance_section(_context(config, dataset, AsReference()))
    m = section.metrics
    assert m["performance.accuracy"] == m["performance.reference_accuracy"]
    assert (section.data["model_below_reference"], section.data["predictions"]["one_class"]) == (False, False)
    assert section.warnings == []
    assert "the model matches or beats it" in section.summary[1]


def test_images_are_flattened_for_the_reference():
    config = RunConfig(data="digits", channels=[4], seed=1)
    dataset = load_dataset(config)
    section = performance_section(_context(config, dataset, _model(dataset)))
    _, pred = _fitted_here(dataset)
    y = dataset.test.y.numpy()
    assert section.metrics["performance.reference_accuracy"] == np.mean(pred == y) > 0.9
    assert section.data["reference"]["flattened"] is True and section.data["reference"]["features"] == 64
    assert any("(images flattened to pixels)" in n for n in section.notes)


def test_without_training_rows_or_with_one_class_the_reference_is_skipped_with_a_note(loans):
    config, dataset = loans
    no_rows = dataclasses.replace(dataset, train=dataclasses.replace(dataset.train, y=dataset.train.y[:0]))
    one_class = dataclasses.replace(
        dataset, train=dataclasses.replace(dataset.train, y=torch.zeros_like(dataset.train.y))
    )
    for data, reason in [(no_rows, "this evaluation has no training rows"), (one_class, "a single class")]:
        section = performance_section(_context(config, data, _model(dataset)))
        assert not any("reference" in name for name in section.metrics)
        assert reason in section.data["reference"]["skipped"]
        assert section.data["model_below_reference"] is None
        assert any(n.startswith("no reference model: ") and reason in n for n in section.notes)
        assert section.summary[1].startswith("No reference model: ")


def test_a_large_table_is_subsampled_with_a_seed_and_a_note(loans):
    _, dataset = loans
    kwargs = dict(train_x=dataset.train.x, train_y=dataset.train.y, test_x=dataset.test.x, max_rows=100)
    first, again = fit_reference(seed=0, **kwargs), fit_reference(seed=0, **kwargs)
    assert (first.data["train_rows"], first.data["train_rows_available"]) == (100, 288)
    assert np.array_equal(first.predictions, again.predictions)
    assert any(
        n.startswith("the reference was fitted on a seeded subsample of 100 of the 288 training rows")
        for n in first.notes
    )


def test_a_wide_table_is_subsampled_to_the_cell_budget_but_never_below_the_floor(loans_data, monkeypatch):
    kwargs = dict(train_x=loans_data.train.x, train_y=loans_data.train.y, test_x=loans_data.test.x, seed=0)
    width = loans_data.input_shape[0]
    available = len(loans_data.train)
    monkeypatch.setattr(audit.reference, "MAX_CELLS", 1200 * width * 2)  # rows x features x classes
    assert (fit_reference(**kwargs).data["train_rows"], available) == (1200, 1440)
    monkeypatch.setattr(audit.reference, "MAX_CELLS", 1)
    assert fit_reference(**kwargs).data["train_rows"] == audit.reference.MIN_ROWS == 1000


def test_a_solver_stopped_early_is_a_note_not_a_warning_on_the_terminal(loans):
    _, dataset = loans
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        fitted = fit_reference(
            train_x=dataset.train.x, train_y=dataset.train.y, test_x=dataset.test.x, seed=0, max_iter=1
        )
    assert [w for w in caught if issubclass(w.category, ConvergenceWarning)] == []
    assert fitted.data["converged"] is False
    assert any("stopped at its limit of 1 iterations" in n for n in fitted.notes)


def test_cli_reports_a_constant_model_loudly(tmp_path):
    data, out = tmp_path / "loans.csv", tmp_path / "run"
    make_loans(600).to_csv(data, index=False)
    args = [
        "--target",
        "defaulted",
        "--sensitive",
        "sex",
        "--model",
        CONSTANT,
        "--epochs",
        "1",
        "--lr",
        "1e-6",
    ]
    result = run_audit("train", "--data", data, *args, "--out", out)
    assert result.returncode == 0, result.stderr
    assert "Warning" not in result.stderr  # no library warning (ConvergenceWarning) reaches the terminal
    section = _performance(out)
    assert section["warnings"][0].startswith("ONE-CLASS MODEL: the model predicts 'no' for 100.0% of the 120")
    assert section["data"]["model_below_reference"] is True
    metrics = read_report(out)["metrics"]
    assert metrics["performance.reference_accuracy"] > 0.65
    assert undeclared_metrics({k: v for k, v in metrics.items() if "reference_" in k}) == []
    assert "ONE-CLASS MODEL" in (out / "report.md").read_text()


def test_evaluate_runs_the_reference_on_built_in_data_and_skips_it_on_a_users_file(cli, tmp_path, loans_csv):
    train, again = tmp_path / "digits", tmp_path / "again"
    digits = ["--data", "digits", "--epochs", "1", "--channels", "4,8", "-q"]
    assert cli("train", *digits, "--out", train).code == 0
    assert cli("evaluate", "--model", train / "model.pt", "--out", again, "-q").code == 0
    names = ["performance.reference_accuracy", "performance.reference_balanced_accuracy"]
    trained, evaluated = read_report(train)["metrics"], read_report(again)["metrics"]
    assert [evaluated[n] for n in names] == [trained[n] for n in names]  # the splits are reproduced
    loans, user = tmp_path / "loans", tmp_path / "user"
    assert (
        cli("train", "--data", loans_csv, "--target", "defaulted", "--epochs", "1", "--out", loans, "-q").code
        == 0
    )
    assert cli("evaluate", "--model", loans / "model.pt", "--data", loans_csv, "--out", user, "-q").code == 0
    assert "performance.reference_accuracy" not in read_report(user)["metrics"]
    assert "no reference model: this evaluation has no training rows" in " ".join(_performance(user)["notes"])
