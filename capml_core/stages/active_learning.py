"""Active learning for MACE: MD frames that leave the training data's geometry are labelled and trained on.

The failure this guards against (docs/dynamics.md): a potential trained only on thermal and displaced cells
has never seen two atoms closer than they are in those cells; MD then finds unphysical close contacts (anion
pairs at 1.6-2.1 Å) that the model puts below the relaxed cell in energy, and the run collapses. The
criterion is geometric and needs no committee of models: for every species pair, the shortest distance in the
training structures (the level MACE trains on, dataset structures only) is the edge of what the model knows;
a frame in which some pair comes closer than ``active_learning.distance_fraction`` times that distance is
outside the training data. Per MD run the first such frames (``max_frames_per_run``, at least
``min_separation_fs`` apart) are selected: the moment the model leaves its data, before a collapse cascades.

One round (orchestrated by the ``active-learning`` stage in flows/pipeline.py): select frames from the MD runs
of the current MACE model, store them (kind ``md-snapshot``, set ``active-learning`` at the level MACE trains on)
with a row per frame in ``active_learning_frames``, label them, retrain MACE (its content key changes with the
new labels), redo the disorder scan and the MD with the new model. A selection is stored per model, so a
resumed round reuses it.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
from ase import Atoms
from ase.neighborlist import neighbor_list

from capml_core.config.schema import RunConfig
from capml_core.physics.md import read_trajectory, trajectory_frame
from capml_core.store.database import Store
from capml_core.store.records import StructureRecord
from capml_core.system.structures import quantize, structure_hash
from capml_core.types import DATASET_KIND_SQL

logger = logging.getLogger(__name__)

#: Name of the structure set that holds the selected frames.
ACTIVE_LEARNING_SET = "active-learning"
#: Pairs further apart than this (Å) are not looked at (close contacts are what matters).
CONTACT_CUTOFF_A = 4.0

Pair = tuple[str, str]


def shortest_distances(atoms: Atoms, cutoff_a: float = CONTACT_CUTOFF_A) -> dict[Pair, float]:
    """Shortest interatomic distance (Å) per species pair (alphabetical) within ``cutoff_a``, periodic images too."""
    first, second, distance = neighbor_list("ijd", atoms, cutoff_a)
    symbols = np.asarray(atoms.get_chemical_symbols())
    out: dict[Pair, float] = {}
    for a, b, d in zip(symbols[first], symbols[second], distance, strict=True):
        pair = (a, b) if a <= b else (b, a)
        if d < out.get(pair, np.inf):
            out[pair] = float(d)
    return out


def training_contact_distances(store, level: str) -> dict[Pair, float]:  # Store
    """Per species pair, the shortest distance (Å) in the dataset structures with forces at ``level``."""
    rows = store.query(
        f"""SELECT l.structure_hash FROM labels l JOIN structures s USING (structure_hash)
            WHERE l.level = ? AND l.status = 'ok' AND l.forces_ev_per_a IS NOT NULL AND {DATASET_KIND_SQL}""",
        [level],
    )
    out: dict[Pair, float] = {}
    for atoms in store.load_structures(rows["structure_hash"].tolist()).values():
        for pair, d in shortest_distances(atoms).items():
            out[pair] = min(d, out.get(pair, np.inf))
    return out


@dataclass(frozen=True)
class SelectedFrame:
    """An MD frame outside the training data: which pair came how close (Å) against the training minimum."""

    md_id: str
    frame: int
    time_fs: float
    composition_x: float
    temperature_k: float
    pair: str
    distance_a: float
    training_distance_a: float
    atoms: Atoms


def select_frames(
    trajectory: dict,
    reference: dict[Pair, float],
    *,
    distance_fraction: float,
    max_frames: int,
    min_separation_fs: float,
) -> list[tuple[int, Pair, float]]:
    """The first frames (index, pair, distance Å) in which a pair is closer than ``distance_fraction`` x reference.

    Pairs with no reference distance (never within the cutoff in the training data) count as known at the
    cutoff: coming within ``distance_fraction`` x 4 Å of each other is new. At most ``max_frames``, at least
    ``min_separation_fs`` apart.
    """
    chosen: list[tuple[int, Pair, float]] = []
    last_fs = -np.inf
    times = np.asarray(trajectory["time_fs"], dtype=float)
    for frame in range(len(times)):
        if len(chosen) >= max_frames:
            break
        if times[frame] - last_fs < min_separation_fs:
            continue
        distances = shortest_distances(trajectory_frame(trajectory, frame))
        worst = min(
            ((d / reference.get(pair, CONTACT_CUTOFF_A), pair, d) for pair, d in distances.items()),
            default=(np.inf, ("", ""), np.inf),
        )
        if worst[0] < distance_fraction:
            chosen.append((frame, worst[1], worst[2]))
            last_fs = times[frame]
    return chosen


def completed_rounds(store, model_id: str) -> tuple[int, int | None]:  # Store
    """(rounds whose model has been retrained, the round in progress for ``model_id`` or None).

    A round is in progress while the model that selected its frames is still the latest one.
    """
    rows = store.query("SELECT DISTINCT round, model_id FROM active_learning_frames")
    current = rows.loc[rows["model_id"] == model_id, "round"]
    in_progress = int(current.iloc[0]) if len(current) else None
    finished = rows.loc[rows["model_id"] != model_id, "round"]
    return (int(finished.max()) if len(finished) else 0), in_progress


def select_and_store(
    store: Store,
    config: RunConfig,
    *,
    model_id: str,
    round_index: int,
    run_id: str | None = None,
) -> list[SelectedFrame]:
    """Select frames from the MD runs of MACE model ``model_id`` and store them as the ``active-learning`` set.

    A selection already stored for that model is returned as it is (resume). Returns the selection
    (empty when every run stayed inside the training data).
    """
    settings = config.active_learning
    level = config.mlip.level or config.reference.cheap_level
    store.initialise()
    stored = store.query("SELECT * FROM active_learning_frames WHERE model_id = ? ORDER BY md_id, frame", [model_id])
    if not stored.empty:
        atoms = store.load_structures(stored["structure_hash"].tolist())
        logger.info("active learning: %d frames selected before for model %s", len(stored), model_id)
        return [
            SelectedFrame(
                r.md_id,
                int(r.frame),
                float(r.time_fs),
                float(r.composition_x),
                float(r.temperature_k),
                str(r.pair),
                float(r.distance_a),
                float(r.training_distance_a),
                atoms[r.structure_hash],
            )
            for r in stored.itertuples()
        ]
    reference = training_contact_distances(store, level)
    runs = store.query(
        "SELECT md_id, path, composition_x, temperature_k FROM md_runs WHERE complete AND model_id = ? ORDER BY md_id",
        [model_id],
    )
    selected: list[SelectedFrame] = []
    for run in runs.itertuples():
        trajectory = read_trajectory(store.project_dir / run.path)
        for frame, pair, distance in select_frames(
            trajectory,
            reference,
            distance_fraction=settings.distance_fraction,
            max_frames=settings.max_frames_per_run,
            min_separation_fs=settings.min_separation_fs,
        ):
            selected.append(
                SelectedFrame(
                    run.md_id,
                    frame,
                    float(trajectory["time_fs"][frame]),
                    float(run.composition_x),
                    float(run.temperature_k),
                    "-".join(pair),
                    distance,
                    reference.get(pair, CONTACT_CUTOFF_A),
                    quantize(trajectory_frame(trajectory, frame)),
                )
            )
    records = [
        StructureRecord(
            atoms=s.atoms,
            structure_hash=structure_hash(s.atoms),
            kind="md-snapshot",
            composition_x=s.composition_x,
            temperature_k=s.temperature_k,
            source=f"{s.md_id}#{s.frame}",
        )
        for s in selected
    ]
    rows = [
        {
            "model_id": model_id,
            "md_id": s.md_id,
            "frame": s.frame,
            "round": round_index,
            "time_fs": s.time_fs,
            "composition_x": s.composition_x,
            "temperature_k": s.temperature_k,
            "pair": s.pair,
            "distance_a": s.distance_a,
            "training_distance_a": s.training_distance_a,
            "structure_hash": r.structure_hash,
            "level": level,
            "run_id": run_id,
        }
        for s, r in zip(selected, records, strict=True)
    ]
    with store.write() as writer:
        writer.add_structures(records, run_id=run_id)
        writer.add_to_set(ACTIVE_LEARNING_SET, level, [r.structure_hash for r in records])
        writer.add_rows("active_learning_frames", rows)
    logger.info(
        "active learning round %d: %d frames outside the training data in %d MD runs of model %s",
        round_index,
        len(selected),
        len(runs),
        model_id,
    )
    return selected
