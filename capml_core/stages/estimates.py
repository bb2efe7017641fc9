"""Independent estimates of Eg(T) from the same potential, beside the MD average (part of the bandgaps stage).

For each composition's lowest-energy structure (the disorder scan's) with harmonic force constants from the
phonons stage (MACE), at every temperature of ``gaps.estimate_temperatures_k`` (default: the MD's):

- ``harmonic-classical`` / ``harmonic-quantum``: the gap model averaged over ``gaps.estimate_samples``
  configurations of the harmonic canonical ensemble (:mod:`capml_core.physics.sampling`), Boltzmann or
  Bose-Einstein amplitudes: their difference estimates the zero-point renormalisation classical MD cannot give;
- ``special-displacement``: Zacharias-Giustino's one configuration (and its mirror), quantum amplitudes;
- ``special-displacement-renormalised``: the same from DynaPhoPy's renormalised force constants of the MD run at
  (x, T), where the phonons stage fitted every mode (an anharmonic variant);
- ``dft-phonon-sampled``: no model at all: the high-level gaps of the dataset's phonon-sampled cells (kind
  'thermal') at (x, T) against its equilibrium cells at x, where both were labelled (the bundled GPAW data).

Imaginary harmonic modes (the cubic cell is a saddle) are sampled at |ω| (``imaginary_treatment = 'abs'``) and,
to show their effect, also left out ('exclude'); modes below ``gaps.estimate_floor_thz`` are left out in both.
Rows go to ``gap_estimates`` keyed by the gap ensemble; with ``gaps.estimate_dft`` the special displacements of the
compositions checked with DFT (``gaps.reference_compositions``) are also computed at the reference level.
Units: eV, K, THz, Å.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import numpy as np
import pandas as pd

from capml_core.config.schema import RunConfig
from capml_core.models.gnn import predict_gaps_per_model
from capml_core.physics.sampling import (
    canonical_displacements,
    mean_square_displacement,
    mode_variances,
    normal_modes,
    special_displacement,
)
from capml_core.physics.statistics import ensemble_spread
from capml_core.store.database import Store
from capml_core.store.queries import lowest_energy_structures
from capml_core.system.structures import quantize, structure_hash

logger = logging.getLogger(__name__)

#: The estimate methods, in the order reports show them.
ESTIMATE_METHODS = (
    "harmonic-classical",
    "harmonic-quantum",
    "special-displacement",
    "special-displacement-renormalised",
    "dft-phonon-sampled",
)


#: The estimates built from one set of force constants: (method, quantum amplitudes).
HARMONIC_METHODS = {"harmonic-classical": False, "harmonic-quantum": True, "special-displacement": True}
RENORMALISED = "special-displacement-renormalised"


def _harmonic_row(
    atoms,
    force_constants,
    modes,
    config: RunConfig,
    method: str,
    treatment: str,
    temperature_k: float,
    models,
    *,
    seed: int,
):
    """One estimate's row (without structure and Eg(0)) and its configurations (canonical draws seeded by seed)."""
    gaps = config.gaps
    quantum = HARMONIC_METHODS.get(method, True)
    imaginary = "exclude" if treatment == "exclude" else "abs"
    variances, how = mode_variances(
        modes, temperature_k, quantum=quantum, imaginary=imaginary, floor_thz=gaps.estimate_floor_thz
    )
    if method in ("special-displacement", RENORMALISED):
        configurations = special_displacement(atoms, modes, variances)
    else:
        configurations = canonical_displacements(
            atoms,
            force_constants,
            temperature_k,
            gaps.estimate_samples,
            quantum=quantum,
            imaginary=imaginary,
            floor_thz=gaps.estimate_floor_thz,
            seed=seed,
        )
    mean, error, _ = _model_average(models, configurations, gaps.batch_size)
    row = {
        "method": method,
        "imaginary_treatment": treatment,
        "n_configurations": len(configurations),
        "gap_ev": mean,
        "error_ev": error,
        "n_imaginary": how.n_imaginary,
        "n_excluded": how.n_excluded,
        "min_frequency_thz": how.min_frequency_thz,
        "rms_displacement_a": float(np.sqrt(mean_square_displacement(modes, variances).mean())),
        "note": how.describe(),
    }
    return row, configurations


def _model_average(models, structures, batch_size: int) -> tuple[float, float, float]:
    """Ensemble-mean gap over configurations: (mean, its error from the configurations and the ensemble, spread)."""
    per_model = predict_gaps_per_model(structures, models, batch_size=batch_size)  # (models, configurations)
    series = per_model.mean(axis=0)
    statistical = float(np.std(series, ddof=1) / np.sqrt(len(series))) if len(series) > 1 else 0.0
    model = ensemble_spread(per_model.mean(axis=1))
    return float(series.mean()), float(np.hypot(statistical, model)), model


