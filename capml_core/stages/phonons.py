"""The ``phonons`` stage: harmonic phonons at 0 K, renormalised phonons per MD run, dynamic-stability gate.

For each composition's lowest-energy structure, the harmonic phonons (:mod:`capml_core.physics.harmonic`) give the
force constants and the 0 K imaginary modes; for each of its MD runs (:mod:`capml_core.stages.dynamics`), DynaPhoPy
(:mod:`capml_core.physics.anharmonic`) gives the renormalised frequencies and linewidths at Γ of the cell from the
production frames, and :func:`capml_core.physics.stability.stability_verdict` says whether the structure is
dynamically stable at that temperature (a :class:`~capml_core.physics.stability.StabilityVerdict` of numbers;
its ``summary()`` is the stored ``reason``, its numbers fill the row's columns). With ``phonons.gate`` only
stable (structure, temperature) pairs pass on to the band-gap stage; a dropped pair is recorded with the reason.
An analysis that cannot be done (the MD broke the structure, a fit failed everywhere) counts as unstable, with
the error as the reason.

The spectral resolution is ``phonons.resolution_thz`` or, for a short run, 1.05 / (production time), the
finest the trajectory allows. The Langevin thermostat adds about γ/2π to every linewidth; it is stored next to
the linewidths (``thermostat_broadening_thz``) so they can be read net of it, and the verdict's damping test
uses the net linewidths. Units: THz, K, ps.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from ase import Atoms

from capml_core.config.inputs import SystemSection
from capml_core.config.schema import RunConfig
from capml_core.config.stage_sections import MDSection
from capml_core.errors import CapmlError, InvalidInputError, SitesLeftError
from capml_core.models.mace import calculator_forces, load_mace_calculator, resolve_device
from capml_core.physics.anharmonic import renormalised_phonons
from capml_core.physics.harmonic import IMAGINARY_TOLERANCE_THZ, ImaginaryModes, cell_dispersion, harmonic_phonons
from capml_core.physics.md import production_frames, read_trajectory
from capml_core.physics.phonons import unfolded_dispersion
from capml_core.physics.stability import (
    StabilityVerdict,
    phonon_settings_key,
    stabilisation_temperatures,
    stability_verdict,
)
from capml_core.store.database import Store
from capml_core.store.queries import harmonic_phonon_rows, lowest_energy_structures, mace_model_path
from capml_core.system.structures import structure_hash
from capml_core.tables import ResultTable, table
from capml_core.types import ProgressCallback

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class StabilityResult:
    """The verdict for one structure at one MD temperature, as stored in ``phonon_anharmonic``.

    ``reason`` is :meth:`capml_core.physics.stability.StabilityVerdict.summary` (plus the MD's health problems);
    the numbers are the stored columns: modes of the cell, harmonic-imaginary modes at Γ (below −0.05 THz), the
    softest fitted renormalised optical mode and the median optical linewidth (THz), the largest time-averaged
    distance of an atom from its site (Å) and that atom ("3 (S)"); None where the analysis gave none.
    """

    md_id: str
    composition_x: float
    temperature_k: float
    stable: bool
    passes_gate: bool
    reason: str
    n_modes: int | None = None
    n_harmonic_imaginary: int | None = None
    min_renormalised_thz: float | None = None
    median_linewidth_thz: float | None = None
    max_site_offset_a: float | None = None
    site_offset_atom: str | None = None


#: Numeric columns of ``phonon_anharmonic`` a :class:`StabilityResult` carries, with their types.
_STORED_NUMBERS = {
    "n_modes": int,
    "n_harmonic_imaginary": int,
    "min_renormalised_thz": float,
    "median_linewidth_thz": float,
    "max_site_offset_a": float,
    "site_offset_atom": str,
}


def stability_result(row: dict, *, gate: bool) -> StabilityResult:
    """A :class:`StabilityResult` from a ``phonon_anharmonic`` row (a dict); ``passes_gate`` follows ``gate``."""
    import pandas as pd

    def value(name: str):  # int, float, str or None
        v = row.get(name)
        return None if v is None or (not isinstance(v, str) and pd.isna(v)) else _STORED_NUMBERS[name](v)

    return StabilityResult(
        str(row["md_id"]),
        float(row["composition_x"]),
        float(row["temperature_k"]),
        bool(row["stable"]),
        bool(row["stable"]) or not gate,
        row["reason"],
        **{name: value(name) for name in _STORED_NUMBERS},
    )


def unfolded_arrays(cell: Atoms, force_constants: np.ndarray, system: SystemSection, prefix: str = "") -> dict:
    """The dispersion of ``cell`` unfolded onto the parent cell's zone, as arrays to store.

    Empty if ``cell`` is not a supercell of the parent: then only the folded dispersion is drawn.

    Keys ``<prefix>unfolded_distances`` (1/Å), ``<prefix>unfolded_thz`` (THz), ``<prefix>unfolded_weights``,
    ``<prefix>unfolded_tick_distances``, ``<prefix>unfolded_tick_labels``.
    """
    try:
        bands = unfolded_dispersion(cell, force_constants, system.parent.build(), system.supercell)
    except InvalidInputError as err:
        logger.warning("no unfolded dispersion: %s", err)
        return {}
    return {
        f"{prefix}unfolded_distances": bands.distances,
        f"{prefix}unfolded_thz": bands.frequencies_thz,
        f"{prefix}unfolded_weights": bands.weights,
        f"{prefix}unfolded_tick_distances": np.array([d for d, _ in bands.ticks]),
        f"{prefix}unfolded_tick_labels": np.array([label for _, label in bands.ticks]),
    }


def run_phonon_stage(
    store: Store,
    config: RunConfig,
    *,
    model_id: str,
    scan_id: str,
    run_id: str | None = None,
    progress: ProgressCallback | None = None,
) -> tuple[list, list[StabilityResult]]:
    """Harmonic phonons, then DynaPhoPy and the verdict for every MD run (MACE ``model_id``, scan ``scan_id``).

    The structures are the lowest-energy structures of disorder scan ``scan_id``.

    Returns the harmonic results and one verdict per MD run; MD runs analysed before with the same settings
    (:func:`phonon_settings_key`) are not redone, those analysed with other settings are redone and replaced.
    """
    phonons = config.phonons
    harmonic = run_harmonic_phonons(store, config, model_id=model_id, scan_id=scan_id, run_id=run_id)
    by_structure = {h.structure_hash: h for h in harmonic}
    runs = store.query(
        "SELECT * FROM md_runs WHERE complete AND structure_hash IN (SELECT unnest(?)) ORDER BY composition_x, "
        "temperature_k",
        [list(by_structure)],
    )
    key = phonon_settings_key(phonons)
    done = set(store.query("SELECT md_id FROM phonon_anharmonic WHERE settings_key = ?", [key])["md_id"])
    for i, run in enumerate(runs.itertuples(index=False)):
        if run.md_id in done:
            continue
        arrays = store.load_arrays(by_structure[run.structure_hash].artifact_id)
        atoms = store.load_atoms(run.structure_hash)
        trajectory = read_trajectory(store.project_dir / run.path)
        run_md = MDSection.model_validate_json(run.settings_json)  # the run's own equilibration and friction
        frames = production_frames(trajectory, run_md.equilibration_ps)
        frame_ps = float(np.median(np.diff(trajectory["time_fs"]))) / 1000.0
        resolution = max(phonons.resolution_thz, 1.05 / (frame_ps * (len(frames) - 1)))
        thermostat = run_md.friction_per_fs * 1000.0 / (2.0 * np.pi)  # THz
        row = {
            "md_id": run.md_id,
            "structure_hash": run.structure_hash,
            "composition_x": run.composition_x,
            "temperature_k": run.temperature_k,
            "resolution_thz": resolution,
            "thermostat_broadening_thz": thermostat,
            "n_harmonic_imaginary": int(np.sum(arrays["gamma_frequencies_thz"] < -IMAGINARY_TOLERANCE_THZ)),
            "run_id": run_id,
            "settings_key": key,
        }
        try:
            result = renormalised_phonons(
                atoms,
                arrays["force_constants"],
                trajectory,
                temperature_k=float(run.temperature_k),
                resolution_thz=resolution,
                frames=frames,
            )
            verdict = stability_verdict(
                result,
                tolerance_thz=phonons.stability_tolerance_thz,
                thermostat_broadening_thz=thermostat,
                max_site_offset_a=phonons.max_site_offset_a,
                symbols=atoms.get_chemical_symbols(),
            )
            optical = np.setdiff1d(np.arange(len(result.harmonic_thz)), result.acoustic_modes)
            saved = {
                "harmonic_thz": result.harmonic_thz,
                "renormalised_thz": result.renormalised_thz,
                "linewidths_thz": result.linewidths_thz,
                "acoustic_modes": np.asarray(result.acoustic_modes),
            }
            if result.renormalised_force_constants is not None:  # every mode fitted: a renormalised dispersion
                saved["renormalised_force_constants"] = result.renormalised_force_constants
                bands = cell_dispersion(atoms, result.renormalised_force_constants)
                saved["renormalised_dispersion_thz"] = bands.frequencies_thz
                saved["distances"] = bands.distances
                saved |= unfolded_arrays(atoms, result.renormalised_force_constants, config.system, "renormalised_")
            with store.write() as writer:
                row["artifact_id"] = writer.save_arrays(
                    "phonons-anharmonic", saved, run_id=run_id, meta={"md_id": run.md_id}
                )
            row.update(
                {
                    "n_modes": len(result.harmonic_thz),
                    "min_renormalised_thz": verdict.softest_renormalised_thz,
                    "median_linewidth_thz": float(np.nanmedian(result.linewidths_thz[optical]))
                    if np.isfinite(result.linewidths_thz[optical]).any()
                    else None,
                }
            )
        except SitesLeftError as err:  # the run started from this very structure: the atom order is right
            verdict = StabilityVerdict.sites_left(
                err, temperature_k=float(run.temperature_k), symbol=atoms[err.atom].symbol
            )
        except CapmlError as err:  # a broken MD, a failed analysis: unstable, with the reason
            verdict = StabilityVerdict.no_phonons(float(run.temperature_k), str(err))
        if verdict.site_offset_atom is not None:
            row["max_site_offset_a"] = verdict.site_offset_a
            row["site_offset_atom"] = f"{verdict.site_offset_atom} ({verdict.site_offset_symbol})"
        stable, reason = verdict.stable, verdict.summary()
        if run.status != "ok" and run.problems:
            reason += f" (MD health: {run.problems})"
        row.update({"stable": stable, "passes_gate": stable or not phonons.gate, "reason": reason})
        with store.write() as writer:
            writer.delete_rows("phonon_anharmonic", {"md_id": run.md_id})  # one computed with other settings
            writer.add_rows("phonon_anharmonic", [row])
        logger.info("phonons x = %.3f, %.0f K: %s", run.composition_x, run.temperature_k, reason)
        if progress is not None:
            progress(i + 1, len(runs))
    verdicts = store.query(
        f"""SELECT md_id, composition_x, temperature_k, stable, passes_gate, reason, {", ".join(_STORED_NUMBERS)}
            FROM phonon_anharmonic WHERE md_id IN (SELECT unnest(?)) ORDER BY composition_x, temperature_k""",
        [runs["md_id"].tolist()],
    )
    # the gate follows the current config; the stored passes_gate is the analysis-time one
    return harmonic, [stability_result(r, gate=phonons.gate) for r in verdicts.to_dict("records")]


def phonon_tables(harmonic: Sequence[HarmonicResult], verdicts: Sequence[StabilityResult]) -> list[ResultTable]:
    """Harmonic phonons at 0 K per composition, the verdict per MD run, and the stabilisation temperatures."""
    harmonic_rows = [
        (
            f"{h.composition_x:.4g}",
            str(h.imaginary.n_gamma),
            f"{h.imaginary.min_frequency_thz:.2f}",
            str(len(h.imaginary.branches)),
        )
        for h in harmonic
    ]
    verdict_rows = [
        (
            f"{v.composition_x:.4g}",
            f"{v.temperature_k:g}",
            "yes" if v.stable else "no",
            "yes" if v.passes_gate else "dropped",
            v.reason,
        )
        for v in verdicts
    ]
    dropped = [i for i, v in enumerate(verdicts) if not v.passes_gate]
    onsets = stabilisation_temperatures((v.composition_x, v.temperature_k, v.stable) for v in verdicts)
    onset = "stable from: " + ", ".join(f"x = {x:g}: {t:g} K" if t else f"x = {x:g}: never" for x, t in onsets.items())
    return [
        table(
            "harmonic phonons",
            ("x", "imaginary at Γ (0 K)", "softest (THz)", "unstable branches"),
            harmonic_rows,
        ),
        table(
            "dynamic stability (DynaPhoPy)",
            ("x", "T (K)", "stable", "band-gap stage", "reason"),
            verdict_rows,
            warnings=dropped,
            notes=[onset] if verdicts else [],
        ),
    ]


# ------------------------------------------------------------------------------------------- the stage
@dataclass(frozen=True)
class HarmonicResult:
    """Harmonic phonons of one relaxed structure."""

    structure_hash: str
    composition_x: float
    imaginary: ImaginaryModes
    artifact_id: str


def run_harmonic_phonons(
    store: Store,
    config: RunConfig,
    *,
    model_id: str,
    scan_id: str,
    run_id: str | None = None,
    progress: ProgressCallback | None = None,
) -> list[HarmonicResult]:
    """Harmonic phonons (MACE model ``model_id``), stored once per (structure, model, step).

    The structures are each composition's lowest-energy structure of disorder scan ``scan_id``.

    Force constants from MACE (float64) by phonopy finite displacements of ``phonons.displacement_a``; then Γ
    modes, dispersion, DOS and imaginary modes.
    """
    import json

    store.initialise()
    model_path = mace_model_path(store, model_id)
    structures = lowest_energy_structures(store, scan_id)
    displacement = config.phonons.displacement_a
    done = store.query(
        "SELECT structure_hash FROM phonon_harmonic WHERE model_id = ? AND displacement_a = ?", [model_id, displacement]
    )
    finished = set(done["structure_hash"])
    calculator = None
    for i, (x, atoms) in enumerate(structures.items()):
        digest = structure_hash(atoms)
        if digest in finished:
            continue
        if calculator is None:
            calculator = load_mace_calculator(model_path, device=resolve_device(config.mlip.device), dtype="float64")
        computed = harmonic_phonons(atoms, calculator_forces(calculator), displacement_a=displacement)
        gamma, bands, imaginary = computed.gamma, computed.dispersion, computed.imaginary
        dos_f, dos = computed.dos_frequencies_thz, computed.dos_states_per_thz
        arrays = {
            "force_constants": computed.force_constants,
            "gamma_frequencies_thz": gamma.frequencies_thz,
            "gamma_eigenvectors_real": gamma.eigenvectors.real,
            "gamma_eigenvectors_imag": gamma.eigenvectors.imag,
            "distances": bands.distances,
            "dispersion_thz": bands.frequencies_thz,
            "tick_distances": np.array([d for d, _ in bands.ticks]),
            "tick_labels": np.array([label for _, label in bands.ticks]),
            "dos_frequencies_thz": dos_f,
            "dos_states_per_thz": dos,
            **unfolded_arrays(computed.cell, computed.force_constants, config.system),
        }
        with store.write() as writer:
            artifact = writer.save_arrays(
                "phonons", arrays, run_id=run_id, meta={"structure_hash": digest, "model_id": model_id}
            )
            writer.add_rows(
                "phonon_harmonic",
                [
                    {
                        "structure_hash": digest,
                        "model_id": model_id,
                        "displacement_a": displacement,
                        "composition_x": x,
                        "n_modes": len(gamma.frequencies_thz),
                        "n_imaginary_gamma": imaginary.n_gamma,
                        "min_frequency_thz": imaginary.min_frequency_thz,
                        "imaginary_branches_json": json.dumps(imaginary.branches),
                        "artifact_id": artifact,
                        "run_id": run_id,
                    }
                ],
            )
        if progress is not None:
            progress(i + 1, len(structures))
    rows = harmonic_phonon_rows(store, model_id, displacement)
    wanted = {structure_hash(a) for a in structures.values()}
    return [
        HarmonicResult(
            r.structure_hash,
            float(r.composition_x),
            ImaginaryModes(
                int(r.n_imaginary_gamma),
                float(r.min_frequency_thz),
                [tuple(b) for b in json.loads(r.imaginary_branches_json)],
            ),
            r.artifact_id,
        )
        for r in rows.itertuples(index=False)
        if r.structure_hash in wanted
    ]
