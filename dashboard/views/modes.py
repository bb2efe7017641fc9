"""Modes page: ΔEg/Eg of each frozen Γ mode vs its frequency, coloured by the species that moves most.

Reads ``gap_modes`` (capml_core.stages.modes) and, for the displacement pattern of a chosen mode, the Γ eigenvectors in
the harmonic-phonon artifact of the structure. GNN vs reference DFT for the modes checked with DFT.
"""

from __future__ import annotations

import numpy as np
import plotly.express as px
import plotly.graph_objects as go
import streamlit as st

from capml_core.physics.modes import thermal_displacement
from dashboard import data
from dashboard.charts import parity_figure, show, three_d_on_request
from dashboard.style import species_colour, species_colour_map


def render_modes() -> None:
    """Draw the modes page."""
    st.title("Modes")
    path = str(data.project_dir())
    modes = data.read_or_explain(lambda: data.mode_results(path))
    if modes is None:
        return
    if modes.empty:
        st.info("No mode-resolved gaps yet: `capml modes -c CONFIG` (or the pipeline's modes stage).")
        return
    temperatures = sorted(modes["temperature_k"].unique())
    compositions = sorted(modes["composition_x"].unique())
    left, right = st.columns(2)
    temperature = left.selectbox("Temperature (K)", temperatures, format_func=lambda t: f"{t:g}")
    composition = right.selectbox("Composition x", compositions, format_func=lambda x: f"{x:g}")
    here = modes[(modes["temperature_k"] == temperature) & (modes["composition_x"] == composition)]
    frozen = here[here["status"] == "frozen"].copy()
    skipped = here["status"].value_counts().to_dict()
    st.caption(
        f"{len(frozen)} modes frozen in at their thermal amplitude at {temperature:g} K; not frozen: "
        f"{skipped.get('acoustic', 0)} acoustic, {skipped.get('imaginary', 0)} imaginary (no thermal amplitude), "
        f"{skipped.get('below floor', 0)} below the frequency floor (amplitude ∝ 1/ω: beyond the harmonic regime). "
        "Single-mode values inside a degenerate subspace depend on an arbitrary basis: the subspace and band "
        "table below is what to read."
    )
    frozen["ΔEg/Eg (%)"] = 100.0 * frozen["relative_change"]
    limit = data.mode_harmonic_limit_a(path)
    frozen["regime"] = np.where(
        frozen["rms_displacement_a"] > limit, f"beyond harmonic (rms > {limit:g} Å)", "harmonic"
    )
    beyond = frozen[frozen["rms_displacement_a"] > limit]
    if not beyond.empty:
        st.warning(
            f"{len(beyond)} frozen modes move atoms by more than {limit:g} Å rms (up to "
            f"{beyond['rms_displacement_a'].max():.2f} Å, at {beyond['frequency_thz'].min():.2f} THz): beyond the "
            "harmonic regime, their ΔEg/Eg (open markers) is not a phonon effect to read off."
        )
    figure = px.scatter(
        frozen,
        x="frequency_thz",
        y="ΔEg/Eg (%)",
        color="dominant",
        symbol="regime",
        symbol_map={"harmonic": "circle", **{r: "circle-open" for r in frozen["regime"].unique() if r != "harmonic"}},
        color_discrete_map=species_colour_map(frozen["dominant"].dropna().unique()),
        hover_data={"mode": True, "delta_ev": ":.4f", "rms_displacement_a": ":.3f", "frequency_thz": ":.2f"},
        labels={"frequency_thz": "frequency (THz)", "dominant": "moves most", "delta_ev": "ΔEg (eV)"},
    )
    figure.add_hline(y=0.0, line_color="grey", line_width=1)
    show(figure, key="mode_changes", data=frozen.drop(columns=["artifact_id"], errors="ignore"))

    render_mode_groups(composition, temperature)

    checked = modes[modes["reference_delta_ev"].notna()]
    if not checked.empty:
        st.subheader("GNN vs reference DFT")
        parity = parity_figure(
            checked.assign(composition=checked["composition_x"].map(lambda x: f"x = {x:g}")),
            reference="reference_delta_ev",
            predicted="delta_ev",
            quantity="ΔEg (DFT / GNN)",
            unit="eV",
            digits=4,
            colour="composition",
            hover=["mode", "frequency_thz", "temperature_k"],
        )
        show(parity, key="mode_dft_parity", data=checked.drop(columns=["artifact_id"], errors="ignore"))
        st.dataframe(
            checked[
                [
                    "composition_x",
                    "temperature_k",
                    "mode",
                    "frequency_thz",
                    "dominant",
                    "delta_ev",
                    "reference_delta_ev",
                ]
            ],
            hide_index=True,
            width="stretch",
        )

    if frozen.empty or frozen["artifact_id"].isna().all():
        return
    st.subheader("Displacement pattern")
    if not three_d_on_request("a mode's displacement pattern", key="mode_pattern_shown"):
        return
    mode = st.selectbox(
        "Mode",
        frozen["mode"].tolist(),
        format_func=lambda m: f"{m}: {frozen.loc[frozen['mode'] == m, 'frequency_thz'].item():.2f} THz",
    )
    row = frozen[frozen["mode"] == mode].iloc[0]
    atoms = data.structure(path, row["structure_hash"])
    arrays = data.arrays(path, row["artifact_id"])
    eigenvector = arrays["gamma_eigenvectors_real"][:, mode] + 1j * arrays["gamma_eigenvectors_imag"][:, mode]
    u = thermal_displacement(atoms, eigenvector, float(row["frequency_thz"]), float(temperature))
    positions = atoms.positions
    symbols = np.array(atoms.get_chemical_symbols())
    figure = go.Figure()
    for element in sorted(set(symbols)):
        mask = symbols == element
        figure.add_trace(
            go.Scatter3d(
                x=positions[mask, 0],
                y=positions[mask, 1],
                z=positions[mask, 2],
                mode="markers",
                marker={"size": 6, "color": species_colour(element)},
                name=element,
            )
        )
    scale = 1.0 / max(float(np.abs(u).max()), 1e-9)  # longest arrow 1 Å
    figure.add_trace(
        go.Cone(
            x=positions[:, 0],
            y=positions[:, 1],
            z=positions[:, 2],
            u=u[:, 0] * scale,
            v=u[:, 1] * scale,
            w=u[:, 2] * scale,
            anchor="tail",
            sizemode="absolute",
            sizeref=0.6,
            showscale=False,
            name="displacement",
        )
    )
    figure.update_layout(height=550, scene={"aspectmode": "data"})
    st.caption(
        f"Mode {mode}, {row['frequency_thz']:.2f} THz, at {temperature:g} K: rms displacement "
        f"{row['rms_displacement_a']:.3f} Å, largest {row['max_displacement_a']:.3f} Å (arrows scaled to 1 Å)."
    )
    show(figure, key="mode_pattern")


