"""The phonons stage: harmonic phonons, one verdict per MD run, the gate to the band-gap stage, resume.

DynaPhoPy's physics is tested in test_anharmonic.py (EMT copper). Here the stage runs the real analysis on real MD
of the tiny MACE (conftest's ``trained``): the two end members as 5-atom cells, 0.8 ps at 20 K. Its verdicts are
checked against the physics API called directly on the same frames, then the stage's other branches on real
input: an analysis that cannot be done (a resolution no run allows) and atoms that left their sites (a trajectory
with one atom moved by 2 Å).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from capml_core.physics.stability import stabilisation_temperatures
from capml_core.stages.phonons import stability_result
from tests.conftest import md_config, project_copy


def test_stabilisation_temperature_is_the_lowest_stable_temperature_of_an_unbroken_stable_ladder() -> None:
    def verdicts(x: float, ladder: list[tuple[float, bool]]) -> list[tuple[float, float, bool]]:
        return [(x, t, s) for t, s in ladder]

    found = stabilisation_temperatures(
        verdicts(0.0, [(100, False), (200, True), (300, True)])
        + verdicts(0.5, [(100, True), (200, False), (300, True)])
        + verdicts(1.0, [(100, False), (200, False)])
    )
    assert found == {0.0: 200, 0.5: 300, 1.0: None}


def test_stored_rows_become_results_with_their_numbers_and_the_current_gate() -> None:
    row = {
        "md_id": "m",
        "composition_x": 0.5,
        "temperature_k": 300.0,
        "stable": False,
        "passes_gate": False,
        "reason": "no renormalised phonons: x",
        "n_modes": 120.0,  # integer columns with NULLs come back as floats
        "n_harmonic_imaginary": 66.0,
        "min_renormalised_thz": float("nan"),
        "median_linewidth_thz": None,
        "max_site_offset_a": 0.43,
        "site_offset_atom": "7 (S)",
    }
    gated, open_gate = stability_result(row, gate=True), stability_result(row, gate=False)
    assert not gated.passes_gate and open_gate.passes_gate and not open_gate.stable
    assert (gated.n_modes, gated.n_harmonic_imaginary, gated.max_site_offset_a) == (120, 66, 0.43)
    assert isinstance(gated.n_modes, int) and gated.min_renormalised_thz is None and gated.median_linewidth_thz is None
    assert gated.site_offset_atom == "7 (S)"


@pytest.mark.slow
def test_stage_analyses_real_md_stores_the_verdicts_gates_and_resumes(trained, tmp_path: Path, monkeypatch) -> None:
    import h5py

    from capml_core.config.schema import MDSection
    from capml_core.errors import SitesLeftError
    from capml_core.physics.anharmonic import renormalised_phonons
    from capml_core.physics.md import production_frames, read_trajectory
    from capml_core.physics.stability import StabilityVerdict, stability_verdict
    from capml_core.stages.disorder import run_disorder_scan
    from capml_core.stages.dynamics import run_dynamics
    from capml_core.stages.phonons import run_phonon_stage
    from capml_core.store.queries import latest_model, latest_scan_id

    source, config, _, _ = trained
    project, store = project_copy(source, tmp_path)
    config = md_config(config, [20.0], duration_ps=0.8, equilibration_ps=0.1)
    system = config.system.model_copy(update={"compositions": [0.0, 1.0], "supercell": [1, 1, 1]})  # 5-atom cells
    config = config.model_copy(update={"system": system})
    model_id = latest_model(store)[0]
    run_disorder_scan(store, config, model_id=model_id)
    ids = {"model_id": model_id, "scan_id": latest_scan_id(store)}
    run_dynamics(store, config, **ids)
    harmonic, verdicts = run_phonon_stage(store, config, **ids)
    assert [h.composition_x for h in harmonic] == [0.0, 1.0] and [v.composition_x for v in verdicts] == [0.0, 1.0]
    rows = store.query("SELECT * FROM phonon_anharmonic ORDER BY composition_x")
    runs = store.query("SELECT * FROM md_runs ORDER BY composition_x")
    thermostat = 5e-3 * 1000 / (2 * np.pi)  # γ/2π of the paper's friction: 0.80 THz
    resolution = 1.05 / 0.7  # the finest 0.7 ps of production allow (THz)
    for h, verdict, row, run in zip(harmonic, verdicts, rows.to_dict("records"), runs.to_dict("records"), strict=True):
        # the stage's analysis is the physics API's on the production frames: 0.7 ps, 141 frames 5 fs apart
        atoms = store.load_atoms(run["structure_hash"])
        trajectory = read_trajectory(project / run["path"])
        frames = production_frames(trajectory, MDSection.model_validate_json(run["settings_json"]).equilibration_ps)
        assert len(atoms) == 5 and len(frames) == 141 and row["resolution_thz"] == pytest.approx(resolution)
        assert row["thermostat_broadening_thz"] == pytest.approx(thermostat)
        zero_k = store.load_arrays(h.artifact_id)
        assert verdict.n_harmonic_imaginary == h.imaginary.n_gamma == np.sum(zero_k["gamma_frequencies_thz"] < -0.05)
        try:
            result = renormalised_phonons(
                atoms,
                zero_k["force_constants"],
                trajectory,
                temperature_k=20.0,
                resolution_thz=row["resolution_thz"],  # the very float: a diverged fit is sensitive to its last bit
                frames=frames,
            )
        except SitesLeftError as err:  # atoms left their sites for real: no phonons, no arrays
            expected = StabilityVerdict.sites_left(err, temperature_k=20.0, symbol=atoms[err.atom].symbol)
            assert pd.isna(row["artifact_id"]) and verdict.min_renormalised_thz is None
        else:
            expected = stability_verdict(
                result, thermostat_broadening_thz=thermostat, symbols=atoms.get_chemical_symbols()
            )
            saved = store.load_arrays(row["artifact_id"])
            np.testing.assert_allclose(saved["harmonic_thz"], zero_k["gamma_frequencies_thz"], atol=1e-8)
            np.testing.assert_allclose(saved["renormalised_thz"], result.renormalised_thz, atol=1e-10, equal_nan=True)
            np.testing.assert_allclose(saved["linewidths_thz"], result.linewidths_thz, atol=1e-10, equal_nan=True)
            # the three acoustic modes are the three zeros at Γ, with no peak of their own
            acoustic = list(result.acoustic_modes)
            assert tuple(saved["acoustic_modes"]) == result.acoustic_modes and len(acoustic) == 3
            assert np.all(np.abs(zero_k["gamma_frequencies_thz"][acoustic]) < 0.05)
            assert np.all(saved["renormalised_thz"][acoustic] == 0.0) and np.all(saved["linewidths_thz"][acoustic] == 0)
            fitted = np.isfinite(result.linewidths_thz)
            assert np.all(result.linewidths_thz[fitted] >= 0.0) and expected.n_no_fit == 12 - (fitted.sum() - 3)
            assert expected.n_optical == 12 and expected.n_imaginary_renormalised == len(expected.offending)
            assert verdict.min_renormalised_thz == pytest.approx(expected.softest_renormalised_thz)
            assert verdict.n_modes == 15
            # a renormalised dispersion exactly when every mode was fitted
            assert ("renormalised_dispersion_thz" in saved) == (expected.n_no_fit == 0)
        assert verdict.stable == expected.stable == bool(row["stable"]) and verdict.passes_gate == verdict.stable
        assert verdict.reason.startswith(expected.summary()) and verdict.reason == row["reason"]
        assert verdict.max_site_offset_a == pytest.approx(expected.site_offset_a)
        assert verdict.site_offset_atom == f"{expected.site_offset_atom} ({expected.site_offset_symbol})"
    assert rows["artifact_id"].notna().any()  # at least one run analysed by DynaPhoPy (at 20 K: both)
    # gate off: nothing recomputed (same rows, same times), every run passes
    created = rows["created_at"].tolist()
    ungated = config.model_copy(update={"phonons": config.phonons.model_copy(update={"gate": False})})
    _, again = run_phonon_stage(store, ungated, **ids)
    assert [v.stable for v in again] == [v.stable for v in verdicts] and all(v.passes_gate for v in again)
    assert (
        store.query("SELECT created_at FROM phonon_anharmonic ORDER BY composition_x")["created_at"].tolist() == created
    )
    # the CLI: `capml md` finds its runs done, `capml phonons` prints the stored verdicts
    from typer.testing import CliRunner

    from flows.cli import app
    from tests.conftest import DEMO_CONFIG, REPO

    text = DEMO_CONFIG.read_text().replace('"../', f'"{REPO}/data/').replace("gate = false", "gate = true")
    text = text.replace("compositions = [0.0, 0.25, 0.5, 0.75, 1.0]", "compositions = [0.0, 1.0]")
    text = text.replace("supercell = [2, 2, 2]", "supercell = [1, 1, 1]")
    head, rest = text.split("[md]", 1)
    md_toml = "[md]\ntemperatures_k = [20.0]\nduration_ps = 0.8\nequilibration_ps = 0.1\nworkers = 2\n\n"
    toml = tmp_path / "cli.toml"
    toml.write_text(head + md_toml + rest[rest.index("[gaps]") :])
    runner = CliRunner()
    md = runner.invoke(app, ["md", "-c", str(toml), "-p", str(project)])
    assert md.exit_code == 0, md.output
    assert len(store.query("SELECT md_id FROM md_runs")) == 2  # no new run
    result = runner.invoke(app, ["phonons", "-c", str(toml), "-p", str(project)])
    assert result.exit_code == 0, result.output
    assert (
        store.query("SELECT created_at FROM phonon_anharmonic ORDER BY composition_x")["created_at"].tolist() == created
    )
    for v in verdicts:
        assert (f"x = {v.composition_x:g}: 20 K" in result.output) == v.stable
        assert (f"x = {v.composition_x:g}: never" in result.output) == (not v.stable)
    # the dashboard page shows the verdicts, the 0 K dispersion and the renormalised modes
    import json

    import streamlit as st
    from streamlit.testing.v1 import AppTest

    monkeypatch.setenv("CAPML_PROJECT_DIR", str(project))
    st.cache_data.clear()
    at = AppTest.from_function(_phonons_page, default_timeout=60).run()
    assert not at.exception
    summary = at.dataframe[0].value
    assert summary["stable from (K)"].notna().tolist() == [v.stable for v in verdicts]
    reasons = "\n".join(m.value for m in at.markdown)  # every verdict's reason in full, not cut off in a table
    assert all(v.reason in reasons for v in verdicts if v.reason)
    specs = [json.loads(c.proto.spec) for c in at.get("plotly_chart")]
    assert len(specs) == 1 + rows["artifact_id"].notna().iloc[0]  # x = 0: dispersion (+ renormalised modes)
    assert specs[0]["layout"]["xaxis"]["ticktext"] == ["Γ", "X", "M", "Γ", "R", "X|R", "M"]  # the cubic cell's path
    assert "unfolded onto the parent cell's Brillouin zone" in specs[0]["layout"]["title"]["text"]  # the default
    zero_k = store.load_arrays(harmonic[0].artifact_id)  # a 5-atom cell is its own parent: every weight 1 or 0
    assert (
        np.allclose(zero_k["unfolded_weights"].sum(axis=1), 15.0)
        and np.isin(zero_k["unfolded_weights"].round(6), [0, 1]).all()
    )
    # an analysis that cannot be done (a resolution coarser than the whole spectrum): unstable, with the error
    coarse = config.model_copy(update={"phonons": config.phonons.model_copy(update={"resolution_thz": 100.0})})
    _, failed = run_phonon_stage(store, coarse, **ids)
    assert [v.stable for v in failed] == [False, False] and all(v.min_renormalised_thz is None for v in failed)
    assert all(v.reason.startswith("no renormalised phonons: frames 5 fs apart resolve") for v in failed)
    assert store.query("SELECT artifact_id FROM phonon_anharmonic")["artifact_id"].isna().all()
    # atoms that left their sites: atom 0 (Ag) of the bromide's run 2 Å off in every frame
    with h5py.File(project / runs["path"].iloc[1], "r+") as handle:
        handle["positions_a"][:, 0, 0] += 2.0
    loose = config.model_copy(update={"phonons": config.phonons.model_copy(update={"max_site_offset_a": 5.0})})
    _, last = run_phonon_stage(store, loose, **ids)
    assert (last[0].stable, last[0].min_renormalised_thz) == (verdicts[0].stable, verdicts[0].min_renormalised_thz)
    left = last[1]
    masses = store.load_atoms(runs["structure_hash"].iloc[1]).get_masses()
    assert not left.stable and left.site_offset_atom == "0 (Ag)" and left.min_renormalised_thz is None
    assert left.max_site_offset_a == pytest.approx(2.0 * (1 - masses[0] / masses.sum()), abs=0.4)  # less the c.o.m.
    assert left.reason.startswith("unstable at 20 K: the structure does not oscillate about its 0 K sites: atom 0 (Ag)")


def _phonons_page() -> None:
    from dashboard.views.phonons import render_phonons

    render_phonons()
