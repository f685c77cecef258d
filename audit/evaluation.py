"""What the core computes once for every plugin after training, and the core's own report sections."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn

from audit.config import RunConfig
from audit.data import Dataset
from audit.engine import EVAL_BATCH, TrainResult, predict_logits
from audit.training import train_variant


@dataclass
class EvalContext:
    """Shared inputs for ``audit_evaluate``: computed once by the core, read by every plugin."""

    config: RunConfig
    dataset: Dataset
    model: nn.Module
    device: torch.device
    test_logits: torch.Tensor
    test_probs: torch.Tensor
    test_pred: torch.Tensor
    train_losses: torch.Tensor  # per-sample cross-entropy on the training rows (empty when unknown)
    heldout_losses: torch.Tensor  # per-sample cross-entropy on the test rows
    training: TrainResult | None = None
    artifacts: dict[str, Any] = field(default_factory=dict)
    checkpoint_metadata: dict[str, Any] = field(default_factory=dict)
    seed: int = 0
    # False for a model trained elsewhere: how it was trained (DP, mitigations) is unknown, not absent
    training_known: bool = True
    _baseline: tuple[nn.Module, torch.Tensor] | None = field(default=None, repr=False)

    def baseline(self) -> tuple[nn.Module, torch.Tensor]:
        """The run's model trained again by the plain core (no plugin) and its test-row predictions.

        Every plugin that compares its mitigation with an unmitigated model gets this one: trained once per run.
        """
        if self._baseline is None:
            model, _ = train_variant(
                self.config, self.dataset, device=self.device, progress=not self.config.quiet
            )
            self._baseline = (model, predict_logits(model, self.dataset.test.x, self.device).argmax(1))
        return self._baseline

    @property
    def test_y(self) -> torch.Tensor:
        """True labels of the test rows."""
        return self.dataset.test.y

    @property
    def positive_scores(self) -> np.ndarray | None:
        """Probability of the positive class for a binary target, else None."""
        index = self.dataset.positive_index
        return None if index is None else self.test_probs[:, index].numpy()

    def binary_labels(self) -> tuple[np.ndarray, np.ndarray] | None:
        """(y_true, y_pred) as 0/1 with 1 = positive class, for a binary target; else None."""
        index = self.dataset.positive_index
        if index is None:
            return None
        return (self.test_y.numpy() == index).astype(np.int64), (self.test_pred.numpy() == index).astype(
            np.int64
        )


# Rows scored at a time for the per-sample losses: only this many rows' logits exist at once (a 6M-row training
# split of many classes never has all its logits in memory). A multiple of the prediction batch, so the batches
# the model sees, and so every loss, are those of one whole pass.
LOSS_CHUNK_ROWS = EVAL_BATCH * 16


def per_sample_losses(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    device: torch.device,
    *,
    chunk_rows: int = LOSS_CHUNK_ROWS,
) -> torch.Tensor:
    """Unweighted per-sample cross-entropy, in eval mode, ``chunk_rows`` rows at a time."""
    if len(y) == 0:
        return torch.zeros(0)
    return torch.cat(
        [
            nn.functional.cross_entropy(predict_logits(model, xs, device), ys, reduction="none")
            for xs, ys in zip(x.split(chunk_rows), y.split(chunk_rows))
        ]
    )


def build_context(
    *,
    config: RunConfig,
    dataset: Dataset,
    model: nn.Module,
    device: torch.device,
    training: TrainResult | None,
    artifacts: dict[str, Any],
    checkpoint_metadata: dict[str, Any],
    training_known: bool = True,
) -> EvalContext:
    """Run the model once over the test and training rows and package what the plugins need."""
    logits = predict_logits(model, dataset.test.x, device)
    return EvalContext(
        config=config,
        dataset=dataset,
        model=model,
        device=device,
        test_logits=logits,
        test_probs=torch.softmax(logits, 1),
        test_pred=logits.argmax(1),
        train_losses=per_sample_losses(model, dataset.train.x, dataset.train.y, device),
        heldout_losses=nn.functional.cross_entropy(logits, dataset.test.y, reduction="none"),
        training=training,
        artifacts=artifacts,
        checkpoint_metadata=checkpoint_metadata,
        seed=config.seed,
        training_known=training_known,
    )
