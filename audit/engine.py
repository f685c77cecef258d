"""The training loop: tensor-sliced batches, one screen long; calls hooks at fixed points, knows no plugin.

``train`` reads like minGPT's trainer: ``TrainingStep`` is one optimizer step, ``run_epoch`` one pass over the
batches, ``HealthChecks`` the divergence and explosion checks, ``EarlyStopping`` the kept epoch."""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from audit.config import RunConfig
from audit.data import Dataset
from audit.distributed import World, all_reduce_mean_
from audit.errors import TrainingDiverged
from audit.progress import progress_bar

if TYPE_CHECKING:
    from tqdm import tqdm

EXPLODING_FACTOR = 100.0  # a step's gradient norm this many times the first epoch's median is "exploding"
DIVERGING_FACTOR = 1.5  # a validation loss this many times the lowest so far counts as diverging
EVAL_BATCH = 4096


class ShuffledBatches:
    """Each epoch, a seeded permutation of the training rows cut into batches of index tensors."""

    def __init__(self, *, num_rows: int, batch_size: int) -> None:
        self.num_rows, self.batch_size = num_rows, batch_size
        self.steps_per_epoch = math.ceil(num_rows / batch_size)

    def __call__(self, generator: torch.Generator) -> Iterator[torch.Tensor]:
        return iter(torch.randperm(self.num_rows, generator=generator).split(self.batch_size))

    @staticmethod
    def shard(idx: torch.Tensor, world: World) -> torch.Tensor:
        """This rank's rows of a global batch: every ``world_size``-th, so the shards differ by one row at most."""
        return idx[world.rank :: world.world_size]


class PoissonBatches:
    """Poisson sampling: every step keeps each row independently with probability ``sample_rate``."""

    def __init__(self, *, num_rows: int, sample_rate: float, steps_per_epoch: int | None = None) -> None:
        self.num_rows, self.sample_rate = num_rows, sample_rate
        self.steps_per_epoch = steps_per_epoch or max(1, round(1 / sample_rate))

    def __call__(self, generator: torch.Generator) -> Iterator[torch.Tensor]:
        for _ in range(self.steps_per_epoch):
            yield self.sample(generator)

    def sample(self, generator: torch.Generator) -> torch.Tensor:
        """One Poisson batch: the rows of a Bernoulli(q) process over 0..N-1, drawn through its gaps.

        The gaps between kept rows are Geometric(q) on {1, 2, ...}, so about qN draws replace N
        uniforms, with exactly the same distribution (float64 keeps every position exact)."""
        n, q = self.num_rows, self.sample_rate
        if q >= 1.0:
            return torch.arange(n)
        chunk = int(n * q + 6 * math.sqrt(n * q) + 16)
        positions = torch.empty(chunk, dtype=torch.float64).geometric_(q, generator=generator).cumsum(0) - 1
        while positions[-1] < n:
            more = torch.empty(chunk, dtype=torch.float64).geometric_(q, generator=generator).cumsum(0)
            positions = torch.cat([positions, positions[-1] + more])
        return positions[positions < n].long()

    @staticmethod
    def shard(idx: torch.Tensor, world: World) -> torch.Tensor:
        """This rank's rows of a global Poisson batch: those with ``row % world_size == rank``.

        Each rank then holds a Poisson(q) sample of its fixed share of the rows, independent of the others'
        (the global draw is the union of the ranks' draws): sampling and accounting at rate q are unchanged."""
        return idx[idx % world.world_size == world.rank]


@dataclass(frozen=True)
class DataUse:
    """A data-dependent step outside the optimizer (e.g. reweighting counts); ``epsilon`` None means not privatised."""

    name: str
    description: str
    epsilon: float | None = None


@dataclass
class TrainingSetup:
    """Everything the loop uses. Plugins edit it in ``audit_prepare_training`` before the first step."""

    config: RunConfig
    dataset: Dataset
    base_model: nn.Module  # the model as built; wrappers (DP, compile) share its parameters
    # The recipe saved in model.pt; a plugin that changes the architecture records it here.
    model_spec: dict[str, Any]
    model: nn.Module
    optimizer: torch.optim.Optimizer
    criterion: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]  # returns per-sample losses
    batch_sampler: ShuffledBatches | PoissonBatches
    device: torch.device
    generator: torch.Generator
    sample_weights: torch.Tensor | None = None
    scheduler: Any = None
    scheduler_per_step: bool = True
    grad_clip: float | None = None
    use_amp: bool = False
    track_grad_norm: bool = True
    # Applied to each training batch before the forward pass (adversarial training, augmentation).
    batch_transform: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None
    # Replaces ``loss.backward()``: called with the batch's mean loss and its row count (DP clipping in one pass).
    backward: Callable[[torch.Tensor, int], None] | None = None
    monitor: str = "val_loss"  # what picks the kept epoch: "val_loss" (lower) or "val_accuracy" (higher)
    notes: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    artifacts: dict[str, Any] = field(default_factory=dict)
    data_uses: list[DataUse] = field(default_factory=list)
    # Distributed training (set by the runner for the released model only): this rank takes its shard of each
    # global batch; the core wraps the model in DistributedDataParallel unless a plugin all-reduces the
    # gradients itself (DP-SGD sums the clipped gradients before its noise) and says so here.
    world: World | None = None
    syncs_gradients: bool = False


