"""`make demo`'s command on a fresh PREFECT_HOME: the CLI, Prefect's ephemeral server, real GPAW labels and trainings.

Its own file, so that the parallel suite (pytest -n 2 --dist loadfile) runs it beside test_flow's pipeline runs.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from capml_core.store.database import Store
from tests.conftest import DEMO_CONFIG, REPO

pytestmark = pytest.mark.slow


@pytest.mark.timeout(3600)  # 16 min alone on 2 idle cores; beside the other half of the parallel suite, more
def test_capml_run_is_the_demo_command(tmp_path: Path) -> None:
    """What `make demo` runs: the capml CLI, Prefect's ephemeral server, a fresh PREFECT_HOME, 2 GPAW labels."""
    env = {**os.environ, "PREFECT_HOME": str(tmp_path / "prefect-home")}
    env.pop("PREFECT_API_URL", None)
    result = subprocess.run(
        [sys.executable, "-m", "flows.cli", "run", str(DEMO_CONFIG), "--project", str(tmp_path / "demo")],
        capture_output=True,
        text=True,
        timeout=3400,
        env=env,
        cwd=REPO,
    )
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    assert "Finished in state Completed()" in output
    # one Prefect API for the run and its labelling workers: one temporary server, no uvicorn traceback
    assert output.count("Starting temporary server") == 1, output[-5000:]
    assert "Traceback" not in output and "address already in use" not in output, output[-5000:]
    assert "capml dashboard --project" in result.stdout
    store = Store(tmp_path / "demo")
    assert store.runs()["status"].tolist() == ["done"]
    labelled = store.query(
        "SELECT l.status, l.energy_ev, l.gap_ev, s.kind FROM labels l JOIN structures s "
        "USING (structure_hash) WHERE l.source = 'capml label'"
    )
    assert len(labelled) == 2 and set(labelled["status"]) == {"ok"}  # real GPAW PBEsol calculations
    assert labelled["gap_ev"].between(0.2, 1.5).all()
    assert len(store.pending_labels("gpaw-pbesol")) == 13
    mlip = store.mlip_results()  # the demo's MACE profile: trained from scratch in ~4 minutes
    test = mlip["metrics"].query("split == 'test'").set_index("quantity")
    assert test.loc["forces", "mae"] < 0.1 and test.loc["energy", "mae"] < 0.02  # eV/Å, eV/atom
    assert set(mlip["phonons"]["end_member"]) == {"Br", "I"}
    heldout = store.query("SELECT model, quantity, n, mae FROM heldout_errors WHERE set_name = 'md-heldout'")
    forces = heldout[heldout["model"].str.startswith("mace") & (heldout["quantity"] == "forces")]
    assert len(forces) == 1 and 0.0 < forces["mae"].iloc[0] < 0.3  # MACE measured on the held-out MD frames (eV/Å)
    assert heldout["model"].str.startswith("gnn").any() and (heldout["n"] >= 40).all()  # and the gap model
    gaps = store.bandgap_results()  # Eg(0) for every composition, Eg(300 K) for every run (the demo's gate is off)
    assert len(gaps["static"]) == 5 and gaps["thermal"]["mean_gap_ev"].notna().sum() == 5
    assert len(gaps["published"]) == 21
    modes = store.mode_results()["status"].value_counts()
    assert modes.sum() == 5 * 120 and modes["acoustic"] == 15 and modes["frozen"] > 0
