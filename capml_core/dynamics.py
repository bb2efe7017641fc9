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
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from ase import Atoms

from capml_core.config import MDSection
from capml_core.errors import CalculationFailed, InvalidInputError

logger = logging.getLogger(__name__)

#: Frames buffered in memory before they are appended to the HDF5 file (a kill loses at most these).
FLUSH_EVERY_FRAMES = 50
#: A species whose atoms moved more than this from their mean sites (Å², mean over the species) is flagged.
MSD_LIMIT_A2 = 1.0
#: Atoms closer than this (Å) mean a broken structure.
MIN_DISTANCE_A = 1.2

ProgressCallback = Callable[[int, int], None]
#: Per-frame datasets of a trajectory file, in the order of a frame tuple.
FRAME_DATASETS = (
    "time_fs",
    "positions_a",
    "velocities_a_per_fs",
    "potential_energy_ev",
    "kinetic_energy_ev",
    "temperature_k",
)


@dataclass(frozen=True)
class MDJob:
    """One MD run: a structure at a temperature with the stage's settings."""

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


def md_job_id(structure_hash: str, temperature_k: float, md: MDSection, model_id: str) -> str:
    """Content id of a run: structure, temperature, MD settings (not workers/device) and MACE model."""
    payload = {
        "structure": structure_hash,
        "temperature_k": temperature_k,
        "md": md.model_dump(mode="json", exclude={"workers", "device", "temperatures_k"}),
        "model_id": model_id,
    }
    from capml_core.provenance import content_key

    return "md-" + content_key(payload)


# ------------------------------------------------------------------------------------------- trajectory file
def read_trajectory(path: str | Path) -> dict[str, Any]:
    """All frames and attributes of a trajectory file (arrays: positions_a, velocities_a_per_fs, ...)."""
    import h5py

    path = Path(path)
    if not path.is_file():
        raise InvalidInputError(f"{path}: trajectory file not found")
    with h5py.File(path, "r") as handle:
        out: dict[str, Any] = {key: handle[key][()] for key in handle}
        out.update({key: handle.attrs[key] for key in handle.attrs})
    return out


def _open_trajectory(job: MDJob, atoms: Atoms):  # noqa: ANN202 - h5py.File
    import h5py

    n = len(atoms)
    handle = h5py.File(job.path, "a")
    if "positions_a" not in handle:
        for name, shape in (("positions_a", (n, 3)), ("velocities_a_per_fs", (n, 3))):
            handle.create_dataset(name, shape=(0, *shape), maxshape=(None, *shape), dtype="f8", chunks=(64, *shape))
        for name in ("time_fs", "potential_energy_ev", "kinetic_energy_ev", "temperature_k"):
            handle.create_dataset(name, shape=(0,), maxshape=(None,), dtype="f8", chunks=(1024,))
        handle.attrs.update(
            {
                "numbers": atoms.numbers,
                "masses_amu": atoms.get_masses(),
                "cell_a": np.asarray(atoms.cell[:]),
                "target_temperature_k": job.temperature_k,
                "timestep_fs": job.md.timestep_fs,
                "save_every_steps": job.md.save_every_steps,
                "friction_per_fs": job.md.friction_per_fs,
                "seed": job.seed,
                "n_steps": job.n_steps,
                "complete": False,
            }
        )
    return handle


def _append(handle, frames: list[tuple]) -> None:  # noqa: ANN001
    if not frames:
        return
    columns = list(zip(*frames, strict=True))
    for name, values in zip(FRAME_DATASETS, columns, strict=True):
        data = handle[name]
        data.resize(data.shape[0] + len(values), axis=0)
        data[-len(values) :] = np.asarray(values)
    handle.flush()


