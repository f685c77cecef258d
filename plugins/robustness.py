"""Robustness plugin: FGSM and PGD (L-inf, L2) through torchattacks, cascaded epsilon sweeps, per-group robust
accuracy, gradient-masking checks, and PGD adversarial training (the attack machinery is in ``robustness_attacks``)."""

from __future__ import annotations

import argparse
import logging
from typing import Any

import numpy as np
import torch
from torch import nn

from audit import AuditError, hookimpl
from audit.config import CliOption, RunConfig
from audit.data import Dataset
from audit.engine import TrainingSetup
from audit.evaluation import EvalContext
from audit.progress import progress_bar
from audit.report import Figure, MetricSpec, Section, Series, Table, metric_segment
from audit_plugins.robustness_attacks import (
    AttackTarget,
    FeatureView,
    attack_target,
    check_perturbable,
    clean_pass,
    correct_mask,
    independent,
    make_attack,
    sweep,
)

log = logging.getLogger(__name__)
ATTACKS = ("fgsm", "pgd", "pgd-l2")
TAGS = ("EU AI Act Art. 15", "NIST AI RMF MEASURE 2.7")
DEFAULT_EPS = {"tabular": [0.05, 0.1, 0.25, 0.5, 1.0], "image": [0.02, 0.05, 0.1, 0.2, 0.3]}
TOLERANCE = 0.01  # robust-accuracy slack for the sanity checks (sampling noise of the subset)


