"""Distributed training's plumbing: the process group (init, teardown), rank facts, all-reduces and the launcher.

A run is distributed when torchrun (or ``audit train --nproc-per-node N``, which starts torchrun's agent) set
``WORLD_SIZE`` above 1. Backend: NCCL on CUDA (one GPU per process, ``LOCAL_RANK``), gloo on the CPU.
"""

from __future__ import annotations

import gc
import logging
import os
import sys
import uuid
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

import torch
import torch.distributed as dist

from audit.errors import AuditError

log = logging.getLogger(__name__)

# Exit codes a worker's own CLI returns (gate failed, bad input, internal error): the launcher passes them on.
WORKER_EXIT_CODES = (1, 2, 3)
EXIT_WORKER_DIED = 3


@dataclass(frozen=True)
class World:
    """This process's place in a distributed run."""

    rank: int
    local_rank: int
    world_size: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        """True on rank 0, the process that audits and writes."""
        return self.rank == 0


def env_world_size() -> int:
    """The ``WORLD_SIZE`` torchrun set (1 when not launched by torchrun)."""
    try:
        return int(os.environ.get("WORLD_SIZE", "1"))
    except ValueError:
        raise AuditError(f"WORLD_SIZE={os.environ['WORLD_SIZE']!r} is not an integer") from None


def env_rank() -> int:
    """The ``RANK`` torchrun set (0 when not launched by torchrun)."""
    return int(os.environ.get("RANK", "0") or 0)


@contextmanager
def process_group(device: torch.device) -> Iterator[World | None]:
    """Join torchrun's process group for the block (None when WORLD_SIZE is 1: the single-process path).

    On CUDA each process takes the GPU ``LOCAL_RANK`` names and NCCL; on the CPU, gloo."""
    world_size = env_world_size()
    if world_size <= 1:
        yield None
        return
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if device.type == "cuda":
        if local_rank >= torch.cuda.device_count():
            raise AuditError(
                f"LOCAL_RANK {local_rank} has no GPU: {torch.cuda.device_count()} visible; "
                "use at most one process per GPU (--nproc-per-node)"
            )
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
    backend = "nccl" if device.type == "cuda" else "gloo"
    dist.init_process_group(backend=backend, device_id=device if device.type == "cuda" else None)
    try:
        yield World(rank=dist.get_rank(), local_rank=local_rank, world_size=world_size, device=device)
    finally:
        # DistributedDataParallel's reducer sits in reference cycles: collect it while its process group exists.
        # Left to interpreter exit, it was torn down after the group and aborted the process (signal 6, rarely).
        gc.collect()
        dist.destroy_process_group()


def all_reduce_sum_(tensors: Sequence[torch.Tensor]) -> None:
    """Sum each tensor over the ranks, in place (one flat all-reduce: fewer, larger messages)."""
    if not tensors:
        return
    flat = torch.cat([t.reshape(-1) for t in tensors])
    dist.all_reduce(flat, op=dist.ReduceOp.SUM)
    offset = 0
    for t in tensors:
        t.copy_(flat[offset : offset + t.numel()].view_as(t))
        offset += t.numel()


def broadcast_(tensors: Sequence[torch.Tensor]) -> None:
    """Copy rank 0's values of ``tensors`` to every rank, in place."""
    with torch.no_grad():
        for t in tensors:
            dist.broadcast(t, src=0)


def all_reduce_mean_(tensor: torch.Tensor, world: World) -> torch.Tensor:
    """The mean of ``tensor`` over the ranks, in place; returns it."""
    dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor.div_(world.world_size)


def launch(argv: Sequence[str], *, nproc_per_node: int) -> tuple[int, str | None]:
    """Run ``python -m audit <argv>`` on ``nproc_per_node`` local processes under torchrun's agent.

    Returns the exit code and a line for the user (None when rank 0 printed its own): rank 0's own exit code
    (1 gate failed, 2 bad input, 3 internal error) is passed on; a worker that died otherwise (killed, crashed
    outside the CLI) gives exit 3 and a line naming it."""
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.launcher.api import LaunchConfig, elastic_launch

    config = LaunchConfig(
        min_nodes=1,
        max_nodes=1,
        nproc_per_node=nproc_per_node,
        run_id=str(uuid.uuid4()),
        rdzv_backend="c10d",
        rdzv_endpoint="localhost:0",  # torchrun --standalone: a free local port
        max_restarts=0,
    )
    # torchrun's default, but sized to the cores: one thread per process would idle a larger machine
    os.environ.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // nproc_per_node)))
    elastic = logging.getLogger("torch.distributed.elastic")
    level, elastic.level = elastic.level, logging.CRITICAL  # the agent's failure dump: one line below says it
    try:
        elastic_launch(config, sys.executable)("-m", "audit", *argv)
    except ChildFailedError as exc:
        return _failure(exc)
    finally:
        elastic.setLevel(level)
    return 0, None


def _failure(exc: object) -> tuple[int, str | None]:
    """The first failed worker's own CLI exit code when it gave one (it printed its line, or rank 0 did the same
    check); else exit 3 and a line naming the worker (killed, or died outside the CLI)."""
    rank, failure = exc.get_first_failure()  # type: ignore[attr-defined]
    if failure.exitcode in WORKER_EXIT_CODES:
        return failure.exitcode, None
    how = f"signal {-failure.exitcode}" if failure.exitcode < 0 else f"exit code {failure.exitcode}"
    return (
        EXIT_WORKER_DIED,
        f"distributed training failed: rank {rank} stopped ({how}); no report was written",
    )
