"""Harmonic thermal configurations: canonical sampling (classical and quantum) and the special displacement.

From the force constants of a supercell (eV/Å², phonopy's (N, N, 3, 3) or a (3N, 3N) matrix) and its masses: the
mass-weighted dynamical matrix D = M^-1/2 Φ M^-1/2 has eigenvalues ω_ν² and orthonormal eigenvectors e_ν (real:
the supercell's Γ point carries every commensurate q). A normal coordinate Q_ν (Å sqrt(amu)) has, in a harmonic
crystal at temperature T, the Gaussian distribution of variance

    classical (Boltzmann):       <Q_ν²> = k_B T / ω_ν²
    quantum (Bose-Einstein):     <Q_ν²> = (ħ ω_ν / 2) coth(ħ ω_ν / 2 k_B T) / ω_ν²   (zero-point motion included)

and the atoms move by u_a = Σ_ν e_ν,a Q_ν / sqrt(m_a). The three translations (the smallest |ω²|) are left out.

- :func:`canonical_displacements`: independent draws of all Q_ν (the harmonic canonical ensemble), by phonopy's
  random displacements (classical or quantum distribution);
- :func:`special_displacement`: Zacharias and Giustino's special displacement (Phys. Rev. B 94, 075125 (2016),
  Eq. 5): every mode at its root-mean-square amplitude with the sign alternating along the frequency-ordered
  modes, u = Σ_ν (−1)^(ν−1) sqrt(<Q_ν²>) e_ν / sqrt(m): one configuration whose property approximates the thermal
  average (here used with its mirror image −u, which cancels what is odd in u).

Modes the harmonic approximation cannot sample: imaginary ones (ω² < 0) and soft ones below ``floor_thz`` (their
amplitude grows as 1/ω). ``imaginary = "abs"`` samples an imaginary mode at |ω|, ``"exclude"`` leaves it (and every
mode below the floor) out; :class:`ModeTreatment` says how many were treated how. Renormalised force constants (an
anharmonic variant: DynaPhoPy's, from MD) go in in place of the harmonic ones. Units: Å, amu, eV, THz, K.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np
from ase import Atoms, units

from capml_core.errors import InvalidInputError
from capml_core.physics.harmonic import IMAGINARY_TOLERANCE_THZ

#: ħ in eV times ASE's time unit (so ħ ω is in eV for ω in sqrt(eV / (Å² amu))).
HBAR_EV_ASE_TIME = units._hbar * units.J * units.s

ImaginaryTreatment = Literal["abs", "exclude"]


def _frequency_thz(omega: np.ndarray) -> np.ndarray:
    """THz of angular frequencies in ASE's unit, sqrt(eV / (Å² amu)) (``units.s`` ASE time units per second)."""
    return omega * units.s / (2.0 * np.pi * 1e12)


@dataclass(frozen=True)
class ModeTreatment:
    """How the modes of a sampling were treated (counts over the 3N − 3 non-translational modes)."""

    n_modes: int
    n_imaginary: int
    n_imaginary_sampled_at_abs: int
    n_below_floor_excluded: int
    n_excluded: int
    min_frequency_thz: float

    def describe(self) -> str:
        """One line for a report."""
        parts = [f"{self.n_modes} modes"]
        if self.n_imaginary:
            how = "sampled at |ω|" if self.n_imaginary_sampled_at_abs else "left out"
            parts.append(f"{self.n_imaginary} imaginary ({how})")
        if self.n_below_floor_excluded:
            parts.append(f"{self.n_below_floor_excluded} below the floor left out")
        return ", ".join(parts)


@dataclass(frozen=True)
class NormalModes:
    """Eigen-decomposition of a supercell's mass-weighted force constants (translations removed)."""

    omega2: np.ndarray  # (n_modes,) eigenvalues, eV / (Å² amu); negative: imaginary
    vectors: np.ndarray  # (3N, n_modes) orthonormal mass-weighted eigenvectors
    inverse_sqrt_mass: np.ndarray  # (3N,) 1 / sqrt(m) per Cartesian coordinate

    @property
    def frequencies_thz(self) -> np.ndarray:
        """Signed frequencies (THz; negative for imaginary modes), ascending."""
        return np.sign(self.omega2) * _frequency_thz(np.sqrt(np.abs(self.omega2)))


def normal_modes(force_constants: np.ndarray, masses_amu: np.ndarray) -> NormalModes:
    """Modes of a supercell, the three translations (smallest |ω²|) removed, ordered by signed frequency.

    Raises
    ------
    InvalidInputError
        Force constants not (N, N, 3, 3) or (3N, 3N) for N masses.
    """
    masses = np.asarray(masses_amu, dtype=float)
    n = len(masses)
    fc = np.asarray(force_constants, dtype=float)
    if fc.shape == (n, n, 3, 3):
        fc = fc.transpose(0, 2, 1, 3).reshape(3 * n, 3 * n)
    if fc.shape != (3 * n, 3 * n):
        raise InvalidInputError(f"force constants of shape {fc.shape} for {n} atoms: need ({n}, {n}, 3, 3) or (3N, 3N)")
    inverse = np.repeat(masses**-0.5, 3)
    dynamical = 0.5 * (fc + fc.T) * inverse[:, None] * inverse[None, :]
    omega2, vectors = np.linalg.eigh(dynamical)
    keep = np.sort(np.argsort(np.abs(omega2))[3:])  # drop the three translations
    return NormalModes(omega2[keep], vectors[:, keep], inverse)


