"""The results store: one DuckDB file per project directory, with a versioned schema.

Tables (tidy; units in column names):

- ``schema_meta``: key/value, ``schema_version``.
- ``runs``: one row per pipeline run (config hash and JSON, code and package versions, status).
- ``stages``: status of each stage of each run.
- ``structures``: keyed by a content hash (:func:`capml_core.system.structures.structure_hash`); composition,
  kind, temperature/amplitude, and the geometry itself (small arrays: numbers, positions, cell).
- ``levels``: reference levels and their settings.
- ``labels``: keyed by (structure hash, level): energy, forces, stress, gap, status and error.
- ``structure_sets``: membership of generated structures in named training sets, with the level each set
  is to be labelled at (schema version 2).
- ``gnn_models``, ``gnn_metrics``, ``gnn_predictions``: trained band-gap models (files under
  ``artifacts/gnn/``), their metrics per stage and split, and every per-structure prediction; ``gnn_trials``
  (hyperparameter search) and ``gnn_learning_curve`` (test MAE vs training-set size) (schema 3).
- ``mlip_models``, ``mlip_metrics``, ``mlip_predictions``, ``mlip_phonons``: MACE models (trained, fine-tuned,
  or a foundation file evaluated as it is), their errors per quantity (energy per atom, forces, stress) and
  split, per-structure predictions (parity data), and phonon validation against the reference level (schema 4).
- ``disorder_scans``, ``disorder_compositions``, ``disorder_arrangements``, ``disorder_relaxations``,
  ``disorder_probabilities``: the disorder scan: per composition the counts (labellings, symmetry classes),
  the chosen arrangements with multiplicities, their MACE relaxations (relaxed structures in ``structures``,
  kind 'relaxed') and configurational probabilities per temperature (schema 5).
- ``md_runs``: Langevin MD runs (trajectory HDF5 files under ``md/``) with their health checks and
  decorrelation time (schema 6).
- ``phonon_harmonic``: harmonic phonons (MACE, phonopy) of each lowest-energy structure: imaginary modes, and an
  artifact with force constants, Γ modes, dispersion and DOS (schema 7).
- ``phonon_anharmonic``: DynaPhoPy's renormalised phonons of each MD run and the dynamic-stability verdict
  that gates the band-gap stage (schema 8), with how far the time-averaged structure sits from the analysed
  one's sites (schema 11).
- ``gap_static``, ``gap_thermal``, ``gap_snapshots``: Eg(0) of each relaxed lowest-energy structure (GNN
  ensemble, and the reference DFT gap where checked), Eg(T) and ΔEg(T) per MD run with uncertainties, and the
  GNN gap of every snapshot used; ``gap_published``: measured and published gaps for comparison;
  ``gap_modes``: ΔEg of frozen Γ-mode distortions at thermal amplitudes, with DFT checks (schema 9).
- ``md_frames``: MD frames stored as structures (kind 'md-frame'): trajectory, frame, time, composition,
  temperature, the MACE model that ran the MD, how the frame was chosen, and whether it is held out (a held-out
  frame is never trained on) (schema 12).
- ``label_claims``: structures being labelled now, by which process (pid, host): a second run on the same
  project skips them; ``runs.pid``/``runs.host`` tell a run whose process has gone ('interrupted') (schema 13).
- ``artifacts``: large arrays (trajectories, force constants) live in files under ``artifacts/``; this table
  points to them (path relative to the project directory, SHA-256, size).
- view ``labelled_structures``: structures joined with labels, without the arrays, for SQL users.

Concurrency. DuckDB lets one process open a file for writing *or* several for reading, never both at once.
So nothing holds the file open: every write is one short transaction on a connection opened and closed
around it, every read a short read-only connection; both wait (with back-off, up to ``lock_timeout_s``)
while another process holds the file. A flow writing for hours and a dashboard reading every few seconds
thus interleave; a reader sees only committed transactions.

All writes are idempotent: rows whose key exists are left as they are (``ON CONFLICT DO NOTHING``), except
a failed label, which a later successful one replaces.
"""

from __future__ import annotations

import hashlib
import io
import logging
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import duckdb
import numpy as np
import pandas as pd
from ase import Atoms

