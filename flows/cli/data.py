"""``capml data ...``: import, generate, export, sample and restore MD frames, summarise datasets."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, get_args

import typer
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from capml_core.errors import CapmlError
from capml_core.types import LabelName
from flows.cli.common import (
    ConfigOption,
    ModelOption,
    ProjectOption,
    bar,
    capml_errors,
    console,
    err_console,
    fail,
    load,
    model_or_latest,
    open_store,
    print_summary,
    progress_callback,
)

data_app = typer.Typer(help="Datasets: import, generate, export, summary.", no_args_is_help=True)


@data_app.command("import")
def data_import(
    file: Annotated[Path, typer.Argument(help="Extended-XYZ file with labelled structures.")],
    level: Annotated[str, typer.Option("--level", "-l", help="Reference level of the labels, e.g. gpaw-pbesol.")],
    config: Annotated[Path, typer.Option("--config", "-c", help="Run configuration: the system (species).")],
    project: ProjectOption = None,
    labels: Annotated[
        str, typer.Option(help=f"Comma-separated labels the file carries, of: {', '.join(get_args(LabelName))}.")
    ] = "energy,forces,stress,gap",
    prefix: Annotated[str | None, typer.Option(help="Key prefix: labels are read from <prefix>_<label>.")] = None,
    key: Annotated[list[str] | None, typer.Option(help="Explicit key of a label, as label=key (repeatable).")] = None,
    temperature_key: Annotated[str | None, typer.Option(help="info key of the temperature (K).")] = None,
    amplitude_key: Annotated[str | None, typer.Option(help="info key of the displacement amplitude (Å).")] = None,
) -> None:
    """Validate a labelled extended-XYZ file and load it into the store (all or nothing)."""
    from pydantic import ValidationError

    from capml_core.config.inputs import ImportSpec
    from capml_core.config.loading import format_validation_error
    from capml_core.stages.datasets import import_spec
    from capml_core.store.database import Store

    with capml_errors():
        loaded = load(config, project)
        overrides = {}
        for item in key or []:
            name, sep, value = item.partition("=")
            if not sep or not value:
                raise CapmlError(f"--key {item!r}: expected label=key, e.g. gap=my_gap")
            overrides[name.strip()] = value.strip()
        try:
            spec = ImportSpec.model_validate(
                {
                    "path": file,
                    "level": level,
                    "labels": [s.strip() for s in labels.split(",") if s.strip()],
                    "key_prefix": prefix,
                    "key_names": overrides,
                    "temperature_key": temperature_key,
                    "amplitude_key": amplitude_key,
                },
                context={"base_dir": Path.cwd()},
            )
        except ValidationError as err:
            raise CapmlError(format_validation_error("command line", err, {}, model=ImportSpec)) from err
    system = loaded.config.system
    with (
        capml_errors(),  # outermost: the bar is gone before an error is printed
        Progress(
            TextColumn("validating {task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeRemainingColumn(),
            console=err_console,
            transient=True,
        ) as validating,
    ):
        task_id = validating.add_task(spec.path.name, total=None)
        report = import_spec(Store(loaded.project_dir), spec, system, progress=progress_callback(validating, task_id))
    console.print(f"{escape(report.summary())}; store {loaded.project_dir}", highlight=False)
    if report.warning():
        err_console.print(f"[bold yellow]warning:[/] {escape(report.warning())}", highlight=False, soft_wrap=True)


@data_app.command("generate")
def data_generate(
    config: Annotated[
        Path, typer.Option("--config", "-c", help="Run configuration (TOML; uses system, dataset.sets).")
    ],
    project: ProjectOption = None,
) -> None:
    """Build the structure sets of a configuration (thermal, uniform, equilibrium) and store them."""
    from capml_core.stages.mlip import force_constants_cache_dir, force_function
    from capml_core.stages.training_sets import end_members_for, store_structure_set
    from capml_core.store.database import Store
    from capml_core.store.hosts import check_project_dir

    with capml_errors():
        loaded = load(config, project)
        check_project_dir(loaded.project_dir)
        store = Store(loaded.project_dir)
        system, dataset = loaded.config.system, loaded.config.dataset
        if not dataset.sets:
            raise CapmlError(f"{loaded.path}: no [[dataset.sets]] to generate")

        forces = force_function(dataset.force_constants_level, loaded.config.reference, store)
        end_members = end_members_for(
            system, dataset, cache_dir=force_constants_cache_dir(store, dataset.force_constants_level), forces=forces
        )
        for structure_set in dataset.sets:
            with bar(f"set {structure_set.name}") as progress:
                task_id = progress.add_task(structure_set.name, total=None)
                size, new = store_structure_set(
                    store,
                    system,
                    dataset,
                    structure_set,
                    end_members,
                    progress=progress_callback(progress, task_id),
                )
            console.print(
                f"set [bold]{structure_set.name}[/] ({structure_set.level}): {size} structures, {new} new; "
                f"store {loaded.project_dir}"
            )


@data_app.command("export")
def data_export(
    output: Annotated[Path, typer.Argument(help="Extended-XYZ file to write.")],
    level: Annotated[str, typer.Option("--level", "-l", help="Reference level of the labels.")],
    config: ConfigOption = None,
    project: ProjectOption = None,
    set_name: Annotated[str | None, typer.Option("--set", help="Only this structure set.")] = None,
    prefix: Annotated[str, typer.Option(help="Label keys <prefix>_energy, _forces, _stress, _gap.")] = "REF",
) -> None:
    """Write labelled structures to extended XYZ that MACE's trainer reads directly."""
    from capml_core.stages.datasets import export_labelled_extxyz

    with capml_errors():
        n = export_labelled_extxyz(open_store(config, project), output, level=level, set_name=set_name, prefix=prefix)
    if n == 0:
        fail(CapmlError(f"no structure labelled at level {level!r}" + (f" in set {set_name!r}" if set_name else "")))
    console.print(
        f"{n} structures -> {output}  (MACE: --energy_key {prefix}_energy --forces_key {prefix}_forces "
        f"--stress_key {prefix}_stress)"
    )


