"""Prefect tasks around the stages: one per stage, with its logging, progress and artifacts."""

from __future__ import annotations

import logging
import uuid
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime

from prefect import get_run_logger, task
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import NO_CACHE

from capml_core.config.inputs import ImportSpec, StructureSetSection
from capml_core.config.loading import LoadedConfig
from capml_core.dft.levels import get_level
from capml_core.parallel import JobMap
from capml_core.physics.phonons import ForceConstants
from capml_core.provenance import code_version, package_versions
from capml_core.stages.bandgaps import BandGapResult, run_bandgap_stage
from capml_core.stages.datasets import ImportReport, import_spec
from capml_core.stages.disorder import DisorderScanResult, run_disorder_scan
from capml_core.stages.dynamics import MDResult, md_table, run_dynamics
from capml_core.stages.gnn import GNNStageResult, fit_band_gap_model
from capml_core.stages.heldout import FrameErrors, evaluate_newest_models
from capml_core.stages.labelling import LabellingReport, label_structures
from capml_core.stages.mlip import MlipStageResult, fit_mlip, force_constants_cache_dir, force_function, mlip_tables
from capml_core.stages.modes import ModeGap, group_table, mode_groups, mode_table, run_mode_stage
from capml_core.stages.phonons import StabilityResult, phonon_tables, run_harmonic_phonons, run_phonon_stage
from capml_core.stages.training_sets import end_members_for, store_structure_set
from capml_core.store.database import Store
from capml_core.store.queries import DatasetSummary, latest_ensemble, latest_model, latest_scan_id, summarise_dataset
from capml_core.store.records import LabelRecord
from capml_core.tables import ResultTable
from flows.fanout import fan_out


def log_tables(logger: logging.Logger | logging.LoggerAdapter, tables: Sequence[ResultTable]) -> None:
    """Log results' own tables, one line per row (rows that report a problem at warning level)."""
    for result in tables:
        for is_warning, line in result.lines():
            logger.log(logging.WARNING if is_warning else logging.INFO, "%s", line)


def new_run_id(name: str) -> str:
    """Readable unique run id: ``<name>-<UTC time>-<6 hex>``."""
    return f"{name}-{datetime.now(UTC):%Y%m%dT%H%M%S}-{uuid.uuid4().hex[:6]}"


@contextmanager
def stage(store: Store, run_id: str, name: str) -> Iterator[None]:
    """Record a stage as running, then done or failed (with the error) in the store."""
    with store.write() as writer:
        writer.set_stage(run_id, name, "running")
    try:
        yield
    except BaseException as err:
        with store.write() as writer:
            writer.set_stage(run_id, name, "failed", f"{type(err).__name__}: {err}")
        raise
    with store.write() as writer:
        writer.set_stage(run_id, name, "done")


@task(name="start-run", cache_policy=NO_CACHE)
def start_run(loaded: LoadedConfig, store: Store) -> str:
    """Create the store if needed and record a new run with its provenance."""
    run_id = new_run_id(loaded.config.run.name)
    with store.write() as writer:
        writer.start_run(
            run_id=run_id,
            name=loaded.config.run.name,
            config_hash=loaded.config_hash,
            config_json=loaded.config.model_dump_json(),
            config_path=str(loaded.path),
            code_version=code_version(),
            packages=package_versions(),
        )
    get_run_logger().info("run %s -> store %s", run_id, store.path)
    return run_id


@task(name="import-dataset", task_run_name="import {spec.level}: {spec.path.name}", cache_policy=NO_CACHE)
def import_dataset(loaded: LoadedConfig, spec: ImportSpec, store: Store, run_id: str) -> ImportReport:
    """Validate one labelled file and load it into the store (nothing written if it is rejected)."""
    report = import_spec(store, spec, loaded.config.system, run_id=run_id)
    logger = get_run_logger()
    logger.info("%s", report.summary())
    if report.warning():
        logger.warning("%s", report.warning())
    return report


@task(name="end-member-force-constants", cache_policy=NO_CACHE)
def end_member_fcs(loaded: LoadedConfig, store: Store) -> dict[str, ForceConstants]:
    """Force constants of the end members: the config's phonopy files, else computed once per project."""
    dataset, reference = loaded.config.dataset, loaded.config.reference
    forces = force_function(dataset.force_constants_level, reference, store)
    return end_members_for(
        loaded.config.system,
        dataset,
        cache_dir=force_constants_cache_dir(store, dataset.force_constants_level),
        forces=forces,
    )


