"""The store's writer: one connection that writes, in transactions."""

from __future__ import annotations

import hashlib
import io
import json
import os
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import duckdb
import numpy as np
import pandas as pd

from capml_core.errors import StoreError
from capml_core.store.hosts import CLAIM_MAX_AGE_H, process_alive, this_host
from capml_core.store.records import LabelRecord, StructureRecord, WriteCounts
from capml_core.store.schema import ARTIFACTS_DIRNAME, RESULT_TABLES
from capml_core.types import StageStatus


def _now() -> datetime:
    """Now, UTC, without time zone (how the store keeps times)."""
    return datetime.now(UTC).replace(tzinfo=None)


class StoreWriter:
    """Write operations inside one open transaction (get one from :meth:`Store.write`)."""

    def __init__(self, con: duckdb.DuckDBPyConnection, project_dir: Path) -> None:
        self.con = con
        self.project_dir = project_dir

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
        """Insert labels; an (structure, level) already labelled 'ok' is kept, a 'failed' one is replaced.

        A kept label without a DFT wall time takes the incoming record's (a store rebuilt from files before they
        carried the cost gets it back by importing them again); a stored time is never changed.
        """
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
        timed = [[r.wall_time_s, h, lv] for (h, lv), r in unique.items() if (h, lv) in keep and r.wall_time_s]
        if timed:
            self.con.executemany(
                """UPDATE labels SET wall_time_s = ? WHERE structure_hash = ? AND level = ? AND status = 'ok'
                   AND wall_time_s IS NULL""",
                timed,
            )
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

    def replace_split_predictions(self, table: str, split: str, rows: Sequence[Mapping[str, Any]]) -> int:
        """Per-structure predictions of one evaluation split (e.g. the held-out MD frames), replacing that split's.

        ``table``: 'gnn_predictions' or 'mlip_predictions'. The previous rows of ``split`` for the same models go
        first; a structure already predicted in another split of a model (a training structure) is left as it is.
        Returns the number of rows written.
        """
        if table not in ("gnn_predictions", "mlip_predictions"):
            raise StoreError(f"replace_split_predictions: {table!r} is not a prediction table")
        models = sorted({row["model_id"] for row in rows})
        self.con.execute(f"DELETE FROM {table} WHERE split = ? AND model_id IN (SELECT unnest(?))", [split, models])
        key = ("model_id", "stage") if table == "gnn_predictions" else ("model_id", "evaluated_on")
        taken = {
            tuple(r)
            for r in self.con.execute(
                f"SELECT {key[0]}, {key[1]}, structure_hash FROM {table} WHERE model_id IN (SELECT unnest(?))",
                [models],
            ).fetchall()
        }
        fresh = [
            {**row, "split": split} for row in rows if (row[key[0]], row[key[1]], row["structure_hash"]) not in taken
        ]
        if table == "mlip_predictions":
            fresh = [{**row, "created_at": _now()} for row in fresh]
        self._insert_rows(table, fresh)
        return len(fresh)

    def add_rows(self, table: str, rows: Sequence[Mapping[str, Any]]) -> None:
        """Insert rows into a results table (one of ``RESULT_TABLES``), stamped with the time."""
        if table not in RESULT_TABLES:
            raise StoreError(f"add_rows: {table!r} is not a results table")
        self._insert_rows(table, [{**row, "created_at": _now()} for row in rows])

    def delete_rows(self, table: str, where: Mapping[str, Any]) -> int:
        """Delete the rows of a results table whose columns equal ``where`` (stale results being replaced)."""
        if table not in RESULT_TABLES:
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
        target = self.project_dir / relpath
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
