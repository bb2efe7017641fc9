"""Molecular dynamics with any ASE calculator: run, trajectories, health checks, frames."""

from __future__ import annotations

import contextlib
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from ase import Atoms, units

from capml_core.errors import CalculationFailed, InvalidInputError
from capml_core.physics.statistics import integrated_autocorrelation_time
from capml_core.types import ProgressCallback

logger = logging.getLogger(__name__)


# ------------------------------------------------------------------------------------------- trajectory file
#: Dataset of a thinned trajectory file: the indices of the frames whose positions it keeps.
KEPT_FRAMES = "kept_frames"


def read_trajectory(path: str | Path) -> dict[str, Any]:
    """All frames and attributes of a trajectory file (arrays: positions_a, velocities_a_per_fs, ...).

    A thinned file (:func:`write_thinned_trajectory`) reads with the frame indices of the run it came from: its
    per-frame scalars are whole, positions of the frames it dropped are NaN and it has no velocities.
    """
    import h5py

    path = Path(path)
    if not path.is_file():
        raise InvalidInputError(f"{path}: trajectory file not found")
    with h5py.File(path, "r") as handle:
        out: dict[str, Any] = {key: handle[key][()] for key in handle}
        out.update({key: handle.attrs[key] for key in handle.attrs})
    if KEPT_FRAMES in out:
        kept = np.asarray(out.pop(KEPT_FRAMES), dtype=int)
        positions = np.full((len(out["time_fs"]), *out["positions_a"].shape[1:]), np.nan)
        positions[kept] = out["positions_a"]
        out["positions_a"] = positions
        out["thinned"] = True
    return out


def frames_with_positions(trajectory: dict[str, Any]) -> np.ndarray:
    """Indices of the frames whose positions a (possibly thinned) trajectory holds."""
    return np.flatnonzero(np.isfinite(trajectory["positions_a"]).all(axis=(1, 2)))


def write_thinned_trajectory(source: str | Path, target: str | Path, frames: np.ndarray) -> int:
    """Copy trajectory file ``source`` to ``target`` keeping the positions of ``frames`` only (no velocities).

    The per-frame scalars (time, energies, temperature) and the attributes are kept whole, so frame indices and
    times mean what they meant in the run; a few hundred frames of a 40-atom cell take a few hundred kB. Returns the
    number of frames kept.
    """
    import h5py

    trajectory = read_trajectory(source)
    kept = np.unique(np.asarray(frames, dtype=int))
    if len(kept) and (kept[0] < 0 or kept[-1] >= len(trajectory["time_fs"])):
        raise InvalidInputError(f"{source}: frames {kept[0]}..{kept[-1]} outside its {len(trajectory['time_fs'])}")
    kept = np.intersect1d(kept, frames_with_positions(trajectory))  # a thinned source keeps what it has
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    with h5py.File(target, "w") as handle:
        for name in FRAME_DATASETS:
            if name == "positions_a":
                handle.create_dataset(name, data=trajectory[name][kept], compression="gzip")
            elif name != "velocities_a_per_fs":
                handle.create_dataset(name, data=trajectory[name])
        handle.create_dataset(KEPT_FRAMES, data=kept)
        handle.attrs.update({k: v for k, v in trajectory.items() if k not in FRAME_DATASETS and k not in ("thinned",)})
    return len(kept)


def _new_trajectory(atoms: Atoms, attributes: dict[str, Any]) -> dict[str, Any]:
    """An empty in-memory trajectory with the layout of a trajectory file."""
    n = len(atoms)
    frames: dict[str, Any] = {name: [] for name in FRAME_DATASETS}
    frames.update({"positions_a": np.zeros((0, n, 3)), "velocities_a_per_fs": np.zeros((0, n, 3))})
    return {**{k: np.asarray(v) for k, v in frames.items()}, **attributes}


def _open_trajectory(path: Path, atoms: Atoms, attributes: dict[str, Any]):  # h5py.File
    import h5py

    n = len(atoms)
    handle = h5py.File(path, "a")
    if "positions_a" not in handle:
        for name, shape in (("positions_a", (n, 3)), ("velocities_a_per_fs", (n, 3))):
            handle.create_dataset(name, shape=(0, *shape), maxshape=(None, *shape), dtype="f8", chunks=(64, *shape))
        for name in ("time_fs", "potential_energy_ev", "kinetic_energy_ev", "temperature_k"):
            handle.create_dataset(name, shape=(0,), maxshape=(None,), dtype="f8", chunks=(1024,))
        handle.attrs.update(attributes)
    return handle


def _append(handle, frames: list[tuple]) -> None:  # an h5py.File or an in-memory trajectory dict
    if not frames:
        return
    columns = list(zip(*frames, strict=True))
    for name, values in zip(FRAME_DATASETS, columns, strict=True):
        if isinstance(handle, dict):
            handle[name] = np.concatenate([handle[name], np.asarray(values)])
            continue
        data = handle[name]
        data.resize(data.shape[0] + len(values), axis=0)
        data[-len(values) :] = np.asarray(values)
    if not isinstance(handle, dict):
        handle.flush()


@dataclass(frozen=True)
class MDRun:
    """A finished run: wall time (s) and, when it ran without a file, its trajectory in memory.

    The trajectory has the layout of :func:`read_trajectory` (arrays ``time_fs``, ``positions_a`` (Å),
    ``velocities_a_per_fs``, ``potential_energy_ev``, ``kinetic_energy_ev``, ``temperature_k``, and the run's
    attributes); with a ``path`` it is ``None``: read it with ``read_trajectory(path)``.
    """

    wall_s: float
    trajectory: dict[str, Any] | None = None