@task(name="generate-set", task_run_name="generate set {structure_set.name}", cache_policy=NO_CACHE)
def generate_set(
    loaded: LoadedConfig, structure_set: StructureSetSection, end_members: dict, store: Store, run_id: str
) -> int:
    """Build one structure set and store its structures and membership; returns the number of new ones."""
    size, new = store_structure_set(
        store, loaded.config.system, loaded.config.dataset, structure_set, end_members, run_id=run_id
    )
    get_run_logger().info(
        "set %s: %d structures (%d new) for level %s", structure_set.name, size, new, structure_set.level
    )
    return new


def label_level(
    loaded: LoadedConfig, store: Store, level: str, run_id: str, *, set_name: str | None = None
) -> LabellingReport:
    """Label pending structures of the sets at ``level`` (at most ``reference.max_calculations``).

    With ``set_name``: every pending structure of that set (an active-learning selection is labelled whole).
    The calculations fan out to the configured task runner (``[execution]``, ``reference.workers``).
    """
    reference = loaded.config.reference
    pending = store.pending_labels(level, set_name=set_name)
    limited = set_name is None and reference.max_calculations is not None
    chosen = pending[: reference.max_calculations] if limited else pending
    logger = get_run_logger()
    logger.info(
        "%s: %d structures pending, labelling %d with %d workers", level, len(pending), len(chosen), reference.workers
    )
    if not chosen:
        return label_structures(store, get_level(level, reference), [], run_id=run_id)

    def body(job_map: JobMap) -> LabellingReport:
        jobs_logger = get_run_logger()

        def progress(done: int, total: int, record: LabelRecord) -> None:
            jobs_logger.info("%s: %d/%d done (%s %s)", level, done, total, record.structure_hash, record.status)

        return label_structures(
            store, get_level(level, reference), chosen, run_id=run_id, progress=progress, job_map=job_map
        )

    report = fan_out(f"label-{level}", loaded.config.execution, reference.workers, body, isolate=True)
    get_run_logger().info("%s", report.summary())
    return report


@task(name="gnn", cache_policy=NO_CACHE)
def train_gnn(loaded: LoadedConfig, store: Store, run_id: str) -> GNNStageResult:
    """Search (if configured), train and fine-tune the band-gap GNN ensemble, learning curve."""
    reference = loaded.config.reference
    result = fit_band_gap_model(
        store,
        loaded.config.gnn,
        cheap_level=reference.cheap_level,
        high_level=reference.high_level,
        run_id=run_id,
        seed=loaded.config.run.seed,
    )
    log_tables(get_run_logger(), result.tables())
    return result


@task(name="held-out MD frames", cache_policy=NO_CACHE)
def measure_on_heldout_frames(loaded: LoadedConfig, store: Store, ensemble_id: str) -> list[FrameErrors]:
    """Errors of the newest MACE and the gap ensemble on the held-out MD frames, where the project has them."""
    errors = evaluate_newest_models(store, loaded.config, ensemble_id=ensemble_id)
    logger = get_run_logger()
    if not errors:
        logger.info(
            "held-out MD frames (%s): none labelled; no errors measured", loaded.config.active_learning.heldout_set
        )
    for e in errors:
        logger.info(
            "held-out MD frames: %s at %s, %s: n %d, MAE %.4f %s, mean error %+.4f",
            *(e.model, e.level, e.quantity, e.n, e.mae, e.unit, e.mean_error),
        )
    return errors


@task(name="mlip", cache_policy=NO_CACHE)
def train_mlip(loaded: LoadedConfig, store: Store, run_id: str) -> MlipStageResult:
    """Train or fine-tune MACE on the cheap level, evaluate it, compare its end-member phonons with DFT."""
    logger = get_run_logger()

    def on_epoch(epoch: int, total: int, line: str) -> None:
        logger.info("MACE epoch %d/%d: %s", epoch, total, line.split("INFO:")[-1].strip())

    result = fit_mlip(store, loaded.config, run_id=run_id, on_epoch=on_epoch)
    log_tables(logger, mlip_tables(store, [result.model.model_id]))
    return result


def scan_disorder(loaded: LoadedConfig, store: Store, run_id: str) -> DisorderScanResult:
    """Inequivalent arrangements per composition, relaxed with the run's MACE and ranked (relaxations fan out)."""
    logger = get_run_logger()
    model_id, _ = latest_model(store)

    def body(job_map: JobMap) -> DisorderScanResult:
        jobs_logger = get_run_logger()

        def progress(done: int, total: int) -> None:
            jobs_logger.info("disorder: %d/%d relaxations", done, total)

        return run_disorder_scan(
            store, loaded.config, model_id=model_id, run_id=run_id, progress=progress, job_map=job_map
        )

    result = fan_out("disorder", loaded.config.execution, loaded.config.disorder.workers, body)
    log_tables(logger, result.tables())
    return result


