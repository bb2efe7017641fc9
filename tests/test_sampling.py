"""Harmonic thermal configurations: frequencies as phonopy's, equipartition, zero-point motion, the special
displacement's energy, imaginary and soft modes treated as stated."""

from __future__ import annotations

import numpy as np
import pytest
from ase import units
from ase.build import bulk
from ase.calculators.emt import EMT

from capml_core.physics.phonons import compute_force_constants, gamma_frequencies_thz
from capml_core.physics.sampling import (
    HBAR_EV_ASE_TIME,
    canonical_displacements,
    mean_square_displacement,
    mode_variances,
    normal_modes,
    special_displacement,
)


@pytest.fixture(scope="module")
def copper():  # (atoms, force constants): 32-atom fcc Cu with EMT
    atoms = bulk("Cu", "fcc", a=3.61, cubic=True).repeat((2, 2, 2))

    def forces(a):
        a = a.copy()
        a.calc = EMT()
        return a.get_forces()

    return atoms, compute_force_constants(atoms, forces, displacement_a=0.01).force_constants


def _harmonic_energy(modes, atoms, displaced) -> float:
    """½ Q^T ω² Q of a displaced structure (eV), Q from the displacement in mass-weighted coordinates."""
    u = (displaced.positions - atoms.positions).reshape(-1) / modes.inverse_sqrt_mass
    q = modes.vectors.T @ u
    return float(0.5 * np.sum(modes.omega2 * q**2))


def test_modes_match_phonopy_and_samples_obey_equipartition(copper) -> None:
    atoms, fc = copper
    modes = normal_modes(fc, atoms.get_masses())
    assert len(modes.omega2) == 3 * len(atoms) - 3 and (modes.omega2 > 0).all()
    phonopy_thz = np.sort(gamma_frequencies_thz(atoms, fc))[3:]
    assert np.allclose(np.sort(modes.frequencies_thz), phonopy_thz, atol=1e-3)  # same THz as phonopy
    t = 300.0
    classical, treatment = mode_variances(modes, t, quantum=False, floor_thz=0.0)
    assert treatment.n_imaginary == 0 and treatment.n_below_floor_excluded == 0
    samples = canonical_displacements(atoms, fc, t, 400, quantum=False, floor_thz=0.0, seed=1)  # phonopy's
    energies = np.array([_harmonic_energy(modes, atoms, s) for s in samples])
    expected = 0.5 * len(modes.omega2) * units.kB * t  # ½ k_B T per mode
    assert energies.mean() == pytest.approx(expected, rel=0.02)
    msd = np.mean([np.sum((s.positions - atoms.positions) ** 2, axis=1) for s in samples], axis=0)
    assert np.allclose(msd, mean_square_displacement(modes, classical), rtol=0.15)
    assert mean_square_displacement(modes, classical).mean() == pytest.approx(0.0147, rel=0.3)  # Cu 300 K, Å²
    # quantum: the classical limit at high T, zero-point motion ħω/4 potential energy per mode at T -> 0
    hot_q, _ = mode_variances(modes, 3000.0, quantum=True, floor_thz=0.0)
    hot_c, _ = mode_variances(modes, 3000.0, quantum=False, floor_thz=0.0)
    assert np.allclose(hot_q, hot_c, rtol=0.01)
    cold, _ = mode_variances(modes, 1e-3, quantum=True, floor_thz=0.0)
    omega = np.sqrt(modes.omega2)
    assert np.allclose(0.5 * modes.omega2 * cold, HBAR_EV_ASE_TIME * omega / 4.0, rtol=1e-6)
    quantum, _ = mode_variances(modes, t, quantum=True, floor_thz=0.0)
    assert (quantum > classical).all()  # zero-point motion adds to the thermal one
    drawn = canonical_displacements(atoms, fc, t, 400, quantum=True, floor_thz=0.0, seed=2)
    msd_quantum = np.mean([np.sum((s.positions - atoms.positions) ** 2, axis=1) for s in drawn], axis=0)
    assert np.allclose(msd_quantum, mean_square_displacement(modes, quantum), rtol=0.15)  # phonopy = our variances
    # the special displacement: every mode at its rms amplitude, so its harmonic energy is the ensemble's mean
    plus, minus = special_displacement(atoms, modes, classical)
    assert _harmonic_energy(modes, atoms, plus) == pytest.approx(expected, rel=1e-6)
    assert np.allclose(plus.positions - atoms.positions, atoms.positions - minus.positions)


def test_imaginary_and_soft_modes_are_treated_as_stated(copper) -> None:
    atoms, fc = copper
    modes = normal_modes(fc, atoms.get_masses())
    lowest = modes.omega2.copy()
    lowest[:2] = -np.abs(lowest[:2])  # two modes made imaginary
    soft = type(modes)(lowest, modes.vectors, modes.inverse_sqrt_mass)
    assert (soft.frequencies_thz[:2] < 0).all()
    at_abs, how = mode_variances(soft, 300.0, quantum=False, imaginary="abs", floor_thz=0.0)
    assert how.n_imaginary == 2 and how.n_imaginary_sampled_at_abs == 2
    assert np.allclose(at_abs, mode_variances(modes, 300.0, quantum=False, floor_thz=0.0)[0])  # as if real
    excluded, how = mode_variances(soft, 300.0, quantum=False, imaginary="exclude", floor_thz=0.0)
    assert how.n_imaginary_sampled_at_abs == 0 and (excluded[:2] == 0).all() and (excluded[2:] > 0).all()
    assert how.n_excluded == 2
    levels = np.unique(np.round(np.abs(modes.frequencies_thz), 3))
    floor = float(0.5 * (levels[1] + levels[2]))  # between the second and third distinct frequency
    below = int((np.abs(modes.frequencies_thz) < floor).sum())
    floored, how = mode_variances(modes, 300.0, quantum=False, floor_thz=floor)
    assert below >= 2 and how.n_below_floor_excluded == below == (floored == 0).sum()
    assert "2 imaginary (left out)" in mode_variances(soft, 300.0, quantum=False, imaginary="exclude")[1].describe()
