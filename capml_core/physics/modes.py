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
    delta_per_model_ev: tuple[float, ...] | None = None
    displaced: tuple[Atoms, Atoms] | None = None

    @property
    def dominant(self) -> str | None:
        """The species group with most eigenvector weight (see :func:`eigenvector_shares`)."""
        return None if self.shares is None else self.shares["dominant"]


def frozen_mode_gaps(
    atoms: Atoms,
    modes: GammaModes,
    temperature_k: float,
    predict_gaps: GapPredictor,
    *,
    sublattice: Sequence[str] = (),
    imaginary_below_thz: float = IMAGINARY_TOLERANCE_THZ,
    floor_thz: float = 0.0,
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
    floor_thz
        Real modes below this frequency (THz) are reported with status "below floor", not frozen: their thermal
        amplitude (∝ 1/ω) leaves the harmonic regime.

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
        if frequency < floor_thz:
            results.append({"mode": mode, "frequency_thz": float(frequency), "status": "below floor"})
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
                "shares": eigenvector_shares(modes, [mode], atoms.get_chemical_symbols(), list(sublattice)),
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
                "delta_per_model_ev": tuple(float(d) for d in delta),
            }
        )
        k += 1
    return [FrozenModeGap(**result) for result in results]


# ------------------------------------------------------------------------------------------- subspaces and bands
def degenerate_subspaces(frequencies_thz: Sequence[float], *, tolerance_thz: float = 0.02) -> list[list[int]]:
    """Groups of mode indices whose frequencies agree within ``tolerance_thz`` (chained), ascending.

    Within a degenerate subspace the eigenvectors are an arbitrary basis: only quantities summed over the whole
    subspace (such as the second-order gap change) mean something.
    """
    order = np.argsort(np.asarray(frequencies_thz, dtype=float), kind="stable")
    groups: list[list[int]] = []
    for index in order:
        if groups and abs(frequencies_thz[index] - frequencies_thz[groups[-1][-1]]) <= tolerance_thz:
            groups[-1].append(int(index))
        else:
            groups.append([int(index)])
    return groups


def eigenvector_shares(
    modes: GammaModes, indices: Sequence[int], symbols: Sequence[str], sublattice: Sequence[str]
) -> dict:
    """Share of the modes' eigenvector weight |e_j|² per element and group, summed over ``indices``.

    The one definition of a mode's species in capml (:meth:`GammaModes.species_weights`): the sublattice's
    species together form one group (e.g. 'Br/I'); ``dominant`` is the largest group.
    """
    weights = modes.species_weights(list(symbols))
    elements = {s: float(np.mean(w[list(indices)])) for s, w in weights.items()}
    group_name = "/".join(sublattice)
    groups: dict[str, float] = {}
    for element, share in elements.items():
        key = group_name if element in sublattice else element
        groups[key] = groups.get(key, 0.0) + share
    return {"elements": elements, "groups": groups, "dominant": max(groups, key=groups.get)}


@dataclass(frozen=True)
class FrozenGroup:
    """The gap change of a degenerate subspace or a frequency band frozen in at thermal amplitudes (eV).

    ``kind``: 'subspace' (ΔEg summed over its modes, each frozen alone: basis-independent to second order) or
    'band' (every mode of the band frozen at once, signs alternating along the frequency-ordered modes, mean
    of +u and −u). ``status``: 'frozen', 'acoustic', 'imaginary' or 'below floor' (reported, not frozen).
    ``sum_of_modes_ev`` (bands): the sum of the band's modes frozen alone; ``resolvable``: |ΔEg| above twice
    the ensemble's spread of it and above the resolution given; ``beyond_harmonic``: rms displacement above
    the harmonic limit given (a thermal amplitude ∝ 1/ω of a soft mode is not a harmonic distortion).
    """

    kind: str
    modes: tuple[int, ...]
    frequency_lo_thz: float
    frequency_hi_thz: float
    status: str
    shares: dict | None = None
    rms_displacement_a: float | None = None
    max_displacement_a: float | None = None
    gap0_ev: float | None = None
    delta_ev: float | None = None
    delta_std_ev: float | None = None
    relative_change: float | None = None
    sum_of_modes_ev: float | None = None
    resolvable: bool | None = None
    beyond_harmonic: bool | None = None
    displaced: tuple[Atoms, Atoms] | None = None

    @property
    def dominant(self) -> str | None:
        """The species group with most eigenvector weight (:func:`eigenvector_shares`)."""
        return None if self.shares is None else self.shares["dominant"]


