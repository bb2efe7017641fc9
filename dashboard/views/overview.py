"""Overview page: the results first, then the pipeline's bookkeeping.

Results: Eg(x, T), ΔEg/Eg and a trust panel (the facts of ``capml report``); bookkeeping: runs, stage status,
dataset coverage, label counts, gap histograms.
"""

from __future__ import annotations

import logging

import pandas as pd
import plotly.express as px
import streamlit as st

from capml_core.stages.report import dft_checks_sentence, gate_summary
from dashboard import data
from dashboard.charts import cell_heatmap, show
from dashboard.views.bandgaps import eg_vs_composition_figure

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


def render_results(report: dict, path: str) -> None:
    """Eg(x) per temperature with the published points, ΔEg/Eg per composition, and the trust panel."""
    gaps = pd.DataFrame(report["gaps"])
    static = pd.DataFrame(report["static"])
    st.subheader("Eg(x, T)")
    averaged = gaps[gaps["gap_ev"].notna()] if len(gaps) else gaps
    zero = pd.DataFrame(
        {
            "composition_x": static["composition_x"],
            "temperature_k": 0.0,
            "gap_ev": static["cubic_gap_ev"],
            "error_ev": static["cubic_gap_spread_ev"],
        }
    )
    table = pd.concat([zero, averaged[list(zero.columns)]] if len(averaged) else [zero], ignore_index=True)
    published = pd.DataFrame(report["published"])
    figure = eg_vs_composition_figure(table, published, data.composition_title(path))
    figure.update_layout(height=420)
    show(figure, key="results_eg", data=table)
    st.caption("circles: capml; diamonds: the paper's calculation; stars: experiment; colour: temperature.")
    if len(averaged):
        table = averaged.pivot_table(index="composition_x", columns="temperature_k", values="relative_change") * 100
        table.columns = [f"{t:g} K" for t in table.columns]
        st.markdown("**ΔEg/Eg(0) (%) against the cubic structure** (the model's Eg(0))")
        st.dataframe(table.round(1), width="stretch")
        if "relative_change_dft_eg0" in averaged and averaged["relative_change_dft_eg0"].notna().any():
            against_dft = averaged[averaged["relative_change_dft_eg0"].notna()]
            table = (
                against_dft.pivot_table(
                    index="composition_x", columns="temperature_k", values="relative_change_dft_eg0"
                )
                * 100
            )
            table.columns = [f"{t:g} K" for t in table.columns]
            st.markdown(
                "**ΔEg/Eg(0) (%) against DFT's cubic Eg(0)** (where DFT computed it: the model's Eg(T), DFT's Eg(0); "
                "read this one where the model's Eg(0) is off DFT, see the flags)"
            )
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
    st.markdown(
        "Held-out errors by round: [Active learning](./active-learning); test splits: "
        "[Band-gap model](./band-gap-model), [Interatomic potential](./interatomic-potential)."
    )
    st.markdown(
        "[DFT checks of Eg(T)](./band-gaps) on the MD's own frames: "
        + dft_checks_sentence(report.get("dft_checks"), len(report["gaps"]))
    )
    stabilised = report["stabilisation_k"]
    gate = report.get("phonon_gate")  # absent from reports of older capml versions
    if gate and gate["n_runs"]:  # the report's own sentence: one wording of the gate's state
        st.markdown(f"[Dynamic stability](./phonons): {gate_summary(gate)}")
    if stabilised:
        st.markdown(
            "Stabilisation temperature: "
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
        render_results(report, path)
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
        heat = cell_heatmap(
            grid,
            x_title=data.composition_title(path),
            y_title="condition",
            colour_title="structures",
            title=f"structures per composition and condition at {level}",
        )
        if heat is None:
            st.dataframe(grid, width="stretch")
        else:
            show(heat, key="coverage_heatmap", data=grid.reset_index())
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
        show(bars, key="label_bars", data=counts)
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
        show(hist, key="gap_histogram", data=gaps)
    else:
        st.write("no band gaps yet")
