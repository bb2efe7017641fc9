"""The capml pipeline as a Prefect flow.

Stages so far: ``dataset-import`` (validate and load the labelled datasets named in the config),
``dataset-generate`` (thermal/uniform/equilibrium structure sets), ``label`` (reference calculations of the
sets' structures that have no label yet, up to ``reference.max_calculations`` per level) and
``dataset-summary`` (counts per level, gap statistics, published as a Prefect artifact), ``gnn`` (band-gap
model ensemble: cheap level, then fine-tuned on the high level; then both models measured on the held-out MD
frames where the project has them) and ``mlip`` (MACE trained or fine-tuned on the
cheap level's energies, forces and stresses; evaluated; end-member phonons compared with the reference) and
``disorder`` (inequivalent arrangements per composition relaxed with that MACE and ranked) and ``dynamics``
(Langevin MD of each composition's lowest-energy structure per temperature, with health checks) and
``phonons`` (harmonic phonons at 0 K, DynaPhoPy renormalised phonons per MD run, dynamic-stability verdicts) and
``bandgaps`` (Eg(0) and Eg(T), ΔEg(T) with uncertainties from the GNN on uncorrelated MD snapshots of the runs the
phonon gate passes) and ``modes`` (ΔEg/Eg of frozen Γ modes at thermal amplitudes, with DFT checks).

``pipeline`` runs them all (or the ``stages`` named); ``<stage>_flow`` runs one (the deployments of
deploy/prefect.yaml). Runs in Prefect's local ephemeral mode by default (no server needed); with
``PREFECT_API_URL`` set it reports to that server. Each task calls one capml_core function; the store records
run and stage status. Labelling, relaxations and MD fan out to the task runner of ``[execution]`` (local
processes or Dask, ``flows/fanout.py``); only the flow's process writes the store.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from prefect import flow, get_run_logger

from capml_core.config.loading import LoadedConfig, load_config
from capml_core.dft.levels import LEVELS, get_level
from capml_core.errors import InvalidInputError
from capml_core.store.database import Store
from capml_core.store.queries import latest_model
from flows.tasks import (
    band_gaps,
    end_member_fcs,
    generate_set,
    import_dataset,
    label_level,
    measure_on_heldout_frames,
    mode_gaps,
    molecular_dynamics,
    phonon_stability,
    scan_disorder,
    stage,
    start_run,
    summarise,
    train_gnn,
    train_mlip,
)


# ------------------------------------------------------------------------------------------- stages
@dataclass(frozen=True)
class StageContext:
    """What every stage gets: the validated config, the store and the run that records it."""

    loaded: LoadedConfig
    store: Store
    run_id: str


def _dataset_import(ctx: StageContext) -> dict[str, Any]:
    reports = [import_dataset(ctx.loaded, spec, ctx.store, ctx.run_id) for spec in ctx.loaded.config.dataset.imports]
    return {
        "imports": [
            {"file": r.path.name, "level": r.level, "frames": r.n_frames, "new_labels": r.new_labels} for r in reports
        ]
    }


def _dataset_generate(ctx: StageContext) -> dict[str, Any]:
    sets = ctx.loaded.config.dataset.sets
    if sets:
        end_members = end_member_fcs(ctx.loaded, ctx.store)
        for structure_set in sets:
            generate_set(ctx.loaded, structure_set, end_members, ctx.store, ctx.run_id)
    return {"generated_sets": [s.name for s in sets]}


def _label(ctx: StageContext) -> dict[str, Any]:
    labelling = []
    for level in sorted({s.level for s in ctx.loaded.config.dataset.sets}):
        reason = (
            "capml cannot compute it (import its labels)"
            if level not in LEVELS
            else get_level(level, ctx.loaded.config.reference).unavailable_reason()
        )
        if reason is None:
            labelling.append(label_level(ctx.loaded, ctx.store, level, ctx.run_id))
        else:
            get_run_logger().warning("level %s not labelled here: %s", level, reason)
    return {
        "labelling": [
            {"level": r.level, "ok": r.n_ok, "failed": r.n_failed, "mean_s": r.mean_calculation_s} for r in labelling
        ]
    }


def _dataset_summary(ctx: StageContext) -> dict[str, Any]:
    return {"dataset": summarise(ctx.store).as_dict()}


def _gnn(ctx: StageContext) -> dict[str, Any]:
    gnn = train_gnn(ctx.loaded, ctx.store, ctx.run_id)
    heldout = measure_on_heldout_frames(ctx.loaded, ctx.store, gnn.ensemble.ensemble_id)  # both models, where used
    return {
        "gnn": {
            "ensemble_id": gnn.ensemble.ensemble_id,
            "heldout": [{"model": e.model, "quantity": e.quantity, "n": e.n, "mae": e.mae} for e in heldout],
            "test": {stage: vars(m) for stage, m in gnn.ensemble.ensemble_test_metrics.items()},
            "search": [(t.architecture, t.learning_rate, t.batch_size, t.valid.mae_ev) for t in gnn.search],
            "learning_curve": [(n, m.mae_ev) for n, m in gnn.curve],
        }
    }


def _mlip(ctx: StageContext) -> dict[str, Any]:
    mlip = train_mlip(ctx.loaded, ctx.store, ctx.run_id)
    return {
        "mlip": {
            "model_id": mlip.model.model_id,
            "test": mlip.test_metrics,
            "phonons": {row["end_member"]: row["mae_thz"] for row in mlip.phonons},
        }
    }


def _disorder(ctx: StageContext) -> dict[str, Any]:
    disorder = scan_disorder(ctx.loaded, ctx.store, ctx.run_id)
    return {
        "disorder": {
            "scan_id": disorder.scan_id,
            "relaxed": {x: len(rows) for x, rows in disorder.ranking.items()},
            "lowest_ev_per_atom": {x: rows[0][1] for x, rows in disorder.ranking.items()},
        }
    }


def _dynamics(ctx: StageContext) -> dict[str, Any]:
    dynamics = molecular_dynamics(ctx.loaded, ctx.store, ctx.run_id)
    return {
        "dynamics": [
            {"x": r.composition_x, "temperature_k": r.temperature_k, "status": r.health.status, "md_id": r.md_id}
            for r in dynamics
        ]
    }


def _active_learning(ctx: StageContext) -> dict[str, Any]:
    """Rounds of: select MD frames outside MACE's training data, label them, retrain MACE, redo disorder and MD."""
    from capml_core.stages.active_learning import ACTIVE_LEARNING_SET, completed_rounds, select_and_store

    config, store, logger = ctx.loaded.config, ctx.store, get_run_logger()
    level = config.mlip.level or config.reference.cheap_level
    rounds: list[dict[str, Any]] = []
    while True:
        model_id, _ = latest_model(store)
        done, current = completed_rounds(store, model_id)
        if current is None and done >= config.active_learning.rounds:
            break
        round_index = current or done + 1
        selected = select_and_store(store, config, model_id=model_id, round_index=round_index, run_id=ctx.run_id)
        if not selected:
            logger.info("active learning: every MD run of model %s stays inside its training data", model_id)
            break
        report = label_level(ctx.loaded, store, level, ctx.run_id, set_name=ACTIVE_LEARNING_SET)
        new_model = train_mlip(ctx.loaded, store, ctx.run_id).model.model_id
        if new_model == model_id:
            logger.warning("active learning: no new labels for model %s (failed calculations?); stopping", model_id)
            break
        scan_disorder(ctx.loaded, store, ctx.run_id)
        runs = molecular_dynamics(ctx.loaded, store, ctx.run_id)
        rounds.append(
            {
                "round": round_index,
                "selected": len(selected),
                "labelled": report.n_ok,
                "model_id": new_model,
                "healthy_md": sum(r.health.status == "ok" for r in runs),
                "md_runs": len(runs),
            }
        )
        logger.info(
            "active learning round %d: %d frames, %d labelled, MACE %s, %d/%d MD runs healthy",
            *rounds[-1].values(),
        )
    return {"active_learning": rounds}


