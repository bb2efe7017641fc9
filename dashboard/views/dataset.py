"""Dataset page.

Generated structures per composition and temperature, label coverage per level, gap distributions per level
and composition (like Fig. 3c,d of the paper), failed calculations.
"""

from __future__ import annotations

import plotly.express as px
import streamlit as st

from dashboard import data
from dashboard.charts import cell_heatmap, show
from dashboard.views.overview import condition_label, condition_order


def render_dataset() -> None:
    """Draw the dataset page."""
    st.title("Dataset")
    path = str(data.project_dir())
    loaded = data.read_or_explain(lambda: (data.set_coverage(path), data.gaps(path), data.failed_labels(path)))
    if loaded is None:
        return
    sets, gaps, failed = loaded
    composition = data.composition_title(path)

    st.subheader("Generated structures")
    if len(sets):
        sets = sets.assign(condition=sets.apply(condition_label, axis=1))
        names = sorted(sets["set_name"].unique())
        chosen = st.selectbox("structure set", names, key="dataset_set")
        one = sets[sets["set_name"] == chosen]
        grid = one.pivot_table(
            index="condition", columns="composition_x", values="n_structures", aggfunc="sum", fill_value=0
        )
        grid = grid.loc[sorted(grid.index, key=condition_order)]
        heat = cell_heatmap(
            grid,
            x_title=composition,
            y_title="condition",
            colour_title="structures",
            colour_scale="Greens",
            title=f"set {chosen}: structures per composition and condition",
        )
        if heat is None:  # one row, or the same count everywhere: the table says it plainly
            st.markdown(f"**set {chosen}: structures per composition ({composition}) and condition**")
            st.dataframe(grid, width="stretch")
        else:
            show(heat, key="set_heatmap", data=grid.reset_index())
        progress = sets.groupby(["set_name", "level"], as_index=False)[["n_structures", "n_ok", "n_failed"]].sum()
        progress["n_pending"] = progress["n_structures"] - progress["n_ok"] - progress["n_failed"]
        st.markdown("**Label coverage per set**")
        st.dataframe(progress, hide_index=True, width="stretch")
        long = progress.rename(columns={"n_ok": "labelled", "n_failed": "failed", "n_pending": "pending"}).melt(
            id_vars=["set_name", "level"],
            value_vars=["labelled", "failed", "pending"],
            var_name="state",
            value_name="structures",
        )
        show(
            px.bar(
                long,
                x="set_name",
                y="structures",
                color="state",
                text_auto=True,
                color_discrete_map={"labelled": "#2ca02c", "failed": "#d62728", "pending": "#bbbbbb"},
                title="labelled, failed and pending structures per set",
            ),
            key="set_progress",
            data=progress,
        )
    else:
        st.write("no generated structure sets yet (`[[dataset.sets]]` in the config)")

    st.subheader("Band gaps per composition")
    if len(gaps):
        levels = sorted(gaps["level"].unique())
        box = px.box(
            gaps,
            x="composition_x",
            y="gap_ev",
            color="level",
            points="all",
            category_orders={"level": levels},
            labels={"composition_x": composition, "gap_ev": "band gap (eV)"},
            title="band-gap distribution per composition and level",
        )
        box.update_xaxes(tickvals=sorted(gaps["composition_x"].dropna().unique()))
        show(box, key="gap_box", data=gaps)
    else:
        st.write("no band gaps yet")

    st.subheader("Failed calculations")
    if len(failed):
        st.dataframe(failed, hide_index=True, width="stretch")
    else:
        st.write("none")
