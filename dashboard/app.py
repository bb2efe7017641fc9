"""capml dashboard entry point.

Start it with ``capml dashboard --project DIR`` (or ``streamlit run dashboard/app.py`` with
``CAPML_PROJECT_DIR`` set). Later stages add their pages to ``PAGES``.
"""

from __future__ import annotations

import streamlit as st

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

PAGES = [
    st.Page(render_overview, title="Overview", url_path="overview", default=True),
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
st.navigation(PAGES).run()
