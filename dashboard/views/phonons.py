"""Phonons page.

For a chosen composition: the 0 K dispersion of the relaxed lowest-energy cell with its imaginary branches
marked (unfolded onto the parent cell's Brillouin zone, or folded in the whole cell's), the renormalised
(DynaPhoPy) frequencies and linewidths at a chosen MD temperature next to the harmonic ones, and for every
composition the temperature from which it is dynamically stable; the MD health checks.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import plotly.express as px
import plotly.graph_objects as go
import streamlit as st

from capml_core.physics.stability import stabilisation_temperatures
from dashboard import data
from dashboard.charts import broken_path, show


def render_phonons() -> None:
    """Draw the phonons page."""
    st.title("Phonons")
    path = str(data.project_dir())
    results = data.read_or_explain(lambda: data.phonon_results(path))
    if results is None:
        return
    harmonic, md, verdicts = results["harmonic"], results["md"], results["verdicts"]
    if harmonic.empty:
        st.info("No phonons yet: `capml phonons -c CONFIG` (or the pipeline's phonons stage).")
        return

    st.subheader("Dynamic stability per composition")
    onsets = stabilisation_temperatures(
        (float(r.composition_x), float(r.temperature_k), bool(r.stable)) for r in verdicts.itertuples(index=False)
    )
    summary = harmonic[["composition_x", "n_imaginary_gamma", "min_frequency_thz"]].rename(
        columns={"n_imaginary_gamma": "imaginary modes at 0 K", "min_frequency_thz": "softest at 0 K (THz)"}
    )
    summary["stable from (K)"] = [onsets.get(x) for x in summary["composition_x"]]
    st.dataframe(summary, hide_index=True, width="stretch")
    if not verdicts.empty:
        names = {  # the verdict's numbers (stored columns), then its summary
            "min_renormalised_thz": "softest renormalised (THz)",
            "median_linewidth_thz": "median linewidth (THz)",
            "max_site_offset_a": "largest mean site offset (Å)",  # from the 0 K sites, time-averaged
        }
        columns = ["composition_x", "temperature_k", "stable", "passes_gate", *names]
        st.dataframe(verdicts[columns].rename(columns=names), hide_index=True, width="stretch")
        ungated = verdicts[~verdicts["stable"].astype(bool) & verdicts["passes_gate"].astype(bool)]
        if not ungated.empty:
            st.warning(
                f"The phonon gate is off (`phonons.gate = false`): {len(ungated)} MD run(s) judged not dynamically "
                "stable still feed Eg(T). Their averages are marked passes_gate in the band-gap tables."
            )
        with_reasons = verdicts[verdicts["reason"].fillna("").astype(str).str.len() > 0]
        if not with_reasons.empty:
            st.markdown("**Why (each verdict in full)**")
            st.markdown(
                "\n".join(
                    f"- x = {r.composition_x:g}, {r.temperature_k:g} K, {'stable' if r.stable else 'not stable'}: "
                    f"{r.reason}"
                    for r in with_reasons.itertuples()
                )
            )

    x = st.selectbox("composition x", harmonic["composition_x"].tolist(), key="phonons_x")
    row = harmonic[harmonic["composition_x"] == x].iloc[-1]
    arrays = data.arrays(path, row["artifact_id"])
    runs = verdicts[verdicts["composition_x"] == x]
    analysed = runs.dropna(subset=["artifact_id"])
    renormalised, temperature = None, None
    if not analysed.empty:
        temperature = st.selectbox("MD temperature (K)", analysed["temperature_k"].tolist(), key="phonons_t")
        chosen = analysed[analysed["temperature_k"] == temperature].iloc[0]
        renormalised = data.arrays(path, chosen["artifact_id"])
    unfoldable = "unfolded_thz" in arrays
    view = st.radio(
        "dispersion",
        ["unfolded onto the parent cell's zone", "folded (the whole cell's zone)"] if unfoldable else ["folded"],
        horizontal=True,
        key="phonons_view",
        help="Unfolded: the cell's bands at each q-point of the parent (5-atom) cell's path, marker size the "
        "spectral weight (an ordered end member gives the parent's bands; disorder spreads the weight). Folded: "
        "every band of the whole cell along its own, smaller zone.",
    )
    if view.startswith("unfolded"):
        show(unfolded_figure(arrays, x, renormalised, temperature), key="phonons_unfolded")
    else:
        if unfoldable is False:
            st.caption("this project stored no unfolded dispersion (computed before capml unfolded them)")
        show(dispersion_figure(arrays, x, renormalised, temperature), key="phonons_dispersion")
    if renormalised is None:
        st.write("no renormalised phonons for this composition (see the verdicts above)")
    else:
        show(
            renormalised_figure(renormalised, temperature, chosen["thermostat_broadening_thz"]),
            key="phonons_renormalised",
        )

    st.subheader("MD health")
    if md.empty:
        st.write("no MD runs yet")
    else:
        st.dataframe(
            md[
                [
                    "composition_x",
                    "temperature_k",
                    "status",
                    "mean_temperature_k",
                    "drift_mev_per_atom_per_ps",
                    "max_msd_a2",
                    "min_distance_a",
                    "decorrelation_fs",
                    "steps_per_s",
                    "problems",
                ]
            ].round(3),
            hide_index=True,
            width="stretch",
        )


def dispersion_figure(
    arrays: dict[str, np.ndarray],
    x: float,
    renormalised: dict[str, np.ndarray] | None = None,
    temperature: float | None = None,
) -> go.Figure:
    """0 K dispersion of the cell (branches imaginary somewhere in red), the renormalised one in blue.

    The renormalised dispersion at ``temperature`` exists when DynaPhoPy fitted every mode.
    """
    figure = go.Figure()
    if renormalised is not None and "renormalised_dispersion_thz" in renormalised:
        distances_t, bands_t = broken_path(renormalised["distances"], renormalised["renormalised_dispersion_thz"])
        for branch in range(bands_t.shape[1]):
            figure.add_trace(
                go.Scatter(
                    x=distances_t,
                    y=bands_t[:, branch],
                    mode="lines",
                    line={"color": "royalblue", "width": 1},
                    name=f"renormalised, {temperature:g} K",
                    legendgroup="renormalised",
                    showlegend=branch == 0,
                )
            )
    distances, bands = broken_path(arrays["distances"], arrays["dispersion_thz"])
    unstable = np.nanmin(bands, axis=0) < -0.05
    for branch in range(bands.shape[1]):
        figure.add_trace(
            go.Scatter(
                x=distances,
                y=bands[:, branch],
                mode="lines",
                line={"color": "crimson" if unstable[branch] else "grey", "width": 1},
                name="imaginary branch" if unstable[branch] else "stable branch",
                legendgroup=str(unstable[branch]),
                showlegend=bool(branch == int(np.argmax(unstable == unstable[branch]))),
            )
        )
    figure.add_hline(y=0.0, line={"color": "black", "width": 0.5})
    figure.update_layout(
        title=f"x = {x:g}: harmonic dispersion at 0 K (imaginary < 0), {bands.shape[1]} branches"
        + (f" (the {bands.shape[1] // 3}-atom cell's bands, folded)" if bands.shape[1] > 15 else ""),
        yaxis_title="frequency (THz)",
        xaxis={"tickvals": arrays["tick_distances"].tolist(), "ticktext": [str(t) for t in arrays["tick_labels"]]},
    )
    return figure


#: Weights below this are not drawn in an unfolded dispersion (they carry none of the parent's character).
MIN_UNFOLDED_WEIGHT = 0.03


def _unfolded_points(distances: np.ndarray, bands: np.ndarray, weights: np.ndarray) -> pd.DataFrame:
    q, band = np.nonzero(weights >= MIN_UNFOLDED_WEIGHT)
    return pd.DataFrame({"distance": distances[q], "frequency_thz": bands[q, band], "weight": weights[q, band]}).round(
        {"frequency_thz": 3, "weight": 2}
    )


def unfolded_figure(
    arrays: dict[str, np.ndarray],
    x: float,
    renormalised: dict[str, np.ndarray] | None = None,
    temperature: float | None = None,
) -> go.Figure:
    """0 K dispersion unfolded onto the parent cell's path (marker size: spectral weight; imaginary in red).

    The renormalised one at ``temperature`` in blue where DynaPhoPy fitted every mode.
    """
    figure = go.Figure()
    layers = []
    if renormalised is not None and "renormalised_unfolded_thz" in renormalised:
        layers.append(("renormalised", renormalised, "renormalised_", f"renormalised, {temperature:g} K"))
    layers.append(("harmonic", arrays, "", "harmonic, 0 K"))
    for kind, source, prefix, name in layers:
        points = _unfolded_points(
            np.asarray(source[f"{prefix}unfolded_distances"]),
            np.asarray(source[f"{prefix}unfolded_thz"]),
            np.asarray(source[f"{prefix}unfolded_weights"]),
        )
        if kind == "renormalised":
            colours = "royalblue"
        else:
            colours = np.where(points["frequency_thz"] < -0.05, "crimson", "dimgrey").tolist()
        figure.add_trace(
            go.Scattergl(
                x=points["distance"],
                y=points["frequency_thz"],
                mode="markers",
                marker={"size": 2 + 7 * np.sqrt(points["weight"]), "color": colours, "line": {"width": 0}},
                customdata=points[["weight"]],
                hovertemplate="%{y:.2f} THz, weight %{customdata[0]:.2f}<extra>" + name + "</extra>",
                name=name + (" (red: imaginary)" if kind == "harmonic" else ""),
            )
        )
    figure.add_hline(y=0.0, line={"color": "black", "width": 0.5})
    ticks = arrays["unfolded_tick_distances"].tolist()
    for tick in ticks[1:-1]:
        figure.add_vline(x=tick, line={"color": "lightgrey", "width": 0.5})
    figure.update_layout(
        title=f"x = {x:g}: dispersion unfolded onto the parent cell's Brillouin zone (marker size: spectral "
        "weight; imaginary < 0)",
        yaxis_title="frequency (THz)",
        xaxis={"tickvals": ticks, "ticktext": [str(t) for t in arrays["unfolded_tick_labels"]]},
    )
    return figure


def renormalised_figure(arrays: dict[str, np.ndarray], temperature: float, thermostat_thz: float) -> go.Figure:
    """Renormalised vs harmonic frequency of every mode at Γ of the cell, marker size: linewidth."""
    frame = pd.DataFrame(
        {
            "harmonic_thz": arrays["harmonic_thz"],
            "renormalised_thz": arrays["renormalised_thz"],
            "linewidth_thz": np.nan_to_num(arrays["linewidths_thz"], nan=0.0),
        }
    )
    figure = px.scatter(
        frame,
        x="harmonic_thz",
        y="renormalised_thz",
        size=frame["linewidth_thz"] + 0.05,
        hover_data=["linewidth_thz"],
        title=f"{temperature:g} K: renormalised vs harmonic "
        f"(size: linewidth; the thermostat adds {thermostat_thz:.2f} THz)",
        labels={"harmonic_thz": "harmonic frequency (THz, imaginary < 0)", "renormalised_thz": "renormalised (THz)"},
    )
    low = float(min(frame["harmonic_thz"].min(), 0.0))
    high = float(frame["harmonic_thz"].max())
    figure.add_trace(go.Scatter(x=[0, high], y=[0, high], mode="lines", name="y = x", line={"dash": "dash"}))
    figure.add_vline(x=0.0, line={"color": "black", "width": 0.5})
    figure.update_xaxes(range=[low - 0.2, high + 0.2])
    return figure
