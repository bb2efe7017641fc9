"""capml dashboard entry point.

Start it with ``capml dashboard --project DIR`` (or ``streamlit run dashboard/app.py`` with
``CAPML_PROJECT_DIR`` set). Later stages add their pages to ``PAGES``.
"""

from __future__ import annotations

from pathlib import Path

import streamlit as st

from capml_core.store.database import Store
from dashboard import data
from dashboard.charts import FIGURE_FORMAT_KEY, FIGURE_FORMATS
from dashboard.views.active_learning import render_active_learning_rounds
from dashboard.views.bandgaps import render_bandgaps
from dashboard.views.dataset import render_dataset
from dashboard.views.disorder import render_disorder
from dashboard.views.gnn import render_gnn
from dashboard.views.mlip import render_mlip
from dashboard.views.modes import render_modes
from dashboard.views.overview import render_overview
from dashboard.views.phonons import render_phonons
from dashboard.views.sql import render_sql

st.set_page_config(page_title="capml", layout="wide")


def overview_at_its_name() -> None:
    """The overview at /overview too (Streamlit serves the default page at / only)."""
    render_overview()


PAGES = [
    st.Page(render_overview, title="Overview", url_path="home", default=True),
    st.Page(overview_at_its_name, title="Overview", url_path="overview", visibility="hidden"),
    st.Page(render_dataset, title="Dataset", url_path="dataset"),
    st.Page(render_gnn, title="Band-gap model", url_path="band-gap-model"),
    st.Page(render_mlip, title="Interatomic potential", url_path="interatomic-potential"),
    st.Page(render_disorder, title="Disorder", url_path="disorder"),
    st.Page(render_phonons, title="Phonons", url_path="phonons"),
    st.Page(render_bandgaps, title="Band gaps", url_path="band-gaps"),
    st.Page(render_modes, title="Modes", url_path="modes"),
    st.Page(render_active_learning_rounds, title="Active learning", url_path="active-learning"),
    st.Page(render_sql, title="SQL", url_path="sql"),
]
page = st.navigation(PAGES)
with st.sidebar:
    st.radio(
        "chart downloads (toolbar camera)",
        FIGURE_FORMATS,
        horizontal=True,
        key=FIGURE_FORMAT_KEY,
        format_func=str.upper,
    )
    project = str(data.project_dir())
    if Store(project).exists():
        st.download_button(
            "export this project's results",
            data=lambda: data.export_archive(project),
            file_name=f"capml-{Path(project).name}-tables.zip",
            mime="application/zip",
            help="Every table of the store as Parquet (zip; DuckDB's IMPORT DATABASE rebuilds it from load.sql).",
            on_click="ignore",
            key="export_project",
        )
page.run()
