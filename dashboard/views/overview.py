"""Overview page: the results first, then the pipeline's bookkeeping.

Results: Eg(x, T), ΔEg/Eg and a trust panel (the facts of ``capml report``); bookkeeping: runs, stage status,
dataset coverage, label counts, gap histograms.
"""

from __future__ import annotations

import logging

import pandas as pd
import plotly.express as px
import streamlit as st

from dashboard import data
from dashboard.style import SOURCE_SYMBOLS, temperature_colour

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


def render_results(report: dict) -> None:
    """Eg(x) per temperature with the published points, ΔEg/Eg per composition, and the trust panel."""
    import plotly.graph_objects as go

    gaps = pd.DataFrame(report["gaps"])
    static = pd.DataFrame(report["static"])
    st.subheader("Eg(x, T)")
    figure = go.Figure()
    figure.add_trace(
        go.Scatter(
            x=static["composition_x"],
            y=static["cubic_gap_ev"],
            mode="lines+markers",
            marker={"symbol": SOURCE_SYMBOLS["capml"], "color": temperature_colour(0.0)},
            line={"color": temperature_colour(0.0)},
            name="capml 0 K (cubic)",
        )
    )
    averaged = gaps[gaps["gap_ev"].notna()] if len(gaps) else gaps
    for temperature, rows in averaged.groupby("temperature_k") if len(averaged) else []:
        figure.add_trace(
            go.Scatter(
                x=rows["composition_x"],
                y=rows["gap_ev"],
                error_y={"type": "data", "array": rows["error_ev"]},
                mode="lines+markers",
                marker={"symbol": SOURCE_SYMBOLS["capml"], "color": temperature_colour(temperature)},
                line={"color": temperature_colour(temperature)},
                name=f"capml {temperature:g} K",
            )
        )
    for p in report["published"]:
        figure.add_trace(
            go.Scatter(
                x=[p["composition_x"]],
                y=[p["gap_ev"]],
                error_y={"type": "data", "array": [p["uncertainty_ev"] or 0.0]},
                mode="markers",
                marker={
                    "symbol": SOURCE_SYMBOLS.get(p["kind"], "x"),
                    "size": 11,
                    "color": temperature_colour(p["temperature_k"]),
                },
                name=f"{p['kind']} {p['temperature_k']:g} K",
                showlegend=False,
            )
        )
    figure.update_layout(xaxis_title="Br fraction x", yaxis_title="Eg (eV)", height=420)
    figure.update_xaxes(tickvals=sorted(static["composition_x"]))
    st.plotly_chart(figure, width="stretch", key="results_eg")
    st.caption("circles: capml; diamonds: the paper's calculation; stars: experiment; colour: temperature.")
    if len(averaged):
        table = averaged.pivot_table(index="composition_x", columns="temperature_k", values="relative_change") * 100
        table.columns = [f"{t:g} K" for t in table.columns]
        st.markdown("**ΔEg/Eg(0) (%) against the cubic structure**")
        st.dataframe(table.round(1), width="stretch")

    st.subheader("How far to trust it")
    models = report["models"]
    cells = st.columns(len(models["gnn"]) + 1)
    for cell, (level, numbers) in zip(cells, models["gnn"].items(), strict=False):
        value = numbers["md_frames_mae_ev"]
        cell.metric(
            f"gap MAE on held-out MD frames ({level})",
            "not measured" if value is None else f"{value:.3f} eV",
            help=f"test split: {numbers['test_mae_ev']}",
        )
    force = models["mace"].get("md_frames_force_mae_ev_per_a")
    cells[-1].metric("MACE force MAE on held-out MD frames", "not measured" if force is None else f"{force:.3f} eV/Å")
    checked = [g for g in report["gaps"] if g["dft_verdict"]]
    verdicts = pd.Series([g["dft_verdict"] for g in checked]).value_counts().to_dict() if checked else {}
    st.write(
        f"DFT checks of Eg(T) on the MD's own frames: {len(checked)} of {len(report['gaps'])} averages checked"
        + (": " + ", ".join(f"{n} {v}" for v, n in verdicts.items()) if verdicts else "")
    )
    stabilised = report["stabilisation_k"]
    if stabilised:
        st.write(
            "Dynamic stability (phonon gate): "
            + ", ".join(
                f"x = {x}: {'not by the hottest T' if t is None else f'from {t:g} K'}" for x, t in stabilised.items()
            )
        )
    for flag in report["flags"]:
        st.warning(flag)
    st.caption(
        "Details: the Band gaps page (DFT checks, estimates, published comparison), Active learning (held-out "
        "errors by round), Phonons (verdicts), Modes; the same facts: `capml report --project DIR`."
    )


def render_overview() -> None:
    """Draw the overview page."""
    st.title("capml")
    path = str(data.project_dir())
    st.caption(f"project {path}")
    loaded = data.read_or_explain(lambda: data.runs(path))
    if loaded is None:
        return
    runs = loaded
    report = data.report(path)
    if report is None:
        st.info("No results yet: the band-gap stage has not run (`capml run CONFIG`); the bookkeeping below says why.")
    else:
        render_results(report)
    st.divider()
    st.header("Pipeline bookkeeping")

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