def _phonons(ctx: StageContext) -> dict[str, Any]:
    harmonic, verdicts = phonon_stability(ctx.loaded, ctx.store, ctx.run_id)
    return {
        "phonons": {
            "imaginary_at_0k": {h.composition_x: h.imaginary.n_gamma for h in harmonic},
            "verdicts": [
                {"x": v.composition_x, "temperature_k": v.temperature_k, "stable": v.stable, "passes": v.passes_gate}
                for v in verdicts
            ],
        }
    }


def _bandgaps(ctx: StageContext) -> dict[str, Any]:
    gaps = band_gaps(ctx.loaded, ctx.store, ctx.run_id)
    return {
        "bandgaps": {
            "ensemble_id": gaps.ensemble_id,
            "level": gaps.level,
            "static_ev": {s.composition_x: s.gap_ev for s in gaps.static},
            "thermal": [
                {
                    "x": t.composition_x,
                    "temperature_k": t.temperature_k,
                    "gap_ev": None if t.average is None else t.average.mean_gap_ev,
                    "delta_ev": None if t.average is None else t.average.delta_ev,
                    "reason": t.reason,
                }
                for t in gaps.thermal
            ],
        }
    }


def _modes(ctx: StageContext) -> dict[str, Any]:
    modes = mode_gaps(ctx.loaded, ctx.store, ctx.run_id)
    return {
        "modes": {
            "frozen": sum(m.status == "frozen" for m in modes),
            "checked": sum(m.reference_delta_ev is not None for m in modes),
        }
    }


