"""Finite-temperature band gaps (stage ``bandgaps``): Eg(0) and Eg(T) per composition, with uncertainties.

Eg(0) is the gap model's gap of each composition's relaxed lowest-energy arrangement on the cubic sites (the
disorder scan's: the paper's definition), and, where ``capml static quench`` found minima for the MACE model, also
of the lowest minimum (``gap_static.structure_kind`` 'cubic' / 'lowest'); for the compositions in
``gaps.reference_compositions`` also the reference DFT gap of the cubic structure. Eg(T) is the mean of the gap
series along the production part of the MD run at T (the gap every ``gaps.series_stride_fs``). ΔEg(T) =
<Eg>_T − Eg(0) (the paper's Eq. 6) and ΔEg/Eg(0), against both Eg(0).

Uncertainty of <Eg>_T and ΔEg(T) combines, in quadrature:

- statistical: the standard error of the series mean from the series' own autocorrelation
  (:func:`capml_core.physics.statistics.series_mean`: reblocking where the optimal block leaves enough blocks,
  else the error inflated by the statistical inefficiency), so the gap's slow decorrelation is not hidden;
- model: the spread (sample standard deviation) over the ensemble of each model's own average, or of its own
  ΔEg, where the models' common offsets cancel.

Frames ``gaps.snapshot_spacing`` gap autocorrelation times apart are marked uncorrelated (``gap_snapshots``): the
frames a DFT check recomputes. A run whose halves disagree by more than ``gaps.equilibration_sigmas`` errors is
flagged not equilibrated; one with fewer than ``gaps.min_snapshots`` independent samples says so; both are still
averaged, with the flag in the row. Only MD runs whose (structure, temperature) passed the phonons stage's gate are
averaged; the others are recorded with the reason. Every result is keyed by the gap ensemble, so a re-run with the
same ensemble and MD runs recomputes nothing. Units: eV, K, fs.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from capml_core.config.schema import RunConfig
from capml_core.config.stage_sections import MDSection
from capml_core.errors import InvalidInputError, NotComputedError
from capml_core.models.gnn import load_ensemble, predict_gaps_per_model
from capml_core.models.mace import resolve_device
from capml_core.physics.md import production_frames, read_trajectory, trajectory_frame
from capml_core.physics.stability import phonon_settings_key
from capml_core.physics.statistics import GapAverage, average_gaps, ensemble_spread
from capml_core.provenance import content_key
from capml_core.stages.estimates import ESTIMATE_METHODS
from capml_core.stages.labelling import gap_reference_level, reference_gaps
from capml_core.store.database import Store
from capml_core.store.queries import ensemble_level, ensemble_model_dirs, lowest_energy_structures
from capml_core.store.records import StructureRecord
from capml_core.system.structures import quantize, structure_hash
from capml_core.tables import ResultTable, table

logger = logging.getLogger(__name__)

#: Columns of a published-gaps CSV (``gaps.experiment``); ``kind`` is 'experiment' or 'calculation'.
PUBLISHED_COLUMNS = ("composition_x", "temperature_k", "gap_ev", "uncertainty_ev", "kind", "source")


# ------------------------------------------------------------------------------------------- published data
def load_published_gaps(path: str | Path) -> pd.DataFrame:
    """Measured (and published calculated) gaps from a CSV with columns :data:`PUBLISHED_COLUMNS`.

    Raises
    ------
    InvalidInputError
        Missing file or column, a value that is not a number, x outside [0, 1], a negative gap or uncertainty,
        a kind other than 'experiment'/'calculation'. The message names the file, the row and the column.
    """
    path = Path(path)
    if not path.is_file():
        raise InvalidInputError(f"{path}: published-gaps file not found")
    frame = pd.read_csv(path, comment="#", skipinitialspace=True)
    missing = [c for c in PUBLISHED_COLUMNS if c not in frame.columns]
    if missing:
        raise InvalidInputError(f"{path}: missing column(s) {missing}; required: {', '.join(PUBLISHED_COLUMNS)}")
    frame = frame[list(PUBLISHED_COLUMNS)].copy()
    for column in ("composition_x", "temperature_k", "gap_ev", "uncertainty_ev"):
        values = pd.to_numeric(frame[column], errors="coerce")
        bad = values.isna()
        if bad.any():
            row = int(np.flatnonzero(bad)[0])
            raise InvalidInputError(
                f"{path}: row {row + 1}, column {column} = {frame[column].iloc[row]!r}: not a number"
            )
        frame[column] = values.astype(float)
    checks = {
        "composition_x": (frame["composition_x"] < 0) | (frame["composition_x"] > 1),
        "temperature_k": frame["temperature_k"] < 0,
        "gap_ev": frame["gap_ev"] < 0,
        "uncertainty_ev": frame["uncertainty_ev"] < 0,
        "kind": ~frame["kind"].isin(["experiment", "calculation"]),
    }
    allowed = {
        "composition_x": "0 to 1",
        "temperature_k": "≥ 0",
        "gap_ev": "≥ 0",
        "uncertainty_ev": "≥ 0",
        "kind": "experiment, calculation",
    }
    for column, bad in checks.items():
        if bad.any():
            row = int(np.flatnonzero(bad)[0])
            value = frame[column].iloc[row]
            shown = repr(value) if isinstance(value, str) else f"{value:g}"
            raise InvalidInputError(f"{path}: row {row + 1}, column {column} = {shown}; allowed: {allowed[column]}")
    frame["source"] = frame["source"].fillna("").astype(str)
    return frame.reset_index(drop=True)


def compare_with_published(ours: pd.DataFrame, published: pd.DataFrame) -> pd.DataFrame:
    """Each published gap beside capml's at the same temperature, linearly interpolated in x.

    ``ours``: ``composition_x``, ``temperature_k`` (0 for Eg(0)), ``gap_ev`` and optionally ``error_ev``.
    Adds ``capml_gap_ev``, ``capml_error_ev`` (NaN where not computed: that temperature missing, or x outside the
    computed compositions), ``difference_ev`` (capml − published), ``difference_error_ev`` (both uncertainties in
    quadrature) and ``outside`` (the difference is more than twice its uncertainty: capml lies outside the
    published value's range).
    """
    out = published[["kind", "source", "composition_x", "temperature_k", "gap_ev", "uncertainty_ev"]].copy()
    values, errors = [], []
    for row in out.itertuples(index=False):
        same = ours[np.isclose(ours["temperature_k"], row.temperature_k)].sort_values("composition_x")
        inside = (
            not same.empty
            and same["composition_x"].min() - 1e-9 <= row.composition_x <= same["composition_x"].max() + 1e-9
        )
        if not inside:
            values.append(np.nan)
            errors.append(np.nan)
            continue
        values.append(float(np.interp(row.composition_x, same["composition_x"], same["gap_ev"])))
        error = same["error_ev"] if "error_ev" in same else pd.Series(0.0, index=same.index)
        errors.append(float(np.interp(row.composition_x, same["composition_x"], error.fillna(0.0))))
    out["capml_gap_ev"] = values
    out["capml_error_ev"] = errors
    out["difference_ev"] = out["capml_gap_ev"] - out["gap_ev"]
    out["difference_error_ev"] = np.hypot(out["capml_error_ev"], out["uncertainty_ev"].fillna(0.0))
    out["outside"] = (out["difference_ev"].abs() > 2.0 * out["difference_error_ev"]).where(out["capml_gap_ev"].notna())
    return out


def published_table(comparison: pd.DataFrame) -> ResultTable:
    """The comparison with the published gaps, differences with their uncertainty, results outside marked."""
    rows, marked = [], []
    for i, r in enumerate(comparison.itertuples(index=False)):
        computed = not np.isnan(r.capml_gap_ev)
        rows.append(
            (
                r.kind,
                f"{r.composition_x:.4g}",
                f"{r.temperature_k:g}",
                f"{r.gap_ev:.2f} ± {r.uncertainty_ev:.2f}",
                f"{r.capml_gap_ev:.3f} ± {r.capml_error_ev:.3f}" if computed else "not computed",
                f"{r.difference_ev:+.3f} ± {r.difference_error_ev:.3f}" if computed else "-",
                ("outside" if r.outside else "within") if computed else "-",
                r.source,
            )
        )
        if computed and r.outside:
            marked.append(i)
    return table(
        "capml vs published gaps (same T, interpolated in x)",
        ("kind", "x", "T (K)", "published (eV)", "capml (eV)", "capml − published (eV)", "2σ", "source"),
        rows,
        warnings=marked,
        notes=["outside: the difference exceeds twice the combined uncertainty (published and capml)"],
    )


def store_published_gaps(store, path: str | Path, *, run_id: str | None = None) -> int:
    """Load a published-gaps CSV into ``gap_published`` (keyed by the file's SHA-256 and row); rows written."""
    frame = load_published_gaps(path)
    sha = hashlib.sha256(Path(path).read_bytes()).hexdigest()[:16]
    rows = [
        {"file_sha": sha, "row": i, "file": Path(path).name, "run_id": run_id, **record}
        for i, record in enumerate(frame.to_dict("records"))
    ]
    with store.write() as writer:
        writer.add_rows("gap_published", rows)
    return len(rows)


# ------------------------------------------------------------------------------------------- the stage
@dataclass(frozen=True)
class StaticGap:
    """Eg(0) of one composition's relaxed structure (eV)."""

    composition_x: float
    structure_hash: str
    gap_ev: float
    gap_std_ev: float
    reference_gap_ev: float | None


@dataclass(frozen=True)
class ThermalGap:
    """Eg(T) of one MD run, or why it was not averaged (``average`` is None then)."""

    md_id: str
    composition_x: float
    temperature_k: float
    passes_gate: bool
    reason: str
    average: GapAverage | None
    equilibrated: bool | None = None
    lowest_static_gap_ev: float | None = None
    lowest_relative_change: float | None = None


@dataclass(frozen=True)
class BandGapResult:
    """The bandgaps stage: the ensemble used, its level, Eg(0) per composition and Eg(T) per MD run."""

    ensemble_id: str
    level: str
    static: list[StaticGap]
    thermal: list[ThermalGap]
    lowest: list[StaticGap] = field(default_factory=list)
    checks: pd.DataFrame = field(default_factory=pd.DataFrame)
    estimates: pd.DataFrame = field(default_factory=pd.DataFrame)
    published: pd.DataFrame = field(default_factory=pd.DataFrame)

    def gap_table(self) -> pd.DataFrame:
        """Eg per (x, T) with its uncertainty: Eg(0) of the cubic structures at T = 0, then every averaged run."""
        rows = [(s.composition_x, 0.0, s.gap_ev, s.gap_std_ev) for s in self.static]
        rows += [
            (t.composition_x, t.temperature_k, t.average.mean_gap_ev, t.average.error_ev)
            for t in self.thermal
            if t.average is not None
        ]
        return pd.DataFrame(rows, columns=["composition_x", "temperature_k", "gap_ev", "error_ev"])

    def tables(self) -> list[ResultTable]:
        """Eg(0) per composition (GNN, ensemble spread, DFT check) and Eg(T), ΔEg, ΔEg/Eg(0) per MD run."""
        lowest = {round(s.composition_x, 6): s for s in self.lowest}
        static_rows = [
            (
                f"{s.composition_x:.4g}",
                f"{s.gap_ev:.3f}",
                f"{s.gap_std_ev:.3f}",
                "-" if s.reference_gap_ev is None else f"{s.reference_gap_ev:.3f}",
                f"{lowest[round(s.composition_x, 6)].gap_ev:.3f}" if round(s.composition_x, 6) in lowest else "-",
            )
            for s in self.static
        ]
        thermal_rows, warnings = [], []
        for i, t in enumerate(self.thermal):
            a = t.average
            thermal_rows.append(
                (
                    f"{t.composition_x:.4g}",
                    f"{t.temperature_k:g}",
                    "-" if a is None else f"{a.n_snapshots} ({a.n_effective:.1f})",
                    "-" if a is None else f"{a.mean_gap_ev:.3f} ± {a.error_ev:.3f}",
                    "-" if a is None else f"{a.delta_ev:+.3f} ± {a.delta_error_ev:.3f}",
                    "-" if a is None else f"{100 * a.relative_change:+.1f} ± {100 * a.relative_error:.1f} %",
                    "-" if t.lowest_relative_change is None else f"{100 * t.lowest_relative_change:+.1f} %",
                    t.reason,
                )
            )
            if a is None or t.equilibrated is False:
                warnings.append(i)
        tables = [
            table(
                f"static gaps ({self.level})",
                ("x", "Eg(0) cubic (eV)", "ensemble spread (eV)", "Eg(0) cubic, DFT (eV)", "Eg(0) lowest minimum (eV)"),
                static_rows,
            ),
            table(
                "thermal gaps",
                ("x", "T (K)", "frames (independent)", "Eg (eV)", "ΔEg (eV)", "ΔEg/Eg(0)", "vs lowest minimum", "note"),
                thermal_rows,
                warnings=warnings,
            ),
        ]
        if not self.estimates.empty:
            tables.append(estimates_result_table(self.estimates, self.thermal))
        if not self.published.empty:
            tables.append(published_table(compare_with_published(self.gap_table(), self.published)))
        if not self.checks.empty:
            rows, flagged = [], []
            for i, c in enumerate(self.checks.sort_values(["composition_x", "temperature_k"]).itertuples()):
                rows.append(
                    (
                        f"{c.composition_x:.4g}",
                        f"{c.temperature_k:g}",
                        f"{c.n_frames}/{c.n_requested}",
                        f"{c.model_gap_ev:.3f}",
                        _value_and_error(c.dft_gap_ev, c.dft_error_ev, "{:.3f}"),
                        _value_and_error(c.difference_ev, c.difference_error_ev, "{:+.3f}"),
                        c.verdict + (f" ({c.note})" if isinstance(c.note, str) else ""),
                    )
                )
                if c.verdict != "agrees":
                    flagged.append(i)
            tables.append(
                table(
                    f"DFT checks of Eg(T) on the same frames ({self.checks['level'].iloc[0]})",
                    ("x", "T (K)", "frames", "model Eg (eV)", "DFT Eg (eV)", "model − DFT (eV)", "verdict"),
                    rows,
                    warnings=flagged,
                    notes=[
                        f"flagged: |model − DFT| > {self.checks['tolerance_ev'].iloc[0]:g} eV and > 2 x its paired "
                        "error; 'too noisy': paired error above that tolerance"
                    ],
                )
            )
        return tables


def estimates_result_table(estimates: pd.DataFrame, thermal: list[ThermalGap]) -> ResultTable:
    """ΔEg/Eg(0) per (x, T): the MD average beside each independent estimate (imaginary modes at |ω| / left out)."""
    md = {
        (round(t.composition_x, 6), t.temperature_k): t.average.relative_change
        for t in thermal
        if t.average is not None
    }
    methods = [m for m in ESTIMATE_METHODS if m in set(estimates["method"])]
    rows = []
    for (x, t), group in estimates.groupby([estimates["composition_x"].round(6), "temperature_k"]):
        cells = [f"{x:.4g}", f"{t:g}", f"{100 * md[(x, t)]:+.1f} %" if (x, t) in md else "-"]
        for method in methods:
            of = group[group["method"] == method].set_index("imaginary_treatment")["relative_change"]
            if of.empty:
                cells.append("-")
            elif "abs" in of.index:
                left_out = f" / {100 * of['exclude']:+.1f}" if "exclude" in of.index else ""
                cells.append(f"{100 * of['abs']:+.1f}{left_out} %")
            else:
                cells.append(f"{100 * of.iloc[0]:+.1f} %")
        rows.append(cells)
    return table(
        "ΔEg/Eg(0): MD vs independent estimates from the same potential",
        ("x", "T (K)", "MD", *methods),
        rows,
        notes=[
            "harmonic: imaginary modes sampled at |ω| / left out; special-displacement: Zacharias-Giustino, quantum "
            "amplitudes; harmonic-quantum − harmonic-classical estimates the zero-point part classical MD misses"
        ],
    )


def _static_gaps(store, config, ensemble_id, level, models, structures, run_id, progress):

    hashes = {x: structure_hash(a) for x, a in structures.items()}
    stored = store.query("SELECT structure_hash FROM gap_static WHERE ensemble_id = ?", [ensemble_id])
    todo = [x for x, h in hashes.items() if h not in set(stored["structure_hash"])]
    if todo:
        per_model = predict_gaps_per_model([structures[x] for x in todo], models, batch_size=config.gaps.batch_size)
        checked = [hashes[x] for x in todo if config.has_eg0_dft(x)]
        ref_level, ref = reference_gaps(store, config, checked, run_id=run_id, progress=progress)
        rows = [
            {
                "structure_hash": hashes[x],
                "ensemble_id": ensemble_id,
                "composition_x": x,
                "level": level,
                "gap_ev": float(per_model[:, i].mean()),
                "gap_std_ev": ensemble_spread(per_model[:, i]),
                "model_gaps_ev": [float(g) for g in per_model[:, i]],
                "reference_level": ref_level if hashes[x] in ref else None,
                "reference_gap_ev": ref.get(hashes[x]),
                "structure_kind": "cubic",
                "structure_source": "disorder scan",
                "run_id": run_id,
            }
            for i, x in enumerate(todo)
        ]
        with store.write() as writer:
            writer.add_rows("gap_static", rows)
    frame = store.query(
        "SELECT * FROM gap_static WHERE ensemble_id = ? AND structure_hash IN (SELECT unnest(?)) "
        "ORDER BY composition_x",
        [ensemble_id, list(hashes.values())],
    )
    return frame


def _lowest_static_gaps(store, config, ensemble_id, level, models, run_id) -> pd.DataFrame:
    """Eg(0) of each composition's lowest minimum (``capml static quench``, the newest MACE model).

    ``gap_static`` rows of kind 'lowest'; empty where nothing was quenched.
    """
    from capml_core.stages.static_minima import lowest_minima
    from capml_core.store.queries import latest_model

    try:
        model_id = latest_model(store)[0]
    except NotComputedError:
        return pd.DataFrame()
    lowest = lowest_minima(store, model_id)
    if lowest.empty:
        return lowest
    stored = store.query("SELECT structure_hash FROM gap_static WHERE ensemble_id = ?", [ensemble_id])
    todo = lowest[~lowest["structure_hash"].isin(set(stored["structure_hash"]))]
    if len(todo):
        atoms = store.load_structures(todo["structure_hash"].tolist())
        per_model = predict_gaps_per_model(
            [atoms[h] for h in todo["structure_hash"]], models, batch_size=config.gaps.batch_size
        )
        rows = [
            {
                "structure_hash": r.structure_hash,
                "ensemble_id": ensemble_id,
                "composition_x": float(r.composition_x),
                "level": level,
                "gap_ev": float(per_model[:, i].mean()),
                "gap_std_ev": ensemble_spread(per_model[:, i]),
                "model_gaps_ev": [float(g) for g in per_model[:, i]],
                "structure_kind": "lowest",
                "structure_source": f"{model_id} {r.source} ({r.space_group}, "
                f"{r.below_cubic_mev_per_atom:+.1f} meV/atom vs cubic)",
                "run_id": run_id,
            }
            for i, r in enumerate(todo.itertuples(index=False))
        ]
        with store.write() as writer:
            writer.add_rows("gap_static", rows)
    return store.query(
        "SELECT * FROM gap_static WHERE ensemble_id = ? AND structure_hash IN (SELECT unnest(?)) "
        "ORDER BY composition_x",
        [ensemble_id, lowest["structure_hash"].tolist()],
    )


def thermal_notes(row: dict, run: Any, gaps: Any, n_models: int) -> list[str]:
    """Why an Eg(T) row needs care: not equilibrated, too few independent samples, a small ensemble, MD health."""
    notes = []
    if not row["equilibrated"]:
        notes.append(
            f"not equilibrated: the gap's second half differs from its first by {row['half_difference_ev']:+.3f} ± "
            f"{row['half_difference_error_ev']:.3f} eV (> {gaps.equilibration_sigmas:g} sigma): run the MD longer"
        )
    if row["n_effective"] < gaps.min_snapshots:
        notes.append(
            f"only {row['n_effective']:.1f} independent samples (gap series of {row['n_snapshots']} frames, "
            f"autocorrelation time {row['gap_tau_fs']:.0f} fs; < gaps.min_snapshots = {gaps.min_snapshots}): "
            "run the MD longer"
        )
    if n_models < 3:
        notes.append(f"model error from {n_models} ensemble member(s) (use gnn.ensemble_size >= 3)")
    if run.status != "ok" and run.problems:
        notes.append(f"MD health: {run.problems}")
    return notes


def model_static_gaps(frame_row: Any) -> np.ndarray:
    """Each model's Eg(0) (eV) from a ``gap_static`` row."""
    return np.asarray(frame_row.model_gaps_ev, dtype=float)


def thermal_settings_key(config) -> str:  # RunConfig
    """Key of the settings an Eg(T) row depends on besides the ensemble and the MD run: snapshot choice, gate."""
    return content_key(
        {
            "series": "gap-series-v2",  # the gap series and its own autocorrelation (schema 16)
            "series_stride_fs": config.gaps.series_stride_fs,
            "snapshot_spacing": config.gaps.snapshot_spacing,
            "min_snapshots": config.gaps.min_snapshots,
            "equilibration_sigmas": config.gaps.equilibration_sigmas,
            "gate": config.phonons.gate,
            "phonons": phonon_settings_key(config.phonons),
        }
    )


def run_bandgap_stage(
    store: Store,
    config: RunConfig,
    *,
    ensemble_id: str,
    scan_id: str,
    run_id: str | None = None,
    progress: Callable[[int, int], None] | None = None,
    reference_progress: Callable[[int, int], None] | None = None,
    estimate_progress: Callable[[int, int], None] | None = None,
) -> BandGapResult:
    """Eg(0) and Eg(T) from GNN ensemble ``ensemble_id`` (see module doc).

    Eg(0) of the lowest-energy structures of disorder scan ``scan_id``, Eg(T) of every complete MD run of them with
    the scan's MACE model.

    ``progress(done, total)`` counts MD runs, ``reference_progress`` DFT calculations (the static check, then the
    checks of Eg(T)), ``estimate_progress`` the compositions of the independent estimates.

    Raises
    ------
    NotComputedError
        No GNN ensemble, no disorder scan, or (with ``phonons.gate``) MD runs without a phonon verdict.
    """
    gaps_config = config.gaps
    store.initialise()
    level = ensemble_level(store, ensemble_id)
    device = resolve_device(gaps_config.device)
    models = [m.to(device) for m in load_ensemble(ensemble_model_dirs(store, ensemble_id))]
    structures = lowest_energy_structures(store, scan_id)
    if gaps_config.experiment is not None:
        store_published_gaps(store, gaps_config.experiment, run_id=run_id)

    static_frame = _static_gaps(store, config, ensemble_id, level, models, structures, run_id, reference_progress)
    static_by_hash = {r.structure_hash: r for r in static_frame.itertuples(index=False)}
    lowest_frame = _lowest_static_gaps(store, config, ensemble_id, level, models, run_id)
    lowest_by_x = {round(float(r.composition_x), 6): r for r in lowest_frame.itertuples(index=False)}
    # the MD runs of these structures with the scan's MACE model: a run of an earlier model whose structure relaxed
    # to the same cell (a cubic end member) belongs to that model's results, and its trajectory may be gone
    runs = store.query(
        """SELECT m.md_id, m.structure_hash, m.composition_x, m.temperature_k, m.path, m.decorrelation_fs,
                  m.status, m.problems, m.settings_json, p.stable, p.reason AS verdict
           FROM md_runs m LEFT JOIN phonon_anharmonic p USING (md_id)
           WHERE m.complete AND m.structure_hash IN (SELECT unnest(?))
             AND m.model_id IS NOT DISTINCT FROM coalesce(
                 (SELECT model_id FROM disorder_scans WHERE scan_id = ?), m.model_id)
           ORDER BY m.composition_x, m.temperature_k""",
        [list(static_by_hash), scan_id],
    )
    key = thermal_settings_key(config)
    stored_rows = store.query(
        "SELECT md_id, composition_x, lowest_static_gap_ev FROM gap_thermal WHERE ensemble_id = ? AND settings_key = ?",
        [ensemble_id, key],
    )

    def lowest_gap(x: float) -> float | None:
        row = lowest_by_x.get(round(float(x), 6))
        return None if row is None else float(np.mean(model_static_gaps(row)))

    def same_lowest(stored: float, x: float) -> bool:  # a lower minimum found since: the row is recomputed
        now = lowest_gap(x)
        return pd.isna(stored) if now is None else (not pd.isna(stored) and abs(stored - now) < 1e-9)

    done = {r.md_id for r in stored_rows.itertuples() if same_lowest(r.lowest_static_gap_ev, r.composition_x)}
    for i, run in enumerate(runs.itertuples(index=False)):
        if run.md_id in done:
            continue
        row: dict[str, Any] = {
            "settings_key": key,
            "md_id": run.md_id,
            "ensemble_id": ensemble_id,
            "structure_hash": run.structure_hash,
            "composition_x": run.composition_x,
            "temperature_k": run.temperature_k,
            "level": level,
            "decorrelation_fs": run.decorrelation_fs,
            "run_id": run_id,
        }
        if config.phonons.gate and pd.isna(run.stable):
            raise NotComputedError(
                f"{store.path}: MD run {run.md_id} (x = {run.composition_x:.3f}, {run.temperature_k:.0f} K) has no "
                "phonon stability verdict; run capml phonons first, or set phonons.gate = false"
            )
        passes = not config.phonons.gate or bool(run.stable)  # no verdict (NULL) needs the gate off
        row["passes_gate"] = passes
        snapshot_rows: list[dict[str, Any]] = []
        if not passes:
            row["reason"] = f"dropped by the phonon gate: {run.verdict}"
        else:
            trajectory = read_trajectory(store.project_dir / run.path)
            run_md = MDSection.model_validate_json(run.settings_json)  # the run's own equilibration time
            production = production_frames(trajectory, run_md.equilibration_ps)
        if passes and len(production) == 0:
            row["reason"] = f"no frames after the equilibration ({run_md.equilibration_ps} ps)"
        elif passes:
            frame_fs = float(np.median(np.diff(trajectory["time_fs"])))
            stride = max(1, int(round(gaps_config.series_stride_fs / frame_fs)))
            frames = production[::stride]
            row["spacing_fs"] = frame_fs * stride
            per_model = predict_gaps_per_model(
                [trajectory_frame(trajectory, int(f)) for f in frames], models, batch_size=gaps_config.batch_size
            )
            average = average_gaps(per_model, model_static_gaps(static_by_hash[run.structure_hash]))
            every = max(1, int(np.ceil(gaps_config.snapshot_spacing * average.tau_snapshots)))
            snapshot_rows = [
                {
                    "md_id": run.md_id,
                    "ensemble_id": ensemble_id,
                    "frame": int(f),
                    "time_fs": float(trajectory["time_fs"][f]),
                    "gap_ev": float(per_model[:, j].mean()),
                    "gap_std_ev": ensemble_spread(per_model[:, j]),
                    "uncorrelated": j % every == 0,
                }
                for j, f in enumerate(frames)
            ]
            row.update(vars(average))
            row["gap_tau_fs"] = average.tau_snapshots * row["spacing_fs"]
            row["n_uncorrelated"] = sum(r["uncorrelated"] for r in snapshot_rows)
            difference, difference_error = average.half_difference_ev, average.half_difference_error_ev
            row["equilibrated"] = bool(
                not np.isfinite(difference_error)
                or abs(difference) <= gaps_config.equilibration_sigmas * difference_error
            )
            lowest = lowest_gap(run.composition_x)
            if lowest is not None:
                row["lowest_static_gap_ev"] = lowest
                row["lowest_delta_ev"] = average.mean_gap_ev - lowest
                row["lowest_relative_change"] = (average.mean_gap_ev - lowest) / lowest
            row["reason"] = "; ".join(thermal_notes(row, run, gaps_config, len(models))) or "averaged"
        with store.write() as writer:  # replacing a row computed with other settings, if any
            for table in ("gap_snapshots", "gap_thermal"):
                writer.delete_rows(table, {"md_id": run.md_id, "ensemble_id": ensemble_id})
            writer.add_rows("gap_snapshots", snapshot_rows)
            writer.add_rows("gap_thermal", [row])
        logger.info("gaps x = %.3f, %.0f K: %s", run.composition_x, run.temperature_k, row["reason"])
        if progress is not None:
            progress(i + 1, len(runs))
    # the DFT checks of the averages first (the yardstick of Eg(T)), then the independent estimates (their DFT last)
    checks = run_dft_checks(store, config, ensemble_id=ensemble_id, run_id=run_id, progress=reference_progress)
    estimates = _estimates(store, config, ensemble_id, scan_id, models, static_frame, run_id, estimate_progress)
    return BandGapResult(
        ensemble_id,
        level,
        _static_results(static_frame),
        thermal_results(store, ensemble_id),
        lowest=_static_results(lowest_frame) if len(lowest_frame) else [],
        checks=checks,
        estimates=estimates,
        published=store.query("SELECT * FROM gap_published ORDER BY kind, temperature_k, composition_x"),
    )


def _estimates(store, config, ensemble_id, scan_id, models, static_frame, run_id, progress=None) -> pd.DataFrame:
    """The independent estimates (:mod:`capml_core.stages.estimates`) with the MACE model of the MD runs."""
    from capml_core.stages.estimates import run_estimates
    from capml_core.store.queries import latest_model

    if config.gaps.estimate_samples == 0:
        return pd.DataFrame()
    try:
        mace_model_id = latest_model(store)[0]
    except NotComputedError:
        return pd.DataFrame()
    static_gaps = {r.structure_hash: float(r.gap_ev) for r in static_frame.itertuples(index=False)}
    return run_estimates(
        store,
        config,
        ensemble_id=ensemble_id,
        scan_id=scan_id,
        mace_model_id=mace_model_id,
        models=models,
        static_gaps=static_gaps,
        run_id=run_id,
        progress=progress,
    )


# ------------------------------------------------------------------------------------------- DFT checks
@dataclass(frozen=True)
class PairedCheck:
    """Model vs DFT gaps of the same frames (eV): both averages and their paired difference, with a verdict.

    ``verdict``: 'disagrees' (|difference| > tolerance and > 2 x its error), 'too noisy' (error > tolerance:
    cannot decide), 'agrees', or 'incomplete' (fewer than 2 frames with a DFT gap).
    """

    n_frames: int
    model_gap_ev: float
    dft_gap_ev: float
    dft_error_ev: float
    difference_ev: float
    difference_error_ev: float
    verdict: str


def _value_and_error(value: float, error: float, form: str) -> str:
    """'1.206 ± 0.010', '1.206 (one frame: no error)' or '-' where there is no value."""
    if value is None or not np.isfinite(value):
        return "-"
    if error is None or not np.isfinite(error):
        return form.format(value) + " (one frame: no error)"
    return f"{form.format(value)} ± {error:.3f}"


def compare_paired(model_gaps_ev: np.ndarray, dft_gaps_ev: np.ndarray, *, tolerance_ev: float) -> PairedCheck:
    """Compare two averages over the same frames by their per-frame differences (model − DFT).

    The difference's error is the standard error of the per-frame differences (frames are uncorrelated): far
    smaller than either average's, since most of the thermal scatter is common to both.
    """
    model, dft = np.asarray(model_gaps_ev, dtype=float), np.asarray(dft_gaps_ev, dtype=float)
    n = len(dft)
    if n < 2:  # one frame: its difference, but no error to judge it by
        nan = float("nan")
        mean = float(dft.mean()) if n else nan
        difference = float(model[0] - dft[0]) if n else nan
        return PairedCheck(n, float(model.mean()) if n else nan, mean, nan, difference, nan, "incomplete")
    difference = model - dft
    d, d_error = float(difference.mean()), float(np.std(difference, ddof=1) / np.sqrt(n))
    if d_error > tolerance_ev:
        verdict = "too noisy"
    elif abs(d) > tolerance_ev and abs(d) > 2.0 * d_error:
        verdict = "disagrees"
    else:
        verdict = "agrees"
    return PairedCheck(
        n, float(model.mean()), float(dft.mean()), float(np.std(dft, ddof=1) / np.sqrt(n)), d, d_error, verdict
    )


def dft_check_choice(snapshots: pd.DataFrame, n: int, computed_frames: Sequence[int] = ()) -> pd.DataFrame:
    """``n`` of a run's uncorrelated snapshots, evenly spread over the run (all of them if there are fewer).

    ``computed_frames``: frames of the run whose DFT gap exists already (checks of an earlier gap model). A chosen
    frame is replaced by the nearest of them within half the spacing of the uncorrelated snapshots (each used
    once): as far from its neighbours as the choice asks, and no new DFT for it.
    """
    pool = snapshots[snapshots["uncorrelated"].fillna(False).astype(bool)].sort_values("frame")
    picked = pool if len(pool) <= n else pool.iloc[np.unique(np.round(np.linspace(0, len(pool) - 1, n)).astype(int))]
    available = sorted(set(int(f) for f in computed_frames) & set(snapshots["frame"].astype(int)))
    if not available or len(pool) < 2:
        return picked
    reach = 0.5 * float(np.median(np.diff(pool["frame"].to_numpy(dtype=float))))
    by_frame = snapshots.drop_duplicates("frame")
    by_frame.index = by_frame["frame"].astype(int)
    frames = []
    for frame in picked["frame"].astype(int):
        near = [c for c in available if abs(c - frame) <= reach and c not in frames]
        frames.append(min(near, key=lambda c: (abs(c - frame), c)) if near else frame)
    return by_frame.loc[sorted(set(frames))].reset_index(drop=True)


def run_dft_checks(
    store: Store,
    config: RunConfig,
    *,
    ensemble_id: str,
    run_id: str | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> pd.DataFrame:
    """Recompute with DFT the frames of every Eg(T) that ``gaps.dft_check`` names; store and compare (see module).

    The frames become structures of kind 'gap-check' (never training data) labelled through the labelling
    machinery at ``gaps.reference_level`` (resumable: a label computed once is reused by every later ensemble).
    Returns the ensemble's ``gap_dft_checks`` rows.
    """
    key = thermal_settings_key(config)
    thermal = store.query(
        """SELECT t.md_id, t.composition_x, t.temperature_k, m.path FROM gap_thermal t JOIN md_runs m USING (md_id)
           WHERE t.ensemble_id = ? AND t.settings_key = ? AND t.mean_gap_ev IS NOT NULL
           ORDER BY t.composition_x, t.temperature_k""",
        [ensemble_id, key],
    )
    chosen: list[tuple[Any, pd.DataFrame]] = []
    structures = []
    for run in thermal.itertuples(index=False):
        n = config.dft_check_frames(float(run.composition_x), float(run.temperature_k))
        if n == 0:
            continue
        snapshots = store.query(
            "SELECT frame, time_fs, gap_ev, uncorrelated FROM gap_snapshots WHERE md_id = ? AND ensemble_id = ?",
            [run.md_id, ensemble_id],
        )
        computed = store.query(
            "SELECT DISTINCT frame FROM gap_dft_frames WHERE md_id = ? AND dft_gap_ev IS NOT NULL", [run.md_id]
        )["frame"]
        picked = dft_check_choice(snapshots, n, computed).copy()
        stored = store.query(
            "SELECT frame, structure_hash FROM gap_dft_frames WHERE md_id = ? AND ensemble_id = ?",
            [run.md_id, ensemble_id],
        )
        if set(stored["frame"]) == set(picked["frame"]):  # chosen before: the trajectory is not needed again
            picked["structure_hash"] = picked["frame"].map(
                dict(zip(stored["frame"], stored["structure_hash"], strict=True))
            )
            chosen.append((run, picked))
            continue
        trajectory = read_trajectory(store.project_dir / run.path)
        atoms = [quantize(trajectory_frame(trajectory, int(f))) for f in picked["frame"]]
        picked["structure_hash"] = [structure_hash(a) for a in atoms]
        structures += [
            StructureRecord(
                atoms=a,
                structure_hash=h,
                kind="gap-check",
                composition_x=float(run.composition_x),
                temperature_k=float(run.temperature_k),
                source=f"{run.md_id}#{int(f)}",
            )
            for a, h, f in zip(atoms, picked["structure_hash"], picked["frame"], strict=True)
        ]
        chosen.append((run, picked))
    if not chosen:
        return store.query("SELECT * FROM gap_dft_checks WHERE ensemble_id = ?", [ensemble_id])

    def frame_rows(run: Any, picked: pd.DataFrame, level: str, gaps: dict[str, float | None]) -> list[dict]:
        return [
            {
                "md_id": run.md_id,
                "ensemble_id": ensemble_id,
                "frame": int(r.frame),
                "time_fs": float(r.time_fs),
                "structure_hash": r.structure_hash,
                "level": level,
                "model_gap_ev": float(r.gap_ev),
                "dft_gap_ev": gaps.get(r.structure_hash),
            }
            for r in picked.itertuples(index=False)
        ]

    level = gap_reference_level(config)
    # the chosen frames first: a check interrupted in its DFT resumes without the trajectories
    with store.write() as writer:
        writer.add_structures(structures, run_id=run_id)
        for run, picked in chosen:
            writer.delete_rows("gap_dft_frames", {"md_id": run.md_id, "ensemble_id": ensemble_id})
            writer.add_rows("gap_dft_frames", frame_rows(run, picked, level, {}))
    hashes = [h for _, picked in chosen for h in picked["structure_hash"]]
    level, gaps = reference_gaps(store, config, hashes, run_id=run_id, progress=progress)
    tolerance = config.gaps.dft_check_tolerance_ev
    for run, picked in chosen:
        frame_rows_of_run = frame_rows(run, picked, level, gaps)
        done = [r for r in frame_rows_of_run if r["dft_gap_ev"] is not None]
        check = compare_paired(
            np.array([r["model_gap_ev"] for r in done]),
            np.array([r["dft_gap_ev"] for r in done]),
            tolerance_ev=tolerance,
        )
        requested = config.dft_check_frames(float(run.composition_x), float(run.temperature_k))
        notes = []
        if len(picked) < requested:
            notes.append(
                f"only {len(picked)} uncorrelated frames in the run (asked for {requested}): run the MD longer"
            )
        if len(done) < len(picked):
            notes.append(f"{len(picked) - len(done)} of {len(picked)} DFT calculations missing or failed")
        trained = store.query("SELECT count(*) AS n FROM md_frames WHERE md_id = ? AND NOT held_out", [run.md_id])
        if int(trained["n"][0]):
            notes.append(f"{int(trained['n'][0])} of this run's frames are training data: the check is not independent")
        summary = {
            "md_id": run.md_id,
            "ensemble_id": ensemble_id,
            "composition_x": float(run.composition_x),
            "temperature_k": float(run.temperature_k),
            "level": level,
            "n_requested": requested,
            **{k: v for k, v in vars(check).items()},
            "tolerance_ev": tolerance,
            "note": "; ".join(notes) or None,
        }
        with store.write() as writer:
            for table_name in ("gap_dft_frames", "gap_dft_checks"):
                writer.delete_rows(table_name, {"md_id": run.md_id, "ensemble_id": ensemble_id})
            writer.add_rows("gap_dft_frames", frame_rows_of_run)
            writer.add_rows("gap_dft_checks", [summary])
        logger.info(
            "DFT check x = %.3f, %.0f K: model %.3f vs %s %.3f eV over %d frames: %s",
            run.composition_x,
            run.temperature_k,
            check.model_gap_ev,
            level,
            check.dft_gap_ev,
            check.n_frames,
            check.verdict,
        )
    return store.query("SELECT * FROM gap_dft_checks WHERE ensemble_id = ?", [ensemble_id])


def _static_results(frame: pd.DataFrame) -> list[StaticGap]:
    return [
        StaticGap(
            float(r.composition_x),
            r.structure_hash,
            float(r.gap_ev),
            float(r.gap_std_ev),
            None if pd.isna(r.reference_gap_ev) else float(r.reference_gap_ev),
        )
        for r in frame.itertuples(index=False)
    ]


def thermal_results(store, ensemble_id: str) -> list[ThermalGap]:
    """The stored Eg(T) results of one ensemble, by composition and temperature."""
    frame = store.query(
        "SELECT * FROM gap_thermal WHERE ensemble_id = ? ORDER BY composition_x, temperature_k", [ensemble_id]
    )
    fields = GapAverage.__dataclass_fields__
    out = []
    for r in frame.to_dict("records"):
        average = None
        if pd.notna(r.get("mean_gap_ev")) and pd.notna(r.get("error_method")):  # rows of schema < 16: recomputed
            average = GapAverage(**{k: r[k] for k in fields})
        optional = {k: None if pd.isna(r.get(k)) else r[k] for k in ("equilibrated", "lowest_static_gap_ev")}
        out.append(
            ThermalGap(
                r["md_id"],
                float(r["composition_x"]),
                float(r["temperature_k"]),
                bool(r["passes_gate"]),
                r["reason"],
                average,
                equilibrated=None if optional["equilibrated"] is None else bool(optional["equilibrated"]),
                lowest_static_gap_ev=optional["lowest_static_gap_ev"],
                lowest_relative_change=None
                if pd.isna(r.get("lowest_relative_change"))
                else float(r["lowest_relative_change"]),
            )
        )
    return out
