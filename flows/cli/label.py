"""``capml label``: compute reference (DFT) labels of the stored structures."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from capml_core.errors import CapmlError
from flows.cli.common import ProjectOption, bar, capml_errors, console, load, require_extra


def label(
    config: Annotated[Path, typer.Option("--config", "-c", help="Run configuration (TOML).")],
    level: Annotated[str, typer.Option("--level", "-l", help="Reference level to compute, e.g. gpaw-pbesol.")],
    project: ProjectOption = None,
    workers: Annotated[int, typer.Option(min=1, help="Worker processes (one thread each).")] = 1,
    set_name: Annotated[str | None, typer.Option("--set", help="Only this structure set.")] = None,
    limit: Annotated[int | None, typer.Option(min=0, help="Label at most this many structures.")] = None,
    retry_failed: Annotated[bool, typer.Option(help="Also retry calculations that failed before.")] = False,
) -> None:
    """Label every structure of the sets at LEVEL that has no label there yet (resumable; Ctrl-C safe)."""
    from capml_core.dft.levels import get_level
    from capml_core.stages.labelling import label_structures
    from capml_core.store.database import Store

    with capml_errors():
        loaded = load(config, project)
        reference_level = get_level(level, loaded.config.reference)  # unknown: fails before any work
        if (reason := reference_level.unavailable_reason()) is not None:
            raise CapmlError(f"level {level} cannot compute here: {reason}")
        if level.startswith("gpaw-"):
            require_extra(
                "dft", "capml label"
            )  # before any work: the worker processes would fail one structure at a time
        store = Store(loaded.project_dir)
        store.initialise()  # a write command: a store of an older capml is migrated first
        pending = store.pending_labels(level, set_name=set_name, include_failed=retry_failed)
    chosen = pending if limit is None else pending[:limit]
    console.print(f"{level}: {len(pending)} structures pending, labelling {len(chosen)} with {workers} worker(s)")
    if not chosen:
        return
    with bar(level) as progress:
        task_id = progress.add_task(level, total=len(chosen))
        report = label_structures(
            store,
            reference_level,
            chosen,
            workers=workers,
            progress=lambda done, total, record: progress.update(task_id, completed=done),
        )
    console.print(report.summary(), highlight=False)
    for structure_hash, error in report.failures:
        console.print(f"  failed {structure_hash}: {error.splitlines()[0] if error else ''}")
