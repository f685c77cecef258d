"""The core's performance section: accuracy with its exact interval, balanced accuracy, ROC AUC, log loss, curves,
the reference model's figures beside the model's, and the warnings for a model below it or predicting one class."""

from __future__ import annotations

from typing import Any

import numpy as np
from sklearn.metrics import balanced_accuracy_score, confusion_matrix, roc_auc_score

from audit.engine import TrainResult
from audit.evaluation import EvalContext
from audit.intervals import clopper_pearson
from audit.reference import fit_reference
from audit.report import Figure, Section, Series, Table

SECTION_ORDER = 10
# A model whose most common prediction covers this share of the rows is (nearly) constant: its accuracy is about
# the base rate and every between-group gap it shows is an artefact of predicting one class, not evidence of fairness.
ONE_CLASS_SHARE = 0.99


def dominant_prediction(y_pred: np.ndarray) -> tuple[int | None, float]:
    """The most common predicted class index and the share of rows that get it ((None, NaN) with no rows)."""
    y_pred = np.asarray(y_pred, dtype=np.int64)
    if y_pred.size == 0:
        return None, float("nan")
    counts = np.bincount(y_pred)
    return int(counts.argmax()), float(counts.max() / y_pred.size)


def dominant_prediction_share(y_pred: np.ndarray) -> float:
    """The share of rows that get the most common predicted class (1.0 for a constant model; NaN with no rows)."""
    return dominant_prediction(y_pred)[1]


def constant_predictions(y_pred: np.ndarray, classes: list[str]) -> dict[str, Any] | None:
    """The one class (nearly) every row got, its share and the rows; None when the predictions vary."""
    dominant, share = dominant_prediction(y_pred)
    if dominant is None or not share >= ONE_CLASS_SHARE:
        return None
    name = str(classes[dominant]) if dominant < len(classes) else str(dominant)
    return {"class": name, "share": share, "rows": int(np.asarray(y_pred).size)}


def predicts_one_class(y_pred: np.ndarray) -> bool:
    """True when (nearly) every row gets the same predicted class (share >= ``ONE_CLASS_SHARE``)."""
    return dominant_prediction_share(y_pred) >= ONE_CLASS_SHARE


def performance_section(ctx: EvalContext) -> Section:
    """Accuracy, balanced accuracy, ROC AUC (binary), log loss, the reference model, confusion matrix, curves."""
    section = Section("performance", "Performance", order=SECTION_ORDER)
    y_true, y_pred = ctx.test_y.numpy(), ctx.test_pred.numpy()
    section.data["model"] = _score(section, "", y_true, y_pred)
    section.add_metric("log_loss", float(ctx.heldout_losses.mean()))
    section.add_metric("test_rows", len(y_true))
    scores = ctx.positive_scores
    if scores is not None and len(np.unique(y_true)) == 2:
        section.add_metric("roc_auc", float(roc_auc_score(y_true == ctx.dataset.positive_index, scores)))
    _add_reference(section, ctx)
    _add_prediction_spread(section, ctx.dataset.classes, y_pred)
    section.tables.append(_confusion_table(ctx))
    if ctx.training is not None:
        _add_training(section, ctx.training)
    section.summary = summary_lines(section.data)
    section.notes.extend(ctx.dataset.notes)
    section.warnings.extend(ctx.dataset.warnings)
    return section


def _score(section: Section, prefix: str, y_true: np.ndarray, y_pred: np.ndarray) -> dict[str, Any]:
    """Add ``<prefix>accuracy`` (exact interval) and ``<prefix>balanced_accuracy``; return them for the data."""
    correct = int((y_true == y_pred).sum())
    accuracy = section.add_proportion(f"{prefix}accuracy", correct, len(y_true))
    balanced = float(balanced_accuracy_score(y_true, y_pred))
    section.add_metric(f"{prefix}balanced_accuracy", balanced)
    low, high = clopper_pearson(correct, len(y_true))
    return {
        "accuracy": accuracy,
        "accuracy_ci": [low, high],
        "balanced_accuracy": balanced,
        "correct": correct,
        "rows": len(y_true),
    }


def below_reference(model_ci_high: float, reference_accuracy: float) -> bool:
    """True when the reference's accuracy lies above the model's whole 95% interval (strictly)."""
    return reference_accuracy > model_ci_high


def _add_reference(section: Section, ctx: EvalContext) -> None:
    """The reference logistic regression's metrics, facts and notes; a warning when the model is below it."""
    train = ctx.dataset.train
    fitted = fit_reference(train_x=train.x, train_y=train.y, test_x=ctx.dataset.test.x, seed=ctx.seed)
    section.notes.extend(fitted.notes)
    section.data["reference"] = dict(fitted.data)
    section.data["model_below_reference"] = None  # unknown without a reference
    if fitted.predictions is None:
        return
    section.data["reference"].update(_score(section, "reference_", ctx.test_y.numpy(), fitted.predictions))
    model, reference = section.data["model"], section.data["reference"]
    below = below_reference(model["accuracy_ci"][1], reference["accuracy"])
    section.data["model_below_reference"] = below
    if below:
        section.warnings.append(_below_reference_warning(model, reference))


