"""One visual vocabulary for every page: a fixed colour per species and per temperature, a marker per source.

A species or a temperature has the same colour on every chart, whatever the plotting order; the source of a
value (capml, the paper's calculation, experiment) is told by the marker symbol, never by colour alone.
"""

from __future__ import annotations

import plotly.colors

#: Fixed colours of the species (and of the substituted sublattice as one group, e.g. 'Br/I').
SPECIES_COLOURS = {
    "Ag": "#1f77b4",
    "S": "#ff7f0e",
    "Br": "#2ca02c",
    "I": "#9467bd",
    "Br/I": "#17becf",
    "Cs": "#8c564b",
    "Pb": "#7f7f7f",
    "Cl": "#bcbd22",
}
#: Marker symbol of each source of a band gap.
SOURCE_SYMBOLS = {"capml": "circle", "calculation": "diamond-open", "experiment": "star"}
#: The temperature range the colour scale spans (K).
TEMPERATURE_RANGE_K = (0.0, 600.0)


def species_colour(name: str) -> str:
    """The fixed colour of a species or species group (grey for one not in the table)."""
    return SPECIES_COLOURS.get(name, "#444444")


def species_colour_map(names) -> dict[str, str]:
    """``color_discrete_map`` for plotly express: every name its fixed colour."""
    return {name: species_colour(name) for name in names}


def temperature_colour(temperature_k: float) -> str:
    """A fixed colour per temperature on a cold-to-hot scale (0 K blue ... 600 K red; hotter clipped to red)."""
    lo, hi = TEMPERATURE_RANGE_K
    fraction = min(max((float(temperature_k) - lo) / (hi - lo), 0.0), 1.0)
    return plotly.colors.sample_colorscale("Plasma_r", [0.1 + 0.8 * fraction])[0]


def composition_colour(composition_x: float) -> str:
    """A fixed colour per composition x in [0, 1] (Viridis: x = 0 purple ... x = 1 yellow-green)."""
    fraction = min(max(float(composition_x), 0.0), 1.0)
    return plotly.colors.sample_colorscale("Viridis", [0.05 + 0.85 * fraction])[0]
