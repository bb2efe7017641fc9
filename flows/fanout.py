"""Fan-out of a stage's jobs through a Prefect task runner: local processes, or a Dask cluster (prefect-dask).

A fan-out stage (labelling, disorder relaxations, MD) runs as a child flow whose task runner comes from the
config's ``[execution]`` section; every job is one Prefect task run (visible in the UI, with its worker's
logs). The jobs only compute; their results come back to the child flow, which alone writes the store
(DuckDB admits one writer). On a cluster the workers need the project directory on a shared filesystem only
for MD trajectories (HDF5 files) and MACE model files.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Iterator, Sequence
from typing import Any, TypeVar

from prefect import flow, task
from prefect.cache_policies import NO_CACHE
from prefect.futures import as_completed
from prefect.task_runners import ProcessPoolTaskRunner, TaskRunner, ThreadPoolTaskRunner

from capml_core.config.stage_sections import ExecutionSection
from capml_core.errors import InvalidInputError
from capml_core.parallel import JobMap

R = TypeVar("R")


@task(name="job", cache_policy=NO_CACHE)
def run_job(fn: Callable[..., Any], args: tuple) -> Any:
    """One fan-out job: ``fn(*args)`` on whichever worker the task runner picks.

    Worker processes inherit the flow's environment (``OMP_NUM_THREADS=1`` unless the user set it).
    """
    return fn(*args)


def prefect_map(fn: Callable[..., Any], jobs: Sequence[tuple], *, name: str = "job") -> Iterator[tuple[int, Any]]:
    """A :class:`~capml_core.parallel.JobMap` that submits each job to the current flow's task runner."""
    futures = {
        run_job.with_options(task_run_name=f"{name} {index + 1}/{len(jobs)}").submit(fn, args): index
        for index, args in enumerate(jobs)
    }
    for future in as_completed(list(futures)):
        yield futures[future], future.result()


def _import(dotted: str) -> type:
    module, _, name = dotted.rpartition(".")
    try:
        return getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError, ValueError) as err:
        raise InvalidInputError(
            f"execution.dask_cluster_class: cannot import {dotted!r} ({err}); e.g. 'distributed.LocalCluster' or "
            "'dask_jobqueue.SLURMCluster'"
        ) from err


def task_runner_for(execution: ExecutionSection, workers: int, *, isolate: bool = False) -> TaskRunner:
    """The task runner of one fan-out stage.

    ``processes``: ``workers`` local processes (with one worker and no ``isolate``: this process, no start-up
    cost). ``dask``: the Dask scheduler at ``execution.dask_address`` if set, else a cluster of
    ``execution.dask_cluster_class`` started for the stage (a LocalCluster gets ``workers`` single-threaded
    worker processes; a SLURMCluster scales to ``execution.dask_adapt_maximum`` jobs).
    """
    if execution.task_runner == "processes":
        if workers <= 1 and not isolate:
            return ThreadPoolTaskRunner(max_workers=1)
        return ProcessPoolTaskRunner(max_workers=workers)
    from prefect_dask import DaskTaskRunner

    if execution.dask_address:
        return DaskTaskRunner(address=execution.dask_address)
    cluster_class = _import(execution.dask_cluster_class)
    kwargs = dict(execution.dask_cluster_kwargs)
    if execution.dask_cluster_class == "distributed.LocalCluster":
        kwargs = {"n_workers": workers, "threads_per_worker": 1, "processes": True, **kwargs}
    adapt = {"maximum": execution.dask_adapt_maximum} if execution.dask_adapt_maximum else None
    return DaskTaskRunner(cluster_class=cluster_class, cluster_kwargs=kwargs, adapt_kwargs=adapt)


def fan_out(
    name: str, execution: ExecutionSection, workers: int, body: Callable[[JobMap], R], *, isolate: bool = False
) -> R:
    """Run ``body(job_map)`` in a child flow ``capml-<name>-jobs`` whose jobs go to the configured runner."""

    def jobs() -> R:
        return body(prefect_map)

    child = flow(name=f"capml-{name}-jobs", validate_parameters=False)(jobs)
    return child.with_options(task_runner=task_runner_for(execution, workers, isolate=isolate))()
