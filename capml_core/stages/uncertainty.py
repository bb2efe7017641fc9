"""Uncertainty along the MD and the frames active learning labels next.

:func:`evaluate_uncertainty` runs the MACE committee of the model that ran the MD (``mlip.committee_size``
models, :func:`capml_core.stages.mlip.train_committee`) and a GNN ensemble over the production frames of every
complete MD run of that model, every ``active_learning.uncertainty_stride_fs``; per frame it stores the energy
and force disagreement, the ensemble's gap mean and spread and a MACE descriptor (``md_uncertainty``, one
``uncertainty_id`` per committee, ensemble and spacing; resumable run by run).

:func:`select_round` picks ``active_learning.frames_per_round`` of those frames by disagreement and diversity
(:func:`capml_core.models.selection.select_uncertain_diverse`), away from frames selected in earlier rounds,
and stores them as MD frames (``md_frames``: ``selection='uncertainty'``, the round, not held out) in the sets
``al-round<k>@<level>`` of both reference levels, for ``capml label --set``.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd

from capml_core.config.schema import RunConfig
from capml_core.errors import NotComputedError
from capml_core.models.committee import committee_disagreement, committee_predict, mace_descriptors
from capml_core.models.gnn import load_ensemble, predict_gaps_per_model
from capml_core.models.mace import load_mace_calculator
from capml_core.models.selection import select_uncertain_diverse, uncertainty_score
from capml_core.physics.md import production_frames, read_trajectory, trajectory_frame
from capml_core.provenance import content_key
from capml_core.stages.md_frames import MDFrame, store_frames, stored_frames
from capml_core.stages.mlip import committee_ids
from capml_core.store.database import Store
from capml_core.store.queries import complete_md_runs, ensemble_model_dirs, mace_model_path
from capml_core.system.structures import quantize, structure_hash
from capml_core.types import ProgressCallback

logger = logging.getLogger(__name__)

#: The disagreement measures the selection scores by (columns of ``md_uncertainty``).
MEASURES = ("energy_std_mev_per_atom", "force_std_max_ev_per_a", "gap_std_ev")


def round_set_name(round_index: int) -> str:
    """Name of the selection (sets ``<name>@<level>``) of the frames active-learning round ``round_index`` adds."""
    return f"al-round{round_index}"


def uncertainty_id_for(committee: Sequence[str], ensemble_id: str | None, *, stride_fs: float, equilibration_ps: float):
    """Content id of one uncertainty evaluation: committee members, GNN ensemble, frame spacing, equilibration."""
    payload = {"committee": list(committee), "ensemble": ensemble_id, "stride_fs": stride_fs, "eq": equilibration_ps}
    return "unc-" + content_key(payload)


def frame_stride(time_fs: np.ndarray, stride_fs: float) -> int:
    """Every how many stored frames one is evaluated to space them by about ``stride_fs`` (at least 1)."""
    if len(time_fs) < 2:
        return 1
    return max(1, int(round(stride_fs / float(np.median(np.diff(time_fs))))))


@dataclass(frozen=True)
class UncertaintyRun:
    """What :func:`evaluate_uncertainty` measured: its id, the committee and ensemble, and the frames per run."""

    uncertainty_id: str
    committee: list[str]
    ensemble_id: str | None
    frames: pd.DataFrame


def evaluate_uncertainty(
    store: Store,
    config: RunConfig,
    *,
    model_id: str,
    ensemble_id: str | None,
    progress: ProgressCallback | None = None,
) -> UncertaintyRun:
    """Committee and ensemble disagreement on the production frames of ``model_id``'s MD runs (stored).

    Runs already evaluated under the same id are skipped (resume). A committee of one (no members trained)
    gives no MACE disagreement (NULL); without an ensemble there is no gap spread.

    Raises
    ------
    NotComputedError
        No complete MD run of ``model_id``.
    """
    settings = config.active_learning
    committee = committee_ids(store, model_id)
    uncertainty_id = uncertainty_id_for(
        committee, ensemble_id, stride_fs=settings.uncertainty_stride_fs, equilibration_ps=config.md.equilibration_ps
    )
    runs = complete_md_runs(store, model_id)
    done = set(
        store.query("SELECT DISTINCT md_id FROM md_uncertainty WHERE uncertainty_id = ?", [uncertainty_id])["md_id"]
    )
    todo = [r for r in runs.itertuples() if r.md_id not in done]
    if todo:
        calculators = [
            load_mace_calculator(mace_model_path(store, m), device="cpu", dtype="float64") for m in committee
        ]
        gnn_models = load_ensemble(ensemble_model_dirs(store, ensemble_id)) if ensemble_id else []
        species = list(config.system.allowed_species())
        logger.info(
            "uncertainty %s: %d of %d MD runs, committee of %d, %s",
            uncertainty_id,
            len(todo),
            len(runs),
            len(committee),
            f"ensemble {ensemble_id} ({len(gnn_models)})" if gnn_models else "no GNN",
        )
    for number, run in enumerate(todo):
        trajectory = read_trajectory(store.project_dir / run.path)
        candidates = production_frames(trajectory, config.md.equilibration_ps)
        frames = candidates[:: frame_stride(trajectory["time_fs"][candidates], settings.uncertainty_stride_fs)]
        structures = [trajectory_frame(trajectory, int(f)) for f in frames]
        energies, forces = committee_predict(calculators, structures)
        disagreement = committee_disagreement(energies, forces, [len(a) for a in structures])
        descriptors = mace_descriptors(calculators[0], structures, species)
        gaps = predict_gaps_per_model(structures, gnn_models) if gnn_models else None
        mace_spread = len(committee) > 1
        rows = [
            {
                "uncertainty_id": uncertainty_id,
                "md_id": run.md_id,
                "frame": int(frame),
                "time_fs": float(trajectory["time_fs"][frame]),
                "composition_x": float(run.composition_x),
                "temperature_k": float(run.temperature_k),
                "model_id": model_id,
                "committee_size": len(committee),
                "energy_std_mev_per_atom": float(disagreement.energy_std_mev_per_atom[i]) if mace_spread else None,
                "force_std_mean_ev_per_a": float(disagreement.force_std_mean_ev_per_a[i]) if mace_spread else None,
                "force_std_max_ev_per_a": float(disagreement.force_std_max_ev_per_a[i]) if mace_spread else None,
                "ensemble_id": ensemble_id,
                "ensemble_size": len(gnn_models) or None,
                "gap_mean_ev": float(gaps[:, i].mean()) if gaps is not None else None,
                "gap_std_ev": float(gaps[:, i].std()) if gaps is not None and len(gnn_models) > 1 else None,
                "descriptor": descriptors[i].tolist(),
            }
            for i, frame in enumerate(frames)
        ]
        with store.write() as writer:
            writer.add_rows("md_uncertainty", rows)
        if progress is not None:
            progress(number + 1, len(todo))
    frame = store.query(
        "SELECT * EXCLUDE (descriptor) FROM md_uncertainty WHERE uncertainty_id = ? ORDER BY md_id, frame",
        [uncertainty_id],
    )
    return UncertaintyRun(uncertainty_id, committee, ensemble_id, frame)


def select_round(
    store: Store,
    config: RunConfig,
    *,
    uncertainty_id: str,
    round_index: int,
    levels: Sequence[str],
    run_id: str | None = None,
) -> list[MDFrame]:
    """Choose the frames of active-learning round ``round_index`` from one uncertainty evaluation and store them.

    Frames already in ``md_frames`` (held out, or chosen in an earlier round) are never chosen again; the
    diversity criterion keeps away from the earlier rounds' frames. A round already selected is returned as
    stored (resume).
    """
    set_name = round_set_name(round_index)
    existing = stored_frames(store, set_name=set_name, level=levels[0])
    if existing:
        logger.info("%s: %d frames selected before; reusing them", set_name, len(existing))
        return existing
    pool = store.query(
        """SELECT u.* FROM md_uncertainty u
           WHERE u.uncertainty_id = ? AND NOT EXISTS
             (SELECT 1 FROM md_frames f WHERE f.md_id = u.md_id AND f.frame = u.frame)
           ORDER BY u.md_id, u.frame""",
        [uncertainty_id],
    )
    if pool.empty:
        raise NotComputedError(f"{store.path}: no unlabelled frame evaluated under {uncertainty_id}")
    measures = {name: pool[name].to_numpy(dtype=float) for name in MEASURES}
    scores = uncertainty_score(measures)
    descriptors = np.vstack(pool["descriptor"].map(np.asarray).to_numpy())
    earlier = store.query("SELECT structure_hash FROM md_frames WHERE NOT held_out ORDER BY structure_hash")
    labelled = None
    if len(earlier):  # described by the model that ran this MD (descriptors of other models do not compare)
        calculator = load_mace_calculator(mace_model_path(store, str(pool["model_id"][0])), device="cpu")
        structures = store.load_structures(earlier["structure_hash"].tolist())
        labelled = mace_descriptors(calculator, list(structures.values()), list(config.system.allowed_species()))
    settings = config.active_learning
    picked = select_uncertain_diverse(
        scores,
        descriptors,
        settings.frames_per_round,
        candidate_factor=settings.candidate_factor,
        labelled_descriptors=labelled,
    )
    paths = dict(store.query("SELECT md_id, path FROM md_runs").itertuples(index=False))
    frames: list[MDFrame] = []
    for md_id, group in pool.iloc[picked].groupby("md_id", sort=True):
        trajectory = read_trajectory(store.project_dir / paths[md_id])
        for row in group.itertuples():
            atoms = quantize(trajectory_frame(trajectory, int(row.frame)))
            frames.append(
                MDFrame(
                    structure_hash=structure_hash(atoms),
                    atoms=atoms,
                    md_id=md_id,
                    frame=int(row.frame),
                    time_fs=float(row.time_fs),
                    composition_x=float(row.composition_x),
                    temperature_k=float(row.temperature_k),
                    model_id=str(row.model_id),
                    held_out=False,
                    selection="uncertainty",
                    round=round_index,
                    seed=None,
                )
            )
    store_frames(store, frames, set_name=set_name, levels=levels, run_id=run_id)
    chosen = pool.iloc[picked]
    logger.info(
        "%s: %d of %d frames (scores %.2f-%.2f, pool median 1), compositions %s, temperatures %s",
        set_name,
        len(frames),
        len(pool),
        float(scores[picked].min()),
        float(scores[picked].max()),
        sorted(set(chosen["composition_x"].round(3))),
        sorted(set(chosen["temperature_k"])),
    )
    return frames
