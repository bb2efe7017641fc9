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
from capml_core.physics.modes import (
    bose_einstein,
    degenerate_subspaces,
    eigenvector_shares,
    freeze,
    frozen_groups,
    frozen_mode_gaps,
    real_eigenvector,
    spread_over_frequencies,
    thermal_displacement,
)
from capml_core.physics.phonons import acoustic_modes, gamma_modes, load_force_constants
from tests.conftest import REPO

J_PER_EV = units._e


@pytest.fixture(scope="module")
def ag3sbr():  # (cell, force constants, Γ modes)
    fc = load_force_constants(REPO / "data" / "phonons" / "Ag3SBr-2x2x2-gpaw-pbesol.yaml")
    return fc.cell, fc.force_constants, gamma_modes(fc.cell, fc.force_constants)


def test_bose_einstein_limits() -> None:
    assert bose_einstein(1.0, 0.0) == 0.0
    kt_over_h_thz = units._k * 3000.0 / units._hplanck / 1e12  # 62.5 THz
    assert bose_einstein(1.0, 3000.0) == pytest.approx(kt_over_h_thz - 0.5, rel=1e-3)  # classical: kT/hν − ½
    assert bose_einstein(10.0, 100.0) == pytest.approx(np.exp(-units._hplanck * 1e13 / (units._k * 100.0)), rel=0.01)


@pytest.mark.parametrize(("frequency_thz", "temperature_k"), [(1.0, 300.0), (6.5, 120.0)])
def test_bose_einstein_is_the_closed_form(frequency_thz: float, temperature_k: float) -> None:
    """phonopy's occupation (its own constants) against n = 1 / (exp(hν/kT) − 1) with CODATA constants (ASE)."""
    closed = 1.0 / (np.exp(units._hplanck * frequency_thz * 1e12 / (units._k * temperature_k)) - 1.0)
    assert float(bose_einstein(frequency_thz, temperature_k)) == pytest.approx(closed, rel=1e-5)
    # 1 THz at 300 K: hν/kT = 0.160, n = 5.764; 6.5 THz at 120 K: hν/kT = 2.600, n = 0.0803
    assert float(bose_einstein(frequency_thz, temperature_k)) == pytest.approx(
        {1.0: 5.7643, 6.5: 0.08025}[frequency_thz], rel=1e-3
    )
    both = bose_einstein(np.array([frequency_thz, 2 * frequency_thz]), temperature_k)
    assert both.shape == (2,) and both[1] < both[0]


def test_thermal_amplitude_carries_half_the_oscillator_energy_in_the_harmonic_potential(ag3sbr) -> None:
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


def test_thermal_displacement_refuses_modes_without_an_amplitude(ag3sbr) -> None:
    cell, _, gamma = ag3sbr
    with pytest.raises(InvalidInputError, match="needs ω > 0"):
        thermal_displacement(cell, gamma.eigenvectors[:, 0], -2.3, 300.0)
    with pytest.raises(InvalidInputError, match="expected 120"):
        thermal_displacement(cell, np.ones(30), 2.0, 300.0)


def test_acoustic_modes_are_the_rigid_translations(ag3sbr) -> None:
    cell, _, gamma = ag3sbr
    acoustic = acoustic_modes(cell, gamma.eigenvectors)
    assert len(acoustic) == 3
    assert np.all(np.abs(gamma.frequencies_thz[acoustic]) < 0.05)
    assert np.sum(gamma.frequencies_thz < -0.05) > 0  # Ag3SBr at 0 K: imaginary modes too, not taken as acoustic
    for mode in acoustic:
        u = real_eigenvector(gamma.eigenvectors[:, mode]).reshape(-1, 3) / np.sqrt(cell.get_masses())[:, None]
        assert np.allclose(u, u[0], atol=1e-3 * np.abs(u).max())  # every atom moves the same way


def test_species_shares_are_eigenvector_weights_and_subspaces_are_degenerate_modes(ag3sbr) -> None:
    cell, _, gamma = ag3sbr
    symbols = cell.get_chemical_symbols()
    weights = gamma.species_weights(symbols)
    shares = eigenvector_shares(gamma, [60], symbols, ["Br", "I"])  # one definition: harmonic.py's weights
    assert sum(shares["elements"].values()) == pytest.approx(1.0)
    assert shares["elements"]["Ag"] == pytest.approx(weights["Ag"][60])
    assert (
        shares["groups"]["Br/I"] == pytest.approx(shares["elements"]["Br"]) and shares["dominant"] in shares["groups"]
    )
    assert degenerate_subspaces([1.0, 2.0, 1.01, 5.0, 2.015, 2.03], tolerance_thz=0.02) == [[0, 2], [1, 4, 5], [3]]
    subspaces = degenerate_subspaces(list(gamma.frequencies_thz))
    assert sorted(m for s in subspaces for m in s) == list(range(120))
    assert max(len(s) for s in subspaces) >= 3  # cubic Ag3SBr: triply degenerate modes
    moved = freeze(Atoms("Ag2SBrI", positions=np.zeros((5, 3)), cell=[5, 5, 5], pbc=True), np.ones((5, 3)))
    assert np.allclose(moved.positions, 1.0)


def test_modes_for_dft_checks_span_the_frequency_range() -> None:
    frequencies = [3.0, 0.5, 7.5, 2.0, 5.0]
    assert spread_over_frequencies(frequencies, 3) == [1, 0, 2]  # lowest, middle, highest
    assert spread_over_frequencies(frequencies, 10) == [1, 3, 0, 4, 2]
    assert spread_over_frequencies(frequencies, 0) == []