def run_md(job: MDJob, calculator, *, progress: ProgressCallback | None = None) -> float:  # noqa: ANN001
    """Run (or finish) one Langevin MD; returns its wall time (s). Frames go to ``job.path`` as they come.

    Raises
    ------
    CalculationFailed
        Energies became NaN/inf (the model or the structure broke).
    """
    from ase import units
    from ase.constraints import FixCom
    from ase.md.langevin import Langevin
    from ase.md.velocitydistribution import Stationary, thermalize_momenta

    start = time.perf_counter()
    atoms = job.atoms.copy()
    job.path.parent.mkdir(parents=True, exist_ok=True)
    with _open_trajectory(job, atoms) as handle:
        saved = handle["time_fs"].shape[0]
        every = job.md.save_every_steps
        if saved:  # resume from the last saved frame
            atoms.positions = handle["positions_a"][saved - 1]
            atoms.set_velocities(handle["velocities_a_per_fs"][saved - 1] / units.fs)
            done = int(round(handle["time_fs"][saved - 1] / job.md.timestep_fs))
            rng = np.random.default_rng([job.seed, done])
            logger.info("MD %s: resuming at step %d of %d", job.path.name, done, job.n_steps)
        else:
            done = 0
            rng = np.random.default_rng(job.seed)
            thermalize_momenta(atoms, temperature_K=job.temperature_k, rng=rng)  # Maxwell-Boltzmann
            Stationary(atoms)
        atoms.calc = calculator
        atoms.set_constraint(FixCom())  # ASE's recommended way (its fixcm flag does not sample NVT exactly)
        dynamics = Langevin(
            atoms,
            job.md.timestep_fs * units.fs,
            temperature_K=job.temperature_k,
            friction=job.md.friction_per_fs / units.fs,
            fixcm=False,
            rng=rng,
        )
        buffer: list[tuple] = []

        def frame(step: int) -> tuple:
            potential = float(atoms.get_potential_energy())
            if not np.isfinite(potential):
                raise CalculationFailed(f"MD {job.path.name}: non-finite energy at step {step}")
            return (
                step * job.md.timestep_fs,
                atoms.positions.copy(),
                atoms.get_velocities() * units.fs,
                potential,
                float(atoms.get_kinetic_energy()),
                float(atoms.get_temperature()),
            )

        if done == 0:
            buffer.append(frame(0))
        while done < job.n_steps:
            chunk = min(every, job.n_steps - done)
            dynamics.run(chunk)
            done += chunk
            buffer.append(frame(done))
            if len(buffer) >= FLUSH_EVERY_FRAMES:
                _append(handle, buffer)
                buffer = []
                if progress is not None:
                    progress(done, job.n_steps)
        _append(handle, buffer)
        handle.attrs["complete"] = True
    if progress is not None:
        progress(job.n_steps, job.n_steps)
    return time.perf_counter() - start


# ------------------------------------------------------------------------------------------- analysis
def integrated_autocorrelation_time(series: np.ndarray, *, window_factor: float = 5.0) -> float:
    """Integrated autocorrelation time of a series, in frames (1 for uncorrelated data).

    tau = 1 + 2 sum_{t=1..M} rho(t), with Sokal's window: the smallest M with M >= window_factor * tau(M).
    """
    x = np.asarray(series, dtype=float) - np.mean(series)
    n = len(x)
    if n < 4 or np.allclose(x, 0.0):
        return 1.0
    spectrum = np.fft.rfft(x, n=2 * n)
    acf = np.fft.irfft(spectrum * np.conjugate(spectrum))[:n]
    acf /= acf[0]
    tau = 1.0
    for m in range(1, n):
        tau = 1.0 + 2.0 * float(np.sum(acf[1 : m + 1]))
        if m >= window_factor * tau:
            break
    return max(tau, 1.0)


@dataclass(frozen=True)
class MDHealth:
    """Health of a run's production part; ``problems`` is empty for a healthy run."""

    n_frames: int
    mean_temperature_k: float
    std_temperature_k: float
    drift_mev_per_atom_per_ps: float
    msd_a2: dict[str, float]
    min_distance_a: float
    decorrelation_fs: float
    problems: list[str] = field(default_factory=list)

    @property
    def status(self) -> str:
        """'ok' or 'warning' (the problems say what)."""
        return "warning" if self.problems else "ok"


def production_frames(trajectory: dict[str, Any], md: MDSection) -> np.ndarray:
    """Indices of the frames after ``md.equilibration_ps``."""
    return np.flatnonzero(trajectory["time_fs"] >= md.equilibration_ps * 1000.0)


