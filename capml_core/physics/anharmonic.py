"""Temperature-renormalised (anharmonic) phonons from MD velocities with DynaPhoPy.

Method (DynaPhoPy's normal-mode decomposition, Carreras et al., Comput. Phys. Commun. 221, 221 (2017)): the
mass-weighted MD velocities are projected onto the harmonic phonon eigenvectors at Γ of the force-constant
cell; the power spectrum of each projected velocity is computed and fitted with a Lorentzian. The peak
position is the renormalised (quasiparticle) frequency at the MD temperature, the full width at half maximum
(FWHM) its linewidth (inverse lifetime / π). Degenerate harmonic modes are fitted on their averaged spectrum
(DynaPhoPy's default). Renormalised force constants are rebuilt by DynaPhoPy from the renormalised frequencies
and the harmonic eigenvectors.

capml treats the whole MD cell (e.g. 40 atoms) as phonopy's unit cell with identity supercell and primitive
matrices, so the trajectory's atom order is the force constants' order by construction and the only
commensurate q-point is Γ of that cell, which carries all 3N modes of the cell (every q-point of the
primitive cell commensurate with it, folded). Harmonic frequencies follow phonopy's order (ascending;
imaginary ones negative); the three acoustic modes are found by their overlap with rigid translations, not by
their index, so that imaginary modes sorted below them are not mistaken for them.

Power spectra use DynaPhoPy's FFT algorithm (the trajectory is cut into pieces of 1/(Δt·resolution) frames,
autocorrelated, Fourier transformed and averaged) with the autocorrelation computed by FFT instead of numpy's
O(n²) ``correlate``: the spectra are identical, the cost drops from minutes to seconds for long runs.

DynaPhoPy prints, calls ``exit()`` on bad input and keeps its settings in a process-wide singleton: every
call here runs under a lock with fresh settings, its output captured (logged at DEBUG), and any ``exit()`` or
exception turned into :class:`~capml_core.errors.CalculationFailed`.

Note: a Langevin thermostat with friction γ adds a Lorentzian FWHM of about γ/2π to every mode
(γ = 5e-3 fs⁻¹ gives 0.8 THz); linewidths below about twice the spectral resolution are not resolved.

Units: Å, fs (input times), amu, K, THz (frequencies and linewidths), eV/Å² (force constants).
"""

from __future__ import annotations

import contextlib
import io
import logging
import threading
import warnings
from dataclasses import dataclass
from typing import Any

import numpy as np
from ase import Atoms, units

from capml_core.errors import CalculationFailed, CapmlError, InvalidInputError, SitesLeftError
from capml_core.physics.phonons import acoustic_modes, gamma_modes

logger = logging.getLogger(__name__)

#: Key under which the FFT-correlation power spectrum is registered in DynaPhoPy's table during a call.
FFT_ALGORITHM = "capml-fft"
#: DynaPhoPy's Lorentzian fitting function.
LORENTZIAN = 0
#: Atoms whose mean position is farther than this fraction of the shortest interatomic distance from their site
#: in the force-constant cell mean a different atom order (or atoms that left their sites).
SITE_TOLERANCE = 0.35
#: Default upper limit of the spectra relative to the highest harmonic frequency (DynaPhoPy uses 1.2 too).
FREQUENCY_MARGIN = 1.2

# DynaPhoPy's settings singleton and algorithm table are process-wide: one analysis at a time.
_LOCK = threading.Lock()


