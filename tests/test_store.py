from __future__ import annotations

import multiprocessing as mp
import time
from pathlib import Path

import duckdb
import numpy as np
import pytest
from ase.build import bulk

from capml_core.errors import NotComputedError, StoreError, StoreLockedError
from capml_core.store.database import Store
from capml_core.store.records import LabelRecord, StructureRecord
from capml_core.store.schema import SCHEMA_VERSION
from capml_core.system.structures import structure_hash


def _records(n: int, offset: float = 0.0) -> list[StructureRecord]:
    out = []
    for i in range(n):
        atoms = bulk("NaCl", "rocksalt", a=5.64 + offset + 0.001 * i, cubic=True)
        out.append(
            StructureRecord(
                atoms=atoms, structure_hash=structure_hash(atoms), kind="equilibrium", composition_x=0.0, seed=i
            )
        )
    return out


def test_schema_is_created_versioned_and_views_work(tmp_path: Path) -> None:
    store = Store(tmp_path / "p")
    with pytest.raises(NotComputedError, match="no store yet"):
        store.runs()
    store.initialise()
    store.initialise()  # again: no error, nothing changes
    with store.read() as con:
        assert con.execute("SELECT value FROM schema_meta WHERE key = 'schema_version'").fetchone()[0] == str(
            SCHEMA_VERSION
        )
        tables = {r[0] for r in con.execute("SELECT table_name FROM information_schema.tables").fetchall()}
    assert {"runs", "stages", "structures", "levels", "labels", "artifacts", "labelled_structures"} <= tables


def test_newer_schema_is_refused(tmp_path: Path) -> None:
    store = Store(tmp_path)
    store.initialise()
    con = duckdb.connect(str(store.path))
    con.execute("UPDATE schema_meta SET value = '99' WHERE key = 'schema_version'")
    con.close()
    with pytest.raises(StoreError, match="schema version 99 is newer"):
        Store(tmp_path).initialise()
    with pytest.raises(StoreError, match="upgrade capml"):
        Store(tmp_path).runs()


def test_writes_are_idempotent_and_roundtrip(tmp_path: Path) -> None:
    store = Store(tmp_path)
    records = _records(5)
    with store.write() as w:
        assert w.add_structures(records + records[:2], run_id="r1").new == 5  # duplicates in one call too
    with store.write() as w:
        counts = w.add_structures(records, run_id="r2")
    assert (counts.new, counts.existing) == (0, 5)
    assert store.query("SELECT count(*) AS n FROM structures")["n"][0] == 5
    back = store.load_atoms(records[3].structure_hash)
    assert np.allclose(back.positions, records[3].atoms.positions)
    assert np.allclose(back.cell[:], records[3].atoms.cell[:])
    assert back.get_chemical_symbols() == records[3].atoms.get_chemical_symbols()
    assert structure_hash(back) == records[3].structure_hash


def test_a_failed_label_is_replaced_by_a_success_but_a_success_is_kept(tmp_path: Path) -> None:
    store = Store(tmp_path)
    rec = _records(1)[0]
    h = rec.structure_hash
    forces = np.arange(24, dtype=float).reshape(8, 3)
    with store.write() as w:
        w.add_structures([rec], run_id=None)
        w.add_labels([LabelRecord(h, "lvl", status="failed", error="SCF not converged")], run_id=None)
    with store.write() as w:
        counts = w.add_labels([LabelRecord(h, "lvl", energy_ev=-1.5, forces_ev_per_a=forces, gap_ev=2.0)], run_id=None)
    assert counts.new == 1
    with store.write() as w:
        counts = w.add_labels([LabelRecord(h, "lvl", energy_ev=99.0, wall_time_s=120.0)], run_id=None)
    assert (counts.new, counts.existing) == (0, 1)
    with store.write() as w:  # a kept label without a time takes the incoming one, once
        w.add_labels([LabelRecord(h, "lvl", energy_ev=99.0, wall_time_s=300.0)], run_id=None)
    assert store.query("SELECT wall_time_s FROM labels")["wall_time_s"].tolist() == [120.0]
    row = store.query("SELECT status, energy_ev, forces_ev_per_a, error FROM labels")
    assert len(row) == 1 and row["status"][0] == "ok" and row["energy_ev"][0] == -1.5 and row["error"][0] is None
    assert np.allclose(np.reshape(row["forces_ev_per_a"][0], (8, 3)), forces)


