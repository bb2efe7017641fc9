"""Anharmonic phonons with DynaPhoPy: fcc Cu (EMT), 2x2x2 conventional cell (32 atoms, 96 modes at Γ).

Trajectories: Langevin MD (5 fs, friction 2e-3 fs⁻¹, which adds a Lorentzian FWHM of γ/2π = 0.32 THz to every
mode), 10 ps of production frames, at 30 K (nearly harmonic) and 800 K (anharmonic).
"""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
from ase import Atoms, units
from ase.build import bulk
from ase.calculators.emt import EMT

from capml_core.errors import CalculationFailed, InvalidInputError, SitesLeftError
from capml_core.physics.anharmonic import (
    FFT_ALGORITHM,
    AnharmonicPhonons,
    _import_dynaphopy,
    fft_power_spectra,
    md_trajectory,
    renormalised_phonons,
)
from capml_core.physics.phonons import compute_force_constants, gamma_frequencies_thz
from capml_core.physics.stability import ModeCheck, StabilityVerdict, stability_verdict

TIMESTEP_FS = 5.0
FRICTION_PER_FS = 2e-3
THERMOSTAT_FWHM_THZ = FRICTION_PER_FS * 1e3 / (2 * np.pi)  # 0.318 THz
N_FRAMES = 2000  # 10 ps: resolution 0.1 THz with two averaged pieces
RESOLUTION_THZ = 0.1


def _emt_forces(atoms: Atoms) -> np.ndarray:
    atoms = atoms.copy()
    atoms.calc = EMT()
    return atoms.get_forces()


@pytest.fixture(scope="module")
def copper() -> tuple[Atoms, np.ndarray]:
    cell = bulk("Cu", "fcc", a=3.6, cubic=True).repeat((2, 2, 2))
    return cell, compute_force_constants(cell, _emt_forces).force_constants


def _langevin(cell: Atoms, temperature_k: float, *, seed: int = 1) -> dict:
    """A trajectory dict in capml_core.physics.md.read_trajectory's format (production frames only)."""
    from ase.md.langevin import Langevin
    from ase.md.velocitydistribution import Stationary, thermalize_momenta

    atoms = cell.copy()
    atoms.calc = EMT()
    rng = np.random.default_rng(seed)
    thermalize_momenta(atoms, temperature_K=temperature_k, rng=rng)
    Stationary(atoms)
    dynamics = Langevin(
        atoms,
        TIMESTEP_FS * units.fs,
        temperature_K=temperature_k,
        friction=FRICTION_PER_FS / units.fs,
        rng=rng,
        fixcm=False,  # the centre of mass drifts: the site check must not mind
    )
    dynamics.run(200)  # 1 ps equilibration
    positions, velocities = [], []
    for _ in range(N_FRAMES):
        dynamics.run(1)
        positions.append(atoms.positions.copy())
        velocities.append(atoms.get_velocities() * units.fs)
    return md_trajectory(
        cell,
        np.array(positions),
        np.array(velocities),
        frame_step_fs=TIMESTEP_FS,
        start_fs=1000.0,
        temperature_k=temperature_k,
    )


@pytest.fixture(scope="module")
def cold(copper) -> dict:
    return _langevin(copper[0], 30.0)


@pytest.fixture(scope="module")
def hot(copper) -> dict:
    return _langevin(copper[0], 800.0)


@pytest.fixture(scope="module")
def cold_result(copper, cold) -> AnharmonicPhonons:
    cell, fc = copper
    return renormalised_phonons(cell, fc, cold, temperature_k=30.0, resolution_thz=RESOLUTION_THZ)


def _optical(result: AnharmonicPhonons) -> np.ndarray:
    return np.array([i for i in range(len(result.harmonic_thz)) if i not in result.acoustic_modes])


# ------------------------------------------------------------------------------------------- physics
def test_low_temperature_recovers_harmonic_frequencies(copper, cold_result) -> None:
    cell, fc = copper
    result = cold_result
    np.testing.assert_allclose(result.harmonic_thz, gamma_frequencies_thz(cell, fc), atol=1e-8)
    assert result.acoustic_modes == (0, 1, 2)
    assert result.harmonic_thz.shape == result.renormalised_thz.shape == result.linewidths_thz.shape == (96,)
    optical = _optical(result)
    harmonic, peaks = result.harmonic_thz[optical], result.renormalised_thz[optical]
    assert np.all(np.isfinite(peaks))
    deviation = np.abs(peaks - harmonic) / harmonic
    assert deviation.max() < 0.03  # measured 1.1 %
    assert abs(np.mean(peaks - harmonic)) < 0.05  # THz; measured +0.02
    # the linewidth at 30 K is the thermostat's γ/2π (anharmonic damping is negligible)
    widths = result.linewidths_thz[optical]
    assert np.median(widths) == pytest.approx(THERMOSTAT_FWHM_THZ, rel=0.25)  # measured 0.34 THz
    np.testing.assert_array_equal(result.renormalised_thz[[0, 1, 2]], 0.0)