def _import_dynaphopy() -> None:
    """Import DynaPhoPy once, hiding phonopy's DeprecationWarning about the ``phonopy.units`` it uses."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        import dynaphopy  # noqa: F401


@dataclass(frozen=True)
class AnharmonicPhonons:
    """Renormalised phonons at Γ of the MD cell at one temperature.

    Attributes
    ----------
    temperature_k
        MD temperature (K).
    harmonic_thz
        Harmonic frequencies (THz; imaginary as negative), shape (3N,), phonopy's order.
    renormalised_thz
        Peak positions of the fitted Lorentzians (THz), shape (3N,), same order; 0 for the acoustic modes,
        NaN where the fit failed.
    linewidths_thz
        FWHM of the fitted Lorentzians (THz), shape (3N,); 0 for the acoustic modes, NaN where the fit failed.
    renormalised_force_constants
        Force constants rebuilt by DynaPhoPy from the renormalised frequencies and harmonic eigenvectors
        (eV/Å²), shape (N, N, 3, 3); None when a fit failed or DynaPhoPy could not build them.
    acoustic_modes
        Indices of the three acoustic (rigid translation) modes.
    site_offsets_a
        Each atom's time-averaged distance from its site in the force-constant cell (Å), shape (N,), after
        removing the drift of the centre of mass: ~0 for a structure that oscillates about its sites; a few tenths
        of an Å for one that sits in a distorted well (or hops between distorted variants slower than the run
        averages them). None when not computed.
    """

    temperature_k: float
    harmonic_thz: np.ndarray
    renormalised_thz: np.ndarray
    linewidths_thz: np.ndarray
    renormalised_force_constants: np.ndarray | None
    acoustic_modes: tuple[int, ...] = (0, 1, 2)
    site_offsets_a: np.ndarray | None = None


# ------------------------------------------------------------------------------------------- power spectra
def _fft_power(frequency_range: np.ndarray, data: np.ndarray, time_step_ps: float) -> np.ndarray:
    """DynaPhoPy's ``_numpy_power`` (pieces, autocorrelation, |FFT|) with an FFT autocorrelation; eV·ps/amu/Å²."""
    _import_dynaphopy()
    from dynaphopy.power_spectrum import _division_of_data
    from scipy.signal import correlate

    pieces = _division_of_data(frequency_range[1] - frequency_range[0], data.size, time_step_ps)
    spectra = []
    for start, end in pieces:
        piece = data[start:end]
        acf = correlate(piece, piece, mode="same", method="fft") / piece.size
        spectra.append(np.abs(np.fft.fft(acf)) * time_step_ps)
    spectrum = np.average(spectra, axis=0)
    freqs = np.fft.fftfreq(piece.size, time_step_ps)
    order = np.argsort(freqs)
    return np.interp(frequency_range, freqs[order], spectrum[order])


def fft_power_spectra(vq: np.ndarray, dynamic: Any, parameters: Any) -> np.ndarray:
    """Power spectra of projected velocities, DynaPhoPy's FFT algorithm with an FFT autocorrelation.

    Same signature and result as ``dynaphopy.power_spectrum.get_fft_numpy_spectra`` (registered in DynaPhoPy's
    algorithm table during :func:`renormalised_phonons`).

    Parameters
    ----------
    vq
        Mass-weighted projected velocities (amu^½ Å/ps), shape (n_frames, n_modes).
    dynamic
        ``dynaphopy.dynamics.Dynamics`` (its mean time step, ps).
    parameters
        ``dynaphopy.parameters.Parameters`` (its ``frequency_range``, THz).

    Returns
    -------
    numpy.ndarray
        Spectra (eV·ps), shape (n_frequencies, n_modes).
    """
    _import_dynaphopy()
    from dynaphopy.power_spectrum import unit_conversion

    frequency_range = np.array(parameters.frequency_range)
    time_step = dynamic.get_time_step_average()
    spectra = [_fft_power(frequency_range, vq[:, i], time_step) for i in range(vq.shape[1])]
    return np.array(spectra).T * unit_conversion


