"""The phonons stage: harmonic phonons, one verdict per MD run, the gate to the band-gap stage, resume.

DynaPhoPy's physics is tested in test_anharmonic.py (EMT copper); here the analysis of each MD run is replaced
by a stand-in so that the stage's orchestration (which runs are analysed, what is stored, what passes the
gate, what a failed analysis becomes) is tested on MD runs of the tiny MACE.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from capml_core.stages.phonons import StabilityResult, stabilisation_temperatures
from tests.conftest import md_config, project_copy


def test_stabilisation_temperature_is_the_lowest_stable_temperature_of_an_unbroken_stable_ladder() -> None:
    def verdicts(x: float, ladder: list[tuple[float, bool]]) -> list[StabilityResult]:
        return [StabilityResult(f"{x}-{t}", x, t, s, s, "") for t, s in ladder]

    found = stabilisation_temperatures(
        verdicts(0.0, [(100, False), (200, True), (300, True)])
        + verdicts(0.5, [(100, True), (200, False), (300, True)])
        + verdicts(1.0, [(100, False), (200, False)])
    )
    assert found == {0.0: 200, 0.5: 300, 1.0: None}


@pytest.mark.slow
def test_stage_stores_a_verdict_per_md_run_gates_and_resumes(trained, tmp_path: Path, monkeypatch) -> None:  # noqa: ANN001
    import capml_core.physics.anharmonic as anharmonic
    from capml_core.errors import CalculationFailed
    from capml_core.stages.disorder import run_disorder_scan
    from capml_core.stages.dynamics import run_dynamics
    from capml_core.stages.phonons import run_phonon_stage

    source, config, _, _ = trained
    project, store = project_copy(source, tmp_path)
    config = md_config(config, [50.0], duration_ps=0.1, equilibration_ps=0.02)
    run_disorder_scan(store, config)
    run_dynamics(store, config)
    calls: list[float] = []

    def stand_in(cell, force_constants, trajectory, *, temperature_k, resolution_thz, frames):  # noqa: ANN001, ANN202
        x = round(sum(s == "Br" for s in cell.get_chemical_symbols()) / 8, 3)
        calls.append(x)
        assert force_constants.shape == (40, 40, 3, 3) and len(frames) == 17  # production frames of 0.1 ps
        assert resolution_thz == pytest.approx(1.05 / 0.08)  # the finest 80 fs of production allow
        if x == 0.25:
            raise CalculationFailed("DynaPhoPy stopped (exit()): no peaks")
        harmonic = np.linspace(-1.0, 5.0, 120)
        renormalised = np.abs(harmonic) + 0.5 if x != 0.5 else harmonic  # x = 0.5 stays soft
        renormalised_fc = force_constants if x == 1.0 else None  # x = 1: "renormalised" = harmonic
        offsets = np.full(40, 0.02)  # x = 0.75: one S atom sits in a distorted well
        if x == 0.75:
            offsets[cell.get_chemical_symbols().index("S")] = 0.4
        return anharmonic.AnharmonicPhonons(
            temperature_k, harmonic, renormalised, np.full(120, 0.3), renormalised_fc, (20, 21, 22), offsets
        )

    monkeypatch.setattr(anharmonic, "renormalised_phonons", stand_in)
    harmonic, verdicts = run_phonon_stage(store, config)
    assert [h.composition_x for h in harmonic] == [0.0, 0.25, 0.5, 0.75, 1.0] and sorted(calls) == [
        0.0,
        0.25,
        0.5,
        0.75,
        1.0,
    ]
    by_x = {v.composition_x: v for v in verdicts}
    assert [by_x[x].stable for x in (0.0, 0.25, 0.5, 0.75, 1.0)] == [True, False, False, True, True]
    assert by_x[0.25].reason.startswith("no renormalised phonons: DynaPhoPy stopped")
    assert not by_x[0.5].passes_gate and by_x[1.0].passes_gate
    rows = store.query("SELECT * FROM phonon_anharmonic ORDER BY composition_x")
    assert rows["thermostat_broadening_thz"].iloc[0] == pytest.approx(5e-3 * 1000 / (2 * np.pi))
    assert rows["artifact_id"].isna().tolist() == [False, True, False, False, False]
    assert rows["max_site_offset_a"].round(3).tolist()[3:] == [0.4, 0.02]
    assert rows["site_offset_atom"].iloc[3].endswith("(S)") and "sits 0.40 Å from its site" in rows["reason"].iloc[3]
    assert "from its site" not in rows["reason"].iloc[4]  # 0.02 Å: oscillates about its sites
    bromide = store.load_arrays(rows["artifact_id"].iloc[4])
    harmonic_bands = store.load_arrays(harmonic[4].artifact_id)["dispersion_thz"]
    assert np.allclose(bromide["renormalised_dispersion_thz"], harmonic_bands, atol=1e-8)
    saved = store.load_arrays(rows["artifact_id"].iloc[0])
    assert "renormalised_dispersion_thz" not in saved  # not every mode fitted: no renormalised dispersion
    assert np.allclose(saved["renormalised_thz"][:3], [1.5, 1.4495798, 1.3991597])
    calls.clear()
    _, again = run_phonon_stage(
        store, config.model_copy(update={"phonons": config.phonons.model_copy(update={"gate": False})})
    )
    assert calls == [] and [v.stable for v in again] == [v.stable for v in verdicts]  # stored verdicts, not redone
    assert all(v.passes_gate for v in again)  # gate off: every structure goes on, the verdicts stay recorded
    # the CLI: `capml md` finds its runs done, `capml phonons` prints the stored verdicts
    from typer.testing import CliRunner

    from flows.cli import app
    from tests.conftest import DEMO_CONFIG, REPO

    text = DEMO_CONFIG.read_text().replace('"../', f'"{REPO}/data/').replace("gate = false", "gate = true")
    head, rest = text.split("[md]", 1)
    md_toml = "[md]\ntemperatures_k = [50.0]\nduration_ps = 0.1\nequilibration_ps = 0.02\nworkers = 2\n\n"
    toml = tmp_path / "cli.toml"
    toml.write_text(head + md_toml + rest[rest.index("[gaps]") :])
    runner = CliRunner()
    md = runner.invoke(app, ["md", "-c", str(toml), "-p", str(project)])
    assert md.exit_code == 0, md.output
    assert md.output.count("│ 50 ") == 5 or md.output.count(" 50 ") >= 5
    result = runner.invoke(app, ["phonons", "-c", str(toml), "-p", str(project)])
    assert result.exit_code == 0, result.output
    assert "dropped" in result.output and "DynaPhoPy stopped" in result.output
    assert "x = 0.5: never" in result.output and "x = 1: 50 K" in result.output
    # the dashboard page shows the verdicts, the 0 K dispersion and the renormalised modes
    import json

    import streamlit as st
    from streamlit.testing.v1 import AppTest

    monkeypatch.setenv("CAPML_PROJECT_DIR", str(project))
    st.cache_data.clear()
    at = AppTest.from_function(_phonons_page, default_timeout=60).run()
    assert not at.exception
    summary = at.dataframe[0].value
    assert summary["stable from (K)"].isna().tolist() == [False, True, True, False, False]
    assert summary["stable from (K)"].iloc[0] == 50.0 and summary["stable from (K)"].iloc[-1] == 50.0
    specs = [json.loads(c.proto.spec) for c in at.get("plotly_chart")]
    assert len(specs) == 2  # dispersion of x = 0 and its renormalised modes at 50 K
    colours = {t["line"]["color"] for t in specs[0]["data"] if t.get("mode") == "lines" and "line" in t}
    assert "grey" in colours
    assert len(at.dataframe[2].value) == 5  # MD health of the five runs


def _phonons_page() -> None:
    from dashboard.views.phonons import render_phonons

    render_phonons()
