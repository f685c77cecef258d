"""1 vs N training processes on this machine (`audit train --nproc-per-node`): samples/s and scaling efficiency.

Runs interleaved (1, N, 1, N, ...) so load on a shared machine hits both alike; prints best and median of each.
On the CPU the processes use gloo and share the cores (OMP threads split between them: torchrun's rule); on CUDA
each process takes one GPU (NCCL), so N processes need N GPUs. Only the core trains (AUDIT_PLUGINS empty, or the
privacy plugin alone with --dp): the audits after training run once on rank 0 and are not what is measured.
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import torch
from _common import device_line


def one_run(nproc: int, args: argparse.Namespace, device: str, out: Path) -> float:
    """Training samples/s (all processes together) of one `audit train` run, from its report."""
    flags = [
        "--data",
        args.data,
        "--epochs",
        str(args.epochs),
        "--device",
        device,
        "--quiet",
        "--out",
        str(out),
    ]
    flags += ["--no-early-stopping", "--batch-size", str(args.batch_size), "--hidden", args.hidden]
    env = {**os.environ, "AUDIT_PLUGINS": ""}
    if args.dp:
        flags += ["--dp", "--noise-multiplier", "1.0", "--mia-reference-models", "0", "--mia-samples", "50"]
        env["AUDIT_PLUGINS"] = "privacy"
    command = [sys.executable, "-m", "audit", "train", *flags, "--nproc-per-node", str(nproc)]
    done = subprocess.run(command, env=env, capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(command)} failed: {done.stderr.strip()[-500:]}")
    report = json.loads((out / "report.json").read_text())
    return float(report["metrics"]["efficiency.train_samples_per_s"])


def measure(args: argparse.Namespace, device: str, counts: tuple[int, ...]) -> None:
    """Interleaved rounds of each process count; one printed row per count, then the scaling efficiency."""
    rates: dict[int, list[float]] = {n: [] for n in counts}
    with tempfile.TemporaryDirectory() as tmp:
        for round_ in range(args.repeats):
            for nproc in rates:
                rates[nproc].append(one_run(nproc, args, device, Path(tmp) / f"r{round_}-{nproc}"))
    mode = f"{'DP-SGD' if args.dp else 'plain'} batch {args.batch_size} hidden {args.hidden}"
    for nproc, values in rates.items():
        print(
            f"{device} {mode} {nproc} process(es): best {max(values):,.0f} samples/s, "
            f"median {statistics.median(values):,.0f} (runs: {', '.join(f'{v:,.0f}' for v in values)})"
        )
    if len(counts) < 2:
        return
    best = max(rates[args.nproc]) / max(rates[1])
    median = statistics.median(rates[args.nproc]) / statistics.median(rates[1])
    print(
        f"{device} {mode} speed-up {args.nproc} vs 1: best {best:.2f}x, median {median:.2f}x; scaling efficiency "
        f"(speed-up / {args.nproc}) best {best / args.nproc:.0%}, median {median / args.nproc:.0%}"
    )


def main() -> None:
    """Parse the options and measure on the CPU, then on CUDA when there are enough GPUs."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--data", default="adult")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--hidden", default="128,64", help="MLP hidden sizes (the default model's)")
    parser.add_argument("--nproc", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument(
        "--dp", action="store_true", help="DP-SGD (Poisson batches, clipped sums all-reduced)"
    )
    args = parser.parse_args()
    print(device_line(), f"; {os.cpu_count()} CPU cores", sep="")
    measure(args, "cpu", (1, args.nproc))
    gpus = torch.cuda.device_count()
    if gpus >= args.nproc:
        measure(args, "cuda", (1, args.nproc))
    elif gpus:
        print(f"cuda: {gpus} GPU(s); {args.nproc} processes need one GPU each (NCCL): 1 process only")
        measure(args, "cuda", (1,))


if __name__ == "__main__":
    main()