def dft_phonon_sampled(store: Store, level: str) -> pd.DataFrame:
    """Mean high-level gap of the dataset's phonon-sampled cells per (x, T), against its equilibrium cells at x."""
    rows = store.query(
        """SELECT s.composition_x, s.kind, s.temperature_k, l.gap_ev FROM labels l
           JOIN structures s USING (structure_hash)
           WHERE l.level = ? AND l.status = 'ok' AND l.gap_ev IS NOT NULL
             AND s.kind IN ('thermal', 'equilibrium')""",
        [level],
    )
    if rows.empty:
        return pd.DataFrame()
    rows["composition_x"] = rows["composition_x"].round(6)
    static = rows[rows["kind"] == "equilibrium"].groupby("composition_x")["gap_ev"].agg(["mean", "count"])
    thermal = rows[rows["kind"] == "thermal"].groupby(["composition_x", "temperature_k"])["gap_ev"]
    out = []
    for (x, t), gaps in thermal:
        if x not in static.index or len(gaps) < 2:
            continue
        eg0 = float(static.loc[x, "mean"])
        out.append(
            {
                "composition_x": float(x),
                "temperature_k": float(t),
                "n_configurations": len(gaps),
                "gap_ev": float(gaps.mean()),
                "error_ev": float(gaps.std(ddof=1) / np.sqrt(len(gaps))),
                "static_gap_ev": eg0,
                "note": f"{len(gaps)} labelled thermal cells; Eg(0): {int(static.loc[x, 'count'])} equilibrium cells",
            }
        )
    return pd.DataFrame(out)


