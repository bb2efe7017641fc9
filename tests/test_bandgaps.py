"""Finite-temperature gaps: block-averaging errors, ensemble uncertainties, published data, and the stages.

The stage tests run on the tiny MACE of conftest's ``trained`` fixture with a small GNN ensemble trained here;
the phonon verdicts that gate the stage are written directly (DynaPhoPy is tested in test_anharmonic.py).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from capml_core.bandgaps import (
    PUBLISHED_COLUMNS,
    average_gaps,
    block_average_error,
    load_published_gaps,
)
from capml_core.errors import InvalidInputError
from tests.conftest import REPO


def _ar1(n: int, rho: float, rng: np.random.Generator) -> np.ndarray:
    noise = rng.normal(size=n)
    x = np.empty(n)
    x[0] = noise[0] / np.sqrt(1 - rho**2)
    for i in range(1, n):
        x[i] = rho * x[i - 1] + noise[i]
    return x * np.sqrt(1 - rho**2)  # unit variance


def test_block_averaging_finds_the_error_of_correlated_data() -> None:
    rng = np.random.default_rng(7)
    n = 2**14
    white = rng.normal(size=n)
    assert block_average_error(white) == pytest.approx(1 / np.sqrt(n), rel=0.2)
    rho = 0.9
    red = _ar1(n, rho, rng)
    true_error = np.sqrt((1 + rho) / (1 - rho) / n)  # AR(1): variance of the mean, 4.4x the naive error
    naive = np.std(red, ddof=1) / np.sqrt(n)
    assert naive < 0.3 * true_error
    assert block_average_error(red) == pytest.approx(true_error, rel=0.3)  # 20 seeds: 0.87-1.25
    assert np.isnan(block_average_error(np.array([1.0])))
    assert block_average_error(np.array([1.0, 2.0, 3.0])) == pytest.approx(np.std([1, 2, 3], ddof=1) / np.sqrt(3))


def test_average_gaps_separates_statistics_and_model_spread() -> None:
    rng = np.random.default_rng(3)
    series = 1.2 + 0.05 * rng.normal(size=64)
    # two models that differ by a constant offset of ±0.1 eV at every structure, static included
    gaps = np.vstack([series + 0.1, series - 0.1])
    static = np.array([1.5 + 0.1, 1.5 - 0.1])
    average = average_gaps(gaps, static)
    assert average.n_snapshots == 64
    assert average.mean_gap_ev == pytest.approx(series.mean())
    assert average.static_gap_ev == pytest.approx(1.5)
    assert average.delta_ev == pytest.approx(series.mean() - 1.5)
    assert average.relative_change == pytest.approx((series.mean() - 1.5) / 1.5)
    assert average.model_error_ev == pytest.approx(np.std([0.1, -0.1], ddof=1))  # the offsets spread <Eg> ...
    assert average.delta_error_ev == pytest.approx(average.statistical_error_ev)  # ... but cancel in ΔEg
    assert average.statistical_error_ev == pytest.approx(0.05 / 8, rel=0.35)
    assert average.error_ev == pytest.approx(np.hypot(average.statistical_error_ev, average.model_error_ev))
    one_model = average_gaps(series[None, :], np.array([1.5]))
    assert one_model.model_error_ev == 0.0
    with pytest.raises(InvalidInputError, match="2 models x 64 snapshots vs 1 static"):
        average_gaps(gaps, np.array([1.5]))


def test_bundled_table_one_loads() -> None:
    frame = load_published_gaps(REPO / "data" / "experiment" / "ag3sbri-table1.csv")
    assert list(frame.columns) == list(PUBLISHED_COLUMNS)
    measured = frame[frame["kind"] == "experiment"]
    assert len(measured) == 6 and set(measured["temperature_k"]) == {300.0}
    assert sorted(set(measured["composition_x"])) == [0.0, 0.3, 0.5, 0.7, 1.0]
    paper = frame[frame["kind"] == "calculation"]
    assert paper.query("temperature_k == 0 and composition_x == 1.0")["gap_ev"].item() == 1.8


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (
            "composition_x,temperature_k,gap_ev,kind,source\n0,300,1,experiment,a\n",
            r"missing column\(s\) \['uncertainty_ev'\]",
        ),
        (
            ",".join(PUBLISHED_COLUMNS) + "\n0,300,wide,0.1,experiment,a\n",
            "row 1, column gap_ev = 'wide': not a number",
        ),
        (
            ",".join(PUBLISHED_COLUMNS) + "\n0,300,1,0.1,experiment,a\n1.5,300,1,0.1,experiment,b\n",
            "row 2, column composition_x = 1.5; allowed: 0 to 1",
        ),
        (
            ",".join(PUBLISHED_COLUMNS) + "\n0,300,1,0.1,guess,a\n",
            "row 1, column kind = 'guess'; allowed: experiment, calculation",
        ),
    ],
)
def test_bad_published_gaps_are_refused(tmp_path: Path, body: str, message: str) -> None:
    path = tmp_path / "gaps.csv"
    path.write_text(body)
    with pytest.raises(InvalidInputError, match=message) as err:
        load_published_gaps(path)
    assert "gaps.csv" in str(err.value)


def test_reference_compositions_must_be_studied(tmp_path: Path) -> None:
    from capml_core.config import load_config
    from capml_core.errors import ConfigError
    from tests.conftest import DEMO_CONFIG

    text = (
        DEMO_CONFIG.read_text()
        .replace('"../', f'"{REPO}/data/')
        .replace("reference_compositions = []", "reference_compositions = [0.3]")
    )
    path = tmp_path / "bad.toml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=r"reference_compositions \[0.3\] are not studied by the run"):
        load_config(path)