# ------------------------------------------------------------------------------------------- validation
def _validate(
    cell: Atoms,
    force_constants: np.ndarray,
    trajectory: dict,
    frames: np.ndarray | None,
    temperature_k: float,
    resolution_thz: float,
) -> dict[str, Any]:
    """Check the inputs; returns times (ps), velocities (Å/ps), positions (Å), masses (amu), frame step (ps)."""
    n = len(cell)
    if n == 0:
        raise InvalidInputError("the cell has no atoms")
    fc = np.asarray(force_constants, dtype=np.float64)
    if fc.shape != (n, n, 3, 3):
        raise InvalidInputError(
            f"force constants of shape {fc.shape} do not fit a cell of {n} atoms (expected ({n}, {n}, 3, 3))"
        )
    if not np.all(np.isfinite(fc)):
        raise InvalidInputError("force constants contain NaN or inf")
    if not np.isfinite(temperature_k) or temperature_k <= 0:
        raise InvalidInputError(f"temperature_k = {temperature_k} must be > 0 K")
    if not np.isfinite(resolution_thz) or resolution_thz <= 0:
        raise InvalidInputError(f"resolution_thz = {resolution_thz} must be > 0 THz")
    missing = [k for k in ("time_fs", "positions_a", "velocities_a_per_fs", "numbers", "cell_a") if k not in trajectory]
    if missing:
        raise InvalidInputError(
            f"trajectory lacks {', '.join(missing)} (expected capml_core.physics.md.read_trajectory)"
        )
    time_fs = np.asarray(trajectory["time_fs"], dtype=np.float64)
    positions = np.asarray(trajectory["positions_a"], dtype=np.float64)
    velocities = np.asarray(trajectory["velocities_a_per_fs"], dtype=np.float64)
    numbers = np.asarray(trajectory["numbers"])
    if numbers.shape != (n,):
        raise InvalidInputError(f"the trajectory has {numbers.size} atoms, the force-constant cell {n}")
    if not np.array_equal(numbers, cell.numbers):
        first = int(np.flatnonzero(numbers != cell.numbers)[0])
        raise InvalidInputError(
            f"the trajectory's atomic numbers differ from the cell's (first at atom {first}: "
            f"{int(numbers[first])} vs {int(cell.numbers[first])}): same species in the same order needed"
        )
    n_frames = time_fs.shape[0]
    if positions.shape != (n_frames, n, 3) or velocities.shape != (n_frames, n, 3):
        raise InvalidInputError(
            f"trajectory arrays do not agree: time {time_fs.shape}, positions {positions.shape}, velocities "
            f"{velocities.shape} (expected (n_frames,), (n_frames, {n}, 3), (n_frames, {n}, 3))"
        )
    if frames is not None:
        frames = np.asarray(frames)
        if frames.ndim != 1 or not np.issubdtype(frames.dtype, np.integer):
            raise InvalidInputError("frames must be a 1-D array of integer frame indices")
        if frames.size and (frames.min() < -n_frames or frames.max() >= n_frames):
            raise InvalidInputError(f"frames index outside the trajectory's {n_frames} frames")
        time_fs, positions, velocities = time_fs[frames], positions[frames], velocities[frames]
        n_frames = len(frames)
    if n_frames < 8:
        raise InvalidInputError(f"{n_frames} frames: too few for power spectra")
    if not (np.all(np.isfinite(positions)) and np.all(np.isfinite(velocities)) and np.all(np.isfinite(time_fs))):
        raise InvalidInputError("the trajectory contains NaN or inf")
    steps = np.diff(time_fs)
    step_fs = float(np.mean(steps))
    if step_fs <= 0 or np.max(np.abs(steps - step_fs)) > 1e-3 * step_fs:
        raise InvalidInputError(
            f"frames are not equally spaced in time (steps {steps.min():g}-{steps.max():g} fs): power spectra need "
            "a uniform time step (select a contiguous range of frames)"
        )
    cell_a = np.asarray(trajectory["cell_a"], dtype=np.float64)
    reference = np.asarray(cell.cell[:])
    if cell_a.shape != (3, 3) or not np.allclose(cell_a, reference, atol=1e-4 * np.abs(reference).max()):
        raise InvalidInputError(
            "the trajectory's cell differs from the force-constant cell: the MD cell must be the cell of the force "
            "constants (same lattice vectors, Å)"
        )
    needed = int(round(1.0 / (step_fs * 1e-3 * resolution_thz)))
    if n_frames < needed:
        raise InvalidInputError(
            f"{n_frames} frames {step_fs:g} fs apart ({n_frames * step_fs / 1000:.2f} ps) are too few for "
            f"resolution_thz = {resolution_thz:g}: at least {needed} frames ({1.0 / resolution_thz:g} ps) are "
            "needed; run longer or ask for a coarser resolution"
        )
    masses = np.asarray(trajectory.get("masses_amu", cell.get_masses()), dtype=np.float64)
    if masses.shape != (n,) or not np.allclose(masses, cell.get_masses(), rtol=1e-3):
        raise InvalidInputError(
            "the trajectory's masses differ from the standard masses phonopy uses for the harmonic modes"
        )
    target = trajectory.get("target_temperature_k")
    if target is not None and abs(float(target) - temperature_k) > 1e-6 * temperature_k:
        raise InvalidInputError(f"the trajectory was run at {float(target):g} K, temperature_k = {temperature_k:g}")
    # atom order: each atom's mean position must sit on its own site of the force-constant cell (after removing
    # the drift of the centre of mass, a rigid translation)
    inverse = np.linalg.inv(reference)
    moves = np.diff(positions, axis=0) @ inverse  # frame to frame, minimum image (wrapped or not)
    moves -= np.round(moves)
    drift = np.concatenate([np.zeros((1, 3)), np.cumsum(np.einsum("i,fij->fj", masses / masses.sum(), moves), axis=0)])
    frac = (positions - cell.positions[None]) @ inverse - drift[:, None, :]
    frac -= np.round(frac)
    mean = frac.mean(axis=0)
    mean -= masses @ mean / masses.sum()  # the centre of mass's own offset at the first frame: a rigid translation
    offset = np.linalg.norm(mean @ reference, axis=1)
    if n > 1:
        distances = cell.get_all_distances(mic=True)
        np.fill_diagonal(distances, np.inf)
        limit = SITE_TOLERANCE * float(distances.min())
        worst = int(np.argmax(offset))
        if offset[worst] > limit:
            raise SitesLeftError(
                f"atom {worst} sits {offset[worst]:.2f} Å from its site in the force-constant cell on average (limit "
                f"{limit:.2f} Å): the trajectory's atom order differs from the cell's, or atoms left their sites",
                atom=worst,
                offset_a=float(offset[worst]),
                limit_a=limit,
            )
    return {
        "time_ps": time_fs * 1e-3,
        "velocities_a_per_ps": velocities * 1e3,
        "positions_a": positions,
        "masses_amu": masses,
        "step_ps": step_fs * 1e-3,
        "site_offsets_a": offset,
        "kinetic_temperature_k": float(
            np.mean(np.einsum("i,fij->f", masses, velocities**2)) / units.fs**2 / (3 * n * units.kB)
        ),
    }