def run_md(
    atoms: Atoms,
    calculator,  # an ASE calculator
    *,
    temperature_k: float,
    timestep_fs: float,
    friction_per_fs: float,
    n_steps: int,
    save_every_steps: int,
    seed: int,
    path: Path | None = None,
    progress: ProgressCallback | None = None,
) -> MDRun:
    """Langevin NVT MD of ``atoms`` with any ASE calculator (fixed cell, centre of mass fixed).

    A frame (time fs, positions Å, velocities Å/fs, potential and kinetic energy eV, temperature K) is kept every
    ``save_every_steps``, and frame 0. Without ``path`` the frames stay in memory (``MDRun.trajectory``); with a
    ``path`` they are appended to that HDF5 file as they come, and a file left by a killed run is continued from
    its last saved frame. ``progress(done_steps, n_steps)``.

    Raises
    ------
    CalculationFailed
        Energies became NaN/inf (the model or the structure broke).
    """
    from ase.constraints import FixCom
    from ase.md.langevin import Langevin
    from ase.md.velocitydistribution import Stationary, thermalize_momenta

    start = time.perf_counter()
    atoms = atoms.copy()
    name = path.name if path is not None else "in memory"
    attributes = {
        "numbers": atoms.numbers,
        "masses_amu": atoms.get_masses(),
        "cell_a": np.asarray(atoms.cell[:]),
        "target_temperature_k": temperature_k,
        "timestep_fs": timestep_fs,
        "save_every_steps": save_every_steps,
        "friction_per_fs": friction_per_fs,
        "seed": seed,
        "n_steps": n_steps,
        "complete": False,
    }
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        opened = _open_trajectory(path, atoms, attributes)
    else:
        opened = contextlib.nullcontext(_new_trajectory(atoms, attributes))
    with opened as handle:
        saved = handle["time_fs"].shape[0]
        if saved:  # resume from the last saved frame
            atoms.positions = handle["positions_a"][saved - 1]
            atoms.set_velocities(handle["velocities_a_per_fs"][saved - 1] / units.fs)
            done = int(round(handle["time_fs"][saved - 1] / timestep_fs))
            rng = np.random.default_rng([seed, done])
            logger.info("MD %s: resuming at step %d of %d", name, done, n_steps)
        else:
            done = 0
            rng = np.random.default_rng(seed)
            thermalize_momenta(atoms, temperature_K=temperature_k, rng=rng)  # Maxwell-Boltzmann
            Stationary(atoms)
        atoms.calc = calculator
        atoms.set_constraint(FixCom())  # ASE's recommended way (its fixcm flag does not sample NVT exactly)
        dynamics = Langevin(
            atoms,
            timestep_fs * units.fs,
            temperature_K=temperature_k,
            friction=friction_per_fs / units.fs,
            fixcm=False,
            rng=rng,
        )
        buffer: list[tuple] = []

        def frame(step: int) -> tuple:
            potential = float(atoms.get_potential_energy())
            if not np.isfinite(potential):
                raise CalculationFailed(f"MD {name}: non-finite energy at step {step}")
            return (
                step * timestep_fs,
                atoms.positions.copy(),
                atoms.get_velocities() * units.fs,
                potential,
                float(atoms.get_kinetic_energy()),
                float(atoms.get_temperature()),
            )

        if done == 0:
            buffer.append(frame(0))
        while done < n_steps:
            chunk = min(save_every_steps, n_steps - done)
            dynamics.run(chunk)
            done += chunk
            buffer.append(frame(done))
            if len(buffer) >= FLUSH_EVERY_FRAMES:
                _append(handle, buffer)
                buffer = []
                if progress is not None:
                    progress(done, n_steps)
        _append(handle, buffer)
        if isinstance(handle, dict):
            handle["complete"] = True
            trajectory = handle
        else:
            handle.attrs["complete"] = True
            trajectory = None
    if progress is not None:
        progress(n_steps, n_steps)
    return MDRun(time.perf_counter() - start, trajectory)


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


def production_frames(trajectory: dict[str, Any], equilibration_ps: float) -> np.ndarray:
    """Indices of the frames after the first ``equilibration_ps`` (ps)."""
    return np.flatnonzero(trajectory["time_fs"] >= equilibration_ps * 1000.0)


def check_health(trajectory: dict[str, Any], equilibration_ps: float) -> MDHealth:
    """Temperature, drift, mean-squared displacement per species, shortest distance, decorrelation time."""
    from ase.data import chemical_symbols
    from ase.geometry import get_distances

    frames = production_frames(trajectory, equilibration_ps)
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


def trajectory_frame(trajectory: dict[str, Any], frame: int) -> Atoms:
    """One frame of a trajectory as periodic Atoms (positions wrapped into the cell, Å).

    Raises
    ------
    InvalidInputError
        A frame a thinned trajectory did not keep.
    """
    positions = trajectory["positions_a"][frame]
    if np.isnan(positions).any():
        raise InvalidInputError(
            f"frame {frame}: not kept by this thinned trajectory (a checkpoint keeps the frames of the band-gap "
            "series only): rerun the MD for it"
        )
    atoms = Atoms(numbers=trajectory["numbers"], positions=positions, cell=trajectory["cell_a"], pbc=True)
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
