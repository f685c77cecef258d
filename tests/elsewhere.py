"""A model trained outside rai-audit, with plain torch: its factory module, its tables, its files (for the tests)."""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from torch import nn

from tests.conftest import make_loans

FEATURES = ["income", "age", "is_edu"]  # the model's input columns, in its order
FACTORY_MODULE = "elsewhere_models"
FACTORY_SOURCE = """
from torch import nn


def factory(input_shape, num_classes):
    return nn.Sequential(nn.Linear(input_shape[0], 16), nn.ReLU(), nn.Linear(16, num_classes))


def wide(input_shape, num_classes):
    return nn.Sequential(nn.Linear(input_shape[0], 32), nn.ReLU(), nn.Linear(32, num_classes))
"""


@dataclass
class Elsewhere:
    """The files a team's own training script leaves behind, and the model's own test accuracy."""

    folder: Path
    train_csv: Path
    test_csv: Path
    weights: Path
    torchscript: Path
    exported: Path
    model: nn.Module
    test: pd.DataFrame
    accuracy: float


def ready_tables(n: int = 800) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Loans rows whose feature columns are already model inputs (scaled numbers), plus sex and the 0/1 target."""
    frame = make_loans(n)
    ready = pd.DataFrame(
        {
            "sex": frame["sex"],  # before the features: file order is not the model's order
            "income": ((frame["income"].fillna(50) - 50) / 15).astype("float32"),
            "age": ((frame["age"] - 50) / 20).astype("float32"),
            "is_edu": (frame["purpose"] == "edu").astype("float32"),
            "label": (frame["defaulted"] == "yes").astype(int),
        }
    )
    cut = int(0.75 * n)
    return ready.iloc[:cut].reset_index(drop=True), ready.iloc[cut:].reset_index(drop=True)


def train_elsewhere(folder: Path) -> Elsewhere:
    """Write the factory module into ``folder``, train it with a plain torch loop, save state_dict and programs."""
    (folder / f"{FACTORY_MODULE}.py").write_text(FACTORY_SOURCE)
    sys.path.insert(0, str(folder))
    try:
        from elsewhere_models import factory
    finally:
        sys.path.remove(str(folder))
    train, test = ready_tables()
    torch.manual_seed(0)
    model = factory((len(FEATURES),), 2)
    x, y = torch.tensor(train[FEATURES].to_numpy()), torch.tensor(train["label"].to_numpy())
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(150):
        optimizer.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        optimizer.step()
    model.eval()
    x_test = torch.tensor(test[FEATURES].to_numpy())
    with torch.no_grad():
        accuracy = float(np.mean(model(x_test).argmax(1).numpy() == test["label"].to_numpy()))
    files = {
        name: folder / name for name in ("train.csv", "test.csv", "weights.pt", "model_ts.pt", "model.pt2")
    }
    train.to_csv(files["train.csv"], index=False)
    test.to_csv(files["test.csv"], index=False)
    torch.save(model.state_dict(), files["weights.pt"])
    torch.jit.script(model).save(str(files["model_ts.pt"]))
    batch = torch.export.Dim("batch")
    torch.export.save(
        torch.export.export(model, (x_test[:4],), dynamic_shapes=({0: batch},)), files["model.pt2"]
    )
    return Elsewhere(folder, *files.values(), model=model, test=test, accuracy=accuracy)
