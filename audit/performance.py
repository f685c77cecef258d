"""The core's performance section: accuracy with its exact interval, balanced accuracy, ROC AUC, log loss, curves."""

from __future__ import annotations

import numpy as np
from sklearn.metrics import balanced_accuracy_score, confusion_matrix, roc_auc_score

from audit.evaluation import EvalContext
from audit.report import Figure, Section, Series, Table

SECTION_ORDER = 10


def performance_section(ctx: EvalContext) -> Section:
    """Accuracy, balanced accuracy, ROC AUC (binary), log loss, confusion matrix, training curves."""
    section = Section("performance", "Performance", order=SECTION_ORDER)
    y_true, y_pred = ctx.test_y.numpy(), ctx.test_pred.numpy()
    section.add_proportion("accuracy", int((y_true == y_pred).sum()), len(y_true))
    section.add_metric("balanced_accuracy", float(balanced_accuracy_score(y_true, y_pred)))
    section.add_metric("log_loss", float(ctx.heldout_losses.mean()))
    section.add_metric("test_rows", len(y_true))
    scores = ctx.positive_scores
    if scores is not None and len(np.unique(y_true)) == 2:
        section.add_metric("roc_auc", float(roc_auc_score(y_true == ctx.dataset.positive_index, scores)))
    labels = list(range(ctx.dataset.num_classes))
    matrix = confusion_matrix(y_true, y_pred, labels=labels)
    section.tables.append(
        Table(
            "Confusion matrix (rows: true class, columns: predicted)",
            ["true \\ predicted"] + ctx.dataset.classes,
            [[name] + row.tolist() for name, row in zip(ctx.dataset.classes, matrix)],
        )
    )
    if ctx.training is not None:
        hist = ctx.training.history
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
        section.notes.append(
            f"kept the weights of epoch {ctx.training.best_epoch} of {len(hist)}"
            + (" (stopped early on the validation loss)" if ctx.training.stopped_early else "")
        )
        section.warnings.extend(ctx.training.warnings)
    section.notes.extend(ctx.dataset.notes)
    section.warnings.extend(ctx.dataset.warnings)
    return section
