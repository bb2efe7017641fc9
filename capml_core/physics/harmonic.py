"""Harmonic phonons at 0 K of the relaxed lowest-energy structures, with MACE and phonopy.

Each structure is the whole simulation cell (the 40-atom 2x2x2 cell), taken as phonopy's unit cell and
primitive cell (identity matrices), as everywhere in capml: its atom order is the MD cell's, and its Γ point
carries every q-point commensurate with the cell (Γ, X, M, R of the 5-atom parent), i.e. exactly the modes
that an MD of that cell contains. Dispersions run along Γ-X-M-Γ-R-X|M-R of the cell's own (folded) Brillouin
zone; the DOS on a mesh of it. Imaginary modes (frequency < −``IMAGINARY_TOLERANCE_THZ``) are reported by
branch, where along the path they are softest, and how soft. Units: THz, Å, eV/Å².
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from ase import Atoms

from capml_core.physics.phonons import Dispersion, build_phonopy, dispersion

#: A mode counts as imaginary below minus this (THz): the three acoustic modes at Γ are ~0 numerically.
IMAGINARY_TOLERANCE_THZ = 0.05


@dataclass(frozen=True)
class GammaModes:
    """Modes at Γ of the cell: frequencies (THz, imaginary negative) and eigenvectors (3N x 3N, columns)."""

    frequencies_thz: np.ndarray
    eigenvectors: np.ndarray

    def species_weights(self, symbols: list[str]) -> dict[str, np.ndarray]:
        """Share of each mode's eigenvector norm carried by each species (sums to 1 per mode)."""
        n_atoms = len(symbols)
        squared = np.abs(self.eigenvectors.reshape(n_atoms, 3, -1)) ** 2
        per_atom = squared.sum(axis=1)  # (n_atoms, n_modes)
        total = per_atom.sum(axis=0)
        return {s: per_atom[np.array(symbols) == s].sum(axis=0) / total for s in sorted(set(symbols))}


def gamma_modes(cell: Atoms, force_constants: np.ndarray) -> GammaModes:
    """Frequencies and eigenvectors at Γ of the whole cell."""
    phonon = build_phonopy(cell, force_constants)
    phonon.run_qpoints([[0.0, 0.0, 0.0]], with_eigenvectors=True)
    return GammaModes(np.asarray(phonon.qpoints.frequencies[0]), np.asarray(phonon.qpoints.eigenvectors[0]))


def cell_dispersion(cell: Atoms, force_constants: np.ndarray, *, n_per_segment: int = 21) -> Dispersion:
    """Dispersion of the whole cell along Γ-X-M-Γ-R-X|M-R of its own reciprocal lattice (folded bands)."""
    return dispersion(cell, force_constants, n_per_segment=n_per_segment, primitive_matrix="P")


def phonon_dos(cell: Atoms, force_constants: np.ndarray, *, mesh: int = 8, sigma_thz: float = 0.1):  # noqa: ANN201
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
