"""The one-run audit's training run: DP-SGD again, same configuration, with white-box and black-box canaries.

The released model is never touched: this is a second DP-SGD run through the same code path (the privacy
plugin's own preparation, hence the one-pass clipping of ``dp_clipping`` or Opacus' GradSampleModule, and
Opacus' DP optimizer for the noise) with the released run's noise multiplier, sampling rate, step count,
clipping norm, delta and accountant. Two kinds of canary, each included by an independent fair coin:

- white-box (the auditor sees every noisy update): a Dirac gradient canary is a per-sample gradient of norm
  ``CANARY_NORM_FACTOR`` x C along one parameter coordinate (with a random sign); when its coin is heads it
  is Poisson-sampled at each step like a row, clipped by the real clipping rule and summed before the real
  noise. Its score is the log-likelihood ratio, summed over steps, of the noisy update's component along it:
  under Poisson subsampling that beats the plain sum (the likelihood ratio is the Neyman-Pearson test).
- black-box (the auditor sees the final model): rows with random features and labels, inserted into the
  training set in place of as many random real rows (so N, and with it the sampling rate, stays the
  released run's); score = minus the final model's loss on the canary.
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from audit.config import RunConfig
from audit.data import Dataset, Split
from audit.engine import TrainingSetup, train
from audit.evaluation import per_sample_losses
from audit.training import attach_scheduler, build_setup, forked_random_state, model_spec_for, seed_everything
from audit_plugins import dp_audit, dp_clipping

CANARY_NORM_FACTOR = 10.0  # a canary's gradient is 10 C before clipping: a run that does not clip shows it
AUDIT_SEED_OFFSET = 7919  # the audit run's own seed stream (a prime), not the released run's


@dataclass
class ReleasedRun:
    """What the audit run must reproduce: the released DP-SGD run's parameters."""

    noise_multiplier: float
    max_grad_norm: float
    sample_rate: float
    steps: int
    delta: float
    epsilon: float


@dataclass
class CanaryScores:
    """The audit run's scores and coins, and the epsilon its own accountant spent (equal to the released one)."""

    whitebox_scores: np.ndarray
    whitebox_included: np.ndarray
    blackbox_scores: np.ndarray
    blackbox_included: np.ndarray
    epsilon: float
    steps: int
    seconds: float = 0.0


