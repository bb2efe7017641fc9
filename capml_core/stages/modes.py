"""Mode-resolved gap changes (stage ``modes``): frozen Γ-phonon distortions at thermal amplitudes.

For each composition's relaxed lowest-energy structure and each temperature T of ``gaps.mode_temperatures_k``,
every Γ mode ν of its harmonic phonons (:mod:`capml_core.physics.harmonic`: the whole cell, so its Γ point carries
the parent's X, M and R modes too) is frozen in at the paper's thermal amplitude: atom j moves by

    u_j = ± sqrt(ħ (1 + 2 n(ω_ν, T)) / (2 m_j ω_ν)) e_νj,

with e_ν the normalised eigenvector of the dynamical matrix and n the Bose-Einstein occupation. The GNN
ensemble gives the gap of both distorted structures; ΔEg = (Eg(+u) + Eg(−u)) / 2 − Eg(0) (the mean of the two
signs removes the part linear in u, which a thermal average removes too) and ΔEg / Eg(0). The three acoustic
modes (the modes most like rigid translations) and imaginary modes (no thermal amplitude) are recorded with
that status and not frozen in. The science is :func:`capml_core.physics.modes.frozen_mode_gaps` (callable
without a store); this stage feeds it the stored Γ modes and the GNN ensemble, and stores one row per mode.

Species shares: the fraction of Σ_j |u_j|² carried by each element, and by the substituted sublattice's
species together (e.g. 'Br/I'); ``dominant`` is the largest of the groups (elements outside the sublattice,
and the sublattice). DFT check: for the compositions in ``gaps.reference_compositions``, ``gaps.reference_modes``
modes spread over the frequency range, at the highest mode temperature, are also computed at the reference
level (the distorted structures are stored with kind 'frozen-mode', which is never training data).
Units: THz, K, Å, eV, amu.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd
from ase import Atoms

from capml_core.config.schema import RunConfig
from capml_core.errors import NotComputedError
from capml_core.models.gnn import load_ensemble, predict_gaps_per_model
from capml_core.models.mace import resolve_device
from capml_core.physics.modes import (
    FrozenGroup,
    FrozenModeGap,
    frozen_groups,
    frozen_mode_gaps,
    spread_over_frequencies,
)
from capml_core.physics.phonons import GammaModes, gamma_modes
from capml_core.provenance import content_key
from capml_core.stages.labelling import gap_reference_level, reference_gaps, store_check_structures
from capml_core.store.database import Store
from capml_core.store.queries import ensemble_level, ensemble_model_dirs, harmonic_phonon_rows, lowest_energy_structures
from capml_core.system.structures import structure_hash
from capml_core.tables import ResultTable, table

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class ModeGap:
    """The gap change of one frozen mode at one temperature (eV; relative change a fraction)."""

    composition_x: float
    temperature_k: float
    mode: int
    frequency_thz: float
    status: str
    dominant: str | None
    delta_ev: float | None
    relative_change: float | None
    reference_delta_ev: float | None


def mode_table(result: Sequence[ModeGap], *, top: int = 5) -> ResultTable:
    """Per composition and temperature the ``top`` frozen modes of largest |ΔEg| and every DFT-checked one."""
    rows = []
    for x, temperature in sorted({(m.composition_x, m.temperature_k) for m in result}):
        frozen = [m for m in result if (m.composition_x, m.temperature_k) == (x, temperature) and m.status == "frozen"]
        chosen = sorted(frozen, key=lambda m: -abs(m.delta_ev))[:top]
        chosen += [m for m in frozen if m.reference_delta_ev is not None and m not in chosen]
        for m in sorted(chosen, key=lambda m: m.frequency_thz):
            rows.append(
                (
                    f"{x:.4g}",
                    f"{temperature:g}",
                    str(m.mode),
                    f"{m.frequency_thz:.2f}",
                    str(m.dominant),
                    f"{m.delta_ev:+.4f}",
                    f"{100 * m.relative_change:+.2f} %",
                    "-" if m.reference_delta_ev is None else f"{m.reference_delta_ev:+.4f}",
                )
            )
    columns = ("x", "T (K)", "mode", "ν (THz)", "dominant", "ΔEg (eV)", "ΔEg/Eg(0)", "DFT ΔEg (eV)")
    return table("modes", columns, rows)


def mode_groups(store: Store, ensemble_id: str) -> pd.DataFrame:
    """The stored degenerate subspaces and bands of one ensemble (``gap_mode_groups``)."""
    return store.query(
        "SELECT * FROM gap_mode_groups WHERE ensemble_id = ? ORDER BY composition_x, temperature_k, source, kind, "
        "frequency_lo_thz",
        [ensemble_id],
    )


def group_table(groups: pd.DataFrame, *, top: int = 5) -> ResultTable:
    """Per composition and temperature: every band, and the ``top`` subspaces of largest |ΔEg|, with their flags.

    Flagged rows: beyond the harmonic regime, or not resolved by the gap model (|ΔEg| below its resolution).
    """
    rows, flagged = [], []
    shown = []
    for _, of in groups.groupby(["composition_x", "temperature_k"], sort=True):
        frozen = of[of["status"] == "frozen"]
        shown.append(frozen[frozen["kind"] == "band"])
        subspaces = frozen[(frozen["kind"] == "subspace") & (frozen["source"] == "harmonic")]
        shown.append(subspaces.reindex(subspaces["delta_ev"].abs().sort_values(ascending=False).index).head(top))
    for r in (pd.concat(shown) if shown else groups.head(0)).itertuples(index=False):
        notes = []
        if r.beyond_harmonic:
            notes.append("beyond harmonic")
        if not r.resolvable:
            notes.append("below the model's resolution")
        if r.kind == "band" and pd.notna(r.sum_of_modes_ev):
            notes.append(f"modes alone {r.sum_of_modes_ev:+.4f} eV")
        if pd.notna(r.reference_delta_ev):
            notes.append(f"DFT {r.reference_delta_ev:+.4f} eV")
        if r.beyond_harmonic or not r.resolvable:
            flagged.append(len(rows))
        rows.append(
            (
                f"{r.composition_x:.4g}",
                f"{r.temperature_k:g}",
                f"{r.kind} ({r.source})",
                f"{r.frequency_lo_thz:.2f}-{r.frequency_hi_thz:.2f}"
                if r.kind == "band"
                else f"{r.frequency_lo_thz:.2f}",
                str(r.n_modes),
                str(r.dominant),
                f"{r.rms_displacement_a:.3f}",
                f"{r.delta_ev:+.4f} ± {r.delta_std_ev:.4f}",
                f"{100 * r.relative_change:+.2f} %",
                "; ".join(notes),
            )
        )
    return table(
        "frozen phonons: degenerate subspaces and frequency bands",
        ("x", "T (K)", "group", "ν (THz)", "modes", "dominant", "rms u (Å)", "ΔEg (eV)", "ΔEg/Eg(0)", "notes"),
        rows,
        warnings=flagged,
        notes=[
            "subspace: ΔEg summed over its degenerate modes (basis-independent); band: all its modes frozen at once "
            "(alternating signs, ±u averaged); modes below gaps.mode_floor_thz, acoustic and imaginary ones are "
            "not frozen (the renormalised rows use the MD's renormalised frequencies for the soft manifold)"
        ],
    )


def mode_settings_key(config) -> str:  # RunConfig
    """Key of the settings mode rows depend on besides ensemble, structure and temperature: phonons, DFT checks."""
    return content_key(
        {
            "displacement_a": config.phonons.displacement_a,
            "check_temperature_k": max(config.gaps.mode_temperatures_k),
            "reference_modes": config.gaps.reference_modes,
            "reference_level": gap_reference_level(config),
            "checked": config.gap_check_compositions(),
            "groups": "subspaces-bands-v1",
            "floor_thz": config.gaps.mode_floor_thz,
            "band_edges_thz": config.gaps.mode_band_edges_thz,
            "harmonic_limit_a": config.gaps.mode_harmonic_limit_a,
            "resolution_ev": config.gaps.mode_resolution_ev,
            "reference_bands": config.gaps.reference_bands,
        }
    )


def run_mode_stage(
    store: Store,
    config: RunConfig,
    *,
    ensemble_id: str,
    model_id: str,
    scan_id: str,
    run_id: str | None = None,
    progress: Callable[[int, int], None] | None = None,
    reference_progress: Callable[[int, int], None] | None = None,
) -> list[ModeGap]:
    """ΔEg/Eg from GNN ensemble ``ensemble_id`` of every Γ mode at every mode temperature (see module doc).

    The modes are the harmonic phonons (MACE ``model_id``) of every lowest-energy structure of disorder scan
    ``scan_id``.
    Each (structure, temperature) is written in one transaction once its DFT checks (if any) are done; what is
    stored for the current GNN ensemble is not recomputed, and DFT results already in the store are reused.
    ``progress(done, total)`` counts (structure, temperature) pairs, ``reference_progress`` DFT calculations.
    """
    gaps_config = config.gaps
    store.initialise()
    level = ensemble_level(store, ensemble_id)
    models = [m.to(resolve_device(gaps_config.device)) for m in load_ensemble(ensemble_model_dirs(store, ensemble_id))]
    wanted = {structure_hash(a) for a in lowest_energy_structures(store, scan_id).values()}
    stored = harmonic_phonon_rows(store, model_id, config.phonons.displacement_a)
    harmonic = [r for r in stored.itertuples(index=False) if r.structure_hash in wanted]
    if len(harmonic) < len(wanted):
        raise NotComputedError(
            f"{store.path}: harmonic phonons of MACE model {model_id} missing for {len(wanted) - len(harmonic)} of the "
            f"{len(wanted)} structures of scan {scan_id}: run the phonons stage first (capml phonons)"
        )
    sublattice = list(config.system.sublattice.species)
    check_temperature = max(gaps_config.mode_temperatures_k)
    key = mode_settings_key(config)
    done = store.query(
        "SELECT DISTINCT structure_hash, temperature_k FROM gap_modes WHERE ensemble_id = ? AND settings_key = ?",
        [ensemble_id, key],
    )
    finished = {(h, float(t)) for h, t in zip(done["structure_hash"], done["temperature_k"], strict=True)}
    jobs = [(h, t) for h in harmonic for t in gaps_config.mode_temperatures_k]
    for i, (result, temperature) in enumerate(jobs):
        if (result.structure_hash, float(temperature)) in finished:
            continue
        atoms = store.load_atoms(result.structure_hash)
        arrays = store.load_arrays(result.artifact_id)
        modes = GammaModes(
            arrays["gamma_frequencies_thz"], arrays["gamma_eigenvectors_real"] + 1j * arrays["gamma_eigenvectors_imag"]
        )

        def predict(structures):
            return predict_gaps_per_model(structures, models, batch_size=gaps_config.batch_size)

        gaps = frozen_mode_gaps(
            atoms, modes, float(temperature), predict, sublattice=sublattice, floor_thz=gaps_config.mode_floor_thz
        )
        rows = [_mode_row(g, result, ensemble_id, level, float(temperature), run_id, key) for g in gaps]
        frozen = [k for k, g in enumerate(gaps) if g.status == "frozen"]
        displaced = [structure for k in frozen for structure in gaps[k].displaced]
        group_settings = {
            "sublattice": sublattice,
            "band_edges_thz": gaps_config.mode_band_edges_thz,
            "harmonic_limit_a": gaps_config.mode_harmonic_limit_a,
            "resolution_ev": gaps_config.mode_resolution_ev,
        }
        groups = {"harmonic": frozen_groups(atoms, modes, gaps, float(temperature), predict, **group_settings)}
        renormalised = _renormalised_modes(store, model_id, result.structure_hash, float(temperature))
        if renormalised is not None:  # the soft manifold with the MD's renormalised frequencies
            r_gaps = frozen_mode_gaps(
                atoms, renormalised, float(temperature), predict, floor_thz=gaps_config.mode_floor_thz
            )
            groups["renormalised"] = frozen_groups(
                atoms, renormalised, r_gaps, float(temperature), predict, **group_settings
            )
        group_rows = [
            _group_row(g, i, source, result, ensemble_id, float(temperature), run_id, key)
            for source, found in groups.items()
            for i, g in enumerate(found)
        ]
        if config.is_gap_checked(result.composition_x) and temperature == check_temperature:
            _check_with_dft(store, config, rows, frozen, displaced, run_id=run_id, progress=reference_progress)
            _check_bands_with_dft(store, config, group_rows, groups, atoms, run_id=run_id, progress=reference_progress)
        where = {
            "structure_hash": result.structure_hash,
            "ensemble_id": ensemble_id,
            "temperature_k": float(temperature),
        }
        with store.write() as writer:  # replacing rows computed with other settings, if any
            writer.delete_rows("gap_modes", where)
            writer.delete_rows("gap_mode_groups", where)
            writer.add_rows("gap_modes", rows)
            writer.add_rows("gap_mode_groups", group_rows)
        logger.info(
            "modes x = %.3f at %.0f K: %d frozen, %d acoustic, %d imaginary",
            result.composition_x,
            temperature,
            len(frozen),
            sum(r["status"] == "acoustic" for r in rows),
            sum(r["status"] == "imaginary" for r in rows),
        )
        if progress is not None:
            progress(i + 1, len(jobs))
    return mode_results(store, ensemble_id, [h.structure_hash for h in harmonic])


def _mode_row(
    gap: FrozenModeGap,
    result,  # HarmonicResult
    ensemble_id: str,
    level: str,
    temperature_k: float,
    run_id: str | None,
    key: str,
) -> dict:
    """The ``gap_modes`` row of one mode (columns of a mode not frozen in stay NULL)."""
    row = {
        "structure_hash": result.structure_hash,
        "ensemble_id": ensemble_id,
        "temperature_k": temperature_k,
        "mode": gap.mode,
        "composition_x": result.composition_x,
        "level": level,
        "frequency_thz": gap.frequency_thz,
        "run_id": run_id,
        "settings_key": key,
        "status": gap.status,
    }
    if gap.status == "frozen":
        row.update(
            {
                "rms_displacement_a": gap.rms_displacement_a,
                "max_displacement_a": gap.max_displacement_a,
                "dominant": gap.dominant,
                "shares_json": json.dumps(gap.shares),
                "gap0_ev": gap.gap0_ev,
                "gap_plus_ev": gap.gap_plus_ev,
                "gap_minus_ev": gap.gap_minus_ev,
                "delta_ev": gap.delta_ev,
                "delta_std_ev": gap.delta_std_ev,
                "relative_change": gap.relative_change,
            }
        )
    return row


def _renormalised_modes(store: Store, model_id: str, structure_hash_: str, temperature_k: float) -> GammaModes | None:
    """Γ modes of DynaPhoPy's renormalised force constants of the MD run of this structure at T, if fitted."""
    rows = store.query(
        """SELECT p.artifact_id FROM md_runs m JOIN phonon_anharmonic p USING (md_id)
           WHERE m.model_id = ? AND m.structure_hash = ? AND abs(m.temperature_k - ?) < 1e-6
             AND p.artifact_id IS NOT NULL ORDER BY p.created_at DESC LIMIT 1""",
        [model_id, structure_hash_, temperature_k],
    )
    if rows.empty:
        return None
    arrays = store.load_arrays(rows["artifact_id"][0])
    if "renormalised_force_constants" not in arrays:
        return None
    return gamma_modes(store.load_atoms(structure_hash_), arrays["renormalised_force_constants"])


