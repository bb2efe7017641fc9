"""Look-ups of other stages' results: newest model, ensemble, disorder scan, lowest structures."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
from ase import Atoms

from capml_core.errors import NotComputedError
from capml_core.models.gnn import CHEAP_STAGE_DIRNAME, is_gap_model_dir
from capml_core.store.database import Store
from capml_core.store.schema import GNN_BASELINE_PREFIX as BASELINE_PREFIX
from capml_core.store.schema import PRIMARY_MACE_SQL
from capml_core.types import DATASET_KIND_SQL


def latest_scan_id(store: Store) -> str:
    """The newest disorder scan of a project (the default of the CLI and the flows)."""
    rows = store.query("SELECT scan_id FROM disorder_scans ORDER BY created_at DESC LIMIT 1")
    if rows.empty:
        raise NotComputedError(f"{store.path}: no disorder scan yet (capml disorder, or capml run)")
    return str(rows["scan_id"][0])


def lowest_energy_structures(store: Store, scan_id: str) -> dict[float, Atoms]:
    """The relaxed lowest-energy structure of each composition of one disorder scan (what later stages start from).

    Raises
    ------
    NotComputedError
        No such scan in the store.
    """
    if store.query("SELECT 1 FROM disorder_scans WHERE scan_id = ?", [scan_id]).empty:
        raise NotComputedError(f"{store.path}: no disorder scan {scan_id!r} (see: capml sql 'FROM disorder_scans')")
    frame = store.query(
        """SELECT composition_x, structure_hash FROM disorder_relaxations WHERE scan_id = ?
           QUALIFY row_number() OVER (PARTITION BY composition_x ORDER BY energy_ev_per_atom, arrangement) = 1
           ORDER BY composition_x""",
        [scan_id],
    )
    structures = store.load_structures(frame["structure_hash"].tolist())
    return {float(x): structures[h] for x, h in zip(frame["composition_x"], frame["structure_hash"], strict=True)}


def newest_run_config(store: Store) -> dict[str, Any]:
    """The configuration (as recorded, a dict) of the newest run that recorded one; {} when none did."""
    import json

    rows = store.query("SELECT config_json FROM runs WHERE config_json IS NOT NULL ORDER BY started_at DESC LIMIT 1")
    return json.loads(rows["config_json"][0]) if len(rows) else {}


def substituted_species(store: Store) -> str | None:
    """The species whose fraction is the composition x (first of ``system.sublattice.species`` of the newest run).

    None when no run recorded its configuration.
    """
    species = newest_run_config(store).get("system", {}).get("sublattice", {}).get("species") or []
    return str(species[0]) if species else None


def latest_model(store: Store) -> tuple[str, Path]:
    """Id and file of the newest trained or fine-tuned MACE model of a project.

    Raises
    ------
    NotComputedError
        No MACE model trained yet.
    """
    rows = store.query(
        f"SELECT model_id, path FROM mlip_models WHERE {PRIMARY_MACE_SQL} ORDER BY created_at DESC LIMIT 1"
    )
    if rows.empty:
        raise NotComputedError(f"{store.path}: no MACE model trained yet (capml mlip train, or capml run)")
    model_id = str(rows["model_id"][0])
    return model_id, mace_model_path(store, model_id)


#: SQL condition on ``gnn_models`` rows: models of the project's ensembles, baselines excluded.
NOT_BASELINE_SQL = f"NOT starts_with(ensemble_id, '{BASELINE_PREFIX}')"


def latest_ensemble(store: Store) -> tuple[str, str]:
    """The newest trained ensemble: (ensemble id, the level its gaps are at: high level if fine-tuned).

    Baseline ensembles (``gnn.baseline_architecture``) are comparisons, never the model later stages use.
    """
    rows = store.query(
        f"""SELECT ensemble_id, coalesce(high_level, cheap_level) AS level FROM gnn_models WHERE {NOT_BASELINE_SQL}
           ORDER BY created_at DESC LIMIT 1"""
    )
    if rows.empty:
        raise NotComputedError(f"{store.path}: no trained GNN yet (capml gnn train)")
    return str(rows["ensemble_id"][0]), str(rows["level"][0])


def mace_model_path(store: Store, model_id: str) -> Path:
    """The file of one MACE model of the project (trained, fine-tuned or foundation).

    Raises
    ------
    NotComputedError
        No model with that id.
    """
    rows = store.query("SELECT path FROM mlip_models WHERE model_id = ?", [model_id])
    if rows.empty:
        known = ", ".join(store.query("SELECT model_id FROM mlip_models ORDER BY created_at")["model_id"]) or "none"
        raise NotComputedError(f"{store.path}: no MACE model {model_id!r}; models of this project: {known}")
    path = Path(rows["path"][0])
    return path if path.is_absolute() else store.project_dir / path


def complete_md_runs(store: Store, model_id: str) -> pd.DataFrame:
    """The complete MD runs of MACE model ``model_id``: md_id, path, composition_x, temperature_k (sorted).

    Raises
    ------
    NotComputedError
        The model has no complete MD run.
    """
    runs = store.query(
        """SELECT md_id, path, composition_x, temperature_k FROM md_runs WHERE complete AND model_id = ?
           ORDER BY composition_x, temperature_k, md_id""",
        [model_id],
    )
    if runs.empty:
        raise NotComputedError(f"{store.path}: no complete MD run of MACE model {model_id}: run the dynamics stage")
    return runs


def ensemble_level(store: Store, ensemble_id: str) -> str:
    """The level the gaps of one GNN ensemble are at (its high level if fine-tuned, else its cheap level).

    Raises
    ------
    NotComputedError
        No ensemble with that id.
    """
    rows = store.query(
        "SELECT coalesce(high_level, cheap_level) AS level FROM gnn_models WHERE ensemble_id = ? LIMIT 1",
        [ensemble_id],
    )
    if rows.empty:
        known = ", ".join(store.query("SELECT DISTINCT ensemble_id FROM gnn_models ORDER BY 1")["ensemble_id"])
        raise NotComputedError(f"{store.path}: no GNN ensemble {ensemble_id!r}; ensembles: {known or 'none'}")
    return str(rows["level"][0])


def ensemble_model_dirs(store: Store, ensemble_id: str, *, stage: str = "final") -> list[Path]:
    """The model directories of one GNN ensemble, in ensemble order (load with ``models.gnn.load_ensemble``).

    ``stage="cheap"``: the members as they were after the cheap-level stage (the final models themselves when
    the ensemble was not fine-tuned; an empty list when it was fine-tuned before capml kept the cheap stage).

    Raises
    ------
    NotComputedError
        No ensemble with that id.
    """
    rows = store.query("SELECT relpath FROM gnn_models WHERE ensemble_id = ? ORDER BY ensemble_index", [ensemble_id])
    if rows.empty:
        ensemble_level(store, ensemble_id)  # raises, naming the ensembles there are
    final = [store.project_dir / p for p in rows["relpath"]]
    if stage == "final":
        return final
    if stage != "cheap":
        raise ValueError(f"stage {stage!r}; allowed: final, cheap")
    if store.query("SELECT 1 FROM gnn_models WHERE ensemble_id = ? AND high_level IS NULL", [ensemble_id]).empty:
        cheap = [d / CHEAP_STAGE_DIRNAME for d in final]
        return cheap if all(is_gap_model_dir(d) for d in cheap) else []
    return final


@dataclass(frozen=True)
class LevelSummary:
    """Labels of one level: counts and band-gap statistics (eV)."""

    level: str
    n_ok: int
    n_failed: int
    n_energy: int
    n_forces: int
    n_stress: int
    n_gap: int
    gap_min_ev: float | None
    gap_mean_ev: float | None
    gap_max_ev: float | None


@dataclass(frozen=True)
class DatasetSummary:
    """The stored dataset at a glance."""

    n_structures: int
    compositions: tuple[float, ...]
    levels: tuple[LevelSummary, ...]

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready form."""
        return {
            "n_structures": self.n_structures,
            "compositions": list(self.compositions),
            "levels": [vars(level) for level in self.levels],
        }