@data_app.command("export-tables")
def data_export_tables(
    output: Annotated[Path, typer.Argument(help="New directory: one file per table, schema.sql, load.sql.")],
    config: ConfigOption = None,
    project: ProjectOption = None,
    file_format: Annotated[str, typer.Option("--format", help="parquet or csv.")] = "parquet",
) -> None:
    """Every table of the project's store as Parquet or CSV files (DuckDB's IMPORT DATABASE rebuilds the store)."""
    with capml_errors():
        folder = open_store(config, project).export_tables(output, file_format=file_format)
    console.print(f"{len(list(folder.glob('*.' + file_format)))} tables -> {folder}")


@data_app.command("ship-results")
def data_ship_results(
    output: Annotated[Path, typer.Argument(help="New project directory to write the results to.")],
    config: ConfigOption = None,
    project: ProjectOption = None,
    with_models: Annotated[
        bool,
        typer.Option(
            "--with-models",
            help="Also the MACE and gap-model files: later stages can continue in the written directory (a study "
            "split over machines).",
        ),
    ] = False,
    replace: Annotated[
        bool, typer.Option("--replace", help="OUTPUT may be a directory shipped before; it is replaced when done.")
    ] = False,
) -> None:
    """The project's results to ship: its store (compacted) and arrays, no trajectories or model files.

    ``capml dashboard``, ``capml sql`` and ``capml report`` read the written directory as a project.
    """
    from capml_core.stages.shipping import ship_results

    with capml_errors():
        manifest = ship_results(open_store(config, project), output, with_models=with_models, replace=replace)
    size = (manifest["store_bytes"] + manifest["artifacts_bytes"] + manifest["model_bytes"]) / 1e6
    models = f", {manifest['model_files']} model files" if with_models else ""
    console.print(
        f"{output}: store {manifest['store_bytes'] / 1e6:.1f} MB, {manifest['artifacts']} array files{models}, "
        f"{size:.1f} MB in all; {len(manifest['left_out'])} artifacts left out (SHIPPED.json)"
    )


def _frame_levels(loaded, levels: str | None) -> list[str]:  # LoadedConfig
    """The levels MD frames are to be labelled at: ``--levels`` or the config's cheap and high level."""
    if levels:
        return [item.strip() for item in levels.split(",") if item.strip()]
    reference = loaded.config.reference
    return list(dict.fromkeys(level for level in (reference.cheap_level, reference.high_level) if level))