def test_frozen_mode_gaps_of_a_quadratic_gap_model(ag3sbr) -> None:
    """A gap model Eg = Eg0 + a·u + c Σ|u|² (u: displacement from the cell, Å): ΔEg = c Σ|u|² exactly.

    The mean of the ±u structures removes the linear term; an ensemble of two such models (c and 2c) gives the
    mean ΔEg and its spread; acoustic and imaginary modes are not frozen in and the predictor sees the cell first.
    """
    cell, _, gamma = ag3sbr
    slope = np.random.default_rng(5).normal(size=(len(cell), 3))
    seen: list[int] = []

    def model(c: float):
        def gap(atoms) -> float:
            u = atoms.positions - cell.positions
            return 1.2 + 0.3 * float(np.sum(slope * u)) + c * float(np.sum(u**2))

        return gap

    def ensemble(structures) -> np.ndarray:
        seen.append(len(structures))
        assert np.allclose(structures[0].positions, cell.positions)
        return np.array([[model(c)(a) for a in structures] for c in (0.5, 1.0)])

    results = frozen_mode_gaps(cell, gamma, 300.0, ensemble, sublattice=["Br", "I"])
    statuses = [r.status for r in results]
    n_imaginary = int(np.sum(gamma.frequencies_thz < -0.05))
    assert len(results) == 120 and statuses.count("acoustic") == 3 and statuses.count("imaginary") == n_imaginary
    assert n_imaginary == 66 and statuses.count("frozen") == 51 and seen == [1 + 2 * 51]
    for r in results:
        if r.status != "frozen":
            assert r.delta_ev is None and r.displaced is None
            continue
        u = thermal_displacement(cell, gamma.eigenvectors[:, r.mode], r.frequency_thz, 300.0)
        square = float(np.sum(u**2))
        assert r.delta_ev == pytest.approx(0.75 * square, rel=1e-9)  # mean of c = 0.5 and 1.0
        assert r.delta_std_ev == pytest.approx(np.std([0.5 * square, square], ddof=1), rel=1e-9)
        assert r.relative_change == pytest.approx(0.75 * square / 1.2, rel=1e-9) and r.gap0_ev == pytest.approx(1.2)
        assert r.rms_displacement_a == pytest.approx(np.sqrt(square / len(cell)), rel=1e-12)
        assert np.allclose(r.displaced[0].positions - cell.positions, u) and r.dominant in {"Ag", "S", "Br/I"}
    # one model (a 1-D prediction): no spread
    single = frozen_mode_gaps(cell, gamma, 0.0, lambda s: np.array([model(1.0)(a) for a in s]))
    frozen = [r for r in single if r.status == "frozen"]
    assert all(r.delta_std_ev == 0.0 for r in frozen) and frozen[0].delta_ev > 0.0
    # a frequency floor: soft real modes reported, not frozen
    floored = frozen_mode_gaps(cell, gamma, 300.0, ensemble, floor_thz=2.0)
    below = [r for r in floored if r.status == "below floor"]
    assert below and all(0.05 <= r.frequency_thz < 2.0 for r in below) and all(r.delta_ev is None for r in below)
    # degenerate subspaces: ΔEg summed over the subspace, independent of the basis; bands frozen at once
    groups = frozen_groups(cell, gamma, results, 300.0, ensemble, sublattice=["Br", "I"], harmonic_limit_a=0.1)
    subspaces = [g for g in groups if g.kind == "subspace"]
    assert sum(len(g.modes) for g in subspaces) == 120
    for g in subspaces:
        if g.status == "frozen":
            assert g.delta_ev == pytest.approx(sum(results[m].delta_ev for m in g.modes), rel=1e-9)
            assert g.resolvable == (abs(g.delta_ev) > max(2 * g.delta_std_ev, 0.01))
            assert g.beyond_harmonic == (g.rms_displacement_a > 0.1)
    bands = [g for g in groups if g.kind == "band"]
    assert sorted(m for b in bands for m in b.modes) == sorted(r.mode for r in results if r.status == "frozen")
    for b in bands:
        # the quadratic model: the band's ΔEg is c |Σ ±u_ν|², its modes alone add to c Σ |u_ν|² (cross terms differ)
        u = b.displaced[0].positions - cell.positions
        assert b.delta_ev == pytest.approx(0.75 * float(np.sum(u**2)), rel=1e-9)
        assert b.sum_of_modes_ev == pytest.approx(sum(results[m].delta_ev for m in b.modes), rel=1e-9)
    # a rotated basis of a degenerate subspace gives the same subspace ΔEg
    triple = next(g for g in subspaces if g.status == "frozen" and len(g.modes) == 3)
    columns = list(triple.modes)
    rotation = np.linalg.qr(np.random.default_rng(2).normal(size=(3, 3)))[0]
    rotated = gamma.eigenvectors.copy()
    rotated[:, columns] = gamma.eigenvectors[:, columns] @ rotation
    turned = type(gamma)(gamma.frequencies_thz, rotated)
    again = frozen_mode_gaps(cell, turned, 300.0, ensemble, sublattice=["Br", "I"])
    per_mode_before = [results[m].delta_ev for m in columns]
    per_mode_after = [again[m].delta_ev for m in columns]
    assert sum(per_mode_after) == pytest.approx(sum(per_mode_before), rel=1e-6)