def test_renormalised_force_constants_reproduce_the_peaks(copper, cold_result) -> None:
    cell, fc = copper
    fc_t = cold_result.renormalised_force_constants
    assert fc_t is not None and fc_t.shape == fc.shape
    frequencies = gamma_frequencies_thz(cell, fc_t)
    np.testing.assert_allclose(frequencies, np.sort(cold_result.renormalised_thz), atol=1e-3)
    # and they stay close to the harmonic ones at 30 K (eV/Å², the largest element ~ 2.6 eV/Å²)
    assert np.max(np.abs(fc_t - fc)) < 0.05 * np.max(np.abs(fc))


def test_high_temperature_broadens_and_shifts(copper, cold_result, hot) -> None:
    cell, fc = copper
    result = renormalised_phonons(cell, fc, hot, temperature_k=800.0, resolution_thz=RESOLUTION_THZ)
    optical = _optical(result)
    hot_widths = result.linewidths_thz[optical]
    cold_widths = cold_result.linewidths_thz[optical]
    assert np.all(np.isfinite(hot_widths))
    # anharmonic damping adds to the thermostat's width: measured median 0.66 vs 0.34 THz
    assert np.median(hot_widths) > 1.5 * np.median(cold_widths)
    assert np.median(hot_widths) - THERMOSTAT_FWHM_THZ > 0.15
    # the peaks move more than at 30 K (measured up to 5.8 %, mean +1.6 %) but stay real and near harmonic
    deviation = np.abs(result.renormalised_thz[optical] / result.harmonic_thz[optical] - 1.0)
    cold_deviation = np.abs(cold_result.renormalised_thz[optical] / cold_result.harmonic_thz[optical] - 1.0)
    assert deviation.mean() > cold_deviation.mean()
    assert deviation.max() < 0.15
    verdict = stability_verdict(result)
    assert verdict.stable and verdict.reason_code == "stable", verdict.summary()
    assert verdict.temperature_k == 800.0 and verdict.summary().startswith("stable at 800 K")
    assert verdict.softest_renormalised_thz == pytest.approx(result.renormalised_thz[optical].min())


def test_stable_verdict_for_copper(cold_result) -> None:
    verdict = stability_verdict(cold_result)
    assert verdict.stable and verdict.reason_code == "stable"
    assert verdict.n_optical == 93 and verdict.n_imaginary_harmonic == 0 and verdict.n_imaginary_renormalised == 0
    assert verdict.offending == () and verdict.n_stabilised == 0
    optical = _optical(cold_result)
    assert verdict.softest_harmonic_thz == pytest.approx(cold_result.harmonic_thz[optical].min())
    assert verdict.softest_renormalised_thz == pytest.approx(cold_result.renormalised_thz[optical].min())
    assert verdict.named[0].renormalised_thz == pytest.approx(verdict.softest_renormalised_thz)
    assert [m.renormalised_thz for m in verdict.named] == sorted(m.renormalised_thz for m in verdict.named)
    reason = verdict.summary()
    assert "93 optical modes" in reason and f"softest: mode {verdict.named[0].index} " in reason and "\n" not in reason