def test_a_failed_transaction_writes_nothing(tmp_path: Path) -> None:
    store = Store(tmp_path)
    store.initialise()
    with pytest.raises(RuntimeError), store.write() as w:
        w.add_structures(_records(3), run_id=None)
        raise RuntimeError("boom")
    assert store.query("SELECT count(*) AS n FROM structures")["n"][0] == 0


def test_large_arrays_live_in_files_the_store_points_to(tmp_path: Path) -> None:
    store = Store(tmp_path)
    trajectory = np.random.default_rng(1).normal(size=(200, 40, 3))
    with store.write() as w:
        artifact = w.save_arrays("trajectory", {"positions_a": trajectory}, run_id="r", meta={"temperature_k": 300})
    with store.write() as w:
        assert w.save_arrays("trajectory", {"positions_a": trajectory}, run_id="r") == artifact  # content-addressed
    row = store.query("SELECT relpath, n_bytes FROM artifacts")
    assert len(row) == 1
    path = tmp_path / row["relpath"][0]
    assert path.is_file() and path.stat().st_size == row["n_bytes"][0]
    assert np.array_equal(store.load_arrays(artifact)["positions_a"], trajectory)
    path.write_bytes(b"corrupted")
    with pytest.raises(StoreError, match="does not match"):
        store.load_arrays(artifact)


def _writer_process(project: str, n_batches: int, batch: int) -> None:
    store = Store(project)
    for i in range(n_batches):
        with store.write() as w:
            w.add_structures(_records(batch, offset=i), run_id="writer")
            time.sleep(0.01)  # hold the lock a little, as a real stage does
        time.sleep(0.05)  # and compute between writes


def test_dashboard_reads_while_a_flow_writes(tmp_path: Path) -> None:
    """DuckDB allows one writer process: short transactions + waiting readers make both progress."""
    store = Store(tmp_path, lock_timeout_s=30)
    store.initialise()
    n_batches, batch = 40, 5
    writer = mp.get_context("spawn").Process(target=_writer_process, args=(str(tmp_path), n_batches, batch))
    writer.start()
    seen = []
    deadline = time.monotonic() + 120
    while writer.is_alive() and time.monotonic() < deadline:
        seen.append(int(store.query("SELECT count(*) AS n FROM structures")["n"][0]))
    writer.join(timeout=60)
    assert writer.exitcode == 0
    seen.append(int(store.query("SELECT count(*) AS n FROM structures")["n"][0]))
    assert seen[-1] == n_batches * batch
    assert all(n % batch == 0 for n in seen)  # a reader only ever sees whole transactions
    assert seen == sorted(seen)
    assert len(seen) > 5 and len(set(seen)) > 2  # reads really interleaved with the writes


def test_a_writer_held_too_long_gives_a_clear_error(tmp_path: Path) -> None:
    store = Store(tmp_path, lock_timeout_s=0.5)
    store.initialise()
    ctx = mp.get_context("spawn")
    ready = ctx.Event()
    holder = ctx.Process(target=_hold_lock, args=(str(store.path), ready))
    holder.start()
    try:
        assert ready.wait(30)
        with pytest.raises(StoreLockedError, match="another process held the store"):
            store.runs()
    finally:
        holder.terminate()
        holder.join()


def _hold_lock(path: str, ready) -> None:  # multiprocessing Event
    con = duckdb.connect(path)
    ready.set()
    time.sleep(60)
    con.close()


def test_an_older_store_is_migrated_and_keeps_its_rows(tmp_path: Path) -> None:
    from capml_core.store.schema import MIGRATIONS

    tmp_path.mkdir(exist_ok=True)
    con = duckdb.connect(str(tmp_path / "capml.duckdb"))
    for statement in MIGRATIONS[1]:
        con.execute(statement)
    con.execute("INSERT INTO schema_meta VALUES ('schema_version', '1')")
    con.execute("INSERT INTO levels VALUES ('old-level', 'import', '{}', now())")
    con.close()
    store = Store(tmp_path)
    with pytest.raises(StoreError, match=f"schema version 1, this capml reads version {SCHEMA_VERSION}"):
        store.runs()
    store.initialise()
    assert store.query("SELECT value FROM schema_meta")["value"][0] == str(SCHEMA_VERSION) == "16"
    assert store.query("SELECT level FROM levels")["level"].tolist() == ["old-level"]
    assert store.pending_labels("old-level") == []  # structure_sets exists now
    columns = store.query("SELECT column_name FROM information_schema.columns WHERE table_name = 'phonon_anharmonic'")
    assert {"settings_key", "max_site_offset_a", "site_offset_atom"} <= set(columns["column_name"])


