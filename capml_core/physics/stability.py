"""Dynamic stability of a structure at T: the verdict from harmonic and renormalised phonons, as numbers."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, NamedTuple

import numpy as np
from pydantic import BaseModel

from capml_core.errors import SitesLeftError
from capml_core.physics.anharmonic import AnharmonicPhonons
from capml_core.physics.harmonic import IMAGINARY_TOLERANCE_THZ
from capml_core.provenance import content_key

#: Above this time-averaged distance from its site (Å) an atom is named in a verdict: the structure sits in a
#: distorted well (thermal motion about a site averages to ~0.1 Å or less over a few ps).
SITE_OFFSET_CAUTION_A = 0.2


#: Fits narrower than this fraction of the thermostat's broadening γ/2π are named in a verdict as uncertain.
NARROW_FIT_FRACTION = 0.75


# ------------------------------------------------------------------------------------------- verdict
class ModeCheck(NamedTuple):
    """One optical mode as the verdict sees it (THz).

    ``harmonic_thz`` negative: imaginary at 0 K; ``renormalised_thz`` and ``linewidth_thz`` (FWHM) NaN: no
    Lorentzian fitted; ``problem``: "no-fit", "soft", "overdamped" or None (a well-defined real phonon).
    """

    index: int
    harmonic_thz: float
    renormalised_thz: float
    linewidth_thz: float
    problem: str | None


#: Reason codes of a :class:`StabilityVerdict`.
VERDICT_CODES = ("stable", "unstable-modes", "distorted", "sites-left", "no-phonons")


@dataclass(frozen=True)
class StabilityVerdict:
    """Is a structure dynamically stable at an MD temperature: the numbers (the prose is :meth:`summary`).

    Attributes
    ----------
    temperature_k
        MD temperature (K).
    stable
        The verdict.
    reason_code
        "stable"; "unstable-modes" (some optical mode has no real renormalised frequency); "distorted" (all
        modes real, but the time-averaged structure lies farther than ``site_offset_limit_a`` from its sites);
        "sites-left" (atoms left their sites: no phonons about them, see :meth:`sites_left`); "no-phonons"
        (the analysis failed, ``message`` says why, see :meth:`no_phonons`).
    n_optical
        Non-acoustic modes judged.
    n_imaginary_harmonic
        Optical modes imaginary at 0 K (below −:data:`~capml_core.physics.harmonic.IMAGINARY_TOLERANCE_THZ`).
    n_imaginary_renormalised
        Optical modes without a real renormalised frequency: ``n_no_fit + n_soft + n_overdamped``.
    n_no_fit, n_soft, n_overdamped
        Modes whose Lorentzian fit failed; whose peak lies at or below the tolerance; whose net linewidth is at
        least twice the peak.
    n_stabilised
        Modes below −tolerance at 0 K that have a real renormalised frequency (stabilised by anharmonicity).
    softest_harmonic_thz, softest_renormalised_thz
        Lowest harmonic / fitted renormalised frequency of the optical modes (THz; None: none).
    offending
        Every optical mode without a real renormalised frequency: failed fits first, then by peak, softest first.
    named
        The (up to) three modes the summary names: the first offending ones, or the softest optical modes.
    narrow_modes
        Modes whose fitted FWHM is below :data:`NARROW_FIT_FRACTION` × the thermostat's broadening.
    thermostat_broadening_thz
        γ/2π of the Langevin thermostat (THz) the damping test subtracts.
    site_offset_atom, site_offset_symbol, site_offset_a
        The atom farthest (time-averaged) from its site, its symbol (None if not given), the distance (Å).
    site_offset_limit_a
        The limit on it (Å): ``max_site_offset_a`` if a criterion (None: not one), or the limit atoms exceeded.
    distorted
        Whether the site offset exceeds the criterion.
    message
        The error of an analysis that could not be done ("no-phonons").
    """

    temperature_k: float
    stable: bool
    reason_code: str
    n_optical: int = 0
    n_imaginary_harmonic: int = 0
    n_imaginary_renormalised: int = 0
    n_no_fit: int = 0
    n_soft: int = 0
    n_overdamped: int = 0
    n_stabilised: int = 0
    softest_harmonic_thz: float | None = None
    softest_renormalised_thz: float | None = None
    offending: tuple[ModeCheck, ...] = ()
    named: tuple[ModeCheck, ...] = ()
    narrow_modes: tuple[int, ...] = ()
    thermostat_broadening_thz: float = 0.0
    site_offset_atom: int | None = None
    site_offset_symbol: str | None = None
    site_offset_a: float | None = None
    site_offset_limit_a: float | None = None
    distorted: bool = False
    message: str | None = None

    @classmethod
    def sites_left(cls, error: SitesLeftError, *, temperature_k: float, symbol: str | None = None) -> StabilityVerdict:
        """Unstable: the MD's atoms left the sites of the analysed structure (no renormalised phonons about them)."""
        return cls(
            temperature_k=float(temperature_k),
            stable=False,
            reason_code="sites-left",
            site_offset_atom=int(error.atom),
            site_offset_symbol=symbol,
            site_offset_a=float(error.offset_a),
            site_offset_limit_a=float(error.limit_a),
            distorted=True,
        )

    @classmethod
    def no_phonons(cls, temperature_k: float, message: str) -> StabilityVerdict:
        """Unstable: the renormalised phonons could not be computed (a broken MD, a failed analysis)."""
        return cls(temperature_k=float(temperature_k), stable=False, reason_code="no-phonons", message=message)

    def _atom_label(self) -> str:
        symbol = f" ({self.site_offset_symbol})" if self.site_offset_symbol is not None else ""
        return f"atom {self.site_offset_atom}{symbol}"

    def _describe(self, mode: ModeCheck) -> str:
        h = mode.harmonic_thz
        h_text = f"{abs(h):.2f}i" if h < 0 else f"{h:.2f}"
        if mode.problem == "no-fit":
            return f"mode {mode.index} (harmonic {h_text} THz: no Lorentzian fitted)"
        net_width = mode.linewidth_thz - self.thermostat_broadening_thz
        net = f", {net_width:.2f} net of the thermostat" if self.thermostat_broadening_thz else ""
        return (
            f"mode {mode.index} (harmonic {h_text} → {mode.renormalised_thz:.2f} THz, "
            f"FWHM {mode.linewidth_thz:.2f} THz{net})"
        )

    def summary(self) -> str:
        """The verdict in one line: what is unstable, the softest modes, cautions (the stored ``reason``)."""
        t = f"{self.temperature_k:g} K"
        if self.reason_code == "no-phonons":
            return f"no renormalised phonons: {self.message}"
        if self.reason_code == "sites-left":
            return (
                f"unstable at {t}: the structure does not oscillate about its 0 K sites: {self._atom_label()} sits "
                f"{self.site_offset_a:.2f} Å from its site on average (limit {self.site_offset_limit_a:.2f} Å), so "
                "it distorts to another structure or atoms diffuse (no renormalised phonons about these sites)"
            )
        notes = []
        if self.narrow_modes:
            shown = ", ".join(str(m) for m in self.narrow_modes[:6])
            notes.append(
                f"{len(self.narrow_modes)} fits narrower than the thermostat's {self.thermostat_broadening_thz:.2f} "
                f"THz allows (modes {shown}{', ...' if len(self.narrow_modes) > 6 else ''}): their peaks are "
                "uncertain, run longer"
            )
        distorted = None
        if self.distorted:
            distorted = (
                f"{self._atom_label()} sits {self.site_offset_a:.2f} Å from its site on average (limit "
                f"{self.site_offset_limit_a:g} Å): the time-averaged structure is distorted"
            )
        elif (
            self.site_offset_a is not None
            and self.site_offset_limit_a is None
            and self.site_offset_a > SITE_OFFSET_CAUTION_A
        ):
            notes.append(
                f"{self._atom_label()} sits {self.site_offset_a:.2f} Å from its site on average: the time-averaged "
                "structure is distorted, so these are the phonons of a distorted well"
            )
        caution = f" (caution: {'; '.join(notes)})" if notes else ""
        softest = "; ".join(self._describe(m) for m in self.named)
        if self.offending:
            kinds = [
                f"{n} {name}"
                for n, name in (
                    (self.n_no_fit, "without a fitted peak"),
                    (self.n_soft, "soft"),
                    (self.n_overdamped, "overdamped"),
                )
                if n
            ]
            also = f"; {distorted}" if distorted else ""
            return (
                f"unstable at {t}: {len(self.offending)} of {self.n_optical} modes have no real renormalised "
                f"frequency ({', '.join(kinds)}); softest: {softest}{also}{caution}"
            )
        if distorted:
            return (
                f"unstable at {t}: all {self.n_optical} optical modes have real renormalised frequencies, but "
                f"{distorted}; softest: {softest}{caution}"
            )
        extra = (
            f"; {self.n_stabilised} harmonic-imaginary modes stabilised by anharmonicity" if self.n_stabilised else ""
        )
        return (
            f"stable at {t}: all {self.n_optical} optical modes have real renormalised frequencies{extra}; "
            f"softest: {softest}{caution}"
        )


