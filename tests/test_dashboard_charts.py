"""The dashboard's shared chart blocks: heat maps on their cells, equal-axis parity, broken dispersion paths."""

from __future__ import annotations

import numpy as np
import pandas as pd

from dashboard.charts import broken_path, cell_heatmap, composition_title, parity_figure
from dashboard.views.gnn import split_errors
from dashboard.views.mlip import parity_frame


def test_heat_maps_need_two_rows_that_differ_and_put_every_tick_on_a_cell() -> None:
    one_row = pd.DataFrame([[-30.0, -35.0, -40.0]], index=[300.0], columns=[0.0, 0.25, 0.5])
    assert cell_heatmap(one_row, x_title="x", y_title="T", colour_title="%") is None  # no invented 299.6 K ticks
    uniform = pd.DataFrame(np.ones((2, 3)), index=["a", "b"], columns=[0.0, 0.5, 1.0])
    assert cell_heatmap(uniform, x_title="x", y_title="c", colour_title="n") is None
    grid = pd.DataFrame([[-30.0, -35.0, -40.0], [-45.0, -50.5, np.nan]], index=[300.0, 600.0], columns=[0, 0.25, 0.5])
    figure = cell_heatmap(grid, x_title="Br fraction x", y_title="T (K)", colour_title="%", text_format=".1f")
    trace = figure.data[0]
    assert list(trace.x) == ["0", "0.25", "0.5"] and list(trace.y) == ["300", "600"]
    assert figure.layout.xaxis.type == "category" and figure.layout.yaxis.type == "category"
    assert list(trace.text[1]) == ["-45.0", "-50.5", ""]  # each cell carries its value; a missing one stays blank
    assert figure.layout.xaxis.title.text == "Br fraction x"
    assert composition_title("Br") == "Br fraction x" and composition_title(None) == "composition x"


def test_parity_plots_have_equal_axes_and_rounded_hovers_that_say_what_a_point_is() -> None:
    frame = pd.DataFrame(
        {
            "reference": [1.0, 2.0, 3.0],
            "predicted": [1.1, 1.9, 3.5],
            "split": ["train", "test", "md-heldout"],
            "composition_x": [0.0, 0.5, 1.0],
            "origin": ["imported", "relaxed", "md-frame 300 K"],
        }
    )
    figure = parity_figure(
        frame,
        reference="reference",
        predicted="predicted",
        quantity="gap",
        unit="eV",
        digits=3,
        colour="split",
        hover=["composition_x", "origin"],
    )
    assert figure.layout.yaxis.scaleanchor == "x" and figure.layout.yaxis.scaleratio == 1
    assert tuple(figure.layout.xaxis.range) == tuple(figure.layout.yaxis.range)
    low, high = figure.layout.xaxis.range
    assert low < 1.0 and high > 3.5
    points = [t for t in figure.data if t.name != "y = x"]
    assert len(points) == 3
    template = points[0].hovertemplate
    assert "%{x:.3f} eV" in template and "%{y:.3f} eV" in template and "origin %{customdata[1]}" in template
    assert "structure_hash" not in template


def test_a_dispersion_path_is_not_joined_across_a_break() -> None:
    distances = np.array([0.0, 0.5, 1.0, 1.0, 1.5])  # X|M: the next segment starts where the last ended
    bands = np.arange(10.0).reshape(5, 2)
    x, y = broken_path(distances, bands)
    assert len(x) == 6 and np.isnan(x[3]) and np.isnan(y[3]).all()
    assert np.array_equal(x[[0, 1, 2, 4, 5]], distances) and np.array_equal(y[[0, 1, 2, 4, 5]], bands)
    x_cont, _ = broken_path(np.array([0.0, 1.0, 2.0]), np.zeros((3, 1)))
    assert not np.isnan(x_cont).any()


def test_energy_parity_is_relative_to_each_compositions_lowest_and_split_errors_carry_their_standard_error() -> None:
    predictions = pd.DataFrame(
        {
            "model_id": "m",
            "split": ["train", "train", "test", "test"],
            "composition_x": [0.0, 0.0, 1.0, 1.0],
            "origin": "imported",
            "energy_reference_ev_per_atom": [51.000, 51.010, 58.000, 58.030],
            "energy_predicted_ev_per_atom": [51.002, 51.011, 58.004, 58.020],
        }
    )
    frame = parity_frame(predictions, "energy")  # meV/atom above the composition's lowest reference
    assert np.allclose(frame["reference"], [0.0, 10.0, 0.0, 30.0])
    assert np.allclose(frame["predicted"], [2.0, 11.0, 4.0, 20.0])
    gaps = pd.DataFrame(
        {
            "stage": "high",
            "split": ["test"] * 4 + ["md-heldout"] * 2,
            "reference_ev": [1.0, 1.0, 1.0, 1.0, 2.0, 2.0],
            "predicted_ev": [1.1, 0.9, 1.3, 0.7, 2.5, 2.5],
        }
    )
    errors = split_errors(gaps).set_index("split")
    assert np.isclose(errors.loc["test", "mae_ev"], 0.2)
    assert np.isclose(errors.loc["test", "mae_error_ev"], np.std([0.1, 0.1, 0.3, 0.3], ddof=1) / 2)
    assert np.isclose(errors.loc["md-heldout", "mean_error_ev"], 0.5) and errors.loc["md-heldout", "n"] == 2


def test_an_unfolded_dispersion_draws_only_weighted_bands_sized_by_weight_with_imaginary_ones_red() -> None:
    from dashboard.views.phonons import MIN_UNFOLDED_WEIGHT, unfolded_figure

    arrays = {  # 3 q-points, 4 bands: band 0 imaginary, band 3 without the parent's character
        "unfolded_distances": np.array([0.0, 0.5, 1.0]),
        "unfolded_thz": np.array([[-1.0, 2.0, 3.0, 4.0]] * 3),
        "unfolded_weights": np.array([[1.0, 0.5, 0.25, 0.0]] * 3),
        "unfolded_tick_distances": np.array([0.0, 1.0]),
        "unfolded_tick_labels": np.array(["Γ", "X"]),
    }
    figure = unfolded_figure(arrays, 0.5)
    (trace,) = figure.data
    frequencies = np.asarray(trace.y, dtype=float)
    assert sorted(set(frequencies)) == [-1.0, 2.0, 3.0] and MIN_UNFOLDED_WEIGHT > 0.0  # weight 0 not drawn
    sizes = dict(zip(frequencies, np.asarray(trace.marker.size, dtype=float), strict=False))
    assert sizes[-1.0] > sizes[2.0] > sizes[3.0]  # marker size grows with the spectral weight
    colours = dict(zip(frequencies, trace.marker.color, strict=False))
    assert colours[-1.0] == "crimson" and colours[2.0] == colours[3.0] != "crimson"
    assert list(figure.layout.xaxis.ticktext) == ["Γ", "X"] and "unfolded" in figure.layout.title.text
