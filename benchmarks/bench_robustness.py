"""A 5-value PGD-10 sweep (cascaded, rows retired as they fall) vs torchattacks' PGD run independently at each
epsilon, on digits (small CNN) and Adult (MLP), against the floor any exact sweep must reach; then AutoAttack (the
standard version, cascaded the same way) beside the PGD sweep: its cost and its robust accuracy."""

import argparse
import statistics
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
from audit_plugins.robustness_autoattack import keyed_target, sweep_family

TIME_SLACK = 1.2  # the sweep's time may exceed its share of the independent run's by this factor
CASES = {
    # name: (config, model spec overrides, rows attacked): the rows are --robustness-samples' default (1,000), or
    # the whole test split when smaller; the models are the CLI's defaults (CNN 16-32, MLP 128-64)
    "digits": (
        dict(data="digits", epochs=15, patience=None),
        dict(name="cnn", hidden=[], channels=[16, 32], dropout=0.0),
        None,
    ),
    "adult": (
        dict(epochs=5, patience=None),
        dict(name="mlp", hidden=[128, 64], channels=[], dropout=0.0),
        1000,
    ),
}


def trained_case(case: str):
    """Train the case's model on its training split; return it, the data, its attacked test rows and their labels."""
    overrides, spec_kw, rows = CASES[case]
    config = RunConfig(**overrides)
    data = load_dataset(config)
    gen = seed_everything(0)
    spec = model_spec(input_shape=data.input_shape, num_classes=data.num_classes, **spec_kw)
    setup = build_setup(config, data, torch.device("cpu"), gen, spec)
    attach_scheduler(setup)
    train(setup, progress=False)
    pick = (
        torch.randperm(len(data.test), generator=torch.Generator().manual_seed(1))[:rows]
        if rows
        else torch.arange(len(data.test))
    )
    return setup.base_model.eval(), data, data.test.x[pick], data.test.y[pick]


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