def stability_verdict(
    result: AnharmonicPhonons,
    *,
    tolerance_thz: float = 0.1,
    thermostat_broadening_thz: float = 0.0,
    max_site_offset_a: float | None = None,
    symbols: list[str] | None = None,
) -> StabilityVerdict:
    """Is the structure dynamically stable at the MD temperature? The verdict's numbers (prose: ``.summary()``).

    DynaPhoPy fits peaks of power spectra, which lie at |ω| ≥ 0: a harmonic-imaginary mode that anharmonicity
    stabilises shows up as a real, positive peak; an unstable one has no oscillation to show. Rule: every
    non-acoustic mode must be a well-defined real phonon, that is (1) its Lorentzian fit succeeded (a failed fit
    means no peak in its spectrum, or one narrower than the resolution: counted as unstable, to be safe), (2) its peak
    lies above ``tolerance_thz`` (THz; a peak at ~0 or a negative fitted position means no restoring force) and
    (3) it is under-damped, FWHM < 2 × peak (a damped oscillator with γ ≥ 2ω0 does not oscillate; its spectrum
    is centred at zero). Stable when all are; the three acoustic modes are excluded.

    ``thermostat_broadening_thz`` (THz) is the width a Langevin thermostat adds to every mode (γ/2π for a
    friction γ): the damping test uses the anharmonic linewidth net of it, FWHM − γ/2π < 2 × peak, so that the
    thermostat alone does not make a soft but real mode (peak below γ/4π, 0.4 THz for the paper's friction)
    count as overdamped. Fits narrower than :data:`NARROW_FIT_FRACTION` × γ/2π are listed (``narrow_modes``) and
    named in the summary: the thermostat broadens every mode by γ/2π, so such a fit does not describe its
    spectrum well.

    ``result.site_offsets_a`` (Å) says where the atoms sit on average. Real renormalised frequencies of a structure
    whose time-averaged positions are off its sites describe oscillations in a distorted well, not a stabilised
    high-symmetry phase. With ``max_site_offset_a`` (Å) such a structure is unstable (4): every atom's mean position
    must lie within it of its site; without, an offset above :data:`SITE_OFFSET_CAUTION_A` is named in the summary.
    ``symbols`` (chemical symbols in atom order) only label the atom.
    """
    n = len(result.harmonic_thz)
    modes = np.array([i for i in range(n) if i not in set(result.acoustic_modes)], dtype=int)
    peaks = np.asarray(result.renormalised_thz, dtype=float)[modes]
    widths = np.asarray(result.linewidths_thz, dtype=float)[modes]
    harmonic = np.asarray(result.harmonic_thz, dtype=float)[modes]
    failed = ~np.isfinite(peaks)
    soft = ~failed & (peaks <= tolerance_thz)
    overdamped = ~failed & ~soft & (widths - thermostat_broadening_thz >= 2.0 * peaks)
    bad = failed | soft | overdamped
    problem = np.where(failed, "no-fit", np.where(soft, "soft", np.where(overdamped, "overdamped", "")))

    def check(k: int) -> ModeCheck:
        return ModeCheck(int(modes[k]), float(harmonic[k]), float(peaks[k]), float(widths[k]), problem[k] or None)

    narrow = ~failed & (widths < NARROW_FIT_FRACTION * thermostat_broadening_thz)
    order = np.argsort(np.where(failed, -np.inf, peaks)[bad], kind="stable")
    offending = tuple(check(k) for k in np.flatnonzero(bad)[order])
    named = offending[:3] if offending else tuple(check(k) for k in np.argsort(peaks, kind="stable")[:3])
    site: dict[str, Any] = {}
    distorted = False
    if result.site_offsets_a is not None and len(result.site_offsets_a):
        atom = int(np.argmax(result.site_offsets_a))
        offset = float(result.site_offsets_a[atom])
        distorted = max_site_offset_a is not None and offset > max_site_offset_a
        site = {
            "site_offset_atom": atom,
            "site_offset_symbol": symbols[atom] if symbols is not None else None,
            "site_offset_a": offset,
            "site_offset_limit_a": None if max_site_offset_a is None else float(max_site_offset_a),
        }
    code = "unstable-modes" if offending else "distorted" if distorted else "stable"
    return StabilityVerdict(
        temperature_k=float(result.temperature_k),
        stable=code == "stable",
        reason_code=code,
        n_optical=len(modes),
        n_imaginary_harmonic=int(np.sum(harmonic < -IMAGINARY_TOLERANCE_THZ)),
        n_imaginary_renormalised=len(offending),
        n_no_fit=int(failed.sum()),
        n_soft=int(soft.sum()),
        n_overdamped=int(overdamped.sum()),
        n_stabilised=int(np.sum((harmonic < -tolerance_thz) & ~bad)),
        softest_harmonic_thz=float(harmonic.min()) if len(modes) else None,
        softest_renormalised_thz=float(np.nanmin(peaks)) if np.isfinite(peaks).any() else None,
        offending=offending,
        named=named,
        narrow_modes=tuple(int(m) for m in modes[narrow]),
        thermostat_broadening_thz=float(thermostat_broadening_thz),
        distorted=distorted,
        **site,
    )


