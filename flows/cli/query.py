"""Reading the store: ``capml runs``, ``capml sql`` and ``capml report``."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer

from capml_core.errors import CapmlError
from flows.cli.common import (
    ConfigOption,
    ProjectOption,
    capml_errors,
    console,
    err_console,
    fail,
    open_store,
    print_tables,
)


def runs(config: ConfigOption = None, project: ProjectOption = None) -> None:
    """Runs recorded in the store and the stages of the latest one."""
    with capml_errors():
        store = open_store(config, project)
        frame, stages = store.runs(), store.stages()
    console.print(frame.to_string(index=False) if len(frame) else "no runs yet")
    if len(stages):
        console.print("\nstages of the latest run:")
        console.print(stages.to_string(index=False))


def sql(
    query: Annotated[str, typer.Argument(help="A read-only SQL query, e.g. 'SELECT * FROM labelled_structures'.")],
    config: ConfigOption = None,
    project: ProjectOption = None,
    output: Annotated[str, typer.Option(help="Output format: table, csv or json.")] = "table",
    max_rows: Annotated[
        int, typer.Option(min=0, help="Rows printed at most (the rest are counted and said); 0: all.")
    ] = 1000,
    file: Annotated[
        Path | None, typer.Option("--file", help="Write every row to this CSV file, streamed (any size).")
    ] = None,
    timeout: Annotated[float, typer.Option(min=0.0, help="Stop the query after this many seconds (0: never).")] = 60.0,
) -> None:
    """Query the store with SQL: one read-only query; writes, files, extensions refused (tables: docs/store.md)."""
    from capml_core.store.sql import preview_user_query, run_user_query, stream_user_query

    if output not in ("table", "csv", "json"):
        fail(CapmlError(f"--output {output!r}: allowed: table, csv, json"))
    limit = timeout or None
    with capml_errors():
        store = open_store(config, project)
        if file is not None:
            if file.exists() and file.is_dir():
                raise CapmlError(f"--file {file}: is a folder; give a file name")
            partial = file.with_name(file.name + ".partial")
            try:
                with open(partial, "w", encoding="utf-8", newline="") as handle:
                    n = stream_user_query(
                        store,
                        query,
                        lambda chunk, first: chunk.to_csv(handle, index=False, header=first),
                        timeout_s=limit,
                    )
            except OSError as err:
                raise CapmlError(f"--file {file}: cannot write: {err.strerror or err}") from err
            except BaseException:
                partial.unlink(missing_ok=True)
                raise
            partial.replace(file)
            console.print(f"{n} rows -> {file}")
            return
        if max_rows == 0:
            frame, left_out = run_user_query(store, query, timeout_s=limit), 0
        else:
            preview = preview_user_query(store, query, max_rows=max_rows, timeout_s=limit)
            frame, left_out = preview.frame, preview.n_left_out
    if output == "csv":
        sys.stdout.write(frame.to_csv(index=False))
    elif output == "json":
        sys.stdout.write(frame.to_json(orient="records", date_format="iso") + "\n")
    elif len(frame):
        console.print(frame.to_string(index=False))
    else:
        console.print(f"no rows ({', '.join(map(str, frame.columns)) or 'no columns'})")
    if left_out:
        err_console.print(
            f"{left_out} more rows left out (first {len(frame)} shown): --max-rows N (0: all) or --file OUT.csv "
            "for every row",
            soft_wrap=True,
        )


def report(
    config: ConfigOption = None,
    project: ProjectOption = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object (keys: docs/report.md).")] = False,
) -> None:
    """What the project found and how far to trust it: model errors, Eg(0), Eg(T, x) with DFT checks, flags."""
    import json

    from capml_core.stages.report import project_report, report_tables

    with capml_errors():
        store = open_store(config, project)
        found = project_report(store)
    if as_json:
        print(json.dumps(found, indent=1, default=str))
        return
    print_tables(report_tables(found))
