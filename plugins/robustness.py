"""Robustness plugin: FGSM and PGD (L-inf, L2) through torchattacks, cascaded epsilon sweeps,
per-group robust accuracy, gradient-masking checks, and PGD adversarial training."""

from __future__ import annotations

import argparse
import logging
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from audit import AuditError, hookimpl
from audit.config import CliOption, RunConfig
from audit.data import Dataset
from audit.engine import TrainingSetup, progress_bar
from audit.evaluation import EvalContext
from audit.report import Figure, MetricSpec, Section, Series, Table, metric_segment

log = logging.getLogger(__name__)
ATTACKS = ("fgsm", "pgd", "pgd-l2")
TAGS = ("EU AI Act Art. 15", "NIST AI RMF MEASURE 2.7")
DEFAULT_EPS = {"tabular": [0.05, 0.1, 0.25, 0.5, 1.0], "image": [0.02, 0.05, 0.1, 0.2, 0.3]}
TOLERANCE = 0.01  # robust-accuracy slack for the sanity checks (sampling noise of the subset)
COMPACT_SHARE = 32  # a PGD batch drops its fooled rows once they are 1/32 of it


def _floats(value: str) -> list[float]:
    try:
        return [float(v) for v in value.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers, got {value!r}") from None


@hookimpl
def audit_cli_options() -> list[CliOption]:
    return [
        CliOption(("--robustness",), dict(nargs="?", const="eval", choices=["eval", "adv-train"], default=None,
                                          help="evaluate adversarial robustness; 'adv-train' also trains with PGD examples")),
        CliOption(("--attack",), dict(default=None, help=f"attacks, comma-separated: {', '.join(ATTACKS)} [fgsm,pgd]")),
        CliOption(("--eps",), dict(type=_floats, default=None, help="epsilons to sweep (standardised units for tabular data, pixel units for images)")),
        CliOption(("--pgd-steps",), dict(type=int, default=None, help="PGD steps [10]")),
        CliOption(("--pgd-alpha",), dict(type=float, default=None, help="PGD step size as a fraction of epsilon [0.25]")),
        CliOption(("--random-start",), dict(action="store_true", default=False, help="PGD starts from a random point in the ball")),
        CliOption(("--robustness-samples",), dict(type=int, default=None, help="seeded subset of test rows to attack [1000]")),
        CliOption(("--adv-eps",), dict(type=float, default=None, help="epsilon for --robustness adv-train [the middle --eps]"), commands=("train",)),
        CliOption(("--perturb-categorical",), dict(action="store_true", default=False,
                                                   help="also perturb one-hot columns (off: only numeric features move)")),
    ]


# Options that mean nothing without --robustness, and the defaults they take with it.
OPTION_FLAGS = {"--attack": "attack", "--eps": "eps", "--pgd-steps": "pgd_steps", "--pgd-alpha": "pgd_alpha",
                "--random-start": "random_start", "--robustness-samples": "robustness_samples", "--adv-eps": "adv_eps",
                "--perturb-categorical": "perturb_categorical"}
OPTION_DEFAULTS = {"attack": "fgsm,pgd", "pgd_steps": 10, "pgd_alpha": 0.25, "robustness_samples": 1000}


@hookimpl
def audit_configure(config: RunConfig) -> None:
    mode = config.option("robustness")
    if mode is None:
        config.refuse_without("--robustness", OPTION_FLAGS)
        return
    if mode != "adv-train" and config.option("adv_eps") is not None:
        raise AuditError("--adv-eps only applies with --robustness adv-train")
    for dest, value in OPTION_DEFAULTS.items():
        if config.option(dest) is None:
            config.options[dest] = value
    attacks = [a.strip() for a in str(config.option("attack")).split(",") if a.strip()]
    unknown = [a for a in attacks if a not in ATTACKS]
    if unknown:
        raise AuditError(f"--attack {','.join(unknown)!r} is unknown; expected a list of {', '.join(ATTACKS)}")
    if not attacks:
        raise AuditError("--attack needs at least one attack")
    config.options["attack"] = ",".join(attacks)
    eps = config.option("eps")
    if eps is not None and (not eps or any(not e > 0 for e in eps)):
        raise AuditError(f"--eps must be positive numbers, got {eps}")
    if config.option("pgd_steps") < 1:
        raise AuditError("--pgd-steps must be at least 1")
    if not config.option("pgd_alpha") > 0:
        raise AuditError(f"--pgd-alpha must be a positive fraction of epsilon, got {config.option('pgd_alpha')}")
    if config.option("adv_eps") is not None and not config.option("adv_eps") > 0:
        raise AuditError(f"--adv-eps must be positive, got {config.option('adv_eps')}")
    if config.option("robustness_samples") < 1:
        raise AuditError("--robustness-samples must be at least 1")
    if mode == "adv-train":
        if config.option("dp", False):
            raise AuditError("--robustness adv-train cannot be combined with --dp: the attack's extra backward passes would "
                             "pass through Opacus' per-sample gradient hooks")
        if config.command == "evaluate":
            raise AuditError("--robustness adv-train trains a model; use 'audit train'")


class FeatureView(nn.Module):
    """Maps an attack's [0, 1] view (N, 1, 1, k) of the perturbable features back to the model's input.

    torchattacks clamps every example to [0, 1] and takes one scalar epsilon, so each perturbable
    feature j is exposed as u_j = (x_j - lower_j) / scale with one common ``scale``: an epsilon of
    e / scale in the view is exactly e in the model's (standardised) units for every feature. Values
    stay within the training range: u >= 0 gives x >= lower, and the forward pass clamps x <= upper.
    The other columns (one-hot categories) come from ``fixed``, the rows of ``fixed_all`` the attack is
    about (torchattacks calls ``module(x)`` with nothing else, so the view must hold them).
    """

    def __init__(self, model: nn.Module, index: torch.Tensor, lower: torch.Tensor, upper: torch.Tensor, rows: torch.Tensor) -> None:
        super().__init__()
        self.model = model
        self.register_buffer("index", index)
        self.register_buffer("lower", lower[index])
        self.register_buffer("upper", upper[index])
        self.scale = float((self.upper - self.lower).max().clamp_min(1e-6))
        self.fixed_all = rows
        self.fixed = rows

    def to_view(self, x: torch.Tensor) -> torch.Tensor:
        """The [0, 1] view of rows ``x`` (the model's input), shaped (N, 1, 1, k)."""
        u = (x[:, self.index] - self.lower) / self.scale
        return u.clamp(0, 1)[:, None, None, :]

    def to_input(self, view: torch.Tensor) -> torch.Tensor:
        """The model input for a view of the rows in ``self.fixed``."""
        values = torch.minimum(self.lower + self.scale * view.flatten(1), self.upper)
        return self.fixed.index_copy(1, self.index, values)

    def forward(self, view: torch.Tensor) -> torch.Tensor:
        return self.model(self.to_input(view))


@dataclass
class AttackTarget:
    """What an attack runs on: a module over [0, 1] inputs, those inputs, and how epsilon maps into them."""

    module: nn.Module
    inputs: torch.Tensor
    eps_scale: float  # view epsilon = model-space epsilon / eps_scale
    unit: str

    def select(self, rows: torch.Tensor) -> torch.Tensor:
        """The view inputs of ``rows`` (and point the feature view at their fixed columns)."""
        self.point_at(rows)
        return self.inputs[rows]

    def point_at(self, rows: torch.Tensor) -> None:
        """Make the next forward passes be about ``rows`` (a feature view needs their fixed columns)."""
        if isinstance(self.module, FeatureView):
            self.module.fixed = self.module.fixed_all[rows]


def _check_perturbable(dataset: Dataset, *, perturb_categorical: bool) -> torch.Tensor:
    """Indices of the input columns an attack may move; refuse data with none."""
    mask = torch.ones_like(dataset.perturbable) if perturb_categorical else dataset.perturbable
    index = torch.nonzero(mask).squeeze(1)
    if len(index) == 0:
        raise AuditError("--robustness: no feature can be perturbed, the data has no numeric columns; "
                         "expected at least one, or pass --perturb-categorical to move one-hot columns as continuous values")
    return index


def attack_target(model: nn.Module, dataset: Dataset, x: torch.Tensor, *, perturb_categorical: bool) -> AttackTarget:
    """Build the [0, 1] attack view for this data: identity for images, a FeatureView for tabular rows."""
    if dataset.kind == "image":
        return AttackTarget(model, x, 1.0, "pixel units in [0, 1]")
    index = _check_perturbable(dataset, perturb_categorical=perturb_categorical).to(x.device)
    view = FeatureView(model, index, dataset.lower.to(x.device), dataset.upper.to(x.device), x).to(x.device)
    return AttackTarget(view, view.to_view(x), view.scale, "standard deviations of each numeric feature (training split)")


def make_attack(name: str, module: nn.Module, eps: float, *, steps: int, alpha: float, random_start: bool) -> Any:
    """A torchattacks attack on ``module`` with epsilon already in its [0, 1] input units."""
    import torchattacks

    if name == "fgsm":
        return torchattacks.FGSM(module, eps=eps)
    if name == "pgd":
        return torchattacks.PGD(module, eps=eps, alpha=alpha * eps, steps=steps, random_start=random_start)
    return torchattacks.PGDL2(module, eps=eps, alpha=alpha * eps, steps=steps, random_start=random_start)


@torch.no_grad()
def _correct(module: nn.Module, inputs: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return module(inputs).argmax(1) == y


def clean_pass(target: AttackTarget, y: torch.Tensor, *, with_grad: bool) -> tuple[torch.Tensor, torch.Tensor | None]:
    """One forward pass on the clean rows: the correct mask and, if asked, torchattacks' loss gradient there."""
    target.point_at(torch.arange(len(y), device=y.device))
    point = target.inputs.detach().requires_grad_(with_grad)
    with torch.set_grad_enabled(with_grad):
        logits = target.module(point)
    correct = logits.argmax(1) == y
    if not with_grad:
        return correct, None
    return correct, torch.autograd.grad(nn.functional.cross_entropy(logits, y), point)[0]


def random_start_delta(attack: str, inputs: torch.Tensor, eps: float, *, seed: int) -> torch.Tensor:
    """The random start torchattacks' PGD / PGD-L2 draws for ``inputs`` when seeded with ``seed`` just before.

    Drawn for every row, as the independent run draws it, so each row starts where it would have started
    there, whichever rows the sweep still attacks.
    """
    torch.manual_seed(seed)
    if attack == "pgd-l2":
        delta = torch.empty_like(inputs).normal_()
        norms = delta.view(len(inputs), -1).norm(p=2, dim=1).view((-1,) + (1,) * (inputs.dim() - 1))
        return delta * (torch.zeros_like(norms).uniform_(0, 1) / norms * eps)
    return torch.empty_like(inputs).uniform_(-eps, eps)


def retiring_pgd(attack: str, target: AttackTarget, rows: torch.Tensor, y: torch.Tensor, eps: float, *, steps: int,
                 alpha: float, start: torch.Tensor | None, clean_grad: torch.Tensor | None) -> torch.Tensor:
    """torchattacks' PGD / PGD-L2 on ``rows`` (all correct when clean), retiring each row once it is misclassified.

    Same update as ``torchattacks.PGD.forward`` / ``PGDL2.forward``: cross-entropy, a step of ``alpha * eps``
    along the gradient's sign (L2: its normalised direction), projection onto the ball, clamp to [0, 1].
    A row's step depends only on its own point, so dropping fooled rows from the batch changes no other
    row's path; a fooled row keeps the adversarial point it found (a fresh attack could wander back to
    a correct point by its last step, so this never reports more robustness than the fresh attack).
    ``start`` is the random start of these rows (see ``random_start_delta``); without one, ``clean_grad``
    is the gradient at the clean rows, shared by every epsilon's first step. Returns the fooled mask over ``rows``.
    """
    shape = (-1,) + (1,) * (target.inputs.dim() - 1)
    images, labels = target.inputs[rows].detach(), y[rows]
    fooled = torch.zeros(len(rows), dtype=torch.bool, device=y.device)
    active = torch.arange(len(rows), device=y.device)  # positions in ``rows`` still standing; the tensors are compacted
    if start is not None:
        adv, grad = torch.clamp(images + start, 0, 1), None
    else:
        adv, grad = images.clone(), clean_grad[rows]
    target.point_at(rows)
    fallen = torch.zeros(len(rows), dtype=torch.bool, device=y.device)  # fooled, still in the batch until the next compaction
    for step in range(steps + 1):
        if grad is None:
            point = adv.requires_grad_(step < steps)
            with torch.set_grad_enabled(step < steps):
                logits = target.module(point)
            wrong = logits.argmax(1) != labels
            fooled[active[wrong]] = True
            fallen |= wrong
            if step == steps or bool(fallen.all()):
                break
            # Dropping fallen rows gathers every batch tensor; on a small model that costs more than stepping a
            # few rows further, so they go once they are a fair share of the batch.
            if int(fallen.sum()) * COMPACT_SHARE >= len(fallen):
                keep = ~fallen
                grad = torch.autograd.grad(nn.functional.cross_entropy(logits[keep], labels[keep]), point)[0][keep]
                active, images, labels, adv, fallen = active[keep], images[keep], labels[keep], adv[keep], fallen[keep]
                target.point_at(rows[active])
            else:
                grad = torch.autograd.grad(nn.functional.cross_entropy(logits, labels), point)[0]
        adv = adv.detach()
        if attack == "pgd-l2":
            grad = grad / (grad.flatten(1).norm(dim=1) + 1e-10).view(shape)  # torchattacks' eps_for_division
            delta = adv + alpha * eps * grad - images
            delta = delta * torch.clamp(eps / delta.flatten(1).norm(dim=1), max=1.0).view(shape)
        else:
            delta = torch.clamp(adv + alpha * eps * grad.sign() - images, -eps, eps)
        adv, grad = torch.clamp(images + delta, 0, 1), None
    target.point_at(torch.arange(len(y), device=y.device))
    return fooled


def sweep(target: AttackTarget, y: torch.Tensor, attack: str, eps_list: list[float], *, steps: int, alpha: float,
          random_start: bool, seed: int, clean: tuple[torch.Tensor, torch.Tensor] | None = None) -> dict[float, torch.Tensor]:
    """PGD / PGD-L2 robust-correct mask per epsilon, cascading: a row wrong at a smaller epsilon is wrong at every
    larger one, so each epsilon attacks only the rows still standing, and rows retire as they fall. ``clean`` is a
    ``clean_pass(..., with_grad=True)`` already made on these rows. Returns {eps: mask}.

    (FGSM is not swept: its raw, uncascaded curve is what reveals gradient masking; see ``independent``.)
    """
    if attack not in ("pgd", "pgd-l2"):
        raise ValueError(f"sweep runs pgd or pgd-l2, not {attack!r}")
    alive, clean_grad = clean or clean_pass(target, y, with_grad=not random_start)
    alive = alive.clone()
    masks = {}
    for eps in sorted(eps_list):
        idx = torch.nonzero(alive).squeeze(1)
        if len(idx):
            view_eps = eps / target.eps_scale
            start = random_start_delta(attack, target.inputs, view_eps, seed=seed)[idx] if random_start else None
            fooled = retiring_pgd(attack, target, idx, y, view_eps, steps=steps, alpha=alpha, start=start, clean_grad=clean_grad)
            alive[idx[fooled]] = False
        masks[eps] = alive.clone()
    return masks


def independent(target: AttackTarget, y: torch.Tensor, attack: str, eps_list: list[float], *, steps: int, alpha: float,
                random_start: bool, seed: int) -> dict[float, torch.Tensor]:
    """Robust-correct mask per epsilon with a fresh attack on every row at every epsilon (the usual way)."""
    rows = torch.arange(len(y), device=y.device)
    masks = {}
    for eps in sorted(eps_list):
        torch.manual_seed(seed)
        inputs = target.select(rows)
        adv = make_attack(attack, target.module, eps / target.eps_scale, steps=steps, alpha=alpha, random_start=random_start)(inputs, y)
        masks[eps] = _correct(target.module, adv, y)
    return masks


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
    _check_perturbable(setup.dataset, perturb_categorical=config.option("perturb_categorical", False))  # before any training time
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
        adv = make_attack("pgd", target.module, eps / target.eps_scale, steps=steps, alpha=alpha, random_start=True)(target.select(rows), y)
        return target.module.to_input(adv).detach() if isinstance(target.module, FeatureView) else adv.detach()

    setup.batch_transform = adversarial_batch
    setup.artifacts["robustness"] = {"adv_eps": eps, "adv_steps": steps}
    setup.notes.append(f"adversarial training: every batch replaced by PGD-{steps} examples at epsilon {eps:g} (L-inf, random start)")


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
    steps, alpha, random_start = config.option("pgd_steps"), config.option("pgd_alpha"), config.option("random_start", False)
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
    bar = progress_bar(total=len(attacks) * len(eps_list), desc="attacks", unit="eps", enabled=not config.quiet, leave=False)
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
        accs = [section.add_proportion(f"{attack}.{eps_segment(eps)}.robust_accuracy", int(masks[eps].sum()), n) for eps in eps_list]
        curves[attack] = accs
        for eps, acc in zip(eps_list, accs):
            success = 1 - acc / clean if clean > 0 else 0.0
            section.add_metric(f"{attack}.{eps_segment(eps)}.attack_success_rate", success)
            name = f"robustness.{attack}.{eps_segment(eps)}.robust_accuracy"
            rows_table.append([attack, eps, acc, section.metrics[f"{name}.ci_low"], section.metrics[f"{name}.ci_high"], success])
        section.add_metric(f"{attack}.auc", curve_auc(eps_list, accs, clean))
    bar.close()
    section.tables.append(Table("Robust accuracy per attack and epsilon",
                                ["attack", "epsilon", "robust accuracy", "95% low", "95% high", "attack success rate"], rows_table))
    section.figures.append(Figure("Accuracy under attack", "line", f"epsilon ({target.unit})", "accuracy",
                                  [Series(a, [0.0] + eps_list, [clean] + curves[a]) for a in attacks]))
    _groups(ctx, section, rows, masks_by_attack, eps_list, clean_mask)
    _sanity_checks(ctx, section, target, y, curves, eps_list, steps, alpha)
    section.notes.append(f"epsilon is in {target.unit}; L-inf for fgsm/pgd, L2 for pgd-l2; {n} seeded test rows; "
                         f"PGD {steps} steps of {alpha:g}*epsilon, random start {'on' if random_start else 'off'}")
    if data.kind == "tabular":
        section.notes.append("one-hot (categorical) columns are left unperturbed" if not config.option("perturb_categorical", False)
                             else "one-hot columns were perturbed as continuous values (--perturb-categorical)")
        section.notes.append("perturbed values stay within the range each feature took in the training split")
    if config.option("robustness") == "adv-train" and ctx.training is not None:
        _adv_baseline(ctx, section, x, y, steps=steps, alpha=alpha, random_start=random_start)
    return section


def _groups(ctx: EvalContext, section: Section, rows: torch.Tensor, masks: dict[str, dict[float, torch.Tensor]],
            eps_list: list[float], clean_mask: torch.Tensor) -> None:
    if not ctx.dataset.sensitive:
        return
    strongest = "pgd" if "pgd" in masks else next(iter(masks))
    eps_ref = eps_list[len(eps_list) // 2]
    robust = masks[strongest][eps_ref].cpu().numpy()
    clean = clean_mask.cpu().numpy()
    table, worst = [], (2.0, 0, 0)  # (accuracy, robust rows, rows) of the worst group
    for feature in ctx.dataset.sensitive:
        groups = ctx.dataset.test.groups[feature].to_numpy()[rows.numpy()]
        for group in sorted(set(groups)):
            sel = groups == group
            hits, size = int(robust[sel].sum()), int(sel.sum())
            acc = section.add_proportion(f"{feature}.{metric_segment(group)}.robust_accuracy", hits, size)
            worst = min(worst, (acc, hits, size))
            clean_acc = float(clean[sel].mean())
            table.append([feature, group, size, clean_acc, acc, clean_acc - acc])
    section.add_proportion("worst_group_robust_accuracy", worst[1], worst[2])
    section.tables.append(Table(f"Per group: {strongest} at epsilon {eps_ref:g}", ["feature", "group", "rows", "clean accuracy", "robust accuracy", "loss"], table))
    section.notes.append(f"worst_group_robust_accuracy: the lowest group robust accuracy under {strongest} at epsilon {eps_ref:g} (the middle epsilon)")


def _sanity_checks(ctx: EvalContext, section: Section, target: AttackTarget, y: torch.Tensor, curves: dict[str, list[float]],
                   eps_list: list[float], steps: int, alpha: float) -> None:
    checks = []
    if "fgsm" in curves and "pgd" in curves:
        bad = [e for e, f, p in zip(eps_list, curves["fgsm"], curves["pgd"]) if p > f + TOLERANCE]
        checks.append(["PGD leaves no more accuracy than FGSM", "fail" if bad else "pass"])
        if bad:
            section.warnings.append(f"PGD left more accuracy than FGSM at epsilon {bad}: a sign of gradient masking or too few PGD steps")
    for attack, accs in curves.items():
        rising = [e for e, a, b in zip(eps_list[1:], accs, accs[1:]) if b > a + TOLERANCE]
        checks.append([f"{attack}: accuracy does not rise with epsilon", "fail" if rising else "pass"])
        if rising:
            section.warnings.append(f"{attack}: robust accuracy rose with epsilon at {rising}: a sign of gradient masking")
    # An epsilon that covers every feature's whole range should leave about chance accuracy.
    chance = float(torch.bincount(ctx.dataset.train.y if len(ctx.dataset.train) else ctx.test_y).max()) / max(len(ctx.dataset.train) or len(ctx.test_y), 1)
    subset = torch.arange(min(len(y), 200), device=y.device)
    huge = make_attack("pgd", target.module, 1.0, steps=steps, alpha=alpha, random_start=False)(target.select(subset), y[subset])
    huge_acc = float(_correct(target.module, huge, y[subset]).float().mean())
    section.add_metric("unbounded_pgd_accuracy", huge_acc)
    near = huge_acc <= chance + 0.1
    checks.append([f"unbounded PGD drives accuracy to chance ({chance:.2f}) or below: {huge_acc:.3f}", "pass" if near else "fail"])
    if not near:
        section.warnings.append(f"PGD with an epsilon covering each perturbed feature's whole range left accuracy {huge_acc:.3f} "
                                f"(chance {chance:.3f}): gradient masking, or the decision rests on unperturbed (categorical) columns")
    section.tables.append(Table("Sanity checks for broken evaluations", ["check", "result"], checks))


def _clean_and_pgd(ctx: EvalContext, model: nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float, *, steps: int, alpha: float,
                   random_start: bool) -> tuple[float, float]:
    """Clean accuracy and PGD robust accuracy at one epsilon of ``model`` on these rows."""
    target = attack_target(model.eval(), ctx.dataset, x, perturb_categorical=ctx.config.option("perturb_categorical", False))
    clean_mask, clean_grad = clean_pass(target, y, with_grad=True)
    masks = sweep(target, y, "pgd", [eps], steps=steps, alpha=alpha, random_start=random_start, seed=ctx.seed, clean=(clean_mask, clean_grad))
    return float(clean_mask.float().mean()), float(masks[eps].float().mean())


def _adv_baseline(ctx: EvalContext, section: Section, x: torch.Tensor, y: torch.Tensor, *, steps: int, alpha: float, random_start: bool) -> None:
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
    section.tables.append(Table(f"Adversarial training at epsilon {eps:g}: standard vs adversarially trained",
                                ["model", "clean accuracy", f"PGD robust accuracy at {eps:g}"],
                                [["standard training", plain_clean, plain_robust], ["PGD adversarial training", clean, robust]]))


@hookimpl
def audit_metric_specs() -> list[MetricSpec]:
    return [
        MetricSpec("robustness.*.eps_*.robust_accuracy", True, "fraction", "Accuracy under the attack at this epsilon", TAGS),
        MetricSpec("robustness.*.eps_*.attack_success_rate", False, "fraction", "Share of correctly classified rows the attack flips", TAGS),
        MetricSpec("robustness.*.auc", True, "fraction", "Area under accuracy against epsilon, divided by the largest epsilon", TAGS),
        MetricSpec("robustness.worst_group_robust_accuracy", True, "fraction",
                   "Lowest group robust accuracy (PGD, middle epsilon), with that group's exact 95% interval", TAGS),
        MetricSpec("robustness.clean_accuracy", True, "fraction", "Accuracy of the attacked subset without attack", TAGS),
        MetricSpec("robustness.adv_train.clean_accuracy_cost", False, "fraction", "Clean accuracy lost to adversarial training", TAGS),
        MetricSpec("robustness.adv_train.baseline_clean_accuracy", None, "fraction", "Clean accuracy of the same model trained without PGD", TAGS),
        MetricSpec("robustness.adv_train.baseline_pgd_robust_accuracy", None, "fraction", "PGD robust accuracy of the same model trained without PGD", TAGS),
        MetricSpec("robustness.adv_train.pgd_robust_accuracy", True, "fraction", "PGD robust accuracy of the adversarially trained model at --adv-eps", TAGS),
        MetricSpec("robustness.*.*.robust_accuracy", True, "fraction", "Robust accuracy within one sensitive group (PGD, middle epsilon)", TAGS),
        MetricSpec("robustness.samples", None, "rows", "Test rows attacked (seeded subset)"),
        MetricSpec("robustness.unbounded_pgd_accuracy", None, "fraction",
                   "Accuracy under PGD with an epsilon covering every feature's range; near chance unless gradients are masked", TAGS),
    ]
