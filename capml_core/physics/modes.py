"""Frozen phonon modes: thermal amplitudes, displaced structures, acoustic modes, mode-resolved gap changes.

A Γ mode ν of a cell is frozen in at its thermal amplitude at T: atom j moves by

    u_j = ± sqrt(ħ (1 + 2 n(ω_ν, T)) / (2 m_j ω_ν)) e_νj,

with e_ν the normalised eigenvector of the dynamical matrix and n the Bose-Einstein occupation (phonopy's).
:func:`frozen_mode_gaps` gives every mode's gap change ΔEg = (Eg(+u) + Eg(−u)) / 2 − Eg(0) from any gap
predictor. Units: THz, K, Å, eV, amu.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
from ase import Atoms, units

from capml_core.errors import InvalidInputError
from capml_core.physics.harmonic import IMAGINARY_TOLERANCE_THZ
from capml_core.physics.phonons import GammaModes, acoustic_modes


def bose_einstein(frequency_thz: np.ndarray | float, temperature_k: float) -> np.ndarray:
    """Phonon occupation n(ν, T) = 1 / (exp(hν / kT) − 1) of a frequency ν (THz) at T (K); 0 at T ≤ 0.

    phonopy's ``bose_einstein_dist`` (its physical units convert THz to eV); a negative (imaginary) frequency
    gives the closed form's value, −1 − n(|ν|).
    """
    from phonopy.phonon.thermal_properties import bose_einstein_dist

    frequency = np.asarray(frequency_thz, dtype=float)
    if temperature_k <= 0:
        return np.zeros_like(frequency)
    with np.errstate(divide="ignore", invalid="ignore"):  # ν = 0: infinite, as the closed form
        return np.asarray(bose_einstein_dist(frequency, float(temperature_k)))


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


#: Gap predictor: structures -> gaps (eV), shape (n_structures,) or, for an ensemble, (n_models, n_structures).
GapPredictor = Callable[[list[Atoms]], np.ndarray]


@dataclass(frozen=True)
class FrozenModeGap:
    """The gap change of one Γ mode frozen in at its thermal amplitude (eV; relative change a fraction).

    ``status``: "frozen", or "acoustic" / "imaginary" (not frozen in: no thermal amplitude; the numbers are
    None). With an ensemble predictor the gaps are ensemble means and ``delta_std_ev`` the spread of ΔEg over
    the models (ddof 1; 0 for one model). ``displaced``: the +u and −u structures.
    """

    mode: int
    frequency_thz: float
    status: str
    rms_displacement_a: float | None = None
    max_displacement_a: float | None = None
    shares: dict | None = None
    gap0_ev: float | None = None
    gap_plus_ev: float | None = None
    gap_minus_ev: float | None = None
    delta_ev: float | None = None
    delta_std_ev: float | None = None
    relative_change: float | None = None
    displaced: tuple[Atoms, Atoms] | None = None

    @property
    def dominant(self) -> str | None:
        """The species group carrying most of Σ|u_j|² (see :func:`displacement_shares`)."""
        return None if self.shares is None else self.shares["dominant"]


def frozen_mode_gaps(
    atoms: Atoms,
    modes: GammaModes,
    temperature_k: float,
    predict_gaps: GapPredictor,
    *,
    sublattice: Sequence[str] = (),
    imaginary_below_thz: float = IMAGINARY_TOLERANCE_THZ,
) -> list[FrozenModeGap]:
    """ΔEg and ΔEg / Eg(0) of every Γ mode of ``atoms`` frozen in at its thermal amplitude at ``temperature_k``.

    Parameters
    ----------
    atoms
        The (relaxed) cell, Å; ``modes`` are its Γ modes (THz, eigenvectors in its atom order).
    modes
        :func:`capml_core.physics.phonons.gamma_modes` of the cell's harmonic force constants.
    temperature_k
        Temperature of the thermal amplitudes (K; 0: zero-point amplitudes).
    predict_gaps
        ``predict_gaps(structures)`` -> gaps (eV), shape (n,) or (n_models, n); called once, with the
        undistorted cell first, then +u and −u of each frozen mode.
    sublattice
        Species of the substituted sublattice, shared as one group in the displacement shares (e.g. Br, I).
    imaginary_below_thz
        Modes other than the three acoustic ones below this frequency (THz) have no thermal amplitude: status
        "imaginary".

    Returns
    -------
    list[FrozenModeGap]
        One per mode, in the modes' order. The mean of the two signs removes the part of ΔEg linear in u.
    """
    frequencies = np.asarray(modes.frequencies_thz)
    acoustic = set(acoustic_modes(atoms, modes.eigenvectors))
    results: list[dict] = []
    displaced: list[Atoms] = []
    for mode, frequency in enumerate(frequencies):
        if mode in acoustic:
            results.append({"mode": mode, "frequency_thz": float(frequency), "status": "acoustic"})
            continue
        if frequency < imaginary_below_thz:
            results.append({"mode": mode, "frequency_thz": float(frequency), "status": "imaginary"})
            continue
        u = thermal_displacement(atoms, modes.eigenvectors[:, mode], float(frequency), float(temperature_k))
        pair = (freeze(atoms, u), freeze(atoms, -u))
        results.append(
            {
                "mode": mode,
                "frequency_thz": float(frequency),
                "status": "frozen",
                "rms_displacement_a": float(np.sqrt(np.mean(np.sum(u**2, axis=1)))),
                "max_displacement_a": float(np.max(np.linalg.norm(u, axis=1))),
                "shares": displacement_shares(atoms.get_chemical_symbols(), u, list(sublattice)),
                "displaced": pair,
            }
        )
        displaced += pair
    predicted = np.asarray(predict_gaps([atoms, *displaced]), dtype=float)
    per_model = predicted[None, :] if predicted.ndim == 1 else predicted
    if per_model.shape[1] != 1 + len(displaced):
        raise InvalidInputError(
            f"the gap predictor returned {per_model.shape[1]} gaps for {1 + len(displaced)} structures"
        )
    gap0 = per_model[:, 0]
    k = 0
    for result in results:
        if result["status"] != "frozen":
            continue
        plus, minus = per_model[:, 1 + 2 * k], per_model[:, 2 + 2 * k]
        delta = 0.5 * (plus + minus) - gap0
        result.update(
            {
                "gap0_ev": float(gap0.mean()),
                "gap_plus_ev": float(plus.mean()),
                "gap_minus_ev": float(minus.mean()),
                "delta_ev": float(delta.mean()),
                "delta_std_ev": float(np.std(delta, ddof=1)) if len(delta) > 1 else 0.0,
                "relative_change": float(delta.mean() / gap0.mean()),
            }
        )
        k += 1
    return [FrozenModeGap(**result) for result in results]
