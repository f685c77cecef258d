"""The reference model: a logistic regression fitted on the model's own training rows and input features."""

from __future__ import annotations

import logging
import time
import warnings
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from sklearn.exceptions import ConvergenceWarning
from sklearn.linear_model import LogisticRegression
from threadpoolctl import threadpool_limits

logger = logging.getLogger(__name__)

# Above this many training rows the reference is fitted on a seeded subsample: a linear model's accuracy has
# settled long before, and the fit must stay a small fraction of the run's cost.
MAX_ROWS = 200_000
# ... and on fewer when rows x features x classes would pass this: one lbfgs iteration costs about that many
# multiply-adds twice over (Adult: 29k x 108 x 2 = 6.3M, 74 iterations in 0.14-0.25 s on one thread).
MAX_CELLS = 40_000_000
MIN_ROWS = 1_000  # never fewer, however wide: a reference on a few hundred rows says little
# A flattened image wider than this is not a sensible linear reference (and its float64 copy gets large).
MAX_FEATURES = 10_000
# lbfgs converges on Adult's 29k x 108 standardised features in 74 iterations; 1000 leaves room for harder tables.
MAX_ITER = 1000
# Test rows predicted at a time (3M test rows x 90 inputs would be a 2 GB float64 copy in one call).
PREDICT_ROWS = 65_536
C = 1.0  # scikit-learn's default L2 strength: on standardised and one-hot features it needs no tuning to be a floor


@dataclass(frozen=True)
class Reference:
    """The reference's test-row predictions (None when skipped), its facts for the section's data, and notes."""

    predictions: np.ndarray | None
    data: dict[str, Any]
    notes: list[str] = field(default_factory=list)


def _skipped(reason: str) -> Reference:
    return Reference(None, {"skipped": reason}, [f"no reference model: {reason}"])


def _flat(x: torch.Tensor) -> np.ndarray:
    # the model's own float32 features, no copy: on Adult float64 took 1.8x as long (0.49 s against 0.28 s, 80
    # against 74 iterations) for the same test accuracy to 1e-4
    return x.reshape(len(x), -1).numpy()


def _rows(n: int, seed: int, max_rows: int) -> np.ndarray | None:
    """The training rows the reference is fitted on: all (None), or a sorted seeded subsample of ``max_rows``."""
    if n <= max_rows:
        return None
    return np.sort(np.random.default_rng(seed).choice(n, max_rows, replace=False))


def _fit(x: np.ndarray, y: np.ndarray, seed: int, max_iter: int) -> tuple[LogisticRegression, float]:
    """Fit quietly: a ConvergenceWarning becomes a note, never terminal output; one BLAS thread (see README)."""
    model = LogisticRegression(solver="lbfgs", C=C, max_iter=max_iter, random_state=seed)
    started = time.perf_counter()
    # One thread: the result does not depend on the machine's core count, and on a busy machine threads only
    # oversubscribe it (Adult: 0.7 s with one, 6 s with two at load 7 on 2 cores).
    with warnings.catch_warnings(), threadpool_limits(limits=1, user_api="blas"):
        warnings.simplefilter("ignore", ConvergenceWarning)
        model.fit(x, y)
    return model, time.perf_counter() - started


def fit_reference(
    *,
    train_x: torch.Tensor,
    train_y: torch.Tensor,
    test_x: torch.Tensor,
    seed: int,
    max_rows: int = MAX_ROWS,
    max_iter: int = MAX_ITER,
) -> Reference:
    """Fit the reference on the training rows (flattened when images) and predict the test rows."""
    if len(train_y) == 0:
        return _skipped("this evaluation has no training rows (every row of the data is evaluation data)")
    width = int(np.prod(train_x.shape[1:]))
    if not 0 < width <= MAX_FEATURES:
        return _skipped(f"{width:,} input features (flattened); expected 1 to {MAX_FEATURES:,}")
    x, y = _flat(train_x), train_y.numpy()
    classes = max(len(np.unique(y)), 2)
    rows = _rows(len(y), seed, min(max_rows, max(MIN_ROWS, MAX_CELLS // (width * classes))))
    if rows is not None:
        x, y = x[rows], y[rows]
    if len(np.unique(y)) < 2:  # a rare class can also vanish from a subsample
        return _skipped("the training rows it would be fitted on hold a single class")
    model, fit_s = _fit(x, y, seed, max_iter)
    iterations = int(np.max(model.n_iter_))
    data = {
        "model": "LogisticRegression",
        "solver": "lbfgs",
        "C": C,
        "max_iter": max_iter,
        "iterations": iterations,
        "converged": iterations < max_iter,
        "train_rows": len(y),
        "train_rows_available": len(train_y),
        "features": width,
        "flattened": train_x.dim() > 2,
        "fit_s": fit_s,
    }
    logger.info("reference logistic regression fitted in %.2f s (%d iterations)", fit_s, iterations)
    return Reference(predict_in_chunks(model, _flat(test_x)), data, _notes(data))


def predict_in_chunks(
    model: LogisticRegression, x: np.ndarray, *, chunk_rows: int = PREDICT_ROWS
) -> np.ndarray:
    """``model.predict`` a block of rows at a time: scikit-learn would make a float64 copy of all of them at once."""
    if len(x) <= chunk_rows:
        return model.predict(x)
    return np.concatenate(
        [model.predict(x[start : start + chunk_rows]) for start in range(0, len(x), chunk_rows)]
    )


def _notes(data: dict[str, Any]) -> list[str]:
    """What a reader must know about how the reference was fitted."""
    notes = [
        f"reference: a logistic regression (L2, C={data['C']:g}, lbfgs) fitted on {data['train_rows']:,} training "
        f"rows of the model's own {data['features']:,} input features"
        + (" (images flattened to pixels)" if data["flattened"] else "")
        + f" in {data['fit_s']:.2f} s"
    ]
    if data["train_rows"] < data["train_rows_available"]:
        notes.append(
            f"the reference was fitted on a seeded subsample of {data['train_rows']:,} of the "
            f"{data['train_rows_available']:,} training rows (its cost is capped at {MAX_ROWS:,} rows and "
            f"{MAX_CELLS:,} rows x features x classes)"
        )
    if not data["converged"]:
        notes.append(
            f"the reference's solver stopped at its limit of {data['max_iter']} iterations before converging: "
            "its figures may understate what a linear model reaches"
        )
    return notes
