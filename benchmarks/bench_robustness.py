"""A 5-value PGD-10 sweep (cascaded, rows retired as they fall) vs torchattacks' PGD run independently at each epsilon; prints the cost ratio."""

import argparse
import time

import torch

from _common import device_line
from audit.config import RunConfig
from audit.data import load_dataset
from audit.engine import attach_scheduler, train
from audit.models import model_spec
from audit.runner import build_setup, seed_everything
from audit_plugins.robustness import attack_target, independent, sweep

EPS = [0.02, 0.05, 0.1, 0.2, 0.3]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--random-start", action="store_true")
    parser.add_argument("--repeats", type=int, default=15)
    args = parser.parse_args()
    config = RunConfig(data="digits", epochs=15, patience=None)
    data = load_dataset(config)
    gen = seed_everything(0)
    spec = model_spec(name="cnn", input_shape=data.input_shape, num_classes=10, hidden=[], channels=[16, 32], dropout=0.1)
    setup = build_setup(config, data, torch.device("cpu"), gen, spec)
    attach_scheduler(setup)
    train(setup, progress=False)
    model = setup.base_model.eval()
    x, y = data.test.x, data.test.y
    target = attack_target(model, data, x, perturb_categorical=False)
    kw = dict(steps=10, alpha=0.25, random_start=args.random_start, seed=0)
    print(device_line())
    t_fresh, t_cascade = [], []
    for _ in range(args.repeats):  # interleaved, best of each: this machine is noisy
        t0 = time.perf_counter()
        fresh = independent(target, y, "pgd", EPS, **kw)
        t_fresh.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        cascade = sweep(target, y, "pgd", EPS, **kw)
        t_cascade.append(time.perf_counter() - t0)
    t_fresh, t_cascade = min(t_fresh), min(t_cascade)
    # Machine-independent cost: rows pushed through the model (each PGD step is a forward and a backward).
    rows_seen = [0]
    hook = model.register_forward_hook(lambda module, inputs, output: rows_seen.__setitem__(0, rows_seen[0] + len(inputs[0])))
    independent(target, y, "pgd", EPS, **kw)
    rows_fresh, rows_seen[0] = rows_seen[0], 0
    sweep(target, y, "pgd", EPS, **kw)
    rows_sweep = rows_seen[0]
    hook.remove()
    print(f"digits test split, {len(y)} rows, small CNN, PGD-10 L-inf, random start {'on' if args.random_start else 'off'}")
    for eps in EPS:
        print(f"  eps {eps:<5} independent {float(fresh[eps].float().mean()):.4f}   sweep {float(cascade[eps].float().mean()):.4f}")
    higher = [e for e in EPS if cascade[e].float().mean() > fresh[e].float().mean()]
    print(f"independent: {t_fresh:.3f} s, {rows_fresh:,} rows through the model; sweep: {t_cascade:.3f} s, {rows_sweep:,} rows")
    print(f"cost ratio sweep/independent: time {t_cascade / t_fresh:.2f}, model rows {rows_sweep / rows_fresh:.2f}")
    print(f"epsilons where the sweep reported higher robust accuracy: {higher or 'none'}")


if __name__ == "__main__":
    main()