def frozen_groups(
    atoms: Atoms,
    modes: GammaModes,
    mode_gaps: Sequence[FrozenModeGap],
    temperature_k: float,
    predict_gaps: GapPredictor,
    *,
    sublattice: Sequence[str] = (),
    band_edges_thz: Sequence[float] = (0.5, 1.0, 2.0, 3.0, 4.0, 6.0, 10.0),
    harmonic_limit_a: float = 0.2,
    resolution_ev: float = 0.01,
    degeneracy_thz: float = 0.02,
) -> list[FrozenGroup]:
    """ΔEg of every degenerate subspace and of every frequency band of ``atoms``' Γ modes at ``temperature_k``.

    ``mode_gaps``: :func:`frozen_mode_gaps` of the same modes and temperature (a subspace's ΔEg is the sum of its
    modes'); only the bands are predicted here (``predict_gaps`` called once: the undistorted cell, then ±u of
    every band). A subspace with a mode not frozen (acoustic, imaginary, below the floor) takes that status.
    """
    frequencies = np.asarray(modes.frequencies_thz, dtype=float)
    symbols = atoms.get_chemical_symbols()
    by_mode = {g.mode: g for g in mode_gaps}
    frozen = [g.mode for g in mode_gaps if g.status == "frozen"]
    displacement = {
        m: thermal_displacement(atoms, modes.eigenvectors[:, m], float(frequencies[m]), float(temperature_k))
        for m in frozen
    }
    softest = min((float(frequencies[m]) for m in frozen), default=0.0)
    start = max((float(e) for e in band_edges_thz if e <= softest), default=softest)  # every frozen mode in a band
    edges = sorted({start, float("inf")} | {float(e) for e in band_edges_thz if e > start})
    structures: list[Atoms] = [atoms]
    bands = []
    for lo, hi in zip(edges[:-1], edges[1:], strict=True):
        members = sorted((m for m in frozen if lo <= frequencies[m] < hi), key=lambda m: frequencies[m])
        if not members:
            continue
        u = sum(((-1.0) ** k) * displacement[m] for k, m in enumerate(members))
        bands.append((lo, hi, members, u, len(structures)))
        structures += [freeze(atoms, u), freeze(atoms, -u)]
    per_model = np.zeros((1, 1))
    if bands:
        predicted = np.asarray(predict_gaps(structures), dtype=float)
        per_model = predicted[None, :] if predicted.ndim == 1 else predicted
        if per_model.shape[1] != len(structures):
            raise InvalidInputError(
                f"the predictor returned {per_model.shape[1]} gaps for {len(structures)} structures"
            )
    gap0 = next((g.gap0_ev for g in mode_gaps if g.gap0_ev is not None), None)

    def measured(delta: np.ndarray, u: np.ndarray, reference: float) -> dict:
        spread = float(np.std(delta, ddof=1)) if len(delta) > 1 else 0.0
        rms = float(np.sqrt(np.mean(np.sum(u**2, axis=1))))
        mean = float(delta.mean())
        return {
            "gap0_ev": reference,
            "delta_ev": mean,
            "delta_std_ev": spread,
            "relative_change": mean / reference,
            "rms_displacement_a": rms,
            "max_displacement_a": float(np.max(np.linalg.norm(u, axis=1))),
            "resolvable": bool(abs(mean) > max(2.0 * spread, resolution_ev)),
            "beyond_harmonic": bool(rms > harmonic_limit_a),
        }

    out = []
    for subspace in degenerate_subspaces(list(frequencies), tolerance_thz=degeneracy_thz):
        states = {by_mode[m].status for m in subspace}
        common = {
            "kind": "subspace",
            "modes": tuple(subspace),
            "frequency_lo_thz": float(frequencies[subspace].min()),
            "frequency_hi_thz": float(frequencies[subspace].max()),
            "shares": eigenvector_shares(modes, subspace, symbols, sublattice),
        }
        if states != {"frozen"}:
            out.append(FrozenGroup(status=sorted(states - {"frozen"})[0], **common))
            continue
        delta = np.sum([by_mode[m].delta_per_model_ev for m in subspace], axis=0)
        u_rms = np.sqrt(sum(displacement[m] ** 2 for m in subspace))  # the subspace's thermal rms per atom and axis
        out.append(FrozenGroup(status="frozen", **common, **measured(delta, u_rms, float(gap0))))
    for lo, hi, members, u, index in bands:
        band_gap0 = per_model[:, 0]
        delta = 0.5 * (per_model[:, index] + per_model[:, index + 1]) - band_gap0
        out.append(
            FrozenGroup(
                kind="band",
                modes=tuple(members),
                frequency_lo_thz=float(lo),
                frequency_hi_thz=float(hi),
                status="frozen",
                shares=eigenvector_shares(modes, members, symbols, sublattice),
                sum_of_modes_ev=float(sum(by_mode[m].delta_ev for m in members)),
                displaced=(structures[index], structures[index + 1]),
                **measured(delta, u, float(band_gap0.mean())),
            )
        )
    return out