def _group_row(
    group: FrozenGroup, index: int, source: str, result, ensemble_id: str, temperature_k: float, run_id, key: str
) -> dict:
    """The ``gap_mode_groups`` row of one degenerate subspace or band."""
    return {
        "structure_hash": result.structure_hash,
        "ensemble_id": ensemble_id,
        "temperature_k": temperature_k,
        "source": source,
        "kind": group.kind,
        "group_index": index,
        "composition_x": result.composition_x,
        "modes_json": json.dumps(list(group.modes)),
        "n_modes": len(group.modes),
        "frequency_lo_thz": group.frequency_lo_thz,
        "frequency_hi_thz": group.frequency_hi_thz,
        "status": group.status,
        "dominant": group.dominant,
        "shares_json": json.dumps(group.shares),
        "rms_displacement_a": group.rms_displacement_a,
        "max_displacement_a": group.max_displacement_a,
        "gap0_ev": group.gap0_ev,
        "delta_ev": group.delta_ev,
        "delta_std_ev": group.delta_std_ev,
        "relative_change": group.relative_change,
        "sum_of_modes_ev": group.sum_of_modes_ev,
        "resolvable": group.resolvable,
        "beyond_harmonic": group.beyond_harmonic,
        "settings_key": key,
        "run_id": run_id,
    }


