"""Rounds of active learning: what each added, what it cost, and how far the models are from the targets.

Round 0 is the models trained on the dataset alone; round k >= 1 adds the frames selected with round k - 1's
models (set ``al-round<k>``, :mod:`capml_core.stages.uncertainty`), labelled at both levels, and retrains MACE
and the GNN. :func:`record_round` measures the round's models on the held-out MD frames
(:func:`capml_core.stages.heldout.evaluate_on_frames`) and writes one ``active_learning_rounds`` row: frames
added, DFT calls (ok and failed) and their CPU hours, training CPU hours, held-out errors, and whether every
target of ``active_learning`` is met.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from capml_core.config.schema import RunConfig
from capml_core.errors import InvalidInputError
from capml_core.stages.heldout import FrameErrors, evaluate_on_frames
from capml_core.stages.mlip import committee_ids
from capml_core.store.database import Store
from capml_core.tables import ResultTable, table


@dataclass(frozen=True)
class RoundTargets:
    """Which stop targets a round meets (None: not measurable yet, e.g. no labelled held-out frame)."""

    mace_energy: bool | None
    mace_forces: bool | None
    gnn_high_mae: bool | None
    gnn_high_mean: bool | None
    gnn_cheap_mae: bool | None

    @property
    def all_met(self) -> bool:
        """Every target measured and met."""
        return all(v is True for v in self.__dict__.values())


def heldout_summary(errors: list[FrameErrors], *, cheap_level: str, high_level: str | None) -> dict[str, float | None]:
    """The numbers a round is judged by, from :func:`evaluate_on_frames`' errors (None where not measured)."""
    by = {(e.model.split()[0], e.model.endswith("(cheap stage)"), e.quantity, e.level): e for e in errors}
    energy = by.get(("mace", False, "energy", cheap_level))
    forces = by.get(("mace", False, "forces", cheap_level))
    high = by.get(("gnn", False, "gap", high_level)) if high_level else None
    cheap = by.get(("gnn", True, "gap", cheap_level)) or by.get(("gnn", False, "gap", cheap_level))
    return {
        "mace_energy_mae_mev_per_atom": energy.mae if energy else None,
        "mace_energy_mean_error_mev_per_atom": energy.mean_error if energy else None,
        "mace_force_mae_ev_per_a": forces.mae if forces else None,
        "gnn_cheap_mae_ev": cheap.mae if cheap else None,
        "gnn_high_mae_ev": high.mae if high else None,
        "gnn_high_mean_error_ev": high.mean_error if high else None,
        "n_heldout_cheap": energy.n if energy else (cheap.n if cheap else 0),
        "n_heldout_high": high.n if high else 0,
    }


def target_limits(config: RunConfig) -> dict[str, float]:
    """The stop targets' limits, stored with each round beside which of them it meets (a project may set its own)."""
    t = config.active_learning
    return {
        "mace_energy_mae_mev_per_atom": t.target_energy_mae_mev_per_atom,
        "mace_force_ratio": t.target_force_ratio,
        "gnn_high_mae_ev": t.target_gap_high_mae_ev,
        "gnn_high_mean_error_ev": t.target_gap_high_mean_error_ev,
        "gnn_cheap_mae_ev": t.target_gap_cheap_mae_ev,
    }


def judge(summary: dict, test_force_mae: float | None, config: RunConfig) -> RoundTargets:
    """The stop targets of ``active_learning`` (:func:`target_limits`) against a round's held-out numbers."""
    limits = target_limits(config)

    def below(value, limit):
        return None if value is None else bool(value <= limit)

    force = summary["mace_force_mae_ev_per_a"]
    mean_error = summary["gnn_high_mean_error_ev"]
    return RoundTargets(
        mace_energy=below(summary["mace_energy_mae_mev_per_atom"], limits["mace_energy_mae_mev_per_atom"]),
        mace_forces=None
        if force is None or not test_force_mae
        else below(force, limits["mace_force_ratio"] * test_force_mae),
        gnn_high_mae=below(summary["gnn_high_mae_ev"], limits["gnn_high_mae_ev"]),
        gnn_high_mean=below(None if mean_error is None else abs(mean_error), limits["gnn_high_mean_error_ev"]),
        gnn_cheap_mae=below(summary["gnn_cheap_mae_ev"], limits["gnn_cheap_mae_ev"]),
    )


