"""Robustness plugin: FGSM and PGD (L-inf, L2) through torchattacks, cascaded epsilon sweeps, per-group robust
accuracy, gradient-masking checks, and PGD adversarial training (the attack machinery is in ``robustness_attacks``).

``audit_evaluate`` builds the section's ``data`` payload first (curves, groups, checks, adversarial training);
its tables, figures and summary are renderings of that payload (``render_section``, ``summarise``).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from audit import AuditError, hookimpl
from audit.config import CliOption, RunConfig, list_type, parse_list
from audit.data import Dataset
from audit.engine import TrainingSetup
from audit.evaluation import EvalContext
from audit.groups import group_labels, group_masks, group_metric
from audit.performance import constant_predictions
from audit.progress import progress_bar
from audit.report import Figure, MetricSpec, Section, Series, Table
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
from audit_plugins.robustness_autoattack import (
    DLR_MIN_CLASSES,
    FAMILY,
    NAMES,
    SQUARE_QUERIES,
    FamilyRun,
    components_of,
    keyed_target,
    split,
    sweep_family,
)

ATTACKS = ("fgsm", "pgd", "pgd-l2", *NAMES)
TAGS = ("EU AI Act Art. 15", "NIST AI RMF MEASURE 2.7")
DEFAULT_EPS = {"tabular": [0.05, 0.1, 0.25, 0.5, 1.0], "image": [0.02, 0.05, 0.1, 0.2, 0.3]}
EPS_UNITS = {"tabular": "standardised units", "image": "pixel units"}  # short forms, for the summary
TOLERANCE = 0.01  # robust-accuracy slack for the sanity checks (sampling noise of the subset)
# Rows the unbounded-PGD check attacks: it asks whether accuracy reaches chance, which few rows show.
UNBOUNDED_ROWS = 200

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
    "--square-queries": "square_queries",
}
# PGD stays the default: AutoAttack's Square spends 5,000 queries on every row still standing at each epsilon,
# minutes on the defaults on a CPU (bench_robustness.py), against PGD's second; the summary says PGD may overstate.
OPTION_DEFAULTS = {
    "attack": "fgsm,pgd",
    "pgd_steps": 10,
    "pgd_alpha": 0.25,
    "robustness_samples": 1000,
    "square_queries": SQUARE_QUERIES,
}


@dataclass(frozen=True)
class Settings:
    """The robustness options of one run, as ``audit_configure`` checked and defaulted them."""

    mode: str  # "eval" or "adv-train"
    attacks: tuple[str, ...]
    eps: tuple[float, ...]  # ascending
    eps_unit: str
    steps: int
    alpha: float
    random_start: bool
    samples: int
    perturb_categorical: bool
    adv_eps: float | None
    square_queries: int = SQUARE_QUERIES

    @classmethod
    def of(cls, config: RunConfig, dataset: Dataset) -> Settings | None:
        """This run's settings; None without ``--robustness``."""
        mode = config.option("robustness")
        if mode is None:
            return None
        return cls(
            mode=mode,
            attacks=tuple(parse_list(config.option("attack"))),
            eps=tuple(sorted(config.option("eps") or DEFAULT_EPS[dataset.kind])),
            eps_unit=EPS_UNITS[dataset.kind],
            steps=config.option("pgd_steps"),
            alpha=config.option("pgd_alpha"),
            random_start=bool(config.option("random_start", False)),
            samples=config.option("robustness_samples"),
            perturb_categorical=bool(config.option("perturb_categorical", False)),
            adv_eps=config.option("adv_eps"),
            square_queries=config.option("square_queries", SQUARE_QUERIES),
        )

    @property
    def middle(self) -> int:
        """Index of the middle epsilon: adversarial training's default and the per-group comparison's."""
        return len(self.eps) // 2

    def attack_kwargs(self) -> dict[str, Any]:
        """The PGD settings every attack of the run shares."""
        return dict(steps=self.steps, alpha=self.alpha, random_start=self.random_start)


@dataclass(frozen=True)
class AdvTraining:
    """What PGD adversarial training used: kept in ``setup.artifacts["robustness"]`` and in the saved model."""

    adv_eps: float
    adv_steps: int


