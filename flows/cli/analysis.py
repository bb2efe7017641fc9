"""The science stages one at a time: ``capml disorder``, ``md``, ``phonons``, ``gaps``, ``modes``, ``evaluate``."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer

from capml_core.errors import CapmlError
from flows.cli.common import (
    ConfigOption,
    EnsembleOption,
    ModelOption,
    ProjectOption,
    ScanOption,
    bar,
    capml_errors,
    console,
    ensemble_or_latest,
    load,
    model_or_latest,
    print_tables,
    progress_callback,
    scan_or_latest,
    two_bars,
)


def disorder(
    config: Annotated[Path, typer.Option("--config", "-c", help="Run configuration (TOML; uses system, disorder).")],
    project: ProjectOption = None,
    plan_only: Annotated[
        bool, typer.Option("--plan", help="Only count and choose arrangements; relax nothing.")
    ] = False,
    model: ModelOption = None,
) -> None:
    """Inequivalent arrangements per composition (with multiplicities), relaxed with the project's MACE, ranked."""
    from capml_core.stages.disorder import plan_scan, plans_table, run_disorder_scan
    from capml_core.store.database import Store

    with capml_errors():
        loaded = load(config, project)
        plans = list(plan_scan(loaded.config.system, loaded.config.disorder))
        print_tables([plans_table(plans)])
        if plan_only:
            return
        with bar("relaxations") as progress:
            task_id = progress.add_task("relax", total=None)
            store = Store(loaded.project_dir)
            result = run_disorder_scan(
                store,
                loaded.config,
                model_id=model_or_latest(store, model),
                progress=progress_callback(progress, task_id),
            )
    print_tables(result.tables()[1:])


def md(
    config: Annotated[Path, typer.Option("--config", "-c", help="Run configuration (TOML; uses md).")],
    project: ProjectOption = None,
    model: ModelOption = None,
    scan: ScanOption = None,
) -> None:
    """Langevin MD of each composition's lowest-energy structure at every md.temperatures_k; health checks."""
    from capml_core.stages.dynamics import md_table, run_dynamics
    from capml_core.store.database import Store

    with capml_errors():
        loaded = load(config, project)
        with bar("MD runs") as progress:
            task_id = progress.add_task("MD", total=None)
            store = Store(loaded.project_dir)
            results = run_dynamics(
                store,
                loaded.config,
                model_id=model_or_latest(store, model),
                scan_id=scan_or_latest(store, scan),
                progress=progress_callback(progress, task_id),
            )
    print_tables([md_table(results)])


def phonons(
    config: Annotated[Path, typer.Option("--config", "-c", help="Run configuration (TOML; uses phonons, md).")],
    project: ProjectOption = None,
    model: ModelOption = None,
    scan: ScanOption = None,
) -> None:
    """Harmonic phonons (0 K) of the lowest-energy structures; DynaPhoPy and stability verdict per MD run."""
    from capml_core.stages.phonons import phonon_tables, run_phonon_stage
    from capml_core.store.database import Store

    with capml_errors():
        loaded = load(config, project)
        store = Store(loaded.project_dir)
        harmonic, verdicts = run_phonon_stage(
            store, loaded.config, model_id=model_or_latest(store, model), scan_id=scan_or_latest(store, scan)
        )
    print_tables(phonon_tables(harmonic, verdicts))


def gaps(
    config: Annotated[Path, typer.Option("--config", "-c", help="Run configuration (TOML; uses gaps, md, phonons).")],
    project: ProjectOption = None,
    ensemble: EnsembleOption = None,
    scan: ScanOption = None,
) -> None:
    """Eg(0) of the lowest-energy structures and Eg(T), ΔEg(T) from GNN gaps of uncorrelated MD snapshots."""
    from capml_core.stages.bandgaps import run_bandgap_stage
    from capml_core.store.database import Store

    with capml_errors():
        loaded = load(config, project)
        with two_bars("MD runs", "DFT checks") as (runs_done, dft_done):
            store = Store(loaded.project_dir)
            result = run_bandgap_stage(
                store,
                loaded.config,
                ensemble_id=ensemble_or_latest(store, ensemble),
                scan_id=scan_or_latest(store, scan),
                progress=runs_done,
                reference_progress=dft_done,
            )
    print_tables(result.tables())


def modes(
    config: Annotated[Path, typer.Option("--config", "-c", help="Run configuration (TOML; uses gaps, phonons).")],
    project: ProjectOption = None,
    top: Annotated[int, typer.Option(help="Modes listed per composition and temperature (largest |ΔEg|).")] = 5,
    ensemble: EnsembleOption = None,
    model: ModelOption = None,
    scan: ScanOption = None,
) -> None:
    """ΔEg/Eg of each Γ mode frozen in at its thermal amplitude (GNN), with DFT checks of a few modes."""
    from capml_core.stages.modes import group_table, mode_groups, mode_table, run_mode_stage
    from capml_core.stages.phonons import run_harmonic_phonons
    from capml_core.store.database import Store

    with capml_errors():
        loaded = load(config, project)
        with two_bars("structures x T", "DFT checks") as (pairs_done, dft_done):
            store = Store(loaded.project_dir)
            model_id, scan_id = model_or_latest(store, model), scan_or_latest(store, scan)
            run_harmonic_phonons(store, loaded.config, model_id=model_id, scan_id=scan_id)  # stored once per model
            ensemble_id = ensemble_or_latest(store, ensemble)
            result = run_mode_stage(
                store,
                loaded.config,
                ensemble_id=ensemble_id,
                model_id=model_id,
                scan_id=scan_id,
                progress=pairs_done,
                reference_progress=dft_done,
            )
    print_tables([mode_table(result, top=top), group_table(mode_groups(store, ensemble_id), top=top)])


def evaluate(
    config: ConfigOption = None,
    project: ProjectOption = None,
    set_name: Annotated[str, typer.Option("--set", help="Selection of MD frames to measure on.")] = "md-heldout",
    as_json: Annotated[bool, typer.Option("--json", help="One JSON list of the errors.")] = False,
    model: ModelOption = None,
    ensemble: EnsembleOption = None,
) -> None:
    """Errors of a MACE model and a GNN ensemble (default: the newest) on held-out MD frames labelled so far."""
    from capml_core.stages.heldout import errors_table, evaluate_on_frames, require_errors
    from capml_core.store.database import Store

    with capml_errors():
        if config is None:
            raise CapmlError("give --config CONFIG.toml (its reference levels say what to measure)")
        loaded = load(config, project)
        store = Store(loaded.project_dir)
        cheap = loaded.config.mlip.level or loaded.config.reference.cheap_level
        try:
            model_id = model_or_latest(store, model)
        except CapmlError:
            if model is not None:
                raise
            model_id = None  # no MACE trained yet: GNN errors only
        try:
            ensemble_id = ensemble_or_latest(store, ensemble)
        except CapmlError:
            if ensemble is not None:
                raise
            ensemble_id = None  # no GNN trained yet: MACE errors only
        errors = require_errors(
            evaluate_on_frames(
                store,
                cheap_level=cheap,
                model_id=model_id,
                ensemble_id=ensemble_id,
                set_name=set_name,
                flagged=set_name == loaded.config.active_learning.heldout_set,
            ),
            set_name,
        )
    table = errors_table(errors)
    if as_json:
        sys.stdout.write(table.to_json(orient="records") + "\n")
        return
    console.print(f"errors on the {set_name} frames (model - DFT):")
    console.print(table.round(4).to_string(index=False))
