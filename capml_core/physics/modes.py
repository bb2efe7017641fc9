"""Frozen phonon modes: thermal amplitudes, displaced structures, acoustic modes."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from ase import Atoms, units

from capml_core.errors import InvalidInputError


def bose_einstein(frequency_thz: np.ndarray | float, temperature_k: float) -> np.ndarray:
    """Phonon occupation n(ω, T) = 1 / (exp(hν / kT) − 1) (0 at T = 0)."""
    frequency = np.asarray(frequency_thz, dtype=float)
    if temperature_k <= 0:
        return np.zeros_like(frequency)
    x = units._hplanck * frequency * 1e12 / (units._k * temperature_k)
    return 1.0 / np.expm1(x)


def real_eigenvector(eigenvector: np.ndarray) -> np.ndarray:
    """A Γ eigenvector with its global phase removed: real, unit norm (shape 3N)."""
    v = np.asarray(eigenvector)
    phase = np.exp(-1j * np.angle(v[np.argmax(np.abs(v))]))
    real = np.real(v * phase)
    return real / np.linalg.norm(real)


def thermal_displacement(
    atoms: Atoms, eigenvector: np.ndarray, frequency_thz: float, temperature_k: float
) -> np.ndarray:
    """Displacements (Å, shape N x 3) of one mode at its thermal amplitude at T (see module doc).

    Raises
    ------
    InvalidInputError
        A frequency ≤ 0 (acoustic or imaginary modes have no thermal amplitude) or an eigenvector of the
        wrong length.
    """
    if frequency_thz <= 0:
        raise InvalidInputError(f"mode frequency {frequency_thz:.3f} THz: a thermal amplitude needs ω > 0")
    n_atoms = len(atoms)
    e = real_eigenvector(eigenvector)
    if e.shape != (3 * n_atoms,):
        raise InvalidInputError(f"eigenvector of length {e.shape}, expected {3 * n_atoms} for {n_atoms} atoms")
    omega = 2.0 * np.pi * frequency_thz * 1e12  # rad/s
    masses = atoms.get_masses() * units._amu  # kg
    occupation = float(bose_einstein(frequency_thz, temperature_k))
    amplitude_m = np.sqrt(units._hbar * (1.0 + 2.0 * occupation) / (2.0 * masses * omega))
    return e.reshape(n_atoms, 3) * amplitude_m[:, None] * 1e10


def freeze(atoms: Atoms, displacement_a: np.ndarray) -> Atoms:
    """A copy of the structure with the displacement (Å) added to its positions."""
    return Atoms(atoms.numbers, positions=atoms.positions + displacement_a, cell=atoms.cell, pbc=True)


def acoustic_modes(atoms: Atoms, eigenvectors: np.ndarray) -> list[int]:
    """The three Γ modes closest to rigid translations (largest weight on the mass-weighted translations)."""
    n_atoms = len(atoms)
    sqrt_m = np.sqrt(atoms.get_masses())
    translations = np.zeros((3 * n_atoms, 3))
    for axis in range(3):
        translations[axis::3, axis] = sqrt_m
    translations /= np.linalg.norm(translations, axis=0)
    weight = np.sum(np.abs(translations.T @ np.asarray(eigenvectors)) ** 2, axis=0)
    return sorted(int(i) for i in np.argsort(weight)[-3:])


def displacement_shares(symbols: Sequence[str], displacement_a: np.ndarray, sublattice: Sequence[str]) -> dict:
    """Share of Σ|u_j|² per element and per group (elements outside the sublattice; the sublattice together)."""
    squared = np.sum(np.asarray(displacement_a) ** 2, axis=1)
    total = float(squared.sum())
    symbols = np.asarray(symbols)
    elements = {s: float(squared[symbols == s].sum() / total) for s in sorted(set(symbols))}
    group_name = "/".join(sublattice)
    groups: dict[str, float] = {}
    for element, share in elements.items():
        key = group_name if element in sublattice else element
        groups[key] = groups.get(key, 0.0) + share
    return {"elements": elements, "groups": groups, "dominant": max(groups, key=groups.get)}


def spread_over_frequencies(frequencies_thz: Sequence[float], n: int) -> list[int]:
    """Indices (into ``frequencies_thz``) of n modes spread evenly over the sorted frequencies (ends included)."""
    order = np.argsort(frequencies_thz)
    if n <= 0 or len(order) == 0:
        return []
    picks = np.unique(np.round(np.linspace(0, len(order) - 1, min(n, len(order)))).astype(int))
    return [int(order[p]) for p in picks]