#: The pipeline's stages in order; each returns its JSON-ready part of the run summary.
STAGES: dict[str, Callable[[StageContext], dict[str, Any]]] = {
    "dataset-import": _dataset_import,
    "dataset-generate": _dataset_generate,
    "label": _label,
    "dataset-summary": _dataset_summary,
    "mlip": _mlip,  # before gnn: a kernel gap model (gnn.architecture = "mace-kernel") reads MACE's descriptors
    "gnn": _gnn,
    "disorder": _disorder,
    "dynamics": _dynamics,
    "active-learning": _active_learning,
    "phonons": _phonons,
    "bandgaps": _bandgaps,
    "modes": _modes,
}
#: Config fields a ``device`` option (or ``CAPML_DEVICE``, e.g. set by a GPU work pool) sets.
DEVICE_FIELDS = ("mlip.device", "disorder.device", "md.device", "gaps.device")


def load_run_config(
    config_path: str, project_dir: str | None, overrides: dict[str, Any] | None, device: str | None
) -> LoadedConfig:
    """The config with a flow's overrides; ``device`` (default: ``$CAPML_DEVICE``) sets every stage's device."""
    device = device or os.environ.get("CAPML_DEVICE") or None
    options = {field: device for field in DEVICE_FIELDS} if device else {}
    return load_config(config_path, project_dir=project_dir, overrides={**options, **(overrides or {})})


def run_stages(
    config_path: str,
    project_dir: str | None,
    stages: list[str],
    overrides: dict[str, Any] | None = None,
    device: str | None = None,
) -> dict[str, Any]:
    """Record a run and execute ``stages`` (names of :data:`STAGES`, run in pipeline order) on one config."""
    unknown = [name for name in stages if name not in STAGES]
    if unknown:
        raise InvalidInputError(f"stages: unknown {unknown}; allowed: {', '.join(STAGES)}")
    loaded = load_run_config(config_path, project_dir, overrides, device)
    store = Store(loaded.project_dir)
    run_id = start_run(loaded, store)
    context = StageContext(loaded, store, run_id)
    summary: dict[str, Any] = {"run_id": run_id, "store": str(store.path)}
    try:
        for name in (name for name in STAGES if name in stages):
            with stage(store, run_id, name):
                summary.update(STAGES[name](context))
    except BaseException as err:
        with store.write() as writer:
            writer.finish_run(run_id, status="failed", message=f"{type(err).__name__}: {err}")
        raise
    with store.write() as writer:
        writer.finish_run(run_id, status="done")
    return summary


@flow(name="capml-pipeline")
def pipeline(
    config_path: str,
    project_dir: str | None = None,
    stages: list[str] | None = None,
    overrides: dict[str, Any] | None = None,
    device: str | None = None,
) -> dict[str, Any]:
    """Run the pipeline's stages on one configuration; returns a JSON-ready summary.

    Parameters
    ----------
    config_path
        Run configuration (TOML).
    project_dir
        Overrides ``run.project_dir`` of the config (where the DuckDB store and artifacts go).
    stages
        Names of the stages to run (default: all, in order); each resumes from what the store holds.
    overrides
        ``{"section.field": value}`` on top of the config file (validated with it).
    device
        'cpu', 'cuda' or 'auto' for every stage that runs a model (default: ``$CAPML_DEVICE``, else the config's).
    """
    return run_stages(config_path, project_dir, list(stages or STAGES), overrides, device)


def _stage_flow(name: str):  # a Prefect Flow
    def run_stage(
        config_path: str,
        project_dir: str | None = None,
        overrides: dict[str, Any] | None = None,
        device: str | None = None,
    ) -> dict[str, Any]:
        return run_stages(config_path, project_dir, [name], overrides, device)

    run_stage.__doc__ = (
        f"The ``{name}`` stage alone, recorded as a run of its own; resumes from what the store holds. "
        'Parameters: config_path (TOML), project_dir, overrides ({"section.field": value}), device.'
    )
    return flow(name=f"capml-{name}")(run_stage)


# one flow per stage: entrypoints of the deployments in deploy/prefect.yaml
dataset_import_flow = _stage_flow("dataset-import")
dataset_generate_flow = _stage_flow("dataset-generate")
label_flow = _stage_flow("label")
gnn_flow = _stage_flow("gnn")
mlip_flow = _stage_flow("mlip")
disorder_flow = _stage_flow("disorder")
dynamics_flow = _stage_flow("dynamics")
active_learning_flow = _stage_flow("active-learning")
phonons_flow = _stage_flow("phonons")
bandgaps_flow = _stage_flow("bandgaps")
modes_flow = _stage_flow("modes")