# ------------------------------------------------------------------------------------------- DynaPhoPy
@contextlib.contextmanager
def _dynaphopy_session():
    """Fresh DynaPhoPy settings, the FFT algorithm registered, stdout captured; yields the captured buffer."""
    _import_dynaphopy()
    from dynaphopy.parameters import Parameters, Singleton
    from dynaphopy.power_spectrum import power_spectrum_functions

    buffer = io.StringIO()
    with _LOCK:
        Singleton._instances.pop(Parameters, None)
        power_spectrum_functions[FFT_ALGORITHM] = [fft_power_spectra, "Fast Fourier transform (FFT correlation)"]
        try:
            with contextlib.redirect_stdout(buffer), warnings.catch_warnings(), np.errstate(all="ignore"):
                warnings.simplefilter("ignore")
                yield buffer
        finally:
            power_spectrum_functions.pop(FFT_ALGORITHM, None)
            Singleton._instances.pop(Parameters, None)  # no settings leak into the next user
            if buffer.getvalue():
                logger.debug("DynaPhoPy output:\n%s", buffer.getvalue())


def _last_line(buffer: io.StringIO) -> str:
    lines = [line.strip() for line in buffer.getvalue().replace("\r", "\n").splitlines() if line.strip()]
    return lines[-1] if lines else "no message"


def md_trajectory(
    cell: Atoms,
    positions_a: np.ndarray,
    velocities_a_per_fs: np.ndarray,
    *,
    frame_step_fs: float,
    start_fs: float = 0.0,
    temperature_k: float | None = None,
) -> dict[str, Any]:
    """An MD trajectory given as arrays, in the form :func:`renormalised_phonons` reads (no trajectory file).

    Parameters
    ----------
    cell
        The MD cell, which is the force-constant cell (same atoms, order, lattice vectors in Å).
    positions_a
        Positions (Å), shape (n_frames, N, 3), unwrapped or wrapped.
    velocities_a_per_fs
        Velocities (Å/fs), shape (n_frames, N, 3); from ASE: ``atoms.get_velocities() * ase.units.fs``.
    frame_step_fs
        Time between frames (fs), equally spaced.
    start_fs
        Time of the first frame (fs).
    temperature_k
        The thermostat's temperature (K), checked against the analysis temperature when given.
    """
    positions = np.asarray(positions_a, dtype=np.float64)
    trajectory: dict[str, Any] = {
        "time_fs": float(start_fs) + float(frame_step_fs) * np.arange(len(positions)),
        "positions_a": positions,
        "velocities_a_per_fs": np.asarray(velocities_a_per_fs, dtype=np.float64),
        "numbers": cell.numbers.copy(),
        "masses_amu": cell.get_masses(),
        "cell_a": np.asarray(cell.cell[:]),
    }
    if temperature_k is not None:
        trajectory["target_temperature_k"] = float(temperature_k)
    return trajectory