def molecular_dynamics(loaded: LoadedConfig, store: Store, run_id: str) -> list[MDResult]:
    """Langevin MD with the run's MACE of each lowest-energy structure at every MD temperature (runs fan out)."""
    logger = get_run_logger()
    model_id, _ = latest_model(store)
    scan_id = latest_scan_id(store)

    def body(job_map: JobMap) -> list[MDResult]:
        jobs_logger = get_run_logger()

        def progress(done: int, total: int) -> None:
            jobs_logger.info("MD: %d/%d runs", done, total)

        return run_dynamics(
            store, loaded.config, model_id=model_id, scan_id=scan_id, run_id=run_id, progress=progress, job_map=job_map
        )

    results = fan_out("dynamics", loaded.config.execution, loaded.config.md.workers, body)
    log_tables(logger, [md_table(results)])
    return results


@task(name="phonons", cache_policy=NO_CACHE)
def phonon_stability(loaded: LoadedConfig, store: Store, run_id: str) -> tuple[list, list[StabilityResult]]:
    """Harmonic phonons at 0 K, DynaPhoPy at each MD temperature, dynamic-stability verdicts (the gate)."""
    logger = get_run_logger()
    harmonic, verdicts = run_phonon_stage(
        store, loaded.config, model_id=latest_model(store)[0], scan_id=latest_scan_id(store), run_id=run_id
    )
    log_tables(logger, phonon_tables(harmonic, verdicts))
    return harmonic, verdicts


@task(name="bandgaps", cache_policy=NO_CACHE)
def band_gaps(loaded: LoadedConfig, store: Store, run_id: str) -> BandGapResult:
    """Eg(0) of the relaxed structures and Eg(T), ΔEg(T) over uncorrelated MD snapshots (GNN ensemble)."""
    logger = get_run_logger()

    def counter(what: str) -> Callable[[int, int], None]:
        return lambda done, total: logger.info("band gaps: %d/%d %s", done, total, what)

    result = run_bandgap_stage(
        store,
        loaded.config,
        ensemble_id=latest_ensemble(store)[0],
        scan_id=latest_scan_id(store),
        run_id=run_id,
        progress=counter("MD runs"),
        reference_progress=counter("DFT calculations"),
        estimate_progress=counter("compositions of the independent estimates"),
    )
    log_tables(logger, result.tables())
    return result


@task(name="modes", cache_policy=NO_CACHE)
def mode_gaps(loaded: LoadedConfig, store: Store, run_id: str) -> list[ModeGap]:
    """ΔEg/Eg of every Γ mode frozen at its thermal amplitude (GNN; DFT for a few)."""
    logger = get_run_logger()
    model_id, scan_id = latest_model(store)[0], latest_scan_id(store)
    run_harmonic_phonons(store, loaded.config, model_id=model_id, scan_id=scan_id, run_id=run_id)  # once per model
    ensemble_id = latest_ensemble(store)[0]
    result = run_mode_stage(
        store, loaded.config, ensemble_id=ensemble_id, model_id=model_id, scan_id=scan_id, run_id=run_id
    )
    log_tables(logger, [mode_table(result, top=3), group_table(mode_groups(store, ensemble_id), top=3)])
    return result


@task(name="summarise-dataset", cache_policy=NO_CACHE)
def summarise(store: Store) -> DatasetSummary:
    """Summarise the stored dataset and publish it as a Prefect markdown artifact."""
    summary = summarise_dataset(store)
    lines = [
        f"**{summary.n_structures} structures**, compositions x = "
        + ", ".join(f"{x:.3f}" for x in summary.compositions),
        "",
        "| level | ok | failed | energy | forces | stress | gap | gap min / mean / max (eV) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for lv in summary.levels:
        gaps = (
            f"{lv.gap_min_ev:.3f} / {lv.gap_mean_ev:.3f} / {lv.gap_max_ev:.3f}" if lv.gap_mean_ev is not None else "-"
        )
        lines.append(
            f"| {lv.level} | {lv.n_ok} | {lv.n_failed} | {lv.n_energy} | {lv.n_forces} | {lv.n_stress} "
            f"| {lv.n_gap} | {gaps} |"
        )
    create_markdown_artifact(markdown="\n".join(lines), key="capml-dataset-summary", description="capml dataset")
    get_run_logger().info(
        "dataset: %d structures, levels %s", summary.n_structures, [lv.level for lv in summary.levels]
    )
    return summary
