"""Harmonic phonons at 0 K of the relaxed lowest-energy structures, with MACE and phonopy.

Each structure is the whole simulation cell (the 40-atom 2x2x2 cell), taken as phonopy's unit cell and
primitive cell (identity matrices), as everywhere in capml: its atom order is the MD cell's, and its Γ point
carries every q-point commensurate with the cell (Γ, X, M, R of the 5-atom parent), i.e. exactly the modes
that an MD of that cell contains. Dispersions run along the standard path of the cell's own (folded) Brillouin
zone, chosen from its symmetry (:func:`capml_core.physics.phonons.symmetry_path`: Γ-X-M-Γ-R-X|R-M for a cubic
cell); the DOS on a mesh of it. Imaginary modes (frequency < −``IMAGINARY_TOLERANCE_THZ``) are reported by
branch, where along the path they are softest, and how soft. :func:`harmonic_phonons` does all of it for an
Atoms and an ASE calculator. Units: THz, Å, eV/Å².
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
from ase import Atoms

from capml_core.physics.phonons import (
    Dispersion,
    GammaModes,
    build_phonopy,
    compute_force_constants,
    dispersion,
    gamma_modes,
)
from capml_core.types import ProgressCallback

#: A mode counts as imaginary below minus this (THz): the three acoustic modes at Γ are ~0 numerically.
IMAGINARY_TOLERANCE_THZ = 0.05


def cell_dispersion(cell: Atoms, force_constants: np.ndarray, *, n_per_segment: int = 21) -> Dispersion:
    """Dispersion (THz) of the whole cell along the symmetry path of its own reciprocal lattice (folded bands)."""
    return dispersion(cell, force_constants, n_per_segment=n_per_segment, primitive_matrix="P")


def phonon_dos(cell: Atoms, force_constants: np.ndarray, *, mesh: int = 8, sigma_thz: float = 0.1):
    """Total DOS on a Γ-centred mesh of the cell's Brillouin zone: (frequencies THz, states per THz per cell)."""
    phonon = build_phonopy(cell, force_constants)
    phonon.run_mesh([mesh] * 3, is_gamma_center=True)
    phonon.run_total_dos(sigma=sigma_thz)
    dos = phonon.total_dos
    return np.asarray(dos.frequency_points), np.asarray(dos.dos)


@dataclass(frozen=True)
class ImaginaryModes:
    """Where the harmonic spectrum is unstable.

    Attributes
    ----------
    n_gamma
        Imaginary modes at Γ of the cell (all commensurate q-points).
    min_frequency_thz
        The softest frequency anywhere on the path (negative when unstable).
    branches
        (branch index, label of the nearest high-symmetry point, its frequency THz) of every branch that is
        imaginary somewhere on the path, softest first.
    """

    n_gamma: int
    min_frequency_thz: float
    branches: list[tuple[int, str, float]]

    @property
    def unstable(self) -> bool:
        """Whether any mode is imaginary."""
        return self.n_gamma > 0 or self.min_frequency_thz < -IMAGINARY_TOLERANCE_THZ


def find_imaginary_modes(gamma: GammaModes, bands: Dispersion) -> ImaginaryModes:
    """Imaginary modes at Γ and along the path, with where each imaginary branch is softest."""
    tick_distances = np.array([d for d, _ in bands.ticks])
    tick_labels = [label for _, label in bands.ticks]
    branches = []
    for branch in range(bands.frequencies_thz.shape[1]):
        values = bands.frequencies_thz[:, branch]
        where = int(np.argmin(values))
        if values[where] < -IMAGINARY_TOLERANCE_THZ:
            nearest = tick_labels[int(np.argmin(np.abs(tick_distances - bands.distances[where])))]
            branches.append((branch, nearest, float(values[where])))
    branches.sort(key=lambda item: item[2])
    return ImaginaryModes(
        n_gamma=int(np.sum(gamma.frequencies_thz < -IMAGINARY_TOLERANCE_THZ)),
        min_frequency_thz=float(min(bands.frequencies_thz.min(), gamma.frequencies_thz.min())),
        branches=branches,
    )


@dataclass(frozen=True)
class HarmonicPhonons:
    """Harmonic phonons of one cell at 0 K.

    Attributes
    ----------
    cell
        The cell (Å); force constants and modes are in its atom order.
    force_constants
        eV/Å², shape (N, N, 3, 3).
    gamma
        Frequencies (THz, imaginary negative) and eigenvectors at Γ of the cell.
    dispersion
        Folded dispersion (THz) along the symmetry path of the cell's own Brillouin zone.
    dos_frequencies_thz, dos_states_per_thz
        Total DOS on an 8x8x8 Γ-centred mesh (THz; states per THz per cell).
    imaginary
        The imaginary modes at Γ and along the path.
    """

    cell: Atoms
    force_constants: np.ndarray
    gamma: GammaModes
    dispersion: Dispersion
    dos_frequencies_thz: np.ndarray
    dos_states_per_thz: np.ndarray
    imaginary: ImaginaryModes


def harmonic_phonons(
    atoms: Atoms,
    calculator: Any | Callable[[Atoms], np.ndarray],
    *,
    displacement_a: float = 0.01,
    progress: ProgressCallback | None = None,
) -> HarmonicPhonons:
    """Force constants, Γ modes, folded dispersion, DOS and imaginary modes of ``atoms`` (no store needed).

    Parameters
    ----------
    atoms
        The cell (Å), e.g. a relaxed 2x2x2 supercell; the whole cell is phonopy's primitive cell.
    calculator
        An ASE calculator (MACE, EMT, ...) or a function ``forces(atoms)`` returning forces (eV/Å, (N, 3)).
    displacement_a
        Finite displacement of phonopy (Å).
    progress
        ``progress(done, total)`` after each displaced structure.
    """
    if hasattr(calculator, "get_forces"):
        engine = calculator

        def forces(structure: Atoms) -> np.ndarray:
            work = structure.copy()
            work.calc = engine
            return np.asarray(work.get_forces())

    else:
        forces = calculator
    fc = compute_force_constants(atoms, forces, displacement_a=displacement_a, progress=progress)
    gamma = gamma_modes(fc.cell, fc.force_constants)
    bands = cell_dispersion(fc.cell, fc.force_constants)
    dos_f, dos = phonon_dos(fc.cell, fc.force_constants)
    return HarmonicPhonons(
        cell=fc.cell,
        force_constants=fc.force_constants,
        gamma=gamma,
        dispersion=bands,
        dos_frequencies_thz=dos_f,
        dos_states_per_thz=dos,
        imaginary=find_imaginary_modes(gamma, bands),
    )
