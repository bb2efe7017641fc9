"""Band gaps page: Eg(x) per temperature with experiment, Eg(T) per composition, relative-change heat map.

Reads ``gap_static``, ``gap_thermal``, ``gap_snapshots``, ``gap_dft_checks`` and ``gap_published``
(capml_core.stages.bandgaps). Error bars are the stored combined uncertainties (the gap series' own statistics and
the ensemble spread).
"""

from __future__ import annotations

import pandas as pd
import plotly.express as px
import plotly.graph_objects as go
import streamlit as st

from capml_core.stages.bandgaps import compare_with_published
from dashboard import data
from dashboard.charts import cell_heatmap, show
from dashboard.style import SOURCE_SYMBOLS, composition_colour, temperature_colour


def thermal_table(static: pd.DataFrame, thermal: pd.DataFrame) -> pd.DataFrame:
    """Eg per (x, T) with its uncertainty: T = 0 from the static gaps, then every averaged MD run."""
    zero = pd.DataFrame(
        {
            "composition_x": static["composition_x"],
            "temperature_k": 0.0,
            "gap_ev": static["gap_ev"],
            "error_ev": static["gap_std_ev"],
            "relative_change": 0.0,
        }
    )
    averaged = thermal[thermal["mean_gap_ev"].notna()]
    hot = pd.DataFrame(
        {
            "composition_x": averaged["composition_x"],
            "temperature_k": averaged["temperature_k"],
            "gap_ev": averaged["mean_gap_ev"],
            "error_ev": averaged["error_ev"],
            "relative_change": averaged["relative_change"],
        }
    )
    return pd.concat([zero, hot], ignore_index=True).sort_values(["temperature_k", "composition_x"])


def eg_vs_composition_figure(table: pd.DataFrame, published: pd.DataFrame, composition: str) -> go.Figure:
    """Eg(x) per temperature (colour: temperature) with the published gaps (marker: their source).

    ``table``: composition_x, temperature_k, gap_ev, error_ev (T = 0: the cubic structure); ``published``:
    composition_x, temperature_k, gap_ev, uncertainty_ev, kind ('calculation' or 'experiment'), source.
    """
    figure = go.Figure()
    for temperature in sorted(table["temperature_k"].unique()):
        rows = table[table["temperature_k"] == temperature].sort_values("composition_x")
        figure.add_trace(
            go.Scatter(
                x=rows["composition_x"],
                y=rows["gap_ev"],
                error_y={"type": "data", "array": rows["error_ev"]},
                mode="lines+markers",
                marker={"symbol": SOURCE_SYMBOLS["capml"], "color": temperature_colour(temperature)},
                line={"color": temperature_colour(temperature)},
                name=f"capml {temperature:g} K" + (" (cubic)" if temperature == 0 else ""),
                hovertemplate="x = %{x:g}<br>Eg = %{y:.3f} eV<extra>%{fullData.name}</extra>",
            )
        )
    for (kind, source, temperature), rows in (
        published.groupby(["kind", "source", "temperature_k"]) if len(published) else []
    ):
        figure.add_trace(
            go.Scatter(
                x=rows["composition_x"],
                y=rows["gap_ev"],
                error_y={"type": "data", "array": rows["uncertainty_ev"].fillna(0.0)},
                mode="markers",
                marker={
                    "symbol": SOURCE_SYMBOLS.get(kind, "x"),
                    "size": 12,
                    "color": temperature_colour(temperature),
                    "line": {"width": 1.5, "color": temperature_colour(temperature)},
                },
                name=f"{kind} {temperature:g} K ({source})",
                hovertemplate="x = %{x:g}<br>Eg = %{y:.3f} eV<extra>%{fullData.name}</extra>",
            )
        )
    figure.update_layout(xaxis_title=composition, yaxis_title="Eg (eV)", height=450, margin={"t": 30})
    figure.update_xaxes(tickvals=sorted(table["composition_x"].unique()))
    return figure


