"""A model trained by a team's own plain-PyTorch script, then audited and gated by rai-audit's Python API.

    python examples/train_elsewhere.py [--rows N] [--epochs E] [--out DIR]

The first half is what a team already has: its own preprocessing (pandas), its own model and loop (torch), a
saved state_dict. The second half hands the model and its ready-made feature table to ``audit.evaluate``
(every plugin's audit: performance, efficiency, membership inference on the training rows, fairness by sex and
race, robustness) with a release policy, and writes the report. Exit code: 0 the gate passed, 1 it failed.
The same audit from the command line, on the files this script writes:

    PYTHONPATH=examples audit evaluate --model train_elsewhere:factory --weights DIR/weights.pt \\
        --data DIR/test_ready.csv --train-data DIR/train_ready.csv --target income --sensitive sex,race \\
        --features-ready --robustness --policy DIR/policy.yaml
"""

from __future__ import annotations

import argparse
from pathlib import Path

import pandas as pd
import torch
from torch import nn

import audit
from audit.datasets import load_adult  # the UCI Adult table shipped with rai-audit (no download)

SENSITIVE = ["sex", "race"]  # kept out of the model's inputs; the audit groups rows by them
TARGET = "income"
POLICY = """rules:
  - {id: accuracy, metric: performance.accuracy, op: ">=", value: 0.8, bound: lower}
  - {id: membership-inference, metric: privacy.mia_auc, op: "<=", value: 0.6}
  - {id: parity-sex, metric: fairness.sex.demographic_parity_difference, op: "<=", value: 0.25, bound: upper}
  - {id: robustness-floor, metric: robustness.worst_group_robust_accuracy, op: ">=", value: 0.3, severity: warn}
"""


def ready_tables(rows: int) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The team's preprocessing: standardise numbers, one-hot the rest, 0/1 target; sensitive columns kept aside."""
    train, test = (frame.head(rows) for frame in load_adult()[:2])
    features = [c for c in train.columns if c not in (TARGET, *SENSITIVE)]
    numeric = [c for c in features if pd.api.types.is_numeric_dtype(train[c])]
    mean, std = train[numeric].mean(), train[numeric].std().replace(0, 1)

    def encode(frame: pd.DataFrame) -> pd.DataFrame:
        onehot = pd.get_dummies(frame[[c for c in features if c not in numeric]].astype(str), dtype="float32")
        inputs = pd.concat([((frame[numeric] - mean) / std).astype("float32"), onehot], axis=1)
        label = (frame[TARGET] == ">50K").astype(int)
        return pd.concat([frame[SENSITIVE], inputs, label.rename(TARGET)], axis=1)

    train_ready, test_ready = encode(train), encode(test)
    return train_ready, test_ready.reindex(columns=train_ready.columns, fill_value=0.0)


def factory(input_shape: tuple[int, ...], num_classes: int) -> nn.Module:
    """The team's architecture (``--model train_elsewhere:factory`` with examples/ on PYTHONPATH)."""
    return nn.Sequential(nn.Linear(input_shape[0], 64), nn.ReLU(), nn.Linear(64, num_classes))


def train_plain(train: pd.DataFrame, epochs: int) -> nn.Module:
    """A plain PyTorch loop: Adam, batches of 256, cross-entropy."""
    x = torch.tensor(train.drop(columns=[TARGET, *SENSITIVE]).to_numpy(dtype="float32"))
    y = torch.tensor(train[TARGET].to_numpy())
    torch.manual_seed(0)
    model = factory((x.shape[1],), 2)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    for _ in range(epochs):
        for batch in torch.randperm(len(y)).split(256):
            optimizer.zero_grad()
            nn.functional.cross_entropy(model(x[batch]), y[batch]).backward()
            optimizer.step()
    return model.eval()


def main() -> int:
    """Train elsewhere, save the state_dict and the ready tables, audit through the API, gate, write the report."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=None, help="use only the first N rows of each split")
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--out", default="runs/train-elsewhere")
    args = parser.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    train, test = ready_tables(args.rows)
    model = train_plain(train, args.epochs)
    torch.save(model.state_dict(), out / "weights.pt")
    train.to_csv(out / "train_ready.csv", index=False)
    test.to_csv(out / "test_ready.csv", index=False)
    (out / "policy.yaml").write_text(POLICY)
    report = audit.evaluate(
        model,
        data=test,
        train_data=train,
        target=TARGET,
        sensitive=SENSITIVE,
        policy=out / "policy.yaml",
        options={"robustness": "eval", "robustness_samples": 300},
    )
    report.write(out / "audit")
    for name in ("performance.accuracy", "privacy.mia_auc", "fairness.sex.demographic_parity_difference"):
        print(f"{name:<45} {report.metrics.get(name)}")
    print(f"gate passed: {bool(report.metrics['gate.passed'])}; report: {out / 'audit' / 'report.html'}")
    return 0 if report.metrics["gate.passed"] else 1


if __name__ == "__main__":
    raise SystemExit(main())
