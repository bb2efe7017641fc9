"""Relaxation of positions and cell with any ASE calculator."""

from __future__ import annotations

from dataclasses import dataclass

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


def relax_structure(atoms: Atoms, calculator, *, mode: str, fmax_ev_per_a: float, max_steps: int) -> Relaxation:
    """BFGS relaxation with ASE's FrechetCellFilter until forces and stress are below ``fmax``.

    "cell" relaxes the cell with fractional positions fixed (the paper's mode), "full" the cell and positions.
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
    optimizer = BFGS(system, logfile=None)
    converged = bool(optimizer.run(fmax=fmax_ev_per_a, steps=max_steps))
    residual = float(np.sqrt((system.get_forces() ** 2).sum(axis=1)).max())
    energy = float(work.get_potential_energy())
    work.set_constraint()
    relaxed = Atoms(work.get_chemical_symbols(), positions=work.positions, cell=work.cell, pbc=True)
    return Relaxation(relaxed, energy, converged, int(optimizer.nsteps), residual, time.perf_counter() - start)