def test_imaginary_harmonic_mode_stabilised(copper, cold) -> None:
    """Force constants with 6 modes made imaginary (-1 THz): the MD (real Cu) still oscillates at 5.30 THz.

    Phonopy then sorts the imaginary modes first, so the acoustic modes are 6-8, not 0-2 (DynaPhoPy's own Γ fix
    would zero the three imaginary ones instead).
    """
    cell, fc = copper
    n = len(cell)
    masses = cell.get_masses()
    root = np.sqrt(np.repeat(masses, 3))
    dynmat = fc.transpose(0, 2, 1, 3).reshape(3 * n, 3 * n) / np.outer(root, root)
    eigenvalues, vectors = np.linalg.eigh(dynmat)
    to_thz = np.sqrt(units._e / (units._amu * 1e-20)) / (2 * np.pi * 1e12)
    frequencies = np.sign(eigenvalues) * np.sqrt(np.abs(eigenvalues)) * to_thz
    chosen = np.flatnonzero(np.abs(frequencies - 5.302) < 0.01)
    assert len(chosen) == 6
    eigenvalues[chosen] = -((1.0 / to_thz) ** 2)
    modified = (vectors * eigenvalues) @ vectors.T * np.outer(root, root)
    fc_imag = modified.reshape(n, 3, n, 3).transpose(0, 2, 1, 3)
    result = renormalised_phonons(cell, fc_imag, cold, temperature_k=30.0, resolution_thz=RESOLUTION_THZ)
    np.testing.assert_allclose(result.harmonic_thz[:6], -1.0, atol=1e-3)
    assert result.acoustic_modes == (6, 7, 8)
    np.testing.assert_allclose(result.renormalised_thz[:6], 5.302, rtol=0.02)  # the true frequency, real
    verdict = stability_verdict(result)
    assert verdict.stable and verdict.n_imaginary_harmonic == 6 and verdict.n_stabilised == 6
    assert verdict.n_imaginary_renormalised == 0 and verdict.softest_harmonic_thz == pytest.approx(-1.0, abs=1e-3)
    assert "6 harmonic-imaginary modes stabilised" in verdict.summary()


def test_unstable_verdicts_count_and_name_the_modes() -> None:
    harmonic = np.array([0.0, 0.0, 0.0, -1.2, 2.0, 3.0, 4.0, 5.0])

    def verdict(peaks, widths, **kwargs) -> StabilityVerdict:
        result = AnharmonicPhonons(300.0, harmonic, np.array(peaks, float), np.array(widths, float), None, (0, 1, 2))
        return stability_verdict(result, **kwargs)

    stabilised = verdict([0, 0, 0, 1.5, 2.1, 3.0, 4.1, 5.2], [0, 0, 0, 0.4, 0.2, 0.2, 0.3, 0.3])
    assert stabilised.stable and stabilised.reason_code == "stable" and stabilised.n_optical == 5
    assert (stabilised.n_imaginary_harmonic, stabilised.n_stabilised, stabilised.n_imaginary_renormalised) == (1, 1, 0)
    assert stabilised.softest_harmonic_thz == -1.2 and stabilised.softest_renormalised_thz == 1.5
    assert [m.index for m in stabilised.named] == [3, 4, 5]  # the three softest peaks
    assert "1 harmonic-imaginary modes stabilised" in stabilised.summary()
    # peak at ~0: no restoring force
    soft = verdict([0, 0, 0, 0.03, 2.1, 3.0, 4.1, 5.2], [0, 0, 0, 0.5, 0.2, 0.2, 0.3, 0.3])
    assert not soft.stable and soft.reason_code == "unstable-modes" and (soft.n_soft, soft.n_no_fit) == (1, 0)
    assert soft.offending == (ModeCheck(3, -1.2, 0.03, 0.5, "soft"),) and soft.n_stabilised == 0
    assert "1 soft" in soft.summary() and "mode 3 (harmonic 1.20i → 0.03 THz" in soft.summary()
    # the fit failed (NaN): counted first among the offending modes
    failed = verdict([0, 0, 0, np.nan, 0.05, 3.0, 4.1, 5.2], [0, 0, 0, np.nan, 0.2, 0.2, 0.3, 0.3])
    assert [(m.index, m.problem) for m in failed.offending] == [(3, "no-fit"), (4, "soft")]
    assert (failed.n_no_fit, failed.n_soft, failed.n_imaginary_renormalised) == (1, 1, 2)
    assert failed.softest_renormalised_thz == 0.05 and np.isnan(failed.offending[0].renormalised_thz)
    assert (
        "without a fitted peak" in failed.summary() and "mode 3 (harmonic 1.20i THz: no Lorentzian" in failed.summary()
    )
    # over-damped: FWHM above twice the peak
    damped = verdict([0, 0, 0, 0.4, 2.1, 3.0, 4.1, 5.2], [0, 0, 0, 1.2, 0.2, 0.2, 0.3, 0.3])
    assert damped.n_overdamped == 1 and damped.offending[0] == ModeCheck(3, -1.2, 0.4, 1.2, "overdamped")
    assert "1 overdamped" in damped.summary()
    # the same spectrum from Langevin MD with γ/2π = 0.8 THz: 0.4 THz net of the thermostat, under-damped
    net = verdict([0, 0, 0, 0.4, 2.1, 3.0, 4.1, 5.2], [0, 0, 0, 1.2, 1.0, 1.0, 1.1, 1.1], thermostat_broadening_thz=0.8)
    assert net.stable and net.thermostat_broadening_thz == 0.8, net.summary()
    # ... but not when the net width (1.7 − 0.8 = 0.9 THz) still exceeds twice the peak
    wide = verdict(
        [0, 0, 0, 0.4, 2.1, 3.0, 4.1, 5.2], [0, 0, 0, 1.7, 1.0, 1.0, 1.1, 1.1], thermostat_broadening_thz=0.8
    )
    assert not wide.stable and wide.n_overdamped == 1 and wide.offending[0].linewidth_thz == 1.7
    assert "0.90 net of the thermostat" in wide.summary()
    # a negative fitted peak position is soft too; the acoustic modes never count
    negative = verdict([9, 9, 9, -0.5, 2.1, 3.0, 4.1, 5.2], [9, 9, 9, 0.3, 0.2, 0.2, 0.3, 0.3])
    assert not negative.stable and negative.n_soft == 1 and negative.softest_renormalised_thz == -0.5
    assert "1 of 5 modes" in negative.summary()
    tolerance = verdict([0, 0, 0, 0.15, 2.1, 3.0, 4.1, 5.2], [0] * 8, tolerance_thz=0.2)
    assert not tolerance.stable and tolerance.n_soft == 1


