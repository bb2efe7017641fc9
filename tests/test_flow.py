"""The Prefect pipeline: a real flow run in Prefect's local ephemeral mode."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from capml_core.store import Store
from tests.conftest import DEMO_CONFIG, REPO

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def prefect_harness():
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=120):
        yield


def test_pipeline_flow_imports_and_summarises_and_is_idempotent(prefect_harness, tmp_path: Path) -> None:
    from flows.pipeline import pipeline

    project = tmp_path / "proj"
    first = pipeline(config_path=str(DEMO_CONFIG), project_dir=str(project))
    assert first["dataset"]["n_structures"] == 150
    assert [i["new_labels"] for i in first["imports"]] == [103, 48]
    second = pipeline(config_path=str(DEMO_CONFIG), project_dir=str(project))
    assert [i["new_labels"] for i in second["imports"]] == [0, 0]  # re-running duplicates nothing
    store = Store(project)
    runs = store.runs()
    assert list(runs["status"]) == ["done", "done"] and runs["config_hash"].nunique() == 1
    stages = store.stages()
    assert list(stages["stage"]) == ["dataset-import", "dataset-summary"] and set(stages["status"]) == {"done"}
    assert store.query("SELECT count(*) AS n FROM labels")["n"][0] == 151


def test_a_failing_stage_is_recorded_and_nothing_partial_is_written(prefect_harness, tmp_path: Path) -> None:
    from flows.pipeline import pipeline

    bad_data = tmp_path / "bad.extxyz"
    lines = (REPO / "data" / "datasets" / "gpaw-gllbsc.extxyz").read_text().splitlines(keepends=True)
    bad_data.write_text("".join(lines[:42]) + "".join(lines[42:84]).replace("gllbsc_gap=", "gllbsc_gaq="))
    config = tmp_path / "c.toml"
    text = DEMO_CONFIG.read_text().replace('"../datasets/gpaw-gllbsc.extxyz"', f'"{bad_data}"')
    config.write_text(text.replace('"../datasets/', f'"{REPO}/data/datasets/'))
    project = tmp_path / "proj"
    with pytest.raises(Exception, match="frame 1: missing gap label 'gllbsc_gap'"):
        pipeline(config_path=str(config), project_dir=str(project))
    store = Store(project)
    assert store.runs()["status"].tolist() == ["failed"]
    stage = store.stages().set_index("stage").loc["dataset-import"]
    assert stage["status"] == "failed" and "gllbsc_gap" in stage["message"]
    levels = store.query("SELECT level, count(*) AS n FROM labels GROUP BY level")
    assert levels.to_dict("records") == [{"level": "gpaw-pbesol", "n": 103}]  # the good file went in, the bad not


def test_capml_run_is_the_demo_command(tmp_path: Path) -> None:
    """What `make demo` runs: the capml CLI, Prefect's ephemeral server, a fresh PREFECT_HOME."""
    env = {**os.environ, "PREFECT_HOME": str(tmp_path / "prefect-home")}
    env.pop("PREFECT_API_URL", None)
    result = subprocess.run(
        [sys.executable, "-m", "flows.cli", "run", str(DEMO_CONFIG), "--project", str(tmp_path / "demo")],
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
        cwd=REPO,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Finished in state Completed()" in result.stdout + result.stderr
    assert "capml dashboard --project" in result.stdout
    assert Store(tmp_path / "demo").runs()["status"].tolist() == ["done"]
