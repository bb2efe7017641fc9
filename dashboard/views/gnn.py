"""Band-gap model page.

Metrics, parity plots and error histograms per stage (Fig. 3e-j of the paper), the search's best against a
baseline architecture on the same test split, hyperparameter-search ranking, learning curve.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import plotly.express as px
import streamlit as st

from dashboard import data
from dashboard.charts import parity_figure, show

STAGE_TITLES = {"cheap": "trained on the cheap level", "high": "fine-tuned on the high level"}
SPLIT_ORDER = ["train", "valid", "test", "md-heldout"]
#: Evaluation sets smaller than this are flagged (an MAE from fewer structures is uncertain by ~20 % or more).
MIN_EVALUATION_SIZE = 30


def split_errors(predictions: pd.DataFrame) -> pd.DataFrame:
    """Per stage and split: n, MAE (eV) with its standard error, mean error (prediction − reference), RMSE."""
    rows = []
    for (stage, split), group in predictions.groupby(["stage", "split"]):
        error = group["predicted_ev"] - group["reference_ev"]
        n = len(error)
        rows.append(
            {
                "stage": stage,
                "split": split,
                "n": n,
                "mae_ev": float(error.abs().mean()),
                "mae_error_ev": float(error.abs().std(ddof=1) / np.sqrt(n)) if n > 1 else float("nan"),
                "mean_error_ev": float(error.mean()),
                "rmse_ev": float(np.sqrt((error**2).mean())),
            }
        )
    order = {s: i for i, s in enumerate(SPLIT_ORDER)}
    return pd.DataFrame(rows).sort_values(["stage", "split"], key=lambda c: c.map(order) if c.name == "split" else c)


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
    st.markdown("**Ensemble-mean errors per split, with the MAE's standard error**")
    errors = split_errors(predictions)
    st.dataframe(errors.round(4), hide_index=True, width="stretch")
    small = errors[(errors["split"].isin(["test", "md-heldout"])) & (errors["n"] < MIN_EVALUATION_SIZE)]
    for row in small.itertuples():
        st.warning(
            f"{row.stage} {row.split}: only {row.n} structures: MAE {row.mae_ev:.3f} ± {row.mae_error_ev:.3f} eV "
            "is a rough number (fewer than 30)"
        )
    if "md-heldout" not in set(predictions["split"]):
        st.info("No parity on held-out MD frames yet (`capml evaluate -c CONFIG` once they are labelled).")
    comparison = data.gnn_baseline_comparison(path)
    if len(comparison):
        st.subheader("Search's best vs baseline (ensemble means, same test structures)")
        st.dataframe(comparison.round(4), hide_index=True, width="stretch")

    for stage in [s for s in ("cheap", "high") if s in set(predictions["stage"])]:
        subset = predictions[predictions["stage"] == stage]
        level = subset["level"].iloc[0]
        st.subheader(f"{level}: {STAGE_TITLES[stage]}")
        left, right = st.columns(2)
        parity = parity_figure(
            subset,
            reference="reference_ev",
            predicted="predicted_ev",
            quantity=f"gap ({level} / GNN)",
            unit="eV",
            digits=3,
            colour="split",
            error="spread_ev",
            hover=["composition_x", "origin", "spread_ev"],
            title=f"parity ({level})",
            category_orders={"split": SPLIT_ORDER},
        )
        show(parity, key=f"parity_{stage}", data=subset, container=left)
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
            category_orders={"split": SPLIT_ORDER},
        )
        show(histogram, key=f"errors_{stage}", data=errors, container=right)

    render_errors_by_composition(path)

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
        show(figure, key="learning_curve", data=curve)
    else:
        st.write("no learning curve recorded")


def render_errors_by_composition(path: str) -> None:
    """The gap model's MAE and mean error on the held-out MD frames per composition (``capml report``'s table)."""
    report = data.report(path)
    rows = pd.DataFrame(report["models"].get("gnn_by_composition", [])) if report else pd.DataFrame()
    if rows.empty:
        return
    st.subheader("Held-out MD frames by composition")
    rows = rows.assign(composition=rows["composition_x"].map(lambda x: f"{x:g}"))
    figure = px.bar(
        rows,
        x="composition",
        y="mae_ev",
        color="level",
        barmode="group",
        custom_data=["n", "mean_error_ev"],
        labels={"composition": data.composition_title(path), "mae_ev": "MAE vs DFT (eV)"},
        title="gap model − DFT on every held-out MD frame (each frame once)",
    )
    figure.update_traces(
        hovertemplate="x = %{x}<br>MAE %{y:.3f} eV<br>mean error %{customdata[1]:+.3f} eV<br>%{customdata[0]} frames"
        "<extra>%{fullData.name}</extra>"
    )
    figure.update_xaxes(type="category")
    show(figure, key="heldout_by_composition", data=rows.drop(columns="composition"))
    st.caption(
        "Where in composition the model is weak: the frames of every held-out set (`capml evaluate`), drawn at "
        "random from the MD and never trained on; few frames per composition make each bar rough (hover: n)."
    )