def _check_bands_with_dft(
    store: Store,
    config: RunConfig,
    group_rows: list[dict],
    groups: dict[str, list[FrozenGroup]],
    atoms: Atoms,
    *,
    run_id: str | None,
    progress: Callable[[int, int], None] | None,
) -> None:
    """Reference-level ΔEg of the ``gaps.reference_bands`` harmonic bands of largest |ΔEg| (into ``group_rows``)."""
    bands = [
        (row, group)
        for row, group in zip(group_rows, [g for found in groups.values() for g in found], strict=True)
        if row["source"] == "harmonic" and group.kind == "band"
    ]
    chosen = sorted(bands, key=lambda pair: -abs(pair[1].delta_ev))[: config.gaps.reference_bands]
    if not chosen:
        return
    origin = structure_hash(atoms)
    hashes = [
        store_check_structures(
            store,
            [(group.displaced, f"band {group.frequency_lo_thz:g}-{group.frequency_hi_thz:g} THz of {origin}")],
            kind="frozen-mode",
            composition_x=row["composition_x"],
            temperature_k=row["temperature_k"],
            run_id=run_id,
        )[0]
        for row, group in chosen
    ]
    level, gaps = reference_gaps(
        store, config, [origin, *(h for p in hashes for h in p)], run_id=run_id, progress=progress
    )
    for (row, _), (plus, minus) in zip(chosen, hashes, strict=True):
        values = (gaps.get(origin), gaps.get(plus), gaps.get(minus))
        row["reference_level"] = level
        if None not in values:
            row["reference_delta_ev"] = 0.5 * (values[1] + values[2]) - values[0]