def renormalised_phonons(
    cell: Atoms,
    force_constants: np.ndarray,
    trajectory: dict,
    *,
    temperature_k: float,
    resolution_thz: float = 0.05,
    max_frequency_thz: float | None = None,
    frames: np.ndarray | None = None,
) -> AnharmonicPhonons:
    """Renormalised frequencies and linewidths at Γ of the MD cell from its MD velocities (DynaPhoPy).

    Parameters
    ----------
    cell
        The force-constant cell, which is also the MD cell (same atoms, order and lattice vectors, Å).
    force_constants
        Harmonic force constants of ``cell`` (eV/Å²), shape (N, N, 3, 3).
    trajectory
        Frames as returned by :func:`capml_core.physics.md.read_trajectory` or, from arrays, :func:`md_trajectory`
        (``time_fs``, ``positions_a``, ``velocities_a_per_fs``, ``numbers``, ``cell_a``, optionally
        ``masses_amu`` and ``target_temperature_k``); equally spaced frames, all used unless ``frames``.
    temperature_k
        MD temperature (K); must match the trajectory's ``target_temperature_k`` when it has one.
    resolution_thz
        Spectral resolution (THz): the run is cut into pieces of 1/resolution ps whose spectra are averaged, so
        it needs at least 1/resolution ps of frames.
    max_frequency_thz
        Upper end of the spectra (THz); default 1.2 × the highest harmonic frequency. Must lie below the
        Nyquist frequency 1/(2Δt) of the frames.
    frames
        Optional indices of the frames to use (equally spaced, e.g. the production part).

    Returns
    -------
    AnharmonicPhonons
        Harmonic and renormalised frequencies and linewidths (THz), renormalised force constants (eV/Å²).

    Raises
    ------
    InvalidInputError
        Force constants or trajectory that do not fit the cell, non-uniform or too few frames for the resolution,
        frames too far apart for the frequencies, a trajectory at another temperature.
    CalculationFailed
        DynaPhoPy stopped (``exit()``) or raised.
    """
    data = _validate(cell, force_constants, trajectory, frames, temperature_k, resolution_thz)
    fc = np.asarray(force_constants, dtype=np.float64)
    gamma = gamma_modes(cell, fc)
    harmonic = gamma.frequencies_thz
    acoustic = tuple(acoustic_modes(cell, gamma.eigenvectors))
    nyquist = 0.5 / data["step_ps"]
    if max_frequency_thz is None:
        max_frequency_thz = max(FREQUENCY_MARGIN * float(np.max(np.abs(harmonic))), 10 * resolution_thz)
    if not np.isfinite(max_frequency_thz) or max_frequency_thz <= resolution_thz:
        raise InvalidInputError(f"max_frequency_thz = {max_frequency_thz} must exceed resolution_thz")
    if max_frequency_thz > nyquist:
        raise InvalidInputError(
            f"frames {data['step_ps'] * 1000:g} fs apart resolve frequencies up to {nyquist:.1f} THz (Nyquist), "
            f"below the {max_frequency_thz:.1f} THz needed: save frames more often"
        )
    logger.info(
        "anharmonic phonons at %g K: %d frames, %.1f ps, kinetic temperature %.0f K, spectra 0-%.1f THz step %g THz",
        temperature_k,
        len(data["time_ps"]),
        data["time_ps"][-1] - data["time_ps"][0],
        data["kinetic_temperature_k"],
        max_frequency_thz,
        resolution_thz,
    )
    try:
        with _dynaphopy_session() as buffer:
            try:
                positions, widths, renormalised_fc = _run_dynaphopy(
                    cell, fc, data, harmonic, acoustic, temperature_k, resolution_thz, max_frequency_thz
                )
            except SystemExit as err:
                raise CalculationFailed(f"DynaPhoPy stopped (exit({err.code or ''})): {_last_line(buffer)}") from None
    except CapmlError:
        raise
    except Exception as err:  # DynaPhoPy and phonopy raise many types
        raise CalculationFailed(f"DynaPhoPy failed: {type(err).__name__}: {err}") from err
    return AnharmonicPhonons(
        temperature_k=float(temperature_k),
        harmonic_thz=harmonic,
        renormalised_thz=positions,
        linewidths_thz=widths,
        renormalised_force_constants=renormalised_fc,
        acoustic_modes=acoustic,
        site_offsets_a=data["site_offsets_a"],
    )