def test_the_results_export_has_every_table_and_rebuilds_the_store(tmp_path: Path) -> None:
    import io
    import zipfile

    import pandas as pd

    from capml_core.errors import InvalidInputError

    store = Store(tmp_path / "project")
    records = _records(3)
    with store.write() as w:
        w.add_structures(records, run_id="r1")
    archive = zipfile.ZipFile(io.BytesIO(store.export_archive()))
    names = set(archive.namelist())
    assert {"structures.parquet", "labels.parquet", "gap_thermal.parquet", "schema.sql", "load.sql"} <= names
    with archive.open("structures.parquet") as handle:
        structures = pd.read_parquet(io.BytesIO(handle.read()))
    assert sorted(structures["structure_hash"]) == sorted(r.structure_hash for r in records)
    exported = store.export_tables(tmp_path / "csv", file_format="csv")
    rebuilt = duckdb.connect(str(tmp_path / "rebuilt.duckdb"))
    rebuilt.execute(f"IMPORT DATABASE '{exported}'")
    assert rebuilt.execute("SELECT count(*) FROM structures").fetchone()[0] == 3
    with pytest.raises(InvalidInputError, match="not empty"):  # an export never overwrites
        store.export_tables(exported)
    with pytest.raises(InvalidInputError, match="allowed are 'parquet' and 'csv'"):
        store.export_tables(tmp_path / "other", file_format="xlsx")
    assert not (tmp_path / "other").exists()


def test_shipped_results_read_without_the_project_and_leave_models_and_large_arrays_behind(tmp_path: Path) -> None:
    import json

    from capml_core.errors import InvalidInputError
    from capml_core.stages.shipping import MANIFEST, ship_results

    store = Store(tmp_path / "project")
    records = _records(4)
    dispersion = np.linspace(-1.0, 5.0, 60).reshape(20, 3)
    with store.write() as w:
        w.add_structures(records, run_id="r1")
        phonons = w.save_arrays("phonons", {"dispersion_thz": dispersion}, run_id="r1")
        w.save_arrays("gnn", {"weights": np.ones(10)}, run_id="r1")
        w.save_arrays("phonons", {"big": np.random.default_rng(0).normal(size=200_000)}, run_id="r1")  # 1.5 MB
    manifest = ship_results(store, tmp_path / "shipped", max_artifact_bytes=1_000_000)
    shipped = Store(tmp_path / "shipped")
    assert shipped.query("SELECT count(*) AS n FROM structures")["n"][0] == 4
    assert np.array_equal(shipped.load_arrays(phonons)["dispersion_thz"], dispersion)  # checked against its SHA
    with duckdb.connect(str(tmp_path / "shipped" / "capml.duckdb"), read_only=True) as con:  # small blocks
        assert con.execute("SELECT block_size FROM pragma_database_size()").fetchone()[0] == 16384
    assert manifest["artifacts"] == 1
    assert sorted(item["why"] for item in manifest["left_out"]) == ["model", "too large"]
    assert json.loads((tmp_path / "shipped" / MANIFEST).read_text())["artifacts"] == 1
    assert {p.name for p in (tmp_path / "shipped").iterdir()} == {"capml.duckdb", "artifacts", MANIFEST}
    assert manifest["relaxation_trajectories"] == 0
    with pytest.raises(InvalidInputError, match="not empty"):
        ship_results(store, tmp_path / "shipped")
    with pytest.raises(InvalidInputError, match="the project itself"):
        ship_results(store, tmp_path / "project")


