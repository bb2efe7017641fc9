"""Fan-out of independent jobs (labels, relaxations, MD runs) with one writer.

A stage plans its jobs, hands them to a :data:`JobMap` and writes each result to the store as it comes back,
in the calling process: the workers compute and never open the store, so DuckDB's single-writer rule holds
however many workers run. A job is a module-level function and a tuple of picklable arguments, so the same
job runs in a local process pool (:func:`local_map`, used by the CLI), a Prefect task runner (thread, process
or Dask workers: ``flows/fanout.py``) or on a Slurm node through Dask.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import sys
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from typing import Any, Protocol


class JobMap(Protocol):
    """Runs ``fn(*args)`` for every argument tuple; yields ``(index into jobs, result)`` as each finishes."""

    def __call__(
        self, fn: Callable[..., Any], jobs: Sequence[tuple], *, name: str = "job"
    ) -> Iterator[tuple[int, Any]]:
        """Run the jobs; results in completion order."""
        ...


#: prctl option: the signal the kernel sends a process when its parent dies (Linux).
PR_SET_PDEATHSIG = 1


def die_with_parent() -> None:
    """On Linux, have the kernel stop this process (SIGTERM) when the process that started it dies.

    A worker in the middle of a long DFT calculation never reads its job queue again, so a killed stage would
    otherwise leave it computing (and holding a core) for minutes. Elsewhere: nothing (the pool's own shutdown).
    """
    if not sys.platform.startswith("linux"):
        return
    import ctypes
    import signal

    try:
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, int(signal.SIGTERM), 0, 0, 0)
    except (OSError, AttributeError):  # no prctl in this libc: the pool's own shutdown only
        return


def single_threaded() -> None:
    """Worker initialiser: one OpenMP/BLAS/torch thread per worker process, stopped with its parent.

    Parallelism comes from processes; :func:`die_with_parent` takes the worker down with the process that started it.
    """
    os.environ["OMP_NUM_THREADS"] = "1"
    if "torch" in sys.modules:  # otherwise torch reads OMP_NUM_THREADS when it is first imported
        sys.modules["torch"].set_num_threads(1)
    die_with_parent()


def local_map(workers: int, *, isolate: bool = False) -> JobMap:
    """A :data:`JobMap` on this machine: ``workers`` spawned processes, or this process when ``workers`` is 1.

    ``isolate`` runs even a single worker in a child process (a crashing or leaking DFT code then cannot take
    the caller down).
    """

    def run(fn: Callable[..., Any], jobs: Sequence[tuple], *, name: str = "job") -> Iterator[tuple[int, Any]]:
        if not jobs:
            return
        if workers <= 1 and not isolate:
            for index, args in enumerate(jobs):
                yield index, fn(*args)
            return
        context = mp.get_context("spawn")
        with ProcessPoolExecutor(max_workers=max(1, workers), mp_context=context, initializer=single_threaded) as pool:
            queue = list(enumerate(jobs))
            running: dict[Future, int] = {}

            def submit_next() -> None:
                if queue:
                    index, args = queue.pop(0)
                    running[pool.submit(fn, *args)] = index

            for _ in range(max(1, workers)):
                submit_next()
            while running:
                finished, _ = wait(running, return_when=FIRST_COMPLETED)
                for future in finished:
                    index = running.pop(future)
                    yield index, future.result()
                    submit_next()

    return run
