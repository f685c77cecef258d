"""Time per epoch without DP and with DP-SGD, same model and batch: the ratio (Adult MLP, digits CNN).

Each repeat runs the non-private epoch (A), the one-pass clipping (B) and Opacus' GradSampleModule path (C)
in turn, A B C A B C ..., so that the machine's load drifts over all three alike; the ratios are taken
within a repeat, and the best, the median and the range over the repeats are printed.
"""

import argparse
import statistics
from dataclasses import dataclass

import torch
from _common import device_line

from audit.config import RunConfig
from audit.data import load_dataset
from audit.engine import train
from audit.models import model_spec
from audit.training import attach_scheduler, build_setup, seed_everything
from audit_plugins import privacy


@dataclass
class Case:
    """One benchmark: a data set, the model the CLI would build for it, a batch size and the epochs timed."""

    label: str
    data: str | None
    model: str
    num_classes: int
    batch_size: int
    epochs: int


def epoch_time(case: Case, data, *, dp: bool, one_pass: bool = True, device: str = "cpu") -> float:
    options = {"dp": True, "noise_multiplier": 1.0, "max_grad_norm": 1.0, "accountant": "rdp"} if dp else {}
    config = RunConfig(
        epochs=case.epochs, patience=None, lr=3e-3, batch_size=case.batch_size, options=options
    )
    gen = seed_everything(0)
    spec = model_spec(
        name=case.model,
        input_shape=data.input_shape,
        num_classes=case.num_classes,
        hidden=[128, 64],
        channels=RunConfig().channels,
        dropout=RunConfig().dropout,
    )
    setup = build_setup(config, data, torch.device(device), gen, spec)
    supports = privacy.dp_clipping.supports
    if not one_pass:  # force Opacus' GradSampleModule path, for reference
        privacy.dp_clipping.supports = lambda model, sample: False
    try:
        privacy.audit_prepare_training(setup=setup)
    finally:
        privacy.dp_clipping.supports = supports
    if dp and one_pass != (setup.artifacts["privacy"].clipper is not None):
        raise RuntimeError(f"{case.label}: the DP path taken is not the one asked for")
    attach_scheduler(setup)
    result = train(setup, progress=False)
    return result.train_time_s / case.epochs


def run_case(case: Case, repeats: int, device: str = "cpu") -> None:
    data = load_dataset(RunConfig(data=case.data) if case.data else RunConfig())
    runs: dict[str, list[float]] = {"plain": [], "one-pass": [], "opacus": []}
    for _ in range(repeats):  # interleaved: this machine is noisy
        runs["plain"].append(epoch_time(case, data, dp=False, device=device))
        runs["one-pass"].append(epoch_time(case, data, dp=True, device=device))
        runs["opacus"].append(epoch_time(case, data, dp=True, one_pass=False, device=device))
    plain, private, hooks = (min(v) for v in runs.values())
    print(
        f"{case.label}: non-private epoch {plain:.4f} s; DP-SGD epoch {private:.4f} s one-pass clipping, "
        f"{hooks:.4f} s Opacus GradSampleModule (best of {repeats}, batch {case.batch_size}, "
        f"{case.epochs} epochs a run)"
    )
    for name in ("one-pass", "opacus"):
        paired = [d / p for d, p in zip(runs[name], runs["plain"])]
        print(
            f"  {name} DP/non-DP epoch time ratio: best-of {min(runs[name]) / plain:.2f}x, median "
            f"{statistics.median(paired):.2f}x (range {min(paired):.2f} to {max(paired):.2f} over {repeats} "
            "interleaved repeats)"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--case", choices=["adult", "digits", "both"], default="both")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--mlp-epochs", type=int, default=3)
    parser.add_argument("--mlp-batch-size", type=int, default=512)
    parser.add_argument("--cnn-epochs", type=int, default=10)
    # the CLI's default batch for digits' 1,293 training rows
    parser.add_argument("--cnn-batch-size", type=int, default=128)
    parser.add_argument("--threads", type=int, default=None, help="torch threads [torch's default]")
    parser.add_argument("--device", default="cpu", help="cpu or cuda [cpu]")
    args = parser.parse_args()
    if args.threads:  # one thread suffers least from other processes on a shared machine
        torch.set_num_threads(args.threads)
    print(device_line())
    cases = []
    if args.case in ("adult", "both"):
        cases.append(Case("Adult, MLP 128-64", None, "mlp", 2, args.mlp_batch_size, args.mlp_epochs))
    if args.case in ("digits", "both"):
        cases.append(
            Case("digits, SmallCNN 16-32", "digits", "cnn", 10, args.cnn_batch_size, args.cnn_epochs)
        )
    for case in cases:
        run_case(case, args.repeats, args.device)


if __name__ == "__main__":
    main()
