"""Training set-up: seeds, device, optimizer, schedule and the default ``TrainingSetup``; the loop is in ``engine``."""

from __future__ import annotations

import math
import random
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import numpy as np
import torch
from torch import nn

from audit.config import RunConfig
from audit.data import Dataset
from audit.distributed import broadcast_
from audit.engine import ShuffledBatches, TrainingSetup, TrainResult, train
from audit.models import build_model, model_spec


def seed_everything(seed: int) -> torch.Generator:
    """Seed Python, NumPy and torch from one seed; return the generator that drives batch order."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    return torch.Generator().manual_seed(seed)


@contextmanager
def forked_random_state() -> Iterator[None]:
    """Run a block on forked torch (CPU, CUDA), NumPy and Python random streams: the run's own draws stay unchanged.

    An audit that trains a model of its own (canaries, reference models) must not shift the released run's streams.
    """
    np_state, py_state = np.random.get_state(), random.getstate()
    # the block may reseed everything (seed_everything), and torch.manual_seed reseeds every CUDA device too
    devices = list(range(torch.cuda.device_count())) if torch.cuda.is_available() else []
    with torch.random.fork_rng(devices=devices):
        try:
            yield
        finally:
            np.random.set_state(np_state)
            random.setstate(py_state)


def resolve_device(name: str) -> torch.device:
    """``auto`` picks CUDA when present, else the CPU."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def _fused_available() -> bool:
    return tuple(int(p) for p in torch.__version__.split("+")[0].split(".")[:2]) >= (2, 4)


def make_optimizer(config: RunConfig, params: Any) -> torch.optim.Optimizer:
    """Build the optimizer a run names."""
    kw = dict(lr=config.lr, weight_decay=config.weight_decay)
    # One fused kernel per step instead of a loop over parameters (CPU and CUDA, torch >= 2.4).
    fused = {"fused": True} if _fused_available() else {}
    if config.optimizer == "adam":
        return torch.optim.Adam(params, **kw, **fused)
    if config.optimizer == "adamw":
        return torch.optim.AdamW(params, **kw, **fused)
    if config.optimizer == "sgd":
        return torch.optim.SGD(params, momentum=config.momentum, **kw, **fused)
    if config.optimizer == "rmsprop":
        return torch.optim.RMSprop(params, momentum=config.momentum, **kw)
    return torch.optim.Adagrad(params, **kw)


def attach_scheduler(setup: TrainingSetup) -> None:
    """Attach the learning-rate schedule, sized by the final batch sampler's steps per epoch."""
    config, optimizer = setup.config, setup.optimizer
    steps = setup.batch_sampler.steps_per_epoch
    total = config.epochs * steps
    if config.schedule == "step":
        setup.scheduler = torch.optim.lr_scheduler.StepLR(
            optimizer, step_size=config.step_size, gamma=config.gamma
        )
        setup.scheduler_per_step = False
    elif config.schedule == "cosine":
        warmup = int(config.warmup_epochs * steps)

        def factor(step: int) -> float:
            if step < warmup:
                return (step + 1) / warmup
            progress = (step - warmup) / max(1, total - warmup)
            return 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))

        setup.scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
    elif config.schedule == "onecycle":
        defaults = getattr(optimizer, "original_optimizer", optimizer).defaults
        cycle_momentum = "momentum" in defaults or "betas" in defaults  # Adagrad has neither
        setup.scheduler = torch.optim.lr_scheduler.OneCycleLR(
            optimizer, max_lr=config.lr, total_steps=total, cycle_momentum=cycle_momentum
        )


def distribute(setup: TrainingSetup) -> None:
    """For a distributed run, after the plugins' edits: DistributedDataParallel on the model, unless a plugin
    all-reduces the gradients itself (``setup.syncs_gradients``); then rank 0's weights are copied to every rank."""
    world = setup.world
    if world is None:
        return
    backend = "NCCL" if world.device.type == "cuda" else "gloo"
    setup.notes.append(
        f"distributed: {world.world_size} processes ({backend}); --batch-size {setup.config.batch_size} is the "
        "global batch, each process trains on its shard of every batch; the learning rate is unchanged"
    )
    if setup.syncs_gradients:
        broadcast_([*setup.base_model.parameters(), *setup.base_model.buffers()])
        return
    from torch.nn.parallel import DistributedDataParallel

    device_ids = [world.device.index] if world.device.type == "cuda" else None
    setup.model = DistributedDataParallel(setup.model, device_ids=device_ids)


def per_sample_criterion(label_smoothing: float) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    """Cross-entropy per row (``reduction="none"``): the loop weights and averages it itself."""

    def per_sample_cross_entropy(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return nn.functional.cross_entropy(logits, target, reduction="none", label_smoothing=label_smoothing)

    return per_sample_cross_entropy


def model_spec_for(config: RunConfig, dataset: Dataset) -> dict[str, Any]:
    """The recipe of the model a run names (``--model``, sizes, dropout) for this data's shape and classes."""
    return model_spec(
        name=config.model,
        input_shape=dataset.input_shape,
        num_classes=dataset.num_classes,
        hidden=config.hidden,
        channels=config.channels,
        dropout=config.dropout,
    )


def build_setup(
    config: RunConfig,
    dataset: Dataset,
    device: torch.device,
    generator: torch.Generator,
    spec: dict[str, Any],
) -> TrainingSetup:
    """The default training setup, before plugins edit it."""
    config.resolve(train_rows=len(dataset.train), plugin_defaults={})  # a no-op when the runner resolved it
    base = build_model(spec, trusted_factory=config.model).to(device)  # the user named --model
    model = torch.compile(base) if config.compile else base
    return TrainingSetup(
        config=config,
        dataset=dataset,
        base_model=base,
        model_spec=spec,
        model=model,
        optimizer=make_optimizer(config, [p for p in base.parameters() if p.requires_grad]),
        criterion=per_sample_criterion(config.label_smoothing),
        batch_sampler=ShuffledBatches(num_rows=len(dataset.train), batch_size=config.batch_size),
        device=device,
        generator=generator,
        grad_clip=config.grad_clip,
        use_amp=device.type == "cuda",
    )


def train_variant(
    config: RunConfig,
    dataset: Dataset,
    *,
    device: torch.device | None = None,
    sample_weights: torch.Tensor | None = None,
    progress: bool = False,
) -> tuple[nn.Module, TrainResult]:
    """Train the run's model again with no plugins (a baseline to compare a mitigation against)."""
    device = device or resolve_device(config.device)
    generator = seed_everything(config.seed)
    setup = build_setup(config, dataset, device, generator, model_spec_for(config, dataset))
    setup.sample_weights = sample_weights
    attach_scheduler(setup)
    result = train(setup, progress=progress, desc="baseline (no plugins)")
    return setup.base_model.eval(), result