def _floats(value: str) -> list[float]:
    try:
        return [float(v) for v in value.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers, got {value!r}") from None


@hookimpl
def audit_cli_options() -> list[CliOption]:
    return [
        CliOption(
            ("--robustness",),
            dict(
                nargs="?",
                const="eval",
                choices=["eval", "adv-train"],
                default=None,
                help="evaluate adversarial robustness; 'adv-train' also trains with PGD examples",
            ),
        ),
        CliOption(
            ("--attack",),
            dict(default=None, help=f"attacks, comma-separated: {', '.join(ATTACKS)} [fgsm,pgd]"),
        ),
        CliOption(
            ("--eps",),
            dict(
                type=_floats,
                default=None,
                help="epsilons to sweep (standardised units for tabular data, pixel units for images)",
            ),
        ),
        CliOption(("--pgd-steps",), dict(type=int, default=None, help="PGD steps [10]")),
        CliOption(
            ("--pgd-alpha",),
            dict(type=float, default=None, help="PGD step size as a fraction of epsilon [0.25]"),
        ),
        CliOption(
            ("--random-start",),
            dict(action="store_true", default=False, help="PGD starts from a random point in the ball"),
        ),
        CliOption(
            ("--robustness-samples",),
            dict(type=int, default=None, help="seeded subset of test rows to attack [1000]"),
        ),
        CliOption(
            ("--adv-eps",),
            dict(type=float, default=None, help="epsilon for --robustness adv-train [the middle --eps]"),
            commands=("train",),
        ),
        CliOption(
            ("--perturb-categorical",),
            dict(
                action="store_true",
                default=False,
                help="also perturb one-hot columns (off: only numeric features move)",
            ),
        ),
    ]


# Options that mean nothing without --robustness, and the defaults they take with it.
OPTION_FLAGS = {
    "--attack": "attack",
    "--eps": "eps",
    "--pgd-steps": "pgd_steps",
    "--pgd-alpha": "pgd_alpha",
    "--random-start": "random_start",
    "--robustness-samples": "robustness_samples",
    "--adv-eps": "adv_eps",
    "--perturb-categorical": "perturb_categorical",
}
OPTION_DEFAULTS = {"attack": "fgsm,pgd", "pgd_steps": 10, "pgd_alpha": 0.25, "robustness_samples": 1000}


@hookimpl
def audit_configure(config: RunConfig) -> None:
    mode = config.option("robustness")
    if mode is None:
        config.refuse_without("--robustness", OPTION_FLAGS)
        return
    if mode != "adv-train" and config.option("adv_eps") is not None:
        raise AuditError("--adv-eps only applies with --robustness adv-train")
    config.default_options(OPTION_DEFAULTS)
    attacks = [a.strip() for a in str(config.option("attack")).split(",") if a.strip()]
    unknown = [a for a in attacks if a not in ATTACKS]
    if unknown:
        raise AuditError(
            f"--attack {','.join(unknown)!r} is unknown; expected a list of {', '.join(ATTACKS)}"
        )
    if not attacks:
        raise AuditError("--attack needs at least one attack")
    config.options["attack"] = ",".join(attacks)
    eps = config.option("eps")
    if eps is not None and (not eps or any(not e > 0 for e in eps)):
        raise AuditError(f"--eps must be positive numbers, got {eps}")
    if config.option("pgd_steps") < 1:
        raise AuditError("--pgd-steps must be at least 1")
    if not config.option("pgd_alpha") > 0:
        raise AuditError(
            f"--pgd-alpha must be a positive fraction of epsilon, got {config.option('pgd_alpha')}"
        )
    if config.option("adv_eps") is not None and not config.option("adv_eps") > 0:
        raise AuditError(f"--adv-eps must be positive, got {config.option('adv_eps')}")
    if config.option("robustness_samples") < 1:
        raise AuditError("--robustness-samples must be at least 1")
    if mode == "adv-train":
        if config.option("dp", False):
            raise AuditError(
                "--robustness adv-train cannot be combined with --dp: the attack's extra backward passes would "
                "pass through Opacus' per-sample gradient hooks"
            )
        if config.command == "evaluate":
            raise AuditError("--robustness adv-train trains a model; use 'audit train'")


def eps_segment(eps: float) -> str:
    """An epsilon as one dotted segment of a metric name: 0.1 -> eps_0p1."""
    return "eps_" + f"{eps:g}".replace("-", "m").replace(".", "p").replace("+", "")


def curve_auc(eps_list: list[float], accuracies: list[float], clean: float) -> float:
    """Area under accuracy against epsilon from 0 (clean) to the largest epsilon, divided by that epsilon."""
    xs, ys = [0.0] + list(eps_list), [clean] + list(accuracies)
    return float(np.trapezoid(ys, xs) / xs[-1]) if xs[-1] > 0 else clean


def _eps_list(config: RunConfig, dataset: Dataset) -> list[float]:
    return sorted(config.option("eps") or DEFAULT_EPS[dataset.kind])


@hookimpl
def audit_prepare_training(setup: TrainingSetup) -> None:
    config = setup.config
    if config.option("robustness") is None:
        return
    check_perturbable(
        setup.dataset, perturb_categorical=config.option("perturb_categorical", False)
    )  # before any training time
    if config.option("robustness") != "adv-train":
        return
    eps_list = _eps_list(config, setup.dataset)
    eps = config.option("adv_eps") or eps_list[len(eps_list) // 2]
    steps, alpha = config.option("pgd_steps"), config.option("pgd_alpha")
    model, dataset = setup.model, setup.dataset
    perturb_categorical = config.option("perturb_categorical", False)

    def adversarial_batch(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        target = attack_target(model, dataset, x, perturb_categorical=perturb_categorical)
        rows = torch.arange(len(y), device=x.device)
        adv = make_attack(
            "pgd", target.module, eps / target.eps_scale, steps=steps, alpha=alpha, random_start=True
        )(target.select(rows), y)
        return (
            target.module.to_input(adv).detach() if isinstance(target.module, FeatureView) else adv.detach()
        )

    setup.batch_transform = adversarial_batch
    setup.artifacts["robustness"] = {"adv_eps": eps, "adv_steps": steps}
    setup.notes.append(
        f"adversarial training: every batch replaced by PGD-{steps} examples at epsilon {eps:g} (L-inf, random start)"
    )


@hookimpl
def audit_checkpoint_metadata(setup: TrainingSetup) -> dict[str, Any] | None:
    info = setup.artifacts.get("robustness")
    return {"robustness": info} if info else None


@hookimpl
def audit_evaluate(ctx: EvalContext) -> Section | None:
    config = ctx.config
    if config.option("robustness") is None:
        return None
    data = ctx.dataset
    attacks = config.option("attack").split(",")
    eps_list = _eps_list(config, data)
    steps, alpha, random_start = (
        config.option("pgd_steps"),
        config.option("pgd_alpha"),
        config.option("random_start", False),
    )
    generator = torch.Generator().manual_seed(ctx.seed + 31337)
    n = min(len(data.test), config.option("robustness_samples"))
    rows = torch.randperm(len(data.test), generator=generator)[:n]
    x, y = data.test.x[rows].to(ctx.device), data.test.y[rows].to(ctx.device)
    model = ctx.model.eval()
    target = attack_target(model, data, x, perturb_categorical=config.option("perturb_categorical", False))
    clean_mask, clean_grad = clean_pass(target, y, with_grad=True)  # shared by every PGD sweep's first step
    section = Section("robustness", "Adversarial robustness")
    clean = section.add_proportion("clean_accuracy", int(clean_mask.sum()), n)
    section.add_metric("samples", n)
    curves: dict[str, list[float]] = {}
    masks_by_attack: dict[str, dict[float, torch.Tensor]] = {}
    rows_table = []
    bar = progress_bar(
        total=len(attacks) * len(eps_list), desc="attacks", unit="eps", enabled=not config.quiet, leave=False
    )
    for attack in attacks:
        bar.set_postfix_str(attack)
        # FGSM runs fresh at every epsilon so its raw curve can reveal gradient masking; PGD sweeps (see sweep: less work, never weaker).
        kw = dict(steps=steps, alpha=alpha, random_start=random_start, seed=ctx.seed)
        if attack == "fgsm":
            masks = independent(target, y, attack, eps_list, **kw)
        else:
            masks = sweep(target, y, attack, eps_list, clean=(clean_mask, clean_grad), **kw)
        bar.update(len(eps_list))
        masks_by_attack[attack] = masks
        accs = [
            section.add_proportion(f"{attack}.{eps_segment(eps)}.robust_accuracy", int(masks[eps].sum()), n)
            for eps in eps_list
        ]
        curves[attack] = accs
        for eps, acc in zip(eps_list, accs):
            success = 1 - acc / clean if clean > 0 else 0.0
            section.add_metric(f"{attack}.{eps_segment(eps)}.attack_success_rate", success)
            name = f"robustness.{attack}.{eps_segment(eps)}.robust_accuracy"
            rows_table.append(
                [
                    attack,
                    eps,
                    acc,
                    section.metrics[f"{name}.ci_low"],
                    section.metrics[f"{name}.ci_high"],
                    success,
                ]
            )
        section.add_metric(f"{attack}.auc", curve_auc(eps_list, accs, clean))
    bar.close()
    section.tables.append(
        Table(
            "Robust accuracy per attack and epsilon",
            ["attack", "epsilon", "robust accuracy", "95% low", "95% high", "attack success rate"],
            rows_table,
        )
    )
    section.figures.append(
        Figure(
            "Accuracy under attack",
            "line",
            f"epsilon ({target.unit})",
            "accuracy",
            [Series(a, [0.0] + eps_list, [clean] + curves[a]) for a in attacks],
        )
    )
    _groups(ctx, section, rows, masks_by_attack, eps_list, clean_mask)
    _sanity_checks(ctx, section, target, y, curves, eps_list, steps, alpha)
    section.notes.append(
        f"epsilon is in {target.unit}; L-inf for fgsm/pgd, L2 for pgd-l2; {n} seeded test rows; "
        f"PGD {steps} steps of {alpha:g}*epsilon, random start {'on' if random_start else 'off'}"
    )
    if data.kind == "tabular":
        section.notes.append(
            "one-hot (categorical) columns are left unperturbed"
            if not config.option("perturb_categorical", False)
            else "one-hot columns were perturbed as continuous values (--perturb-categorical)"
        )
        section.notes.append("perturbed values stay within the range each feature took in the training split")
    if config.option("robustness") == "adv-train" and ctx.training is not None:
        _adv_baseline(ctx, section, x, y, steps=steps, alpha=alpha, random_start=random_start)
    return section


def _groups(
    ctx: EvalContext,
    section: Section,
    rows: torch.Tensor,
    masks: dict[str, dict[float, torch.Tensor]],
    eps_list: list[float],
    clean_mask: torch.Tensor,
) -> None:
    if not ctx.dataset.sensitive:
        return
    strongest = "pgd" if "pgd" in masks else next(iter(masks))
    eps_ref = eps_list[len(eps_list) // 2]
    # (rows, epsilons) correct masks per attack, moved off the device once
    stacked = {a: torch.stack([m[e] for e in eps_list], 1).cpu().numpy() for a, m in masks.items()}
    robust = stacked[strongest][:, len(eps_list) // 2]
    clean = clean_mask.cpu().numpy()
    table, curves, worst = [], [], (2.0, 0, 0)  # worst: (accuracy, robust rows, rows) of the worst group
    for feature in ctx.dataset.sensitive:
        groups = ctx.dataset.test.groups[feature].to_numpy()[rows.numpy()]
        series = []
        for group in sorted(set(groups)):
            sel = groups == group
            hits, size = int(robust[sel].sum()), int(sel.sum())
            acc = section.add_proportion(f"{feature}.{metric_segment(group)}.robust_accuracy", hits, size)
            worst = min(worst, (acc, hits, size))
            clean_acc = float(clean[sel].mean())
            table.append([feature, group, size, clean_acc, acc, clean_acc - acc])
            # every attack and epsilon per group: who loses most, and from which epsilon on
            by_eps = {a: correct[sel].mean(0).tolist() for a, correct in stacked.items()}
            curves += [[feature, group, size, a, *accs] for a, accs in by_eps.items()]
            series.append(Series(str(group), [0.0] + eps_list, [clean_acc] + by_eps[strongest]))
        section.figures.append(
            Figure(
                f"{strongest} accuracy under attack per {feature} group",
                "line",
                "epsilon",
                "accuracy",
                series,
            )
        )
    section.add_proportion("worst_group_robust_accuracy", worst[1], worst[2])
    section.tables.append(
        Table(
            f"Per group: {strongest} at epsilon {eps_ref:g}",
            ["feature", "group", "rows", "clean accuracy", "robust accuracy", "loss"],
            table,
        )
    )
    section.tables.append(
        Table(
            "Per group: robust accuracy by attack and epsilon",
            ["feature", "group", "rows", "attack", *map(str, eps_list)],
            curves,
        )
    )
    section.notes.append(
        f"worst_group_robust_accuracy: the lowest group robust accuracy under {strongest} at epsilon {eps_ref:g} (the middle epsilon)"
    )


def _sanity_checks(
    ctx: EvalContext,
    section: Section,
    target: AttackTarget,
    y: torch.Tensor,
    curves: dict[str, list[float]],
    eps_list: list[float],
    steps: int,
    alpha: float,
) -> None:
    checks = []
    if "fgsm" in curves and "pgd" in curves:
        bad = [e for e, f, p in zip(eps_list, curves["fgsm"], curves["pgd"]) if p > f + TOLERANCE]
        checks.append(["PGD leaves no more accuracy than FGSM", "fail" if bad else "pass"])
        if bad:
            section.warnings.append(
                f"PGD left more accuracy than FGSM at epsilon {bad}: a sign of gradient masking or too few PGD steps"
            )
    for attack, accs in curves.items():
        rising = [e for e, a, b in zip(eps_list[1:], accs, accs[1:]) if b > a + TOLERANCE]
        checks.append([f"{attack}: accuracy does not rise with epsilon", "fail" if rising else "pass"])
        if rising:
            section.warnings.append(
                f"{attack}: robust accuracy rose with epsilon at {rising}: a sign of gradient masking"
            )
    # An epsilon that covers every feature's whole range should leave about chance accuracy.
    chance = float(torch.bincount(ctx.dataset.train.y if len(ctx.dataset.train) else ctx.test_y).max()) / max(
        len(ctx.dataset.train) or len(ctx.test_y), 1
    )
    subset = torch.arange(min(len(y), 200), device=y.device)
    huge = make_attack("pgd", target.module, 1.0, steps=steps, alpha=alpha, random_start=False)(
        target.select(subset), y[subset]
    )
    huge_acc = float(correct_mask(target.module, huge, y[subset]).float().mean())
    section.add_metric("unbounded_pgd_accuracy", huge_acc)
    near = huge_acc <= chance + 0.1
    checks.append(
        [
            f"unbounded PGD drives accuracy to chance ({chance:.2f}) or below: {huge_acc:.3f}",
            "pass" if near else "fail",
        ]
    )
    if not near:
        section.warnings.append(
            f"PGD with an epsilon covering each perturbed feature's whole range left accuracy {huge_acc:.3f} "
            f"(chance {chance:.3f}): gradient masking, or the decision rests on unperturbed (categorical) columns"
        )
    section.tables.append(Table("Sanity checks for broken evaluations", ["check", "result"], checks))


def _clean_and_pgd(
    ctx: EvalContext,
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    eps: float,
    *,
    steps: int,
    alpha: float,
    random_start: bool,
) -> tuple[float, float]:
    """Clean accuracy and PGD robust accuracy at one epsilon of ``model`` on these rows."""
    target = attack_target(
        model.eval(), ctx.dataset, x, perturb_categorical=ctx.config.option("perturb_categorical", False)
    )
    clean_mask, clean_grad = clean_pass(target, y, with_grad=True)
    masks = sweep(
        target,
        y,
        "pgd",
        [eps],
        steps=steps,
        alpha=alpha,
        random_start=random_start,
        seed=ctx.seed,
        clean=(clean_mask, clean_grad),
    )
    return float(clean_mask.float().mean()), float(masks[eps].float().mean())


def _adv_baseline(
    ctx: EvalContext,
    section: Section,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    steps: int,
    alpha: float,
    random_start: bool,
) -> None:
    eps = ctx.artifacts["robustness"]["adv_eps"]
    # The same rows and attack settings for both models, so the two rows of the table compare.
    settings = dict(steps=steps, alpha=alpha, random_start=random_start)
    plain_clean, plain_robust = _clean_and_pgd(ctx, ctx.baseline()[0], x, y, eps, **settings)
    clean = section.metrics["robustness.clean_accuracy"]
    robust = section.metrics.get(f"robustness.pgd.{eps_segment(eps)}.robust_accuracy")
    if robust is None:  # --adv-eps off the --eps grid, or no pgd in --attack
        robust = _clean_and_pgd(ctx, ctx.model, x, y, eps, **settings)[1]
    section.add_metric("adv_train.baseline_clean_accuracy", plain_clean)
    section.add_metric("adv_train.baseline_pgd_robust_accuracy", plain_robust)
    section.add_metric("adv_train.pgd_robust_accuracy", robust)
    section.add_metric("adv_train.clean_accuracy_cost", plain_clean - clean)
    section.tables.append(
        Table(
            f"Adversarial training at epsilon {eps:g}: standard vs adversarially trained",
            ["model", "clean accuracy", f"PGD robust accuracy at {eps:g}"],
            [["standard training", plain_clean, plain_robust], ["PGD adversarial training", clean, robust]],
        )
    )


@hookimpl
def audit_metric_specs() -> list[MetricSpec]:
    return [
        MetricSpec(
            "robustness.*.eps_*.robust_accuracy",
            True,
            "fraction",
            "Accuracy under the attack at this epsilon",
            TAGS,
        ),
        MetricSpec(
            "robustness.*.eps_*.attack_success_rate",
            False,
            "fraction",
            "Share of correctly classified rows the attack flips",
            TAGS,
        ),
        MetricSpec(
            "robustness.*.auc",
            True,
            "fraction",
            "Area under accuracy against epsilon, divided by the largest epsilon",
            TAGS,
        ),
        MetricSpec(
            "robustness.worst_group_robust_accuracy",
            True,
            "fraction",
            "Lowest group robust accuracy (PGD, middle epsilon), with that group's exact 95% interval",
            TAGS,
        ),
        MetricSpec(
            "robustness.clean_accuracy",
            True,
            "fraction",
            "Accuracy of the attacked subset without attack",
            TAGS,
        ),
        MetricSpec(
            "robustness.adv_train.clean_accuracy_cost",
            False,
            "fraction",
            "Clean accuracy lost to adversarial training",
            TAGS,
        ),
        MetricSpec(
            "robustness.adv_train.baseline_clean_accuracy",
            None,
            "fraction",
            "Clean accuracy of the same model trained without PGD",
            TAGS,
        ),
        MetricSpec(
            "robustness.adv_train.baseline_pgd_robust_accuracy",
            None,
            "fraction",
            "PGD robust accuracy of the same model trained without PGD",
            TAGS,
        ),
        MetricSpec(
            "robustness.adv_train.pgd_robust_accuracy",
            True,
            "fraction",
            "PGD robust accuracy of the adversarially trained model at --adv-eps",
            TAGS,
        ),
        MetricSpec(
            "robustness.*.*.robust_accuracy",
            True,
            "fraction",
            "Robust accuracy within one sensitive group (PGD, middle epsilon)",
            TAGS,
        ),
        MetricSpec("robustness.samples", None, "rows", "Test rows attacked (seeded subset)"),
        MetricSpec(
            "robustness.unbounded_pgd_accuracy",
            None,
            "fraction",
            "Accuracy under PGD with an epsilon covering every feature's range; near chance unless gradients are masked",
            TAGS,
        ),
    ]
