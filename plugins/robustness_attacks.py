"""The attack machinery under the robustness plugin: the [0, 1] feature view torchattacks needs for tabular rows,
torchattacks' PGD rule with rows retiring as they fall, the cascaded epsilon sweep, and the independent reference."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from audit import AuditError
from audit.data import Dataset

COMPACT_SHARE = 32  # a PGD batch drops its fooled rows once they are 1/32 of it


class FeatureView(nn.Module):
    """Maps an attack's [0, 1] view (N, 1, 1, k) of the perturbable features back to the model's input.

    torchattacks clamps every example to [0, 1] and takes one scalar epsilon, so each perturbable
    feature j is exposed as u_j = (x_j - lower_j) / scale with one common ``scale``: an epsilon of
    e / scale in the view is exactly e in the model's (standardised) units for every feature. Values
    stay within the training range: u >= 0 gives x >= lower, and the forward pass clamps x <= upper.
    The other columns (one-hot categories) come from ``fixed``, the rows of ``fixed_all`` the attack is
    about (torchattacks calls ``module(x)`` with nothing else, so the view must hold them).
    """

    def __init__(
        self,
        model: nn.Module,
        index: torch.Tensor,
        lower: torch.Tensor,
        upper: torch.Tensor,
        rows: torch.Tensor,
    ) -> None:
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
        """The model's logits for a view of the rows in ``self.fixed``."""
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


def check_perturbable(dataset: Dataset, *, perturb_categorical: bool) -> torch.Tensor:
    """Indices of the input columns an attack may move; refuse data with none."""
    mask = torch.ones_like(dataset.perturbable) if perturb_categorical else dataset.perturbable
    index = torch.nonzero(mask).squeeze(1)
    if len(index) == 0:
        raise AuditError(
            "--robustness: no feature can be perturbed, the data has no numeric columns; "
            "expected at least one, or pass --perturb-categorical to move one-hot columns as continuous values"
        )
    return index


def attack_target(
    model: nn.Module, dataset: Dataset, x: torch.Tensor, *, perturb_categorical: bool
) -> AttackTarget:
    """Build the [0, 1] attack view for this data: identity for images, a FeatureView for tabular rows."""
    if dataset.kind == "image":
        return AttackTarget(model, x, 1.0, "pixel units in [0, 1]")
    index = check_perturbable(dataset, perturb_categorical=perturb_categorical).to(x.device)
    view = FeatureView(model, index, dataset.lower.to(x.device), dataset.upper.to(x.device), x).to(x.device)
    return AttackTarget(
        view, view.to_view(x), view.scale, "standard deviations of each numeric feature (training split)"
    )


def make_attack(
    name: str, module: nn.Module, eps: float, *, steps: int, alpha: float, random_start: bool
) -> Any:
    """A torchattacks attack on ``module`` with epsilon already in its [0, 1] input units."""
    import torchattacks

    if name == "fgsm":
        return torchattacks.FGSM(module, eps=eps)
    if name == "pgd":
        return torchattacks.PGD(module, eps=eps, alpha=alpha * eps, steps=steps, random_start=random_start)
    return torchattacks.PGDL2(module, eps=eps, alpha=alpha * eps, steps=steps, random_start=random_start)