@dataclass
class EpochState:
    """What ``audit_after_epoch`` sees: the setup and this epoch's figures so far."""

    setup: TrainingSetup
    epoch: int
    steps_done: int
    record: dict[str, float]


@dataclass
class TrainResult:
    """What the loop measured: per-epoch history, timings, and the epoch whose weights were kept."""

    history: list[dict[str, float]]
    best_epoch: int
    stopped_early: bool
    steps: int
    samples_seen: int
    train_time_s: float
    wall_time_s: float
    warnings: list[str]
    world_size: int = 1  # processes that trained (samples_seen counts all of them)


def _total_norm(grads: list[torch.Tensor]) -> torch.Tensor:
    """The L2 norm of all gradients together (``get_total_norm`` exists from torch 2.6 on)."""
    if hasattr(nn.utils, "get_total_norm"):
        return nn.utils.get_total_norm(grads)
    return (
        torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in grads]))
        if grads
        else torch.zeros(())
    )


@torch.no_grad()
def predict_logits(
    model: nn.Module, x: torch.Tensor, device: torch.device, batch_size: int = EVAL_BATCH
) -> torch.Tensor:
    """Logits for every row, in eval mode, in large batches; returned on the CPU."""
    was_training = model.training
    model.eval()
    out = [model(chunk.to(device, non_blocking=True)).float().cpu() for chunk in x.split(batch_size)]
    model.train(was_training)
    return torch.cat(out) if out else torch.zeros(0)


def validate(setup: TrainingSetup) -> tuple[float, float]:
    """Loss and accuracy of ``setup.model`` on the validation split; NaN for both when it is empty."""
    val = setup.dataset.val
    if len(val) == 0:
        return math.nan, math.nan
    logits = predict_logits(setup.model, val.x, setup.device)
    loss = nn.functional.cross_entropy(logits, val.y).item()
    return loss, (logits.argmax(1) == val.y).float().mean().item()


def _clock(device: torch.device) -> float:
    """``time.perf_counter()`` once queued CUDA work has finished, so that timings cover it."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter()


class TrainingStep:
    """One optimizer step on a batch of row indices; holds the training tensors on the device and the AMP scaler."""

    def __init__(self, setup: TrainingSetup) -> None:
        self.setup = setup
        # The model and optimizer as the loop starts; the rest of ``setup`` is read at every step.
        self.model, self.optimizer, device = setup.model, setup.optimizer, setup.device
        train_split = setup.dataset.train
        pin = device.type == "cuda"  # a pinned source lets the copy to the GPU run asynchronously
        self.x = (train_split.x.pin_memory() if pin else train_split.x).to(device, non_blocking=True)
        self.y = train_split.y.to(device, non_blocking=True)
        weights = setup.sample_weights
        self.weights = weights.to(device) if weights is not None else None
        self.params = [p for p in self.model.parameters() if p.requires_grad]
        self.scaler = torch.amp.GradScaler("cuda") if setup.use_amp else None

    def __call__(self, idx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Forward, weighted mean loss, backward, step; return the detached loss and the gradient norm (or None)."""
        setup = self.setup
        rows = len(idx)  # the global batch's
        if setup.world is not None:
            idx = setup.batch_sampler.shard(idx, setup.world)
        idx = idx.to(setup.device, non_blocking=True)
        xb, yb = self.x.index_select(0, idx), self.y.index_select(0, idx)
        if setup.batch_transform is not None:
            xb = setup.batch_transform(xb, yb)
        with torch.autocast(setup.device.type, enabled=setup.use_amp):
            per_sample = setup.criterion(self.model(xb), yb)
        if self.weights is not None:
            per_sample = per_sample * self.weights.index_select(0, idx)
        # sum / rows rather than .mean(): an empty Poisson batch then gives a loss of 0, not NaN.
        loss = per_sample.float().sum() / max(len(idx), 1)
        self.optimizer.zero_grad(set_to_none=True)
        if setup.world is None:
            self._backward(loss, len(idx))
        else:
            # This rank's share of the global mean: DDP's average of (world * local sum / global rows) over the
            # ranks is the global batch's mean gradient, whatever the shard sizes; so is the epoch's mean loss.
            share = len(idx) * setup.world.world_size / max(rows, 1)
            self._backward(loss if setup.syncs_gradients else loss * share, len(idx))
            loss = loss * share
        norm = self._grad_norm()
        self._optimizer_step()
        return loss.detach(), norm

    def _backward(self, loss: torch.Tensor, rows: int) -> None:
        """Gradients of ``loss``: via the AMP scaler (unscaled again for the norm), ``setup.backward`` or autograd."""
        if self.scaler is not None:
            self.scaler.scale(loss).backward()
            self.scaler.unscale_(self.optimizer)
        elif self.setup.backward is not None:
            self.setup.backward(loss, rows)
        else:
            loss.backward()

    def _grad_norm(self) -> torch.Tensor | None:
        """The total gradient norm, clipped to ``setup.grad_clip`` when set; None when neither clipped nor tracked."""
        if self.setup.grad_clip is not None:
            return nn.utils.clip_grad_norm_(self.params, self.setup.grad_clip)
        if self.setup.track_grad_norm:  # the norm only, without clip_grad_norm_'s multiply by 1
            return _total_norm([p.grad for p in self.params if p.grad is not None])
        return None

    def _optimizer_step(self) -> None:
        """The optimizer's step (the scaler skips steps with inf/NaN gradients), then a per-step schedule's."""
        if self.scaler is not None:
            self.scaler.step(self.optimizer)
            self.scaler.update()
        else:
            self.optimizer.step()
        if self.setup.scheduler is not None and self.setup.scheduler_per_step:
            self.setup.scheduler.step()