def round_costs(store: Store, round_index: int, levels: list[str]) -> dict[str, float | int]:
    """Frames the round added (labelled ok at the first level), all frames added so far, its DFT calls and CPU hours."""
    if round_index == 0:
        return {"frames_added": 0, "frames_total": 0, "dft_calls": 0, "dft_failed": 0, "dft_cpu_h": 0.0}
    # the frames' provenance (md_frames.round), not the set names: a store that imported a round's files has no
    # al-roundK sets, and the same frames and labels must cost the same there
    rows = store.query(
        """SELECT l.level, l.status, l.wall_time_s FROM labels l
           WHERE l.level IN (SELECT unnest(?)) AND l.structure_hash IN (
               SELECT structure_hash FROM md_frames WHERE "round" = ? AND NOT held_out)""",
        [levels, round_index],
    )
    total = store.query(
        """SELECT count(DISTINCT f.structure_hash) AS n FROM md_frames f JOIN labels l USING (structure_hash)
           WHERE NOT f.held_out AND f.round <= ? AND l.level = ? AND l.status = 'ok'""",
        [round_index, levels[0]],
    )
    first = rows[(rows["level"] == levels[0]) & (rows["status"] == "ok")]
    return {
        "frames_added": int(len(first)),
        "frames_total": int(total["n"][0]),
        "dft_calls": int(len(rows)),
        "dft_failed": int((rows["status"] != "ok").sum()),
        "dft_cpu_h": float(rows["wall_time_s"].fillna(0).sum() / 3600.0),
    }


def record_round(
    store: Store,
    config: RunConfig,
    *,
    round_index: int,
    model_id: str,
    ensemble_id: str | None,
    run_id: str | None = None,
) -> dict:
    """Measure round ``round_index``'s models on the held-out frames and store the round's row (replaced if there)."""
    cheap = config.mlip.level or config.reference.cheap_level
    high = config.reference.high_level
    errors = evaluate_on_frames(
        store,
        cheap_level=cheap,
        model_id=model_id,
        ensemble_id=ensemble_id,
        set_name=config.active_learning.heldout_set,
        flagged=True,
    )
    summary = heldout_summary(errors, cheap_level=cheap, high_level=high)
    test = store.query(
        "SELECT mae FROM mlip_metrics WHERE model_id = ? AND quantity = 'forces' AND split = 'test'", [model_id]
    )
    test_force = float(test["mae"][0]) if len(test) else None
    targets = judge(summary, test_force, config)
    committee = committee_ids(store, model_id)
    training = store.query(
        "SELECT sum(train_seconds) / 3600 AS h FROM mlip_models WHERE model_id IN (SELECT unnest(?))", [committee]
    )
    levels = [cheap] + ([high] if high and high != cheap else [])
    row = {
        "round": round_index,
        "model_id": model_id,
        "ensemble_id": ensemble_id,
        "committee_json": json.dumps(committee),
        **round_costs(store, round_index, levels),
        "training_cpu_h": None if pd.isna(training["h"][0]) else float(training["h"][0]),
        **summary,
        "mace_test_force_mae_ev_per_a": test_force,
        "targets_met": targets.all_met,
        "targets_json": json.dumps({**targets.__dict__, "limits": target_limits(config)}),
        "run_id": run_id,
    }
    with store.write() as writer:
        writer.delete_rows("active_learning_rounds", {"round": round_index, "model_id": model_id})
        writer.add_rows("active_learning_rounds", [row])
    return row


def rounds_table(store: Store, config: RunConfig) -> ResultTable:
    """The rounds so far: frames, DFT cost and held-out errors against the targets."""
    t = config.active_learning
    rows = store.query("SELECT * FROM active_learning_rounds ORDER BY round, created_at")

    def fmt(value, digits):
        return "—" if value is None or pd.isna(value) else f"{value:.{digits}f}"

    body = [
        (
            str(r.round),
            r.model_id,
            str(r.frames_added),
            f"{r.dft_calls} ({r.dft_failed} failed)",
            fmt(r.dft_cpu_h, 2),
            fmt(r.mace_energy_mae_mev_per_atom, 1),
            f"{fmt(r.mace_force_mae_ev_per_a, 3)} / {fmt(r.mace_test_force_mae_ev_per_a, 3)}",
            fmt(r.gnn_cheap_mae_ev, 3),
            f"{fmt(r.gnn_high_mae_ev, 3)} ({fmt(r.gnn_high_mean_error_ev, 3)})",
            "yes" if r.targets_met else "no",
        )
        for r in rows.itertuples()
    ]
    return table(
        "active-learning rounds (errors on the held-out MD frames)",
        (
            "round",
            "MACE model",
            "frames added",
            "DFT calls",
            "DFT CPU h",
            "E MAE meV/atom",
            "F MAE held-out / test eV/Å",
            "gap MAE cheap eV",
            "gap MAE high (mean) eV",
            "targets met",
        ),
        body,
        notes=[
            f"targets: MACE energy MAE <= {t.target_energy_mae_mev_per_atom} meV/atom, force MAE <= "
            f"{t.target_force_ratio} x test; GNN high-level MAE <= {t.target_gap_high_mae_ev} eV with |mean| <= "
            f"{t.target_gap_high_mean_error_ev} eV, cheap-level MAE <= {t.target_gap_cheap_mae_ev} eV"
        ],
    )