CLI_OPTIONS = [
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
        dict(
            default=None,
            help="attacks, comma-separated: fgsm, pgd, autoattack (AutoAttack's standard version) or one of its "
            "components apgd-ce, apgd-dlr, fab, square; add -l2 for the L2 norm (pgd-l2, autoattack-l2, ...) "
            "[fgsm,pgd]",
        ),
    ),
    CliOption(
        ("--eps",),
        dict(
            type=list_type(float, what="numbers"),
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
    CliOption(
        ("--square-queries",),
        dict(
            type=int, default=None, help=f"queries of AutoAttack's Square attack per row [{SQUARE_QUERIES}]"
        ),
    ),
]


@hookimpl
def audit_cli_options() -> list[CliOption]:
    """The robustness options of ``train`` and ``evaluate``."""
    return list(CLI_OPTIONS)


@hookimpl
def audit_configure(config: RunConfig) -> None:
    """Refuse robustness options without ``--robustness``; with it, default them and check their values."""
    mode = config.option("robustness")
    if mode is None:
        config.refuse_without("--robustness", OPTION_FLAGS)
        return
    if mode != "adv-train" and config.option("adv_eps") is not None:
        raise AuditError("--adv-eps only applies with --robustness adv-train")
    config.default_options(OPTION_DEFAULTS)
    config.options["attack"] = ",".join(_attacks(config.option("attack")))
    _check_numbers(config)
    if mode == "adv-train" and config.command == "evaluate":
        raise AuditError("--robustness adv-train trains a model; use 'audit train'")


def _attacks(value: str) -> list[str]:
    attacks = parse_list(value)
    unknown = [a for a in attacks if a not in ATTACKS]
    if unknown:
        raise AuditError(
            f"--attack {','.join(unknown)!r} is unknown; expected a list of {', '.join(ATTACKS)}"
        )
    if not attacks:
        raise AuditError("--attack needs at least one attack")
    return attacks


def _check_numbers(config: RunConfig) -> None:
    eps = config.option("eps")
    # "not (0 < e < inf)" refuses NaN and inf too: an infinite budget breaks the attack's step and the curve
    if eps is not None and (not eps or any(not (0 < e < math.inf) for e in eps)):
        raise AuditError(f"--eps must be finite positive numbers, got {','.join(map(str, eps))}")
    if config.option("pgd_steps") < 1:
        raise AuditError("--pgd-steps must be at least 1")
    if not (0 < config.option("pgd_alpha") < math.inf):
        raise AuditError(
            f"--pgd-alpha must be a positive fraction of epsilon, got {config.option('pgd_alpha')}"
        )
    if config.option("adv_eps") is not None and not (0 < config.option("adv_eps") < math.inf):
        raise AuditError(f"--adv-eps must be a finite positive number, got {config.option('adv_eps')}")
    if config.option("robustness_samples") < 1:
        raise AuditError("--robustness-samples must be at least 1")
    if config.option("square_queries") < 1:
        raise AuditError("--square-queries must be at least 1")


def eps_segment(eps: float) -> str:
    """An epsilon as one dotted segment of a metric name: 0.1 -> eps_0p1."""
    return "eps_" + f"{eps:g}".replace("-", "m").replace(".", "p").replace("+", "")


def curve_auc(eps_list: list[float], accuracies: list[float], clean: float) -> float:
    """Area under accuracy against epsilon from 0 (clean) to the largest epsilon, divided by that epsilon."""
    xs, ys = [0.0] + list(eps_list), [clean] + list(accuracies)
    return float(np.trapezoid(ys, xs) / xs[-1]) if xs[-1] > 0 else clean


# --- adversarial training ---------------------------------------------------------------


@hookimpl
def audit_prepare_training(setup: TrainingSetup) -> None:
    """Refuse data with nothing to perturb before any training; under adv-train, train on PGD examples."""
    settings = Settings.of(setup.config, setup.dataset)
    if settings is None:
        return
    check_perturbable(setup.dataset, perturb_categorical=settings.perturb_categorical)
    check_classes(settings.attacks, setup.dataset.num_classes, image=setup.dataset.kind == "image")
    if settings.mode != "adv-train":
        return
    state = AdvTraining(adv_eps=settings.adv_eps or settings.eps[settings.middle], adv_steps=settings.steps)
    setup.batch_transform = _adversarial_batches(setup.model, setup.dataset, settings, state.adv_eps)
    setup.artifacts["robustness"] = state
    setup.notes.append(
        f"adversarial training: every batch replaced by PGD-{state.adv_steps} examples at epsilon "
        f"{state.adv_eps:g} (L-inf, random start)"
    )


def check_classes(attacks: tuple[str, ...], num_classes: int, *, image: bool = True) -> None:
    """Refuse APGD-T by name on fewer classes than its targeted DLR loss needs, and L2 Square by name on tables
    (AutoAttack leaves each out there)."""
    if not image and "square-l2" in attacks:
        raise AuditError(
            "--attack square-l2 needs image data: torchattacks' L2 Square tiles the input with square windows, and "
            "a table's rows have none; use square (L-inf) or autoattack-l2 (which leaves Square out on tables)"
        )
    asked = [a for a in attacks if split(a)[0] == "apgd-dlr"]
    if asked and num_classes < DLR_MIN_CLASSES:
        raise AuditError(
            f"--attack {asked[0]}: APGD-T's targeted DLR loss needs at least {DLR_MIN_CLASSES} classes, this data has "
            f"{num_classes}; use apgd-ce or autoattack (which leaves APGD-T out here, as AutoAttack does)"
        )


def _adversarial_batches(
    model: nn.Module, dataset: Dataset, settings: Settings, eps: float
) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    """A batch transform replacing each training batch by its PGD examples (always from a random start)."""

    def adversarial_batch(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """The batch's PGD examples, as model inputs."""
        target = attack_target(model, dataset, x, perturb_categorical=settings.perturb_categorical)
        rows = torch.arange(len(y), device=x.device)
        attack = make_attack(
            "pgd",
            target.module,
            eps / target.eps_scale,
            steps=settings.steps,
            alpha=settings.alpha,
            random_start=True,
        )
        adv = attack(target.select(rows), y)
        return (
            target.module.to_input(adv).detach() if isinstance(target.module, FeatureView) else adv.detach()
        )

    return adversarial_batch


@hookimpl
def audit_checkpoint_metadata(setup: TrainingSetup) -> dict[str, Any] | None:
    """The adversarial-training settings, so the saved model says how it was trained."""
    state = setup.artifacts.get("robustness")
    return {"robustness": dataclasses.asdict(state)} if state else None


# --- the audit ------------------------------------------------------------------------


@hookimpl
def audit_evaluate(ctx: EvalContext) -> Section | None:
    """Attack a seeded subset of test rows at every epsilon: robust accuracy overall and per group, and checks."""
    settings = Settings.of(ctx.config, ctx.dataset)
    if settings is None:
        return None
    check_classes(settings.attacks, ctx.dataset.num_classes, image=ctx.dataset.kind == "image")
    rows = _attacked_rows(ctx, settings.samples)
    x, y = ctx.dataset.test.x[rows].to(ctx.device), ctx.dataset.test.y[rows].to(ctx.device)
    target = attack_target(ctx.model.eval(), ctx.dataset, x, perturb_categorical=settings.perturb_categorical)
    clean_mask, masks, runs = _attack(ctx, settings, target, x, y)
    section = Section("robustness", "Adversarial robustness")
    section.order = 50
    # The payload comes first (each number enters the metrics as it is measured); the rest renders it.
    section.data = _curves(section, settings, target, clean_mask, masks)
    image = ctx.dataset.kind == "image"
    section.data["autoattack"] = _family_payload(settings, runs, ctx.dataset.num_classes, image=image)
    section.data.update(_groups(ctx, section, settings, rows, clean_mask, masks))
    section.data.update(_sanity_checks(ctx, section, settings, target, y))
    adv = settings.mode == "adv-train" and ctx.training is not None
    section.data["adv_train"] = _adv_train(ctx, section, settings, x, y) if adv else None
    section.data["constant_predictions"] = _constant_predictions(ctx)
    section.warnings += [c["warning"] for c in section.data["checks"] if not c["passed"]]
    if section.data["constant_predictions"]:
        section.warnings.insert(0, _constant_warning(section.data["constant_predictions"]))
    section.notes += _notes(section.data, settings, ctx.dataset.kind)
    render_section(section)
    section.summary = summarise(section.data)
    return section


def _constant_predictions(ctx: EvalContext) -> dict[str, Any] | None:
    """The one class (nearly) every test row gets, with its share; None for a model whose predictions vary."""
    return constant_predictions(ctx.test_pred.numpy(), list(ctx.dataset.classes))


def _constant_warning(constant: dict[str, Any]) -> str:
    """An attack cannot flip a prediction that never varies: the section's "robust" figures then say nothing."""
    return (
        f"ONE-CLASS MODEL: the model predicts '{constant['class']}' for {constant['share']:.1%} of the "
        f"{constant['rows']:,} test rows; no perturbation changes a constant prediction, so the robust accuracies "
        "below equal its clean accuracy because the model ignores its input, not because it resists attacks"
    )


def _attacked_rows(ctx: EvalContext, samples: int) -> torch.Tensor:
    """A seeded subset of test rows (on the CPU), the same for every run with this seed."""
    generator = torch.Generator().manual_seed(ctx.seed + 31337)
    n = min(len(ctx.dataset.test), samples)
    return torch.randperm(len(ctx.dataset.test), generator=generator)[:n]


def _attack(
    ctx: EvalContext, settings: Settings, target: AttackTarget, x: torch.Tensor, y: torch.Tensor
) -> tuple[torch.Tensor, dict[str, dict[float, torch.Tensor]], dict[str, FamilyRun]]:
    """The clean correct mask, per attack the robust-correct mask at every epsilon, and AutoAttack's runs."""
    clean_mask, clean_grad = clean_pass(target, y, with_grad=True)  # shared by every PGD sweep's first step
    eps_list = list(settings.eps)
    kw = dict(**settings.attack_kwargs(), seed=ctx.seed)
    bar = progress_bar(
        total=len(settings.attacks) * len(eps_list),
        desc="attacks",
        unit="eps",
        enabled=not ctx.config.quiet,
        leave=False,
    )
    masks: dict[str, dict[float, torch.Tensor]] = {}
    runs: dict[str, FamilyRun] = {}
    keyed: AttackTarget | None = None
    for attack in settings.attacks:
        bar.set_postfix_str(attack)
        # FGSM runs fresh at every epsilon so its raw curve can reveal gradient masking; PGD sweeps (see sweep:
        # less work, never weaker); AutoAttack and its components cascade the same way.
        if attack == "fgsm":
            masks[attack] = independent(target, y, attack, eps_list, **kw)
        elif attack in ("pgd", "pgd-l2"):
            masks[attack] = sweep(target, y, attack, eps_list, clean=(clean_mask, clean_grad), **kw)
        else:
            keyed = keyed or keyed_target(
                ctx.model,
                ctx.dataset,
                x,
                perturb_categorical=settings.perturb_categorical,
                eps_max=max(eps_list),
            )
            runs[attack] = sweep_family(
                keyed,
                y,
                attack,
                eps_list,
                seed=ctx.seed,
                num_classes=ctx.dataset.num_classes,
                correct=clean_mask,
                queries=settings.square_queries,
            )
            masks[attack] = runs[attack].masks
        bar.update(len(eps_list))
    bar.close()
    return clean_mask, masks, runs


def _family_payload(
    settings: Settings, runs: dict[str, FamilyRun], num_classes: int, *, image: bool
) -> dict[str, Any]:
    """The payload's AutoAttack part: per attack of the family, its components and what each fooled per epsilon."""
    return {
        attack: {
            "components": list(components_of(attack, num_classes, image=image)),
            "square_queries": settings.square_queries,
            "rows_attacked": [run.attacked[e] for e in settings.eps],
            "fooled_by": [run.fooled_by[e] for e in settings.eps],
        }
        for attack, run in runs.items()
    }


def _interval(section: Section, name: str) -> tuple[float | None, float | None]:
    """The 95% interval ``add_proportion`` recorded for ``<section>.<name>``."""
    full = f"{section.name}.{name}"
    return section.metrics[f"{full}.ci_low"], section.metrics[f"{full}.ci_high"]


def _curves(
    section: Section,
    settings: Settings,
    target: AttackTarget,
    clean_mask: torch.Tensor,
    masks: dict[str, dict[float, torch.Tensor]],
) -> dict[str, Any]:
    """The payload's overall part: clean accuracy and each attack's curve, entered in the metrics as measured."""
    n = len(clean_mask)
    worst = _worst_curve(section, settings, masks)
    clean = section.add_proportion("clean_accuracy", int(clean_mask.sum()), n)
    clean_low, clean_high = _interval(section, "clean_accuracy")
    section.add_metric("samples", n)
    return {
        "unit": target.unit,
        "eps_unit": settings.eps_unit,
        "eps": list(settings.eps),
        "samples": n,
        "pgd_steps": settings.steps,
        "pgd_alpha": settings.alpha,
        "random_start": settings.random_start,
        "clean_accuracy": clean,
        "clean_ci_low": clean_low,
        "clean_ci_high": clean_high,
        "attacks": {a: _attack_curve(section, a, settings.eps, masks[a], clean) for a in masks},
        "worst": worst,
    }


def _worst_curve(
    section: Section, settings: Settings, masks: dict[str, dict[float, torch.Tensor]]
) -> dict[str, Any]:
    """Robust accuracy over every attack run: a row counts as robust at an epsilon only if no attack fooled it there
    or at a smaller epsilon (each adversarial point lies inside every larger ball), so it is at most the lowest
    attack's figure. Its metrics go in first, the middle epsilon leading: they are the section's headline."""
    eps_list = list(settings.eps)
    robust = torch.stack([torch.stack([masks[a][e] for e in eps_list]) for a in masks]).all(0)
    robust = robust.int().cummin(0).values.bool()  # fooled at a smaller epsilon: fooled from there on
    curve: dict[str, Any] = {"robust_accuracy": [None] * len(eps_list), "ci_low": [None] * len(eps_list)}
    curve["ci_high"] = [None] * len(eps_list)
    for i in [settings.middle] + [j for j in range(len(eps_list)) if j != settings.middle]:
        name = f"{eps_segment(eps_list[i])}.robust_accuracy"
        curve["robust_accuracy"][i] = section.add_proportion(name, int(robust[i].sum()), robust.shape[1])
        curve["ci_low"][i], curve["ci_high"][i] = _interval(section, name)
    lowest = [min(masks, key=lambda a: (float(masks[a][e].float().mean()), a)) for e in eps_list]
    return {**curve, "attacks": list(masks), "lowest_attack": lowest}


def _attack_curve(
    section: Section, attack: str, eps_list: tuple[float, ...], masks: dict[float, torch.Tensor], clean: float
) -> dict[str, Any]:
    """One attack's robust accuracy (exact interval), success rate per epsilon and AUC, added as metrics."""
    curve: dict[str, Any] = {"robust_accuracy": [], "ci_low": [], "ci_high": [], "attack_success_rate": []}
    for eps in eps_list:
        name = f"{attack}.{eps_segment(eps)}.robust_accuracy"
        mask = masks[eps]
        curve["robust_accuracy"].append(section.add_proportion(name, int(mask.sum()), len(mask)))
        low, high = _interval(section, name)
        curve["ci_low"].append(low)
        curve["ci_high"].append(high)
    for eps, acc in zip(eps_list, curve["robust_accuracy"]):
        success = 1 - acc / clean if clean > 0 else 0.0
        section.add_metric(f"{attack}.{eps_segment(eps)}.attack_success_rate", success)
        curve["attack_success_rate"].append(success)
    curve["auc"] = curve_auc(list(eps_list), curve["robust_accuracy"], clean)
    section.add_metric(f"{attack}.auc", curve["auc"])
    return curve


def strongest_attack(attacks: list[str] | tuple[str, ...]) -> str:
    """The attack the per-group comparison uses: AutoAttack (L-inf) when run, else PGD (L-inf), else the first."""
    return next((a for a in ("autoattack", "pgd") if a in attacks), attacks[0])


def _groups(
    ctx: EvalContext,
    section: Section,
    settings: Settings,
    rows: torch.Tensor,
    clean_mask: torch.Tensor,
    masks: dict[str, dict[float, torch.Tensor]],
) -> dict[str, Any]:
    """The payload's per-group part: every attack's curve per sensitive group, and the worst group."""
    attack, eps = strongest_attack(list(masks)), settings.eps[settings.middle]
    reference = {"group_reference": {"attack": attack, "eps": eps}}
    if not ctx.dataset.sensitive:
        return {**reference, "groups": [], "worst_group": None}
    # (rows, epsilons) correct masks per attack, moved off the device once
    stacked = {a: torch.stack([m[e] for e in settings.eps], 1).cpu().numpy() for a, m in masks.items()}
    clean = clean_mask.cpu().numpy()
    groups = []
    for feature in ctx.dataset.sensitive:
        labels = group_labels(ctx.dataset.test.groups, [feature])[rows.numpy()]
        for group, mask in group_masks(labels):
            curves = {a: correct[mask].mean(0).tolist() for a, correct in stacked.items()}
            entry = {"feature": feature, "group": group, "rows": int(mask.sum())}
            entry["clean_accuracy"] = float(clean[mask].mean())
            entry["robust_correct"] = int(stacked[attack][mask, settings.middle].sum())
            name = group_metric(feature, group, "robust_accuracy")
            entry["robust_accuracy"] = section.add_proportion(name, entry["robust_correct"], entry["rows"])
            entry["ci_low"], entry["ci_high"] = _interval(section, name)
            groups.append({**entry, "curves": curves})
    worst = min(groups, key=lambda g: (g["robust_accuracy"], g["robust_correct"], g["rows"]))
    section.add_proportion("worst_group_robust_accuracy", worst["robust_correct"], worst["rows"])
    keys = ("feature", "group", "rows", "clean_accuracy", "robust_accuracy", "ci_low", "ci_high")
    return {**reference, "groups": groups, "worst_group": {k: worst[k] for k in keys}}


def _sanity_checks(
    ctx: EvalContext, section: Section, settings: Settings, target: AttackTarget, y: torch.Tensor
) -> dict[str, Any]:
    """The payload's checks for a broken evaluation (gradient masking): curve shapes, and unbounded PGD."""
    eps_list = settings.eps
    curves = {a: c["robust_accuracy"] for a, c in section.data["attacks"].items()}
    checks = []
    if "fgsm" in curves and "pgd" in curves:
        bad = [e for e, f, p in zip(eps_list, curves["fgsm"], curves["pgd"]) if p > f + TOLERANCE]
        checks.append(
            _check(
                "PGD leaves no more accuracy than FGSM",
                not bad,
                f"PGD left more accuracy than FGSM at epsilon {bad}: a sign of gradient masking or too few PGD "
                "steps",
            )
        )
    for attack, accs in curves.items():
        rising = [e for e, a, b in zip(eps_list[1:], accs, accs[1:]) if b > a + TOLERANCE]
        checks.append(
            _check(
                f"{attack}: accuracy does not rise with epsilon",
                not rising,
                f"{attack}: robust accuracy rose with epsilon at {rising}: a sign of gradient masking",
            )
        )
    unbounded = _unbounded_pgd(ctx, section, settings, target, y)
    accuracy, chance = unbounded["accuracy"], unbounded["chance"]
    checks.append(
        _check(
            f"unbounded PGD drives accuracy to chance ({chance:.2f}) or below: {accuracy:.3f}",
            accuracy <= chance + 0.1,
            f"PGD with an epsilon covering each perturbed feature's whole range left accuracy {accuracy:.3f} "
            f"(chance {chance:.3f}): gradient masking, or the decision rests on unperturbed (categorical) columns",
        )
    )
    return {"checks": checks, "unbounded_pgd": unbounded}


def _check(label: str, passed: bool, warning: str) -> dict[str, Any]:
    """One check of the payload; its warning only when it failed."""
    return {"check": label, "passed": passed, "warning": None if passed else warning}


def _unbounded_pgd(
    ctx: EvalContext, section: Section, settings: Settings, target: AttackTarget, y: torch.Tensor
) -> dict[str, Any]:
    """PGD with an epsilon covering every perturbed feature's whole range: it should leave about chance."""
    train_y = ctx.dataset.train.y if len(ctx.dataset.train) else ctx.test_y
    chance = float(torch.bincount(train_y).max()) / max(len(train_y), 1)
    subset = torch.arange(min(len(y), UNBOUNDED_ROWS), device=y.device)
    attack = make_attack(
        "pgd", target.module, 1.0, steps=settings.steps, alpha=settings.alpha, random_start=False
    )
    huge = attack(target.select(subset), y[subset])
    accuracy = float(correct_mask(target.module, huge, y[subset]).float().mean())
    section.add_metric("unbounded_pgd_accuracy", accuracy)
    return {"accuracy": accuracy, "chance": chance, "rows": len(subset)}


def _clean_and_pgd(
    ctx: EvalContext, settings: Settings, model: nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float
) -> tuple[float, float]:
    """Clean accuracy and PGD robust accuracy at one epsilon of ``model`` on these rows."""
    target = attack_target(model.eval(), ctx.dataset, x, perturb_categorical=settings.perturb_categorical)
    clean_mask, clean_grad = clean_pass(target, y, with_grad=True)
    masks = sweep(
        target, y, "pgd", [eps], **settings.attack_kwargs(), seed=ctx.seed, clean=(clean_mask, clean_grad)
    )
    return float(clean_mask.float().mean()), float(masks[eps].float().mean())


def _adv_train(
    ctx: EvalContext, section: Section, settings: Settings, x: torch.Tensor, y: torch.Tensor
) -> dict[str, Any]:
    """The payload's adversarial-training part: this model against the plain baseline, same rows, same attack."""
    state: AdvTraining = ctx.artifacts["robustness"]
    eps = state.adv_eps
    plain_clean, plain_robust = _clean_and_pgd(ctx, settings, ctx.baseline()[0], x, y, eps)
    clean = section.data["clean_accuracy"]
    on_grid = [i for i, e in enumerate(settings.eps) if eps_segment(e) == eps_segment(eps)]
    if "pgd" in section.data["attacks"] and on_grid:
        robust = section.data["attacks"]["pgd"]["robust_accuracy"][on_grid[0]]
    else:  # --adv-eps off the --eps grid, or no pgd in --attack
        robust = _clean_and_pgd(ctx, settings, ctx.model, x, y, eps)[1]
    section.add_metric("adv_train.baseline_clean_accuracy", plain_clean)
    section.add_metric("adv_train.baseline_pgd_robust_accuracy", plain_robust)
    section.add_metric("adv_train.pgd_robust_accuracy", robust)
    section.add_metric("adv_train.clean_accuracy_cost", plain_clean - clean)
    return {
        "eps": eps,
        "steps": state.adv_steps,
        "baseline_clean_accuracy": plain_clean,
        "baseline_pgd_robust_accuracy": plain_robust,
        "clean_accuracy": clean,
        "pgd_robust_accuracy": robust,
        "clean_accuracy_cost": plain_clean - clean,
    }


def _notes(data: dict[str, Any], settings: Settings, kind: str) -> list[str]:
    """How to read the section's numbers: units, norms, rows, attack settings."""
    notes = []
    if data["groups"]:
        ref = data["group_reference"]
        notes.append(
            f"worst_group_robust_accuracy: the lowest group robust accuracy under {ref['attack']} at epsilon "
            f"{ref['eps']:g} (the middle epsilon)"
        )
    notes.append(
        f"epsilon is in {data['unit']}; L2 for the attacks named -l2, L-inf for the others; {data['samples']} seeded "
        f"test rows; PGD {settings.steps} steps of {settings.alpha:g}*epsilon, random start "
        f"{'on' if settings.random_start else 'off'}"
    )
    notes.append(
        "robustness.eps_*.robust_accuracy: a row counts as robust at an epsilon only if no attack run fooled it "
        "there or at a smaller epsilon, so it is at most the lowest attack's figure"
    )
    notes += _family_notes(data, kind)
    if kind == "tabular":
        notes.append(
            "one-hot columns were perturbed as continuous values (--perturb-categorical)"
            if settings.perturb_categorical
            else "one-hot (categorical) columns are left unperturbed"
        )
        notes.append("perturbed values stay within the range each feature took in the training split")
    return notes


def _family_notes(data: dict[str, Any], kind: str) -> list[str]:
    """How AutoAttack and its components were run, when any was."""
    family = data.get("autoattack") or {}
    if not family:
        return []
    first = next(iter(family.values()))
    notes = [
        "AutoAttack as torchattacks 3.5.1 builds its standard version: APGD-CE, APGD-T (targeted DLR, every other "
        "class a target), FAB-T (every other class a target), 10 iterations each (the original AutoAttack runs "
        f"100), one restart, and Square with {first['square_queries']} queries; each attack sees only the rows "
        "still standing, and each epsilon only the rows no smaller epsilon fooled"
    ]
    if any(a.startswith("autoattack") and "apgd-dlr" not in v["components"] for a, v in family.items()):
        notes.append(
            f"APGD-T was left out of AutoAttack: its targeted DLR loss needs at least {DLR_MIN_CLASSES} classes "
            "(torchattacks' APGDT fails below that and AutoAttack warns that DLR cannot be used)"
        )
    if any(a == "autoattack-l2" and "square" not in v["components"] for a, v in family.items()):
        notes.append(
            "Square was left out of AutoAttack under L2: torchattacks' L2 Square needs image-shaped inputs"
        )
    if kind == "tabular":
        notes.append(
            "AutoAttack's view of tabular rows carries one more coordinate naming each row's one-hot columns (its "
            "attacks pick rows themselves); it has no gradient and cannot change, but under L2 a random start or "
            "Square may spend part of the budget on it, so L2 figures may be slightly optimistic"
        )
    return notes


# --- rendering the payload --------------------------------------------------------------


WORST_LABEL = "every attack (worst per row)"


def render_section(section: Section) -> None:
    """Draw the section's tables and figures from its ``data`` alone (replacing any drawn before)."""
    data = section.data
    section.tables = [_curve_table(data), *_group_tables(data), _check_table(data), *_adv_train_tables(data)]
    section.figures = [_curve_figure(data), *_group_figures(data)]


def _curve_table(data: dict[str, Any]) -> Table:
    rows = [
        [attack, eps, *(curve[k][i] for k in ("robust_accuracy", "ci_low", "ci_high", "attack_success_rate"))]
        for attack, curve in data["attacks"].items()
        for i, eps in enumerate(data["eps"])
    ]
    worst, clean = data["worst"], data["clean_accuracy"]
    rows += [
        [WORST_LABEL, eps, worst["robust_accuracy"][i], worst["ci_low"][i], worst["ci_high"][i]]
        + [1 - worst["robust_accuracy"][i] / clean if clean > 0 else 0.0]
        for i, eps in enumerate(data["eps"])
    ]
    columns = ["attack", "epsilon", "robust accuracy", "95% low", "95% high", "attack success rate"]
    return Table("Robust accuracy per attack and epsilon", columns, rows)


def _curve_figure(data: dict[str, Any]) -> Figure:
    x = [0.0] + data["eps"]
    series = [
        Series(a, x, [data["clean_accuracy"]] + c["robust_accuracy"]) for a, c in data["attacks"].items()
    ]
    series.append(Series(WORST_LABEL, x, [data["clean_accuracy"]] + data["worst"]["robust_accuracy"]))
    return Figure("Accuracy under attack", "line", f"epsilon ({data['unit']})", "accuracy", series)


def _group_tables(data: dict[str, Any]) -> list[Table]:
    if not data["groups"]:
        return []
    ref = data["group_reference"]
    at_reference = [
        [g["feature"], g["group"], g["rows"], g["clean_accuracy"], g["robust_accuracy"]]
        + [g["clean_accuracy"] - g["robust_accuracy"]]
        for g in data["groups"]
    ]
    curves = [
        [g["feature"], g["group"], g["rows"], attack, *accs]
        for g in data["groups"]
        for attack, accs in g["curves"].items()
    ]
    return [
        Table(
            f"Per group: {ref['attack']} at epsilon {ref['eps']:g}",
            ["feature", "group", "rows", "clean accuracy", "robust accuracy", "loss"],
            at_reference,
        ),
        Table(
            "Per group: robust accuracy by attack and epsilon",
            ["feature", "group", "rows", "attack", *map(str, data["eps"])],
            curves,
        ),
    ]


def _group_figures(data: dict[str, Any]) -> list[Figure]:
    attack, x = data["group_reference"]["attack"], [0.0] + data["eps"]
    by_feature: dict[str, list[Series]] = {}
    for g in data["groups"]:
        series = Series(str(g["group"]), x, [g["clean_accuracy"]] + g["curves"][attack])
        by_feature.setdefault(g["feature"], []).append(series)
    return [
        Figure(f"{attack} accuracy under attack per {feature} group", "line", "epsilon", "accuracy", series)
        for feature, series in by_feature.items()
    ]


def _check_table(data: dict[str, Any]) -> Table:
    rows = [[c["check"], "pass" if c["passed"] else "fail"] for c in data["checks"]]
    return Table("Sanity checks for broken evaluations", ["check", "result"], rows)


def _adv_train_tables(data: dict[str, Any]) -> list[Table]:
    adv = data["adv_train"]
    if adv is None:
        return []
    eps = adv["eps"]
    return [
        Table(
            f"Adversarial training at epsilon {eps:g}: standard vs adversarially trained",
            ["model", "clean accuracy", f"PGD robust accuracy at {eps:g}"],
            [
                ["standard training", adv["baseline_clean_accuracy"], adv["baseline_pgd_robust_accuracy"]],
                ["PGD adversarial training", adv["clean_accuracy"], adv["pgd_robust_accuracy"]],
            ],
        )
    ]


# --- the summary ------------------------------------------------------------------------


def summarise(data: dict[str, Any]) -> list[str]:
    """Plain-language findings from the payload, for the model card and the terminal."""
    # reports written before the one-class check have no such key
    lines = (
        [_constant_warning(data["constant_predictions"]) + "."] if data.get("constant_predictions") else []
    )
    lines += [_lead_line(data)] if data["attacks"] else []
    lines += [
        f"{data['samples']} seeded test rows were attacked; their clean accuracy is "
        f"{_fraction(data['clean_accuracy'])} (95% interval {_span(data['clean_ci_low'], data['clean_ci_high'])}). "
        f"Epsilon ({data['eps_unit']}) is measured in {data['unit']}."
    ]
    lines += [_attack_line(data, attack) for attack in data["attacks"]]
    if not data.get("autoattack"):
        lines.append(PGD_ONLY_LINE)
    if data["worst_group"] is not None:
        lines.append(_worst_group_line(data))
    lines.append(_checks_line(data["checks"]))
    if data["adv_train"] is not None:
        lines.append(_adv_train_line(data["adv_train"]))
    return lines


PGD_ONLY_LINE = (
    "PGD may overstate robustness: no AutoAttack was run (--attack autoattack adds it; it is left out by default "
    "for its cost), and models whose gradients mislead PGD keep accuracy that AutoAttack's gradient-free Square "
    "and targeted attacks take away."
)


def _lead_line(data: dict[str, Any]) -> str:
    """The finding a reader needs first: how often the strongest attack flips a prediction at the middle epsilon."""
    i = len(data["eps"]) // 2
    # on a tie the attack listed last wins: the default list puts FGSM before the stronger PGD
    attack = min(
        reversed(list(data["attacks"])), key=lambda a: data["attacks"][a]["robust_accuracy"][i] or 0.0
    )
    curve = data["attacks"][attack]
    size = (
        "standard deviations of each numeric feature"
        if data["eps_unit"] == EPS_UNITS["tabular"]
        else data["eps_unit"]
    )
    name = attack_name(attack, data["pgd_steps"], data["random_start"])
    where = f"under a perturbation of {data['eps'][i]:g} {size}, found by {name}"
    if not curve["attack_success_rate"][i]:
        return f"No prediction of the model changes {where}; accuracy stays {_fraction(curve['robust_accuracy'][i])}."
    return (
        f"The model's prediction changes for {curve['attack_success_rate'][i]:.0%} of the rows it classified "
        f"correctly {where}; accuracy {_fraction(data['clean_accuracy'])} falls to "
        f"{_fraction(curve['robust_accuracy'][i])}."
    )


def _fraction(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.2f}"


def _span(low: float | None, high: float | None) -> str:
    return f"{_fraction(low)} to {_fraction(high)}"


FAMILY_NAMES = {
    "autoattack": "AutoAttack",
    "apgd-ce": "APGD-CE",
    "apgd-dlr": "APGD-T (targeted DLR)",
    "fab": "FAB-T",
    "square": "Square",
}


def attack_name(attack: str, steps: int, random_start: bool = False) -> str:
    """An attack as a reader knows it: 'PGD (L-inf, 10 steps)', 'AutoAttack (L2)'."""
    if attack == "fgsm":
        return "FGSM (L-inf, one step)"
    if split(attack)[0] in FAMILY:
        base, norm = split(attack)
        return f"{FAMILY_NAMES[base]} ({'L-inf' if norm == 'Linf' else 'L2'})"
    norm = "L2" if attack == "pgd-l2" else "L-inf"
    return f"PGD ({norm}, {steps} step{'s' if steps != 1 else ''}{', random start' if random_start else ''})"


def _attack_line(data: dict[str, Any], attack: str) -> str:
    """The attack at the middle epsilon in words, then its whole curve and its AUC."""
    curve, eps = data["attacks"][attack], data["eps"]
    i = len(eps) // 2
    clean, acc, success = data["clean_accuracy"], curve["robust_accuracy"][i], curve["attack_success_rate"][i]
    name = attack_name(attack, data["pgd_steps"], data["random_start"])
    head = f"Under {name} at epsilon {eps[i]:g} {data['eps_unit']}, "
    if success > 0:
        head += (
            f"accuracy falls from {_fraction(clean)} to {_fraction(acc)} (95% interval "
            f"{_span(curve['ci_low'][i], curve['ci_high'][i])}): the prediction changes for {success:.0%} of "
            "correctly classified rows."
        )
    else:
        head += (
            f"accuracy is {_fraction(acc)} (95% interval {_span(curve['ci_low'][i], curve['ci_high'][i])}) "
            f"against {_fraction(clean)} without attack."
        )
    points = ", ".join(_fraction(a) for a in curve["robust_accuracy"])
    return (
        f"{head} At epsilon {', '.join(f'{e:g}' for e in eps)}: {points}; area under the curve "
        f"{_fraction(curve['auc'])} ({_fraction(clean)} if no prediction changed)."
    )


def _worst_group_line(data: dict[str, Any]) -> str:
    worst, ref = data["worst_group"], data["group_reference"]
    overall = data["attacks"][ref["attack"]]["robust_accuracy"][data["eps"].index(ref["eps"])]
    name = attack_name(ref["attack"], data["pgd_steps"], data["random_start"])
    return (
        f"Worst group under {name} at epsilon {ref['eps']:g}: "
        f"{worst['feature']} = {worst['group']} ({worst['rows']} rows), accuracy {_fraction(worst['robust_accuracy'])} "
        f"(95% interval {_span(worst['ci_low'], worst['ci_high'])}) against {_fraction(overall)} over all rows; "
        f"its clean accuracy is {_fraction(worst['clean_accuracy'])}."
    )


def _checks_line(checks: list[dict[str, Any]]) -> str:
    failed = [c["check"] for c in checks if not c["passed"]]
    if not failed:
        return f"All {len(checks)} checks for a broken evaluation (gradient masking) passed."
    return (
        f"{len(failed)} of {len(checks)} checks for a broken evaluation failed (see the warnings): "
        f"{'; '.join(failed)}."
    )


def _adv_train_line(adv: dict[str, Any]) -> str:
    return (
        f"PGD adversarial training at epsilon {adv['eps']:g} ({adv['steps']} steps): PGD accuracy at that epsilon "
        f"{_fraction(adv['pgd_robust_accuracy'])} against {_fraction(adv['baseline_pgd_robust_accuracy'])} with "
        f"standard training; clean accuracy {_fraction(adv['clean_accuracy'])} against "
        f"{_fraction(adv['baseline_clean_accuracy'])}."
    )


METRIC_SPECS = [
    MetricSpec(
        "robustness.eps_*.robust_accuracy",
        True,
        "fraction",
        "Robust accuracy under every attack run at this epsilon: a row counts only if no attack fooled it here or "
        "at a smaller epsilon (at most the lowest attack's figure), with its exact 95% interval",
        TAGS,
        headline=True,
    ),
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
        headline=True,
    ),
    MetricSpec(
        "robustness.worst_group_robust_accuracy",
        True,
        "fraction",
        "Lowest group robust accuracy (AutoAttack when run, else PGD; middle epsilon), with that group's exact "
        "95% interval",
        TAGS,
        headline=True,
    ),
    MetricSpec(
        "robustness.clean_accuracy",
        True,
        "fraction",
        "Accuracy of the attacked subset without attack",
        TAGS,
        headline=True,
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
        "robustness.*.group.*.robust_accuracy",
        True,
        "fraction",
        "Robust accuracy within one sensitive group (AutoAttack when run, else PGD; middle epsilon)",
        TAGS,
        former_names=("robustness.*.*.robust_accuracy",),
    ),
    MetricSpec("robustness.samples", None, "rows", "Test rows attacked (seeded subset)"),
    MetricSpec(
        "robustness.unbounded_pgd_accuracy",
        None,
        "fraction",
        "Accuracy under PGD with an epsilon covering every feature's range; "
        "near chance unless gradients are masked",
        TAGS,
    ),
]


@hookimpl
def audit_metric_specs() -> list[MetricSpec]:
    """The robustness metrics: curves, AUC, per-group and worst-group robust accuracy, adversarial training."""
    return list(METRIC_SPECS)
