"""Interatomic potential page.

Energy / force / stress parity of the latest MACE model (Fig. 4 of the paper), the foundation model before
fine-tuning next to it, and the end members' phonon dispersions from MACE and from the reference level.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import plotly.graph_objects as go
import streamlit as st

from dashboard import data
from dashboard.charts import broken_path, parity_figure, show, thinned

QUANTITIES = {
    "energy": ("energy_reference_ev_per_atom", "energy_predicted_ev_per_atom", "energy (eV/atom)"),
    "forces": ("forces_reference_ev_per_a", "forces_predicted_ev_per_a", "force component (eV/Å)"),
    "stress": ("stress_reference_ev_per_a3", "stress_predicted_ev_per_a3", "stress component (eV/Å³)"),
}
#: Axis name, unit and hover decimals of each parity plot.
PARITY_AXES = {
    "energy": ("energy above the composition's lowest", "meV/atom", 1),
    "forces": ("force component", "eV/Å", 3),
    "stress": ("stress component", "eV/Å³", 4),
}


SPLIT_ORDER = ["train", "valid", "test", "md-heldout"]
#: Below this R² a parity is flagged: the model barely ranks the values (e.g. stress from one volume per composition).
MIN_R2 = 0.8


def parity_frame(predictions: pd.DataFrame, quantity: str) -> pd.DataFrame:
    """One row per compared value (per structure for energy, per component for forces and stress).

    Energies are relative (meV/atom): each composition's lowest reference energy is subtracted from both the
    reference and the prediction, so the parity shows what MACE must get right (energy differences at one
    composition) and not a trivial R² = 1 across compositions whose absolute energies differ by eV/atom.
    """
    ref, pred, _ = QUANTITIES[quantity]
    keep = ["model_id", "split", "composition_x", "origin", ref, pred]
    subset = predictions.dropna(subset=[ref])
    if quantity == "energy":
        frame = subset[keep].rename(columns={ref: "reference", pred: "predicted"})
        lowest = frame.groupby("composition_x", dropna=False)["reference"].transform("min")
        return frame.assign(
            reference=1000.0 * (frame["reference"] - lowest), predicted=1000.0 * (frame["predicted"] - lowest)
        )
    exploded = subset[keep].explode([ref, pred])
    return exploded.rename(columns={ref: "reference", pred: "predicted"}).astype(
        {"reference": float, "predicted": float}
    )


def r_squared(frame: pd.DataFrame) -> float:
    """R² of the predictions against the reference values (1 − SSE / total variance)."""
    total = float(((frame["reference"] - frame["reference"].mean()) ** 2).sum())
    return float("nan") if total == 0 else 1.0 - float(((frame["predicted"] - frame["reference"]) ** 2).sum()) / total


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
    if "md-heldout" in set(chosen["split"]):
        st.caption("md-heldout: the held-out MD frames (never trained on, `capml evaluate`): where MACE is used.")
    columns = st.columns(3)
    for column, quantity in zip(columns, QUANTITIES, strict=True):
        frame = parity_frame(chosen, quantity)
        if frame.empty:
            column.write(f"no {quantity} labels")
            continue
        quantity_title, unit, digits = PARITY_AXES[quantity]
        drawn = thinned(frame)
        figure = parity_figure(
            drawn,
            reference="reference",
            predicted="predicted",
            quantity=quantity_title,
            unit=unit,
            digits=digits,
            colour="split",
            hover=["composition_x", "origin"],
            title=f"{quantity}: MACE vs reference",
            category_orders={"split": SPLIT_ORDER},
        )
        show(figure, key=f"parity_{quantity}_{kind}", data=frame, container=column)
        if len(drawn) < len(frame):
            column.caption(f"{len(drawn):,} of {len(frame):,} components drawn (random, seed 0); R² from all.")
        present = set(frame["split"].unique())
        for split in [s for s in SPLIT_ORDER if s in present]:
            r2 = r_squared(frame[frame["split"] == split])
            if split in ("test", "md-heldout") and r2 < MIN_R2:
                column.warning(
                    f"{quantity} R² on {split} = {r2:.2f} (< {MIN_R2}): MACE barely orders these values"
                    + (
                        " (one volume per composition in the training data: see docs/mlip.md)"
                        if quantity == "stress"
                        else ""
                    )
                )

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
        show(
            dispersion_figure(arrays, title=f"{row.end_member} end member (imaginary < 0)", reference=row.reference),
            key=f"dispersion_{row.end_member}",
            container=column,
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
    for key, name, colour in (
        ("reference_dispersion_thz", reference, "grey"),
        ("model_dispersion_thz", "MACE", "crimson"),
    ):
        distances, bands = broken_path(arrays["distances"], arrays[key])
        for band in range(bands.shape[1]):
            figure.add_trace(
                go.Scatter(
                    x=distances,
                    y=bands[:, band],
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
