"""Finite-temperature band gaps (stage ``bandgaps``): Eg(0) and Eg(T) per composition, with uncertainties.

Eg(0) is the GNN ensemble's gap of each composition's relaxed lowest-energy structure (the disorder scan's),
and, for the compositions in ``gaps.reference_compositions``, also the reference DFT gap of that structure.
Eg(T) averages the GNN gaps of uncorrelated snapshots of the MD run at T: frames after the run's own
equilibration time, ``gaps.snapshot_spacing`` measured decorrelation times apart (the run's own
decorrelation time, :mod:`capml_core.stages.dynamics`). ΔEg(T) = <Eg>_T − Eg(0) (the paper's Eq. 6) and the
relative change ΔEg/Eg(0).

Uncertainty of <Eg>_T and ΔEg(T) combines, in quadrature:

- statistical: the standard error of the snapshot mean by block averaging (Flyvbjerg-Petersen, with the
  plateau found automatically: :func:`block_average_error`), so left-over correlation is not hidden;
- model: the spread (sample standard deviation) over the ensemble of each model's own average, or of its own
  ΔEg, where the models' common offsets cancel.

Only MD runs whose (structure, temperature) passed the phonons stage's gate are averaged; the others are
recorded with the reason. Every result is keyed by the GNN ensemble, so a re-run with the same ensemble and
MD runs recomputes nothing. Units: eV, K, fs.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from capml_core.config.schema import RunConfig
from capml_core.config.stage_sections import MDSection
from capml_core.errors import InvalidInputError, NotComputedError
from capml_core.models.gnn import load_ensemble, predict_gaps_per_model
from capml_core.models.mace import resolve_device
from capml_core.physics.md import read_trajectory, trajectory_frame, uncorrelated_frames
from capml_core.physics.stability import phonon_settings_key
from capml_core.physics.statistics import GapAverage, average_gaps, ensemble_spread
from capml_core.provenance import content_key
from capml_core.stages.labelling import reference_gaps
from capml_core.store.database import Store
from capml_core.store.queries import ensemble_level, ensemble_model_dirs, lowest_energy_structures
from capml_core.system.structures import structure_hash
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


@dataclass(frozen=True)
class BandGapResult:
    """The bandgaps stage: the ensemble used, its level, Eg(0) per composition and Eg(T) per MD run."""

    ensemble_id: str
    level: str
    static: list[StaticGap]
    thermal: list[ThermalGap]

    def tables(self) -> list[ResultTable]:
        """Eg(0) per composition (GNN, ensemble spread, DFT check) and Eg(T), ΔEg, ΔEg/Eg(0) per MD run."""
        static_rows = [
            (
                f"{s.composition_x:.4g}",
                f"{s.gap_ev:.3f}",
                f"{s.gap_std_ev:.3f}",
                "-" if s.reference_gap_ev is None else f"{s.reference_gap_ev:.3f}",
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
                    "-" if a is None else str(a.n_snapshots),
                    "-" if a is None else f"{a.mean_gap_ev:.3f} ± {a.error_ev:.3f}",
                    "-" if a is None else f"{a.delta_ev:+.3f} ± {a.delta_error_ev:.3f}",
                    "-" if a is None else f"{100 * a.relative_change:+.1f} ± {100 * a.relative_error:.1f} %",
                    t.reason,
                )
            )
            if a is None:
                warnings.append(i)
        return [
            table(
                f"static gaps ({self.level})",
                ("x", "Eg(0) GNN (eV)", "ensemble spread (eV)", "Eg(0) DFT (eV)"),
                static_rows,
            ),
            table(
                "thermal gaps",
                ("x", "T (K)", "snapshots", "Eg (eV)", "ΔEg (eV)", "ΔEg/Eg(0)", "note"),
                thermal_rows,
                warnings=warnings,
            ),
        ]


def _static_gaps(store, config, ensemble_id, level, models, structures, run_id, progress):

    hashes = {x: structure_hash(a) for x, a in structures.items()}
    stored = store.query("SELECT structure_hash FROM gap_static WHERE ensemble_id = ?", [ensemble_id])
    todo = [x for x, h in hashes.items() if h not in set(stored["structure_hash"])]
    if todo:
        per_model = predict_gaps_per_model([structures[x] for x in todo], models, batch_size=config.gaps.batch_size)
        checked = [hashes[x] for x in todo if config.is_gap_checked(x)]
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


def model_static_gaps(frame_row: Any) -> np.ndarray:
    """Each model's Eg(0) (eV) from a ``gap_static`` row."""
    return np.asarray(frame_row.model_gaps_ev, dtype=float)


