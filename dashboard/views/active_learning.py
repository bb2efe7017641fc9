"""Active-learning page: held-out errors round by round, and the models' disagreement along each MD trajectory.

The rounds come from ``active_learning_rounds`` (``capml al record``); the disagreement from ``md_uncertainty``
(``capml al uncertainty``): per production frame the MACE committee's energy and force spread and the GNN
ensemble's gap spread, with the frames a round chose and the held-out frames marked.
"""

from __future__ import annotations

import json

import pandas as pd
import plotly.graph_objects as go
import streamlit as st
from plotly.subplots import make_subplots

from dashboard import data
from dashboard.charts import show

#: (column, title, unit) of the error-vs-round panels.
ROUND_PANELS = (
    ("mace_energy_mae_mev_per_atom", "MACE energy MAE", "meV/atom"),
    ("mace_force_mae_ev_per_a", "MACE force MAE", "eV/Å"),
    ("gnn_cheap_mae_ev", "GNN gap MAE, cheap level", "eV"),
    ("gnn_high_mae_ev", "GNN gap MAE, high level", "eV"),
)
#: Disagreement measures along a trajectory: (column, label).
MEASURES = (
    ("energy_std_mev_per_atom", "MACE energy spread (meV/atom)"),
    ("force_std_max_ev_per_a", "MACE largest force spread (eV/Å)"),
    ("gap_std_ev", "GNN gap spread (eV)"),
)


def target_limits(rounds: pd.DataFrame) -> dict[str, float]:
    """The stop targets' limits stored with the latest round that has them ({} for rounds recorded without)."""
    for text in rounds.sort_values("round", ascending=False)["targets_json"].dropna():
        limits = json.loads(text).get("limits")
        if limits:
            return limits
    return {}


def rounds_figure(rounds: pd.DataFrame) -> go.Figure:
    """Held-out errors vs round, one panel per quantity, each with its stop target dashed where stored.

    The force panel has the test-split MAE beside the held-out one; its target is a ratio of the test-split MAE.
    """
    figure = make_subplots(rows=1, cols=len(ROUND_PANELS), subplot_titles=[f"{t} ({u})" for _, t, u in ROUND_PANELS])
    limits = target_limits(rounds) if "targets_json" in rounds else {}
    target_style = {"dash": "dash", "color": "crimson", "width": 1}
    for column_index, (column, title, _) in enumerate(ROUND_PANELS, start=1):
        figure.add_trace(
            go.Scatter(x=rounds["round"], y=rounds[column], mode="lines+markers", name=title, showlegend=False),
            row=1,
            col=column_index,
        )
        if column in limits:
            figure.add_trace(
                go.Scatter(
                    x=[rounds["round"].min(), rounds["round"].max()],
                    y=[limits[column]] * 2,
                    mode="lines",
                    line=target_style,
                    name="stop target",
                    legendgroup="target",
                    showlegend=column_index == 1,
                    hovertemplate=f"target {limits[column]:g}<extra></extra>",
                ),
                row=1,
                col=column_index,
            )
        if column == "mace_force_mae_ev_per_a" and "mace_force_ratio" in limits:
            ratio = limits["mace_force_ratio"]
            figure.add_trace(
                go.Scatter(
                    x=rounds["round"],
                    y=ratio * rounds["mace_test_force_mae_ev_per_a"],
                    mode="lines",
                    line=target_style,
                    name="stop target",
                    legendgroup="target",
                    showlegend=False,
                    hovertemplate=f"target {ratio:g} x test split: %{{y:.4f}}<extra></extra>",
                ),
                row=1,
                col=column_index,
            )
        if column == "mace_force_mae_ev_per_a":
            figure.add_trace(
                go.Scatter(
                    x=rounds["round"],
                    y=rounds["mace_test_force_mae_ev_per_a"],
                    mode="lines+markers",
                    line={"dash": "dot", "color": "grey"},
                    name="test split",
                ),
                row=1,
                col=column_index,
            )
    figure.update_xaxes(title_text="round", dtick=1)
    figure.update_layout(height=320, margin={"t": 50})
    return figure


