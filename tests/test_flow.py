"""The Prefect pipeline: a real flow run in Prefect's local ephemeral mode."""

from __future__ import annotations

from pathlib import Path

import pytest

from capml_core.store.database import Store
from tests.conftest import DEMO_CONFIG, REPO

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def prefect_harness():
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=120):
        yield


def _expected_new_labels() -> list[int]:
    """New labels each of the demo's imports adds to an empty store (files may share structures)."""
    from ase.io import read

    from capml_core.config.loading import load_config
    from capml_core.system.structures import structure_hash

    seen: set[tuple[str, str]] = set()
    counts = []
    for spec in load_config(DEMO_CONFIG).config.dataset.imports:
        keys = {(spec.level, structure_hash(a)) for a in read(spec.path, index=":")}
        counts.append(len(keys - seen))
        seen |= keys
    return counts


def _demo_copy(tmp_path: Path, replace: tuple[str, str] = ("", ""), append: str = "") -> Path:
    """The demo config with absolute data paths, labelling nothing (this test's time goes to Prefect)."""
    text = DEMO_CONFIG.read_text().replace('"../', f'"{REPO}/data/')
    smaller = {
        "max_calculations = 2": "max_calculations = 0",
        "ensemble_size = 3 ": "ensemble_size = 1 ",
        "epochs = 150": "epochs = 60",
        "max_epochs = 20": "max_epochs = 3",
        "channels = 32": "channels = 8",
        # the kernel head is tested by test_demo and test_mlip
        'search_architectures = ["paper", "three-layer", "mean-pool", "mace-kernel"]': 'search_architectures = ["paper"]',  # noqa: E501
        "learning_curve_fractions = [0.5, 1.0]": "learning_curve_fractions = [0.5]",
        "duration_ps = 2.0": "duration_ps = 0.2",
        "equilibration_ps = 0.5": "equilibration_ps = 0.05",
    }
    for old, new in smaller.items():
        assert old in text, f"the demo config no longer has {old!r}: update this test"  # no silent full-size run
        text = text.replace(old, new)
    text = text.replace(*replace) + "\n" + append
    path = tmp_path / "demo.toml"
    path.write_text(text)
    return path