def eg_vs_temperature_figure(table: pd.DataFrame, published: pd.DataFrame) -> go.Figure:
    """Eg(T) per composition: MD averages joined by lines, the static Eg(0) an open marker at 0 K.

    The static gap is not joined to the MD points (a different kind of value); the published gaps sit at their
    temperatures (marker: their source).
    """
    figure = go.Figure()
    for x in sorted(table["composition_x"].unique()):
        colour = composition_colour(x)
        rows = table[table["composition_x"] == x].sort_values("temperature_k")
        zero, hot = rows[rows["temperature_k"] == 0], rows[rows["temperature_k"] > 0]
        for part, mode, symbol, name in (
            (zero, "markers", "circle-open", f"x = {x:g} static (0 K)"),
            (hot, "lines+markers", "circle", f"x = {x:g} MD"),
        ):
            if part.empty:
                continue
            figure.add_trace(
                go.Scatter(
                    x=part["temperature_k"],
                    y=part["gap_ev"],
                    error_y={"type": "data", "array": part["error_ev"]},
                    mode=mode,
                    marker={"symbol": symbol, "size": 9, "color": colour},
                    line={"color": colour},
                    name=name,
                    legendgroup=f"{x:g}",
                    hovertemplate="T = %{x:g} K<br>Eg = %{y:.3f} eV<extra>%{fullData.name}</extra>",
                )
            )
        of_x = published[(published["composition_x"] - x).abs() < 1e-9] if len(published) else published
        for (kind, source), rows_p in of_x.groupby(["kind", "source"]) if len(of_x) else []:
            figure.add_trace(
                go.Scatter(
                    x=rows_p["temperature_k"],
                    y=rows_p["gap_ev"],
                    error_y={"type": "data", "array": rows_p["uncertainty_ev"].fillna(0.0)},
                    mode="markers",
                    marker={"symbol": SOURCE_SYMBOLS.get(kind, "x"), "size": 12, "color": colour},
                    name=f"x = {x:g} {kind} ({source})",
                    legendgroup=f"{x:g}",
                    hovertemplate="T = %{x:g} K<br>Eg = %{y:.3f} eV<extra>%{fullData.name}</extra>",
                )
            )
    figure.update_layout(xaxis_title="T (K)", yaxis_title="Eg (eV)", height=450, margin={"t": 30})
    return figure