def trajectory_figure(run: pd.DataFrame, frames: pd.DataFrame) -> go.Figure:
    """Disagreement vs time along one MD run; chosen (round k) and held-out frames as vertical marks."""
    available = [(c, label) for c, label in MEASURES if run[c].notna().any()]
    figure = make_subplots(rows=len(available), cols=1, shared_xaxes=True, subplot_titles=[x for _, x in available])
    for row, (column, label) in enumerate(available, start=1):
        figure.add_trace(
            go.Scatter(x=run["time_fs"], y=run[column], mode="lines+markers", name=label, showlegend=False),
            row=row,
            col=1,
        )
    for frame in frames.itertuples():
        held = bool(frame.held_out)
        figure.add_vline(
            x=frame.time_fs,
            line={"color": "grey" if held else "crimson", "dash": "dot" if held else "solid", "width": 1},
        )
    figure.update_xaxes(title_text="time (fs)", row=len(available), col=1)
    figure.update_layout(height=220 * max(1, len(available)), margin={"t": 40})
    return figure


def render_active_learning_rounds() -> None:
    """Draw the active-learning page."""
    st.title("Active learning")
    path = str(data.project_dir())
    loaded = data.read_or_explain(lambda: data.uncertainty_results(path))
    if loaded is None:
        return
    rounds, uncertainty, frames = loaded["rounds"], loaded["uncertainty"], loaded["frames"]
    if rounds.empty and uncertainty.empty:
        st.info(
            "No active learning by uncertainty in this project yet: `capml al uncertainty`, `capml al select "
            "--round 1`, `capml label --set al-round1@LEVEL`, retrain, `capml al record --round 1` "
            "(deploy/active-learning.sh runs the rounds)."
        )
        return

    st.subheader("Held-out errors round by round")
    if rounds.empty:
        st.info("No round measured yet (`capml al record --round 0` measures the current models).")
    else:
        st.caption(
            "Errors of each round's models on the held-out MD frames (drawn at random from production MD, labelled "
            "at both levels, never trained on). Round 0: the models before any frame was added."
        )
        show(rounds_figure(rounds), key="al_rounds", data=rounds)
        shown = rounds[
            [
                "round",
                "model_id",
                "ensemble_id",
                "frames_added",
                "dft_calls",
                "dft_failed",
                "dft_cpu_h",
                "mace_energy_mae_mev_per_atom",
                "mace_force_mae_ev_per_a",
                "mace_test_force_mae_ev_per_a",
                "gnn_cheap_mae_ev",
                "gnn_high_mae_ev",
                "gnn_high_mean_error_ev",
                "targets_met",
            ]
        ]
        st.dataframe(shown.round(4), hide_index=True, width="stretch")

    if uncertainty.empty:
        return
    st.subheader("Disagreement along each MD trajectory")
    models = uncertainty["model_id"].unique().tolist()
    model_id = st.selectbox("MACE model that ran the MD", models, index=len(models) - 1, key="al_model")
    of_model = uncertainty[uncertainty["model_id"] == model_id]
    runs = of_model.groupby(["composition_x", "temperature_k", "md_id"], as_index=False).agg(
        frames=("frame", "size"),
        energy_spread=("energy_std_mev_per_atom", "mean"),
        force_spread=("force_std_max_ev_per_a", "mean"),
        gap_spread=("gap_std_ev", "mean"),
    )
    labels = [f"x = {r.composition_x:.3f}, {r.temperature_k:.0f} K ({r.md_id})" for r in runs.itertuples()]
    choice = st.selectbox("MD run", range(len(labels)), format_func=lambda i: labels[i], key="al_run")
    md_id = runs["md_id"].iloc[choice]
    marks = frames[frames["md_id"] == md_id]
    st.caption(
        "Solid red lines: frames a round chose (by disagreement, then spread out in MACE's descriptor space); "
        "dotted grey: held-out frames."
    )
    show(
        trajectory_figure(of_model[of_model["md_id"] == md_id], marks),
        key="al_trajectory",
        data=of_model[of_model["md_id"] == md_id],
    )
    st.markdown("**Mean disagreement per run**")
    st.dataframe(runs.round(4), hide_index=True, width="stretch")
