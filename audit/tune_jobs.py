"""``audit tune --jobs N``: N worker processes on one study file, started, watched and stopped by one command."""

from __future__ import annotations

import logging
import multiprocessing
import multiprocessing.connection
import os
import queue
import threading
import time
from collections.abc import Callable
from typing import Any

from audit.errors import AuditError

log = logging.getLogger(__name__)
WATCH_S = 1.0  # how often a worker checks that its parent still lives, and the parent polls its workers


def cpu_cores() -> int:
    """The cores this process may run on (the affinity mask where the OS has one)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def threads_per_worker(jobs: int) -> int:
    """Torch intra-op threads for each of ``jobs`` workers: the cores shared out, at least one each."""
    return max(1, cpu_cores() // jobs)


def watch_parent(parent: int) -> None:
    """Exit this worker as soon as its parent is gone (killed, even by SIGKILL): a daemon thread polls getppid."""

    def watch() -> None:
        while True:
            if os.getppid() != parent:
                os._exit(1)  # the trial it was running is marked FAIL by the study's heartbeat
            time.sleep(WATCH_S)

    threading.Thread(target=watch, name="audit-tune-parent-watch", daemon=True).start()


def run_workers(
    target: Callable[..., None], payload: Any, *, jobs: int, progress: Callable[[], None] | None = None
) -> None:
    """Run ``target(payload, worker, threads, errors, parent)`` in ``jobs`` spawned processes and wait for all.

    ``progress`` is called every second while they run. On Ctrl-C or any error here, every worker still running
    is terminated before this returns; a worker's error (put on ``errors`` as (kind, message)) is raised again
    here, an AuditError as an AuditError."""
    context = multiprocessing.get_context(
        "spawn"
    )  # no fork: torch's threads and SQLite handles do not fork well
    errors = context.Queue()
    threads = threads_per_worker(jobs)
    workers = [
        context.Process(
            target=target, args=(payload, k, threads, errors, os.getpid()), name=f"audit-tune-{k}"
        )
        for k in range(jobs)
    ]
    try:
        for worker in workers:
            worker.start()
        while any(w.is_alive() for w in workers):
            multiprocessing.connection.wait([w.sentinel for w in workers if w.is_alive()], timeout=WATCH_S)
            if progress is not None:
                progress()
            if any(w.exitcode not in (None, 0) for w in workers):
                break  # one failed: the others are stopped below, not left to finish the study alone
    finally:
        for worker in workers:
            if worker.is_alive():
                worker.terminate()
        for worker in workers:
            worker.join()
    _raise_worker_error(workers, errors)


def _raise_worker_error(workers: list[Any], errors: Any) -> None:
    failed = [w for w in workers if w.exitcode != 0]
    if not failed:
        return
    try:
        kind, message = errors.get(timeout=WATCH_S)
    except queue.Empty:
        kind, message = "", f"{failed[0].name} stopped with exit code {failed[0].exitcode}"
    if kind == "AuditError":
        raise AuditError(message)
    raise RuntimeError(f"--jobs: {kind}: {message}")
