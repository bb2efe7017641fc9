"""Frozen Γ-mode distortions: thermal amplitudes, acoustic modes, species shares, mode choice for DFT checks.

The amplitude conventions (phonopy's eigenvectors of the mass-weighted dynamical matrix, THz, amu, Å) are
checked against the harmonic energy of the bundled GPAW force constants of Ag3SBr: a mode frozen in at its
thermal amplitude has the potential energy ħω(1 + 2n)/4, i.e. half of the oscillator's mean energy ħω(n + ½).
"""

from __future__ import annotations

import numpy as np
import pytest
from ase import Atoms, units

from capml_core.errors import InvalidInputError
from capml_core.physics.harmonic import gamma_modes
from capml_core.physics.modes import (
    acoustic_modes,
    bose_einstein,
    displacement_shares,
    freeze,
    real_eigenvector,
    spread_over_frequencies,
    thermal_displacement,
)
from capml_core.physics.phonons import load_force_constants
from tests.conftest import REPO

J_PER_EV = units._e


@pytest.fixture(scope="module")
def ag3sbr():  # noqa: ANN201 - (cell, force constants, Γ modes)
    fc = load_force_constants(REPO / "data" / "phonons" / "Ag3SBr-2x2x2-gpaw-pbesol.yaml")
    return fc.cell, fc.force_constants, gamma_modes(fc.cell, fc.force_constants)


def test_bose_einstein_limits() -> None:
    assert bose_einstein(1.0, 0.0) == 0.0
    kt_over_h_thz = units._k * 3000.0 / units._hplanck / 1e12  # 62.5 THz
    assert bose_einstein(1.0, 3000.0) == pytest.approx(kt_over_h_thz - 0.5, rel=1e-3)  # classical: kT/hν − ½
    assert bose_einstein(10.0, 100.0) == pytest.approx(np.exp(-units._hplanck * 1e13 / (units._k * 100.0)), rel=0.01)


def test_thermal_amplitude_carries_half_the_oscillator_energy_in_the_harmonic_potential(ag3sbr) -> None:  # noqa: ANN001
    cell, fc, gamma = ag3sbr
    masses = cell.get_masses() * units._amu
    phi = fc.transpose(0, 2, 1, 3).reshape(3 * len(cell), 3 * len(cell))  # eV/Å²
    real = np.flatnonzero(gamma.frequencies_thz > 0.5)
    for mode in (real[0], real[len(real) // 2], real[-1]):
        frequency = float(gamma.frequencies_thz[mode])
        for temperature in (0.0, 300.0, 600.0):
            u = thermal_displacement(cell, gamma.eigenvectors[:, mode], frequency, temperature)
            potential_ev = 0.5 * u.reshape(-1) @ phi @ u.reshape(-1)
            omega = 2 * np.pi * frequency * 1e12
            n = float(bose_einstein(frequency, temperature))
            expected_ev = units._hbar * omega * (1 + 2 * n) / 4 / J_PER_EV
            assert potential_ev == pytest.approx(expected_ev, rel=1e-3)  # phonopy vs ASE constants: 1e-4
            kinetic_like = 0.5 * omega**2 * np.sum(masses[:, None] * (u * 1e-10) ** 2) / J_PER_EV
            assert kinetic_like == pytest.approx(expected_ev, rel=1e-6)  # the same mode energy from masses alone
    # magnitude: the softest real mode at 300 K moves atoms by a few hundredths of an Å (the paper's scale)
    u = thermal_displacement(cell, gamma.eigenvectors[:, real[0]], float(gamma.frequencies_thz[real[0]]), 300.0)
    assert 0.01 < np.sqrt(np.mean(np.sum(u**2, axis=1))) < 0.3


def test_thermal_displacement_refuses_modes_without_an_amplitude(ag3sbr) -> None:  # noqa: ANN001
    cell, _, gamma = ag3sbr
    with pytest.raises(InvalidInputError, match="needs ω > 0"):
        thermal_displacement(cell, gamma.eigenvectors[:, 0], -2.3, 300.0)
    with pytest.raises(InvalidInputError, match="expected 120"):
        thermal_displacement(cell, np.ones(30), 2.0, 300.0)


def test_acoustic_modes_are_the_rigid_translations(ag3sbr) -> None:  # noqa: ANN001
    cell, _, gamma = ag3sbr
    acoustic = acoustic_modes(cell, gamma.eigenvectors)
    assert len(acoustic) == 3
    assert np.all(np.abs(gamma.frequencies_thz[acoustic]) < 0.05)
    assert np.sum(gamma.frequencies_thz < -0.05) > 0  # Ag3SBr at 0 K: imaginary modes too, not taken as acoustic
    for mode in acoustic:
        u = real_eigenvector(gamma.eigenvectors[:, mode]).reshape(-1, 3) / np.sqrt(cell.get_masses())[:, None]
        assert np.allclose(u, u[0], atol=1e-3 * np.abs(u).max())  # every atom moves the same way


def test_species_shares_and_dominant_group() -> None:
    symbols = ["Ag", "Ag", "S", "Br", "I"]
    u = np.array([[0.1, 0, 0], [0, 0.1, 0], [0.0, 0, 0.0], [0.2, 0, 0], [0, 0.2, 0]])
    shares = displacement_shares(symbols, u, ["Br", "I"])
    assert sum(shares["elements"].values()) == pytest.approx(1.0)
    assert shares["elements"]["Ag"] == pytest.approx(0.2) and shares["elements"]["S"] == 0.0
    assert shares["groups"] == pytest.approx({"Ag": 0.2, "S": 0.0, "Br/I": 0.8})
    assert shares["dominant"] == "Br/I"
    moved = freeze(Atoms("Ag2SBrI", positions=np.zeros((5, 3)), cell=[5, 5, 5], pbc=True), u)
    assert np.allclose(moved.positions, u)


def test_modes_for_dft_checks_span_the_frequency_range() -> None:
    frequencies = [3.0, 0.5, 7.5, 2.0, 5.0]
    assert spread_over_frequencies(frequencies, 3) == [1, 0, 2]  # lowest, middle, highest
    assert spread_over_frequencies(frequencies, 10) == [1, 3, 0, 4, 2]
    assert spread_over_frequencies(frequencies, 0) == []
