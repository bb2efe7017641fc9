"""Overview page: runs, stage status of the latest run, dataset coverage, label counts, gap histograms."""

from __future__ import annotations

import logging

import pandas as pd
import plotly.express as px
import streamlit as st

from dashboard import data

logger = logging.getLogger(__name__)


def condition_label(row: pd.Series) -> str:
    """How a structure was made, for the coverage axis: temperature, displacement amplitude or equilibrium."""
    if pd.notna(row["temperature_k"]):
        return f"T = {row['temperature_k']:g} K"
    if pd.notna(row["amplitude_a"]) and row["amplitude_a"] > 0:
        return f"σ = {row['amplitude_a']:.2f} Å"
    return "equilibrium"


def condition_order(label: str) -> tuple[int, float]:
    """Sort key of condition labels: equilibrium, then temperatures, then amplitudes, ascending."""
    if label == "equilibrium":
        return (0, 0.0)
    value = float(label.split("=")[1].split()[0])
    return (1 if label.startswith("T") else 2, value)


def render_overview() -> None:
    """Draw the overview page."""
    st.title("capml")
    path = str(data.project_dir())
    st.caption(f"project {path}")
    loaded = data.read_or_explain(lambda: data.runs(path))
    if loaded is None:
        return
    runs = loaded

    stages, coverage = data.stages(path), data.coverage(path)
    counts, gaps, summary = data.label_counts(path), data.gaps(path), data.summary(path)

    col1, col2, col3, col4 = st.columns(4)
    col1.metric("runs", len(runs))
    col2.metric("latest run", runs["status"].iloc[0] if len(runs) else "-")
    col3.metric("structures", summary.n_structures)
    col4.metric("reference levels", len(summary.levels))

    st.subheader("Runs")
    st.dataframe(runs, hide_index=True, width="stretch")

    st.subheader("Stage status (latest run)")
    if len(stages):
        st.dataframe(stages, hide_index=True, width="stretch")
    else:
        st.write("no stage recorded yet")

    st.subheader("Dataset coverage")
    labelled = coverage[coverage["level"] != "(unlabelled)"]
    if len(labelled):
        levels = sorted(labelled["level"].unique())
        level = st.selectbox("reference level", levels, key="coverage_level")
        chosen = labelled[labelled["level"] == level].copy()
        chosen["condition"] = chosen.apply(condition_label, axis=1)
        grid = chosen.pivot_table(
            index="condition", columns="composition_x", values="n_structures", aggfunc="sum", fill_value=0
        )
        grid = grid.loc[sorted(grid.index, key=condition_order)]
        grid.columns = [f"{x:.3f}" for x in grid.columns]
        heat = px.imshow(
            grid,
            text_auto=True,
            aspect="auto",
            color_continuous_scale="Blues",
            labels={"x": "x (fraction of first sublattice species)", "y": "condition", "color": "structures"},
            title=f"structures per composition and condition at {level}",
        )
        st.plotly_chart(heat, width="stretch", key="coverage_heatmap")
    else:
        st.write("no labelled structures yet")

    st.subheader("Labels per level")
    if len(counts):
        bars = px.bar(
            counts,
            x="level",
            y="n_structures",
            color="status",
            barmode="group",
            text_auto=True,
            labels={"n_structures": "structures"},
            title="labelled structures per reference level",
        )
        st.plotly_chart(bars, width="stretch", key="label_bars")
        st.dataframe(counts, hide_index=True, width="stretch")

    st.subheader("Band-gap distributions")
    if len(gaps):
        hist = px.histogram(
            gaps,
            x="gap_ev",
            color="level",
            barmode="overlay",
            opacity=0.65,
            nbins=40,
            labels={"gap_ev": "band gap (eV)"},
            title="band gaps per reference level",
        )
        st.plotly_chart(hist, width="stretch", key="gap_histogram")
    else:
        st.write("no band gaps yet")