@torch.no_grad()
def correct_mask(module: nn.Module, inputs: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Which rows ``module`` classifies correctly."""
    return module(inputs).argmax(1) == y


def clean_pass(
    target: AttackTarget, y: torch.Tensor, *, with_grad: bool
) -> tuple[torch.Tensor, torch.Tensor | None]:
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


@dataclass
class _Standing:
    """The rows of one retiring PGD run still in the batch, compacted as they fall."""

    active: torch.Tensor  # positions in ``rows`` of the rows still in the batch
    images: torch.Tensor
    labels: torch.Tensor
    adv: torch.Tensor
    fallen: torch.Tensor  # fooled, still in the batch until the next compaction

    def keep(self, keep: torch.Tensor) -> None:
        """Drop the rows ``keep`` leaves out from every tensor of the batch."""
        self.active, self.images, self.labels, self.adv, self.fallen = (
            self.active[keep],
            self.images[keep],
            self.labels[keep],
            self.adv[keep],
            self.fallen[keep],
        )


def retiring_pgd(
    attack: str,
    target: AttackTarget,
    rows: torch.Tensor,
    y: torch.Tensor,
    eps: float,
    *,
    steps: int,
    alpha: float,
    start: torch.Tensor | None,
    clean_grad: torch.Tensor | None,
) -> torch.Tensor:
    """torchattacks' PGD / PGD-L2 on ``rows`` (all correct when clean), retiring each row once it is misclassified.

    Same update as ``torchattacks.PGD.forward`` / ``PGDL2.forward`` (see ``pgd_update``). A row's step depends
    only on its own point, so dropping fooled rows from the batch changes no other row's path; a fooled row keeps
    the adversarial point it found (a fresh attack could wander back to a correct point by its last step, so this
    never reports more robustness than the fresh attack). ``start`` is the random start of these rows (see
    ``random_start_delta``); without one, ``clean_grad`` is the gradient at the clean rows, shared by every
    epsilon's first step. Returns the fooled mask over ``rows``.
    """
    images = target.inputs[rows].detach()
    fooled = torch.zeros(len(rows), dtype=torch.bool, device=y.device)
    if start is not None:
        adv, grad = torch.clamp(images + start, 0, 1), None
    else:
        adv, grad = images.clone(), clean_grad[rows]
    batch = _Standing(
        torch.arange(len(rows), device=y.device), images, y[rows], adv, torch.zeros_like(fooled)
    )
    target.point_at(rows)
    for step in range(steps + 1):
        if grad is None:
            grad = _judge(target, rows, batch, fooled, with_grad=step < steps)
            if grad is None:
                break
        batch.adv = pgd_update(attack, batch.images, batch.adv, grad, eps, alpha)
        grad = None
    target.point_at(torch.arange(len(y), device=y.device))
    return fooled


def _judge(
    target: AttackTarget, rows: torch.Tensor, batch: _Standing, fooled: torch.Tensor, *, with_grad: bool
) -> torch.Tensor | None:
    """Mark the batch's misclassified rows fooled; the loss gradient for the next step, None when the attack ends.

    It ends after the last step (``with_grad`` false) or once every row has fallen.
    """
    point = batch.adv.requires_grad_(with_grad)
    with torch.set_grad_enabled(with_grad):
        logits = target.module(point)
    wrong = logits.argmax(1) != batch.labels
    fooled[batch.active[wrong]] = True
    batch.fallen |= wrong
    if not with_grad or bool(batch.fallen.all()):
        return None
    # Dropping fallen rows gathers every batch tensor; on a small model that costs more than stepping a few rows
    # further, so they go once they are a fair share of the batch.
    if int(batch.fallen.sum()) * COMPACT_SHARE < len(batch.fallen):
        return torch.autograd.grad(nn.functional.cross_entropy(logits, batch.labels), point)[0]
    keep = ~batch.fallen
    grad = torch.autograd.grad(nn.functional.cross_entropy(logits[keep], batch.labels[keep]), point)[0][keep]
    batch.keep(keep)
    target.point_at(rows[batch.active])
    return grad


def pgd_update(
    attack: str, images: torch.Tensor, adv: torch.Tensor, grad: torch.Tensor, eps: float, alpha: float
) -> torch.Tensor:
    """One step of torchattacks' PGD / PGD-L2 from ``adv``, kept in the epsilon ball around ``images``.

    ``alpha * eps`` along the gradient's sign (L2: its normalised direction), projection onto the ball, clamp to
    [0, 1], as ``torchattacks.PGD.forward`` / ``PGDL2.forward`` do.
    """
    shape = (-1,) + (1,) * (images.dim() - 1)
    adv = adv.detach()
    if attack == "pgd-l2":
        grad = grad / (grad.flatten(1).norm(dim=1) + 1e-10).view(shape)  # torchattacks' eps_for_division
        delta = adv + alpha * eps * grad - images
        delta = delta * torch.clamp(eps / delta.flatten(1).norm(dim=1), max=1.0).view(shape)
    else:
        delta = torch.clamp(adv + alpha * eps * grad.sign() - images, -eps, eps)
    return torch.clamp(images + delta, 0, 1)


def sweep(
    target: AttackTarget,
    y: torch.Tensor,
    attack: str,
    eps_list: list[float],
    *,
    steps: int,
    alpha: float,
    random_start: bool,
    seed: int,
    clean: tuple[torch.Tensor, torch.Tensor] | None = None,
) -> dict[float, torch.Tensor]:
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
            start = (
                random_start_delta(attack, target.inputs, view_eps, seed=seed)[idx] if random_start else None
            )
            fooled = retiring_pgd(
                attack, target, idx, y, view_eps, steps=steps, alpha=alpha, start=start, clean_grad=clean_grad
            )
            alive[idx[fooled]] = False
        masks[eps] = alive.clone()
    return masks


def independent(
    target: AttackTarget,
    y: torch.Tensor,
    attack: str,
    eps_list: list[float],
    *,
    steps: int,
    alpha: float,
    random_start: bool,
    seed: int,
) -> dict[float, torch.Tensor]:
    """Robust-correct mask per epsilon with a fresh attack on every row at every epsilon (the usual way)."""
    rows = torch.arange(len(y), device=y.device)
    masks = {}
    for eps in sorted(eps_list):
        torch.manual_seed(seed)
        inputs = target.select(rows)
        adv = make_attack(
            attack, target.module, eps / target.eps_scale, steps=steps, alpha=alpha, random_start=random_start
        )(inputs, y)
        masks[eps] = correct_mask(target.module, adv, y)
    return masks
