"""Read access for the dashboard: the store of ``CAPML_PROJECT_DIR``, cached until the store file changes.

Every read opens a short read-only DuckDB connection (see capml_core.store.database), so the dashboard keeps working
while a flow writes: a read waits for the writer's current transaction, then sees what it committed. Results are
cached per (project, modification of the store file and its write-ahead log): a widget change or a second visit
re-reads nothing; a write by a flow shows on the next rerun.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import pandas as pd
import streamlit as st

from capml_core.errors import CapmlError, NotComputedError
from capml_core.store.database import Store
from capml_core.store.queries import DatasetSummary, active_learning_overview, summarise_dataset

logger = logging.getLogger(__name__)
T = TypeVar("T")

#: Results kept per cached function (one per store state: older states are evicted).
CACHE_ENTRIES = 64


def store_stamp(path: str) -> tuple:
    """What identifies the store's content: (mtime ns, size) of ``capml.duckdb`` and of its WAL, if any."""
    stamp = []
    for name in ("capml.duckdb", "capml.duckdb.wal"):
        try:
            info = (Path(path) / name).stat()
            stamp.append((info.st_mtime_ns, info.st_size))
        except OSError:
            stamp.append(None)
    return tuple(stamp)


def store_cached(read: Callable[..., T]) -> Callable[..., T]:
    """``read(path, *args)`` cached until the store at ``path`` changes (:func:`store_stamp`)."""

    def cached(path: str, stamp: tuple, *args):
        return read(path, *args)

    # Streamlit keys a cache by module, qualified name and source: nested functions would share one cache
    cached.__qualname__ = f"{read.__qualname__}.cached"
    cached = st.cache_data(show_spinner=False, max_entries=CACHE_ENTRIES)(cached)

    def reader(path: str, *args):
        return cached(path, store_stamp(path), *args)

    reader.__doc__ = read.__doc__
    reader.__name__ = read.__name__
    return reader


def project_dir() -> Path:
    """The project directory the dashboard shows (``CAPML_PROJECT_DIR``, else the working directory)."""
    return Path(os.environ.get("CAPML_PROJECT_DIR", ".")).resolve()


def read_or_explain(read: Callable[[], T]) -> T | None:
    """``read()``, or None after telling the user why the store cannot be shown (no store yet, an error)."""
    try:
        return read()
    except NotComputedError:
        st.info(f"No store in {project_dir()} yet. Run the pipeline first: `capml run CONFIG.toml`.")
    except CapmlError as err:
        logger.exception("cannot read the store")
        st.error(str(err))
    return None


@store_cached
def runs(path: str) -> pd.DataFrame:
    """All runs (``path`` keys the cache)."""
    with Store(path).batch() as store:
        return store.runs()


@store_cached
def stages(path: str) -> pd.DataFrame:
    """Stages of the latest run."""
    with Store(path).batch() as store:
        return store.stages()


@store_cached
def coverage(path: str) -> pd.DataFrame:
    """Structures per composition, condition and level."""
    with Store(path).batch() as store:
        return store.coverage()


@store_cached
def label_counts(path: str) -> pd.DataFrame:
    """Labels per level and status."""
    with Store(path).batch() as store:
        return store.label_counts()


@store_cached
def gaps(path: str) -> pd.DataFrame:
    """Band gaps per level."""
    with Store(path).batch() as store:
        return store.gaps()


@store_cached
def summary(path: str) -> DatasetSummary:
    """Structure and label counts."""
    return summarise_dataset(Store(path))


@store_cached
def set_coverage(path: str) -> pd.DataFrame:
    """Structure sets: members and labels per composition and condition."""
    with Store(path).batch() as store:
        return store.set_coverage()


@store_cached
def failed_labels(path: str) -> pd.DataFrame:
    """Failed calculations."""
    with Store(path).batch() as store:
        return store.failed_labels()