def run_estimates(
    store: Store,
    config: RunConfig,
    *,
    ensemble_id: str,
    scan_id: str,
    mace_model_id: str,
    models: list,
    static_gaps: dict[str, float],
    run_id: str | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> pd.DataFrame:
    """Compute and store the estimates of the module doc for one gap ensemble; returns its ``gap_estimates`` rows.

    ``static_gaps``: Eg(0) (eV) of the ensemble per structure hash (the bandgaps stage's). Resumable: each
    composition's estimates are stored when it is done, and a (structure, T, method, treatment) already stored for
    the ensemble is kept. ``progress(done, total)`` counts compositions.
    """
    gaps = config.gaps
    if gaps.estimate_samples == 0:
        return pd.DataFrame()
    temperatures = gaps.estimate_temperatures_k or config.md.temperatures_k
    structures = lowest_energy_structures(store, scan_id)
    harmonic = store.query(
        "SELECT structure_hash, artifact_id FROM phonon_harmonic WHERE model_id = ? AND displacement_a = ?",
        [mace_model_id, config.phonons.displacement_a],
    ).set_index("structure_hash")
    done = set(
        store.query(
            "SELECT structure_hash, temperature_k, method, imaginary_treatment FROM gap_estimates "
            "WHERE ensemble_id = ?",
            [ensemble_id],
        ).itertuples(index=False, name=None)
    )
    renormalised = store.query(
        """SELECT m.structure_hash, m.temperature_k, p.artifact_id FROM md_runs m JOIN phonon_anharmonic p USING (md_id)
           WHERE m.model_id = ? AND p.artifact_id IS NOT NULL""",
        [mace_model_id],
    )
    for i, (x, atoms) in enumerate(structures.items()):
        rows, dft_jobs = _composition_estimates(
            store,
            config,
            x,
            atoms,
            models,
            ensemble_id=ensemble_id,
            eg0_ev=static_gaps.get(structure_hash(atoms)),
            temperatures=temperatures,
            harmonic=harmonic,
            renormalised=renormalised,
            done=done,
            run_id=run_id,
        )
        if dft_jobs:
            _special_displacement_dft(store, config, dft_jobs, run_id)
        if rows:  # stored per composition: an interruption keeps every finished one
            with store.write() as writer:
                writer.add_rows("gap_estimates", rows)
        if progress is not None:
            progress(i + 1, len(structures))
    from capml_core.stages.labelling import gap_reference_level

    level = gap_reference_level(config)
    sampled = dft_phonon_sampled(store, level) if level else pd.DataFrame()
    if not sampled.empty:
        fresh = [
            {
                "ensemble_id": ensemble_id,
                "structure_hash": f"dataset:{level}:{r.composition_x:.6f}",
                "composition_x": r.composition_x,
                "temperature_k": r.temperature_k,
                "method": "dft-phonon-sampled",
                "imaginary_treatment": "dataset",
                "n_configurations": int(r.n_configurations),
                "gap_ev": r.gap_ev,
                "error_ev": r.error_ev,
                "static_gap_ev": r.static_gap_ev,
                "relative_change": (r.gap_ev - r.static_gap_ev) / r.static_gap_ev,
                "dft_gap_ev": r.gap_ev,
                "note": r.note,
                "run_id": run_id,
            }
            for r in sampled.itertuples(index=False)
            if (f"dataset:{level}:{r.composition_x:.6f}", r.temperature_k, "dft-phonon-sampled", "dataset") not in done
        ]
        if fresh:
            with store.write() as writer:
                writer.add_rows("gap_estimates", fresh)
    return estimates_table(store, ensemble_id)


def _composition_estimates(
    store: Store,
    config: RunConfig,
    x: float,
    atoms,
    models: list,
    *,
    ensemble_id: str,
    eg0_ev: float | None,
    temperatures: list[float],
    harmonic: pd.DataFrame,
    renormalised: pd.DataFrame,
    done: set,
    run_id: str | None,
) -> tuple[list[dict[str, Any]], list[tuple[dict[str, Any], list]]]:
    """The estimate rows of one composition not stored yet, and its special displacements to compute in DFT.

    ``eg0_ev``: the ensemble's Eg(0) of the structure; ``harmonic`` its force-constant artifacts by structure hash,
    ``renormalised`` DynaPhoPy's of the MD runs; ``done``: the (structure, T, method, treatment) already stored.
    """
    rows: list[dict[str, Any]] = []
    dft_jobs: list[tuple[dict[str, Any], list]] = []
    digest = structure_hash(atoms)
    if digest not in harmonic.index or eg0_ev is None:
        logger.info("estimates x = %.3f: no harmonic force constants of %s (capml phonons)", x, digest[:12])
        return rows, dft_jobs
    fc = store.load_arrays(harmonic.loc[digest, "artifact_id"])["force_constants"]
    modes = normal_modes(fc, atoms.get_masses())
    for t in temperatures:
        base = {
            "ensemble_id": ensemble_id,
            "structure_hash": digest,
            "composition_x": x,
            "temperature_k": t,
            "run_id": run_id,
            "static_gap_ev": eg0_ev,
        }
        seed = 1000 * config.run.seed + int(round(1000 * x)) + int(round(t))
        for treatment in ("abs", "exclude"):
            for method in HARMONIC_METHODS:
                if (digest, t, method, treatment) in done:
                    continue
                row, configurations = _harmonic_row(atoms, fc, modes, config, method, treatment, t, models, seed=seed)
                rows.append({**base, **row, "relative_change": (row["gap_ev"] - eg0_ev) / eg0_ev})
                if method == "special-displacement" and _estimated_with_dft(config, x, t):
                    dft_jobs.append((rows[-1], configurations))
        # the anharmonic variant: DynaPhoPy's renormalised force constants of the MD run at (x, T)
        of_run = renormalised[(renormalised["structure_hash"] == digest) & np.isclose(renormalised["temperature_k"], t)]
        if len(of_run) and (digest, t, RENORMALISED, "renormalised") not in done:
            arrays = store.load_arrays(of_run["artifact_id"].iloc[0])
            if "renormalised_force_constants" in arrays:
                r_fc = arrays["renormalised_force_constants"]
                r_modes = normal_modes(r_fc, atoms.get_masses())
                row, _ = _harmonic_row(atoms, r_fc, r_modes, config, RENORMALISED, "renormalised", t, models, seed=seed)
                row["note"] = "DynaPhoPy renormalised force constants of the MD run; " + row["note"]
                rows.append({**base, **row, "relative_change": (row["gap_ev"] - eg0_ev) / eg0_ev})
    return rows, dft_jobs


def _estimated_with_dft(config: RunConfig, composition_x: float, temperature_k: float) -> bool:
    """Whether the special displacement of (x, T) is also computed at the reference level (``gaps.estimate_dft``)."""
    gaps = config.gaps
    at = gaps.estimate_dft_temperatures_k
    wanted = at is None or any(np.isclose(temperature_k, t) for t in at)
    return bool(gaps.estimate_dft and wanted and config.is_gap_checked(composition_x))


def _special_displacement_dft(store: Store, config: RunConfig, jobs: list, run_id: str | None) -> None:
    """The reference-level gap of special displacements (mean over u and −u), written into their rows."""
    from capml_core.stages.labelling import reference_gaps, store_check_structures

    hashes = [
        store_check_structures(
            store,
            [
                (
                    [quantize(a) for a in configurations],
                    f"special displacement ({row['imaginary_treatment']}) of {row['structure_hash']}",
                )
            ],
            kind="gap-check",
            composition_x=row["composition_x"],
            temperature_k=row["temperature_k"],
            run_id=run_id,
        )[0]
        for row, configurations in jobs
    ]
    _, gaps = reference_gaps(store, config, [h for pair in hashes for h in pair], run_id=run_id)
    for (row, _), pair in zip(jobs, hashes, strict=True):
        values = [gaps.get(h) for h in pair]
        if all(v is not None for v in values):
            row["dft_gap_ev"] = float(np.mean(values))


def estimates_table(store: Store, ensemble_id: str) -> pd.DataFrame:
    """The stored estimates of one ensemble, by composition, temperature and method."""
    return store.query(
        "SELECT * FROM gap_estimates WHERE ensemble_id = ? ORDER BY composition_x, temperature_k, method, "
        "imaginary_treatment",
        [ensemble_id],
    )