def timed(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def pgd_case(case, model, data, x, y, repeats: int, random_start: bool) -> None:
    """The PGD sweep against torchattacks run independently at each epsilon, and the floor of any exact sweep."""
    target = attack_target(model, data, x, perturb_categorical=False)
    eps_list = DEFAULT_EPS[data.kind]
    kw = dict(steps=10, alpha=0.25, random_start=random_start, seed=0)
    t_fresh, t_cascade = [], []
    for _ in range(repeats):  # interleaved, best of each: this machine is noisy
        t_fresh.append(timed(lambda: independent(target, y, "pgd", eps_list, **kw)))
        t_cascade.append(timed(lambda: sweep(target, y, "pgd", eps_list, **kw)))
    fresh, cascade = independent(target, y, "pgd", eps_list, **kw), sweep(target, y, "pgd", eps_list, **kw)
    rows_fresh = rows_through(model, lambda: independent(target, y, "pgd", eps_list, **kw))
    rows_sweep = rows_through(model, lambda: sweep(target, y, "pgd", eps_list, **kw))
    correct = clean_pass(target, y, with_grad=False)[0]
    print(
        f"{case}: {len(y)} test rows, {type(model).__name__}, PGD-10 L-inf, eps {eps_list}, "
        f"random start {'on' if random_start else 'off'}, clean accuracy {float(correct.float().mean()):.4f}"
    )
    # Work any exact sweep must do: a full attack on every row still standing at each epsilon.
    standing = [int(correct.sum())] + [int(cascade[e].sum()) for e in eps_list[:-1]]
    for eps, stand in zip(eps_list, standing):
        print(
            f"  eps {eps:<5} rows standing before it {stand:>5}   independent {float(fresh[eps].float().mean()):.4f}   "
            f"sweep {float(cascade[eps].float().mean()):.4f}"
        )
    floor = sum(standing) / (len(y) * len(eps_list))
    work, spent = rows_sweep / rows_fresh, min(t_cascade) / min(t_fresh)
    higher = [e for e in eps_list if cascade[e].float().mean() > fresh[e].float().mean()]
    pairs = len(y) * len(eps_list)
    print(
        f"  floor: (row, eps) attacks any exact sweep must run: {sum(standing):,} of {pairs:,} ({floor:.2f})"
    )
    print(
        f"  independent: {min(t_fresh):.3f} s, {rows_fresh:,} rows through the model; "
        f"sweep: {min(t_cascade):.3f} s, {rows_sweep:,} rows (best of {repeats}, interleaved)"
    )
    print(
        f"  sweep/independent: model rows {work:.2f} "
        f"(bar: <= floor {floor:.2f}: {'met' if work <= floor else 'NOT met'}); "
        f"time {spent:.2f} (bar: <= {TIME_SLACK} x floor = {TIME_SLACK * floor:.2f}: "
        f"{'met' if spent <= TIME_SLACK * floor else 'NOT met'})"
    )
    print(f"  epsilons where the sweep reported higher robust accuracy: {higher or 'none'}")


def autoattack_case(case, model, data, x, y, repeats: int) -> None:
    """AutoAttack's sweep beside PGD-10's, interleaved (P A P A ...): seconds, their ratio, robust accuracies."""
    eps_list = DEFAULT_EPS[data.kind]
    pgd_target = attack_target(model, data, x, perturb_categorical=False)
    aa_target = keyed_target(model, data, x, perturb_categorical=False, eps_max=max(eps_list))
    correct = clean_pass(pgd_target, y, with_grad=False)[0]

    def pgd():
        return sweep(pgd_target, y, "pgd", eps_list, steps=10, alpha=0.25, random_start=False, seed=0)

    def autoattack():
        return sweep_family(
            aa_target, y, "autoattack", eps_list, seed=0, num_classes=data.num_classes, correct=correct
        )

    t_pgd, t_aa = [], []
    for i in range(repeats):
        t_pgd.append(timed(pgd))
        t_aa.append(timed(autoattack))
        print(f"  {case} run {i + 1}: PGD {t_pgd[-1]:.3f} s, AutoAttack {t_aa[-1]:.2f} s", flush=True)
    ratios = [a / p for a, p in zip(t_aa, t_pgd)]
    masks, run = pgd(), autoattack()
    print(
        f"{case}: AutoAttack (standard, torchattacks 3.5.1 settings) vs the PGD-10 sweep, {len(y)} rows, "
        f"{repeats} interleaved runs"
    )
    print(
        f"  AutoAttack s: {', '.join(f'{t:.2f}' for t in t_aa)} (median {statistics.median(t_aa):.2f}); "
        f"PGD s: {', '.join(f'{t:.3f}' for t in t_pgd)} (median {statistics.median(t_pgd):.3f}); "
        f"ratio per pair {', '.join(f'{r:.0f}' for r in ratios)} (median {statistics.median(ratios):.0f}x)"
    )
    for eps in eps_list:
        pgd_acc, aa_acc = float(masks[eps].float().mean()), float(run.masks[eps].float().mean())
        print(
            f"  eps {eps:<5} PGD-10 {pgd_acc:.4f}   AutoAttack {aa_acc:.4f}   rows attacked {run.attacked[eps]:>4}   "
            f"fooled by {run.fooled_by[eps]}"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--random-start", action="store_true")
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--autoattack-repeats", type=int, default=5)
    parser.add_argument("--case", choices=[*CASES, "all"], default="all")
    parser.add_argument("--part", choices=["pgd", "autoattack", "all"], default="all")
    args = parser.parse_args()
    print(device_line())
    for case in CASES if args.case == "all" else [args.case]:
        model, data, x, y = trained_case(case)
        if args.part in ("pgd", "all"):
            pgd_case(case, model, data, x, y, args.repeats, args.random_start)
        if args.part in ("autoattack", "all"):
            autoattack_case(case, model, data, x, y, args.autoattack_repeats)


if __name__ == "__main__":
    main()
