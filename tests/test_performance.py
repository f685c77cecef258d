"""audit.performance: the performance section on a tiny context, checked against counts made here."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from audit.config import RunConfig
from audit.data import load_dataset
from audit.evaluation import build_context
from audit.intervals import clopper_pearson
from audit.models import build_model, model_spec
from audit.performance import SECTION_ORDER, performance_section
from audit.training import train_variant
from tests.conftest import make_loans


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
    model, result = train_variant(trained, dataset)
    section = performance_section(_context(trained, dataset, model, training=result))
    assert [f.title for f in section.figures] == ["Loss per epoch", "Validation accuracy per epoch"]
    assert section.figures[0].series[0].x == [1, 2]
    history = next(t for t in section.tables if t.title == "Training history")
    assert len(history.rows) == 2
    assert any(
        note.startswith(f"kept the weights of epoch {result.best_epoch} of 2") for note in section.notes
    )