@data_app.command("sample-frames")
def data_sample_frames(
    output: Annotated[Path, typer.Argument(help="Pool file (extended XYZ) to write the frames and provenance to.")],
    config: Annotated[Path, typer.Option("--config", "-c", help="Run configuration (TOML; md.equilibration_ps).")],
    project: ProjectOption = None,
    per_run: Annotated[int, typer.Option(min=1, help="Frames drawn per MD run.")] = 1,
    seed: Annotated[int, typer.Option(min=0, help="Seed of the random draw.")] = 0,
    set_name: Annotated[str, typer.Option("--set", help="Name of the selection (sets <name>@<level>).")] = "md-heldout",
    levels: Annotated[
        str | None, typer.Option(help="Comma-separated levels to label them at (default: cheap and high level).")
    ] = None,
    trainable: Annotated[
        bool, typer.Option("--trainable", help="Frames may be trained on (default: a held-out set, never trained on).")
    ] = False,
    round_index: Annotated[
        int, typer.Option("--round", min=0, help="Active-learning round the frames are drawn for (provenance).")
    ] = 0,
    model: ModelOption = None,
    separation_ps: Annotated[
        float,
        typer.Option(
            "--separation-ps",
            min=0.0,
            help="No frame closer than this (ps) to a frame of the same run measured on (held-out, DFT check) "
            "when --trainable, or trained on when held out (use the gap's correlation time).",
        ),
    ] = 0.0,
    compositions: Annotated[
        list[float] | None,
        typer.Option(
            "--composition",
            help="Draw only from the runs of this composition (Br fraction x; repeatable; default: every one).",
        ),
    ] = None,
) -> None:
    """Draw MD frames at random from every MD run's production part, store them as sets to label, write a pool file.

    The runs are those of the --model MACE model (default: the newest); a selection drawn before under the same
    --set is reused. A --trainable draw never takes frames of a run whose Eg(T) gaps.dft_check checks with DFT
    (the check stays independent of the training data).
    """
    from capml_core.stages.md_frames import (
        dft_checked_runs,
        runs_of_other_compositions,
        sample_random_frames,
        write_frame_pool,
    )
    from capml_core.store.database import Store

    with capml_errors():
        loaded = load(config, project)
        chosen_levels = _frame_levels(loaded, levels)
        store = Store(loaded.project_dir)
        model_id = model_or_latest(store, model)
        skipped = dft_checked_runs(store, loaded.config, model_id) if trainable else []
        if compositions:
            skipped = sorted(set(skipped) | set(runs_of_other_compositions(store, model_id, compositions)))
        frames = sample_random_frames(
            store,
            loaded.config.md,
            model_id=model_id,
            levels=chosen_levels,
            per_run=per_run,
            seed=seed,
            set_name=set_name,
            held_out=not trainable,
            round_index=round_index,
            separation_fs=separation_ps * 1000.0,
            skip_md_ids=skipped,
        )
        write_frame_pool(frames, output)
    sets = ", ".join(f"{set_name}@{level}" for level in chosen_levels)
    console.print(f"{len(frames)} MD frames -> {output}; sets {sets} (label with: capml label --set NAME --level L)")


@data_app.command("restore-frames")
def data_restore_frames(
    pool: Annotated[Path, typer.Argument(help="Pool file written by capml data sample-frames.")],
    config: Annotated[Path, typer.Option("--config", "-c", help="Run configuration (TOML).")],
    project: ProjectOption = None,
    set_name: Annotated[str, typer.Option("--set", help="Name of the selection (sets <name>@<level>).")] = "md-heldout",
    levels: Annotated[
        str | None, typer.Option(help="Comma-separated levels to label them at (default: cheap and high level).")
    ] = None,
) -> None:
    """Store the MD frames of a pool file (with their provenance) as a set to label: resume on a new store."""
    from capml_core.stages.md_frames import restore_frame_pool
    from capml_core.store.database import Store

    with capml_errors():
        loaded = load(config, project)
        chosen_levels = _frame_levels(loaded, levels)
        n = restore_frame_pool(Store(loaded.project_dir), pool, levels=chosen_levels, set_name=set_name)
    console.print(f"{n} MD frames from {pool} -> sets " + ", ".join(f"{set_name}@{lv}" for lv in chosen_levels))


@data_app.command("summary")
def data_summary(config: ConfigOption = None, project: ProjectOption = None) -> None:
    """Structures, labels per level and gap ranges in the store."""
    from capml_core.store.queries import summarise_dataset

    with capml_errors():
        summary = summarise_dataset(open_store(config, project))
    print_summary(summary.as_dict())
