"""Langevin molecular dynamics with MACE: resumable HDF5 trajectories, health checks, decorrelation time.

One run = one structure at one temperature. Frames (positions Å, velocities Å/fs, potential and kinetic
energies eV, temperature K, time fs) are appended to an HDF5 file every ``save_every_steps``; a killed run
restarts from its last saved frame (positions and velocities; the Langevin noise after the restart differs
from an uninterrupted run's, which is statistically equivalent). The cell is fixed (NVT).

Health checks on the production part (after ``equilibration_ps``): the mean temperature within 5 % (plus
three standard errors) of the target; the drift of the potential energy (meV/atom/ps); the mean-squared
displacement of each species from its mean position (atoms leaving their sites: diffusion or melting); the
shortest interatomic distance and finite energies (a broken cell). The decorrelation time is the integrated
autocorrelation time of the potential energy (Sokal's automatic window), so later stages can pick
uncorrelated snapshots.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path

from ase import Atoms

from capml_core.config.schema import RunConfig
from capml_core.config.stage_sections import MDSection
from capml_core.models.mace import cached_mace_calculator, resolve_device
from capml_core.parallel import JobMap, local_map
from capml_core.physics.md import MDHealth, check_health, production_frames, read_trajectory, run_md, trajectory_frame
from capml_core.provenance import content_key
from capml_core.stages.active_learning import shortest_distances, training_contact_distances
from capml_core.store.database import Store
from capml_core.store.queries import lowest_energy_structures, mace_model_path
from capml_core.system.structures import structure_hash
from capml_core.tables import ResultTable, table
from capml_core.types import ProgressCallback

logger = logging.getLogger(__name__)


def md_job_id(structure_hash: str, temperature_k: float, md: MDSection, model_id: str) -> str:
    """Content id of a run: structure, temperature, MD settings (not workers/device) and MACE model."""
    payload = {
        "structure": structure_hash,
        "temperature_k": temperature_k,
        "md": md.model_dump(mode="json", exclude={"workers", "device", "temperatures_k", "compositions"}),
        "model_id": model_id,
    }

    return "md-" + content_key(payload)


#: A run whose atoms come closer than this fraction of the shortest distance of the same species pair in MACE's
#: training structures has left the training data (MACE extrapolates there: spurious basins were seen, e.g. an
#: Ag3SBr 400 K run quenched to a minimum 125 meV/atom below the cubic cell in MACE and 226 meV/atom above it in DFT).
CONTACT_FRACTION = 0.9
#: Every this many saved frames are searched for close contacts.
CONTACT_STRIDE = 5


def contacts_outside_training(
    trajectory: dict, training: dict[tuple[str, str], float], equilibration_ps: float
) -> str | None:
    """Why a run left MACE's training data (its closest pair vs the training structures' closest), or None.

    ``training``: shortest distance (Å) per species pair in the training structures
    (:func:`capml_core.stages.active_learning.training_contact_distances`); pairs it lacks are not judged.
    """
    worst: tuple[float, tuple[str, str], float] | None = None
    for frame in production_frames(trajectory, equilibration_ps)[::CONTACT_STRIDE]:
        for pair, distance in shortest_distances(trajectory_frame(trajectory, int(frame))).items():
            if pair in training and (worst is None or distance / training[pair] < worst[0]):
                worst = (distance / training[pair], pair, distance)
    if worst is None or worst[0] >= CONTACT_FRACTION:
        return None
    ratio, (a, b), distance = worst
    return (
        f"outside MACE's training data: {a}-{b} at {distance:.2f} Å, closer than any training structure's "
        f"{training[(a, b)]:.2f} Å (x {ratio:.2f}): MACE extrapolates"
    )


# ------------------------------------------------------------------------------------------- the stage
@dataclass(frozen=True)
class MDJob:
    """One MD run of the stage: a structure at a temperature with the stage's settings, MACE file and HDF5 path."""

    atoms: Atoms
    temperature_k: float
    md: MDSection
    model_path: Path
    path: Path
    seed: int

    @property
    def n_steps(self) -> int:
        """Steps of the whole run (equilibration included)."""
        return int(round(self.md.duration_ps * 1000.0 / self.md.timestep_fs))


def md_job(job: MDJob, device: str) -> float:
    """One MD run with the job's MACE model (a fan-out job: loads the model once per worker); wall time (s)."""
    md = job.md
    return run_md(
        job.atoms,
        cached_mace_calculator(job.model_path, device, md.dtype),
        temperature_k=job.temperature_k,
        timestep_fs=md.timestep_fs,
        friction_per_fs=md.friction_per_fs,
        n_steps=job.n_steps,
        save_every_steps=md.save_every_steps,
        seed=job.seed,
        path=job.path,
    ).wall_s


@dataclass(frozen=True)
class MDResult:
    """A finished run: its id, what it simulated and its health."""

    md_id: str
    composition_x: float
    temperature_k: float
    structure_hash: str
    path: Path
    health: MDHealth


