"""AutoAttack (standard version, as torchattacks 3.5.1 builds it) and its components, cascaded over epsilons: the
attacks themselves are torchattacks' ``APGD``, ``APGDT``, ``FAB`` and ``Square``; this module gives them a view of
tabular rows they can subset freely, chains them as ``torchattacks.MultiAttack`` does, and sweeps the epsilons."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from audit.data import Dataset
from audit_plugins.robustness_attacks import AttackTarget, check_perturbable

# The standard version's components, in AutoAttack's order; each name also runs alone (``--attack square``).
COMPONENTS = ("apgd-ce", "apgd-dlr", "fab", "square")
AUTOATTACK = "autoattack"
FAMILY = (AUTOATTACK, *COMPONENTS)
NAMES = tuple(name + suffix for name in FAMILY for suffix in ("", "-l2"))
# APGD-T's targeted DLR loss divides by the gap between the 1st and the 3rd/4th logits: torchattacks indexes the 4th
# largest logit (an IndexError below 4 classes) and AutoAttack itself warns that (targeted) DLR is impossible with
# 2 or 3 classes, so below this APGD-T is left out of AutoAttack and refused by name.
DLR_MIN_CLASSES = 4
SQUARE_QUERIES = (
    5000  # torchattacks' AutoAttack (and the original's standard version) give Square 5,000 queries
)
# The row key sits at (p + 0.5) / P; an attack may move it by epsilon (in the view), so epsilon is kept below
# KEY_MARGIN / P of the view: the key then still rounds to its own pattern.
KEY_MARGIN = 0.4


def split(name: str) -> tuple[str, str]:
    """``'fab-l2'`` -> ``('fab', 'L2')``: the attack and torchattacks' norm name."""
    return (name[:-3], "L2") if name.endswith("-l2") else (name, "Linf")


def components_of(name: str, num_classes: int, *, image: bool = True) -> tuple[str, ...]:
    """The components an attack name runs, in order. AutoAttack drops APGD-T below ``DLR_MIN_CLASSES`` classes, and
    Square under L2 on tabular rows (torchattacks' L2 Square tiles the input with square windows a fifth of its
    height: a table's (1, 1, k) view has none)."""
    base, norm = split(name)
    if base != AUTOATTACK:
        return (base,)
    left_out = set()
    if num_classes < DLR_MIN_CLASSES:
        left_out.add("apgd-dlr")
    if not image and norm == "L2":
        left_out.add("square")
    return tuple(c for c in COMPONENTS if c not in left_out)


class KeyedView(nn.Module):
    """A [0, 1] view ``(N, 1, 1, k [+ 1])`` of tabular rows that any subset of rows can be fed through.

    The first k coordinates are the perturbable features, scaled as ``FeatureView`` scales them (one common
    ``scale``: view-epsilon x scale is epsilon in the model's units; values stay within the training range). The
    fixed (one-hot) columns cannot ride along: torchattacks' APGD, FAB and Square call the model on subsets of the
    rows they were given, chosen inside the attack, so no outside state can say whose columns they are. So when the
    attacked rows hold more than one pattern of fixed columns, a last coordinate names the pattern, at
    ``(p + 0.5) / P``; the scale is widened so that epsilon stays below ``KEY_MARGIN / P`` in the view, hence an
    attack moving the key by at most epsilon leaves it rounding to its own pattern, and the key has no gradient.
    """

    def __init__(
        self,
        model: nn.Module,
        index: torch.Tensor,
        lower: torch.Tensor,
        upper: torch.Tensor,
        rows: torch.Tensor,
        *,
        eps_max: float,
    ) -> None:
        super().__init__()
        self.model = model
        fixed = torch.ones(rows.shape[1], dtype=torch.bool, device=rows.device)
        fixed[index] = False
        self.pattern = torch.zeros(len(rows), dtype=torch.long, device=rows.device)
        if bool(fixed.any()):
            self.pattern = torch.unique(rows[:, fixed], dim=0, return_inverse=True)[1]
        self.count = int(self.pattern.max()) + 1 if len(rows) else 1
        self.keyed = self.count > 1
        base = torch.zeros(self.count, rows.shape[1], dtype=rows.dtype, device=rows.device)
        base[self.pattern] = rows
        self.register_buffer("base", base)  # a row of each pattern (its perturbable columns get overwritten)
        self.register_buffer("index", index)
        self.register_buffer("lower", lower[index])
        self.register_buffer("upper", upper[index])
        span = float((self.upper - self.lower).max().clamp_min(1e-6))
        self.scale = max(span, eps_max * self.count / KEY_MARGIN) if self.keyed else span

    def to_view(self, x: torch.Tensor) -> torch.Tensor:
        """The view of rows ``x`` (model inputs whose fixed columns are among this view's patterns)."""
        u = ((x[:, self.index] - self.lower) / self.scale).clamp(0, 1)
        if self.keyed:
            u = torch.cat([u, ((self.pattern.to(u.dtype) + 0.5) / self.count)[:, None]], 1)
        return u[:, None, None, :]

    def to_input(self, view: torch.Tensor) -> torch.Tensor:
        """The model inputs a view stands for."""
        flat = view.flatten(1)
        k = len(self.index)
        values = torch.minimum(self.lower + self.scale * flat[:, :k], self.upper)
        if self.keyed:
            pattern = (flat[:, k].detach() * self.count).floor().long().clamp(0, self.count - 1)
        else:
            pattern = torch.zeros(len(flat), dtype=torch.long, device=flat.device)
        return self.base[pattern].index_copy(1, self.index, values)

    def forward(self, view: torch.Tensor) -> torch.Tensor:
        """The model's logits for a view."""
        return self.model(self.to_input(view))