def test_shipped_with_models_is_a_project_to_continue_and_replaces_only_a_shipped_directory(tmp_path: Path) -> None:
    import json

    from capml_core.errors import InvalidInputError
    from capml_core.stages.shipping import MANIFEST, ship_results

    store = Store(tmp_path / "project")
    (tmp_path / "project" / "models").mkdir(parents=True)
    (tmp_path / "project" / "models" / "mace-a.model").write_bytes(b"m" * 100)
    member = tmp_path / "project" / "gnn" / "ens-a" / "member-0"
    (member / "cheap").mkdir(parents=True)
    (member / "weights.pt").write_bytes(b"w" * 10)
    (member / "cheap" / "weights.pt").write_bytes(b"c" * 10)
    model_row = {"run_id": "r1", "kind": "trained", "sha256": "0" * 64}
    gnn_row = {"ensemble_id": "ens-a", "architecture": "paper", "cheap_level": "gpaw-pbesol", "seed": 1}
    with store.write() as w:
        w.add_structures(_records(2), run_id="r1")
        w.add_rows("mlip_models", [{"model_id": "mace-a", "path": "models/mace-a.model", **model_row}])
        w.add_rows("mlip_models", [{"model_id": "mace-f", "path": "/elsewhere/foundation.model", **model_row}])
        w.add_gnn_model({"model_id": "g0", "ensemble_index": 0, "relpath": "gnn/ens-a/member-0", **gnn_row}, [], [])
    steps = tmp_path / "project" / "static-reference" / "abc-full"
    steps.mkdir(parents=True)
    (steps / "relax.traj").write_bytes(b"t" * 30)
    (steps / "gpaw-pbesol.txt").write_text("the DFT log stays behind")
    target = tmp_path / "shipped"
    first = ship_results(store, target)
    assert first["relaxation_trajectories"] == 1 and (target / "static-reference" / "abc-full" / "relax.traj").is_file()
    assert not (target / "static-reference" / "abc-full" / "gpaw-pbesol.txt").exists()
    assert first["model_files"] == 0 and not (target / "models").exists()
    with pytest.raises(InvalidInputError, match="not empty"):  # replacing is asked for, never assumed
        ship_results(store, target, with_models=True)
    with store.write() as w:
        w.add_structures(_records(4), run_id="r2")
    # an MD run whose band gaps were averaged over frames 2, 4, 6, one DFT check of frame 3: those frames travel
    from ase.build import bulk
    from ase.calculators.emt import EMT

    from capml_core.physics.md import frames_with_positions, read_trajectory, run_md

    md = {"temperature_k": 300.0, "timestep_fs": 2.0, "friction_per_fs": 0.01, "seed": 1, "save_every_steps": 1}
    run_md(bulk("Cu", cubic=True), EMT(), n_steps=10, path=tmp_path / "project" / "md" / "md-a.h5", **md)
    run = {"model_id": "mace-a", "structure_hash": "s", "temperature_k": 300.0, "n_steps": 10, "n_frames": 11}
    with store.write() as w:
        w.add_rows("md_runs", [{"md_id": "md-a", "path": "md/md-a.h5", "complete": True, "status": "ok", **run}])
        w.add_rows("md_runs", [{"md_id": "md-gone", "path": "md/gone.h5", "complete": True, "status": "ok", **run}])
        w.add_rows(
            "gap_snapshots",
            [
                {"md_id": m, "ensemble_id": "e", "frame": f, "time_fs": 2.0 * f, "gap_ev": 1.0}
                for m in ("md-a", "md-gone")
                for f in (2, 4, 6)
            ],
        )
        w.add_rows(
            "gap_dft_frames",
            [{"md_id": "md-a", "ensemble_id": "e", "frame": 3, "structure_hash": "c", "level": "l", "model_gap_ev": 1}],
        )
    manifest = ship_results(store, target, with_models=True, replace=True)
    assert manifest["model_files"] == 3 and manifest["model_bytes"] == 120  # the foundation file outside stays out
    assert manifest["thinned_trajectories"] == 1 and not (target / "md" / "gone.h5").exists()  # a gone one stays gone
    assert frames_with_positions(read_trajectory(target / "md" / "md-a.h5")).tolist() == [2, 3, 4, 6]
    assert (target / "models" / "mace-a.model").read_bytes() == b"m" * 100
    assert (target / "gnn" / "ens-a" / "member-0" / "cheap" / "weights.pt").is_file()
    assert Store(target).query("SELECT count(*) AS n FROM structures")["n"][0] == 4  # the new results
    assert json.loads((target / MANIFEST).read_text())["not_shipped"].startswith("the MD trajectories' frames outside")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["project", "shipped"]  # no staging copy left
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "notes.txt").write_text("mine")
    with pytest.raises(InvalidInputError, match="not a shipped results directory"):
        ship_results(store, tmp_path / "other", replace=True)
    assert (tmp_path / "other" / "notes.txt").read_text() == "mine"
