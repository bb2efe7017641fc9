"""Relaxation of positions and cell with any ASE calculator."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from ase import Atoms

from capml_core.errors import InvalidInputError


# ------------------------------------------------------------------------------------------- relaxation
@dataclass(frozen=True)
class Relaxation:
    """A relaxed structure: energy (eV per cell), convergence, BFGS steps, largest remaining force (eV/Å)."""

    atoms: Atoms
    energy_ev: float
    converged: bool
    steps: int
    max_force_ev_per_a: float
    wall_time_s: float


def relax_structure(
    atoms: Atoms,
    calculator,
    *,
    mode: str,
    fmax_ev_per_a: float,
    max_steps: int,
    trajectory: str | Path | None = None,
) -> Relaxation:
    """BFGS relaxation with ASE's FrechetCellFilter until forces and stress are below ``fmax``.

    "cell" relaxes the cell with fractional positions fixed (the paper's mode), "full" the cell and positions.
    ``trajectory``: an ASE trajectory file every step is appended to (a long DFT relaxation restarts from its
    last frame: :func:`resume_point`).
    """
    import time

    from ase.constraints import FixAtoms
    from ase.filters import FrechetCellFilter
    from ase.optimize import BFGS

    if mode not in ("cell", "full"):
        raise InvalidInputError(f"relaxation mode {mode!r}; allowed: cell, full")
    start = time.perf_counter()
    work = atoms.copy()
    work.calc = calculator
    if mode == "cell":
        work.set_constraint(FixAtoms(indices=list(range(len(work)))))
    system = FrechetCellFilter(work)
    writer = None
    if trajectory is not None:
        from ase.io.trajectory import Trajectory

        writer = Trajectory(str(trajectory), "a", work)
    optimizer = BFGS(system, logfile=None, trajectory=writer)
    try:
        converged = bool(optimizer.run(fmax=fmax_ev_per_a, steps=max_steps))
    finally:
        if writer is not None:
            writer.close()
    residual = float(np.sqrt((system.get_forces() ** 2).sum(axis=1)).max())
    energy = float(work.get_potential_energy())
    work.set_constraint()
    relaxed = Atoms(work.get_chemical_symbols(), positions=work.positions, cell=work.cell, pbc=True)
    return Relaxation(relaxed, energy, converged, int(optimizer.nsteps), residual, time.perf_counter() - start)


def resume_point(atoms: Atoms, trajectory: str | Path) -> tuple[Atoms, int]:
    """Where a relaxation writing ``trajectory`` stopped: (its last frame, or ``atoms`` if none; frames written)."""
    path = Path(trajectory)
    if not path.is_file() or path.stat().st_size == 0:
        return atoms, 0
    from ase.io import read

    try:
        frames = read(path, index=":")
    except Exception:  # a kill mid-write leaves a truncated last frame: start again from the given structure
        return atoms, 0
    if not frames:
        return atoms, 0
    last = frames[-1]
    return Atoms(last.get_chemical_symbols(), positions=last.positions, cell=last.cell, pbc=True), len(frames)
