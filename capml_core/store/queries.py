"""Look-ups of other stages' results: newest model, ensemble, disorder scan, lowest structures."""

from __future__ import annotations

from pathlib import Path

from ase import Atoms

from capml_core.errors import NotComputedError
from capml_core.store.database import Store
from capml_core.store.schema import GNN_BASELINE_PREFIX as BASELINE_PREFIX


def latest_scan_id(store) -> str:  # noqa: ANN001
    """The newest disorder scan of a project."""
    from capml_core.errors import NotComputedError

    rows = store.query("SELECT scan_id FROM disorder_scans ORDER BY created_at DESC LIMIT 1")
    if rows.empty:
        raise NotComputedError(f"{store.path}: no disorder scan yet (capml disorder, or capml run)")
    return str(rows["scan_id"][0])


def lowest_energy_structures(store, scan_id: str | None = None) -> dict[float, Atoms]:  # noqa: ANN001
    """The relaxed lowest-energy structure of each composition (what the later stages start from)."""
    scan_id = scan_id or latest_scan_id(store)
    frame = store.query(
        """SELECT composition_x, structure_hash FROM disorder_relaxations WHERE scan_id = ?
           QUALIFY row_number() OVER (PARTITION BY composition_x ORDER BY energy_ev_per_atom, arrangement) = 1
           ORDER BY composition_x""",
        [scan_id],
    )
    structures = store.load_structures(frame["structure_hash"].tolist())
    return {float(x): structures[h] for x, h in zip(frame["composition_x"], frame["structure_hash"], strict=True)}


def latest_model(store: Store) -> tuple[str, Path]:
    """Id and file of the newest trained or fine-tuned MACE model of a project.

    Raises
    ------
    NotComputedError
        No MACE model trained yet.
    """
    rows = store.query(
        "SELECT model_id, path FROM mlip_models WHERE kind <> 'foundation' ORDER BY created_at DESC LIMIT 1"
    )
    if rows.empty:
        raise NotComputedError(f"{store.path}: no MACE model trained yet (capml mlip train, or capml run)")
    path = Path(rows["path"][0])
    return rows["model_id"][0], path if path.is_absolute() else store.project_dir / path


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
