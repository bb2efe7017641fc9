"""SQL page: users' own read-only queries on the store, with examples (capml_core.store.sql does the checking)."""

from __future__ import annotations

import streamlit as st

from capml_core.errors import CapmlError
from capml_core.store.database import Store
from capml_core.store.sql import QueryRefused, run_user_query
from dashboard import data

#: Rows shown at most (the query runs in full on the store; only this many come back).
MAX_ROWS = 5000

EXAMPLES = {
    "Tables and views": "SHOW TABLES",
    "Labelled structures per level and composition": (
        "SELECT level, composition_x, count(*) AS n, round(avg(gap_ev), 3) AS mean_gap_ev\n"
        "FROM labelled_structures GROUP BY ALL ORDER BY ALL"
    ),
    "Eg(T, x) of the newest GNN ensemble": (
        "SELECT composition_x, temperature_k, mean_gap_ev, error_ev, delta_ev, relative_change, reason\n"
        "FROM gap_thermal\n"
        "WHERE ensemble_id = (SELECT ensemble_id FROM gap_thermal ORDER BY created_at DESC LIMIT 1)\n"
        "ORDER BY ALL"
    ),
    "Modes that lower the gap most": (
        "SELECT composition_x, temperature_k, mode, frequency_thz, dominant, relative_change\n"
        "FROM gap_modes WHERE status = 'frozen' ORDER BY relative_change LIMIT 20"
    ),
    "MACE test errors": "SELECT model_id, quantity, split, n, mae, rmse, r2 FROM mlip_metrics WHERE split = 'test'",
    "MD health": (
        "SELECT composition_x, temperature_k, mean_temperature_k, drift_mev_per_atom_per_ps, status, problems\n"
        "FROM md_runs ORDER BY ALL"
    ),
}


def render_sql() -> None:
    """Draw the SQL page."""
    st.title("SQL")
    st.caption(
        "Read-only queries on the store (DuckDB SQL; tables in docs/store.md). One statement at a time; anything "
        "that writes, attaches a database, loads an extension, changes a setting or reads files is refused. "
        f"At most {MAX_ROWS} rows are shown."
    )
    example = st.selectbox("Example", list(EXAMPLES))
    sql = st.text_area("Query", value=EXAMPLES[example], height=160)
    if not st.button("Run", type="primary"):
        return
    try:
        frame = run_user_query(Store(data.project_dir()), sql, max_rows=MAX_ROWS)
    except QueryRefused as err:
        st.error(f"Refused: {err}")
        return
    except CapmlError as err:
        st.error(str(err))
        return
    st.dataframe(frame, hide_index=True, width="stretch")
    st.download_button("Download CSV", frame.to_csv(index=False), file_name="capml-query.csv", mime="text/csv")
