"""``capml al ...``: active learning by uncertainty: disagreement along the MD, selection, rounds."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from capml_core.errors import CapmlError
from flows.cli.common import (
    EnsembleOption,
    ModelOption,
    ProjectOption,
    bar,
    capml_errors,
    console,
    ensemble_or_latest,
    load,
    model_or_latest,
    print_tables,
    progress_callback,
)

al_app = typer.Typer(
    help="Active learning: committee and ensemble disagreement on MD frames, selection, rounds.", no_args_is_help=True
)

ConfigArg = Annotated[Path, typer.Option("--config", "-c", help="Run configuration (TOML; uses active_learning).")]
RoundOption = Annotated[int, typer.Option("--round", min=0, help="Active-learning round (1: the first frames added).")]


def _ensemble_or_none(store, ensemble: str | None) -> str | None:
    try:
        return ensemble_or_latest(store, ensemble)
    except CapmlError:
        if ensemble is not None:
            raise
        return None  # no GNN yet: MACE disagreement only


@al_app.command("uncertainty")
def al_uncertainty(
    config: ConfigArg, project: ProjectOption = None, model: ModelOption = None, ensemble: EnsembleOption = None
) -> None:
    """Committee (energy, forces) and GNN-ensemble (gap) disagreement on the production frames of the MD runs."""
    from capml_core.stages.uncertainty import evaluate_uncertainty
    from capml_core.store.database import Store

    with capml_errors():
        loaded = load(config, project)
        store = Store(loaded.project_dir)
        model_id = model_or_latest(store, model)
        ensemble_id = _ensemble_or_none(store, ensemble)
        with bar("MD runs") as progress:
            task_id = progress.add_task("uncertainty", total=None)
            result = evaluate_uncertainty(
                store,
                loaded.config,
                model_id=model_id,
                ensemble_id=ensemble_id,
                progress=progress_callback(progress, task_id),
            )
    frames = result.frames
    summary = (
        frames.groupby(["composition_x", "temperature_k"])[
            ["energy_std_mev_per_atom", "force_std_max_ev_per_a", "gap_std_ev", "gap_mean_ev"]
        ]
        .mean()
        .round(4)
        .reset_index()
    )
    console.print(
        f"{result.uncertainty_id}: {len(frames)} frames of {frames['md_id'].nunique()} MD runs; committee of "
        f"{len(result.committee)} ({', '.join(result.committee)}), ensemble {result.ensemble_id or 'none'}"
    )
    console.print("mean disagreement per composition and temperature:")
    console.print(summary.to_string(index=False))


@al_app.command("select")
def al_select(
    config: ConfigArg,
    round_index: RoundOption,
    project: ProjectOption = None,
    model: ModelOption = None,
    ensemble: EnsembleOption = None,
    pool: Annotated[
        Path | None,
        typer.Option(
            help="Also write the chosen frames with their provenance to this extended-XYZ pool file (commit it: "
            "capml data restore-frames resumes the labelling on another machine)."
        ),
    ] = None,
) -> None:
    """Choose the round's frames by disagreement and diversity; they join sets al-round<k>@<level> (capml label)."""
    from capml_core.stages.md_frames import write_frame_pool
    from capml_core.stages.uncertainty import evaluate_uncertainty, round_set_name, select_round
    from capml_core.store.database import Store

    with capml_errors():
        if round_index < 1:
            raise CapmlError("--round: frames are added from round 1 on (round 0 is the models before any)")
        loaded = load(config, project)
        store = Store(loaded.project_dir)
        reference = loaded.config.reference
        levels = [loaded.config.mlip.level or reference.cheap_level]
        if reference.high_level and reference.high_level not in levels:
            levels.append(reference.high_level)
        evaluation = evaluate_uncertainty(
            store, loaded.config, model_id=model_or_latest(store, model), ensemble_id=_ensemble_or_none(store, ensemble)
        )
        frames = select_round(
            store, loaded.config, uncertainty_id=evaluation.uncertainty_id, round_index=round_index, levels=levels
        )
        if pool is not None:
            write_frame_pool(frames, pool)
    name = round_set_name(round_index)
    console.print(f"{name}: {len(frames)} frames{f' (pool file {pool})' if pool else ''}; label them with:")
    for level in levels:
        console.print(f"  capml label -c {config} --level {level} --set {name}@{level}")


@al_app.command("record")
def al_record(
    config: ConfigArg,
    round_index: RoundOption,
    project: ProjectOption = None,
    model: ModelOption = None,
    ensemble: EnsembleOption = None,
) -> None:
    """Measure the round's models on the held-out frames; store the round (frames, DFT cost, errors, targets)."""
    from capml_core.stages.rounds import record_round, rounds_table
    from capml_core.store.database import Store

    with capml_errors():
        loaded = load(config, project)
        store = Store(loaded.project_dir)
        record_round(
            store,
            loaded.config,
            round_index=round_index,
            model_id=model_or_latest(store, model),
            ensemble_id=_ensemble_or_none(store, ensemble),
        )
        print_tables([rounds_table(store, loaded.config)])


@al_app.command("rounds")
def al_rounds(
    config: ConfigArg,
    project: ProjectOption = None,
    import_file: Annotated[
        Path | None, typer.Option("--import", help="First put the rounds of this CSV (an --export) into the store.")
    ] = None,
    export_file: Annotated[
        Path | None, typer.Option("--export", help="Write every stored round to this CSV (the durable copy).")
    ] = None,
) -> None:
    """The rounds so far: frames added, DFT calls and CPU hours, held-out errors against the targets."""
    from capml_core.stages.rounds import export_rounds, import_rounds, rounds_table
    from capml_core.store.database import Store

    with capml_errors():
        loaded = load(config, project)
        store = Store(loaded.project_dir)
        if import_file is not None:
            console.print(f"{import_file}: {import_rounds(store, import_file)} rounds imported")
        print_tables([rounds_table(store, loaded.config)])
        if export_file is not None:
            console.print(f"{export_rounds(store, export_file)} rounds written to {export_file}")