def check_health(trajectory: dict[str, Any], md: MDSection) -> MDHealth:
    """Temperature, drift, mean-squared displacement per species, shortest distance, decorrelation time."""
    from ase.data import chemical_symbols
    from ase.geometry import get_distances

    frames = production_frames(trajectory, md)
    if len(frames) < 4:
        raise InvalidInputError(f"only {len(frames)} production frames: run longer than equilibration_ps")
    target = float(trajectory["target_temperature_k"])
    temperatures = trajectory["temperature_k"][frames]
    times_ps = trajectory["time_fs"][frames] / 1000.0
    n_atoms = len(trajectory["numbers"])
    potential = trajectory["potential_energy_ev"][frames] / n_atoms
    tau_frames = integrated_autocorrelation_time(potential)
    frame_fs = float(np.median(np.diff(trajectory["time_fs"])))
    problems: list[str] = []
    mean_t, std_t = float(np.mean(temperatures)), float(np.std(temperatures))
    standard_error = std_t * np.sqrt(tau_frames / len(frames))
    if abs(mean_t - target) > 0.05 * target + 3.0 * standard_error:
        problems.append(f"temperature {mean_t:.0f} K, target {target:.0f} K")
    slope = float(np.polyfit(times_ps, potential, 1)[0]) * 1000.0  # meV/atom/ps
    if abs(slope) * (times_ps[-1] - times_ps[0]) > 10.0:
        problems.append(f"potential energy drifts by {slope:.1f} meV/atom/ps")
    positions = trajectory["positions_a"][frames]
    cell = trajectory["cell_a"]
    # ASE's Langevin does not wrap positions back into the cell: trajectories are continuous
    mean_site = positions.mean(axis=0)
    squared = np.sum((positions - mean_site[None]) ** 2, axis=2).mean(axis=0)
    symbols = np.array([chemical_symbols[z] for z in trajectory["numbers"]])
    msd = {s: float(squared[symbols == s].mean()) for s in sorted(set(symbols))}
    for species, value in msd.items():
        if value > MSD_LIMIT_A2:
            problems.append(f"{species} atoms leave their sites (mean-squared displacement {value:.2f} Å²)")
    _, distances = get_distances(positions[-1], cell=cell, pbc=True)
    np.fill_diagonal(distances, np.inf)
    min_distance = float(distances.min())
    if min_distance < MIN_DISTANCE_A or not np.all(np.isfinite(potential)):
        problems.append(f"broken structure: shortest distance {min_distance:.2f} Å")
    return MDHealth(
        n_frames=len(frames),
        mean_temperature_k=mean_t,
        std_temperature_k=std_t,
        drift_mev_per_atom_per_ps=slope,
        msd_a2=msd,
        min_distance_a=min_distance,
        decorrelation_fs=tau_frames * frame_fs,
        problems=problems,
    )


def uncorrelated_frames(
    trajectory: dict[str, Any], md: MDSection, decorrelation_fs: float, *, spacing: float = 2.0
) -> np.ndarray:
    """Production frame indices ``spacing`` decorrelation times apart (at least one frame apart)."""
    frames = production_frames(trajectory, md)
    frame_fs = float(np.median(np.diff(trajectory["time_fs"])))
    stride = max(1, int(np.ceil(spacing * decorrelation_fs / frame_fs)))
    return frames[::stride]


def trajectory_frame(trajectory: dict[str, Any], frame: int) -> Atoms:
    """One frame of a trajectory as periodic Atoms (positions wrapped into the cell, Å)."""
    atoms = Atoms(
        numbers=trajectory["numbers"], positions=trajectory["positions_a"][frame], cell=trajectory["cell_a"], pbc=True
    )
    atoms.wrap()
    return atoms


# ------------------------------------------------------------------------------------------- the stage
def md_job(job: MDJob, device: str) -> float:
    """One MD run with the job's MACE model (a fan-out job: loads the model once per worker); wall time (s)."""
    from capml_core.parallel import cached_mace_calculator

    return run_md(job, cached_mace_calculator(job.model_path, device, job.md.dtype))


@dataclass(frozen=True)
class MDResult:
    """A finished run: its id, what it simulated and its health."""

    md_id: str
    composition_x: float
    temperature_k: float
    structure_hash: str
    path: Path
    health: MDHealth


def run_dynamics(
    store,  # noqa: ANN001 - capml_core.store.Store
    config,  # noqa: ANN001 - RunConfig
    *,
    run_id: str | None = None,
    progress: ProgressCallback | None = None,
    job_map=None,  # noqa: ANN001 - capml_core.parallel.JobMap
) -> list[MDResult]:
    """The ``dynamics`` stage: MD of each composition's lowest-energy structure at every ``md.temperatures_k``.

    Runs recorded complete in the store are not repeated; an unfinished trajectory file is continued.
    The runs go through ``job_map`` (default: ``md.workers`` local processes, one torch thread each); this
    process alone writes the results.
    """
    from capml_core.disorder import latest_scan_id, lowest_energy_structures
    from capml_core.mlip import latest_model, resolve_device
    from capml_core.parallel import local_map
    from capml_core.structures import structure_hash

    md = config.md
    store.initialise()
    model_id, model_path = latest_model(store)
    structures = lowest_energy_structures(store, latest_scan_id(store))
    jobs: dict[str, tuple[MDJob, float, str]] = {}
    for x, atoms in structures.items():
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

    def record(md_id: str, wall_s: float) -> None:
        job, x, digest = jobs[md_id]
        trajectory = read_trajectory(job.path)
        health = check_health(trajectory, md)
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
