"""``capml static ...``: the static reference: distorted minima found by quenching MD frames, confirmed by DFT."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from capml_core.errors import CapmlError
from flows.cli.common import (
    ModelOption,
    ProjectOption,
    ScanOption,
    bar,
    capml_errors,
    console,
    load,
    model_or_latest,
    progress_callback,
    scan_or_latest,
)

static_app = typer.Typer(
    help="Static reference: minima of MD frames quenched with MACE, end members relaxed with DFT.",
    no_args_is_help=True,
)

ConfigArg = Annotated[Path, typer.Option("--config", "-c", help="Run configuration (TOML).")]


def _print_minima(store, model_id: str) -> None:
    from capml_core.stages.static_minima import minima_table, summary_lines

    table = minima_table(store, model_id)
    if table.empty:
        console.print(f"no minima quenched with {model_id} yet (capml static quench)")
        return
    columns = [
        "composition_x",
        "source",
        "space_group",
        "below_cubic_mev_per_atom",
        "converged",
        "steps",
        "volume_a3",
        "volume_change",
        "trusted",
    ]
    console.print(table[columns].round(3).to_string(index=False))
    for line in summary_lines(table):
        console.print(line)


@static_app.command("quench")
def static_quench(
    config: ConfigArg,
    project: ProjectOption = None,
    model: ModelOption = None,
    scan: ScanOption = None,
    composition: Annotated[
        list[float] | None, typer.Option("--composition", "-x", help="Only this composition (repeatable).")
    ] = None,
    stored_frames: Annotated[
        bool, typer.Option("--stored-frames", help="Also quench every stored MD frame (held-out and rounds' frames).")
    ] = False,
):
    """Relax (positions and cell, MACE) the cubic structure and the last frame of every MD run; rank the minima."""
    from capml_core.stages.static_minima import quench_md_frames
    from capml_core.store.database import Store

    with capml_errors():
        loaded = load(config, project)
        store = Store(loaded.project_dir)
        store.initialise()  # writes: an older store is migrated first
        model_id = model_or_latest(store, model)
        with bar("relaxations") as progress:
            task_id = progress.add_task("quench", total=None)
            quench_md_frames(
                store,
                loaded.config,
                model_id=model_id,
                scan_id=scan_or_latest(store, scan),
                compositions=composition or None,
                stored_frames=stored_frames,
                progress=progress_callback(progress, task_id),
            )
        _print_minima(store, model_id)


@static_app.command("show")
def static_show(config: ConfigArg, project: ProjectOption = None, model: ModelOption = None) -> None:
    """The minima of a MACE model (default: the newest) and of the DFT relaxations."""
    from capml_core.stages.static_minima import DFT_MODEL_PREFIX
    from capml_core.store.database import Store

    with capml_errors():
        loaded = load(config, project)
        store = Store(loaded.project_dir)
        _print_minima(store, model_or_latest(store, model))
        level = loaded.config.reference.cheap_level
        _print_minima(store, f"{DFT_MODEL_PREFIX}{level}")


@static_app.command("dft-relax")
def static_dft_relax(
    config: ConfigArg,
    composition: Annotated[float, typer.Option("--composition", "-x", help="Composition x to relax (an end member).")],
    project: ProjectOption = None,
    model: ModelOption = None,
    max_steps: Annotated[int, typer.Option(min=1, help="BFGS steps at most (both relaxations).")] = 80,
    fmax: Annotated[
        float, typer.Option(min=0.001, help="Converged when every force (and stress x volume) is below this, eV/Å.")
    ] = 0.02,
) -> None:
    """Relax with the cheap level the cubic cell (cell only) and the MACE-lowest minimum (cell and positions)."""
    from capml_core.stages.static_minima import (
        CUBIC,
        DFT_MODEL_PREFIX,
        dft_relax_minimum,
        lowest_minima,
        minima_table,
    )
    from capml_core.store.database import Store

    with capml_errors():
        loaded = load(config, project)
        store = Store(loaded.project_dir)
        store.initialise()  # writes: an older store is migrated first
        model_id = model_or_latest(store, model)
        table = minima_table(store, model_id)
        of_x = table[(table["composition_x"] - composition).abs() < 1e-9]
        if of_x.empty:
            raise CapmlError(
                f"--composition {composition}: no minima quenched at that composition (capml static quench)"
            )
        cubic = of_x[of_x["source"] == CUBIC].iloc[0]
        lowest = lowest_minima(store, model_id)
        best = lowest[(lowest["composition_x"] - composition).abs() < 1e-9].iloc[0]
        done_rows = store.query(
            "SELECT source FROM static_minima WHERE model_id = ? AND abs(composition_x - ?) < 1e-9 "
            "AND converged AND max_force_ev_per_a <= ?",
            [f"{DFT_MODEL_PREFIX}{loaded.config.reference.cheap_level}", composition, fmax],
        )
        for row, mode, label in ((cubic, "cell", CUBIC), (best, "full", f"lowest {best.source}")):
            if label in set(done_rows["source"]):
                console.print(f"x = {composition}: {label}: relaxed before (converged below {fmax} eV/Å), kept")
                continue
            done = dft_relax_minimum(
                store,
                loaded.config,
                structure_hash_=row.structure_hash,
                composition_x=composition,
                source=label,
                mode=mode,
                max_steps=max_steps,
                fmax_ev_per_a=fmax,
            )
            console.print(
                f"x = {composition}: {label}: {done['energy_ev_per_atom']:.5f} eV/atom, {done['space_group']}, "
                f"{done['steps']} steps, converged {done['converged']}"
            )
        _print_minima(store, f"{DFT_MODEL_PREFIX}{loaded.config.reference.cheap_level}")