@store_cached
def gnn_results(path: str) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Metrics and predictions of the latest GNN ensemble."""
    with Store(path).batch() as store:
        return store.gnn_results()


@store_cached
def gnn_baseline_comparison(path: str) -> pd.DataFrame:
    """Test metrics of the latest ensemble next to its baseline's (same test structures)."""
    with Store(path).batch() as store:
        return store.gnn_baseline_comparison()


@store_cached
def gnn_search_and_curve(path: str) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Latest hyperparameter search and learning curve."""
    with Store(path).batch() as store:
        return store.gnn_search_and_curve()


@store_cached
def mlip_results(path: str) -> dict[str, pd.DataFrame]:
    """Models, metrics, predictions and phonon comparison of the latest MACE model."""
    with Store(path).batch() as store:
        return store.mlip_results()


@store_cached
def active_learning_results(path: str) -> pd.DataFrame:
    """Frames selected by active learning, per round, with their labels."""
    with Store(path).batch() as store:
        return store.active_learning_results()


@store_cached
def uncertainty_results(path: str) -> dict[str, pd.DataFrame]:
    """Active learning by uncertainty: rounds, per-frame disagreement along the MD, the stored MD frames."""
    return active_learning_overview(Store(path))


@store_cached
def arrays(path: str, artifact_id: str) -> dict:
    """Arrays of a stored artifact."""
    with Store(path).batch() as store:
        return store.load_arrays(artifact_id)


@store_cached
def disorder_results(path: str) -> dict[str, pd.DataFrame]:
    """The latest disorder scan: compositions, ranked relaxations, probabilities (empty frames when none)."""
    with Store(path).batch() as store:
        return store.disorder_results()


@store_cached
def structure(path: str, structure_hash: str):  # ase.Atoms
    """One stored structure."""
    with Store(path).batch() as store:
        return store.load_atoms(structure_hash)


@store_cached
def phonon_results(path: str) -> dict[str, pd.DataFrame]:
    """Harmonic phonons, MD runs (with health) and stability verdicts."""
    with Store(path).batch() as store:
        return store.phonon_results()


@store_cached
def bandgap_results(path: str) -> dict[str, pd.DataFrame]:
    """Eg(0), Eg(T), snapshot gaps and published gaps."""
    with Store(path).batch() as store:
        return store.bandgap_results()


@store_cached
def mode_group_results(path: str) -> pd.DataFrame:
    """Frozen-phonon subspaces and bands of the newest ensemble with mode results."""
    with Store(path).batch() as store:
        return store.mode_group_results()


@store_cached
def mode_results(path: str) -> pd.DataFrame:
    """Frozen-mode gap changes."""
    with Store(path).batch() as store:
        return store.mode_results()


@store_cached
def report(path: str) -> dict | None:
    """What the project found and how far to trust it (``capml report``); None before any band gap."""
    from capml_core.stages.report import project_report

    try:
        with Store(path).batch() as store:
            return project_report(store)
    except NotComputedError:
        return None


@store_cached
def composition_title(path: str) -> str:
    """Axis title of the composition x of this project ('Br fraction x')."""
    from capml_core.store.queries import substituted_species
    from dashboard.charts import composition_title as title

    return title(substituted_species(Store(path)))


@store_cached
def export_archive(path: str) -> bytes:
    """Every table of the store, one Parquet file each (zip), for the export button."""
    with Store(path).batch() as store:
        return store.export_archive()


@store_cached
def mode_harmonic_limit_a(path: str) -> float:
    """The rms displacement (Å) above which a frozen mode is beyond the harmonic regime (the run's config)."""
    from capml_core.config.stage_sections import GapsSection
    from capml_core.store.queries import newest_run_config

    recorded = newest_run_config(Store(path)).get("gaps", {}).get("mode_harmonic_limit_a")
    return float(recorded if recorded is not None else GapsSection.model_fields["mode_harmonic_limit_a"].default)
