"""Labelling stage with real GPAW on small cells (5-atom Ag3SBr, low cutoff: seconds per calculation)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from capml_core.dft.levels import GpawGllbsc, GpawPbesol, get_level
from capml_core.stages.labelling import label_structures
from capml_core.store.database import Store
from capml_core.store.records import StructureRecord
from capml_core.system.structures import build_cubic_antiperovskite, structure_hash

pytestmark = pytest.mark.slow

FAST_PBESOL = GpawPbesol(cutoff_ev=250.0)


def _cells(n: int) -> list[StructureRecord]:
    rng = np.random.default_rng(3)
    out = []
    for i in range(n):
        atoms = build_cubic_antiperovskite("Ag", "S", "Br", 4.793)
        atoms.positions += rng.normal(0.0, 0.05, atoms.positions.shape)
        out.append(StructureRecord(atoms=atoms, structure_hash=structure_hash(atoms), kind="uniform", seed=i))
    return out


def _store_with_set(tmp_path: Path, records: list[StructureRecord], level: str) -> Store:
    store = Store(tmp_path / "proj")
    with store.write() as w:
        w.add_structures(records, run_id=None)
        w.add_to_set("small", level, [r.structure_hash for r in records])
    return store


def test_labelling_is_resumable_and_stores_each_result(tmp_path: Path) -> None:
    records = _cells(3)
    store = _store_with_set(tmp_path, records, "gpaw-pbesol")
    pending = store.pending_labels("gpaw-pbesol")
    assert pending == [r.structure_hash for r in records]  # set order
    seen = []
    first = label_structures(
        store,
        FAST_PBESOL,
        pending[:1],
        workers=1,
        progress=lambda done, total, rec: seen.append((done, total, rec.status)),
    )
    assert (first.n_ok, first.n_failed) == (1, 0) and seen == [(1, 1, "ok")]
    assert store.pending_labels("gpaw-pbesol") == pending[1:]  # an interrupted pass resumes with the rest
    second = label_structures(store, FAST_PBESOL, store.pending_labels("gpaw-pbesol"), workers=2)
    assert second.n_ok == 2 and store.pending_labels("gpaw-pbesol") == []
    labels = store.query("SELECT * FROM labels ORDER BY created_at")
    assert len(labels) == 3 and set(labels["status"]) == {"ok"}
    for row in labels.itertuples():
        forces = np.reshape(row.forces_ev_per_a, (5, 3))
        assert np.allclose(forces.sum(axis=0), 0.0, atol=0.02)  # Newton's third law, plane-wave noise aside
        assert len(row.stress_ev_per_a3) == 6 and 0.0 < row.gap_ev < 3.0 and row.wall_time_s > 0
    settings = store.query("SELECT backend, settings_json FROM levels")
    assert settings["backend"][0] == "gpaw" and '"mode": "PW(250)"' in settings["settings_json"][0]


def test_a_failed_calculation_is_stored_with_its_error_and_not_retried(tmp_path: Path) -> None:
    records = _cells(1)
    store = _store_with_set(tmp_path, records, "gpaw-gllbsc")
    stalling = GpawGllbsc(cutoff_ev=250.0, maxiter=2)  # cannot converge in 2 SCF steps
    report = label_structures(store, stalling, store.pending_labels("gpaw-gllbsc"), workers=1)
    assert (report.n_ok, report.n_failed) == (0, 1)
    row = store.query("SELECT status, error, gap_ev FROM labels").iloc[0]
    assert row["status"] == "failed" and "gpaw-gllbsc" in row["error"] and np.isnan(row["gap_ev"])
    assert store.pending_labels("gpaw-gllbsc") == []  # not retried in a loop
    assert store.pending_labels("gpaw-gllbsc", include_failed=True) == [records[0].structure_hash]
    assert list((store.project_dir / "logs" / "gpaw-gllbsc").glob("*.txt"))  # GPAW's output kept for a look
    converging = GpawGllbsc(cutoff_ev=250.0, kpts=(2, 2, 2))  # Γ only does not converge for 5 atoms
    good = label_structures(store, converging, [records[0].structure_hash], workers=1)
    assert good.n_ok == 1
    row = store.query("SELECT status, error, gap_ev, extras_json FROM labels").iloc[0]
    assert row["status"] == "ok" and row["error"] is None
    assert '"dxc_ev"' in row["extras_json"] and row["gap_ev"] > 0


def test_unknown_level_is_refused_with_the_known_ones() -> None:
    with pytest.raises(ValueError, match="known: gpaw-gllbsc, gpaw-pbesol, vasp-hsesol, vasp-pbesol"):
        get_level("vasp-r2scan")


def test_a_structure_another_live_process_claimed_is_skipped_and_scratch_stays_in_the_project(tmp_path: Path) -> None:
    """Two labelling processes on one project: the second leaves the first's claim alone; nothing in /tmp."""
    import subprocess
    import sys
    import tempfile

    from capml_core.store.hosts import this_host

    records = _cells(2)
    store = _store_with_set(tmp_path, records, "gpaw-pbesol")
    pending = store.pending_labels("gpaw-pbesol")
    other = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
    temporary = set(Path(tempfile.gettempdir()).glob("capml-gpaw-*"))
    try:
        with store.write() as writer:
            writer.con.execute(
                "INSERT INTO label_claims VALUES (?, 'gpaw-pbesol', ?, ?, now())", [pending[0], other.pid, this_host()]
            )
        report = label_structures(store, FAST_PBESOL, pending, workers=1)
    finally:
        other.kill()
        other.wait()
    assert (report.n_ok, report.n_skipped) == (1, 1)
    assert store.pending_labels("gpaw-pbesol") == pending[:1]  # left to the process that claimed it
    assert store.query("SELECT structure_hash FROM label_claims")["structure_hash"].tolist() == [pending[0]]
    assert set(Path(tempfile.gettempdir()).glob("capml-gpaw-*")) == temporary  # no scratch folder in /tmp
    assert (store.project_dir / "scratch").is_dir() and not any((store.project_dir / "scratch").iterdir())
    again = label_structures(store, FAST_PBESOL, store.pending_labels("gpaw-pbesol"), workers=1)
    assert again.n_ok == 1 and store.pending_labels("gpaw-pbesol") == []  # its process is gone: taken over