def test_verdict_names_a_distorted_structure_and_narrow_fits() -> None:
    """Time-averaged site offsets: named above 0.2 Å, a criterion with max_site_offset_a; fits narrower than γ/2π."""
    harmonic = np.array([0.0, 0.0, 0.0, -1.2, 2.0, 3.0])
    peaks, widths = np.array([0, 0, 0, 1.2, 2.1, 3.0]), np.array([0, 0, 0, 1.0, 1.0, 1.1])
    symbols = ["Ag", "S", "I"]

    def result(offsets):
        return AnharmonicPhonons(100.0, harmonic, peaks, widths, None, (0, 1, 2), np.array(offsets))

    calm = stability_verdict(result([0.05, 0.08, 0.04]), thermostat_broadening_thz=0.8, symbols=symbols)
    assert calm.stable and (calm.site_offset_atom, calm.site_offset_a, calm.site_offset_limit_a) == (1, 0.08, None)
    assert "caution" not in calm.summary()
    # a distorted well: still stable by the frequencies, but named
    well = stability_verdict(result([0.1, 0.52, 0.3]), thermostat_broadening_thz=0.8, symbols=symbols)
    assert well.stable and not well.distorted and (well.site_offset_atom, well.site_offset_symbol) == (1, "S")
    assert "caution: atom 1 (S) sits 0.52 Å from its site on average" in well.summary()
    # ... and unstable when the offset is a criterion
    criterion = stability_verdict(
        result([0.1, 0.52, 0.3]), thermostat_broadening_thz=0.8, max_site_offset_a=0.3, symbols=symbols
    )
    assert not criterion.stable and criterion.reason_code == "distorted" and criterion.distorted
    assert criterion.site_offset_limit_a == 0.3 and criterion.n_imaginary_renormalised == 0
    assert criterion.summary().startswith("unstable at 100 K: all 3 optical modes have real renormalised")
    assert "atom 1 (S) sits 0.52 Å from its site on average (limit 0.3 Å)" in criterion.summary()
    within = stability_verdict(result([0.1, 0.25, 0.3]), thermostat_broadening_thz=0.8, max_site_offset_a=0.35)
    assert within.stable and within.site_offset_atom == 2 and within.site_offset_symbol is None
    # a Lorentzian narrower than the thermostat's broadening (0.36 < 0.75 x 0.8 THz): listed, verdict unchanged
    narrow = AnharmonicPhonons(100.0, harmonic, peaks, np.array([0, 0, 0, 0.36, 1.0, 1.1]), None, (0, 1, 2))
    listed = stability_verdict(narrow, thermostat_broadening_thz=0.8)
    assert listed.stable and listed.narrow_modes == (3,)
    assert "1 fits narrower than the thermostat's 0.80 THz allows (modes 3)" in listed.summary()
    unlisted = stability_verdict(narrow)  # no thermostat: nothing to compare with
    assert unlisted.narrow_modes == () and "narrower" not in unlisted.summary()


