"""The results store: one DuckDB file per project directory, with a versioned schema.

Tables (tidy; units in column names):

- ``schema_meta``: key/value, ``schema_version``.
- ``runs``: one row per pipeline run (config hash and JSON, code and package versions, status).
- ``stages``: status of each stage of each run.
- ``structures``: keyed by a content hash (:func:`capml_core.structures.structure_hash`); composition,
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
import json
import logging
import os
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import duckdb
import numpy as np
import pandas as pd
from ase import Atoms

from capml_core.errors import NotComputedError, StoreError, StoreLockedError
from capml_core.types import DATASET_KIND_SQL, LabelStatus, StageStatus, StructureKind

logger = logging.getLogger(__name__)

STORE_FILENAME = "capml.duckdb"
ARTIFACTS_DIRNAME = "artifacts"
#: Version of the schema this code writes. Bump it and append a migration to change the schema.
SCHEMA_VERSION = 13
#: Ensemble ids of GNN baselines (``gnn.baseline_architecture``) start with this: comparisons, never the model
#: later stages use.
GNN_BASELINE_PREFIX = "baseline-"

_SCHEMA_V1 = [
    "CREATE TABLE schema_meta (key VARCHAR PRIMARY KEY, value VARCHAR NOT NULL)",
    """CREATE TABLE runs (
        run_id VARCHAR PRIMARY KEY, name VARCHAR NOT NULL, config_path VARCHAR, config_hash VARCHAR NOT NULL,
        config_json VARCHAR, code_version VARCHAR NOT NULL, packages_json VARCHAR, status VARCHAR NOT NULL,
        started_at TIMESTAMP NOT NULL, finished_at TIMESTAMP, message VARCHAR)""",
    """CREATE TABLE stages (
        run_id VARCHAR NOT NULL, stage VARCHAR NOT NULL, status VARCHAR NOT NULL, started_at TIMESTAMP,
        finished_at TIMESTAMP, message VARCHAR, PRIMARY KEY (run_id, stage))""",
    """CREATE TABLE structures (
        structure_hash VARCHAR PRIMARY KEY, formula VARCHAR NOT NULL, n_atoms INTEGER NOT NULL,
        composition_x DOUBLE, kind VARCHAR NOT NULL, temperature_k DOUBLE, amplitude_a DOUBLE, seed BIGINT,
        source VARCHAR, run_id VARCHAR, numbers INTEGER[] NOT NULL, positions_a DOUBLE[] NOT NULL,
        cell_a DOUBLE[] NOT NULL, pbc BOOLEAN[] NOT NULL, created_at TIMESTAMP NOT NULL)""",
    """CREATE TABLE levels (
        level VARCHAR PRIMARY KEY, backend VARCHAR NOT NULL, settings_json VARCHAR, created_at TIMESTAMP NOT NULL)""",
    """CREATE TABLE labels (
        structure_hash VARCHAR NOT NULL, level VARCHAR NOT NULL, status VARCHAR NOT NULL, energy_ev DOUBLE,
        forces_ev_per_a DOUBLE[], stress_ev_per_a3 DOUBLE[], gap_ev DOUBLE, extras_json VARCHAR, error VARCHAR,
        wall_time_s DOUBLE, source VARCHAR, run_id VARCHAR, created_at TIMESTAMP NOT NULL,
        PRIMARY KEY (structure_hash, level))""",
    """CREATE TABLE artifacts (
        artifact_id VARCHAR PRIMARY KEY, run_id VARCHAR, kind VARCHAR NOT NULL, relpath VARCHAR NOT NULL,
        sha256 VARCHAR NOT NULL, n_bytes BIGINT NOT NULL, meta_json VARCHAR, created_at TIMESTAMP NOT NULL)""",
    """CREATE VIEW labelled_structures AS
        SELECT s.structure_hash, s.formula, s.n_atoms, s.composition_x, s.kind, s.temperature_k, s.amplitude_a,
               l.level, l.status, l.energy_ev, l.energy_ev / s.n_atoms AS energy_ev_per_atom, l.gap_ev, l.source
        FROM structures s JOIN labels l USING (structure_hash)""",
]

_SCHEMA_V2 = [
    """CREATE TABLE structure_sets (
        set_name VARCHAR NOT NULL, structure_hash VARCHAR NOT NULL, level VARCHAR NOT NULL, position INTEGER,
        PRIMARY KEY (set_name, structure_hash))""",
]

_SCHEMA_V3 = [
    """CREATE TABLE gnn_models (
        model_id VARCHAR PRIMARY KEY, ensemble_id VARCHAR NOT NULL, run_id VARCHAR,
        architecture VARCHAR NOT NULL, cheap_level VARCHAR NOT NULL,
        high_level VARCHAR, ensemble_index INTEGER NOT NULL, seed BIGINT NOT NULL, relpath VARCHAR NOT NULL,
        settings_json VARCHAR, created_at TIMESTAMP NOT NULL)""",
    """CREATE TABLE gnn_metrics (
        model_id VARCHAR NOT NULL, stage VARCHAR NOT NULL, split VARCHAR NOT NULL, n INTEGER NOT NULL, r2 DOUBLE,
        mae_ev DOUBLE, rmse_ev DOUBLE, max_error_ev DOUBLE, PRIMARY KEY (model_id, stage, split))""",
    """CREATE TABLE gnn_predictions (
        model_id VARCHAR NOT NULL, stage VARCHAR NOT NULL, structure_hash VARCHAR NOT NULL, level VARCHAR NOT NULL,
        split VARCHAR NOT NULL, reference_ev DOUBLE NOT NULL, predicted_ev DOUBLE NOT NULL,
        PRIMARY KEY (model_id, stage, structure_hash))""",
]

_SCHEMA_V3 += [
    """CREATE TABLE gnn_trials (
        search_id VARCHAR NOT NULL, trial INTEGER NOT NULL, architecture VARCHAR NOT NULL, learning_rate DOUBLE,
        batch_size INTEGER, level VARCHAR NOT NULL, valid_mae_ev DOUBLE, valid_rmse_ev DOUBLE, epochs_run INTEGER,
        rank INTEGER, created_at TIMESTAMP NOT NULL, PRIMARY KEY (search_id, trial))""",
    """CREATE TABLE gnn_learning_curve (
        curve_id VARCHAR NOT NULL, level VARCHAR NOT NULL, architecture VARCHAR NOT NULL, n_train INTEGER NOT NULL,
        test_mae_ev DOUBLE, test_rmse_ev DOUBLE, test_r2 DOUBLE, created_at TIMESTAMP NOT NULL,
        PRIMARY KEY (curve_id, n_train))""",
]

_SCHEMA_V4 = [
    """CREATE TABLE mlip_models (
        model_id VARCHAR PRIMARY KEY, run_id VARCHAR, kind VARCHAR NOT NULL, level VARCHAR,
        foundation_model_id VARCHAR, path VARCHAR NOT NULL, sha256 VARCHAR NOT NULL, r_max_a DOUBLE,
        channels INTEGER, max_l INTEGER, correlation INTEGER, n_train INTEGER, n_valid INTEGER, n_test INTEGER,
        epochs INTEGER, train_seconds DOUBLE, settings_json VARCHAR, created_at TIMESTAMP NOT NULL)""",
    """CREATE TABLE mlip_metrics (
        model_id VARCHAR NOT NULL, evaluated_on VARCHAR NOT NULL, quantity VARCHAR NOT NULL, split VARCHAR NOT NULL,
        unit VARCHAR NOT NULL, n INTEGER NOT NULL, r2 DOUBLE, mae DOUBLE, rmse DOUBLE, max_error DOUBLE,
        created_at TIMESTAMP NOT NULL, PRIMARY KEY (model_id, evaluated_on, quantity, split))""",
    """CREATE TABLE mlip_predictions (
        model_id VARCHAR NOT NULL, evaluated_on VARCHAR NOT NULL, structure_hash VARCHAR NOT NULL,
        level VARCHAR NOT NULL, split VARCHAR NOT NULL, n_atoms INTEGER NOT NULL,
        energy_reference_ev_per_atom DOUBLE, energy_predicted_ev_per_atom DOUBLE,
        forces_reference_ev_per_a DOUBLE[], forces_predicted_ev_per_a DOUBLE[],
        stress_reference_ev_per_a3 DOUBLE[], stress_predicted_ev_per_a3 DOUBLE[],
        created_at TIMESTAMP NOT NULL, PRIMARY KEY (model_id, evaluated_on, structure_hash))""",
    """CREATE TABLE mlip_phonons (
        model_id VARCHAR NOT NULL, end_member VARCHAR NOT NULL, reference VARCHAR NOT NULL, n_modes INTEGER NOT NULL,
        mae_thz DOUBLE, rmse_thz DOUBLE, r2 DOUBLE, max_error_thz DOUBLE, n_imaginary_reference INTEGER,
        n_imaginary_model INTEGER, min_frequency_reference_thz DOUBLE, min_frequency_model_thz DOUBLE,
        artifact_id VARCHAR, created_at TIMESTAMP NOT NULL, PRIMARY KEY (model_id, end_member))""",
]

_SCHEMA_V5 = [
    """CREATE TABLE disorder_scans (
        scan_id VARCHAR PRIMARY KEY, run_id VARCHAR, model_id VARCHAR, relax VARCHAR NOT NULL, n_sites INTEGER NOT NULL,
        n_permutations INTEGER NOT NULL, settings_json VARCHAR, created_at TIMESTAMP NOT NULL)""",
    """CREATE TABLE disorder_compositions (
        scan_id VARCHAR NOT NULL, composition_x DOUBLE NOT NULL, n_first INTEGER NOT NULL,
        n_labellings DOUBLE NOT NULL, n_inequivalent DOUBLE NOT NULL, selection VARCHAR NOT NULL,
        n_selected INTEGER NOT NULL, created_at TIMESTAMP NOT NULL, PRIMARY KEY (scan_id, composition_x))""",
    """CREATE TABLE disorder_arrangements (
        scan_id VARCHAR NOT NULL, composition_x DOUBLE NOT NULL, arrangement VARCHAR NOT NULL,
        multiplicity BIGINT NOT NULL, created_at TIMESTAMP NOT NULL,
        PRIMARY KEY (scan_id, composition_x, arrangement))""",
    """CREATE TABLE disorder_relaxations (
        scan_id VARCHAR NOT NULL, composition_x DOUBLE NOT NULL, arrangement VARCHAR NOT NULL,
        structure_hash VARCHAR NOT NULL, n_atoms INTEGER NOT NULL, energy_ev DOUBLE NOT NULL,
        energy_ev_per_atom DOUBLE NOT NULL, converged BOOLEAN NOT NULL, steps INTEGER NOT NULL,
        max_force_ev_per_a DOUBLE, volume_a3 DOUBLE NOT NULL, cell_a DOUBLE[] NOT NULL, wall_time_s DOUBLE,
        created_at TIMESTAMP NOT NULL, PRIMARY KEY (scan_id, composition_x, arrangement))""",
    """CREATE TABLE disorder_probabilities (
        scan_id VARCHAR NOT NULL, composition_x DOUBLE NOT NULL, arrangement VARCHAR NOT NULL,
        temperature_k DOUBLE NOT NULL, probability DOUBLE NOT NULL, created_at TIMESTAMP NOT NULL,
        PRIMARY KEY (scan_id, composition_x, arrangement, temperature_k))""",
]

_SCHEMA_V6 = [
    """CREATE TABLE md_runs (
        md_id VARCHAR PRIMARY KEY, run_id VARCHAR, model_id VARCHAR NOT NULL, structure_hash VARCHAR NOT NULL,
        composition_x DOUBLE, temperature_k DOUBLE NOT NULL, path VARCHAR NOT NULL, n_steps INTEGER NOT NULL,
        n_frames INTEGER NOT NULL, complete BOOLEAN NOT NULL, wall_time_s DOUBLE, steps_per_s DOUBLE,
        mean_temperature_k DOUBLE, std_temperature_k DOUBLE, drift_mev_per_atom_per_ps DOUBLE, msd_json VARCHAR,
        max_msd_a2 DOUBLE, min_distance_a DOUBLE, decorrelation_fs DOUBLE, status VARCHAR NOT NULL, problems VARCHAR,
        settings_json VARCHAR, created_at TIMESTAMP NOT NULL)""",
]

_SCHEMA_V7 = [
    """CREATE TABLE phonon_harmonic (
        structure_hash VARCHAR NOT NULL, model_id VARCHAR NOT NULL, displacement_a DOUBLE NOT NULL,
        composition_x DOUBLE, n_modes INTEGER NOT NULL, n_imaginary_gamma INTEGER NOT NULL, min_frequency_thz DOUBLE,
        imaginary_branches_json VARCHAR, artifact_id VARCHAR NOT NULL, run_id VARCHAR, created_at TIMESTAMP NOT NULL,
        PRIMARY KEY (structure_hash, model_id, displacement_a))""",
]

_SCHEMA_V8 = [
    """CREATE TABLE phonon_anharmonic (
        md_id VARCHAR PRIMARY KEY, structure_hash VARCHAR NOT NULL, composition_x DOUBLE, temperature_k DOUBLE NOT NULL,
        stable BOOLEAN NOT NULL, passes_gate BOOLEAN NOT NULL, reason VARCHAR, n_modes INTEGER,
        n_harmonic_imaginary INTEGER, min_renormalised_thz DOUBLE, median_linewidth_thz DOUBLE,
        thermostat_broadening_thz DOUBLE, resolution_thz DOUBLE, artifact_id VARCHAR, run_id VARCHAR,
        created_at TIMESTAMP NOT NULL)""",
]

_SCHEMA_V9 = [
    """CREATE TABLE gap_static (
        structure_hash VARCHAR NOT NULL, ensemble_id VARCHAR NOT NULL, composition_x DOUBLE, level VARCHAR NOT NULL,
        gap_ev DOUBLE NOT NULL, gap_std_ev DOUBLE, model_gaps_ev DOUBLE[], reference_level VARCHAR,
        reference_gap_ev DOUBLE, run_id VARCHAR, created_at TIMESTAMP NOT NULL,
        PRIMARY KEY (structure_hash, ensemble_id))""",
    """CREATE TABLE gap_thermal (
        md_id VARCHAR NOT NULL, ensemble_id VARCHAR NOT NULL, structure_hash VARCHAR NOT NULL, composition_x DOUBLE,
        temperature_k DOUBLE NOT NULL, level VARCHAR NOT NULL, passes_gate BOOLEAN NOT NULL, reason VARCHAR,
        decorrelation_fs DOUBLE, spacing_fs DOUBLE, n_snapshots INTEGER, mean_gap_ev DOUBLE,
        statistical_error_ev DOUBLE, model_error_ev DOUBLE, error_ev DOUBLE, static_gap_ev DOUBLE, delta_ev DOUBLE,
        delta_error_ev DOUBLE, relative_change DOUBLE, relative_error DOUBLE, run_id VARCHAR,
        created_at TIMESTAMP NOT NULL, PRIMARY KEY (md_id, ensemble_id))""",
    """CREATE TABLE gap_snapshots (
        md_id VARCHAR NOT NULL, ensemble_id VARCHAR NOT NULL, frame INTEGER NOT NULL, time_fs DOUBLE NOT NULL,
        gap_ev DOUBLE NOT NULL, gap_std_ev DOUBLE, created_at TIMESTAMP NOT NULL,
        PRIMARY KEY (md_id, ensemble_id, frame))""",
    """CREATE TABLE gap_published (
        file_sha VARCHAR NOT NULL, "row" INTEGER NOT NULL, file VARCHAR, composition_x DOUBLE NOT NULL,
        temperature_k DOUBLE NOT NULL, gap_ev DOUBLE NOT NULL, uncertainty_ev DOUBLE, kind VARCHAR NOT NULL,
        source VARCHAR, run_id VARCHAR, created_at TIMESTAMP NOT NULL, PRIMARY KEY (file_sha, "row"))""",
    """CREATE TABLE gap_modes (
        structure_hash VARCHAR NOT NULL, ensemble_id VARCHAR NOT NULL, temperature_k DOUBLE NOT NULL,
        mode INTEGER NOT NULL, composition_x DOUBLE, level VARCHAR NOT NULL, frequency_thz DOUBLE NOT NULL,
        status VARCHAR NOT NULL, rms_displacement_a DOUBLE, max_displacement_a DOUBLE, dominant VARCHAR,
        shares_json VARCHAR, gap0_ev DOUBLE, gap_plus_ev DOUBLE, gap_minus_ev DOUBLE, delta_ev DOUBLE,
        delta_std_ev DOUBLE, relative_change DOUBLE, reference_level VARCHAR, plus_hash VARCHAR, minus_hash VARCHAR,
        reference_gap0_ev DOUBLE, reference_gap_plus_ev DOUBLE, reference_gap_minus_ev DOUBLE,
        reference_delta_ev DOUBLE, reference_relative_change DOUBLE, run_id VARCHAR, created_at TIMESTAMP NOT NULL,
        PRIMARY KEY (structure_hash, ensemble_id, temperature_k, mode))""",
]

_SCHEMA_V10 = [  # the settings a derived row was computed with: other settings -> the row is recomputed
    "ALTER TABLE phonon_anharmonic ADD COLUMN settings_key VARCHAR",
    "ALTER TABLE gap_thermal ADD COLUMN settings_key VARCHAR",
    "ALTER TABLE gap_modes ADD COLUMN settings_key VARCHAR",
    """CREATE TABLE active_learning_frames (
        model_id VARCHAR NOT NULL, md_id VARCHAR NOT NULL, frame INTEGER NOT NULL, round INTEGER NOT NULL,
        time_fs DOUBLE, composition_x DOUBLE, temperature_k DOUBLE, pair VARCHAR, distance_a DOUBLE,
        training_distance_a DOUBLE, structure_hash VARCHAR NOT NULL, level VARCHAR NOT NULL, run_id VARCHAR,
        created_at TIMESTAMP NOT NULL, PRIMARY KEY (model_id, md_id, frame))""",
]

_SCHEMA_V11 = [  # how far the MD's time-averaged structure sits from the analysed one's sites
    "ALTER TABLE phonon_anharmonic ADD COLUMN max_site_offset_a DOUBLE",
    "ALTER TABLE phonon_anharmonic ADD COLUMN site_offset_atom VARCHAR",
]

_SCHEMA_V12 = [  # MD frames as data: provenance of each frame, held-out frames never trained on
    """CREATE TABLE md_frames (
        structure_hash VARCHAR PRIMARY KEY, md_id VARCHAR NOT NULL, frame INTEGER NOT NULL, time_fs DOUBLE,
        composition_x DOUBLE, temperature_k DOUBLE, model_id VARCHAR NOT NULL, held_out BOOLEAN NOT NULL,
        selection VARCHAR NOT NULL, round INTEGER NOT NULL, seed BIGINT, run_id VARCHAR,
        created_at TIMESTAMP NOT NULL)""",
]

_SCHEMA_V13 = [  # who runs what: a run's process (pid, host), claims of structures being labelled
    "ALTER TABLE runs ADD COLUMN pid INTEGER",
    "ALTER TABLE runs ADD COLUMN host VARCHAR",
    """CREATE TABLE label_claims (
        structure_hash VARCHAR NOT NULL, level VARCHAR NOT NULL, pid INTEGER NOT NULL, host VARCHAR NOT NULL,
        claimed_at TIMESTAMP NOT NULL, PRIMARY KEY (structure_hash, level))""",
]

#: MIGRATIONS[v] turns a store of version v - 1 into version v (v = 1: create from nothing).
MIGRATIONS: dict[int, list[str]] = {
    1: _SCHEMA_V1,
    2: _SCHEMA_V2,
    3: _SCHEMA_V3,
    4: _SCHEMA_V4,
    5: _SCHEMA_V5,
    6: _SCHEMA_V6,
    7: _SCHEMA_V7,
    8: _SCHEMA_V8,
    9: _SCHEMA_V9,
    10: _SCHEMA_V10,
    11: _SCHEMA_V11,
    12: _SCHEMA_V12,
    13: _SCHEMA_V13,
}


def _now() -> datetime:
    return datetime.now(UTC).replace(tzinfo=None)


#: Tables :meth:`StoreWriter.add_rows` writes to (rows keyed by their primary key, written once).
_RESULT_TABLES = (
    "gnn_trials",
    "gnn_learning_curve",
    "mlip_models",
    "mlip_metrics",
    "mlip_predictions",
    "mlip_phonons",
    "disorder_scans",
    "disorder_compositions",
    "disorder_arrangements",
    "disorder_relaxations",
    "disorder_probabilities",
    "md_runs",
    "phonon_harmonic",
    "phonon_anharmonic",
    "gap_static",
    "gap_thermal",
    "gap_snapshots",
    "gap_published",
    "gap_modes",
    "active_learning_frames",
    "md_frames",
)


#: Hours after which a claim of a process on another host (whose liveness cannot be checked) is stale.
CLAIM_MAX_AGE_H = 48.0


def this_host() -> str:
    """The machine's host name (recorded with a run's pid: a pid means something only on its own host)."""
    import socket

    return socket.gethostname()


def process_alive(pid: int | None, host: str | None) -> bool:
    """Whether process ``pid`` of ``host`` still runs (a process of another host is assumed to)."""
    if pid is None or pd.isna(pid):
        return False  # written by a capml that did not record its process: cannot be running now
    if host != this_host():
        return True
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # exists, owned by someone else
    return True


def check_project_dir(project_dir: str | Path) -> None:
    """Refuse a project directory that cannot be created or written to, naming what is in the way.

    Raises
    ------
    StoreError
        A path above it is a regular file, or the nearest existing folder is not writable.
    """
    path = Path(project_dir).expanduser().resolve()
    existing = path
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        raise StoreError(
            f"project directory {path}: {existing} is a file, not a folder; choose another project directory "
            "(--project DIR or run.project_dir)"
        )
    if not os.access(existing, os.W_OK | os.X_OK):
        what = "is not writable" if existing == path else f"cannot be created: {existing} is not writable"
        raise StoreError(
            f"project directory {path} {what} (permission denied); choose a folder you can write to "
            "(--project DIR or run.project_dir)"
        )


@dataclass(frozen=True)
class StructureRecord:
    """A structure to store, with what it is.

    Attributes
    ----------
    atoms
        The structure (positions and cell in Å).
    structure_hash
        Its content hash.
    kind
        thermal, uniform, equilibrium or imported.
    composition_x
        Fraction of the first sublattice species (None when the structure has neither).
    temperature_k, amplitude_a
        Temperature (K) of a thermal structure; displacement amplitude (Å) of a displaced one.
    seed
        Seed that reproduces the structure, if any.
    source
        Where it came from (file path, generator name).
    """

    atoms: Atoms
    structure_hash: str
    kind: StructureKind
    composition_x: float | None = None
    temperature_k: float | None = None
    amplitude_a: float | None = None
    seed: int | None = None
    source: str | None = None


@dataclass(frozen=True)
class LabelRecord:
    """Reference labels of one structure at one level (absent labels are None).

    Attributes
    ----------
    energy_ev
        Total energy (eV).
    forces_ev_per_a
        Forces (eV/Å), shape (n_atoms, 3).
    stress_ev_per_a3
        Stress (eV/Å³), Voigt order xx yy zz yz xz xy (ASE), positive = tensile.
    gap_ev
        Band gap (eV).
    """

    structure_hash: str
    level: str
    status: LabelStatus = "ok"
    energy_ev: float | None = None
    forces_ev_per_a: np.ndarray | None = None
    stress_ev_per_a3: np.ndarray | None = None
    gap_ev: float | None = None
    extras: Mapping[str, Any] = field(default_factory=dict)
    error: str | None = None
    wall_time_s: float | None = None
    source: str | None = None


@dataclass(frozen=True)
class WriteCounts:
    """Rows a write added (``new``) and rows that were already there (``existing``)."""

    new: int
    existing: int


class StoreWriter:
    """Write operations inside one open transaction (get one from :meth:`Store.write`)."""

    def __init__(self, con: duckdb.DuckDBPyConnection, store: Store) -> None:
        self.con = con
        self.store = store

    def start_run(
        self,
        *,
        run_id: str,
        name: str,
        config_hash: str,
        config_json: str | None,
        config_path: str | None,
        code_version: str,
        packages: Mapping[str, str],
    ) -> None:
        """Record a new run (status 'running', with this process's pid and host); an existing run_id is kept.

        Runs left 'running' by a process of this host that is gone (killed) are marked 'interrupted' first.
        """
        self.mark_interrupted_runs()
        self.con.execute(
            "INSERT INTO runs (run_id, name, config_path, config_hash, config_json, code_version, packages_json, "
            "status, started_at, pid, host) VALUES (?, ?, ?, ?, ?, ?, ?, 'running', ?, ?, ?) ON CONFLICT DO NOTHING",
            [
                run_id,
                name,
                config_path,
                config_hash,
                config_json,
                code_version,
                json.dumps(dict(packages)),
                _now(),
                os.getpid(),
                this_host(),
            ],
        )

    def mark_interrupted_runs(self) -> int:
        """Set runs (and their running stages) whose process has gone to 'interrupted'; returns how many."""
        rows = self.con.execute("SELECT run_id, pid, host FROM runs WHERE status = 'running'").fetchall()
        gone = [run_id for run_id, pid, host in rows if not process_alive(pid, host)]
        for run_id in gone:
            message = "interrupted: its process ended without finishing the run (killed?)"
            self.con.execute("UPDATE runs SET status = 'interrupted', message = ? WHERE run_id = ?", [message, run_id])
            self.con.execute(
                "UPDATE stages SET status = 'interrupted' WHERE run_id = ? AND status = 'running'", [run_id]
            )
        return len(gone)

    def claim_labels(self, level: str, structure_hashes: Sequence[str]) -> list[str]:
        """Claim structures for labelling at ``level`` by this process; returns those claimed (in order).

        A structure claimed by a live process (this host: its pid exists; another host: it is assumed alive
        for :data:`CLAIM_MAX_AGE_H` hours) is not claimed again; a claim of a process that is gone is taken
        over. Release with :meth:`release_labels` (finished labels release themselves when stored).
        """
        wanted = list(dict.fromkeys(structure_hashes))
        if not wanted:
            return []
        held = self.con.execute(
            "SELECT structure_hash, pid, host, claimed_at FROM label_claims WHERE level = ? "
            "AND structure_hash IN (SELECT unnest(?))",
            [level, wanted],
        ).fetchall()
        me = (os.getpid(), this_host())
        oldest = _now() - pd.Timedelta(hours=CLAIM_MAX_AGE_H)
        busy = {
            h
            for h, pid, host, claimed_at in held
            if (pid, host) != me and process_alive(pid, host) and claimed_at > oldest
        }
        done = {
            row[0]
            for row in self.con.execute(
                "SELECT structure_hash FROM labels WHERE level = ? AND status = 'ok' AND structure_hash IN "
                "(SELECT unnest(?))",
                [level, wanted],
            ).fetchall()
        }
        mine = [h for h in wanted if h not in busy and h not in done]
        self.con.execute(
            "DELETE FROM label_claims WHERE level = ? AND structure_hash IN (SELECT unnest(?))", [level, mine]
        )
        self._insert_rows(
            "label_claims",
            [{"structure_hash": h, "level": level, "pid": me[0], "host": me[1], "claimed_at": _now()} for h in mine],
        )
        return mine

    def release_labels(self, level: str, structure_hashes: Sequence[str] | None = None) -> None:
        """Release this process's claims at ``level`` (all of them, or those of ``structure_hashes``)."""
        if structure_hashes is None:
            self.con.execute(
                "DELETE FROM label_claims WHERE level = ? AND pid = ? AND host = ?", [level, os.getpid(), this_host()]
            )
        else:
            self.con.execute(
                "DELETE FROM label_claims WHERE level = ? AND pid = ? AND host = ? AND structure_hash IN "
                "(SELECT unnest(?))",
                [level, os.getpid(), this_host(), list(structure_hashes)],
            )

    def finish_run(self, run_id: str, *, status: StageStatus, message: str | None = None) -> None:
        """Set a run's final status."""
        self.con.execute(
            "UPDATE runs SET status = ?, finished_at = ?, message = ? WHERE run_id = ?",
            [status, _now(), message, run_id],
        )

    def set_stage(self, run_id: str, stage: str, status: StageStatus, message: str | None = None) -> None:
        """Create or update the status of one stage of a run."""
        now = _now()
        finished = now if status != "running" else None
        self.con.execute(
            """INSERT INTO stages VALUES (?, ?, ?, ?, ?, ?)
               ON CONFLICT (run_id, stage) DO UPDATE SET status = excluded.status,
                 finished_at = excluded.finished_at, message = excluded.message,
                 started_at = CASE WHEN excluded.status = 'running' THEN excluded.started_at
                                   ELSE stages.started_at END""",
            [run_id, stage, status, now, finished, message],
        )

    def register_level(self, level: str, *, backend: str, settings: Mapping[str, Any]) -> None:
        """Record a reference level and its settings (first registration wins)."""
        self.con.execute(
            "INSERT INTO levels VALUES (?, ?, ?, ?) ON CONFLICT DO NOTHING",
            [level, backend, json.dumps(dict(settings), sort_keys=True, default=str), _now()],
        )

    def add_structures(self, records: Sequence[StructureRecord], *, run_id: str | None) -> WriteCounts:
        """Insert structures; those whose hash is already stored are skipped."""
        unique = {r.structure_hash: r for r in reversed(records)}  # first occurrence wins
        if not unique:
            return WriteCounts(0, 0)
        existing = self._existing("structures", "structure_hash", list(unique))
        now = _now()
        rows = [
            {
                "structure_hash": r.structure_hash,
                "formula": r.atoms.get_chemical_formula(mode="metal"),
                "n_atoms": len(r.atoms),
                "composition_x": r.composition_x,
                "kind": r.kind,
                "temperature_k": r.temperature_k,
                "amplitude_a": r.amplitude_a,
                "seed": r.seed,
                "source": r.source,
                "run_id": run_id,
                "numbers": np.asarray(r.atoms.numbers, dtype=np.int32).tolist(),
                "positions_a": np.asarray(r.atoms.positions, dtype=np.float64).ravel().tolist(),
                "cell_a": np.asarray(r.atoms.cell[:], dtype=np.float64).ravel().tolist(),
                "pbc": np.asarray(r.atoms.pbc, dtype=bool).tolist(),
                "created_at": now,
            }
            for h, r in unique.items()
            if h not in existing
        ]
        self._insert_rows("structures", rows)
        return WriteCounts(len(rows), len(existing))

    def add_labels(self, records: Sequence[LabelRecord], *, run_id: str | None) -> WriteCounts:
        """Insert labels; an (structure, level) already labelled 'ok' is kept, a 'failed' one is replaced."""
        unique = {(r.structure_hash, r.level): r for r in reversed(records)}
        if not unique:
            return WriteCounts(0, 0)
        stored = self.con.execute(
            "SELECT structure_hash, level, status FROM labels WHERE structure_hash IN (SELECT unnest(?))",
            [sorted({h for h, _ in unique})],
        ).fetchall()
        keep = {(h, lv) for h, lv, status in stored if status == "ok"}
        replace = [f"{h}|{lv}" for h, lv, status in stored if status != "ok" and (h, lv) in unique]
        if replace:
            self.con.execute(
                "DELETE FROM labels WHERE status != 'ok' AND structure_hash || '|' || level IN (SELECT unnest(?))",
                [replace],
            )
        todo = [r for key, r in unique.items() if key not in keep]
        now = _now()
        rows = [
            {
                "structure_hash": r.structure_hash,
                "level": r.level,
                "status": r.status,
                "energy_ev": r.energy_ev,
                "forces_ev_per_a": None if r.forces_ev_per_a is None else np.ravel(r.forces_ev_per_a).tolist(),
                "stress_ev_per_a3": None if r.stress_ev_per_a3 is None else np.ravel(r.stress_ev_per_a3).tolist(),
                "gap_ev": r.gap_ev,
                "extras_json": json.dumps(dict(r.extras), sort_keys=True, default=str) if r.extras else None,
                "error": r.error,
                "wall_time_s": r.wall_time_s,
                "source": r.source,
                "run_id": run_id,
                "created_at": now,
            }
            for r in todo
        ]
        self._insert_rows("labels", rows)
        return WriteCounts(len(rows), len(unique) - len(rows))

    def add_to_set(self, set_name: str, level: str, structure_hashes: Sequence[str]) -> WriteCounts:
        """Record structures as members of a named set to be labelled at ``level`` (in the given order)."""
        ordered = list(dict.fromkeys(structure_hashes))
        if not ordered:
            return WriteCounts(0, 0)
        existing = {
            r[0]
            for r in self.con.execute(
                "SELECT structure_hash FROM structure_sets WHERE set_name = ? AND structure_hash IN (SELECT unnest(?))",
                [set_name, ordered],
            ).fetchall()
        }
        rows = [
            {"set_name": set_name, "structure_hash": h, "level": level, "position": i}
            for i, h in enumerate(ordered)
            if h not in existing
        ]
        self._insert_rows("structure_sets", rows)
        return WriteCounts(len(rows), len(existing))

    def add_gnn_model(
        self, row: Mapping[str, Any], metrics: Sequence[Mapping[str, Any]], predictions: Sequence[Mapping[str, Any]]
    ) -> None:
        """Record a trained GNN model with its metrics and per-structure predictions (a model id is written once)."""
        self._insert_rows("gnn_models", [{**row, "created_at": _now()}])
        self._insert_rows("gnn_metrics", list(metrics))
        self._insert_rows("gnn_predictions", list(predictions))

    def add_rows(self, table: str, rows: Sequence[Mapping[str, Any]]) -> None:
        """Insert rows into a results table (one of ``_RESULT_TABLES``), stamped with the time."""
        if table not in _RESULT_TABLES:
            raise StoreError(f"add_rows: {table!r} is not a results table")
        self._insert_rows(table, [{**row, "created_at": _now()} for row in rows])

    def delete_rows(self, table: str, where: Mapping[str, Any]) -> int:
        """Delete the rows of a results table whose columns equal ``where`` (stale results being replaced)."""
        if table not in _RESULT_TABLES:
            raise StoreError(f"delete_rows: {table!r} is not a results table")
        if not where or not all(column.isidentifier() for column in where):
            raise StoreError(f"delete_rows: name the columns to match (got {list(where)})")
        condition = " AND ".join(f"{column} = ?" for column in where)
        rows = self.con.execute(f"DELETE FROM {table} WHERE {condition} RETURNING 1", list(where.values())).fetchall()
        return len(rows)

    def save_arrays(
        self, kind: str, arrays: Mapping[str, np.ndarray], *, run_id: str | None, meta: Mapping[str, Any] | None = None
    ) -> str:
        """Write arrays to ``artifacts/<kind>/<sha>.npz`` (content-addressed) and record it; returns its id.

        The file is written before the row (in this transaction), so a row never points to a missing file;
        a crash in between leaves at most an unreferenced file that the next identical save reuses.
        """
        buffer = io.BytesIO()
        np.savez_compressed(buffer, **{k: np.asarray(v) for k, v in arrays.items()})
        payload = buffer.getvalue()
        sha = hashlib.sha256(payload).hexdigest()
        artifact_id = f"{kind}-{sha[:16]}"
        relpath = Path(ARTIFACTS_DIRNAME) / kind / f"{sha[:16]}.npz"
        target = self.store.project_dir / relpath
        if not target.exists():
            target.parent.mkdir(parents=True, exist_ok=True)
            partial = target.with_suffix(".partial")
            partial.write_bytes(payload)
            partial.replace(target)
        self.con.execute(
            "INSERT INTO artifacts VALUES (?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT DO NOTHING",
            [artifact_id, run_id, kind, relpath.as_posix(), sha, len(payload), json.dumps(dict(meta or {})), _now()],
        )
        return artifact_id

    # -- helpers
    def _existing(self, table: str, key: str, values: list[str]) -> set[str]:
        rows = self.con.execute(f"SELECT {key} FROM {table} WHERE {key} IN (SELECT unnest(?))", [values]).fetchall()
        return {r[0] for r in rows}

    def _insert_rows(self, table: str, rows: list[dict[str, Any]]) -> None:
        if not rows:
            return
        frame = pd.DataFrame(rows)
        self.con.register("_capml_rows", frame)
        try:
            columns = ", ".join(frame.columns)
            self.con.execute(
                f"INSERT INTO {table} ({columns}) SELECT {columns} FROM _capml_rows ON CONFLICT DO NOTHING"
            )
        finally:
            self.con.unregister("_capml_rows")


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
                yield StoreWriter(con, self)
                con.commit()
            except BaseException:
                con.rollback()
                raise
        finally:
            con.close()

    @contextmanager
    def read(self, *, sandboxed: bool = False) -> Iterator[duckdb.DuckDBPyConnection]:
        """A short read-only connection (waits while a writer holds the file).

        ``sandboxed``: for users' SQL (:mod:`capml_core.sql`): no file access, no extensions, settings locked.
        """
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

    def query(self, sql: str, params: Sequence[Any] | None = None) -> pd.DataFrame:
        """Run a read-only SQL query and return a DataFrame."""
        with self.read() as con:
            return con.execute(sql, params or []).df()

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
            """SELECT p.stage, p.split, p.level, p.structure_hash, p.reference_ev,
                      avg(p.predicted_ev) AS predicted_ev, coalesce(stddev_pop(p.predicted_ev), 0) AS spread_ev
               FROM gnn_predictions p JOIN gnn_models g USING (model_id) WHERE g.ensemble_id = ?
               GROUP BY ALL ORDER BY ALL""",
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
                "SELECT model_id FROM mlip_models WHERE kind <> 'foundation' ORDER BY created_at DESC LIMIT 1"
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
                "SELECT * FROM mlip_predictions WHERE model_id IN (SELECT unnest(?)) ORDER BY split, structure_hash",
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
            "SELECT model_id FROM mlip_models WHERE kind <> 'foundation' ORDER BY created_at DESC LIMIT 1"
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
        """Eg(0), Eg(T) and snapshot gaps of the newest GNN ensemble used, and the published gaps.

        One row per composition (static) and per composition and temperature (thermal): the newest if a
        composition was computed for several structures (several disorder scans).
        """
        newest = self.query("SELECT ensemble_id FROM gap_static ORDER BY created_at DESC LIMIT 1")
        published = self.query(
            "SELECT * EXCLUDE (file_sha, run_id) FROM gap_published ORDER BY kind, source, composition_x, temperature_k"
        )
        if newest.empty:
            return {
                "static": pd.DataFrame(),
                "thermal": pd.DataFrame(),
                "snapshots": pd.DataFrame(),
                "published": published,
            }
        ensemble_id = newest["ensemble_id"][0]
        static = self.query(
            """SELECT * EXCLUDE (model_gaps_ev) FROM gap_static WHERE ensemble_id = ?
               QUALIFY row_number() OVER (PARTITION BY composition_x ORDER BY created_at DESC) = 1
               ORDER BY composition_x""",
            [ensemble_id],
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
        return {"static": static, "thermal": thermal, "snapshots": snapshots, "published": published}

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