def render_bandgaps() -> None:
    """Draw the band gaps page."""
    st.title("Band gaps")
    path = str(data.project_dir())
    results = data.read_or_explain(lambda: data.bandgap_results(path))
    if results is None:
        return
    static, thermal, published = results["static"], results["thermal"], results["published"]
    if static.empty:
        st.info("No band gaps yet: `capml gaps -c CONFIG` (or the pipeline's bandgaps stage).")
        return
    level = static["level"].iloc[0]
    st.caption(
        f"Gap ensemble {static['ensemble_id'].iloc[0]}, gaps at the {level} level. Error bars: the gap series' "
        "own autocorrelation (reblocking with enough blocks, else the error inflated by its autocorrelation time) "
        "and the ensemble spread combined. The paper's numbers are HSEsol (VASP); capml's "
        "embedded default is GPAW GLLB-SC, a different functional: compare trends, not absolute values."
    )
    table = thermal_table(static, thermal)
    lowest = results.get("lowest", pd.DataFrame())
    if not lowest.empty:
        st.subheader("Eg(0): the cubic structure (the paper's definition) and the lowest structure found")
        both = static[["composition_x", "gap_ev", "reference_gap_ev"]].merge(
            lowest[["composition_x", "gap_ev", "structure_source"]],
            on="composition_x",
            how="left",
            suffixes=("", "_lowest"),
        )
        both.columns = ["composition_x", "cubic_gap_ev", "cubic_dft_gap_ev", "lowest_gap_ev", "lowest_structure"]
        st.dataframe(both.round(3), hide_index=True, width="stretch")
        st.caption(
            "The MD settles in distorted wells below the cubic saddle: ΔEg/Eg against the lowest structure is in the "
            "per-run table (lowest_relative_change)."
        )

    composition = data.composition_title(path)
    st.subheader("Eg vs composition")
    show(eg_vs_composition_figure(table, published, composition), key="eg_vs_x", data=table)

    st.subheader("Eg vs temperature")
    show(eg_vs_temperature_figure(table, published), key="eg_vs_t", data=table)

    hot = table[table["temperature_k"] > 0]
    if not hot.empty:
        st.subheader("Relative change ΔEg / Eg(0)")
        grid = hot.pivot_table(index="temperature_k", columns="composition_x", values="relative_change") * 100.0
        heat = cell_heatmap(
            grid,
            x_title=composition,
            y_title="T (K)",
            colour_title="ΔEg/Eg(0) (%)",
            text_format=".1f",
            colour_scale="RdBu",
            midpoint=0.0,
        )
        if heat is None:  # one temperature (or one composition): bars, not a one-row heat map
            heat = px.bar(
                hot.assign(percent=100 * hot["relative_change"], T=hot["temperature_k"].map(lambda t: f"{t:g} K")),
                x="composition_x",
                y="percent",
                color="T",
                barmode="group",
                color_discrete_map={f"{t:g} K": temperature_colour(t) for t in hot["temperature_k"].unique()},
                labels={"composition_x": composition, "percent": "ΔEg/Eg(0) (%)", "T": "T"},
            )
            heat.update_xaxes(tickvals=sorted(hot["composition_x"].unique()))
        show(heat, key="relative_change", data=grid.reset_index())

    st.subheader("Per MD run")
    columns = [
        "composition_x",
        "temperature_k",
        "passes_gate",
        "n_snapshots",
        "n_effective",
        "gap_tau_fs",
        "equilibrated",
        "mean_gap_ev",
        "error_ev",
        "delta_ev",
        "delta_error_ev",
        "relative_change",
        "lowest_relative_change",
        "reason",
    ]
    columns = [c for c in columns if c in thermal.columns]
    st.dataframe(thermal[columns] if not thermal.empty else thermal, hide_index=True, width="stretch")
    if not results["snapshots"].empty:
        snapshots = results["snapshots"]
        runs = (
            snapshots[["composition_x", "temperature_k"]]
            .drop_duplicates()
            .sort_values(["composition_x", "temperature_k"])
        )
        # one label per run (formatting one per snapshot row cost 0.2 s on every rerun of the study's page)
        options = {f"x = {x:g}, {t:g} K": (x, t) for x, t in runs.itertuples(index=False)}
        x, t = options[st.selectbox("Snapshot gaps of", list(options))]
        chosen = snapshots[(snapshots["composition_x"] == x) & (snapshots["temperature_k"] == t)]
        figure = px.scatter(
            chosen,
            x="time_fs",
            y="gap_ev",
            error_y="gap_std_ev",
            labels={"time_fs": "MD time (fs)", "gap_ev": "GNN gap (eV)"},
        )
        show(figure, key="snapshot_gaps", data=chosen)
    estimates = results.get("estimates", pd.DataFrame())
    st.subheader("ΔEg/Eg(0): the MD average beside independent estimates")
    if estimates.empty:
        st.info(
            "No independent estimates yet: they need the harmonic force constants of the phonons stage "
            "(`capml phonons`) and `gaps.estimate_samples` > 0."
        )
    else:
        shown = estimates[estimates["imaginary_treatment"].isin(["abs", "renormalised", "dataset"])]
        md = thermal[thermal["mean_gap_ev"].notna()]
        figure = go.Figure()
        symbols = {
            "harmonic-classical": "circle-open",
            "harmonic-quantum": "diamond-open",
            "special-displacement": "square-open",
            "special-displacement-renormalised": "square",
            "dft-phonon-sampled": "star",
        }
        for x in sorted(set(shown["composition_x"]) | set(md["composition_x"])):
            of_md = md[md["composition_x"] == x].sort_values("temperature_k")
            if not of_md.empty:
                figure.add_trace(
                    go.Scatter(
                        x=of_md["temperature_k"],
                        y=100 * of_md["relative_change"],
                        error_y={"type": "data", "array": 100 * of_md["relative_error"]},
                        mode="lines+markers",
                        name=f"MD, x = {x:g}",
                        legendgroup=f"{x:g}",
                    )
                )
            for method, rows in shown[shown["composition_x"] == x].groupby("method"):
                figure.add_trace(
                    go.Scatter(
                        x=rows["temperature_k"],
                        y=100 * rows["relative_change"],
                        mode="markers",
                        marker={"symbol": symbols.get(method, "x"), "size": 10},
                        name=f"{method}, x = {x:g}",
                        legendgroup=f"{x:g}",
                    )
                )
        figure.update_layout(xaxis_title="T (K)", yaxis_title="ΔEg/Eg(0) (%)", height=450, margin={"t": 30})
        show(figure, key="estimates", data=estimates)
        st.caption(
            "Harmonic sampling and special displacements from the MACE force constants of each composition's "
            "structure (imaginary modes sampled at |ω|; the table also has them left out); the difference between "
            "quantum and classical harmonic sampling estimates the zero-point part classical MD cannot give."
        )
        columns = [
            "composition_x",
            "temperature_k",
            "method",
            "imaginary_treatment",
            "n_configurations",
            "gap_ev",
            "error_ev",
            "relative_change",
            "dft_gap_ev",
            "n_imaginary",
            "n_excluded",
            "rms_displacement_a",
            "note",
        ]
        st.dataframe(estimates[columns].round(4), hide_index=True, width="stretch")
    checks = results.get("checks", pd.DataFrame())
    st.subheader("DFT checks of Eg(T) on the same frames")
    if checks.empty:
        st.warning(
            "No thermal average of this project was recomputed with DFT (`gaps.dft_check`): these Eg(T) are the "
            "gap model's alone."
        )
    else:
        flagged = checks[checks["verdict"] != "agrees"]
        if not flagged.empty:
            st.error(
                f"{len(flagged)} of {len(checks)} checked Eg(T) do not agree with DFT on the same frames: "
                + "; ".join(
                    f"x = {r.composition_x:g}, {r.temperature_k:g} K: {r.verdict} (model − DFT "
                    f"{r.difference_ev:+.3f} ± {r.difference_error_ev:.3f} eV)"
                    for r in flagged.itertuples()
                )
            )
        shown = checks[
            [
                "composition_x",
                "temperature_k",
                "n_frames",
                "model_gap_ev",
                "dft_gap_ev",
                "dft_error_ev",
                "difference_ev",
                "difference_error_ev",
                "verdict",
                "note",
            ]
        ].round(3)
        st.dataframe(shown, hide_index=True, width="stretch")
        st.caption(
            f"Paired comparison over the same uncorrelated MD frames ({checks['level'].iloc[0]}): flagged when "
            f"|model − DFT| > {checks['tolerance_ev'].iloc[0]:g} eV and > 2 x its error; 'too noisy' when that "
            "error is above the tolerance."
        )
    if not published.empty:
        st.subheader("Published gaps next to capml's")
        compared = compare_with_published(table, published)
        outside = compared[compared["outside"].fillna(False).astype(bool)]
        if not outside.empty:
            st.warning(
                f"{len(outside)} of {compared['capml_gap_ev'].notna().sum()} compared published gaps differ from "
                "capml's by more than twice the combined uncertainty (marked 'outside')."
            )
        st.dataframe(compared.round(3), hide_index=True, width="stretch")