def run_epoch(step: TrainingStep, bar: tqdm) -> tuple[torch.Tensor, torch.Tensor, int]:
    """One pass over the sampler's batches: per-step losses and gradient norms (kept on the device), rows seen."""
    setup = step.setup
    step.model.train()
    steps_per_epoch = setup.batch_sampler.steps_per_epoch
    # Filled on the device and read once at the end of the epoch: no host sync per step.
    losses = torch.zeros(steps_per_epoch, device=setup.device)
    norms = torch.zeros(steps_per_epoch, device=setup.device)
    rows = 0
    for i, idx in enumerate(setup.batch_sampler(setup.generator)):
        losses[i], norm = step(idx)
        if norm is not None:
            norms[i] = norm
        rows += len(idx)
        bar.update(1)
    return losses, norms, rows


class HealthChecks:
    """The loop's health checks: a non-finite loss or gradient norm stops it; explosions and divergence warn."""

    def __init__(self) -> None:
        self.norm_baseline: float | None = None  # the first epoch's median gradient norm
        self.warnings: list[str] = []

    @staticmethod
    def check_finite(epoch: int, losses: torch.Tensor, norms: torch.Tensor) -> None:
        """Raise ``TrainingDiverged`` naming the epoch and step of the first non-finite loss or gradient norm."""
        bad = ~torch.isfinite(losses) | ~torch.isfinite(norms)
        if not bad.any():
            return
        first = int(bad.nonzero()[0])
        what = "loss" if not torch.isfinite(losses[first]) else "gradient norm"
        value = losses[first].item() if what == "loss" else norms[first].item()
        raise TrainingDiverged(
            f"training diverged: the {what} became {value} "
            f"at epoch {epoch}, step {first + 1}; try a lower --lr or --grad-clip"
        )

    @staticmethod
    def check_weights(epoch: int, model: nn.Module) -> None:
        """Raise ``TrainingDiverged`` when an update left a weight NaN or infinite (a finite loss can precede it)."""
        bad = [name for name, p in model.named_parameters() if not bool(torch.isfinite(p).all())]
        if bad:
            raise TrainingDiverged(
                f"training diverged: the weights of {bad[0]} became NaN or infinite in epoch {epoch}; "
                "try a lower --lr or --grad-clip"
            )

    def check_grad_norms(self, epoch: int, norms: torch.Tensor) -> None:
        """Warn once when a step's gradient norm exceeds ``EXPLODING_FACTOR`` times the first epoch's median."""
        if self.norm_baseline is None:
            self.norm_baseline = float(norms.median())
        elif (
            self.norm_baseline > 0
            and float(norms.max()) > EXPLODING_FACTOR * self.norm_baseline
            and not any("exploding" in w for w in self.warnings)
        ):
            self.warnings.append(
                f"exploding gradient norms: epoch {epoch} reached {float(norms.max()):.3g}, "
                f"over {EXPLODING_FACTOR:g}x the first epoch's median {self.norm_baseline:.3g}"
            )

    def check_validation(self, history: list[dict[str, float]]) -> None:
        """Warn when the validation loss ends an epoch above ``DIVERGING_FACTOR`` times its lowest, twice or more."""
        lowest = math.inf
        for record in history:  # min() in epoch order from inf: a NaN loss never becomes the lowest
            lowest = min(lowest, record["val_loss"])
        diverging = [h for h in history if h["val_loss"] > DIVERGING_FACTOR * lowest]
        if len(diverging) >= 2 and diverging[-1]["epoch"] == history[-1]["epoch"]:
            self.warnings.append(
                f"validation loss diverged: {history[-1]['val_loss']:.4f} at epoch {history[-1]['epoch']} "
                f"against the lowest {lowest:.4f}"
            )