def _run_dynaphopy(
    cell: Atoms,
    fc: np.ndarray,
    data: dict[str, Any],
    harmonic: np.ndarray,
    acoustic: tuple[int, ...],
    temperature_k: float,
    resolution_thz: float,
    max_frequency_thz: float,
) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """Projection, spectra and Lorentzian fits at Γ; returns peaks (THz), FWHM (THz), renormalised FC (eV/Å²)."""
    import dynaphopy
    from dynaphopy.analysis import fitting
    from dynaphopy.atoms import Structure
    from dynaphopy.dynamics import Dynamics
    from dynaphopy.interface import phonopy_link
    from dynaphopy.interface.phonopy_link import ForceConstants

    identity = np.eye(3, dtype=int)
    structure = Structure(
        cell=np.asarray(cell.cell[:]),
        scaled_positions=cell.get_scaled_positions(wrap=False),
        atomic_elements=cell.get_chemical_symbols(),
        masses=data["masses_amu"],
        force_constants=ForceConstants(fc, supercell=identity),
        primitive_matrix=np.eye(3),
    )
    dynamic = Dynamics(
        structure=structure,
        trajectory=data["positions_a"],
        velocity=data["velocities_a_per_ps"],
        time=data["time_ps"],
        supercell=np.asarray(cell.cell[:]),
    )
    quasiparticle = dynaphopy.Quasiparticle(dynamic)
    parameters = quasiparticle.parameters
    parameters.silent = True
    parameters.power_spectra_algorithm = FFT_ALGORITHM
    parameters.fitting_function = LORENTZIAN
    parameters.use_symmetry = True  # average the spectra of degenerate modes
    parameters.symmetrize = False  # DynaPhoPy's symmetrisation calls the removed PhonopyAtoms.get_cell
    parameters.use_NAC = False
    parameters.project_on_atom = -1
    parameters.use_MD_cell_commensurate = False
    parameters.spectrum_resolution = resolution_thz
    quasiparticle.set_frequency_limits([0.0, max_frequency_thz])
    quasiparticle.set_temperature(temperature_k)
    gamma = np.zeros(3)
    quasiparticle.set_reduced_q_vector(gamma)
    if not np.array_equal(dynamic.get_supercell_matrix(), [1, 1, 1]):
        raise InvalidInputError("the MD cell is not the force-constant cell (DynaPhoPy sees a supercell)")
    if not quasiparticle.check_commensurate(gamma):
        raise CalculationFailed("Γ is not commensurate with the MD cell (DynaPhoPy)")
    frequencies = np.asarray(quasiparticle.get_frequencies())
    if not np.allclose(frequencies, harmonic, atol=1e-6):
        raise CalculationFailed("DynaPhoPy's harmonic frequencies differ from phonopy's for the same force constants")
    spectra = quasiparticle.get_power_spectrum_phonon()
    fits = fitting.phonon_fitting_analysis(
        spectra,
        parameters.frequency_range,
        harmonic_frequencies=frequencies,
        fitting_function_type=LORENTZIAN,
        show_plots=False,
        use_degeneracy=parameters.use_symmetry,
        show_occupancy=False,
    )
    positions = np.asarray(fits["positions"], dtype=np.float64)
    widths = np.abs(np.asarray(fits["widths"], dtype=np.float64))  # the Lorentzian is even in its width
    failed = (positions == 0.0) & (widths == 0.0)  # DynaPhoPy's mark of a failed fit
    failed |= ~np.isfinite(positions) | ~np.isfinite(widths)
    positions[failed] = np.nan
    widths[failed] = np.nan
    positions[list(acoustic)] = 0.0  # rigid translations: no restoring force (DynaPhoPy does the same at Γ)
    widths[list(acoustic)] = 0.0
    failed[list(acoustic)] = False
    if np.any(failed):
        logger.warning(
            "Lorentzian fit failed for %d modes (%s): no renormalised force constants",
            int(failed.sum()),
            ", ".join(str(i) for i in np.flatnonzero(failed)[:10]),
        )
        return positions, widths, None
    renormalised_fc = None
    try:
        built = phonopy_link.get_renormalized_force_constants(
            [positions], [quasiparticle.get_eigenvectors()], structure, identity, symmetrize=False
        )
        renormalised_fc = np.asarray(built.get_array(), dtype=np.float64)
        if renormalised_fc.shape != fc.shape:
            logger.warning("DynaPhoPy's renormalised force constants have shape %s", renormalised_fc.shape)
            renormalised_fc = None
    except Exception as err:  # optional product: log and go on
        logger.warning("DynaPhoPy could not build renormalised force constants: %s", err)
    return positions, widths, renormalised_fc
