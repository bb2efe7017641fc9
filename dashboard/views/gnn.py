"""Band-gap model page.

Metrics, parity plots and error histograms per stage (Fig. 3e-j of the paper), the search's best against a
baseline architecture on the same test split, hyperparameter-search ranking, learning curve.
"""

from __future__ import annotations

import plotly.express as px
import plotly.graph_objects as go
import streamlit as st

from dashboard import data

STAGE_TITLES = {"cheap": "trained on the cheap level", "high": "fine-tuned on the high level"}


def render_gnn() -> None:
    """Draw the band-gap model page."""
    st.title("Band-gap model")
    path = str(data.project_dir())
    loaded = data.read_or_explain(lambda: data.gnn_results(path))
    if loaded is None:
        return
    metrics, predictions = loaded
    if metrics.empty:
        st.info("No trained model yet: `capml gnn train -c CONFIG` (or the pipeline's gnn stage).")
        return

    st.subheader("Metrics of the latest ensemble (mean over its members)")
    table = metrics.groupby(["stage", "split"], as_index=False)[["n", "r2", "mae_ev", "rmse_ev", "max_error_ev"]].mean()
    st.dataframe(table.round(4), hide_index=True, width="stretch")
    comparison = data.gnn_baseline_comparison(path)
    if len(comparison):
        st.subheader("Search's best vs baseline (ensemble means, same test structures)")
        st.dataframe(comparison.round(4), hide_index=True, width="stretch")

    for stage in [s for s in ("cheap", "high") if s in set(predictions["stage"])]:
        subset = predictions[predictions["stage"] == stage]
        level = subset["level"].iloc[0]
        st.subheader(f"{level}: {STAGE_TITLES[stage]}")
        left, right = st.columns(2)
        low = float(min(subset["reference_ev"].min(), subset["predicted_ev"].min())) - 0.05
        high = float(max(subset["reference_ev"].max(), subset["predicted_ev"].max())) + 0.05
        parity = px.scatter(
            subset,
            x="reference_ev",
            y="predicted_ev",
            color="split",
            error_y="spread_ev",
            hover_data=["structure_hash"],
            title=f"parity ({level})",
            labels={"reference_ev": f"{level} gap (eV)", "predicted_ev": "GNN gap (eV)"},
            category_orders={"split": ["train", "valid", "test"]},
        )
        parity.add_trace(
            go.Scatter(x=[low, high], y=[low, high], mode="lines", name="y = x", line={"color": "grey", "dash": "dash"})
        )
        left.plotly_chart(parity, width="stretch", key=f"parity_{stage}")
        errors = subset.assign(error_ev=subset["predicted_ev"] - subset["reference_ev"])
        histogram = px.histogram(
            errors,
            x="error_ev",
            color="split",
            barmode="overlay",
            opacity=0.65,
            nbins=30,
            title=f"prediction errors ({level})",
            labels={"error_ev": "GNN − reference (eV)"},
            category_orders={"split": ["train", "valid", "test"]},
        )
        right.plotly_chart(histogram, width="stretch", key=f"errors_{stage}")

    trials, curve = data.gnn_search_and_curve(path)
    st.subheader("Hyperparameter search (validation split)")
    if len(trials):
        st.dataframe(trials.round(4), hide_index=True, width="stretch")
    else:
        st.write("no search recorded (`[gnn] search_architectures` in the config)")
    st.subheader("Learning curve")
    if len(curve):
        figure = px.line(
            curve,
            x="n_train",
            y="test_mae_ev",
            markers=True,
            title="test MAE vs training-set size",
            labels={"n_train": "training structures", "test_mae_ev": "test MAE (eV)"},
        )
        st.plotly_chart(figure, width="stretch", key="learning_curve")
    else:
        st.write("no learning curve recorded")