def test_verdicts_without_renormalised_phonons() -> None:
    from capml_core.errors import SitesLeftError

    error = SitesLeftError("left", atom=7, offset_a=1.23, limit_a=0.84)
    left = StabilityVerdict.sites_left(error, temperature_k=200.0, symbol="S")
    assert not left.stable and left.reason_code == "sites-left" and left.distorted
    assert (left.site_offset_atom, left.site_offset_a, left.site_offset_limit_a) == (7, 1.23, 0.84)
    assert left.summary().startswith("unstable at 200 K: the structure does not oscillate about its 0 K sites: ")
    assert "atom 7 (S) sits 1.23 Å from its site on average (limit 0.84 Å)" in left.summary()
    failed = StabilityVerdict.no_phonons(300.0, "DynaPhoPy stopped (exit()): no peaks")
    assert not failed.stable and failed.reason_code == "no-phonons" and failed.n_optical == 0
    assert failed.summary() == "no renormalised phonons: DynaPhoPy stopped (exit()): no peaks"


def test_site_offsets_measure_the_time_averaged_structure(copper, cold, cold_result) -> None:
    """Cu at 30 K oscillates about its sites (mean offsets ≲ 0.02 Å); an atom held 0.3 Å off its site is seen."""
    cell, fc = copper
    assert cold_result.site_offsets_a.shape == (len(cell),)
    assert cold_result.site_offsets_a.max() < 0.03
    shifted = dict(cold, positions_a=cold["positions_a"].copy())
    shifted["positions_a"][:, 5] += np.array([0.3, 0.0, 0.0])
    result = renormalised_phonons(cell, fc, shifted, temperature_k=30.0, resolution_thz=RESOLUTION_THZ)
    assert result.site_offsets_a[5] == pytest.approx(0.3 * (1 - 1 / len(cell)), abs=0.03)  # less the c.o.m. shift
    others = np.delete(result.site_offsets_a, 5)
    assert others.max() < 0.03


# ------------------------------------------------------------------------------------------- DynaPhoPy traps
def test_fft_spectra_identical_to_dynaphopy_numpy_algorithm() -> None:
    _import_dynaphopy()  # without phonopy's DeprecationWarning
    from dynaphopy.power_spectrum import get_fft_numpy_spectra

    rng = np.random.default_rng(3)
    dynamic = SimpleNamespace(get_time_step_average=lambda: 0.005)
    for n_frames, resolution in ((2000, 0.1), (2001, 0.1), (1500, 0.07), (900, 0.3)):
        vq = rng.normal(size=(n_frames, 4)) + 1j * rng.normal(size=(n_frames, 4))
        parameters = SimpleNamespace(frequency_range=np.arange(0, 12.0, resolution), zero_padding=0, silent=True)
        expected = get_fft_numpy_spectra(vq, dynamic, parameters)
        np.testing.assert_allclose(fft_power_spectra(vq, dynamic, parameters), expected, rtol=1e-9, atol=1e-14)


def test_settings_do_not_leak_and_output_is_silenced(copper, cold, capsys) -> None:
    _import_dynaphopy()
    from dynaphopy.parameters import Parameters
    from dynaphopy.power_spectrum import power_spectrum_functions

    cell, fc = copper
    stale = Parameters()  # another user's settings (MEM with impossible coefficients would exit)
    stale.power_spectra_algorithm = 1
    stale.number_of_coefficients_mem = 10**9
    stale.frequency_range = np.arange(0, 1, 0.5)
    result = renormalised_phonons(cell, fc, cold, temperature_k=30.0, resolution_thz=0.2, frames=np.arange(1000))
    assert np.all(np.isfinite(result.renormalised_thz))
    fresh = Parameters()
    assert fresh is not stale and fresh.silent is False and fresh.power_spectra_algorithm == 1
    assert len(fresh.frequency_range) == 801  # DynaPhoPy's default, not this call's range
    assert FFT_ALGORITHM not in power_spectrum_functions
    captured = capsys.readouterr()
    assert captured.out == "" and captured.err == ""


