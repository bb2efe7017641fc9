"""The result projects shipped under data/results/: read as they are, on a fresh clone, computing nothing."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from capml_core.stages.shipping import MANIFEST, shipped_result_dirs
from flows.cli import app


def test_results_are_shipped() -> None:
    assert shipped_result_dirs(), "no result project under data/results/ (capml data ship-results)"


@pytest.mark.parametrize("results", shipped_result_dirs(), ids=lambda p: p.name)
def test_shipped_results_answer_report_and_sql_and_stay_small(results: Path, tmp_path: Path) -> None:
    files = [p for p in results.rglob("*") if p.is_file()]
    assert sum(p.stat().st_size for p in files) < 50e6
    assert not (results / "md").exists() and not list(results.rglob("*.h5"))  # no trajectories
    assert json.loads((results / MANIFEST).read_text())["artifacts"] >= 1
    before = {p: p.stat().st_mtime_ns for p in files}
    runner = CliRunner()
    report = runner.invoke(app, ["report", "--project", str(results), "--json"])
    assert report.exit_code == 0, report.output
    found = json.loads(report.stdout)
    assert {"models", "gaps", "static", "estimates", "stabilisation_k"} <= set(found)
    assert found["gaps"] and all(g["gap_ev"] is None or 0.0 < g["gap_ev"] < 4.0 for g in found["gaps"])
    assert found["models"]["mace"]["md_frames_force_mae_ev_per_a"] is not None  # checked where it is used
    ensemble = found["models"]["gap_ensemble_id"]  # a study keeps the Eg(T) of its earlier gap models too
    query = f"SELECT count(*) AS n FROM gap_thermal WHERE ensemble_id = '{ensemble}'"
    sql = runner.invoke(app, ["sql", "--project", str(results), "--output", "json", query])
    assert sql.exit_code == 0, sql.output
    assert json.loads(sql.stdout)[0]["n"] == len(found["gaps"])
    assert {p: p.stat().st_mtime_ns for p in files} == before  # reading wrote nothing


def test_report_keeps_the_yardstick_and_lists_every_held_out_set(tmp_path: Path) -> None:
    """md_frames_* numbers stay those of the md-heldout frames when a study measures its own frames as well."""
    import shutil

    from capml_core.stages.report import project_report, report_tables
    from capml_core.store.database import Store

    source = next(p for p in shipped_result_dirs() if p.name == "ag3sbri-active-learning")
    shutil.copy(source / "capml.duckdb", tmp_path / "capml.duckdb")
    store = Store(tmp_path)
    before = project_report(store)["models"]
    mace = f"mace {before['mace']['model_id']}"
    shown = {"set_name": "study-heldout", "model": mace, "level": "gpaw-pbesol", "quantity": "forces", "unit": "eV/Å"}
    shown |= {"n": 720, "mae": 0.5, "mean_error": 0.0}
    with store.write() as writer:
        writer.add_rows("heldout_errors", [{**shown, "rmse": 0.6, "max_error": 2.0}])
    after = project_report(store)["models"]
    assert after["mace"] == before["mace"] and after["gnn"] == before["gnn"]  # still the md-heldout frames
    assert [e for e in after["heldout_sets"] if e["set_name"] == "study-heldout"] == [shown]
    titles = [t.title for t in report_tables(project_report(store))]
    assert titles[1] == "models on other held-out MD frames (model - DFT)"
    assert titles[2].startswith("gap model on every held-out MD frame, by composition")


def test_gap_errors_by_composition_add_up_to_the_held_out_mae() -> None:
    """Per composition, the same frames as the md-heldout MAE: their frame-weighted mean is that MAE, per level."""
    from capml_core.stages.report import project_report
    from capml_core.store.database import Store

    models = project_report(Store(next(p for p in shipped_result_dirs() if p.name == "ag3sbri-active-learning")))[
        "models"
    ]
    by_composition = models["gnn_by_composition"]
    assert {e["composition_x"] for e in by_composition} == {i / 8 for i in range(9)}  # every composition measured
    for level, numbers in models["gnn"].items():
        rows = [e for e in by_composition if e["level"] == level]
        n = sum(e["n"] for e in rows)
        assert n == numbers["n_md_frames"]
        assert sum(e["n"] * e["mae_ev"] for e in rows) / n == pytest.approx(numbers["md_frames_mae_ev"], rel=1e-9)
        mean = sum(e["n"] * e["mean_error_ev"] for e in rows) / n
        assert mean == pytest.approx(numbers["md_frames_mean_error_ev"], rel=1e-9, abs=1e-12)


def test_report_says_whether_the_phonon_gate_was_on_and_counts_the_verdicts() -> None:
    import pandas as pd

    from capml_core.stages.report import phonon_gate, report_tables

    def verdicts(stable, passes, gate=None):
        config = None if gate is None else json.dumps({"phonons": {"gate": gate}})
        return pd.DataFrame({"stable": stable, "passes_gate": passes, "config_json": [config] * len(stable)})

    off = phonon_gate(verdicts([True, False, False], [True, True, True], gate=False))
    assert off == {"gate": False, "n_runs": 3, "n_stable": 1, "n_not_stable": 2, "n_not_stable_averaged": 2}
    assert phonon_gate(verdicts([True, False], [True, False], gate=True))["gate"] is True
    # no configuration stored: read off the verdicts, or undecidable when every run is stable
    assert phonon_gate(verdicts([False], [True]))["gate"] is False
    assert phonon_gate(verdicts([False], [False]))["gate"] is True
    assert phonon_gate(verdicts([True, True], [True, True]))["gate"] is None
    # a report (the shipped one, whose project has no verdicts, given these): the stability table says it
    source = next(p for p in shipped_result_dirs() if p.name == "ag3sbri-active-learning")
    found = json.loads(CliRunner().invoke(app, ["report", "--project", str(source), "--json"]).stdout)
    assert found["phonon_gate"] == {
        "gate": None,
        "n_runs": 0,
        "n_stable": 0,
        "n_not_stable": 0,
        "n_not_stable_averaged": 0,
    }
    found |= {"phonon_gate": off, "stabilisation_k": {"1": None}, "stabilisation_reasons": {"1": "S off its site"}}
    (title,) = [t.title for t in report_tables(found) if t.title.startswith("dynamic stability")]
    assert title.endswith("(phonon gate off: 1 of 3 MD runs stable, 2 not stable averaged anyway)")


def test_report_gives_relative_changes_against_the_dft_eg0_and_flags_a_model_eg0_off_dft() -> None:
    """ΔEg/Eg against DFT's cubic Eg(0) where it was computed, for the model's Eg(T) and for DFT on the checked
    frames; a model Eg(0) more than the check tolerance off DFT is a flag (it enters the model's ΔEg/Eg)."""
    from capml_core.stages.report import project_report
    from capml_core.store.database import Store

    source = next(p for p in shipped_result_dirs() if p.name == "ag3sbri-active-learning")
    report = project_report(Store(source))
    static = {s["composition_x"]: s for s in report["static"]}
    assert static[0.0]["cubic_model_minus_dft_ev"] == pytest.approx(-0.0975, abs=1e-3)  # 1.585 vs 1.683 eV
    assert static[0.5]["cubic_dft_gap_ev"] is None and static[0.5]["cubic_model_minus_dft_ev"] is None
    flagged = [f for f in report["flags"] if "cubic Eg(0)" in f]
    assert len(flagged) == 2 and flagged[0].startswith("x = 0: the model's cubic Eg(0) 1.585 eV is -0.098 eV off")
    for g in report["gaps"]:
        eg0 = static[g["composition_x"]]["cubic_dft_gap_ev"]
        if eg0 is None:
            assert g["relative_change_dft_eg0"] is None and g["dft_relative_change"] is None
            continue
        assert g["dft_eg0_ev"] == eg0
        assert g["relative_change_dft_eg0"] == pytest.approx((g["gap_ev"] - eg0) / eg0)
        assert g["relative_error_dft_eg0"] == pytest.approx(g["error_ev"] / eg0)
        if g["dft_gap_ev"] is not None:
            assert g["dft_relative_change"] == pytest.approx((g["dft_gap_ev"] - eg0) / eg0)
    x0 = {g["temperature_k"]: g for g in report["gaps"] if g["composition_x"] == 0.0}
    assert x0[300.0]["relative_change"] == pytest.approx(-0.335, abs=1e-3)  # against the model's 1.585 eV
    assert x0[300.0]["relative_change_dft_eg0"] == pytest.approx(-0.374, abs=1e-3)  # against DFT's 1.683 eV


def test_report_shows_estimates_published_gaps_and_the_compute_on_one_page() -> None:
    """The text report carries what the JSON carries: the estimates beside the MD, Table I beside capml, and the
    CPU hours, each adding up to the store's own rows."""
    from capml_core.stages.report import project_report, report_tables
    from capml_core.store.database import Store

    store = Store(next(p for p in shipped_result_dirs() if p.name == "ag3sbri-active-learning"))
    report = project_report(store)
    tables = {t.title.split(":")[0]: t for t in report_tables(report)}
    estimates = tables["independent estimates"]
    assert len(estimates.rows) == len({(e["composition_x"], e["temperature_k"]) for e in report["estimates"]})
    row = next(r for r in estimates.rows if r[:2] == ("0", "300"))
    md = next(g for g in report["gaps"] if g["composition_x"] == 0.0 and g["temperature_k"] == 300.0)
    assert row[2] == f"{100 * md['relative_change']:+.1f} %"
    classical = {
        e["imaginary_treatment"]: e["relative_change"]
        for e in report["estimates"]
        if (e["composition_x"], e["temperature_k"], e["method"]) == (0.0, 300.0, "harmonic-classical")
    }
    column = estimates.columns.index("harmonic-classical")
    assert row[column] == f"{100 * classical['abs']:+.1f} % / {100 * classical['exclude']:+.1f} %"
    published = tables["published gaps beside capml's (capml at the same x and T, interpolated in x; Eg(0)"]
    assert len(published.rows) == len(report["published"]) and "Table I" in published.rows[0][0]
    assert published.warnings == {i for i, p in enumerate(report["published"]) if p["outside"]}
    compute = report["compute"]
    labels = store.query("SELECT count(*) AS n, sum(wall_time_s) / 3600 AS h FROM labels")
    assert sum(d["n"] for d in compute["dft"]) == labels["n"].iloc[0]
    assert sum(d["cpu_h"] for d in compute["dft"]) == pytest.approx(labels["h"].iloc[0])
    imported = sum(d["n"] for d in compute["dft"] if d["origin"] == "imported")
    assert imported == store.query("SELECT count(*) AS n FROM labels WHERE source LIKE '%.extxyz'")["n"].iloc[0]
    here = sum(d["cpu_h"] for d in compute["dft"] if d["origin"] == "computed here")
    parts = compute["md_cpu_h"] + compute["mace_training_h"] + compute["gap_model_training_h"]
    assert compute["total_cpu_h"] == pytest.approx(here + parts + compute["disorder_scan_h"])
    assert compute["md_runs"] == len(report["gaps"]) and compute["md_cpu_h"] > 0.5  # 54 runs of 2 ps
    assert tables["compute"].rows[-1] == ("total computed in this project", "", f"{compute['total_cpu_h']:.2f}")


def test_estimates_table_keeps_each_method_in_its_column() -> None:
    """The DFT column is the special displacement's alone; a DFT-only method stays in its own column."""
    from capml_core.stages.report import _estimates_table

    def estimate(method, treatment, relative, dft=None):
        return {
            "composition_x": 1.0,
            "temperature_k": 300.0,
            "method": method,
            "imaginary_treatment": treatment,
            "gap_ev": 1.0,
            "error_ev": 0.01,
            "relative_change": relative,
            "dft_gap_ev": dft,
        }

    report = {
        "static": [{"composition_x": 1.0, "cubic_gap_ev": 2.0, "cubic_dft_gap_ev": 2.0, "lowest_gap_ev": None}],
        "gaps": [{"composition_x": 1.0, "temperature_k": 300.0, "relative_change": -0.344}],
        "estimates": [
            estimate("special-displacement", "abs", -0.30, dft=1.4),
            estimate("special-displacement", "exclude", -0.09, dft=1.6),
            estimate("dft-phonon-sampled", "dataset", -0.345, dft=1.3),
        ],
    }
    estimates = _estimates_table(report)
    assert estimates.columns == (
        "x",
        "T (K)",
        "MD",
        "special-displacement",
        "dft-phonon-sampled",
        "special-displacement, DFT",
    )
    assert estimates.rows == (("1", "300", "-34.4 %", "-30.0 % / -9.0 %", "-34.5 %", "-30.0 % / -20.0 %"),)


def test_a_disagreeing_check_flags_the_unchecked_temperatures_of_its_composition() -> None:
    """No hidden flag: where DFT disagrees with the model at one temperature of a composition, the composition's
    unchecked temperatures are flagged too (the checked ones keep their own verdicts)."""
    from capml_core.stages.report import project_report
    from capml_core.store.database import Store

    report = project_report(Store(next(p for p in shipped_result_dirs() if p.name == "ag3sbri-active-learning")))
    disagreeing = {g["composition_x"] for g in report["gaps"] if g["dft_verdict"] == "disagrees"}
    assert disagreeing == {0.5}  # x = 0.5 at 100 K: +0.061 ± 0.016 eV
    for g in report["gaps"]:
        if g["composition_x"] == 0.5 and g["dft_verdict"] is None:
            assert g["flagged"], g["temperature_k"]
    (sentence,) = [f for f in report["flags"] if "unchecked Eg(T)" in f]
    assert sentence == (
        "x = 0.5: the model disagrees with DFT on this composition's checked frames (100 K +0.061 ± 0.016 eV), "
        "so its unchecked Eg(T) at 200, 400, 500 K is flagged too"
    )
    for g in report["gaps"]:  # elsewhere an unchecked Eg(T) is flagged only for its own run's reasons
        if g["composition_x"] != 0.5 and g["dft_verdict"] is None:
            where = f"x = {g['composition_x']:g}, {g['temperature_k']:g} K: MD health"
            own = (
                g["equilibrated"] is False or not g["passes_gate"] or any(f.startswith(where) for f in report["flags"])
            )
            assert g["flagged"] == own, where


def test_the_checks_together_say_how_far_an_unchecked_eg_may_be_off() -> None:
    """The DFT checks summarised: verdicts counted from the rows, model − DFT rms over the checked runs, and a flag
    when that rms is beyond the tolerance (an unchecked Eg(T)'s ± holds statistics and ensemble spread only)."""
    import numpy as np

    from capml_core.stages.report import dft_checks_sentence, project_report, report_tables
    from capml_core.store.database import Store

    report = project_report(Store(next(p for p in shipped_result_dirs() if p.name == "ag3sbri-study")))
    checked = [g for g in report["gaps"] if g["dft_verdict"]]
    summary = report["dft_checks"]
    assert summary["n"] == len(checked) == 15
    assert summary["agrees"] + summary["disagrees"] + summary["too_noisy"] == 15
    assert summary["disagrees"] == sum(g["dft_verdict"] == "disagrees" for g in checked)
    differences = np.array([g["dft_difference_ev"] for g in checked])
    assert summary["rms_difference_ev"] == pytest.approx(np.sqrt(np.mean(differences**2)))
    assert 0.05 < summary["rms_difference_ev"] < 0.1  # round 7's model: 0.075 eV, the floor of docs/active-learning.md
    assert summary["within_tolerance"] == int(np.sum(np.abs(differences) <= 0.05))
    (flag,) = [f for f in report["flags"] if "DFT-checked Eg(T)" in f]
    assert f"{summary['rms_difference_ev']:.3f} eV rms" in flag
    titles = [t.title for t in report_tables(report)]
    assert any(t.startswith("DFT checks of Eg(T) together") for t in titles)
    sentence = dft_checks_sentence(summary, len(report["gaps"]))  # the overview's trust panel says the same
    assert sentence.startswith(f"15 of {len(report['gaps'])} averages checked: {summary['agrees']} agree")
    assert f"{summary['rms_difference_ev']:.3f} eV rms" in sentence
    assert dft_checks_sentence(None, 9) == "none of 9 averages checked"