def render_mode_groups(composition: float, temperature: float) -> None:
    """Degenerate subspaces and frequency bands of one composition and temperature, with their flags."""
    path = str(data.project_dir())
    groups = data.read_or_explain(lambda: data.mode_group_results(path))
    if groups is None or groups.empty:
        return
    here = groups[(groups["composition_x"] == composition) & (groups["temperature_k"] == temperature)]
    if here.empty:
        return
    st.subheader("Degenerate subspaces and frequency bands")
    flagged = here[(here["status"] == "frozen") & (here["beyond_harmonic"] | ~here["resolvable"].fillna(False))]
    if not flagged.empty:
        st.warning(
            f"{int(flagged['beyond_harmonic'].sum())} groups are frozen beyond the harmonic regime (rms displacement "
            f"above the limit) and {int((~flagged['resolvable'].fillna(False)).sum())} change the gap by less than "
            "the gap model resolves: read them as flagged in the table."
        )
    columns = [
        "source",
        "kind",
        "frequency_lo_thz",
        "frequency_hi_thz",
        "n_modes",
        "status",
        "dominant",
        "rms_displacement_a",
        "delta_ev",
        "delta_std_ev",
        "relative_change",
        "sum_of_modes_ev",
        "resolvable",
        "beyond_harmonic",
        "reference_delta_ev",
    ]
    st.dataframe(here[columns].round(4), hide_index=True, width="stretch")
