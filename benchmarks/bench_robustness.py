"""A 5-value PGD-10 sweep (cascaded, rows retired as they fall) vs torchattacks' PGD run independently at each
epsilon, on digits (small CNN) and Adult (MLP); prints the cost ratios and how much work the cascade could skip."""

import argparse
import time

import torch
from _common import device_line

from audit.config import RunConfig
from audit.data import load_dataset
from audit.engine import train
from audit.models import model_spec
from audit.training import attach_scheduler, build_setup, seed_everything
from audit_plugins.robustness import DEFAULT_EPS
from audit_plugins.robustness_attacks import attack_target, clean_pass, independent, sweep

CASES = {
    # name: (config, model spec overrides, rows attacked)
    "digits": (
        dict(data="digits", epochs=15, patience=None),
        dict(name="cnn", hidden=[], channels=[16, 32], dropout=0.1),
        None,
    ),
    "adult": (
        dict(epochs=5, patience=None),
        dict(name="mlp", hidden=[64, 64], channels=[], dropout=0.0),
        1000,
    ),
}


def trained_target(case: str):
    """Train the case's model on its training split; return the attack target over its test rows and their labels."""
    overrides, spec_kw, rows = CASES[case]
    config = RunConfig(**overrides)
    data = load_dataset(config)
    gen = seed_everything(0)
    spec = model_spec(input_shape=data.input_shape, num_classes=data.num_classes, **spec_kw)
    setup = build_setup(config, data, torch.device("cpu"), gen, spec)
    attach_scheduler(setup)
    train(setup, progress=False)
    model = setup.base_model.eval()
    pick = (
        torch.randperm(len(data.test), generator=torch.Generator().manual_seed(1))[:rows]
        if rows
        else torch.arange(len(data.test))
    )
    x, y = data.test.x[pick], data.test.y[pick]
    return model, attack_target(model, data, x, perturb_categorical=False), y, DEFAULT_EPS[data.kind]


def rows_through(model, fn) -> int:
    """Rows ``fn`` pushes through ``model`` (each PGD step is a forward and a backward)."""
    seen = [0]

    def count(module, inputs, output):
        seen[0] += len(inputs[0])

    hook = model.register_forward_hook(count)
    try:
        fn()
    finally:
        hook.remove()
    return seen[0]


def run_case(case: str, repeats: int, random_start: bool) -> None:
    model, target, y, eps_list = trained_target(case)
    kw = dict(steps=10, alpha=0.25, random_start=random_start, seed=0)
    t_fresh, t_cascade = [], []
    for _ in range(repeats):  # interleaved, best of each: this machine is noisy
        t0 = time.perf_counter()
        fresh = independent(target, y, "pgd", eps_list, **kw)
        t_fresh.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        cascade = sweep(target, y, "pgd", eps_list, **kw)
        t_cascade.append(time.perf_counter() - t0)
    t_fresh, t_cascade = min(t_fresh), min(t_cascade)
    rows_fresh = rows_through(model, lambda: independent(target, y, "pgd", eps_list, **kw))
    rows_sweep = rows_through(model, lambda: sweep(target, y, "pgd", eps_list, **kw))
    correct = clean_pass(target, y, with_grad=False)[0]
    clean = float(correct.float().mean())
    # Work any exact sweep must do: a fresh attack on every row still standing at each epsilon.
    standing = [int(correct.sum())] + [int(cascade[e].sum()) for e in eps_list[:-1]]
    print(
        f"{case}: {len(y)} test rows, {type(model).__name__}, PGD-10 L-inf, eps {eps_list}, "
        f"random start {'on' if random_start else 'off'}, clean accuracy {clean:.4f}"
    )
    for eps, stand in zip(eps_list, standing):
        print(
            f"  eps {eps:<5} rows standing before it {stand:>5}   independent {float(fresh[eps].float().mean()):.4f}   "
            f"sweep {float(cascade[eps].float().mean()):.4f}"
        )
    higher = [e for e in eps_list if cascade[e].float().mean() > fresh[e].float().mean()]
    print(
        f"  (row, eps) attacks the cascade must run: {sum(standing):,} of {len(y) * len(eps_list):,} "
        f"({sum(standing) / (len(y) * len(eps_list)):.2f})"
    )
    print(
        f"  independent: {t_fresh:.3f} s, {rows_fresh:,} rows through the model; "
        f"sweep: {t_cascade:.3f} s, {rows_sweep:,} rows"
    )
    print(
        f"  cost ratio sweep/independent: time {t_cascade / t_fresh:.2f}, model rows {rows_sweep / rows_fresh:.2f}"
    )
    print(f"  epsilons where the sweep reported higher robust accuracy: {higher or 'none'}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--random-start", action="store_true")
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--case", choices=[*CASES, "all"], default="all")
    args = parser.parse_args()
    print(device_line())
    for case in CASES if args.case == "all" else [args.case]:
        run_case(case, args.repeats, args.random_start)


if __name__ == "__main__":
    main()
