"""The training loop: tensor-sliced batches, one screen long; calls hooks at fixed points, knows no plugin."""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from audit.config import RunConfig
from audit.data import Dataset
from audit.errors import TrainingDiverged
from audit.progress import progress_bar

log = logging.getLogger(__name__)

EXPLODING_FACTOR = 100.0  # a step's gradient norm this many times the first epoch's median is "exploding"
EVAL_BATCH = 4096


class ShuffledBatches:
    """Each epoch, a seeded permutation of the training rows cut into batches of index tensors."""

    def __init__(self, *, num_rows: int, batch_size: int) -> None:
        self.num_rows, self.batch_size = num_rows, batch_size
        self.steps_per_epoch = math.ceil(num_rows / batch_size)

    def __call__(self, generator: torch.Generator) -> Iterator[torch.Tensor]:
        return iter(torch.randperm(self.num_rows, generator=generator).split(self.batch_size))


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
    model_spec: dict[
        str, Any
    ]  # the recipe saved in model.pt; a plugin that changes the architecture records it here
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


def _validate(setup: TrainingSetup) -> tuple[float, float]:
    val = setup.dataset.val
    if len(val) == 0:
        return math.nan, math.nan
    logits = predict_logits(setup.model, val.x, setup.device)
    loss = nn.functional.cross_entropy(logits, val.y).item()
    return loss, (logits.argmax(1) == val.y).float().mean().item()


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def train(
    setup: TrainingSetup,
    *,
    after_epoch: Callable[[EpochState], list[dict[str, float] | None]] = lambda s: [],
    progress: bool = True,
    desc: str | None = None,
) -> TrainResult:
    """Train ``setup.model``; keep the weights of the best validation epoch when early stopping is on."""
    config, device, model, optimizer = setup.config, setup.device, setup.model, setup.optimizer
    pin = device.type == "cuda"
    X = (setup.dataset.train.x.pin_memory() if pin else setup.dataset.train.x).to(device, non_blocking=True)
    Y = setup.dataset.train.y.to(device, non_blocking=True)
    W = setup.sample_weights.to(device) if setup.sample_weights is not None else None
    params = [p for p in model.parameters() if p.requires_grad]
    scaler = torch.amp.GradScaler("cuda") if setup.use_amp else None
    steps_per_epoch = setup.batch_sampler.steps_per_epoch
    history: list[dict[str, float]] = []
    warnings: list[str] = []
    best = (math.inf, 0, None)  # (monitored score, lower is better; epoch; state)
    lowest_val_loss = math.inf
    patience, stale, steps, seen, train_time, norm_baseline = config.patience, 0, 0, 0, 0.0, None
    wall_start = time.perf_counter()
    bar = progress_bar(
        total=config.epochs * steps_per_epoch, desc=desc, unit="step", enabled=progress, leave=desc is None
    )
    for epoch in range(1, config.epochs + 1):
        model.train()
        losses = torch.zeros(steps_per_epoch, device=device)
        norms = torch.zeros(steps_per_epoch, device=device)
        _sync(device)
        t0 = time.perf_counter()
        for step, idx in enumerate(setup.batch_sampler(setup.generator)):
            idx = idx.to(device, non_blocking=True)
            xb, yb = X.index_select(0, idx), Y.index_select(0, idx)
            if setup.batch_transform is not None:
                xb = setup.batch_transform(xb, yb)
            with torch.autocast(device.type, enabled=setup.use_amp):
                per_sample = setup.criterion(model(xb), yb)
            if W is not None:
                per_sample = per_sample * W.index_select(0, idx)
            loss = per_sample.float().sum() / max(len(idx), 1)
            optimizer.zero_grad(set_to_none=True)
            if scaler is not None:
                scaler.scale(loss).backward()
                scaler.unscale_(optimizer)
            elif setup.backward is not None:
                setup.backward(loss, len(idx))
            else:
                loss.backward()
            if setup.grad_clip is not None:
                norms[step] = nn.utils.clip_grad_norm_(params, setup.grad_clip)
            elif setup.track_grad_norm:  # the norm only, without clip_grad_norm_'s multiply by 1
                norms[step] = _total_norm([p.grad for p in params if p.grad is not None])
            if scaler is not None:
                scaler.step(optimizer)
                scaler.update()
            else:
                optimizer.step()
            if setup.scheduler is not None and setup.scheduler_per_step:
                setup.scheduler.step()
            losses[step] = loss.detach()
            seen += len(idx)
            bar.update(1)
        _sync(device)
        train_time += time.perf_counter() - t0
        steps += steps_per_epoch
        bad = ~torch.isfinite(losses) | ~torch.isfinite(norms)
        if bad.any():
            first = int(bad.nonzero()[0])
            what = "loss" if not torch.isfinite(losses[first]) else "gradient norm"
            raise TrainingDiverged(
                f"training diverged: the {what} became {losses[first].item() if what == 'loss' else norms[first].item()} "
                f"at epoch {epoch}, step {first + 1}; try a lower --lr or --grad-clip"
            )
        if setup.scheduler is not None and not setup.scheduler_per_step:
            setup.scheduler.step()
        if setup.track_grad_norm:
            if norm_baseline is None:
                norm_baseline = float(norms.median())
            elif (
                norm_baseline > 0
                and float(norms.max()) > EXPLODING_FACTOR * norm_baseline
                and not any("exploding" in w for w in warnings)
            ):
                warnings.append(
                    f"exploding gradient norms: epoch {epoch} reached {float(norms.max()):.3g}, "
                    f"over {EXPLODING_FACTOR:g}x the first epoch's median {norm_baseline:.3g}"
                )
        val_loss, val_acc = _validate(setup)
        record = {
            "epoch": epoch,
            "train_loss": float(losses.mean()),
            "val_loss": val_loss,
            "val_accuracy": val_acc,
            "lr": optimizer.param_groups[0]["lr"],
            "epoch_time_s": time.perf_counter() - t0,
        }
        if setup.track_grad_norm:
            record["grad_norm_median"] = float(norms.median())
        for extra in after_epoch(EpochState(setup=setup, epoch=epoch, steps_done=steps, record=record)):
            record.update(extra or {})
        history.append(record)
        bar.set_postfix(epoch=epoch, loss=f"{record['train_loss']:.4f}", val_acc=f"{val_acc:.4f}")
        lowest_val_loss = min(lowest_val_loss, val_loss)
        score = val_loss if setup.monitor == "val_loss" else -val_acc
        if score < best[0]:
            state = {k: v.detach().clone() for k, v in setup.base_model.state_dict().items()}
            best, stale = (score, epoch, state), 0
        else:
            stale += 1
        if patience is not None and stale >= patience and epoch < config.epochs:
            break
    bar.close()
    diverging = [h for h in history if h["val_loss"] > 1.5 * lowest_val_loss]
    if len(diverging) >= 2 and diverging[-1]["epoch"] == history[-1]["epoch"]:
        warnings.append(
            f"validation loss diverged: {history[-1]['val_loss']:.4f} at epoch {history[-1]['epoch']} "
            f"against the lowest {lowest_val_loss:.4f}"
        )
    stopped_early = len(history) < config.epochs
    if patience is not None and best[2] is not None:
        setup.base_model.load_state_dict(best[2])
    best_epoch = best[1] if patience is not None and best[2] is not None else len(history)
    return TrainResult(
        history=history,
        best_epoch=best_epoch,
        stopped_early=stopped_early,
        steps=steps,
        samples_seen=seen,
        train_time_s=train_time,
        wall_time_s=time.perf_counter() - wall_start,
        warnings=warnings,
    )