class GradientCanaries:
    """Dirac gradient canaries on distinct trainable coordinates; adds the sampled ones' clipped gradients."""

    def __init__(
        self, params: list[nn.Parameter], *, count: int, generator: torch.Generator, busy: torch.Tensor
    ) -> None:
        self.params = params
        sizes = torch.tensor([p.numel() for p in params])
        count = min(count, int(sizes.sum()))
        # the quietest coordinates (least data gradient), ties in random order
        shuffle = torch.randperm(len(busy), generator=generator)
        self.coords = shuffle[torch.argsort(busy[shuffle], stable=True)[:count]]
        self.signs = torch.randint(0, 2, (count,), generator=generator).double() * 2 - 1
        self.included = (torch.rand(count, generator=generator) < 0.5).numpy()
        self.generator = generator
        offsets = torch.cat([torch.zeros(1, dtype=torch.long), sizes.cumsum(0)])
        owner = torch.searchsorted(offsets, self.coords, right=True) - 1
        # (parameter index, positions in this canary list, flat indices inside that parameter)
        self.slots = [
            (i, (owner == i).nonzero().flatten(), self.coords[owner == i] - offsets[i])
            for i in range(len(params))
            if bool((owner == i).any())
        ]
        self.steps: list[torch.Tensor] = []

    def sampled(self, sample_rate: float) -> torch.Tensor:
        """This step's Poisson draw over the included canaries: a 0/1 mask over all canaries."""
        draw = torch.rand(len(self.coords), generator=self.generator) < sample_rate
        return (draw & torch.from_numpy(self.included)).double()

    def clipped_values(self, mask: torch.Tensor, max_grad_norm: float) -> torch.Tensor:
        """Each canary's clipped per-sample gradient value on its coordinate (0 where not in this batch)."""
        norms = torch.full((len(self.coords),), CANARY_NORM_FACTOR * max_grad_norm)
        factors = dp_clipping.clip_factors(norms, max_grad_norm).double()
        return mask * factors * norms.double() * self.signs

    def add_to_sums(self, values: torch.Tensor) -> None:
        """Add the canaries' clipped gradients to the clipped sums in ``.grad`` (one-pass path)."""
        for i, positions, local in self.slots:
            p = self.params[i]
            flat = p.grad.view(-1)
            flat.index_add_(0, local.to(flat.device), values[positions].to(flat.device, flat.dtype))

    def add_rows(self, mask: torch.Tensor, max_grad_norm: float) -> None:
        """Append one unclipped per-sample gradient row per sampled canary to ``grad_sample`` (Opacus clips them)."""
        sampled = mask.nonzero().flatten()
        row_of = torch.full((len(self.coords),), -1, dtype=torch.long)
        row_of[sampled] = torch.arange(len(sampled))
        extras = [torch.zeros(len(sampled), p.numel(), device=p.device, dtype=p.dtype) for p in self.params]
        unclipped = self.signs * CANARY_NORM_FACTOR * max_grad_norm
        for i, positions, local in self.slots:
            rows = row_of[positions]
            keep = rows >= 0
            extras[i][rows[keep], local[keep]] = unclipped[positions[keep]].to(extras[i].dtype)
        for p, extra in zip(self.params, extras):
            p.grad_sample = torch.cat([p.grad_sample, extra.view(len(sampled), *p.shape)])

    def observe(self, optimizer: Any, *, max_grad_norm: float) -> None:
        """Record this step's noisy update along every canary, in units of one clipped canary."""
        x = torch.zeros(len(self.coords), dtype=torch.float64)
        for i, positions, local in self.slots:
            x[positions] = self.params[i].grad.view(-1)[local.to(self.params[i].device)].double().cpu()
        self.steps.append((x * self.signs * optimizer.expected_batch_size / max_grad_norm).float())

    def scores(self, *, noise_multiplier: float, sample_rate: float) -> np.ndarray:
        """Each canary's log-likelihood ratio summed over the steps (subsampled Gaussian at the claimed noise)."""
        x = torch.stack(self.steps).double() if self.steps else torch.zeros(1, len(self.coords))
        z = (x - 0.5) / noise_multiplier**2
        log_keep = math.log1p(-sample_rate) if sample_rate < 1 else -math.inf
        return (
            torch.logaddexp(torch.tensor(log_keep, dtype=torch.float64), math.log(sample_rate) + z)
            .sum(0)
            .numpy()
        )


def gradient_activity(
    model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, generator: torch.Generator, chunks: int = 32
) -> torch.Tensor:
    """Each trainable coordinate's mean squared gradient over small random batches of real rows, at the start.

    Canaries go on the quietest coordinates: real rows' gradients along a canary's coordinate are the same
    whether it is in or out, so they only add noise to its score. Choosing coordinates from the data (never
    from the coins) keeps the theorem's assumption. Run in eval mode with Opacus' hooks off: the per-sample
    machinery records nothing.
    """
    params = [p for p in model.parameters() if p.requires_grad]
    total = torch.zeros(sum(p.numel() for p in params), dtype=torch.float64)
    was_training, hooks = model.training, getattr(model, "hooks_enabled", None)
    model.eval()
    if hooks is not None:  # Opacus' GradSampleModule
        model.disable_hooks()
    device = params[0].device
    try:
        for _ in range(chunks):
            rows = torch.randint(0, len(y), (min(64, len(y)),), generator=generator)
            loss = nn.functional.cross_entropy(model(x[rows].to(device)), y[rows].to(device), reduction="sum")
            grads = torch.autograd.grad(loss, params)
            total += torch.cat([g.reshape(-1) for g in grads]).double().cpu().square()
    finally:
        model.train(was_training)
        if hooks:
            model.enable_hooks()
    return total / chunks


