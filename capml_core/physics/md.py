"""Molecular dynamics with any ASE calculator: run, trajectories, health checks, frames."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from ase import Atoms

from capml_core.config.schema import MDSection
from capml_core.errors import CalculationFailed, InvalidInputError
from capml_core.physics.statistics import integrated_autocorrelation_time
from capml_core.types import ProgressCallback

logger = logging.getLogger(__name__)


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


#: Frames buffered in memory before they are appended to the HDF5 file (a kill loses at most these).
FLUSH_EVERY_FRAMES = 50


#: A species whose atoms moved more than this from their mean sites (Å², mean over the species) is flagged.
MSD_LIMIT_A2 = 1.0


#: Atoms closer than this (Å) mean a broken structure.
MIN_DISTANCE_A = 1.2


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