@pytest.mark.timeout(1800)  # two pipeline runs; a loaded machine needs more than the default 600 s
def test_pipeline_flow_imports_generates_and_summarises_and_is_idempotent(prefect_harness, tmp_path: Path) -> None:
    from flows.pipeline import pipeline

    vasp_set = "[[dataset.sets]]\nname = 'vasp'\nlevel = 'vasp-pbesol'\nseed = 5\n"
    vasp_set += "uniform_amplitudes_a = [0.1]\nuniform_per_point = 1\n"
    project, config = tmp_path / "proj", _demo_copy(tmp_path, append=vasp_set)
    first = pipeline(config_path=str(config), project_dir=str(project))
    expected = _expected_new_labels()
    assert expected[0] == 103 and expected[3] == 48  # the shipped files; then capml's own
    assert [i["new_labels"] for i in first["imports"]] == expected
    bundled = first["dataset"]["n_structures"] - 15 - 5  # minus the generated demo and vasp sets
    assert bundled >= 150 and first["labelling"] == [{"level": "gpaw-pbesol", "ok": 0, "failed": 0, "mean_s": None}]
    second = pipeline(config_path=str(config), project_dir=str(project))
    assert [i["new_labels"] for i in second["imports"]] == [0] * len(expected)  # re-running duplicates nothing
    assert second["dataset"]["n_structures"] == first["dataset"]["n_structures"]
    store = Store(project)
    runs = store.runs()
    assert list(runs["status"]) == ["done", "done"] and runs["config_hash"].nunique() == 1
    stages = store.stages()
    assert list(stages["stage"]) == [
        "dataset-import",
        "dataset-generate",
        "label",
        "dataset-summary",
        "mlip",
        "gnn",
        "disorder",
        "dynamics",
        "active-learning",
        "phonons",
        "bandgaps",
        "modes",
    ]
    assert set(stages["status"]) == {"done"}
    assert store.query("SELECT count(*) AS n FROM labels")["n"][0] == sum(expected)  # no VASP without a command
    assert len(store.pending_labels("gpaw-pbesol")) == 15 and len(store.pending_labels("vasp-pbesol")) == 5
    assert set(first["gnn"]["test"]) == {"cheap", "high"} and first["gnn"]["test"]["cheap"]["mae_ev"] < 0.1
    # same gaps and settings: the content-keyed GNN stage reuses the first run's search, ensemble and curve
    for key in ("ensemble_id", "search", "learning_curve"):
        assert second["gnn"][key] == first["gnn"][key]
    for stage, metrics in first["gnn"]["test"].items():
        assert second["gnn"]["test"][stage] == pytest.approx(metrics, rel=1e-6)
    assert store.query("SELECT count(DISTINCT ensemble_id) AS n FROM gnn_models")["n"][0] == 1
    assert first["mlip"]["model_id"] == second["mlip"]["model_id"]  # same data and settings: MACE not retrained
    assert store.query("SELECT count(*) AS n FROM mlip_models")["n"][0] == 1
    assert set(first["mlip"]["test"]) == {"energy", "forces", "stress"} and set(first["mlip"]["phonons"]) == {"Br", "I"}
    relaxed = {0.0: 1, 0.25: 3, 0.5: 6, 0.75: 3, 1.0: 1}  # all inequivalent arrangements of the 2x2x2 cell
    assert first["disorder"]["relaxed"] == second["disorder"]["relaxed"] == relaxed
    assert store.query("SELECT count(*) AS n FROM disorder_relaxations")["n"][0] == 14  # not relaxed twice
    assert [(r["x"], r["temperature_k"]) for r in first["dynamics"]] == [(x, 300.0) for x in relaxed]
    assert store.query("SELECT count(*) AS n FROM md_runs WHERE complete")["n"][0] == 5  # not run twice
    assert set(first["phonons"]["imaginary_at_0k"]) == set(relaxed) and len(first["phonons"]["verdicts"]) == 5
    assert store.query("SELECT count(*) AS n FROM phonon_anharmonic")["n"][0] == 5  # not analysed twice
    # gaps: one ensemble, so one set of Eg(0), Eg(T) and mode rows, not recomputed by the second run
    assert set(first["bandgaps"]["static_ev"]) == set(relaxed) and first["bandgaps"]["level"] == "gpaw-gllbsc"
    assert [t["gap_ev"] is not None for t in first["bandgaps"]["thermal"]] == [True] * 5
    assert store.query("SELECT count(*) AS n FROM gap_thermal")["n"][0] == 5
    assert second["bandgaps"] == first["bandgaps"]
    assert store.query("SELECT count(*) AS n FROM gap_published")["n"][0] == 21  # Table I, stored once
    assert first["modes"]["frozen"] > 0 and first["modes"]["checked"] == 0  # the demo checks none with DFT
    statuses = store.query("SELECT ensemble_id, status, count(*) AS n FROM gap_modes GROUP BY ALL")
    assert statuses.groupby("ensemble_id")["n"].sum().tolist() == [5 * 120]  # every Γ mode, once
    assert statuses.query("status == 'acoustic'")["n"].tolist() == [5 * 3]


def test_a_failing_stage_is_recorded_and_nothing_partial_is_written(prefect_harness, tmp_path: Path) -> None:
    from flows.pipeline import pipeline

    bad_data = tmp_path / "bad.extxyz"
    lines = (REPO / "data" / "datasets" / "gpaw-gllbsc.extxyz").read_text().splitlines(keepends=True)
    bad_data.write_text("".join(lines[:42]) + "".join(lines[42:84]).replace("gllbsc_gap=", "gllbsc_gaq="))
    config = _demo_copy(tmp_path, (f'"{REPO}/data/datasets/gpaw-gllbsc.extxyz"', f'"{bad_data}"'))
    project = tmp_path / "proj"
    with pytest.raises(Exception, match="frame 1: missing gap label 'gllbsc_gap'"):
        pipeline(config_path=str(config), project_dir=str(project))
    store = Store(project)
    assert store.runs()["status"].tolist() == ["failed"]
    stage = store.stages().set_index("stage").loc["dataset-import"]
    assert stage["status"] == "failed" and "gllbsc_gap" in stage["message"]
    levels = store.query("SELECT level, count(*) AS n FROM labels GROUP BY level")
    pbesol = sum(_expected_new_labels()[:3])  # the three PBEsol files come first and went in, the bad one not
    assert levels.to_dict("records") == [{"level": "gpaw-pbesol", "n": pbesol}]