#: Version of the verdict rule (:func:`capml_core.physics.stability.stability_verdict`); part of the settings key, so a
#: new rule recomputes stored verdicts. 2: damping judged net of the thermostat's broadening. 3: the time-averaged
#: site offsets (stored, named in the reason; a criterion with ``phonons.max_site_offset_a``) and too-narrow fits.
VERDICT_RULE = 3


def phonon_settings_key(phonons: BaseModel) -> str:
    """Key of what a verdict depends on: the ``[phonons]`` section but its gate, and :data:`VERDICT_RULE`.

    The gate is applied when verdicts are read, so changing it recomputes nothing.
    """
    return content_key({**phonons.model_dump(mode="json", exclude={"gate"}), "verdict_rule": VERDICT_RULE})


def stabilisation_temperatures(verdicts: Iterable[tuple[float, float, bool]]) -> dict[float, float | None]:
    """Per composition: the lowest temperature (K) from which the structure is stable at every higher one.

    ``verdicts``: (composition x, temperature K, stable) of each MD run; None where the highest is unstable.
    """
    points = list(verdicts)
    out: dict[float, float | None] = {}
    for x in sorted({p[0] for p in points}):
        ladder = sorted((t, stable) for px, t, stable in points if px == x)
        onset = None
        for temperature, stable in reversed(ladder):
            if not stable:
                break
            onset = temperature
        out[x] = onset
    return out