class EarlyStopping:
    """Tracks the best epoch on ``monitor`` ("val_loss", lower, or "val_accuracy", higher) and keeps its weights."""

    def __init__(self, monitor: str, patience: int | None) -> None:
        self.monitor, self.patience = monitor, patience
        self.best_score, self.best_epoch, self.stale = math.inf, 0, 0
        self.best_state: dict[str, torch.Tensor] | None = None

    def update(self, epoch: int, record: dict[str, float], model: nn.Module) -> bool:
        """Score this epoch, keep the weights if it is the best so far; True once patience has run out."""
        score = record["val_loss"] if self.monitor == "val_loss" else -record["val_accuracy"]
        if score < self.best_score:  # a NaN score (no validation rows) never improves
            self.best_score, self.best_epoch, self.stale = score, epoch, 0
            if self.patience is not None:  # without early stopping the last weights are kept: no copy needed
                self.best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
        else:
            self.stale += 1
        return self.patience is not None and self.stale >= self.patience

    def restore(self, model: nn.Module, epochs_run: int) -> int:
        """Load the best epoch's weights into ``model`` when early stopping is on; return the kept epoch."""
        if self.best_state is None:
            return epochs_run
        model.load_state_dict(self.best_state)
        return self.best_epoch


def epoch_record(
    step: TrainingStep, epoch: int, losses: torch.Tensor, norms: torch.Tensor, t0: float
) -> dict[str, float]:
    """The epoch's row of the training history, before plugins add theirs (validation runs here)."""
    setup = step.setup
    val_loss, val_acc = validate(setup)
    record = {
        "epoch": epoch,
        "train_loss": float(losses.mean()),
        "val_loss": val_loss,
        "val_accuracy": val_acc,
        "lr": step.optimizer.param_groups[0]["lr"],
        "epoch_time_s": time.perf_counter() - t0,
    }
    if setup.track_grad_norm:
        record["grad_norm_median"] = float(norms.median())
    return record


def train(
    setup: TrainingSetup,
    *,
    after_epoch: Callable[[EpochState], list[dict[str, float] | None]] = lambda s: [],
    progress: bool = True,
    desc: str | None = None,
) -> TrainResult:
    """Train ``setup.model``; keep the weights of the best validation epoch when early stopping is on."""
    config, device, steps_per_epoch = setup.config, setup.device, setup.batch_sampler.steps_per_epoch
    step, health = TrainingStep(setup), HealthChecks()
    stopping = EarlyStopping(setup.monitor, config.patience)
    history: list[dict[str, float]] = []
    steps, seen, train_time, wall_start = 0, 0, 0.0, time.perf_counter()
    bar = progress_bar(
        total=config.epochs * steps_per_epoch, desc=desc, unit="step", enabled=progress, leave=desc is None
    )
    for epoch in range(1, config.epochs + 1):
        t0 = _clock(device)
        losses, norms, rows = run_epoch(step, bar)
        train_time += _clock(device) - t0
        if setup.world is not None:  # every rank sees the global figures, so every rank stops alike
            losses, norms = all_reduce_mean_(losses, setup.world), all_reduce_mean_(norms, setup.world)
        steps, seen = steps + steps_per_epoch, seen + rows
        health.check_finite(epoch, losses, norms)
        health.check_weights(epoch, setup.base_model)
        if setup.scheduler is not None and not setup.scheduler_per_step:
            setup.scheduler.step()
        if setup.track_grad_norm:
            health.check_grad_norms(epoch, norms)
        record = epoch_record(step, epoch, losses, norms, t0)
        for extra in after_epoch(EpochState(setup=setup, epoch=epoch, steps_done=steps, record=record)):
            record.update(extra or {})
        history.append(record)
        bar.set_postfix(
            epoch=epoch, loss=f"{record['train_loss']:.4f}", val_acc=f"{record['val_accuracy']:.4f}"
        )
        if stopping.update(epoch, record, setup.base_model):
            break  # on the last epoch this changes nothing: the loop ends either way
    bar.close()
    health.check_validation(history)
    return TrainResult(
        history=history,
        best_epoch=stopping.restore(setup.base_model, len(history)),
        stopped_early=len(history) < config.epochs,
        steps=steps,
        samples_seen=seen,
        train_time_s=train_time,
        wall_time_s=time.perf_counter() - wall_start,
        warnings=health.warnings,
        world_size=setup.world.world_size if setup.world is not None else 1,
    )