from capml_core.errors import InvalidInputError, NotComputedError, StoreError, StoreLockedError
from capml_core.store.hosts import check_project_dir, process_alive
from capml_core.store.schema import (
    GNN_BASELINE_PREFIX,
    MIGRATIONS,
    PRIMARY_MACE_SQL,
    SCHEMA_VERSION,
    STORE_FILENAME,
)
from capml_core.store.writer import StoreWriter
from capml_core.types import DATASET_KIND_SQL

logger = logging.getLogger(__name__)


#: How a structure was made, for hovers and legends: its kind, then its temperature or displacement amplitude
#: (SQL over ``structures s``), e.g. 'md-frame 300 K', 'imported σ 0.10 Å', 'relaxed'.
STRUCTURE_ORIGIN_SQL = """(s.kind || coalesce(' ' || CAST(round(s.temperature_k) AS INTEGER) || ' K',
    CASE WHEN s.amplitude_a > 0 THEN ' σ ' || printf('%.2f', s.amplitude_a) || ' Å' END, ''))"""


class Store:
    """The DuckDB results store of one project directory.

    Parameters
    ----------
    project_dir
        Directory of the project; the store is ``<project_dir>/capml.duckdb``, artifacts go under
        ``<project_dir>/artifacts/``.
    lock_timeout_s
        How long (s) to wait for another process that holds the file before raising
        :class:`~capml_core.errors.StoreLockedError`.
    """

    def __init__(self, project_dir: str | Path, *, lock_timeout_s: float = 60.0) -> None:
        self.project_dir = Path(project_dir).expanduser().resolve()
        self.path = self.project_dir / STORE_FILENAME
        self.lock_timeout_s = lock_timeout_s
        self._schema_checked = False
        self._batch: duckdb.DuckDBPyConnection | None = None

    def __repr__(self) -> str:
        return f"Store({str(self.project_dir)!r})"

    @classmethod
    def from_file(cls, path: str | Path, *, lock_timeout_s: float = 60.0) -> Store:
        """The store whose DuckDB file is ``path`` (its directory is the project directory)."""
        path = Path(path).expanduser().resolve()
        if path.name != STORE_FILENAME:
            raise StoreError(f"{path}: a capml store file is named {STORE_FILENAME}")
        return cls(path.parent, lock_timeout_s=lock_timeout_s)

    # ------------------------------------------------------------------------------- connections
    def _connect(self, *, read_only: bool, config: dict[str, Any] | None = None) -> duckdb.DuckDBPyConnection:
        deadline = time.monotonic() + self.lock_timeout_s
        delay = 0.01
        while True:
            try:
                return duckdb.connect(str(self.path), read_only=read_only, config=config or {})
            except duckdb.IOException as err:
                text = str(err).lower()
                if "lock" not in text and "conflicting" not in text:
                    raise StoreError(f"{self.path}: cannot open the store: {err}") from err
                if time.monotonic() > deadline:
                    raise StoreLockedError(
                        f"{self.path}: another process held the store for more than {self.lock_timeout_s:.0f} s "
                        f"({err}). Close other writers (a DuckDB shell opened read-write, a stuck flow) and retry."
                    ) from err
                time.sleep(delay)
                delay = min(delay * 2.0, 0.25)

    def initialise(self) -> None:
        """Create the store (or migrate it to :data:`SCHEMA_VERSION`); safe to call again."""
        check_project_dir(self.project_dir)
        try:
            self.project_dir.mkdir(parents=True, exist_ok=True)
        except OSError as err:
            raise StoreError(f"project directory {self.project_dir}: cannot be created: {err.strerror or err}") from err
        con = self._connect(read_only=False)
        try:
            version = self._schema_version(con)
            if version > SCHEMA_VERSION:
                raise StoreError(
                    f"{self.path}: schema version {version} is newer than this capml's ({SCHEMA_VERSION}); "
                    "upgrade capml to open it"
                )
            for target in range(version + 1, SCHEMA_VERSION + 1):
                con.begin()
                try:
                    for statement in MIGRATIONS[target]:
                        con.execute(statement)
                    con.execute(
                        "INSERT INTO schema_meta VALUES ('schema_version', ?) "
                        "ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                        [str(target)],
                    )
                    con.commit()
                except Exception:
                    con.rollback()
                    raise
                logger.info("store %s: schema at version %d", self.path, target)
        finally:
            con.close()

    @staticmethod
    def _schema_version(con: duckdb.DuckDBPyConnection) -> int:
        has_meta = con.execute(
            "SELECT count(*) FROM information_schema.tables WHERE table_name = 'schema_meta'"
        ).fetchone()[0]
        if not has_meta:
            return 0
        row = con.execute("SELECT value FROM schema_meta WHERE key = 'schema_version'").fetchone()
        return int(row[0]) if row else 0

    def exists(self) -> bool:
        """Whether the store file has been created."""
        return self.path.is_file()

    @contextmanager
    def write(self) -> Iterator[StoreWriter]:
        """One write transaction: committed when the block ends, rolled back (nothing written) on error."""
        if not self._schema_checked:
            self.initialise()
            self._schema_checked = True
        con = self._connect(read_only=False)
        try:
            con.begin()
            try:
                yield StoreWriter(con, self.project_dir)
                con.commit()
            except BaseException:
                con.rollback()
                raise
        finally:
            con.close()

    @contextmanager
    def read(self, *, sandboxed: bool = False) -> Iterator[duckdb.DuckDBPyConnection]:
        """A short read-only connection (waits while a writer holds the file).

        ``sandboxed``: for users' SQL (:mod:`capml_core.store.sql`): no file access, no extensions, settings locked.
        """
        if self._batch is not None and not sandboxed:  # inside batch(): its connection, already checked
            yield self._batch
            return
        if not self.exists():
            raise NotComputedError(f"{self.path}: no store yet; run the pipeline first (capml run CONFIG)")
        sandbox = {"enable_external_access": False, "lock_configuration": True} if sandboxed else None
        con = self._connect(read_only=True, config=sandbox)
        try:
            version = self._schema_version(con)
            if version != SCHEMA_VERSION:
                raise StoreError(
                    f"{self.path}: schema version {version}, this capml reads version {SCHEMA_VERSION}; "
                    + ("upgrade capml" if version > SCHEMA_VERSION else "run any capml write (capml run) to migrate")
                )
            yield con
        finally:
            con.close()

    @contextmanager
    def batch(self) -> Iterator[Store]:
        """Reads inside the block share one read-only connection (a report's dozen queries: one connect).

        The connection is held for the block only: keep it short, a writer waits for it.
        """
        if self._batch is not None:
            yield self
            return
        with self.read() as con:
            self._batch = con
            try:
                yield self
            finally:
                self._batch = None

    def query(self, sql: str, params: Sequence[Any] | None = None) -> pd.DataFrame:
        """Run a read-only SQL query and return a DataFrame."""
        with self.read() as con:
            return con.execute(sql, params or []).df()

    def export_tables(self, directory: str | Path, *, file_format: str = "parquet") -> Path:
        """Every table of the store as one file per table (DuckDB's EXPORT DATABASE) in a new ``directory``.

        ``file_format``: 'parquet' or 'csv'. The directory also gets ``schema.sql`` and ``load.sql``, with which
        DuckDB's IMPORT DATABASE rebuilds the store. Nothing is written when ``directory`` exists and is not empty.
        """
        if file_format not in ("parquet", "csv"):
            raise InvalidInputError(f"export format {file_format!r}: allowed are 'parquet' and 'csv'")
        target = Path(directory)
        if target.exists() and any(target.iterdir()):
            raise InvalidInputError(f"{target}: exists and is not empty; give a new directory for the export")
        target.mkdir(parents=True, exist_ok=True)
        with self.read() as con:
            con.execute(f"EXPORT DATABASE '{_sql_path(target)}' (FORMAT {file_format})")
        return target

    def export_archive(self, *, file_format: str = "parquet") -> bytes:
        """:meth:`export_tables` as the bytes of a zip archive (one file per table, schema.sql, load.sql)."""
        import tempfile
        import zipfile

        with tempfile.TemporaryDirectory(prefix="capml-export-") as scratch:
            folder = self.export_tables(Path(scratch) / "tables", file_format=file_format)
            buffer = io.BytesIO()
            with zipfile.ZipFile(buffer, "w", compression=zipfile.ZIP_DEFLATED) as archive:
                for file in sorted(folder.iterdir()):
                    archive.write(file, arcname=file.name)
        return buffer.getvalue()

    # ---------------------------------------------------------------------------------- reads
    def runs(self) -> pd.DataFrame:
        """All runs, newest first; a 'running' run whose process is gone reads 'interrupted'."""
        frame = self.query(
            "SELECT run_id, name, status, started_at, finished_at, config_hash, code_version, message, pid, host "
            "FROM runs ORDER BY started_at DESC"
        )
        alive = [process_alive(pid, host) for pid, host in zip(frame["pid"], frame["host"], strict=True)]
        gone = (frame["status"] == "running") & ~pd.Series(alive, index=frame.index, dtype=bool)
        frame.loc[gone, "status"] = "interrupted"
        frame.loc[gone, "message"] = "interrupted: its process ended without finishing the run (killed?)"
        return frame.drop(columns=["pid", "host"])

    def stages(self, run_id: str | None = None) -> pd.DataFrame:
        """Stage status of one run (default: the latest run); a running stage of an interrupted run reads so."""
        if run_id is None:
            frame = self.query(
                "SELECT stage, status, started_at, finished_at, message, run_id FROM stages WHERE run_id = "
                "(SELECT run_id FROM runs ORDER BY started_at DESC LIMIT 1) ORDER BY started_at"
            )
        else:
            frame = self.query(
                "SELECT stage, status, started_at, finished_at, message, run_id FROM stages WHERE run_id = ? "
                "ORDER BY started_at",
                [run_id],
            )
        runs = self.runs().set_index("run_id")["status"]
        interrupted = frame["run_id"].map(runs).eq("interrupted") & frame["status"].eq("running")
        frame.loc[interrupted, "status"] = "interrupted"
        return frame

    def label_counts(self) -> pd.DataFrame:
        """Labelled structures per level and status, with which labels they carry."""
        return self.query(
            """SELECT level, status, count(*) AS n_structures, count(energy_ev) AS n_energy,
                      count(forces_ev_per_a) AS n_forces, count(stress_ev_per_a3) AS n_stress,
                      count(gap_ev) AS n_gap
               FROM labels GROUP BY level, status ORDER BY level, status"""
        )

    def coverage(self) -> pd.DataFrame:
        """Dataset structures per composition x, kind, condition (temperature K or amplitude Å) and level.

        Structures the later stages derive (relaxed, frozen-mode) are not part of the dataset and are left out.
        """
        return self.query(
            f"""SELECT s.composition_x, s.kind, s.temperature_k, s.amplitude_a,
                      coalesce(l.level, '(unlabelled)') AS level, count(*) AS n_structures
               FROM structures s LEFT JOIN labels l ON l.structure_hash = s.structure_hash AND l.status = 'ok'
               WHERE {DATASET_KIND_SQL} GROUP BY ALL ORDER BY ALL"""
        )

    def set_coverage(self) -> pd.DataFrame:
        """Per structure set, composition and condition: members, and how many are labelled ok / failed."""
        return self.query(
            """SELECT m.set_name, m.level, s.composition_x, s.kind, s.temperature_k, s.amplitude_a,
                      count(*) AS n_structures, count(*) FILTER (l.status = 'ok') AS n_ok,
                      count(*) FILTER (l.status = 'failed') AS n_failed
               FROM structure_sets m JOIN structures s USING (structure_hash)
               LEFT JOIN labels l ON l.structure_hash = m.structure_hash AND l.level = m.level
               GROUP BY ALL ORDER BY ALL"""
        )

    def failed_labels(self) -> pd.DataFrame:
        """Failed calculations with their errors, newest first."""
        return self.query(
            """SELECT l.level, l.structure_hash, s.composition_x, s.kind, s.temperature_k, s.amplitude_a, l.error,
                      l.created_at
               FROM labels l JOIN structures s USING (structure_hash) WHERE l.status = 'failed'
               ORDER BY l.created_at DESC"""
        )

    def latest_gnn_ensemble_id(self) -> str | None:
        """Id of the newest trained GNN ensemble, baselines excluded; None when there is none."""
        latest = self.query(
            f"""SELECT ensemble_id FROM gnn_models WHERE NOT starts_with(ensemble_id, '{GNN_BASELINE_PREFIX}')
               ORDER BY created_at DESC LIMIT 1"""
        )
        return None if latest.empty else str(latest["ensemble_id"][0])

    def gnn_results(self, ensemble_id: str | None = None) -> tuple[pd.DataFrame, pd.DataFrame]:
        """Metrics and per-structure predictions of one GNN ensemble (default: the latest trained, not a baseline)."""
        ensemble_id = ensemble_id or self.latest_gnn_ensemble_id()
        if ensemble_id is None:
            return pd.DataFrame(), pd.DataFrame()
        metrics = self.query(
            """SELECT g.ensemble_index, m.* FROM gnn_metrics m JOIN gnn_models g USING (model_id)
               WHERE g.ensemble_id = ? ORDER BY m.stage, m.split, g.ensemble_index""",
            [ensemble_id],
        )
        predictions = self.query(
            f"""SELECT p.stage, p.split, p.level, p.structure_hash, p.reference_ev,
                      avg(p.predicted_ev) AS predicted_ev, coalesce(stddev_pop(p.predicted_ev), 0) AS spread_ev,
                      any_value(s.composition_x) AS composition_x, any_value({STRUCTURE_ORIGIN_SQL}) AS origin
               FROM gnn_predictions p JOIN gnn_models g USING (model_id) LEFT JOIN structures s USING (structure_hash)
               WHERE g.ensemble_id = ?
               GROUP BY p.stage, p.split, p.level, p.structure_hash, p.reference_ev ORDER BY ALL""",
            [ensemble_id],
        )
        return metrics, predictions

    def gnn_baseline_comparison(self) -> pd.DataFrame:
        """Test metrics of the latest ensemble and of its baseline (``gnn.baseline_architecture``) side by side.

        One row per (ensemble, stage): ``role`` ('search best' or 'baseline'), architecture, n, and the MAE, RMSE
        (eV) and R² of the ensemble-mean predictions on the test split (the same structures for both). Empty
        when the latest ensemble has no baseline.
        """
        ensemble_id = self.latest_gnn_ensemble_id()
        if ensemble_id is None:
            return pd.DataFrame()
        baseline_id = GNN_BASELINE_PREFIX + ensemble_id.removeprefix("ensemble-")
        return self.query(
            """WITH mean AS (
                 SELECT g.ensemble_id, any_value(g.architecture) AS architecture, p.stage, p.structure_hash,
                        any_value(p.reference_ev) AS reference_ev, avg(p.predicted_ev) AS predicted_ev
                 FROM gnn_predictions p JOIN gnn_models g USING (model_id)
                 WHERE g.ensemble_id IN (?, ?) AND p.split = 'test' GROUP BY g.ensemble_id, p.stage, p.structure_hash)
               SELECT CASE WHEN ensemble_id = ? THEN 'search best' ELSE 'baseline' END AS role, ensemble_id,
                      any_value(architecture) AS architecture, stage, count(*) AS n,
                      avg(abs(predicted_ev - reference_ev)) AS mae_ev,
                      sqrt(avg((predicted_ev - reference_ev) ^ 2)) AS rmse_ev,
                      1 - sum((predicted_ev - reference_ev) ^ 2) / nullif(regr_sxx(reference_ev, reference_ev), 0) AS r2
               FROM mean GROUP BY ensemble_id, stage
               HAVING (SELECT count(DISTINCT ensemble_id) FROM mean) = 2
               ORDER BY stage, role DESC""",
            [ensemble_id, baseline_id, ensemble_id],
        )

    def gnn_search_and_curve(self) -> tuple[pd.DataFrame, pd.DataFrame]:
        """Trials of the latest hyperparameter search (by rank) and the latest learning curve."""
        trials = self.query(
            """SELECT rank, architecture, learning_rate, batch_size, valid_mae_ev, valid_rmse_ev, epochs_run, level
               FROM gnn_trials WHERE search_id = (SELECT search_id FROM gnn_trials ORDER BY created_at DESC LIMIT 1)
               ORDER BY rank"""
        )
        curve = self.query(
            """SELECT n_train, test_mae_ev, test_rmse_ev, test_r2, architecture, level FROM gnn_learning_curve
               WHERE curve_id = (SELECT curve_id FROM gnn_learning_curve ORDER BY created_at DESC LIMIT 1)
               ORDER BY n_train"""
        )
        return trials, curve

    def active_learning_results(self) -> pd.DataFrame:
        """Every frame active learning selected, with its round, the model that ran the MD and its DFT label."""
        return self.query(
            """SELECT f.round, f.model_id, f.composition_x, f.temperature_k, f.md_id, f.frame, f.time_fs, f.pair,
                      f.distance_a, f.training_distance_a, f.distance_a / f.training_distance_a AS ratio,
                      f.structure_hash, l.status AS label_status, l.energy_ev / s.n_atoms AS energy_ev_per_atom,
                      l.gap_ev
               FROM active_learning_frames f JOIN structures s USING (structure_hash)
               LEFT JOIN labels l ON l.structure_hash = f.structure_hash AND l.level = f.level
               ORDER BY f.round, f.composition_x, f.temperature_k, f.frame"""
        )

    def mlip_results(self, model_id: str | None = None) -> dict[str, pd.DataFrame]:
        """The latest trained MACE model (or ``model_id``) and its foundation, as four frames.

        ``models``, ``metrics``, ``predictions`` (per structure, arrays as lists) and ``phonons``; empty frames
        when no model is trained.
        """
        if model_id is None:
            latest = self.query(
                f"SELECT model_id FROM mlip_models WHERE {PRIMARY_MACE_SQL} ORDER BY created_at DESC LIMIT 1"
            )
            if latest.empty:
                return {name: pd.DataFrame() for name in ("models", "metrics", "predictions", "phonons")}
            model_id = latest["model_id"][0]
        models = self.query(
            """SELECT * FROM mlip_models WHERE model_id = ?
               OR model_id = (SELECT foundation_model_id FROM mlip_models WHERE model_id = ?)
               ORDER BY kind = 'foundation' DESC""",
            [model_id, model_id],
        )
        ids = models["model_id"].tolist()
        return {
            "models": models,
            "metrics": self.query(
                "SELECT * FROM mlip_metrics WHERE model_id IN (SELECT unnest(?)) ORDER BY quantity, split, model_id",
                [ids],
            ),
            "predictions": self.query(
                f"""SELECT p.*, s.composition_x, {STRUCTURE_ORIGIN_SQL} AS origin
                    FROM mlip_predictions p LEFT JOIN structures s USING (structure_hash)
                    WHERE p.model_id IN (SELECT unnest(?)) ORDER BY p.split, p.structure_hash""",
                [ids],
            ),
            "phonons": self.query("SELECT * FROM mlip_phonons WHERE model_id = ? ORDER BY end_member", [model_id]),
        }

    def disorder_results(self, scan_id: str | None = None) -> dict[str, pd.DataFrame]:
        """The latest disorder scan (or ``scan_id``) as three frames; empty frames when there is no scan.

        ``compositions`` (counts), ``relaxations`` (ranked per composition, with multiplicities) and
        ``probabilities``.
        """
        if scan_id is None:
            latest = self.query("SELECT scan_id FROM disorder_scans ORDER BY created_at DESC LIMIT 1")
            if latest.empty:
                return {name: pd.DataFrame() for name in ("compositions", "relaxations", "probabilities")}
            scan_id = latest["scan_id"][0]
        return {
            "compositions": self.query(
                "SELECT * FROM disorder_compositions WHERE scan_id = ? ORDER BY composition_x", [scan_id]
            ),
            "relaxations": self.query(
                """SELECT r.composition_x, r.arrangement, a.multiplicity, r.energy_ev_per_atom, r.converged, r.steps,
                          r.volume_a3, r.structure_hash,
                          rank() OVER (PARTITION BY r.composition_x ORDER BY r.energy_ev_per_atom) AS rank
                   FROM disorder_relaxations r JOIN disorder_arrangements a USING (scan_id, composition_x, arrangement)
                   WHERE r.scan_id = ? ORDER BY r.composition_x, rank""",
                [scan_id],
            ),
            "probabilities": self.query(
                "SELECT * FROM disorder_probabilities WHERE scan_id = ? ORDER BY composition_x, temperature_k",
                [scan_id],
            ),
        }

    def phonon_results(self) -> dict[str, pd.DataFrame]:
        """Harmonic phonons, MD runs and stability verdicts of the latest MACE model's structures."""
        empty = {name: pd.DataFrame() for name in ("harmonic", "md", "verdicts")}
        latest = self.query(
            f"SELECT model_id FROM mlip_models WHERE {PRIMARY_MACE_SQL} ORDER BY created_at DESC LIMIT 1"
        )
        if latest.empty:
            return empty
        model_id = latest["model_id"][0]
        return {
            "harmonic": self.query(
                "SELECT * FROM phonon_harmonic WHERE model_id = ? ORDER BY composition_x, created_at", [model_id]
            ),
            "md": self.query(
                "SELECT * EXCLUDE (settings_json) FROM md_runs WHERE model_id = ? "
                "ORDER BY composition_x, temperature_k",
                [model_id],
            ),
            "verdicts": self.query(
                """SELECT a.* FROM phonon_anharmonic a JOIN md_runs m USING (md_id) WHERE m.model_id = ?
                   ORDER BY a.composition_x, a.temperature_k""",
                [model_id],
            ),
        }

    def bandgap_results(self) -> dict[str, pd.DataFrame]:
        """Eg(0), Eg(T), snapshot gaps and DFT checks of the newest gap ensemble used, and the published gaps.

        One row per composition (static: the cubic structure; lowest: the lowest quenched minimum, where found)
        and per composition and temperature (thermal): the newest if a composition was computed for several
        structures (several disorder scans).
        """
        newest = self.query("SELECT ensemble_id FROM gap_static ORDER BY created_at DESC LIMIT 1")
        published = self.query(
            "SELECT * EXCLUDE (file_sha, run_id) FROM gap_published ORDER BY kind, source, composition_x, temperature_k"
        )
        if newest.empty:
            return {
                "static": pd.DataFrame(),
                "lowest": pd.DataFrame(),
                "checks": pd.DataFrame(),
                "estimates": pd.DataFrame(),
                "thermal": pd.DataFrame(),
                "snapshots": pd.DataFrame(),
                "published": published,
            }
        ensemble_id = newest["ensemble_id"][0]
        static, lowest = (
            self.query(
                """SELECT * EXCLUDE (model_gaps_ev) FROM gap_static
                   WHERE ensemble_id = ? AND coalesce(structure_kind, 'cubic') = ?
                   QUALIFY row_number() OVER (PARTITION BY composition_x ORDER BY created_at DESC) = 1
                   ORDER BY composition_x""",
                [ensemble_id, kind],
            )
            for kind in ("cubic", "lowest")
        )
        thermal = self.query(
            """SELECT * FROM gap_thermal WHERE ensemble_id = ? AND structure_hash IN (SELECT unnest(?))
               QUALIFY row_number() OVER (PARTITION BY composition_x, temperature_k ORDER BY created_at DESC) = 1
               ORDER BY composition_x, temperature_k""",
            [ensemble_id, static["structure_hash"].tolist()],
        )
        snapshots = self.query(
            """SELECT t.composition_x, t.temperature_k, s.frame, s.time_fs, s.gap_ev, s.gap_std_ev
               FROM gap_snapshots s JOIN gap_thermal t USING (md_id, ensemble_id)
               WHERE s.ensemble_id = ? AND s.md_id IN (SELECT unnest(?)) ORDER BY 1, 2, 3""",
            [ensemble_id, thermal["md_id"].tolist()],
        )
        checks = self.query(
            """SELECT * FROM gap_dft_checks WHERE ensemble_id = ? AND md_id IN (SELECT unnest(?))
               ORDER BY composition_x, temperature_k""",
            [ensemble_id, thermal["md_id"].tolist()],
        )
        estimates = self.query(
            "SELECT * EXCLUDE (run_id) FROM gap_estimates WHERE ensemble_id = ? ORDER BY composition_x, temperature_k",
            [ensemble_id],
        )
        return {
            "static": static,
            "lowest": lowest,
            "thermal": thermal,
            "snapshots": snapshots,
            "published": published,
            "checks": checks,
            "estimates": estimates,
        }

    def mode_group_results(self) -> pd.DataFrame:
        """Degenerate subspaces and frequency bands (``gap_mode_groups``) of the newest ensemble that has them."""
        return self.query(
            """SELECT * EXCLUDE (run_id, settings_key) FROM gap_mode_groups
               WHERE ensemble_id = (SELECT ensemble_id FROM gap_mode_groups ORDER BY created_at DESC LIMIT 1)
               ORDER BY composition_x, temperature_k, source, kind, frequency_lo_thz"""
        )

    def mode_results(self) -> pd.DataFrame:
        """ΔEg of the frozen Γ modes from the newest GNN ensemble used, with the harmonic artifact of each structure."""
        return self.query(
            """WITH newest AS (SELECT ensemble_id FROM gap_modes ORDER BY created_at DESC LIMIT 1)
               SELECT g.*, h.artifact_id FROM gap_modes g
               LEFT JOIN (SELECT structure_hash, artifact_id FROM phonon_harmonic
                          QUALIFY row_number() OVER (PARTITION BY structure_hash ORDER BY created_at DESC) = 1) h
                 USING (structure_hash)
               WHERE g.ensemble_id = (SELECT ensemble_id FROM newest)
               ORDER BY g.composition_x, g.temperature_k, g.mode"""
        )

    def gaps(self, level: str | None = None) -> pd.DataFrame:
        """Dataset band gaps (eV) with composition, per level (all levels by default)."""
        sql = (
            "SELECT l.level, s.structure_hash, s.composition_x, s.kind, s.temperature_k, s.amplitude_a, l.gap_ev "
            "FROM labels l JOIN structures s USING (structure_hash) WHERE l.status = 'ok' AND l.gap_ev IS NOT NULL "
            f"AND {DATASET_KIND_SQL}"
        )
        if level is None:
            return self.query(sql + " ORDER BY l.level, s.composition_x")
        return self.query(sql + " AND l.level = ? ORDER BY s.composition_x", [level])

    def pending_labels(self, level: str, *, set_name: str | None = None, include_failed: bool = False) -> list[str]:
        """Hashes of set members to be labelled at ``level`` that have no label there yet, in set order.

        Parameters
        ----------
        level
            The level.
        set_name
            Only this set (default: every set whose level is ``level``).
        include_failed
            Also structures whose calculation failed before (otherwise a failure is not retried).
        """
        done_status = "('ok')" if include_failed else "('ok', 'failed')"
        sql = f"""SELECT m.structure_hash FROM structure_sets m
                  WHERE m.level = ? AND (? IS NULL OR m.set_name = ?)
                    AND NOT EXISTS (SELECT 1 FROM labels l WHERE l.structure_hash = m.structure_hash
                                    AND l.level = m.level AND l.status IN {done_status})
                  ORDER BY m.set_name, m.position"""
        return list(dict.fromkeys(self.query(sql, [level, set_name, set_name])["structure_hash"].tolist()))

    def labelled_gaps(self, level: str) -> pd.DataFrame:
        """Dataset structures (no derived kinds) with an 'ok' gap at ``level``: hash, composition, kind, gap (eV)."""
        return self.query(
            f"""SELECT l.structure_hash, s.composition_x, s.kind, l.gap_ev FROM labels l
               JOIN structures s USING (structure_hash)
               WHERE l.level = ? AND l.status = 'ok' AND l.gap_ev IS NOT NULL AND {DATASET_KIND_SQL}
               ORDER BY l.structure_hash""",
            [level],
        )

    def load_atoms(self, structure_hash: str) -> Atoms:
        """The stored structure with this hash."""
        found = self.load_structures([structure_hash])
        if structure_hash not in found:
            raise NotComputedError(f"{self.path}: no structure with hash {structure_hash}")
        return found[structure_hash]

    def load_structures(self, structure_hashes: Sequence[str]) -> dict[str, Atoms]:
        """Stored structures by hash (hashes not in the store are absent from the result)."""
        with self.read() as con:
            rows = con.execute(
                "SELECT structure_hash, numbers, positions_a, cell_a, pbc FROM structures "
                "WHERE structure_hash IN (SELECT unnest(?))",
                [list(structure_hashes)],
            ).fetchall()
        return {
            h: Atoms(numbers=numbers, positions=np.reshape(pos, (-1, 3)), cell=np.reshape(cell, (3, 3)), pbc=pbc)
            for h, numbers, pos, cell, pbc in rows
        }

    def load_arrays(self, artifact_id: str) -> dict[str, np.ndarray]:
        """The arrays of a stored artifact (checked against its SHA-256)."""
        with self.read() as con:
            row = con.execute("SELECT relpath, sha256 FROM artifacts WHERE artifact_id = ?", [artifact_id]).fetchone()
        if row is None:
            raise NotComputedError(f"{self.path}: no artifact {artifact_id}")
        path = self.project_dir / row[0]
        payload = path.read_bytes()
        if hashlib.sha256(payload).hexdigest() != row[1]:
            raise StoreError(f"{path}: content does not match the SHA-256 recorded for artifact {artifact_id}")
        with np.load(io.BytesIO(payload)) as data:
            return {k: data[k] for k in data.files}


def _sql_path(path: Path) -> str:
    """A path as a SQL string literal's content (single quotes doubled)."""
    return str(path.resolve()).replace("'", "''")
