"""Read access for the dashboard: the store of ``CAPML_PROJECT_DIR``, cached for a few seconds.

Every read opens a short read-only DuckDB connection (see capml_core.store.database), so the dashboard keeps working
while a flow writes: a read waits for the writer's current transaction, then sees what it committed.
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

#: Seconds a query result is reused before the store is read again.
CACHE_TTL_S = 5


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


@st.cache_data(ttl=CACHE_TTL_S, show_spinner=False)
def runs(path: str) -> pd.DataFrame:
    """All runs (``path`` keys the cache)."""
    return Store(path).runs()


@st.cache_data(ttl=CACHE_TTL_S, show_spinner=False)
def stages(path: str) -> pd.DataFrame:
    """Stages of the latest run."""
    return Store(path).stages()


@st.cache_data(ttl=CACHE_TTL_S, show_spinner=False)
def coverage(path: str) -> pd.DataFrame:
    """Structures per composition, condition and level."""
    return Store(path).coverage()


@st.cache_data(ttl=CACHE_TTL_S, show_spinner=False)
def label_counts(path: str) -> pd.DataFrame:
    """Labels per level and status."""
    return Store(path).label_counts()


@st.cache_data(ttl=CACHE_TTL_S, show_spinner=False)
def gaps(path: str) -> pd.DataFrame:
    """Band gaps per level."""
    return Store(path).gaps()


@st.cache_data(ttl=CACHE_TTL_S, show_spinner=False)
def summary(path: str) -> DatasetSummary:
    """Structure and label counts."""
    return summarise_dataset(Store(path))


@st.cache_data(ttl=CACHE_TTL_S, show_spinner=False)
def set_coverage(path: str) -> pd.DataFrame:
    """Structure sets: members and labels per composition and condition."""
    return Store(path).set_coverage()


@st.cache_data(ttl=CACHE_TTL_S, show_spinner=False)
def failed_labels(path: str) -> pd.DataFrame:
    """Failed calculations."""
    return Store(path).failed_labels()


@st.cache_data(ttl=CACHE_TTL_S, show_spinner=False)
def gnn_results(path: str) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Metrics and predictions of the latest GNN ensemble."""
    return Store(path).gnn_results()


@st.cache_data(ttl=CACHE_TTL_S, show_spinner=False)
def gnn_baseline_comparison(path: str) -> pd.DataFrame:
    """Test metrics of the latest ensemble next to its baseline's (same test structures)."""
    return Store(path).gnn_baseline_comparison()


@st.cache_data(ttl=CACHE_TTL_S, show_spinner=False)
def gnn_search_and_curve(path: str) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Latest hyperparameter search and learning curve."""
    return Store(path).gnn_search_and_curve()


@st.cache_data(ttl=CACHE_TTL_S, show_spinner=False)
def mlip_results(path: str) -> dict[str, pd.DataFrame]:
    """Models, metrics, predictions and phonon comparison of the latest MACE model."""
    return Store(path).mlip_results()


@st.cache_data(ttl=CACHE_TTL_S, show_spinner=False)
def active_learning_results(path: str) -> pd.DataFrame:
    """Frames selected by active learning, per round, with their labels."""
    return Store(path).active_learning_results()


@st.cache_data(ttl=CACHE_TTL_S, show_spinner=False)
def uncertainty_results(path: str) -> dict[str, pd.DataFrame]:
    """Active learning by uncertainty: rounds, per-frame disagreement along the MD, the stored MD frames."""
    return active_learning_overview(Store(path))


@st.cache_data(ttl=CACHE_TTL_S, show_spinner=False)
def arrays(path: str, artifact_id: str) -> dict:
    """Arrays of a stored artifact."""
    return Store(path).load_arrays(artifact_id)


@st.cache_data(ttl=CACHE_TTL_S, show_spinner=False)
def disorder_results(path: str) -> dict[str, pd.DataFrame]:
    """The latest disorder scan: compositions, ranked relaxations, probabilities (empty frames when none)."""
    return Store(path).disorder_results()


@st.cache_data(ttl=CACHE_TTL_S, show_spinner=False)
def structure(path: str, structure_hash: str):  # ase.Atoms
    """One stored structure."""
    return Store(path).load_atoms(structure_hash)


@st.cache_data(ttl=CACHE_TTL_S, show_spinner=False)
def phonon_results(path: str) -> dict[str, pd.DataFrame]:
    """Harmonic phonons, MD runs (with health) and stability verdicts."""
    return Store(path).phonon_results()


@st.cache_data(ttl=CACHE_TTL_S, show_spinner=False)
def bandgap_results(path: str) -> dict[str, pd.DataFrame]:
    """Eg(0), Eg(T), snapshot gaps and published gaps."""
    return Store(path).bandgap_results()


@st.cache_data(ttl=CACHE_TTL_S, show_spinner=False)
def mode_group_results(path: str) -> pd.DataFrame:
    """Frozen-phonon subspaces and bands of the newest ensemble with mode results."""
    return Store(path).mode_group_results()


@st.cache_data(ttl=CACHE_TTL_S, show_spinner=False)
def mode_results(path: str) -> pd.DataFrame:
    """Frozen-mode gap changes."""
    return Store(path).mode_results()