def canary_rows(
    dataset: Dataset, *, count: int, generator: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """Black-box canaries: features drawn uniformly within the training range, labels uniformly at random."""
    width = math.prod(dataset.input_shape)
    lower, upper = dataset.lower.float().flatten(), dataset.upper.float().flatten()
    if lower.numel() != width:  # no per-feature range recorded: the unit box
        lower, upper = torch.zeros(width), torch.ones(width)
    x = torch.rand(count, width, generator=generator) * (upper - lower) + lower
    y = torch.randint(0, dataset.num_classes, (count,), generator=generator)
    return x.view(count, *dataset.input_shape).to(dataset.train.x.dtype), y.to(dataset.train.y.dtype)


def with_canaries(
    dataset: Dataset, x: torch.Tensor, y: torch.Tensor, included: np.ndarray, *, generator: torch.Generator
) -> Dataset:
    """The training split with the included canaries in place of as many random real rows (N stays the same)."""
    train, k = dataset.train, int(included.sum())
    keep = torch.randperm(len(train), generator=generator)[k:].sort().values
    mask = torch.from_numpy(included)
    # canaries belong to no sensitive group: missing values (a frame without columns may hold no rows at all)
    groups = train.groups.iloc[keep.numpy()] if len(train.groups) == len(train) else train.groups.iloc[:0]
    groups = groups.reset_index(drop=True).reindex(range(len(train)))
    split = Split(torch.cat([train.x[keep], x[mask]]), torch.cat([train.y[keep], y[mask]]), groups)
    return dataclasses.replace(dataset, train=split)


def _wire(setup: TrainingSetup, canaries: GradientCanaries, released: ReleasedRun) -> None:
    """Insert the sampled canaries after the real per-sample gradients and observe every noisy update."""
    state = setup.artifacts["privacy"]
    inner, one_pass, clip = setup.backward, state.clipper is not None, released.max_grad_norm

    def backward(loss: torch.Tensor, rows: int) -> None:
        if inner is not None:
            inner(loss, rows)
        else:
            loss.backward()
        mask = canaries.sampled(released.sample_rate)
        if one_pass:  # the clipper has written the clipped sums: add the canaries' clipped gradients
            canaries.add_to_sums(canaries.clipped_values(mask, clip))
        else:  # Opacus clips from grad_sample: the canaries join it as rows of their own
            canaries.add_rows(mask, clip)

    previous = setup.optimizer.step_hook

    def hook(optimizer: Any) -> None:
        if previous is not None:
            previous(optimizer)
        canaries.observe(optimizer, max_grad_norm=clip)

    setup.backward = backward
    setup.optimizer.attach_step_hook(hook)


def _audit_config(config: RunConfig, released: ReleasedRun) -> RunConfig:
    """The released run's configuration, with its noise multiplier given and every planned step taken."""
    steps_per_epoch = max(1, round(1 / released.sample_rate))
    options = {**config.options, "epsilon": None, "noise_multiplier": released.noise_multiplier}
    return dataclasses.replace(
        config,
        epochs=max(1, math.ceil(released.steps / steps_per_epoch)),
        patience=None,  # every step the accountant counted, and no validation-driven choice
        quiet=True,
        options=options,
        sources=dict(config.sources),
    )


def _check_same_run(setup: TrainingSetup, released: ReleasedRun) -> None:
    """The audit run must be the released run's mechanism; anything else would audit something else."""
    state = setup.artifacts["privacy"]
    planned = setup.config.epochs * setup.batch_sampler.steps_per_epoch
    same = (
        state.noise_multiplier == released.noise_multiplier
        and state.max_grad_norm == released.max_grad_norm
        and math.isclose(state.sample_rate, released.sample_rate, rel_tol=1e-12)
        and planned == released.steps
        and state.delta == released.delta
    )
    if not same:
        raise RuntimeError(
            f"the audit run is not the released DP-SGD run: sigma {state.noise_multiplier} vs "
            f"{released.noise_multiplier}, q {state.sample_rate} vs {released.sample_rate}, steps {planned} vs "
            f"{released.steps}"
        )


def run_canaries(
    *,
    config: RunConfig,
    dataset: Dataset,
    device: torch.device,
    released: ReleasedRun,
    prepare: Callable[[TrainingSetup], None],
    finish: Callable[[TrainingSetup], None],
    count: int,
) -> CanaryScores:
    """Train the audit run with ``count`` canaries of each kind; return their scores and coins.

    ``prepare`` and ``finish`` are the privacy plugin's own hooks (make private, detach), so the audit run takes
    the released run's DP code path. Random streams are forked: the released model and later audits see none
    of this run's draws.
    """
    with forked_random_state():
        return _train_audit_run(config, dataset, device, released, prepare, finish, count)


def _train_audit_run(
    config: RunConfig,
    dataset: Dataset,
    device: torch.device,
    released: ReleasedRun,
    prepare: Callable[[TrainingSetup], None],
    finish: Callable[[TrainingSetup], None],
    count: int,
) -> CanaryScores:
    started = time.perf_counter()
    audit_config = _audit_config(config, released)
    generator = seed_everything(config.seed + AUDIT_SEED_OFFSET)
    draws = torch.Generator().manual_seed(config.seed + AUDIT_SEED_OFFSET)
    # at most half the training rows: the included ones replace real rows, and N stays the released run's
    blackbox_count = max(2, min(count, len(dataset.train) // 2))
    x, y = canary_rows(dataset, count=blackbox_count, generator=draws)
    blackbox_included = (torch.rand(blackbox_count, generator=draws) < 0.5).numpy()
    data = with_canaries(dataset, x, y, blackbox_included, generator=draws)
    setup = build_setup(audit_config, data, device, generator, model_spec_for(audit_config, data))
    prepare(setup)
    _check_same_run(setup, released)
    busy = gradient_activity(setup.model, data.train.x, data.train.y, generator=draws)
    canaries = GradientCanaries(
        [p for p in setup.base_model.parameters() if p.requires_grad], count=count, generator=draws, busy=busy
    )
    _wire(setup, canaries, released)
    attach_scheduler(setup)
    train(setup, progress=False)
    finish(setup)
    state = setup.artifacts["privacy"]
    losses = per_sample_losses(setup.base_model.eval(), x, y.long(), device)
    return CanaryScores(
        whitebox_scores=canaries.scores(
            noise_multiplier=released.noise_multiplier, sample_rate=released.sample_rate
        ),
        whitebox_included=canaries.included,
        blackbox_scores=-losses.numpy(),
        blackbox_included=blackbox_included,
        epsilon=state.epsilon(),
        steps=state.steps(),
        seconds=time.perf_counter() - started,
    )


def audit_payload(
    *,
    config: RunConfig,
    dataset: Dataset,
    device: torch.device,
    guarantee: dict[str, Any],
    prepare: Callable[[TrainingSetup], None],
    finish: Callable[[TrainingSetup], None],
    count: int,
    confidence: float = 0.95,
) -> dict[str, Any]:
    """The audit's JSON-able payload: both bounds (each at half the risk, so their maximum holds at ``confidence``)."""
    released = ReleasedRun(
        noise_multiplier=guarantee["noise_multiplier"],
        max_grad_norm=guarantee["max_grad_norm"],
        sample_rate=guarantee["sample_rate"],
        steps=guarantee["steps"],
        delta=guarantee["delta"],
        epsilon=guarantee["epsilon"],
    )
    scores = run_canaries(
        config=config,
        dataset=dataset,
        device=device,
        released=released,
        prepare=prepare,
        finish=finish,
        count=count,
    )
    each = 1 - (1 - confidence) / 2
    kwargs = dict(delta=released.delta, confidence=each)
    whitebox = dp_audit.audit_scores(scores.whitebox_scores, scores.whitebox_included, **kwargs)
    # a black-box canary replaces a real row (the run keeps its rows and sampling rate): a replace-one coin
    blackbox = dp_audit.audit_scores(
        scores.blackbox_scores, scores.blackbox_included, neighbours="replace", **kwargs
    )
    return {
        "skipped": None,
        "confidence": confidence,
        "accountant_epsilon": released.epsilon,
        "audit_run_epsilon": scores.epsilon,
        "audit_run_steps": scores.steps,
        "epsilon_lower_bound": max(whitebox.epsilon_lower_bound, blackbox.epsilon_lower_bound),
        "canaries": whitebox.canaries,  # asked for ``count``; fewer when the model has fewer coordinates
        "whitebox": whitebox.to_dict(),
        "blackbox": blackbox.to_dict(),
        "seconds": scores.seconds,
    }