def _below_reference_warning(model: dict[str, Any], reference: dict[str, Any]) -> str:
    low, high = model["accuracy_ci"]
    return (
        f"the model's accuracy {model['accuracy']:.3f} (95% interval {low:.3f}-{high:.3f}) is below that of a "
        f"logistic regression fitted on the same training rows and input features ({reference['accuracy']:.3f}; "
        f"balanced accuracy {reference['balanced_accuracy']:.3f} against the model's "
        f"{model['balanced_accuracy']:.3f}): the reference lies above the model's whole interval, so the model "
        "has learnt less than a linear model does; check its training (epochs, learning rate, batch size), or "
        "whether a mitigation the run applied trades accuracy by design"
    )


def _add_prediction_spread(section: Section, classes: list[str], y_pred: np.ndarray) -> None:
    """The share of the most common prediction; a loud warning when (nearly) every row gets that one class."""
    index, share = dominant_prediction(y_pred)
    dominant = None if index is None else classes[index]
    one_class = share >= ONE_CLASS_SHARE
    section.data["predictions"] = {
        "dominant_class": dominant,
        "dominant_share": share,
        "one_class": one_class,
        "one_class_threshold": ONE_CLASS_SHARE,
    }
    if one_class:
        model = section.data["model"]
        section.warnings.insert(
            0,
            f"ONE-CLASS MODEL: the model predicts '{dominant}' for {share:.1%} of the {y_pred.size:,} test rows. "
            f"Its accuracy ({model['accuracy']:.3f}) is then about the share of that class and its balanced "
            f"accuracy ({model['balanced_accuracy']:.3f}) about 1/{len(classes)}; every fairness and per-group "
            "figure of this report says nothing about the model (each group gets the same answer, so its gaps "
            "are near 0 whatever the model would do)",
        )


def _confusion_table(ctx: EvalContext) -> Table:
    """Counts of (true, predicted) class pairs on the test rows."""
    labels = list(range(ctx.dataset.num_classes))
    matrix = confusion_matrix(ctx.test_y.numpy(), ctx.test_pred.numpy(), labels=labels)
    return Table(
        "Confusion matrix (rows: true class, columns: predicted)",
        ["true \\ predicted"] + ctx.dataset.classes,
        [[name] + row.tolist() for name, row in zip(ctx.dataset.classes, matrix)],
    )


def _add_training(section: Section, training: TrainResult) -> None:
    """Loss and validation-accuracy curves, the history table and payload, the kept epoch, training warnings."""
    hist = training.history
    epochs = [h["epoch"] for h in hist]
    section.figures.append(
        Figure(
            "Loss per epoch",
            "line",
            "epoch",
            "cross-entropy",
            [
                Series("train", epochs, [h["train_loss"] for h in hist]),
                Series("validation", epochs, [h["val_loss"] for h in hist]),
            ],
        )
    )
    section.figures.append(
        Figure(
            "Validation accuracy per epoch",
            "line",
            "epoch",
            "accuracy",
            [Series("validation", epochs, [h["val_accuracy"] for h in hist])],
        )
    )
    columns = list(hist[0].keys()) if hist else []
    section.tables.append(Table("Training history", columns, [[h.get(c) for c in columns] for h in hist]))
    section.data["history"] = [dict(h) for h in hist]  # per-epoch rows for consumers (MLflow steps)
    section.notes.append(
        f"kept the weights of epoch {training.best_epoch} of {len(hist)}"
        + (" (stopped early on the validation loss)" if training.stopped_early else "")
    )
    section.warnings.extend(training.warnings)


def summary_lines(data: dict[str, Any]) -> list[str]:
    """The section's findings in words, from its data: accuracy, the reference, a one-class model."""
    model, reference = data["model"], data.get("reference", {})
    low, high = model["accuracy_ci"]
    lines = [
        f"Accuracy {model['accuracy']:.3f} (95% interval {low:.3f}-{high:.3f}) on {model['rows']:,} test rows; "
        f"balanced accuracy {model['balanced_accuracy']:.3f}."
    ]
    if "accuracy" in reference:
        verdict = (
            "the model is below it beyond its own interval"
            if data["model_below_reference"]
            else "the model matches or beats it"
            if model["accuracy"] >= reference["accuracy"]
            else "the model is below it, within its own interval"
        )
        lines.append(
            f"A logistic regression on the same training rows and features reaches {reference['accuracy']:.3f} "
            f"(balanced {reference['balanced_accuracy']:.3f}): {verdict}."
        )
    elif "skipped" in reference:
        lines.append(f"No reference model: {reference['skipped']}.")
    spread = data["predictions"]
    if spread["one_class"]:
        lines.append(
            f"The model predicts '{spread['dominant_class']}' for {spread['dominant_share']:.1%} of the test rows: "
            "it separates nothing, and group comparisons of its predictions carry no information."
        )
    return lines
