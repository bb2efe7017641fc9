"""MD frames as data: drawn from production MD, stored with their provenance, labelled, exported.

The held-out yardstick of the active-learning loop is a set of frames drawn **at random** (never by a model's
uncertainty) from the production part of every MD run; they are labelled at the cheap and the high level and
never trained on (the ``md_frames`` table marks them ``held_out``; :data:`capml_core.types.DATASET_KIND_SQL`
keeps them out of every training set). Each frame is a structure of kind ``md-frame`` whose provenance
(trajectory, frame, time, composition, temperature, the MACE model that ran the MD, how it was chosen) is a
row of ``md_frames``.

A drawn selection is durable as an extended-XYZ *pool file* (:func:`write_frame_pool`): it restores the same
frames into a new store (:func:`restore_frame_pool`), so labelling resumes on another machine without rerunning
the MD that produced them.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from ase import Atoms

from capml_core.config.stage_sections import MDSection
from capml_core.errors import DatasetError
from capml_core.physics.md import frames_with_positions, production_frames, read_trajectory, trajectory_frame
from capml_core.store.database import Store
from capml_core.store.queries import complete_md_runs
from capml_core.store.records import StructureRecord
from capml_core.system.structures import quantize, structure_hash

logger = logging.getLogger(__name__)

#: Structure kind of an MD frame in the store.
MD_FRAME_KIND = "md-frame"
#: Default name of the held-out set (one structure set per level: ``<name>@<level>``).
HELD_OUT_SET = "md-heldout"
#: ``info`` keys of a pool file that carry a frame's provenance.
PROVENANCE_KEYS = (
    "md_id",
    "frame",
    "time_fs",
    "composition_x",
    "temperature_k",
    "model_id",
    "held_out",
    "selection",
    "round",
    "seed",
)


def set_name_for(name: str, level: str) -> str:
    """Name of the structure set that holds frames of selection ``name`` to be labelled at ``level``."""
    return f"{name}@{level}"


def frames_apart(
    candidates: np.ndarray, times_fs: np.ndarray, avoid_times_fs: Sequence[float], separation_fs: float
) -> np.ndarray:
    """The ``candidates`` (frame indices) whose time is at least ``separation_fs`` from every ``avoid_times_fs``.

    ``times_fs`` holds each frame's time (fs), indexed by frame. Frames of one MD run closer than the gap's
    correlation time carry nearly the same information: a frame trained on next to a frame measured on makes
    the measurement optimistic.
    """
    candidates = np.asarray(candidates, dtype=int)
    avoid = np.asarray(list(avoid_times_fs), dtype=float)
    if separation_fs <= 0.0 or avoid.size == 0 or candidates.size == 0:
        return candidates
    times = np.asarray(times_fs, dtype=float)[candidates]
    distance = np.abs(times[:, None] - avoid[None, :]).min(axis=1)
    return candidates[distance >= separation_fs]


def frames_to_avoid(store: Store, md_ids: Sequence[str], *, held_out: bool) -> dict[str, list[float]]:
    """Times (fs) of the frames a new draw must keep away from, per MD run.

    A trainable draw (``held_out`` False) keeps away from the frames measured on: held-out frames and the
    frames of DFT checks of Eg(T) (``gap_dft_frames``, every ensemble). A held-out draw keeps away from the
    frames trained on (trainable MD frames).
    """
    if not md_ids:
        return {}
    marks = ", ".join("?" for _ in md_ids)
    if held_out:
        rows = store.query(
            f"SELECT md_id, time_fs FROM md_frames WHERE NOT held_out AND md_id IN ({marks})", list(md_ids)
        )
    else:
        rows = store.query(
            f"""SELECT md_id, time_fs FROM md_frames WHERE held_out AND md_id IN ({marks})
                UNION SELECT md_id, time_fs FROM gap_dft_frames WHERE md_id IN ({marks})""",
            list(md_ids) * 2,
        )
    avoid: dict[str, list[float]] = {}
    for row in rows.itertuples(index=False):
        avoid.setdefault(str(row.md_id), []).append(float(row.time_fs))
    return {md_id: sorted(times) for md_id, times in avoid.items()}


def dft_checked_runs(store: Store, config, model_id: str) -> list[str]:  # RunConfig
    """MD runs of ``model_id`` whose Eg(T) is checked with DFT: a trainable draw leaves them alone.

    Those whose (x, T) ``gaps.dft_check`` names, and those with DFT-check frames stored already.
    """
    runs = complete_md_runs(store, model_id)
    named = [
        str(r.md_id)
        for r in runs.itertuples(index=False)
        if not pd.isna(r.composition_x) and config.dft_check_frames(float(r.composition_x), float(r.temperature_k))
    ]
    stored = store.query("SELECT DISTINCT md_id FROM gap_dft_frames")["md_id"].astype(str).tolist()
    return sorted(set(named) | (set(stored) & set(runs["md_id"].astype(str))))


def runs_of_other_compositions(store: Store, model_id: str, compositions: Sequence[float]) -> list[str]:
    """MD runs of ``model_id`` whose composition is not one of ``compositions`` (a draw limited to those).

    Raises
    ------
    DatasetError
        A composition without any complete MD run of the model (names the value and the compositions it has).
    """
    runs = complete_md_runs(store, model_id)
    present = sorted({round(float(x), 6) for x in runs["composition_x"].dropna()})
    wanted = {round(float(x), 6) for x in compositions}
    missing = sorted(wanted - set(present))
    if missing:
        raise DatasetError(
            f"{store.path}: composition x = {', '.join(map(str, missing))} has no complete MD run of MACE model "
            f"{model_id}; its runs have x = {', '.join(map(str, present))}"
        )
    return [
        str(r.md_id)
        for r in runs.itertuples(index=False)
        if pd.isna(r.composition_x) or round(float(r.composition_x), 6) not in wanted
    ]


def draw_random_frames(candidates: np.ndarray, n: int, rng: np.random.Generator) -> np.ndarray:
    """``n`` distinct frame indices drawn at random from ``candidates`` (sorted; all of them if fewer).

    One frame is drawn uniformly; several are stratified: the sorted candidates split into ``n`` runs of
    consecutive frames, one drawn uniformly from each, so that two frames of one draw are not neighbours
    (near-copies cost a label each and teach one thing).
    """
    candidates = np.sort(np.asarray(candidates, dtype=int))
    if n >= len(candidates):
        return candidates
    if n == 1:
        return np.sort(rng.choice(candidates, size=1, replace=False))
    return np.array([rng.choice(chunk) for chunk in np.array_split(candidates, n)], dtype=int)


def md_frame_mask(store: Store, structure_hashes: Sequence[str]) -> np.ndarray:
    """Which of these structures are MD frames (kind ``md-frame``): booleans in their order."""
    frames = set(
        store.query(
            "SELECT structure_hash FROM structures WHERE kind = ? AND structure_hash IN (SELECT unnest(?))",
            [MD_FRAME_KIND, list(structure_hashes)],
        )["structure_hash"]
    )
    return np.array([h in frames for h in structure_hashes], dtype=bool)


@dataclass(frozen=True)
class MDFrame:
    """One stored MD frame and where it came from (times in fs, temperature in K)."""

    structure_hash: str
    atoms: Atoms
    md_id: str
    frame: int
    time_fs: float
    composition_x: float | None
    temperature_k: float
    model_id: str
    held_out: bool
    selection: str
    round: int
    seed: int | None

    def row(self, run_id: str | None) -> dict:
        """The ``md_frames`` row of this frame."""
        return {
            "structure_hash": self.structure_hash,
            "md_id": self.md_id,
            "frame": self.frame,
            "time_fs": self.time_fs,
            "composition_x": self.composition_x,
            "temperature_k": self.temperature_k,
            "model_id": self.model_id,
            "held_out": self.held_out,
            "selection": self.selection,
            "round": self.round,
            "seed": self.seed,
            "run_id": run_id,
        }


def store_frames(store, frames: Sequence[MDFrame], *, set_name: str, levels: Sequence[str], run_id: str | None):
    """Store frames (kind ``md-frame``), their ``md_frames`` rows and membership of ``<set_name>@<level>``."""
    records = [
        StructureRecord(
            atoms=f.atoms,
            structure_hash=f.structure_hash,
            kind=MD_FRAME_KIND,
            composition_x=f.composition_x,
            temperature_k=f.temperature_k,
            source=f"{f.md_id}#{f.frame}",
        )
        for f in frames
    ]
    with store.write() as writer:
        writer.add_structures(records, run_id=run_id)
        for level in levels:
            writer.add_to_set(set_name_for(set_name, level), level, [f.structure_hash for f in frames])
        writer.add_rows("md_frames", [f.row(run_id) for f in frames])


def stored_frames(store, *, set_name: str, level: str) -> list[MDFrame]:  # Store
    """The frames of a stored selection (members of ``<set_name>@<level>``), in set order."""
    rows = store.query(
        """SELECT f.* FROM md_frames f JOIN structure_sets m USING (structure_hash)
           WHERE m.set_name = ? ORDER BY m.position""",
        [set_name_for(set_name, level)],
    )
    atoms = store.load_structures(rows["structure_hash"].tolist())
    return [
        MDFrame(
            structure_hash=r.structure_hash,
            atoms=atoms[r.structure_hash],
            md_id=r.md_id,
            frame=int(r.frame),
            time_fs=float(r.time_fs),
            composition_x=None if pd.isna(r.composition_x) else float(r.composition_x),
            temperature_k=float(r.temperature_k),
            model_id=r.model_id,
            held_out=bool(r.held_out),
            selection=r.selection,
            round=int(r.round),
            seed=None if pd.isna(r.seed) else int(r.seed),
        )
        for r in rows.itertuples()
    ]


def sample_random_frames(
    store: Store,
    md: MDSection,
    *,
    model_id: str,
    levels: Sequence[str],
    per_run: int,
    seed: int,
    set_name: str = HELD_OUT_SET,
    held_out: bool = True,
    round_index: int = 0,
    run_id: str | None = None,
    separation_fs: float = 0.0,
    skip_md_ids: Sequence[str] = (),
) -> list[MDFrame]:
    """Draw ``per_run`` frames at random from the production part of every complete MD run of ``model_id``.

    The frames are stored (kind ``md-frame``), made members of ``<set_name>@<level>`` for every level (so
    ``capml label --set`` labels them) and recorded in ``md_frames``. A selection already stored under
    ``set_name`` is kept (resume; the draw is not repeated): only runs of the same model it has no frame of are
    drawn from (MD runs added since, e.g. by a later part of a study), and their trajectories alone are read; a
    selection drawn from another model's runs is returned as it is.

    Parameters
    ----------
    store
        The project's store, holding the MD runs.
    md
        MD settings: frames before ``md.equilibration_ps`` are never drawn.
    levels
        Reference levels the frames are to be labelled at (e.g. the cheap and the high level).
    per_run
        Frames per MD run.
    seed
        Seed of the draw (with the run's id: each run draws independently and reproducibly).
    model_id
        MACE model whose runs to draw from.
    held_out
        Whether the frames are a held-out set (never trained on).
    separation_fs
        No frame is drawn closer than this (fs) to a frame of the same run on the other side of the line
        (:func:`frames_to_avoid`: measured-on frames for a trainable draw, trained-on frames for a held-out one).
    skip_md_ids
        Runs not to draw from at all (e.g. runs whose Eg(T) is checked with DFT, for a trainable draw).
    """
    if not levels:
        raise DatasetError("sample_random_frames: give at least one level to label the frames at")
    store.initialise()
    existing = stored_frames(store, set_name=set_name, level=levels[0])
    if existing and model_id not in {frame.model_id for frame in existing}:
        logger.info("%s: %d frames drawn before from another model's runs; kept as they are", set_name, len(existing))
        return existing  # a yardstick drawn once (e.g. the held-out frames): a new model's runs do not join it
    runs = complete_md_runs(store, model_id)
    drawn = {frame.md_id for frame in existing}
    runs = runs[~runs["md_id"].isin(drawn) & ~runs["md_id"].isin(list(skip_md_ids))]
    if existing:
        logger.info("%s: %d frames drawn before; %d runs added since", set_name, len(existing), len(runs))
    if runs.empty:
        return existing
    frames: list[MDFrame] = []
    avoid = frames_to_avoid(store, runs["md_id"].tolist(), held_out=held_out) if separation_fs > 0 else {}
    for run in runs.itertuples():
        trajectory = read_trajectory(store.project_dir / run.path)
        rng = np.random.default_rng([seed, int(run.md_id.encode().hex()[:12], 16)])
        candidates = frames_apart(
            np.intersect1d(production_frames(trajectory, md.equilibration_ps), frames_with_positions(trajectory)),
            trajectory["time_fs"],
            avoid.get(run.md_id, []),
            separation_fs,
        )
        if len(candidates) < per_run:
            logger.warning(
                "%s: only %d frames of run %s lie %.0f fs or more from the frames to avoid (asked for %d)",
                set_name,
                len(candidates),
                run.md_id,
                separation_fs,
                per_run,
            )
        for index in draw_random_frames(candidates, per_run, rng):
            atoms = quantize(trajectory_frame(trajectory, int(index)))
            frames.append(
                MDFrame(
                    structure_hash=structure_hash(atoms),
                    atoms=atoms,
                    md_id=run.md_id,
                    frame=int(index),
                    time_fs=float(trajectory["time_fs"][index]),
                    composition_x=None if np.isnan(run.composition_x) else float(run.composition_x),
                    temperature_k=float(run.temperature_k),
                    model_id=model_id,
                    held_out=held_out,
                    selection="random",
                    round=round_index,
                    seed=seed,
                )
            )
    store_frames(store, frames, set_name=set_name, levels=levels, run_id=run_id)
    logger.info("%s: %d frames drawn at random from %d MD runs of model %s", set_name, len(frames), len(runs), model_id)
    return existing + frames


def frame_atoms(frame: MDFrame) -> Atoms:
    """The frame's structure with its provenance in ``info`` (``config_type=md-frame``)."""
    atoms = frame.atoms.copy()
    atoms.info.update(
        {
            "structure_hash": frame.structure_hash,
            "config_type": MD_FRAME_KIND,
            **{key: getattr(frame, key) for key in PROVENANCE_KEYS if getattr(frame, key) is not None},
        }
    )
    return atoms


def write_frame_pool(frames: Sequence[MDFrame], path: str | Path) -> int:
    """Write frames with their provenance to an extended-XYZ pool file (written whole, then renamed)."""
    from ase.io import write

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(path.name + ".partial")
    write(partial, [frame_atoms(f) for f in frames], format="extxyz")
    partial.replace(path)
    return len(frames)


def read_frame_pool(path: str | Path) -> list[MDFrame]:
    """Frames of a pool file written by :func:`write_frame_pool` (each checked for its provenance and hash)."""
    from ase.io import iread

    path = Path(path)
    if not path.is_file():
        raise DatasetError(f"{path}: no such pool file")
    frames: list[MDFrame] = []
    try:
        images = list(iread(path, index=":", format="extxyz"))
    except Exception as err:  # ase raises many kinds on a malformed file
        raise DatasetError(f"{path}: not readable as extended XYZ: {type(err).__name__}: {err}") from err
    for number, atoms in enumerate(images):
        info = atoms.info
        missing = [key for key in ("md_id", "frame", "time_fs", "temperature_k", "model_id") if key not in info]
        if info.get("config_type") != MD_FRAME_KIND or missing:
            raise DatasetError(
                f"{path}: frame {number}: not an MD-frame pool entry (config_type={info.get('config_type')!r}, "
                f"missing {missing}); expected config_type={MD_FRAME_KIND} with {', '.join(PROVENANCE_KEYS)}"
            )
        clean = quantize(Atoms(numbers=atoms.numbers, positions=atoms.positions, cell=atoms.cell, pbc=True))
        digest = structure_hash(clean)
        if "structure_hash" in info and info["structure_hash"] != digest:
            raise DatasetError(
                f"{path}: frame {number}: structure_hash {info['structure_hash']} does not match its geometry {digest}"
            )
        frames.append(
            MDFrame(
                structure_hash=digest,
                atoms=clean,
                md_id=str(info["md_id"]),
                frame=int(info["frame"]),
                time_fs=float(info["time_fs"]),
                composition_x=float(info["composition_x"]) if "composition_x" in info else None,
                temperature_k=float(info["temperature_k"]),
                model_id=str(info["model_id"]),
                held_out=bool(info.get("held_out", True)),
                selection=str(info.get("selection", "random")),
                round=int(info.get("round", 0)),
                seed=int(info["seed"]) if "seed" in info else None,
            )
        )
    return frames


def restore_frame_pool(
    store: Store,
    path: str | Path,
    *,
    levels: Sequence[str],
    set_name: str = HELD_OUT_SET,
    run_id: str | None = None,
) -> int:
    """Store the frames of a pool file as the selection ``set_name`` (idempotent); returns how many."""
    frames = read_frame_pool(path)
    store.initialise()
    store_frames(store, frames, set_name=set_name, levels=levels, run_id=run_id)
    return len(frames)
