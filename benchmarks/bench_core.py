"""Core training loop vs a tutorial-style PyTorch loop on Adult (same MLP, same epochs): accuracy and throughput."""

import argparse
import time

import torch
from _common import device_line
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from audit.config import RunConfig
from audit.data import load_dataset
from audit.engine import predict_logits, train
from audit.models import MLP, model_spec
from audit.training import attach_scheduler, build_setup, seed_everything

DEFAULTS = RunConfig()


def plain_loop(data, epochs: int) -> tuple[float, float]:
    """DataLoader over a TensorDataset, batch 64, Adam: how most tutorials write it."""
    seed_everything(0)
    model = MLP(
        input_dim=data.input_shape[0], num_classes=2, hidden=DEFAULTS.hidden, dropout=DEFAULTS.dropout
    )
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    loader = DataLoader(TensorDataset(data.train.x, data.train.y), batch_size=64, shuffle=True)
    seen, t0 = 0, time.perf_counter()
    for _ in range(epochs):
        model.train()
        for xb, yb in loader:
            opt.zero_grad()
            loss = nn.functional.cross_entropy(model(xb), yb)
            loss.backward()
            opt.step()
            seen += len(xb)
    elapsed = time.perf_counter() - t0
    acc = float(
        (predict_logits(model, data.test.x, torch.device("cpu")).argmax(1) == data.test.y).float().mean()
    )
    return acc, seen / elapsed


def core_loop(data, epochs: int) -> tuple[float, float, int]:
    """The core with its defaults (batch size and learning rate chosen from the data size)."""
    config = RunConfig(epochs=epochs, patience=None)
    gen = seed_everything(0)
    spec = model_spec(
        name="mlp",
        input_shape=data.input_shape,
        num_classes=2,
        hidden=DEFAULTS.hidden,
        channels=[],
        dropout=DEFAULTS.dropout,
    )
    setup = build_setup(config, data, torch.device("cpu"), gen, spec)
    attach_scheduler(setup)
    result = train(setup, progress=False)
    acc = float(
        (predict_logits(setup.base_model, data.test.x, torch.device("cpu")).argmax(1) == data.test.y)
        .float()
        .mean()
    )
    return acc, result.samples_seen / result.train_time_s, config.batch_size


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--epochs", type=int, default=10)
    args = parser.parse_args()
    data = load_dataset(RunConfig())
    print(device_line())
    plain_acc, plain_rate = plain_loop(data, args.epochs)
    core_acc, core_rate, batch = core_loop(data, args.epochs)
    print(f"MLP {DEFAULTS.hidden}, dropout {DEFAULTS.dropout:g}, Adam, {args.epochs} epochs, Adult")
    print(
        f"plain loop (DataLoader, batch 64, lr 1e-3): test accuracy {plain_acc:.4f}, {plain_rate:,.0f} samples/s"
    )
    print(
        f"rai-audit core (tensor slices, defaults: batch {batch}): test accuracy {core_acc:.4f}, "
        f"{core_rate:,.0f} samples/s"
    )
    print(
        f"throughput ratio core/plain: {core_rate / plain_rate:.1f}x; "
        f"accuracy difference {100 * (core_acc - plain_acc):+.2f} points"
    )


if __name__ == "__main__":
    main()
