"""Interatomic potential page.

Energy / force / stress parity of the latest MACE model (Fig. 4 of the paper), the foundation model before
fine-tuning next to it, and the end members' phonon dispersions from MACE and from the reference level.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import plotly.express as px
import plotly.graph_objects as go
import streamlit as st

from dashboard import data

QUANTITIES = {
    "energy": ("energy_reference_ev_per_atom", "energy_predicted_ev_per_atom", "energy (eV/atom)"),
    "forces": ("forces_reference_ev_per_a", "forces_predicted_ev_per_a", "force component (eV/Å)"),
    "stress": ("stress_reference_ev_per_a3", "stress_predicted_ev_per_a3", "stress component (eV/Å³)"),
}


def parity_frame(predictions: pd.DataFrame, quantity: str) -> pd.DataFrame:
    """One row per compared value (per structure for energy, per component for forces and stress)."""
    ref, pred, _ = QUANTITIES[quantity]
    subset = predictions.dropna(subset=[ref])
    if quantity == "energy":
        return subset[["model_id", "split", "structure_hash", ref, pred]].rename(
            columns={ref: "reference", pred: "predicted"}
        )
    exploded = subset[["model_id", "split", "structure_hash", ref, pred]].explode([ref, pred])
    return exploded.rename(columns={ref: "reference", pred: "predicted"}).astype(
        {"reference": float, "predicted": float}
    )


def render_mlip() -> None:
    """Draw the interatomic potential page."""
    st.title("Interatomic potential")
    path = str(data.project_dir())
    loaded = data.read_or_explain(lambda: data.mlip_results(path))
    if loaded is None:
        return
    results = loaded
    models = results["models"]
    if models.empty:
        st.info("No MACE model yet: `capml mlip train -c CONFIG` (or the pipeline's mlip stage).")
        return
    trained = models[models["kind"] != "foundation"].iloc[0]
    st.caption(
        f"model {trained['model_id']} ({trained['kind']}, {trained['level']}): cutoff {trained['r_max_a']} Å, "
        f"{trained['channels']} channels, {trained['n_train']} train / {trained['n_valid']} valid / "
        f"{trained['n_test']} test structures, {trained['epochs']} epochs in {trained['train_seconds']:.0f} s"
    )

    st.subheader("Errors vs the reference level" + (" (foundation vs fine-tuned)" if len(models) > 1 else ""))
    metrics = results["metrics"].merge(models[["model_id", "kind"]], on="model_id")
    table = metrics.pivot_table(index=["quantity", "unit", "split"], columns="kind", values=["mae", "rmse", "r2"])
    table.columns = [f"{stat} ({kind})" for stat, kind in table.columns]
    st.dataframe(table.reset_index(), hide_index=True, width="stretch")

    predictions = results["predictions"].merge(models[["model_id", "kind"]], on="model_id")
    kinds = list(models["kind"])
    kind = st.radio("model", kinds[::-1], horizontal=True) if len(kinds) > 1 else kinds[0]
    chosen = predictions[predictions["kind"] == kind]
    columns = st.columns(3)
    for column, quantity in zip(columns, QUANTITIES, strict=True):
        frame = parity_frame(chosen, quantity)
        if frame.empty:
            column.write(f"no {quantity} labels")
            continue
        label = QUANTITIES[quantity][2]
        low = float(min(frame["reference"].min(), frame["predicted"].min()))
        high = float(max(frame["reference"].max(), frame["predicted"].max()))
        figure = px.scatter(
            frame,
            x="reference",
            y="predicted",
            color="split",
            opacity=0.6,
            hover_data=["structure_hash"],
            title=f"{quantity}: MACE vs reference",
            labels={"reference": f"reference {label}", "predicted": f"MACE {label}"},
            category_orders={"split": ["train", "valid", "test"]},
        )
        figure.add_trace(
            go.Scatter(x=[low, high], y=[low, high], mode="lines", name="y = x", line={"color": "grey", "dash": "dash"})
        )
        column.plotly_chart(figure, width="stretch", key=f"parity_{quantity}_{kind}")

    render_active_learning(path)

    st.subheader("Phonons of the end members: MACE vs the reference level")
    phonons = results["phonons"]
    if phonons.empty:
        st.write("no phonon comparison recorded (`[mlip] validate_phonons`)")
        return
    st.dataframe(
        phonons[
            [
                "end_member",
                "reference",
                "n_modes",
                "mae_thz",
                "rmse_thz",
                "r2",
                "n_imaginary_reference",
                "n_imaginary_model",
                "min_frequency_reference_thz",
                "min_frequency_model_thz",
            ]
        ].round(4),
        hide_index=True,
        width="stretch",
    )
    columns = st.columns(len(phonons))
    for column, row in zip(columns, phonons.itertuples(), strict=True):
        arrays = data.arrays(path, row.artifact_id)
        column.plotly_chart(
            dispersion_figure(arrays, title=f"{row.end_member} end member (imaginary < 0)", reference=row.reference),
            width="stretch",
            key=f"dispersion_{row.end_member}",
        )


def render_active_learning(path: str) -> None:
    """Rounds of active learning: which MD frames left the training data, by how much, and their labels."""
    frames = data.read_or_explain(lambda: data.active_learning_results(path))
    if frames is None or frames.empty:
        return
    st.subheader("Active learning: MD frames outside the training data")
    rounds = frames.groupby(["round", "model_id"], as_index=False).agg(
        frames=("frame", "size"), labelled=("label_status", lambda s: int((s == "ok").sum())), closest=("ratio", "min")
    )
    st.caption(
        "Per round, the MD runs of the model in `model_id` were scanned; a frame is selected when a pair of species "
        "came closer than the configured fraction of the shortest distance of that pair in the training data "
        "(`ratio` = distance / training distance). The labelled frames train the next model."
    )
    st.dataframe(rounds.round(3), hide_index=True, width="stretch")
    st.dataframe(
        frames[
            [
                "round",
                "composition_x",
                "temperature_k",
                "time_fs",
                "pair",
                "distance_a",
                "training_distance_a",
                "ratio",
                "label_status",
                "energy_ev_per_atom",
                "gap_ev",
            ]
        ].round(4),
        hide_index=True,
        width="stretch",
    )


def dispersion_figure(arrays: dict[str, np.ndarray], *, title: str, reference: str) -> go.Figure:
    """Reference (grey) and MACE (red) dispersions along the stored path, imaginary frequencies negative."""
    figure = go.Figure()
    distances = arrays["distances"]
    for key, name, colour in (
        ("reference_dispersion_thz", reference, "grey"),
        ("model_dispersion_thz", "MACE", "crimson"),
    ):
        for band in range(arrays[key].shape[1]):
            figure.add_trace(
                go.Scatter(
                    x=distances,
                    y=arrays[key][:, band],
                    mode="lines",
                    line={"color": colour, "width": 1.2, "dash": "solid" if colour == "crimson" else "dot"},
                    name=name,
                    legendgroup=name,
                    showlegend=band == 0,
                )
            )
    figure.add_hline(y=0.0, line={"color": "black", "width": 0.5})
    figure.update_layout(
        title=title,
        yaxis_title="frequency (THz)",
        xaxis={
            "tickvals": arrays["tick_distances"].tolist(),
            "ticktext": [str(t) for t in arrays["tick_labels"]],
            "showgrid": True,
        },
    )
    return figure
