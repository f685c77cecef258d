"""Time per epoch of the core on Adult without DP and with DP-SGD (Opacus), same model and batch: the ratio."""

import argparse

import torch
from _common import device_line

from audit.config import RunConfig
from audit.data import load_dataset
from audit.engine import train
from audit.models import model_spec
from audit.training import attach_scheduler, build_setup, seed_everything
from audit_plugins import privacy


def epoch_time(data, *, dp: bool, epochs: int, batch_size: int, one_pass: bool = True) -> float:
    options = {"dp": True, "noise_multiplier": 1.0, "max_grad_norm": 1.0, "accountant": "rdp"} if dp else {}
    config = RunConfig(epochs=epochs, patience=None, lr=3e-3, batch_size=batch_size, options=options)
    gen = seed_everything(0)
    spec = model_spec(
        name="mlp",
        input_shape=data.input_shape,
        num_classes=2,
        hidden=[128, 64],
        channels=[],
        dropout=RunConfig().dropout,
    )
    setup = build_setup(config, data, torch.device("cpu"), gen, spec)
    supports = privacy.dp_clipping.supports
    if not one_pass:  # force Opacus' GradSampleModule path, for reference
        privacy.dp_clipping.supports = lambda model, sample: False
    try:
        privacy.audit_prepare_training(setup=setup)
    finally:
        privacy.dp_clipping.supports = supports
    attach_scheduler(setup)
    result = train(setup, progress=False)
    return result.train_time_s / epochs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=512)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    data = load_dataset(RunConfig())
    print(device_line())
    runs = {"plain": [], "private": [], "hooks": []}
    for _ in range(args.repeats):  # interleaved, best of each: this machine is noisy
        runs["plain"].append(epoch_time(data, dp=False, epochs=args.epochs, batch_size=args.batch_size))
        runs["private"].append(epoch_time(data, dp=True, epochs=args.epochs, batch_size=args.batch_size))
    runs["hooks"].append(
        epoch_time(data, dp=True, epochs=args.epochs, batch_size=args.batch_size, one_pass=False)
    )
    plain, private, hooks = (min(v) for v in runs.values())
    print(
        f"non-private epoch: {plain:.3f} s; DP-SGD epoch: {private:.3f} s one-pass clipping, {hooks:.3f} s Opacus "
        f"GradSampleModule (batch {args.batch_size}, MLP 128-64, Adult)"
    )
    print(
        f"DP/non-DP epoch time ratio: {private / plain:.2f}x (Opacus GradSampleModule path: {hooks / plain:.1f}x)"
    )


if __name__ == "__main__":
    main()