def test_dynaphopy_exit_becomes_calculation_failed(copper, cold, monkeypatch) -> None:
    _import_dynaphopy()
    import dynaphopy.interface.phonopy_link as link

    cell, fc = copper

    def stops(*args, **kwargs):
        print("No force sets/constants available!")
        exit()

    with monkeypatch.context() as patch:
        patch.setattr(link, "obtain_eigenvectors_and_frequencies", stops)
        with pytest.raises(CalculationFailed, match=r"DynaPhoPy stopped \(exit\(\)\): No force sets/constants"):
            renormalised_phonons(cell, fc, cold, temperature_k=30.0, resolution_thz=0.2, frames=np.arange(1000))
        patch.setattr(link, "obtain_eigenvectors_and_frequencies", lambda *a, **k: 1 / 0)
        with pytest.raises(CalculationFailed, match="ZeroDivisionError"):
            renormalised_phonons(cell, fc, cold, temperature_k=30.0, resolution_thz=0.2, frames=np.arange(1000))
    # the process and the next call are fine
    result = renormalised_phonons(cell, fc, cold, temperature_k=30.0, resolution_thz=0.2, frames=np.arange(1000))
    assert np.all(np.isfinite(result.renormalised_thz))


# ------------------------------------------------------------------------------------------- bad input
def _with(trajectory: dict, **changes) -> dict:
    return {**trajectory, **changes}


def test_bad_inputs_are_rejected(copper, cold) -> None:
    cell, fc = copper
    call = dict(temperature_k=30.0, resolution_thz=RESOLUTION_THZ)
    with pytest.raises(InvalidInputError, match=r"force constants of shape \(31, 31, 3, 3\)"):
        renormalised_phonons(cell, fc[:31, :31], cold, **call)
    fewer = _with(
        cold,
        numbers=cold["numbers"][:31],
        masses_amu=cold["masses_amu"][:31],
        positions_a=cold["positions_a"][:, :31],
        velocities_a_per_fs=cold["velocities_a_per_fs"][:, :31],
    )
    with pytest.raises(InvalidInputError, match="the trajectory has 31 atoms, the force-constant cell 32"):
        renormalised_phonons(cell, fc, fewer, **call)
    numbers = cold["numbers"].copy()
    numbers[5] = 79
    with pytest.raises(InvalidInputError, match=r"atomic numbers differ .*first at atom 5: 79 vs 29"):
        renormalised_phonons(cell, fc, _with(cold, numbers=numbers), **call)
    order = np.random.default_rng(0).permutation(32)
    shuffled = _with(
        cold, positions_a=cold["positions_a"][:, order], velocities_a_per_fs=cold["velocities_a_per_fs"][:, order]
    )
    with pytest.raises(InvalidInputError, match="atom order differs"):
        renormalised_phonons(cell, fc, shuffled, **call)
    # one atom displaced for good (a distortion): the error says which and how far, for the stage's verdict
    moved = cold["positions_a"].copy()
    moved[:, 7] += [1.2, 0.0, 0.0]
    with pytest.raises(SitesLeftError) as caught:
        renormalised_phonons(cell, fc, _with(cold, positions_a=moved), **call)
    assert caught.value.atom == 7 and caught.value.offset_a == pytest.approx(1.2, abs=0.1)
    assert caught.value.limit_a < 1.2
    with pytest.raises(InvalidInputError, match=r"cell differs from the force-constant cell"):
        renormalised_phonons(cell, fc, _with(cold, cell_a=cold["cell_a"] * 1.01), **call)
    with pytest.raises(InvalidInputError, match=r"500 frames 5 fs apart .* at least 2000 frames \(10 ps\)"):
        renormalised_phonons(cell, fc, cold, frames=np.arange(500), **call)
    times = cold["time_fs"].copy()
    times[1000:] += 2.5
    with pytest.raises(InvalidInputError, match="not equally spaced"):
        renormalised_phonons(cell, fc, _with(cold, time_fs=times), **call)
    with pytest.raises(InvalidInputError, match=r"resolve frequencies up to 5.0 THz \(Nyquist\)"):
        renormalised_phonons(cell, fc, cold, frames=np.arange(0, 2000, 20), **call)
    with pytest.raises(InvalidInputError, match="run at 30 K, temperature_k = 300"):
        renormalised_phonons(cell, fc, cold, temperature_k=300.0, resolution_thz=RESOLUTION_THZ)
    with pytest.raises(InvalidInputError, match="lacks velocities_a_per_fs"):
        renormalised_phonons(cell, fc, {k: v for k, v in cold.items() if k != "velocities_a_per_fs"}, **call)
