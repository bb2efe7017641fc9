"""Finite-temperature band gaps (stage ``bandgaps``): Eg(0) and Eg(T) per composition, with uncertainties.

Eg(0) is the GNN ensemble's gap of each composition's relaxed lowest-energy structure (the disorder scan's),
and, for the compositions in ``gaps.reference_compositions``, also the reference DFT gap of that structure.
Eg(T) averages the GNN gaps of uncorrelated snapshots of the MD run at T: frames after the run's own
equilibration time, ``gaps.snapshot_spacing`` measured decorrelation times apart (the run's own
decorrelation time, :mod:`capml_core.dynamics`). ΔEg(T) = <Eg>_T − Eg(0) (the paper's Eq. 6) and the
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

from capml_core.errors import InvalidInputError, NotComputedError

logger = logging.getLogger(__name__)

#: Columns of a published-gaps CSV (``gaps.experiment``); ``kind`` is 'experiment' or 'calculation'.
PUBLISHED_COLUMNS = ("composition_x", "temperature_k", "gap_ev", "uncertainty_ev", "kind", "source")


# ------------------------------------------------------------------------------------------- statistics
def block_average_error(series: np.ndarray, *, min_blocks: int = 4) -> float:
    """Standard error (same unit as the series) of the mean of a possibly correlated series.

    Flyvbjerg-Petersen blocking: average neighbouring pairs repeatedly; at each level k the naive standard
    error e_k of the block means, itself uncertain by d_k = e_k / sqrt(2 (blocks − 1)). The answer is e_k of the
    first level from which no later level (with at least ``min_blocks`` blocks) lies more than its d above it:
    the plateau that correlated data reach once blocks are longer than the correlation time. A series too
    short to block gives the naive standard error; one value gives NaN.
    """
    x = np.asarray(series, dtype=float)
    if len(x) < 2:
        return float("nan")
    levels: list[tuple[float, float]] = []
    blocks = x
    while len(blocks) >= min_blocks:
        error = float(np.std(blocks, ddof=1) / np.sqrt(len(blocks)))
        levels.append((error, error / np.sqrt(2.0 * (len(blocks) - 1))))
        half = len(blocks) // 2
        blocks = 0.5 * (blocks[0 : 2 * half : 2] + blocks[1 : 2 * half : 2])
    if not levels:
        return float(np.std(x, ddof=1) / np.sqrt(len(x)))
    for k, (error, _) in enumerate(levels):
        if all(later <= error + spread for later, spread in levels[k + 1 :]):
            return error
    return levels[-1][0]


def _spread(values: np.ndarray) -> float:
    """Sample standard deviation over an ensemble (0 for one model)."""
    return float(np.std(values, ddof=1)) if len(values) > 1 else 0.0


@dataclass(frozen=True)
class GapAverage:
    """Thermal average of snapshot gaps against the static gap (eV; relative values are fractions)."""

    n_snapshots: int
    mean_gap_ev: float
    statistical_error_ev: float
    model_error_ev: float
    error_ev: float
    static_gap_ev: float
    delta_ev: float
    delta_error_ev: float
    relative_change: float
    relative_error: float


def average_gaps(snapshot_gaps: np.ndarray, static_gaps: np.ndarray) -> GapAverage:
    """Average GNN gaps over snapshots: <Eg>, ΔEg = <Eg> − Eg(0), ΔEg/Eg(0), each with its uncertainty.

    Parameters
    ----------
    snapshot_gaps
        Gaps (eV) of each model (rows) for each snapshot (columns), snapshots in time order.
    static_gaps
        Each model's gap (eV) of the static relaxed structure.
    """
    gaps = np.atleast_2d(np.asarray(snapshot_gaps, dtype=float))
    static = np.asarray(static_gaps, dtype=float)
    if gaps.shape[0] != len(static) or gaps.shape[1] == 0:
        raise InvalidInputError(
            f"average_gaps: {gaps.shape[0]} models x {gaps.shape[1]} snapshots vs {len(static)} static gaps"
        )
    series = gaps.mean(axis=0)
    mean, static_mean = float(series.mean()), float(static.mean())
    statistical = block_average_error(series) if len(series) > 1 else 0.0
    per_model = gaps.mean(axis=1)
    model = _spread(per_model)
    delta_model = _spread(per_model - static)
    relative_model = _spread((per_model - static) / static)
    delta = mean - static_mean
    return GapAverage(
        n_snapshots=int(gaps.shape[1]),
        mean_gap_ev=mean,
        statistical_error_ev=statistical,
        model_error_ev=model,
        error_ev=float(np.hypot(statistical, model)),
        static_gap_ev=static_mean,
        delta_ev=delta,
        delta_error_ev=float(np.hypot(statistical, delta_model)),
        relative_change=delta / static_mean,
        relative_error=float(np.hypot(statistical / static_mean, relative_model)),
    )


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


def store_published_gaps(store, path: str | Path, *, run_id: str | None = None) -> int:  # noqa: ANN001
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


# ------------------------------------------------------------------------------------------- reference DFT
def reference_gaps(
    store,  # noqa: ANN001 - Store
    config,  # noqa: ANN001 - RunConfig
    structure_hashes: list[str],
    *,
    run_id: str | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> tuple[str, dict[str, float | None]]:
    """Reference DFT gaps (eV) of stored structures at ``gaps.reference_level``, computing the missing ones.

    Uses the labelling stage's machinery (``reference.workers`` processes, each result stored as it finishes,
    so an interrupted check resumes). Returns the level and, per hash, the gap (None when the calculation
    failed or the level cannot run here).
    """
    from capml_core.labelling import label_structures
    from capml_core.reference import get_level

    level_name = config.gaps.reference_level or config.reference.high_level
    if not structure_hashes:
        return level_name, {}
    level = get_level(level_name, config.reference)

    def labelled() -> pd.DataFrame:
        return store.query(
            "SELECT structure_hash, status, gap_ev FROM labels "
            "WHERE level = ? AND structure_hash IN (SELECT unnest(?))",
            [level_name, list(structure_hashes)],
        )

    done = labelled()
    missing = [h for h in dict.fromkeys(structure_hashes) if h not in set(done["structure_hash"])]
    reason = level.unavailable_reason()
    if missing and reason is not None:
        logger.warning("reference gaps at %s not computed here: %s", level_name, reason)
    elif missing:
        logger.info("reference gaps: %d calculations at %s", len(missing), level_name)

        report = None if progress is None else (lambda done_n, total, record: progress(done_n, total))
        label_structures(store, level, missing, workers=config.reference.workers, run_id=run_id, progress=report)
        done = labelled()
    gaps = {
        r.structure_hash: (float(r.gap_ev) if r.status == "ok" and pd.notna(r.gap_ev) else None)
        for r in done.itertuples(index=False)
    }
    return level_name, {h: gaps.get(h) for h in structure_hashes}


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


def _static_gaps(store, config, ensemble_id, level, models, structures, run_id, progress):  # noqa: ANN001, ANN202
    from capml_core.gnn import predict_gaps_per_model
    from capml_core.structures import structure_hash

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
                "gap_std_ev": _spread(per_model[:, i]),
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


def thermal_settings_key(config) -> str:  # noqa: ANN001 - RunConfig
    """Key of the settings an Eg(T) row depends on besides the ensemble and the MD run: snapshot choice, gate."""
    from capml_core.provenance import content_key
    from capml_core.stability import phonon_settings_key

    return content_key(
        {
            "snapshot_spacing": config.gaps.snapshot_spacing,
            "min_snapshots": config.gaps.min_snapshots,
            "gate": config.phonons.gate,
            "phonons": phonon_settings_key(config.phonons),
        }
    )


def run_bandgap_stage(
    store,  # noqa: ANN001 - capml_core.store.Store
    config,  # noqa: ANN001 - RunConfig
    *,
    run_id: str | None = None,
    progress: Callable[[int, int], None] | None = None,
    reference_progress: Callable[[int, int], None] | None = None,
) -> BandGapResult:
    """Eg(0) of every lowest-energy structure and Eg(T) of every complete MD run of them (see module doc).

    ``progress(done, total)`` counts MD runs, ``reference_progress`` DFT calculations of the static check.

    Raises
    ------
    NotComputedError
        No GNN ensemble, no disorder scan, or (with ``phonons.gate``) MD runs without a phonon verdict.
    """
    from capml_core.config import MDSection
    from capml_core.disorder import lowest_energy_structures
    from capml_core.dynamics import read_trajectory, trajectory_frame, uncorrelated_frames
    from capml_core.gnn import latest_ensemble, load_ensemble_by_id, predict_gaps_per_model
    from capml_core.mlip import resolve_device

    gaps_config = config.gaps
    store.initialise()
    ensemble_id, level = latest_ensemble(store)
    device = resolve_device(gaps_config.device)
    models = [m.to(device) for m in load_ensemble_by_id(store, ensemble_id)]
    structures = lowest_energy_structures(store)
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
        passes = bool(run.stable) or not config.phonons.gate
        row["passes_gate"] = passes
        snapshot_rows: list[dict[str, Any]] = []
        if not passes:
            row["reason"] = f"dropped by the phonon gate: {run.verdict}"
        else:
            trajectory = read_trajectory(store.project_dir / run.path)
            run_md = MDSection.model_validate_json(run.settings_json)  # the run's own equilibration time
            frames = uncorrelated_frames(
                trajectory, run_md, float(run.decorrelation_fs), spacing=gaps_config.snapshot_spacing
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
                    "gap_std_ev": _spread(per_model[:, j]),
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


def thermal_results(store, ensemble_id: str) -> list[ThermalGap]:  # noqa: ANN001
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