def md_table(results: Sequence[MDResult]) -> ResultTable:
    """One row per run: temperatures, drift, largest mean-squared displacement, decorrelation time, health."""
    rows, warnings = [], []
    for i, r in enumerate(results):
        h = r.health
        rows.append(
            (
                f"{r.composition_x:.4g}",
                f"{r.temperature_k:g}",
                f"{h.mean_temperature_k:.0f}",
                f"{h.drift_mev_per_atom_per_ps:.1f}",
                f"{max(h.msd_a2.values()):.2f}",
                f"{h.decorrelation_fs:.0f}",
                "; ".join(h.problems) or "ok",
            )
        )
        if h.problems:
            warnings.append(i)
    columns = ("x", "T (K)", "mean T (K)", "drift (meV/atom/ps)", "max MSD (Å²)", "τ (fs)", "health")
    return table("MD runs", columns, rows, warnings=warnings)


def run_dynamics(
    store: Store,
    config: RunConfig,
    *,
    model_id: str,
    scan_id: str,
    run_id: str | None = None,
    progress: ProgressCallback | None = None,
    job_map: JobMap | None = None,
) -> list[MDResult]:
    """The ``dynamics`` stage: MD with MACE model ``model_id`` at every ``md.temperatures_k``.

    The runs start from the lowest-energy structure of each composition in disorder scan ``scan_id`` (only those of
    ``md.compositions`` when it is set).
    Runs recorded complete in the store are not repeated; an unfinished trajectory file is continued.
    The runs go through ``job_map`` (default: ``md.workers`` local processes, one torch thread each); this
    process alone writes the results.
    """
    md = config.md
    store.initialise()
    model_path = mace_model_path(store, model_id)
    structures = lowest_energy_structures(store, scan_id)
    jobs: dict[str, tuple[MDJob, float, str]] = {}
    for x, atoms in structures.items():
        if not config.simulates(x):
            continue
        digest = structure_hash(atoms)
        for temperature in md.temperatures_k:
            md_id = md_job_id(digest, temperature, md, model_id)
            path = store.project_dir / "md" / f"{md_id}.h5"
            seed = int(hashlib.sha256(f"{md.seed}|{md_id}".encode()).hexdigest()[:8], 16)
            jobs[md_id] = (MDJob(atoms, temperature, md, model_path, path, seed), x, digest)
    done = set(store.query("SELECT md_id FROM md_runs WHERE complete")["md_id"])
    todo = [md_id for md_id in jobs if md_id not in done]
    logger.info("MD: %d runs, %d to do (%d steps each)", len(jobs), len(todo), next(iter(jobs.values()))[0].n_steps)
    count = len(jobs) - len(todo)
    if progress is not None:
        progress(count, len(jobs))

    training = training_contact_distances(store, config.mlip.level or config.reference.cheap_level) if todo else {}

    def record(md_id: str, wall_s: float) -> None:
        job, x, digest = jobs[md_id]
        trajectory = read_trajectory(job.path)
        health = check_health(trajectory, md.equilibration_ps)
        outside = contacts_outside_training(trajectory, training, md.equilibration_ps)
        if outside:
            health = replace(health, problems=[*health.problems, outside])
        with store.write() as writer:
            writer.add_rows(
                "md_runs",
                [
                    {
                        "md_id": md_id,
                        "run_id": run_id,
                        "model_id": model_id,
                        "structure_hash": digest,
                        "composition_x": x,
                        "temperature_k": job.temperature_k,
                        "path": str(job.path.relative_to(store.project_dir)),
                        "n_steps": job.n_steps,
                        "n_frames": int(len(trajectory["time_fs"])),
                        "complete": True,
                        "wall_time_s": wall_s,
                        "steps_per_s": job.n_steps / wall_s if wall_s > 0 else None,
                        "mean_temperature_k": health.mean_temperature_k,
                        "std_temperature_k": health.std_temperature_k,
                        "drift_mev_per_atom_per_ps": health.drift_mev_per_atom_per_ps,
                        "msd_json": json.dumps(health.msd_a2),
                        "max_msd_a2": max(health.msd_a2.values()),
                        "min_distance_a": health.min_distance_a,
                        "decorrelation_fs": health.decorrelation_fs,
                        "status": health.status,
                        "problems": "; ".join(health.problems) or None,
                        "settings_json": md.model_dump_json(),
                    }
                ],
            )

    device = resolve_device(md.device)
    job_map = job_map or local_map(md.workers)
    for index, wall_s in job_map(md_job, [(jobs[md_id][0], device) for md_id in todo], name="md"):
        record(todo[index], wall_s)
        count += 1
        if progress is not None:
            progress(count, len(jobs))
    results = []
    for md_id, (job, x, digest) in jobs.items():
        row = store.query("SELECT * FROM md_runs WHERE md_id = ?", [md_id]).iloc[0]
        health = MDHealth(
            n_frames=int(row["n_frames"]),
            mean_temperature_k=float(row["mean_temperature_k"]),
            std_temperature_k=float(row["std_temperature_k"]),
            drift_mev_per_atom_per_ps=float(row["drift_mev_per_atom_per_ps"]),
            msd_a2=json.loads(row["msd_json"]),
            min_distance_a=float(row["min_distance_a"]),
            decorrelation_fs=float(row["decorrelation_fs"]),
            problems=[p for p in (row["problems"] or "").split("; ") if p],
        )
        results.append(MDResult(md_id, x, job.temperature_k, digest, job.path, health))
    return results
