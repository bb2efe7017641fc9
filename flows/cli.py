"""The ``capml`` command line (Typer): builds arguments, calls capml_core or a flow, prints results."""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Any, get_args

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from rich.table import Table

from capml_core.errors import CapmlError
from capml_core.types import LabelName
from flows.settings import configure_environment

app = typer.Typer(
    name="capml",
    help="capml: band gaps of disordered, anharmonic semiconductors vs composition and temperature.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
data_app = typer.Typer(help="Datasets: import, generate, export, summary.", no_args_is_help=True)
config_app = typer.Typer(help="Run configurations: check.", no_args_is_help=True)
app.add_typer(data_app, name="data")
app.add_typer(config_app, name="config")

console = Console(soft_wrap=True, width=None if sys.stdout.isatty() else 120)  # logs and pipes: wide tables
err_console = Console(stderr=True)

ConfigOption = Annotated[
    Path | None, typer.Option("--config", "-c", help="Run configuration (TOML); gives the project directory.")
]
ProjectOption = Annotated[
    Path | None, typer.Option("--project", "-p", help="Project directory (holds capml.duckdb); overrides the config's.")
]


def _fail(err: Exception) -> None:
    err_console.print(f"[bold red]error:[/] {err}", highlight=False, soft_wrap=True)
    raise typer.Exit(code=2)


def _project_dir(config: Path | None, project: Path | None) -> Path:
    if project is not None:
        return project.expanduser().resolve()
    if config is not None:
        from capml_core.config.loading import load_config

        return load_config(config).project_dir
    raise CapmlError("give --config CONFIG.toml or --project DIR to say which store to use")


def _parse_settings(settings: list[str] | None) -> dict[str, Any]:
    """``section.field=value`` strings -> overrides; the value is read as TOML (``2``, ``[300, 600]``, ``'cuda'``)."""
    import tomllib

    overrides: dict[str, Any] = {}
    for item in settings or []:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise CapmlError(f"--set {item!r}: expected section.field=value, e.g. md.workers=2")
        try:
            overrides[key.strip()] = tomllib.loads(f"v = {value}")["v"]
        except tomllib.TOMLDecodeError:
            overrides[key.strip()] = value  # a bare word: a string
    return overrides


@app.command()
def run(
    config: Annotated[Path, typer.Argument(help="Run configuration (TOML).")],
    project: ProjectOption = None,
    stage: Annotated[
        list[str] | None, typer.Option("--stage", help="Run only this stage (repeatable); default: all, in order.")
    ] = None,
    settings: Annotated[
        list[str] | None,
        typer.Option("--set", help="Override a config field: section.field=value (TOML value; repeatable)."),
    ] = None,
    device: Annotated[
        str | None, typer.Option(help="cpu, cuda or auto for every stage that runs a model (default: the config's).")
    ] = None,
) -> None:
    """Run the pipeline flow (Prefect, local ephemeral mode unless PREFECT_API_URL is set) on a configuration."""
    from capml_core.config.loading import load_config

    try:
        overrides = _parse_settings(settings)
        loaded = load_config(config, project_dir=project, overrides=overrides)  # fail fast, before Prefect starts
        from flows.pipeline import STAGES

        unknown = [name for name in stage or [] if name not in STAGES]
        if unknown:
            raise CapmlError(f"--stage {unknown[0]!r}: unknown; allowed: {', '.join(STAGES)}")
        from capml_core.store.hosts import check_project_dir

        check_project_dir(loaded.project_dir)  # before Prefect starts: a clear message, no flow-run traceback
    except CapmlError as err:
        _fail(err)
    from flows.pipeline import pipeline
    from flows.prefect_api import ensure_prefect_api

    try:
        ensure_prefect_api()  # one API for this run and its worker processes
        result = pipeline(
            config_path=str(loaded.path),
            project_dir=str(loaded.project_dir),
            stages=stage or None,
            overrides=overrides or None,
            device=device,
        )
    except CapmlError as err:
        _fail(err)
    if "dataset" in result:
        _print_summary(result["dataset"])
    exe = _own_command()
    console.print(f"\nrun [bold]{result['run_id']}[/] done; results in [bold]{result['store']}[/]")
    console.print(f"open the dashboard:  {exe} dashboard --project {loaded.project_dir}")
    console.print(f'query with SQL:      {exe} sql --project {loaded.project_dir} "SELECT * FROM labelled_structures"')


@app.command()
def deploy(
    prefect_file: Annotated[
        Path | None, typer.Option(help="Deployment file (default: deploy/prefect.yaml of this checkout).")
    ] = None,
) -> None:
    """Register capml's Prefect deployments with the server at PREFECT_API_URL (creates the work pools first).

    Then start a worker (prefect worker start --pool capml-local) and trigger a run
    (prefect deployment run capml-pipeline/on-demand). See docs/operations.md.
    """
    from flows.deployments import WORK_POOLS, ensure_work_pools, register_deployments

    try:
        created = ensure_work_pools()
        for name in WORK_POOLS:
            console.print(f"work pool [bold]{name}[/]: {'created' if name in created else 'exists'}")
        names = register_deployments(prefect_file)
    except CapmlError as err:
        _fail(err)
    console.print(f"{len(names)} deployments registered:")
    for name in names:
        console.print(f"  {name}")
    console.print("\nstart a worker:  prefect worker start --pool capml-local")
    console.print("trigger a run:   prefect deployment run capml-pipeline/on-demand --param config_path=CONFIG.toml")


def _own_command() -> str:
    """How the user invoked capml (e.g. .venv/bin/capml), for commands printed back to them."""
    argv0 = Path(sys.argv[0])
    return shlex.quote(str(argv0)) if argv0.name == "capml" else "capml"


@config_app.command("check")
def config_check(config: Annotated[Path, typer.Argument(help="Run configuration (TOML).")]) -> None:
    """Validate a configuration and show what it describes; writes nothing."""
    from capml_core.config.loading import load_config
    from capml_core.system.structures import build_parent, build_supercell, sublattice_site_count

    try:
        loaded = load_config(config)
        foundation = loaded.config.mlip.foundation_model
        if foundation is not None:  # read in capml's form only (a pickle is refused, never run)
            from capml_core.models.mace import check_foundation
            from capml_core.models.mace_files import inspect_mace_model
            from capml_core.system.structures import allowed_species

            info = inspect_mace_model(foundation)
            check_foundation(info, loaded.config.mlip, allowed_species(loaded.config.system), source=str(loaded.path))
    except CapmlError as err:
        _fail(err)
    system = loaded.config.system
    parent = build_parent(system.parent)
    n_sites = sublattice_site_count(parent, system.sublattice.site_species, system.supercell)
    cell = build_supercell(system, system.compositions[0])
    console.print(f"[green]valid[/] {loaded.path}  (hash {loaded.config_hash[:12]})")
    console.print(
        f"system      {system.name}: parent {parent.get_chemical_formula()}, supercell "
        f"{'x'.join(map(str, system.supercell))} = {len(cell)} atoms, {n_sites} sites of "
        f"{system.sublattice.site_species} shared by {'/'.join(system.sublattice.species)}"
    )
    console.print(f"x           {', '.join(f'{x:g}' for x in system.compositions)}")
    console.print(
        f"imports     {', '.join(f'{s.path.name} ({s.level})' for s in loaded.config.dataset.imports) or '-'}"
    )
    if foundation is not None:
        console.print(f"foundation  {foundation}: MACE, cutoff {info.r_max_a:g} Å, {info.channels} channels")
    console.print(f"project dir {loaded.project_dir}")


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

    from capml_core.config.loading import format_validation_error, load_config
    from capml_core.config.schema import ImportSpec
    from capml_core.stages.datasets import import_spec
    from capml_core.store.database import Store

    try:
        loaded = load_config(config, project_dir=project)
        overrides = {}
        for item in key or []:
            name, sep, value = item.partition("=")
            if not sep or not value:
                raise CapmlError(f"--key {item!r}: expected label=key, e.g. gap=my_gap")
            overrides[name.strip()] = value.strip()
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
    except CapmlError as err:
        _fail(err)
    except ValidationError as err:
        _fail(CapmlError(format_validation_error("command line", err, {}, model=ImportSpec)))
    system = loaded.config.system
    with Progress(
        TextColumn("validating {task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeRemainingColumn(),
        console=err_console,
        transient=True,
    ) as bar:
        task_id = bar.add_task(spec.path.name, total=None)
        try:
            report = import_spec(
                Store(loaded.project_dir),
                spec,
                system,
                progress=lambda done, total: bar.update(task_id, completed=done, total=total),
            )
        except CapmlError as err:
            bar.stop()
            _fail(err)
    console.print(
        f"{report.path.name} -> level [bold]{report.level}[/]: {report.n_frames} frames "
        f"({report.n_duplicate_frames} repeated in the file), {report.new_structures} new structures, "
        f"{report.new_labels} new labels, {report.existing_labels} already stored; store {loaded.project_dir}"
    )
    if report.differing:
        names = sorted({name for _, labels, _ in report.differing for name in labels})
        err_console.print(
            f"[bold yellow]warning:[/] {len(report.differing)} of the already stored structures have other labels "
            f"at {report.level} in the store than in this file ({', '.join(names)}; e.g. {report.differing[0][2]}): "
            "the stored labels were kept. Import the file under another --level name to keep both",
            highlight=False,
            soft_wrap=True,
        )


@data_app.command("generate")
def data_generate(
    config: Annotated[
        Path, typer.Option("--config", "-c", help="Run configuration (TOML; uses system, dataset.sets).")
    ],
    project: ProjectOption = None,
) -> None:
    """Build the structure sets of a configuration (thermal, uniform, equilibrium) and store them."""
    from capml_core.config.loading import load_config
    from capml_core.stages.mlip import force_constants_cache_dir, force_function
    from capml_core.stages.training_sets import store_structure_set
    from capml_core.store.database import Store
    from capml_core.store.hosts import check_project_dir
    from capml_core.system.training_sets import end_members_for

    try:
        loaded = load_config(config, project_dir=project)
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
            with _bar(f"set {structure_set.name}") as bar:
                task_id = bar.add_task(structure_set.name, total=None)
                size, new = store_structure_set(
                    store,
                    system,
                    dataset,
                    structure_set,
                    end_members,
                    progress=lambda done, total, bar=bar, task_id=task_id: bar.update(
                        task_id, completed=done, total=total
                    ),
                )
            console.print(
                f"set [bold]{structure_set.name}[/] ({structure_set.level}): {size} structures, {new} new; "
                f"store {loaded.project_dir}"
            )
    except CapmlError as err:
        _fail(err)


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
    from capml_core.store.database import Store

    try:
        n = export_labelled_extxyz(
            Store(_project_dir(config, project)), output, level=level, set_name=set_name, prefix=prefix
        )
    except CapmlError as err:
        _fail(err)
    if n == 0:
        _fail(CapmlError(f"no structure labelled at level {level!r}" + (f" in set {set_name!r}" if set_name else "")))
    console.print(
        f"{n} structures -> {output}  (MACE: --energy_key {prefix}_energy --forces_key {prefix}_forces "
        f"--stress_key {prefix}_stress)"
    )


def _frame_levels(loaded, levels: str | None) -> list[str]:  # noqa: ANN001 - LoadedConfig
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
) -> None:
    """Draw MD frames at random from every MD run's production part, store them as sets to label, write a pool file.

    The runs are the latest MACE model's; a selection drawn before under the same --set is reused.
    """
    from capml_core.config.loading import load_config
    from capml_core.stages.md_frames import sample_random_frames, write_frame_pool
    from capml_core.store.database import Store

    try:
        loaded = load_config(config, project_dir=project)
        chosen_levels = _frame_levels(loaded, levels)
        frames = sample_random_frames(
            Store(loaded.project_dir),
            loaded.config.md,
            levels=chosen_levels,
            per_run=per_run,
            seed=seed,
            set_name=set_name,
            held_out=not trainable,
        )
        write_frame_pool(frames, output)
    except CapmlError as err:
        _fail(err)
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
    from capml_core.config.loading import load_config
    from capml_core.stages.md_frames import restore_frame_pool
    from capml_core.store.database import Store

    try:
        loaded = load_config(config, project_dir=project)
        chosen_levels = _frame_levels(loaded, levels)
        n = restore_frame_pool(Store(loaded.project_dir), pool, levels=chosen_levels, set_name=set_name)
    except CapmlError as err:
        _fail(err)
    console.print(f"{n} MD frames from {pool} -> sets " + ", ".join(f"{set_name}@{lv}" for lv in chosen_levels))


@app.command()
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
    from capml_core.config.loading import load_config
    from capml_core.dft.levels import get_level
    from capml_core.stages.labelling import label_structures
    from capml_core.store.database import Store

    try:
        loaded = load_config(config, project_dir=project)
        reference_level = get_level(level, loaded.config.reference)  # unknown: fails before any work
        if (reason := reference_level.unavailable_reason()) is not None:
            raise CapmlError(f"level {level} cannot compute here: {reason}")
        store = Store(loaded.project_dir)
        store.initialise()  # a write command: a store of an older capml is migrated first
        pending = store.pending_labels(level, set_name=set_name, include_failed=retry_failed)
    except CapmlError as err:
        _fail(err)
    chosen = pending if limit is None else pending[:limit]
    console.print(f"{level}: {len(pending)} structures pending, labelling {len(chosen)} with {workers} worker(s)")
    if not chosen:
        return
    with _bar(level) as bar:
        task_id = bar.add_task(level, total=len(chosen))
        report = label_structures(
            store,
            reference_level,
            chosen,
            workers=workers,
            progress=lambda done, total, record: bar.update(task_id, completed=done),
        )
    mean = f", {report.mean_calculation_s:.0f} s per calculation" if report.mean_calculation_s else ""
    console.print(f"{level}: {report.n_ok} labelled, {report.n_failed} failed{mean}")
    for structure_hash, error in report.failures:
        console.print(f"  failed {structure_hash}: {error.splitlines()[0] if error else ''}")


def _bar(what: str) -> Progress:
    return Progress(
        TextColumn(f"{what}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(), console=err_console
    )


@contextmanager
def _two_bars(first: str, second: str) -> Iterator[tuple[Callable[[int, int], None], Callable[[int, int], None]]]:
    """Two progress bars (a stage's own work and its DFT checks); yields their ``progress(done, total)`` callbacks."""
    with _bar("{task.description}") as bar:

        def updater(task: int) -> Callable[[int, int], None]:
            return lambda done, total: bar.update(task, completed=done, total=total)

        yield updater(bar.add_task(first, total=None)), updater(bar.add_task(second, total=None))


@data_app.command("summary")
def data_summary(config: ConfigOption = None, project: ProjectOption = None) -> None:
    """Structures, labels per level and gap ranges in the store."""
    from capml_core.stages.datasets import summarise_dataset
    from capml_core.store.database import Store

    try:
        summary = summarise_dataset(Store(_project_dir(config, project)))
    except CapmlError as err:
        _fail(err)
    _print_summary(summary.as_dict())


def _print_summary(summary: dict) -> None:
    table = Table(
        title=f"{summary['n_structures']} structures, x = " + ", ".join(f"{x:g}" for x in summary["compositions"])
    )
    for column in ("level", "ok", "failed", "energy", "forces", "stress", "gap", "gap eV min", "mean", "max"):
        table.add_column(column)
    for lv in summary["levels"]:
        gaps = (
            ["-"] * 3
            if lv["gap_mean_ev"] is None
            else [f"{lv[k]:.3f}" for k in ("gap_min_ev", "gap_mean_ev", "gap_max_ev")]
        )
        counts = (str(lv[k]) for k in ("n_ok", "n_failed", "n_energy", "n_forces", "n_stress", "n_gap"))
        table.add_row(lv["level"], *counts, *gaps)
    console.print(table)


gnn_app = typer.Typer(help="Band-gap GNN: train, predict.", no_args_is_help=True)
app.add_typer(gnn_app, name="gnn")


@gnn_app.command("train")
def gnn_train(
    config: Annotated[Path, typer.Option("--config", "-c", help="Run configuration (TOML; uses gnn, reference).")],
    project: ProjectOption = None,
) -> None:
    """Search (if configured), train the GNN ensemble on the cheap level, fine-tune on the high level, curve."""
    from capml_core.config.loading import load_config
    from capml_core.stages.gnn import fit_band_gap_model
    from capml_core.store.database import Store

    try:
        loaded = load_config(config, project_dir=project)
        reference = loaded.config.reference
        result = fit_band_gap_model(
            Store(loaded.project_dir),
            loaded.config.gnn,
            cheap_level=reference.cheap_level,
            high_level=reference.high_level,
            seed=loaded.config.run.seed,
        )
    except CapmlError as err:
        _fail(err)
    for rank, trial in enumerate(result.search[:5], start=1):
        console.print(
            f"search #{rank}: {trial.architecture}, lr {trial.learning_rate:g}, batch {trial.batch_size}: "
            f"validation MAE {trial.valid.mae_ev:.3f} eV"
        )
    ensemble = result.ensemble
    console.print(f"ensemble {ensemble.ensemble_id}: {len(ensemble.model_ids)} model(s)")
    for stage, m in ensemble.ensemble_test_metrics.items():
        console.print(
            f"  {stage} level, test split (n = {m.n}): MAE {m.mae_ev:.3f} eV, RMSE {m.rmse_ev:.3f} eV, "
            f"R² {m.r2:.3f}, max error {m.max_error_ev:.3f} eV"
        )
    if result.baseline is not None:
        console.print(
            f"baseline {result.baseline.ensemble_id} ({loaded.config.gnn.baseline_architecture}, "
            "same splits and seeds):"
        )
        for stage, m in result.baseline.ensemble_test_metrics.items():
            console.print(f"  {stage} level, test split (n = {m.n}): MAE {m.mae_ev:.3f} eV, R² {m.r2:.3f}")
    for n, m in result.curve:
        console.print(f"learning curve: {n} training structures -> test MAE {m.mae_ev:.3f} eV")


@gnn_app.command("predict")
def gnn_predict(
    structures: Annotated[Path, typer.Argument(help="Structures to predict (any file ASE reads; all frames).")],
    config: ConfigOption = None,
    project: ProjectOption = None,
    model: Annotated[
        list[Path] | None,
        typer.Option(help="A GNN model directory (model.json + model.pt) or its model.pt; repeat for an ensemble."),
    ] = None,
) -> None:
    """Band gaps (eV) of structures with the latest trained ensemble (or --model): mean and spread, per frame."""
    from ase.io import read

    from capml_core.models.gnn import GapModel, predict_gaps
    from capml_core.stages.gnn import load_ensemble
    from capml_core.store.database import Store

    try:
        if model:
            models = [GapModel.load(path.parent if path.suffix == ".pt" else path) for path in model]
        else:
            models = load_ensemble(Store(_project_dir(config, project)))
        try:
            frames = read(structures, index=":")
        except Exception as err:  # ASE raises many types on unreadable files
            raise CapmlError(f"{structures}: not a structure file ASE can read: {err}") from err
        mean, spread = predict_gaps(frames, models)
    except CapmlError as err:
        _fail(err)
    sys.stdout.write("frame,formula,gap_ev,gap_std_ev\n")
    for i, (atoms, m, s) in enumerate(zip(frames, mean, spread, strict=True)):
        sys.stdout.write(f"{i},{atoms.get_chemical_formula()},{m:.4f},{s:.4f}\n")


mlip_app = typer.Typer(help="MACE interatomic potential: train or fine-tune, evaluate.", no_args_is_help=True)
app.add_typer(mlip_app, name="mlip")


@mlip_app.command("train")
def mlip_train(
    config: Annotated[Path, typer.Option("--config", "-c", help="Run configuration (TOML; uses mlip, reference).")],
    project: ProjectOption = None,
) -> None:
    """Train MACE (or fine-tune mlip.foundation_model) on the level's energies, forces, stresses; evaluate it."""
    from capml_core.config.loading import load_config
    from capml_core.stages.mlip import fit_mlip
    from capml_core.store.database import Store

    try:
        loaded = load_config(config, project_dir=project)
        with _bar("MACE epochs") as bar:
            task_id = bar.add_task("MACE", total=loaded.config.mlip.max_epochs)
            result = fit_mlip(
                Store(loaded.project_dir),
                loaded.config,
                on_epoch=lambda epoch, total, line: bar.update(task_id, completed=epoch, total=total),
            )
    except CapmlError as err:
        _fail(err)
    model = result.model
    console.print(f"MACE model {model.model_id}: {model.path}" + ("" if model.newly_trained else " (already trained)"))
    _print_mlip_tables(
        Store(loaded.project_dir), [model.model_id] + ([model.foundation_id] if model.foundation_id else [])
    )


def _print_mlip_tables(store, model_ids: list[str]) -> None:  # noqa: ANN001
    metrics = store.query(
        """SELECT model_id, quantity, split, unit, n, mae, rmse, r2 FROM mlip_metrics
           WHERE model_id IN (SELECT unnest(?)) ORDER BY model_id DESC, quantity, split DESC""",
        [model_ids],
    )
    table = Table("model", "quantity", "split", "n", "MAE", "RMSE", "R²", "unit", title="errors vs the reference level")
    for r in metrics.itertuples():
        table.add_row(r.model_id, r.quantity, r.split, str(r.n), f"{r.mae:.4g}", f"{r.rmse:.4g}", f"{r.r2:.3f}", r.unit)
    console.print(table)
    phonons = store.query("SELECT * FROM mlip_phonons WHERE model_id IN (SELECT unnest(?))", [model_ids])
    if not phonons.empty:
        table = Table(
            "end member",
            "modes",
            "MAE (THz)",
            "R²",
            "imaginary ref / MACE",
            "lowest ref / MACE (THz)",
            title="Γ-point phonons of the end-member supercells: MACE vs the reference level",
        )
        for r in phonons.itertuples():
            table.add_row(
                r.end_member,
                str(r.n_modes),
                f"{r.mae_thz:.3f}",
                f"{r.r2:.3f}",
                f"{r.n_imaginary_reference} / {r.n_imaginary_model}",
                f"{r.min_frequency_reference_thz:.2f} / {r.min_frequency_model_thz:.2f}",
            )
        console.print(table)


@mlip_app.command("evaluate")
def mlip_evaluate(
    model_file: Annotated[Path, typer.Argument(help="A MACE .model file (e.g. a foundation model).")],
    config: Annotated[Path, typer.Option("--config", "-c", help="Run configuration (TOML; uses mlip, reference).")],
    project: ProjectOption = None,
    device: Annotated[str, typer.Option(help="cpu, cuda or auto.")] = "auto",
) -> None:
    """Errors of any MACE model file on the project's labelled structures (same splits as training)."""
    from capml_core.config.loading import load_config
    from capml_core.stages.mlip import evaluate_file
    from capml_core.store.database import Store

    try:
        loaded = load_config(config, project_dir=project)
        store = Store(loaded.project_dir)
        model_id = evaluate_file(store, loaded.config, model_file, device=device)
    except CapmlError as err:
        _fail(err)
    _print_mlip_tables(store, [model_id])


@mlip_app.command("convert")
def mlip_convert(
    source: Annotated[Path, typer.Argument(help="A MACE .model file (a pickle) that you trust.")],
    target: Annotated[Path, typer.Argument(help="Output file in capml's form (*.capml-mace.pt).")],
    trust: Annotated[
        bool, typer.Option("--trust", help="Confirm you trust the file: converting unpickles it, running its code.")
    ] = False,
) -> None:
    """Convert a MACE .model pickle you trust to capml's form, the only MACE form capml loads."""
    from capml_core.models.mace_files import SAFE_SUFFIX, convert_trusted_pickle, inspect_mace_model

    try:
        if not trust:
            raise CapmlError(
                f"{source}: converting a .model file unpickles it, which runs any code it holds; only for a file "
                "whose source you trust: add --trust"
            )
        if not target.name.endswith(SAFE_SUFFIX):
            raise CapmlError(f"{target}: name the output *{SAFE_SUFFIX}")
        info = inspect_mace_model(convert_trusted_pickle(source, target))
    except CapmlError as err:
        _fail(err)
    console.print(
        f"{source} -> {target}: MACE, cutoff {info.r_max_a:g} Å, {info.channels} channels, L = {info.max_l}, "
        f"elements {list(info.atomic_numbers)}"
    )


@app.command()
def disorder(
    config: Annotated[Path, typer.Option("--config", "-c", help="Run configuration (TOML; uses system, disorder).")],
    project: ProjectOption = None,
    plan_only: Annotated[
        bool, typer.Option("--plan", help="Only count and choose arrangements; relax nothing.")
    ] = False,
) -> None:
    """Inequivalent arrangements per composition (with multiplicities), relaxed with the project's MACE, ranked."""
    from capml_core.config.loading import load_config
    from capml_core.stages.disorder import run_disorder_scan
    from capml_core.store.database import Store
    from capml_core.system.arrangements import plan_scan

    try:
        loaded = load_config(config, project_dir=project)
        plans = list(plan_scan(loaded.config.system, loaded.config.disorder))
        table = Table("x", "labellings", "inequivalent", "selection", "chosen", "multiplicities", title="arrangements")
        for p in plans:
            mults = sorted((a.multiplicity for a in p.arrangements), reverse=True)
            shown = ", ".join(map(str, mults[:8])) + (" …" if len(mults) > 8 else "")
            table.add_row(
                f"{p.composition_x:.4g}",
                str(p.n_labellings),
                str(p.n_inequivalent),
                p.selection,
                str(len(p.arrangements)),
                shown,
            )
        console.print(table)
        if plan_only:
            return
        with _bar("relaxations") as bar:
            task_id = bar.add_task("relax", total=None)
            result = run_disorder_scan(
                Store(loaded.project_dir),
                loaded.config,
                progress=lambda done, total: bar.update(task_id, completed=done, total=total),
            )
    except CapmlError as err:
        _fail(err)
    table = Table("x", "rank 1 arrangement", "eV/atom", "multiplicity", "ΔE rank 2 (meV/atom)", title=result.scan_id)
    for x, rows in result.ranking.items():
        gap = f"{(rows[1][1] - rows[0][1]) * 1000:.2f}" if len(rows) > 1 else "-"
        table.add_row(f"{x:.4g}", rows[0][0], f"{rows[0][1]:.5f}", str(rows[0][2]), gap)
    console.print(table)


@app.command()
def md(
    config: Annotated[Path, typer.Option("--config", "-c", help="Run configuration (TOML; uses md).")],
    project: ProjectOption = None,
) -> None:
    """Langevin MD of each composition's lowest-energy structure at every md.temperatures_k; health checks."""
    from capml_core.config.loading import load_config
    from capml_core.stages.dynamics import run_dynamics
    from capml_core.store.database import Store

    try:
        loaded = load_config(config, project_dir=project)
        with _bar("MD runs") as bar:
            task_id = bar.add_task("MD", total=None)
            results = run_dynamics(
                Store(loaded.project_dir),
                loaded.config,
                progress=lambda done, total: bar.update(task_id, completed=done, total=total),
            )
    except CapmlError as err:
        _fail(err)
    table = Table(
        "x", "T (K)", "mean T (K)", "drift (meV/atom/ps)", "max MSD (Å²)", "τ (fs)", "health", title="MD runs"
    )
    for r in results:
        h = r.health
        table.add_row(
            f"{r.composition_x:.4g}",
            f"{r.temperature_k:g}",
            f"{h.mean_temperature_k:.0f}",
            f"{h.drift_mev_per_atom_per_ps:.1f}",
            f"{max(h.msd_a2.values()):.2f}",
            f"{h.decorrelation_fs:.0f}",
            "; ".join(h.problems) or "ok",
        )
    console.print(table)


@app.command()
def phonons(
    config: Annotated[Path, typer.Option("--config", "-c", help="Run configuration (TOML; uses phonons, md).")],
    project: ProjectOption = None,
) -> None:
    """Harmonic phonons (0 K) of the lowest-energy structures; DynaPhoPy and stability verdict per MD run."""
    from capml_core.config.loading import load_config
    from capml_core.stages.phonons import run_phonon_stage, stabilisation_temperatures
    from capml_core.store.database import Store

    try:
        loaded = load_config(config, project_dir=project)
        harmonic, verdicts = run_phonon_stage(Store(loaded.project_dir), loaded.config)
    except CapmlError as err:
        _fail(err)
    table = Table("x", "imaginary at Γ (0 K)", "softest (THz)", "unstable branches", title="harmonic phonons")
    for h in harmonic:
        table.add_row(
            f"{h.composition_x:.4g}",
            str(h.imaginary.n_gamma),
            f"{h.imaginary.min_frequency_thz:.2f}",
            str(len(h.imaginary.branches)),
        )
    console.print(table)
    table = Table("x", "T (K)", "stable", "band-gap stage", "reason", title="dynamic stability (DynaPhoPy)")
    for v in verdicts:
        table.add_row(
            f"{v.composition_x:.4g}",
            f"{v.temperature_k:g}",
            "yes" if v.stable else "no",
            "yes" if v.passes_gate else "dropped",
            v.reason,
        )
    console.print(table)
    onsets = stabilisation_temperatures(verdicts)
    console.print(
        "stable from: " + ", ".join(f"x = {x:g}: {t:g} K" if t else f"x = {x:g}: never" for x, t in onsets.items())
    )


@app.command()
def gaps(
    config: Annotated[Path, typer.Option("--config", "-c", help="Run configuration (TOML; uses gaps, md, phonons).")],
    project: ProjectOption = None,
) -> None:
    """Eg(0) of the lowest-energy structures and Eg(T), ΔEg(T) from GNN gaps of uncorrelated MD snapshots."""
    from capml_core.config.loading import load_config
    from capml_core.stages.bandgaps import run_bandgap_stage
    from capml_core.store.database import Store

    try:
        loaded = load_config(config, project_dir=project)
        with _two_bars("MD runs", "DFT checks") as (runs_done, dft_done):
            result = run_bandgap_stage(
                Store(loaded.project_dir), loaded.config, progress=runs_done, reference_progress=dft_done
            )
    except CapmlError as err:
        _fail(err)
    table = Table(
        "x", "Eg(0) GNN (eV)", "ensemble spread (eV)", "Eg(0) DFT (eV)", title=f"static gaps ({result.level})"
    )
    for s in result.static:
        table.add_row(
            f"{s.composition_x:.4g}",
            f"{s.gap_ev:.3f}",
            f"{s.gap_std_ev:.3f}",
            "-" if s.reference_gap_ev is None else f"{s.reference_gap_ev:.3f}",
        )
    console.print(table)
    table = Table("x", "T (K)", "snapshots", "Eg (eV)", "ΔEg (eV)", "ΔEg/Eg(0)", "note", title="thermal gaps")
    for t in result.thermal:
        a = t.average
        table.add_row(
            f"{t.composition_x:.4g}",
            f"{t.temperature_k:g}",
            "-" if a is None else str(a.n_snapshots),
            "-" if a is None else f"{a.mean_gap_ev:.3f} ± {a.error_ev:.3f}",
            "-" if a is None else f"{a.delta_ev:+.3f} ± {a.delta_error_ev:.3f}",
            "-" if a is None else f"{100 * a.relative_change:+.1f} ± {100 * a.relative_error:.1f} %",
            t.reason,
        )
    console.print(table)


@app.command()
def modes(
    config: Annotated[Path, typer.Option("--config", "-c", help="Run configuration (TOML; uses gaps, phonons).")],
    project: ProjectOption = None,
    top: Annotated[int, typer.Option(help="Modes listed per composition and temperature (largest |ΔEg|).")] = 5,
) -> None:
    """ΔEg/Eg of each Γ mode frozen in at its thermal amplitude (GNN), with DFT checks of a few modes."""
    from capml_core.config.loading import load_config
    from capml_core.stages.modes import run_mode_stage
    from capml_core.store.database import Store

    try:
        loaded = load_config(config, project_dir=project)
        with _two_bars("structures x T", "DFT checks") as (pairs_done, dft_done):
            result = run_mode_stage(
                Store(loaded.project_dir), loaded.config, progress=pairs_done, reference_progress=dft_done
            )
    except CapmlError as err:
        _fail(err)
    table = Table("x", "T (K)", "mode", "ν (THz)", "dominant", "ΔEg (eV)", "ΔEg/Eg(0)", "DFT ΔEg (eV)", title="modes")
    for x, temperature in sorted({(m.composition_x, m.temperature_k) for m in result}):
        frozen = [m for m in result if (m.composition_x, m.temperature_k) == (x, temperature) and m.status == "frozen"]
        chosen = sorted(frozen, key=lambda m: -abs(m.delta_ev))[:top]
        chosen += [m for m in frozen if m.reference_delta_ev is not None and m not in chosen]
        for m in sorted(chosen, key=lambda m: m.frequency_thz):
            table.add_row(
                f"{x:.4g}",
                f"{temperature:g}",
                str(m.mode),
                f"{m.frequency_thz:.2f}",
                m.dominant,
                f"{m.delta_ev:+.4f}",
                f"{100 * m.relative_change:+.2f} %",
                "-" if m.reference_delta_ev is None else f"{m.reference_delta_ev:+.4f}",
            )
    console.print(table)


@app.command()
def evaluate(
    config: ConfigOption = None,
    project: ProjectOption = None,
    set_name: Annotated[str, typer.Option("--set", help="Selection of MD frames to measure on.")] = "md-heldout",
    as_json: Annotated[bool, typer.Option("--json", help="One JSON list of the errors.")] = False,
) -> None:
    """Errors of the project's latest MACE and GNN ensemble on held-out MD frames labelled so far (per level)."""
    from capml_core.config.loading import load_config
    from capml_core.models.gnn import predict_gaps
    from capml_core.models.mace import load_mace_calculator
    from capml_core.stages.gnn import load_ensemble_by_id
    from capml_core.stages.heldout import errors_table, gap_errors, labelled_frames, mace_errors
    from capml_core.store.database import Store
    from capml_core.store.queries import latest_ensemble, latest_model

    errors = []
    try:
        if config is None:
            raise CapmlError("give --config CONFIG.toml (its reference levels say what to measure)")
        loaded = load_config(config, project_dir=project)
        store = Store(loaded.project_dir)
        reference = loaded.config.reference
        cheap = loaded.config.mlip.level or reference.cheap_level
        rows = labelled_frames(store, cheap, set_name=set_name)
        rows = rows[rows["energy_ev"].notna() & rows["forces_ev_per_a"].notna()]
        if len(rows):
            model_id, path = latest_model(store)
            atoms = store.load_structures(rows["structure_hash"].tolist())
            stresses = [None if s is None or (isinstance(s, float) and s != s) else s for s in rows["stress_ev_per_a3"]]
            errors += mace_errors(
                load_mace_calculator(path, device="cpu", dtype="float64"),
                [atoms[h] for h in rows["structure_hash"]],
                rows["energy_ev"].tolist(),
                rows["forces_ev_per_a"].tolist(),
                stresses,
                model=f"mace {model_id}",
                level=cheap,
            )
        try:
            ensemble_id, gap_level = latest_ensemble(store)
        except CapmlError:
            ensemble_id = None
        if ensemble_id is not None:
            gaps = labelled_frames(store, gap_level, set_name=set_name)
            gaps = gaps[gaps["gap_ev"].notna()]
            if len(gaps):
                atoms = store.load_structures(gaps["structure_hash"].tolist())
                mean, _ = predict_gaps(
                    [atoms[h] for h in gaps["structure_hash"]], load_ensemble_by_id(store, ensemble_id)
                )
                errors.append(gap_errors(mean, gaps["gap_ev"].to_numpy(), model=f"gnn {ensemble_id}", level=gap_level))
        if not errors:
            raise CapmlError(
                f"no frame of the selection {set_name!r} is labelled yet (capml label --set {set_name}@LEVEL)"
            )
    except CapmlError as err:
        _fail(err)
    table = errors_table(errors)
    if as_json:
        sys.stdout.write(table.to_json(orient="records") + "\n")
        return
    console.print(f"errors on the {set_name} frames (model - DFT):")
    console.print(table.round(4).to_string(index=False))


@app.command()
def runs(config: ConfigOption = None, project: ProjectOption = None) -> None:
    """Runs recorded in the store and the stages of the latest one."""
    from capml_core.store.database import Store

    try:
        store = Store(_project_dir(config, project))
        frame, stages = store.runs(), store.stages()
    except CapmlError as err:
        _fail(err)
    console.print(frame.to_string(index=False) if len(frame) else "no runs yet")
    if len(stages):
        console.print("\nstages of the latest run:")
        console.print(stages.to_string(index=False))


@app.command()
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
    from capml_core.store.database import Store
    from capml_core.store.sql import preview_user_query, run_user_query, stream_user_query

    if output not in ("table", "csv", "json"):
        _fail(CapmlError(f"--output {output!r}: allowed: table, csv, json"))
    limit = timeout or None
    try:
        store = Store(_project_dir(config, project))
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
    except CapmlError as err:
        _fail(err)
    if output == "csv":
        sys.stdout.write(frame.to_csv(index=False))
    elif output == "json":
        sys.stdout.write(frame.to_json(orient="records", date_format="iso") + "\n")
    else:
        console.print(frame.to_string(index=False))
    if left_out:
        err_console.print(
            f"{left_out} more rows left out (first {len(frame)} shown): --max-rows N (0: all) or --file OUT.csv "
            "for every row",
            soft_wrap=True,
        )


@app.command()
def dashboard(
    config: ConfigOption = None,
    project: ProjectOption = None,
    port: Annotated[int, typer.Option(help="Port.")] = 8501,
    host: Annotated[
        str, typer.Option(help="Address to bind (default loopback only; 0.0.0.0 exposes it to the network).")
    ] = "127.0.0.1",
) -> None:
    """Start the Streamlit dashboard (on 127.0.0.1 unless --host says otherwise), reading the store read-only."""
    try:
        project_dir = _project_dir(config, project)
    except CapmlError as err:
        _fail(err)
    app_file = Path(__file__).resolve().parent.parent / "dashboard" / "app.py"
    env = {**os.environ, "CAPML_PROJECT_DIR": str(project_dir)}
    command = [
        sys.executable,
        "-m",
        "streamlit",
        "run",
        str(app_file),
        "--server.address",
        host,
        "--server.port",
        str(port),
        "--server.headless",
        "true",
        "--browser.gatherUsageStats",
        "false",
        "--client.toolbarMode",
        "viewer",
    ]
    console.print(f"dashboard of {project_dir} at http://{host}:{port}  (Ctrl-C stops it)")
    raise typer.Exit(subprocess.call(command, env=env))


@app.command()
def version() -> None:
    """Capml's version and the versions of the packages it computes with."""
    from capml_core.provenance import code_version, package_versions

    console.print(json.dumps({"capml": code_version(), **package_versions()}, indent=2))


def main() -> None:
    """Entry point of the ``capml`` command."""
    configure_environment()
    app()


if __name__ == "__main__":
    main()