def thermal_settings_key(config) -> str:  # RunConfig
    """Key of the settings an Eg(T) row depends on besides the ensemble and the MD run: snapshot choice, gate."""
    return content_key(
        {
            "snapshot_spacing": config.gaps.snapshot_spacing,
            "min_snapshots": config.gaps.min_snapshots,
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
) -> BandGapResult:
    """Eg(0) and Eg(T) from GNN ensemble ``ensemble_id`` (see module doc).

    Eg(0) of the lowest-energy structures of disorder scan ``scan_id``, Eg(T) of every complete MD run of them.

    ``progress(done, total)`` counts MD runs, ``reference_progress`` DFT calculations of the static check.

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
    runs = store.query(
        """SELECT m.md_id, m.structure_hash, m.composition_x, m.temperature_k, m.path, m.decorrelation_fs,
                  m.status, m.problems, m.settings_json, p.stable, p.reason AS verdict
           FROM md_runs m LEFT JOIN phonon_anharmonic p USING (md_id)
           WHERE m.complete AND m.structure_hash IN (SELECT unnest(?)) ORDER BY m.composition_x, m.temperature_k""",
        [list(static_by_hash)],
    )
    key = thermal_settings_key(config)
    done = set(
        store.query("SELECT md_id FROM gap_thermal WHERE ensemble_id = ? AND settings_key = ?", [ensemble_id, key])[
            "md_id"
        ]
    )
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
            frames = uncorrelated_frames(
                trajectory, run_md.equilibration_ps, float(run.decorrelation_fs), spacing=gaps_config.snapshot_spacing
            )
        if passes and len(frames) == 0:
            row["reason"] = f"no frames after the equilibration ({run_md.equilibration_ps} ps)"
        elif passes:
            frame_fs = float(np.median(np.diff(trajectory["time_fs"])))
            row["spacing_fs"] = float(frame_fs * (frames[1] - frames[0])) if len(frames) > 1 else None
            per_model = predict_gaps_per_model(
                [trajectory_frame(trajectory, int(f)) for f in frames], models, batch_size=gaps_config.batch_size
            )
            snapshot_rows = [
                {
                    "md_id": run.md_id,
                    "ensemble_id": ensemble_id,
                    "frame": int(f),
                    "time_fs": float(trajectory["time_fs"][f]),
                    "gap_ev": float(per_model[:, j].mean()),
                    "gap_std_ev": ensemble_spread(per_model[:, j]),
                }
                for j, f in enumerate(frames)
            ]
            average = average_gaps(per_model, model_static_gaps(static_by_hash[run.structure_hash]))
            row.update({k: v for k, v in vars(average).items() if k != "static_gap_ev"})
            row["static_gap_ev"] = average.static_gap_ev
            notes = [] if run.status == "ok" or not run.problems else [f"MD health: {run.problems}"]
            if average.n_snapshots < gaps_config.min_snapshots:
                notes.insert(
                    0,
                    f"only {average.n_snapshots} uncorrelated snapshots (< gaps.min_snapshots = "
                    f"{gaps_config.min_snapshots}): run the MD longer",
                )
            row["reason"] = "; ".join(notes) or "averaged"
        with store.write() as writer:  # replacing a row computed with other settings, if any
            for table in ("gap_snapshots", "gap_thermal"):
                writer.delete_rows(table, {"md_id": run.md_id, "ensemble_id": ensemble_id})
            writer.add_rows("gap_snapshots", snapshot_rows)
            writer.add_rows("gap_thermal", [row])
        logger.info("gaps x = %.3f, %.0f K: %s", run.composition_x, run.temperature_k, row["reason"])
        if progress is not None:
            progress(i + 1, len(runs))
    return BandGapResult(ensemble_id, level, _static_results(static_frame), thermal_results(store, ensemble_id))


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
        average = GapAverage(**{k: r[k] for k in fields}) if pd.notna(r.get("mean_gap_ev")) else None
        out.append(
            ThermalGap(
                r["md_id"],
                float(r["composition_x"]),
                float(r["temperature_k"]),
                bool(r["passes_gate"]),
                r["reason"],
                average,
            )
        )
    return out
