"""Chart building blocks every page shares: heat maps on their cells, parity plots, and drawing with take-away.

- :func:`cell_heatmap`: a heat map only where it has >= 2 rows and >= 2 columns that differ (else None: the
  caller shows a line or a table), categorical axes so every tick sits on its cell, the value written in each cell.
- :func:`parity_figure`: reference vs prediction with y = x, equal axes (same range, one unit per unit) and
  hovers rounded to the quantity's precision, naming composition and source rather than a hash.
- :func:`show`: draws a figure with Plotly's download button (PNG or SVG: the sidebar's choice) and, below it,
  the figure's data as CSV.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd
import plotly.graph_objects as go
import streamlit as st

#: Session key of the sidebar's chart download format.
FIGURE_FORMAT_KEY = "figure_format"
FIGURE_FORMATS = ("png", "svg")


def composition_title(species: str | None) -> str:
    """Axis title of the composition: 'Br fraction x' (the first species of the substituted sublattice)."""
    return f"{species} fraction x" if species else "composition x"


def cell_heatmap(
    grid: pd.DataFrame,
    *,
    x_title: str,
    y_title: str,
    colour_title: str,
    text_format: str = ".0f",
    colour_scale: str = "Blues",
    midpoint: float | None = None,
    title: str | None = None,
) -> go.Figure | None:
    """A heat map of ``grid`` (rows on y, columns on x) with ticks on the cells; None below 2 x 2 cells.

    None too when every cell holds the same value (a uniform colour says nothing: show the table).

    Row and column labels are drawn as categories (numbers formatted with ``:g``), so a tick is a cell and
    never an interpolated value between two; each cell carries its value (``text_format``).
    """
    if grid.shape[0] < 2 or grid.shape[1] < 2:
        return None
    values = grid.to_numpy(dtype=float)
    if np.nanmin(values) == np.nanmax(values):
        return None

    def label(value) -> str:
        return f"{value:g}" if isinstance(value, int | float) else str(value)

    x_labels = [label(c) for c in grid.columns]
    y_labels = [label(r) for r in grid.index]
    text = [[format(v, text_format) if pd.notna(v) else "" for v in row] for row in values]
    figure = go.Figure(
        go.Heatmap(
            z=values,
            x=x_labels,
            y=y_labels,
            text=text,
            texttemplate="%{text}",
            colorscale=colour_scale,
            zmid=midpoint,
            colorbar={"title": {"text": colour_title}},
            hovertemplate=f"{x_title} %{{x}}<br>{y_title} %{{y}}<br>{colour_title} %{{text}}<extra></extra>",
        )
    )
    figure.update_xaxes(type="category", title=x_title)
    figure.update_yaxes(type="category", title=y_title)
    if title:
        figure.update_layout(title=title)
    return figure


def parity_figure(
    frame: pd.DataFrame,
    *,
    reference: str,
    predicted: str,
    quantity: str,
    unit: str,
    digits: int,
    colour: str | None = None,
    hover: Sequence[str] = (),
    error: str | None = None,
    title: str | None = None,
    category_orders: dict | None = None,
) -> go.Figure:
    """Predicted vs reference with the y = x line on equal axes; hovers rounded to ``digits`` decimals.

    ``hover``: extra columns named in the hover (composition, source, temperature: what a point is), each shown
    with its own rounding (3 decimals for a float).
    """
    import plotly.express as px

    low = float(min(frame[reference].min(), frame[predicted].min()))
    high = float(max(frame[reference].max(), frame[predicted].max()))
    pad = 0.04 * (high - low or 1.0)
    low, high = low - pad, high + pad
    figure = px.scatter(
        frame,
        x=reference,
        y=predicted,
        color=colour,
        error_y=error,
        opacity=0.7,
        custom_data=list(hover),
        title=title,
        category_orders=category_orders or {},
        labels={reference: f"reference {quantity} ({unit})", predicted: f"predicted {quantity} ({unit})"},
    )
    lines = [f"reference %{{x:.{digits}f}} {unit}", f"predicted %{{y:.{digits}f}} {unit}"]
    for i, column in enumerate(hover):
        is_float = pd.api.types.is_float_dtype(frame[column])
        lines.append(f"{column} %{{customdata[{i}]{':.3g' if is_float else ''}}}")
    figure.update_traces(hovertemplate="<br>".join(lines) + "<extra>%{fullData.name}</extra>")
    figure.add_trace(
        go.Scatter(
            x=[low, high],
            y=[low, high],
            mode="lines",
            name="y = x",
            line={"color": "grey", "dash": "dash"},
            hoverinfo="skip",
        )
    )
    figure.update_xaxes(range=[low, high], constrain="domain")
    figure.update_yaxes(range=[low, high], scaleanchor="x", scaleratio=1, constrain="domain")
    return figure


#: More points than this in one scatter are thinned for drawing (SVG slows beyond ~10^4; statistics use all).
MAX_PLOTTED_POINTS = 10_000


def thinned(frame: pd.DataFrame, limit: int = MAX_PLOTTED_POINTS) -> pd.DataFrame:
    """``frame``, or a fixed random sample (seed 0) of ``limit`` of its rows where it has more (for drawing only)."""
    return frame if len(frame) <= limit else frame.sample(n=limit, random_state=0).sort_index()


def three_d_on_request(what: str, *, key: str) -> bool:
    """Whether the user asked to see ``what`` in 3D (a toggle, off at first).

    A WebGL chart takes the browser 0.5-1.3 s to draw (the modes page, headless Chromium), in the same task as the
    page's other charts: drawn on request, it no longer holds back the page's first chart.
    """
    return st.toggle(f"show {what} in 3D", key=key)


def show(figure: go.Figure, *, key: str, data: pd.DataFrame | None = None, container=None) -> None:
    """Draw ``figure`` (download as PNG or SVG from its toolbar, the sidebar's format) and offer ``data`` as CSV."""
    where = container if container is not None else st
    file_format = st.session_state.get(FIGURE_FORMAT_KEY, FIGURE_FORMATS[0])
    where.plotly_chart(
        figure,
        width="stretch",
        key=key,
        config={
            "displaylogo": False,
            "toImageButtonOptions": {"format": file_format, "filename": f"capml-{key}", "scale": 2},
        },
    )
    if data is not None and len(data):
        where.download_button(
            "data (CSV)",
            data=lambda: data.to_csv(index=False).encode(),
            file_name=f"capml-{key}.csv",
            mime="text/csv",
            key=f"{key}__csv",
            on_click="ignore",
        )


def broken_path(distances: np.ndarray, bands: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Distances and bands (q-points x branches) with a NaN row at every break of the path (e.g. 'X|M').

    A break is where the distance does not increase from one q-point to the next (the next segment starts where
    the last one ended): Plotly does not join lines across NaN, so no vertical line is drawn at a break.
    """
    x = np.asarray(distances, dtype=float)
    y = np.asarray(bands, dtype=float)
    breaks = np.flatnonzero(np.diff(x) <= 1e-12) + 1
    return np.insert(x, breaks, np.nan), np.insert(y, breaks, np.nan, axis=0)