def keyed_target(
    model: nn.Module, dataset: Dataset, x: torch.Tensor, *, perturb_categorical: bool, eps_max: float
) -> AttackTarget:
    """The attack target for this family: the images themselves, or a ``KeyedView`` of tabular rows."""
    if dataset.kind == "image":
        return AttackTarget(model, x, 1.0, "pixel units in [0, 1]")
    index = check_perturbable(dataset, perturb_categorical=perturb_categorical).to(x.device)
    lower, upper = dataset.lower.to(x.device), dataset.upper.to(x.device)
    view = KeyedView(model, index, lower, upper, x, eps_max=eps_max).to(x.device)
    return AttackTarget(
        view, view.to_view(x), view.scale, "standard deviations of each numeric feature (training split)"
    )


def make_component(
    name: str,
    module: nn.Module,
    eps: float,
    *,
    norm: str,
    seed: int,
    num_classes: int,
    queries: int = SQUARE_QUERIES,
) -> Any:
    """One component as torchattacks' ``AutoAttack(version='standard')`` builds it (epsilon in view units; Square
    gets ``queries``, 5,000 there)."""
    import torchattacks

    common = dict(norm=norm, eps=eps, seed=seed, n_restarts=1)
    if name == "apgd-ce":
        return torchattacks.APGD(module, loss="ce", **common)
    if name == "apgd-dlr":
        return torchattacks.APGDT(module, n_classes=num_classes, **common)
    if name == "fab":
        return torchattacks.FAB(module, multi_targeted=True, n_classes=num_classes, **common)
    if name == "square":
        return torchattacks.Square(module, n_queries=queries, **common)
    raise ValueError(f"no AutoAttack component {name!r}")


@dataclass
class FamilyRun:
    """An attack of this family swept over epsilons: robust-correct masks and what each component fooled."""

    masks: dict[float, torch.Tensor] = field(default_factory=dict)
    fooled_by: dict[float, dict[str, int]] = field(default_factory=dict)
    attacked: dict[float, int] = field(default_factory=dict)


def within(adv: torch.Tensor, images: torch.Tensor, eps: float, norm: str) -> torch.Tensor:
    """Which adversarial points lie in the epsilon ball (a relative 1e-4 for float rounding) and in [0, 1]."""
    delta = (adv - images).flatten(1)
    size = delta.abs().amax(1) if norm == "Linf" else delta.norm(dim=1)
    inside = (adv.flatten(1) >= 0).all(1) & (adv.flatten(1) <= 1).all(1)
    return inside & (size <= eps * (1 + 1e-4) + 1e-7)


def cascade(
    target: AttackTarget,
    y: torch.Tensor,
    rows: torch.Tensor,
    eps: float,
    *,
    name: str,
    seed: int,
    num_classes: int,
    queries: int = SQUARE_QUERIES,
) -> tuple[torch.Tensor, dict[str, int]]:
    """Run ``name``'s components on ``rows`` one after another, each on the rows still standing (as
    ``torchattacks.MultiAttack``); a row counts as fooled only by a point inside the ball. Returns the fooled mask
    over ``rows`` and how many rows each component fooled."""
    _, norm = split(name)
    fooled = torch.zeros(len(rows), dtype=torch.bool, device=y.device)
    counts: dict[str, int] = {}
    standing = torch.arange(len(rows), device=y.device)
    image = not isinstance(target.module, KeyedView)
    for component in components_of(name, num_classes, image=image):
        if not len(standing):
            break
        images, labels = target.inputs[rows[standing]].detach(), y[rows[standing]]
        attack = make_component(
            component, target.module, eps, norm=norm, seed=seed, num_classes=num_classes, queries=queries
        )
        adv = attack(images, labels)
        with torch.no_grad():
            wrong = (target.module(adv).argmax(1) != labels) & within(adv, images, eps, norm)
        fooled[standing[wrong]] = True
        counts[component] = int(wrong.sum())
        standing = standing[~wrong]
    return fooled, counts


def sweep_family(
    target: AttackTarget,
    y: torch.Tensor,
    name: str,
    eps_list: list[float],
    *,
    seed: int,
    num_classes: int,
    correct: torch.Tensor,
    queries: int = SQUARE_QUERIES,
) -> FamilyRun:
    """``name`` at every epsilon, cascading as the PGD sweep does: a row fooled at a smaller epsilon is fooled at
    every larger one (its point is inside the larger ball), so each epsilon attacks only the rows still standing.
    ``correct`` is the clean correct mask of these rows; Square gets ``queries``."""
    alive, run = correct.clone(), FamilyRun()
    for eps in sorted(eps_list):
        idx = torch.nonzero(alive).squeeze(1)
        run.attacked[eps] = len(idx)
        counts: dict[str, int] = {}
        if len(idx):
            fooled, counts = cascade(
                target,
                y,
                idx,
                eps / target.eps_scale,
                name=name,
                seed=seed,
                num_classes=num_classes,
                queries=queries,
            )
            alive[idx[fooled]] = False
        run.fooled_by[eps] = counts
        run.masks[eps] = alive.clone()
    return run