def mode_variances(
    modes: NormalModes,
    temperature_k: float,
    *,
    quantum: bool,
    imaginary: ImaginaryTreatment = "abs",
    floor_thz: float = 0.5,
) -> tuple[np.ndarray, ModeTreatment]:
    """<Q_ν²> (Å² amu) of every mode at ``temperature_k``, and how the modes were treated (see module)."""
    if temperature_k <= 0.0 and not quantum:
        raise InvalidInputError(f"temperature {temperature_k} K: classical sampling needs T > 0")
    omega = np.sqrt(np.abs(modes.omega2))
    frequency = _frequency_thz(omega)
    imaginary_modes = modes.omega2 < 0.0
    usable = frequency >= floor_thz
    if imaginary == "exclude":
        usable &= ~imaginary_modes
    kt = units.kB * temperature_k
    variances = np.zeros_like(omega)
    w = omega[usable]
    if quantum:
        energy = HBAR_EV_ASE_TIME * w
        half = 0.5 * energy
        mean_energy = half / np.tanh(half / kt) if kt > 0 else half
        variances[usable] = mean_energy / w**2
    else:
        variances[usable] = kt / w**2
    treatment = ModeTreatment(
        n_modes=len(omega),
        n_imaginary=int(imaginary_modes.sum()),
        n_imaginary_sampled_at_abs=int((imaginary_modes & usable).sum()),
        n_below_floor_excluded=int((frequency < floor_thz).sum()),
        n_excluded=int((~usable).sum()),
        min_frequency_thz=float(modes.frequencies_thz.min()),
    )
    return variances, treatment


def _displace(atoms: Atoms, modes: NormalModes, coordinates: np.ndarray) -> Atoms:
    displaced = atoms.copy()
    displaced.positions = atoms.positions + (modes.vectors @ coordinates * modes.inverse_sqrt_mass).reshape(-1, 3)
    return displaced


def canonical_displacements(
    atoms: Atoms,
    force_constants: np.ndarray,
    temperature_k: float,
    n_samples: int,
    *,
    quantum: bool,
    imaginary: ImaginaryTreatment = "abs",
    floor_thz: float = 0.5,
    seed: int,
) -> list[Atoms]:
    """``n_samples`` configurations of the harmonic canonical ensemble: phonopy's random displacements.

    phonopy (``init_random_displacements``, distribution 'classical' or 'quantum') samples imaginary modes at |ω|
    and leaves out modes below its cutoff (here ``floor_thz``); ``imaginary = "exclude"`` sets the imaginary
    modes' frequencies to 0 first, so phonopy leaves them out too. Same variances as :func:`mode_variances`.
    """
    from capml_core.physics.phonons import build_phonopy

    phonon = build_phonopy(atoms, np.asarray(force_constants))
    # the translations at Γ are ~0 numerically: never below the tolerance harmonic.py uses for them
    cutoff = max(floor_thz, IMAGINARY_TOLERANCE_THZ)
    phonon.init_random_displacements(dist_func="quantum" if quantum else "classical", cutoff_frequency=cutoff)
    if imaginary == "exclude":
        sampler = phonon.random_displacements
        frequencies = np.array(sampler.frequencies)
        sampler.frequencies = np.where(frequencies < 0.0, 0.0, frequencies)
    displacements = phonon.get_random_displacements_at_temperature(
        temperature_k, n_samples, random_seed=int(seed) % 2**32
    )
    out = []
    for u in np.asarray(displacements):
        displaced = atoms.copy()
        displaced.positions = atoms.positions + u
        out.append(displaced)
    return out


def special_displacement(atoms: Atoms, modes: NormalModes, variances: np.ndarray) -> list[Atoms]:
    """Zacharias-Giustino's special displacement u and its mirror −u (modes in ascending frequency order)."""
    signs = np.where(np.arange(len(variances)) % 2 == 0, 1.0, -1.0)
    coordinates = signs * np.sqrt(variances)
    return [_displace(atoms, modes, coordinates), _displace(atoms, modes, -coordinates)]


def mean_square_displacement(modes: NormalModes, variances: np.ndarray) -> np.ndarray:
    """<u_a²> (Å²) per atom of the harmonic ensemble with these mode variances."""
    per_coordinate = (modes.vectors**2 @ variances) * modes.inverse_sqrt_mass**2
    return per_coordinate.reshape(-1, 3).sum(axis=1)