def _check_with_dft(
    store: Store,
    config: RunConfig,
    rows: list[dict],
    frozen: list[int],
    displaced: list[Atoms],
    *,
    run_id: str | None,
    progress: Callable[[int, int], None] | None,
) -> None:
    """Reference-level ΔEg of ``gaps.reference_modes`` frozen modes spread over the frequency range (into ``rows``).

    ``frozen[k]`` is the row of the k-th frozen mode, ``displaced[2k]`` / ``displaced[2k + 1]`` its +u / −u cells.
    """
    chosen = spread_over_frequencies([rows[i]["frequency_thz"] for i in frozen], config.gaps.reference_modes)
    if not chosen:  # reference_modes = 0, or no mode frozen: no calculation at all
        return
    origin = rows[0]["structure_hash"]
    hashes = {}
    for k in chosen:
        row = rows[frozen[k]]
        plus, minus = store_check_structures(
            store,
            [((displaced[2 * k], displaced[2 * k + 1]), f"mode {row['mode']} of {origin}")],
            kind="frozen-mode",
            composition_x=row["composition_x"],
            temperature_k=row["temperature_k"],
            run_id=run_id,
        )[0]
        hashes[(frozen[k], "plus")], hashes[(frozen[k], "minus")] = plus, minus
    level, gaps = reference_gaps(store, config, [origin, *hashes.values()], run_id=run_id, progress=progress)
    for k in chosen:
        row = rows[frozen[k]]
        gap0, plus, minus = (
            gaps.get(origin),
            gaps.get(hashes[(frozen[k], "plus")]),
            gaps.get(hashes[(frozen[k], "minus")]),
        )
        row.update(
            {
                "reference_level": level,
                "plus_hash": hashes[(frozen[k], "plus")],
                "minus_hash": hashes[(frozen[k], "minus")],
                "reference_gap0_ev": gap0,
                "reference_gap_plus_ev": plus,
                "reference_gap_minus_ev": minus,
            }
        )
        if None not in (gap0, plus, minus):
            delta = 0.5 * (plus + minus) - gap0
            row.update({"reference_delta_ev": delta, "reference_relative_change": delta / gap0})


def mode_results(store, ensemble_id: str, structure_hashes: Sequence[str] | None = None) -> list[ModeGap]:
    """Stored mode gap changes of one ensemble (optionally only some structures)."""
    frame = store.query(
        """SELECT * FROM gap_modes WHERE ensemble_id = ? AND (? IS NULL OR structure_hash IN (SELECT unnest(?)))
           ORDER BY composition_x, temperature_k, mode""",
        [ensemble_id, None if structure_hashes is None else 1, list(structure_hashes or [])],
    )

    def value(v):
        return None if v is None or (isinstance(v, float) and np.isnan(v)) else float(v)

    return [
        ModeGap(
            float(r["composition_x"]),
            float(r["temperature_k"]),
            int(r["mode"]),
            float(r["frequency_thz"]),
            r["status"],
            r["dominant"],
            value(r["delta_ev"]),
            value(r["relative_change"]),
            value(r["reference_delta_ev"]),
        )
        for r in frame.to_dict("records")
    ]