#: Text and whole-number columns of a rounds file (every other column but ``targets_met`` is a real number).
ROUND_TEXT_COLUMNS = ("model_id", "ensemble_id", "committee_json", "targets_json", "run_id")
ROUND_INTEGER_COLUMNS = (
    "round",
    "frames_added",
    "frames_total",
    "dft_calls",
    "dft_failed",
    "n_heldout_cheap",
    "n_heldout_high",
)
#: Columns of a rounds file (``capml al rounds --export/--import``): the table's, without its timestamp.
ROUND_COLUMNS = (
    "round",
    "model_id",
    "ensemble_id",
    "committee_json",
    "frames_added",
    "frames_total",
    "dft_calls",
    "dft_failed",
    "dft_cpu_h",
    "training_cpu_h",
    "mace_energy_mae_mev_per_atom",
    "mace_energy_mean_error_mev_per_atom",
    "mace_force_mae_ev_per_a",
    "mace_test_force_mae_ev_per_a",
    "gnn_cheap_mae_ev",
    "gnn_high_mae_ev",
    "gnn_high_mean_error_ev",
    "n_heldout_cheap",
    "n_heldout_high",
    "targets_met",
    "targets_json",
    "run_id",
)
_REQUIRED = {"round", "model_id", "frames_added", "frames_total", "dft_calls", "dft_failed", "dft_cpu_h", "targets_met"}


def export_rounds(store: Store, path: str | Path) -> int:
    """Write every ``active_learning_rounds`` row to a CSV file (the durable copy of a project's rounds)."""
    rows = store.query(f"SELECT {', '.join(ROUND_COLUMNS)} FROM active_learning_rounds ORDER BY round, created_at")
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    rows.to_csv(path, index=False, float_format="%.6g")
    return len(rows)


def read_rounds_file(path: str | Path) -> list[dict]:
    """The rows of a rounds CSV, checked (plain values only: nothing in it is executed).

    Raises
    ------
    InvalidInputError
        Unreadable file, a missing or unknown column, or a value of the wrong type (file, row, column, value).
    """
    path = Path(path)
    try:
        frame = pd.read_csv(path, dtype=str, keep_default_na=False)
    except (OSError, ValueError, pd.errors.ParserError) as error:
        raise InvalidInputError(f"{path}: not a readable rounds CSV file ({error})") from error
    unknown = sorted(set(frame.columns) - set(ROUND_COLUMNS))
    missing = sorted(_REQUIRED - set(frame.columns))
    if unknown or missing:
        raise InvalidInputError(
            f"{path}: columns {', '.join(unknown) or '-'} unknown, {', '.join(missing) or '-'} missing; "
            f"allowed: {', '.join(ROUND_COLUMNS)}"
        )
    rows = []
    for number, record in enumerate(frame.to_dict("records"), start=2):  # line 1 is the header
        rows.append({column: _round_value(path, number, column, text.strip()) for column, text in record.items()})
    return rows


def _round_value(path: Path, line: int, column: str, text: str):
    """One checked value of a rounds file (None for an empty optional one)."""

    def bad(allowed: str) -> InvalidInputError:
        return InvalidInputError(f"{path}, line {line}, column {column}: {text!r} is not {allowed}")

    if column in ROUND_TEXT_COLUMNS:
        if column == "model_id" and not text:
            raise bad("a model id (required)")
        return text or None
    if column == "targets_met":
        if text.lower() not in ("true", "false"):
            raise bad("true or false")
        return text.lower() == "true"
    if not text:
        if column in _REQUIRED:
            raise bad("a number (required)")
        return None
    if column in ROUND_INTEGER_COLUMNS:
        try:
            value = int(text)
        except ValueError:
            raise bad("a whole number") from None
        if value < 0:
            raise bad("a whole number >= 0")
        return value
    try:
        number = float(text)
    except ValueError:
        raise bad("a number") from None
    if not np.isfinite(number):
        raise bad("a finite number")
    return number


def import_rounds(store: Store, path: str | Path) -> int:
    """Put the rounds of a CSV written by :func:`export_rounds` into the store (a stored (round, model) is replaced).

    All rows are checked before anything is written (:func:`read_rounds_file`).
    """
    rows = read_rounds_file(path)
    with store.write() as writer:
        for row in rows:
            writer.delete_rows("active_learning_rounds", {"round": row["round"], "model_id": row["model_id"]})
        writer.add_rows("active_learning_rounds", rows)
    return len(rows)