def summarise_dataset(store: Store) -> DatasetSummary:
    """Counts of structures and labels per level, compositions covered, gap range per level.

    The dataset is what can be labelled: structures derived by later stages (relaxed, frozen-mode) are not
    counted.
    """
    with store.read() as con:
        n_structures = con.execute(f"SELECT count(*) FROM structures s WHERE {DATASET_KIND_SQL}").fetchone()[0]
        compositions = [
            r[0]
            for r in con.execute(
                "SELECT DISTINCT composition_x FROM structures s "
                f"WHERE composition_x IS NOT NULL AND {DATASET_KIND_SQL} ORDER BY 1"
            ).fetchall()
        ]
        rows = con.execute(
            """SELECT level, count(*) FILTER (status = 'ok'), count(*) FILTER (status = 'failed'),
                      count(energy_ev), count(forces_ev_per_a), count(stress_ev_per_a3), count(gap_ev),
                      min(gap_ev), avg(gap_ev), max(gap_ev)
               FROM labels GROUP BY level ORDER BY level"""
        ).fetchall()
    return DatasetSummary(
        n_structures=int(n_structures),
        compositions=tuple(float(x) for x in compositions),
        levels=tuple(LevelSummary(*row) for row in rows),
    )


def harmonic_phonon_rows(store: Store, model_id: str, displacement_a: float) -> pd.DataFrame:
    """Stored harmonic phonons of MACE model ``model_id`` at one finite displacement (Å), by composition.

    Columns: structure_hash, composition_x, n_imaginary_gamma, min_frequency_thz (THz), imaginary_branches_json,
    artifact_id (the arrays: force constants, Γ modes, dispersion, DOS).
    """
    return store.query(
        """SELECT structure_hash, composition_x, n_imaginary_gamma, min_frequency_thz, imaginary_branches_json,
                  artifact_id FROM phonon_harmonic WHERE model_id = ? AND displacement_a = ? ORDER BY composition_x""",
        [model_id, displacement_a],
    )


def active_learning_overview(store: Store) -> dict[str, pd.DataFrame]:
    """What the dashboard shows of active learning by uncertainty, as three frames (empty when not run).

    ``rounds`` (``active_learning_rounds``), ``uncertainty`` (per-frame disagreement of the newest evaluation
    of each MACE model, without descriptors) and ``frames`` (every stored MD frame: held out or chosen in a
    round, with how many levels have an 'ok' label).
    """
    return {
        "rounds": store.query("SELECT * FROM active_learning_rounds ORDER BY round, created_at"),
        "uncertainty": store.query(
            """SELECT * EXCLUDE (descriptor) FROM md_uncertainty
               QUALIFY uncertainty_id = first_value(uncertainty_id) OVER
                 (PARTITION BY model_id ORDER BY created_at DESC)
               ORDER BY model_id, composition_x, temperature_k, md_id, frame"""
        ),
        "frames": store.query(
            """SELECT f.md_id, f.frame, f.time_fs, f.composition_x, f.temperature_k, f.model_id, f.held_out,
                      f.selection, f.round, count(l.structure_hash) AS n_levels_labelled
               FROM md_frames f LEFT JOIN labels l ON l.structure_hash = f.structure_hash AND l.status = 'ok'
               GROUP BY ALL ORDER BY f.round, f.composition_x, f.temperature_k, f.md_id, f.frame"""
        ),
    }
