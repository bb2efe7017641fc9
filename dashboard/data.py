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
    """``read(store, *args)`` as ``reader(path, *args)``, cached until the store at ``path`` changes.

    ``read`` gets the :class:`Store` of ``path`` inside :meth:`Store.batch`: all its queries share one read-only
    connection. The cache is keyed on :func:`store_stamp`.
    """

    def cached(path: str, stamp: tuple, *args):
        with Store(path).batch() as store:
            return read(store, *args)

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
def runs(store: Store) -> pd.DataFrame:
    """All runs."""
    return store.runs()


@store_cached
def stages(store: Store) -> pd.DataFrame:
    """Stages of the latest run."""
    return store.stages()


@store_cached
def coverage(store: Store) -> pd.DataFrame:
    """Structures per composition, condition and level."""
    return store.coverage()


@store_cached
def label_counts(store: Store) -> pd.DataFrame:
    """Labels per level and status."""
    return store.label_counts()


@store_cached
def gaps(store: Store) -> pd.DataFrame:
    """Band gaps per level."""
    return store.gaps()


@store_cached
def summary(store: Store) -> DatasetSummary:
    """Structure and label counts."""
    return summarise_dataset(store)


@store_cached
def set_coverage(store: Store) -> pd.DataFrame:
    """Structure sets: members and labels per composition and condition."""
    return store.set_coverage()


@store_cached
def failed_labels(store: Store) -> pd.DataFrame:
    """Failed calculations."""
    return store.failed_labels()


@store_cached
def gnn_results(store: Store) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Metrics and predictions of the latest GNN ensemble."""
    return store.gnn_results()


@store_cached
def gnn_baseline_comparison(store: Store) -> pd.DataFrame:
    """Test metrics of the latest ensemble next to its baseline's (same test structures)."""
    return store.gnn_baseline_comparison()


@store_cached
def gnn_search_and_curve(store: Store) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Latest hyperparameter search and learning curve."""
    return store.gnn_search_and_curve()


@store_cached
def mlip_results(store: Store) -> dict[str, pd.DataFrame]:
    """Models, metrics, predictions and phonon comparison of the latest MACE model."""
    return store.mlip_results()


@store_cached
def active_learning_results(store: Store) -> pd.DataFrame:
    """Frames selected by active learning, per round, with their labels."""
    return store.active_learning_results()


@store_cached
def uncertainty_results(store: Store) -> dict[str, pd.DataFrame]:
    """Active learning by uncertainty: rounds, per-frame disagreement along the MD, the stored MD frames."""
    return active_learning_overview(store)


@store_cached
def arrays(store: Store, artifact_id: str) -> dict:
    """Arrays of a stored artifact."""
    return store.load_arrays(artifact_id)


@store_cached
def disorder_results(store: Store) -> dict[str, pd.DataFrame]:
    """The latest disorder scan: compositions, ranked relaxations, probabilities (empty frames when none)."""
    return store.disorder_results()


@store_cached
def structure(store: Store, structure_hash: str):  # ase.Atoms
    """One stored structure."""
    return store.load_atoms(structure_hash)


@store_cached
def phonon_results(store: Store) -> dict[str, pd.DataFrame]:
    """Harmonic phonons, MD runs (with health) and stability verdicts."""
    return store.phonon_results()


@store_cached
def bandgap_results(store: Store) -> dict[str, pd.DataFrame]:
    """Eg(0), Eg(T), snapshot gaps and published gaps."""
    return store.bandgap_results()


@store_cached
def mode_group_results(store: Store) -> pd.DataFrame:
    """Frozen-phonon subspaces and bands of the newest ensemble with mode results."""
    return store.mode_group_results()


@store_cached
def mode_results(store: Store) -> pd.DataFrame:
    """Frozen-mode gap changes."""
    return store.mode_results()


@store_cached
def report(store: Store) -> dict | None:
    """What the project found and how far to trust it (``capml report``); None before any band gap."""
    from capml_core.stages.report import project_report

    try:
        return project_report(store)
    except NotComputedError:
        return None


@store_cached
def composition_title(store: Store) -> str:
    """Axis title of the composition x of this project ('Br fraction x')."""
    from capml_core.store.queries import substituted_species
    from dashboard.charts import composition_title as title

    return title(substituted_species(store))


@store_cached
def export_archive(store: Store) -> bytes:
    """Every table of the store, one Parquet file each (zip), for the export button."""
    return store.export_archive()


@store_cached
def mode_harmonic_limit_a(store: Store) -> float:
    """The rms displacement (Å) above which a frozen mode is beyond the harmonic regime (the run's config)."""
    from capml_core.config.stage_sections import GapsSection
    from capml_core.store.queries import newest_run_config

    recorded = newest_run_config(store).get("gaps", {}).get("mode_harmonic_limit_a")
    return float(recorded if recorded is not None else GapsSection.model_fields["mode_harmonic_limit_a"].default)
