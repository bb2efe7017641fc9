"""Disorder page.

The energy ranking of the arrangements per composition with multiplicities, the lowest-energy structure (3D
view and site occupation), the energy of mixing vs composition, configurational probabilities.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import plotly.express as px
import plotly.graph_objects as go
import streamlit as st

from capml_core.system.arrangements import mixing_energies
from dashboard import data
from dashboard.charts import show, three_d_on_request
from dashboard.style import species_colour


def render_disorder() -> None:
    """Draw the disorder page."""
    st.title("Disorder")
    path = str(data.project_dir())
    results = data.read_or_explain(lambda: data.disorder_results(path))
    if results is None:
        return
    relaxations = results["relaxations"]
    composition = data.composition_title(path)
    if relaxations.empty:
        st.info("No disorder scan yet: `capml disorder -c CONFIG` (or the pipeline's disorder stage).")
        return

    st.subheader("Arrangements per composition")
    counts = results["compositions"][
        ["composition_x", "n_first", "n_labellings", "n_inequivalent", "selection", "n_selected"]
    ]
    st.dataframe(counts, hide_index=True, width="stretch")

    lowest = relaxations[relaxations["rank"] == 1].drop_duplicates("composition_x")
    relative = relaxations.assign(
        delta_mev_per_atom=1000.0
        * (
            relaxations["energy_ev_per_atom"]
            - relaxations.groupby("composition_x")["energy_ev_per_atom"].transform("min")
        )
    )
    left, right = st.columns(2)
    ranking = px.scatter(
        relative,
        x="composition_x",
        y="delta_mev_per_atom",
        size="multiplicity",
        color="converged",
        hover_data={"arrangement": True, "multiplicity": True, "rank": True, "delta_mev_per_atom": ":.2f"},
        title="energy above the lowest arrangement (marker size: multiplicity)",
        labels={"composition_x": composition, "delta_mev_per_atom": "E − E_min (meV/atom)"},
    )
    ranking.update_xaxes(tickvals=sorted(relative["composition_x"].unique()))
    show(ranking, key="disorder_ranking", data=relative, container=left)
    mixing = mixing_energies(dict(zip(lowest["composition_x"], lowest["energy_ev_per_atom"], strict=True)))
    if mixing:
        frame = pd.DataFrame({"x": list(mixing), "mixing_mev_per_atom": [1000.0 * v for v in mixing.values()]})
        figure = px.line(
            frame,
            x="x",
            y="mixing_mev_per_atom",
            markers=True,
            title="energy of mixing of the lowest arrangement",
            labels={"x": composition, "mixing_mev_per_atom": "E_mix (meV/atom)"},
        )
        figure.update_xaxes(tickvals=sorted(frame["x"]))
        show(figure, key="disorder_mixing", data=frame, container=right)
    else:
        right.write("energy of mixing needs both end members (x = 0 and 1) in the scan")

    st.subheader("Ranking")
    x = st.selectbox("composition x", sorted(relaxations["composition_x"].unique()), key="disorder_x")
    one = relaxations[relaxations["composition_x"] == x]
    st.dataframe(
        one[["rank", "arrangement", "multiplicity", "energy_ev_per_atom", "converged", "steps", "volume_a3"]],
        hide_index=True,
        width="stretch",
    )
    probabilities = results["probabilities"]
    if not probabilities.empty:
        table = probabilities[probabilities["composition_x"] == x].pivot_table(
            index="arrangement", columns="temperature_k", values="probability"
        )
        table.columns = [f"{t:g} K" for t in table.columns]
        st.caption("configurational probabilities (Boltzmann × multiplicity)")
        st.dataframe(table.round(4), width="stretch")

    best = one[one["rank"] == 1].iloc[0]
    atoms = data.structure(path, best["structure_hash"])
    st.subheader(f"Lowest-energy structure at x = {x:g}: {atoms.get_chemical_formula()}")
    st.caption(f"sublattice occupation (1 = first species, sites in supercell order): `{best['arrangement']}`")
    if three_d_on_request("the structure", key="disorder_structure_shown"):
        show(structure_figure(atoms), key="disorder_structure")


def structure_figure(atoms) -> go.Figure:  # ase.Atoms
    """3D scatter of the atoms (Å) coloured by species, with the cell edges."""
    figure = go.Figure()
    symbols = np.array(atoms.get_chemical_symbols())
    for species in sorted(set(symbols)):
        xyz = atoms.positions[symbols == species]
        figure.add_trace(
            go.Scatter3d(
                x=xyz[:, 0],
                y=xyz[:, 1],
                z=xyz[:, 2],
                mode="markers",
                name=species,
                marker={"size": 9 if species in ("Br", "I", "Cl") else 5, "color": species_colour(species)},
            )
        )
    cell = np.asarray(atoms.cell[:])
    corners = np.array(list(np.ndindex(2, 2, 2))) @ cell
    edges = [(a, b) for a in range(8) for b in range(a + 1, 8) if bin(a ^ b).count("1") == 1]
    for a, b in edges:
        figure.add_trace(
            go.Scatter3d(
                x=corners[[a, b], 0],
                y=corners[[a, b], 1],
                z=corners[[a, b], 2],
                mode="lines",
                line={"color": "black", "width": 2},
                showlegend=False,
                hoverinfo="skip",
            )
        )
    figure.update_layout(scene={"aspectmode": "data"}, height=520, margin={"l": 0, "r": 0, "t": 10, "b": 0})
    return figure
