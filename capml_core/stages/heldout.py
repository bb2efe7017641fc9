"""Errors of the models on held-out MD frames: the yardstick of where the pipeline actually evaluates them.

The held-out frames (:mod:`capml_core.stages.md_frames`) are drawn at random from production MD and labelled at the
cheap and the high level; no model is trained on them. This module measures, on the frames labelled so far:

- MACE against the cheap level: energy per atom (meV/atom, the absolute energies MACE is trained on), forces
  (eV/Å, per component) and stress (eV/Å³, Voigt);
- the GNN ensemble against the level its gaps are at (the high level once fine-tuned): gap MAE, mean error
  (prediction minus DFT, eV: a systematic offset is what shifts every thermal average) and the ensemble's
  spread.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd
from ase import Atoms

from capml_core.errors import CapmlError
from capml_core.models.gnn import load_ensemble, predict_gaps_per_model
from capml_core.models.mace import load_mace_calculator, predict_labels
from capml_core.stages.md_frames import HELD_OUT_SET, set_name_for
from capml_core.store.database import Store
from capml_core.store.queries import ensemble_level, ensemble_model_dirs, mace_model_path


@dataclass(frozen=True)
class FrameErrors:
    """Errors of one model on labelled frames: n, MAE, mean signed error (model - DFT), RMSE, in ``unit``."""

    model: str
    level: str
    quantity: str
    unit: str
    n: int
    mae: float
    mean_error: float
    rmse: float
    max_error: float


def _errors(model: str, level: str, quantity: str, unit: str, predicted: np.ndarray, reference: np.ndarray):
    difference = np.asarray(predicted, dtype=float).ravel() - np.asarray(reference, dtype=float).ravel()
    return FrameErrors(
        model=model,
        level=level,
        quantity=quantity,
        unit=unit,
        n=int(len(reference)),
        mae=float(np.mean(np.abs(difference))),
        mean_error=float(np.mean(difference)),
        rmse=float(np.sqrt(np.mean(difference**2))),
        max_error=float(np.max(np.abs(difference))),
    )


def labelled_frames(store, level: str, *, set_name: str = HELD_OUT_SET, flagged: bool = False) -> pd.DataFrame:
    """Frames of the selection ``set_name`` labelled 'ok' at ``level``, with their provenance and labels.

    ``flagged``: also every frame marked held out in ``md_frames`` (``held_out``) that belongs to no other
    selection, such as the frames a dataset import of a held-out file (``config_type=md-frame``,
    ``held_out=True``) brought in without a selection: the held-out set of a store rebuilt from the shipped files.
    Frames held out under another name (a study's own, ``study-heldout``) stay out.
    """
    return store.query(
        """SELECT f.structure_hash, f.composition_x, f.temperature_k, f.md_id, f.frame, l.energy_ev,
                  l.forces_ev_per_a, l.stress_ev_per_a3, l.gap_ev
           FROM md_frames f JOIN labels l ON l.structure_hash = f.structure_hash AND l.level = ?
           WHERE l.status = 'ok' AND (f.structure_hash IN (SELECT structure_hash FROM structure_sets
                                                            WHERE set_name = ?)
                                      OR (? AND f.held_out AND f.structure_hash NOT IN (
                                          SELECT structure_hash FROM structure_sets WHERE set_name <> ?)))
           ORDER BY f.composition_x, f.temperature_k, f.md_id, f.frame""",
        [level, set_name_for(set_name, level), flagged, set_name_for(set_name, level)],
    )


def mace_frame_predictions(
    calculator,  # ASE calculator
    frames: Sequence[Atoms],
    energies_ev: Sequence[float],
    forces_ev_per_a: Sequence[np.ndarray],
    stresses_ev_per_a3: Sequence[np.ndarray | None],
) -> list[dict]:
    """MACE on labelled frames, per frame as the columns of ``mlip_predictions``.

    n_atoms, energy per atom (eV, reference and MACE), forces (eV/Å) and stress (eV/Å³, Voigt; the reference None
    without one), arrays as lists.
    """
    rows = []
    for atoms, energy, forces, stress in zip(frames, energies_ev, forces_ev_per_a, stresses_ev_per_a3, strict=True):
        predicted_energy, predicted_forces, predicted_stress = predict_labels(calculator, atoms)
        n = len(atoms)
        has_stress = stress is not None and len(np.ravel(stress)) == 6
        rows.append(
            {
                "n_atoms": n,
                "energy_reference_ev_per_atom": float(energy) / n,
                "energy_predicted_ev_per_atom": predicted_energy / n,
                "forces_reference_ev_per_a": np.reshape(np.asarray(forces, dtype=float), -1).tolist(),
                "forces_predicted_ev_per_a": predicted_forces.ravel().tolist(),
                "stress_reference_ev_per_a3": np.asarray(stress, dtype=float).tolist() if has_stress else None,
                "stress_predicted_ev_per_a3": predicted_stress.tolist(),
            }
        )
    return rows


def mace_errors_of(rows: Sequence[dict], *, model: str, level: str) -> list[FrameErrors]:
    """Energy (meV/atom), force (eV/Å) and stress (eV/Å³) errors of :func:`mace_frame_predictions` rows."""
    out = [
        _errors(
            model,
            level,
            "energy",
            "meV/atom",
            1000.0 * np.array([r["energy_predicted_ev_per_atom"] for r in rows]),
            1000.0 * np.array([r["energy_reference_ev_per_atom"] for r in rows]),
        ),
        _errors(
            model,
            level,
            "forces",
            "eV/Å",
            np.concatenate([r["forces_predicted_ev_per_a"] for r in rows]),
            np.concatenate([r["forces_reference_ev_per_a"] for r in rows]),
        ),
    ]
    stressed = [r for r in rows if r["stress_reference_ev_per_a3"] is not None]
    if stressed:
        out.append(
            _errors(
                model,
                level,
                "stress",
                "eV/Å³",
                np.concatenate([r["stress_predicted_ev_per_a3"] for r in stressed]),
                np.concatenate([r["stress_reference_ev_per_a3"] for r in stressed]),
            )
        )
    return out


def gap_errors(predicted_ev: np.ndarray, reference_ev: np.ndarray, *, model: str, level: str) -> FrameErrors:
    """Gap errors (eV) of an ensemble's mean prediction against DFT gaps of the same frames."""
    return _errors(model, level, "gap", "eV", predicted_ev, reference_ev)


def errors_table(errors: Sequence[FrameErrors]) -> pd.DataFrame:
    """The errors as a table (one row per model, level and quantity)."""
    return pd.DataFrame([e.__dict__ for e in errors])


def evaluate_on_frames(
    store: Store,
    *,
    cheap_level: str,
    model_id: str | None,
    ensemble_id: str | None,
    set_name: str = HELD_OUT_SET,
    flagged: bool = False,
) -> list[FrameErrors]:
    """Errors of MACE ``model_id`` and GNN ``ensemble_id`` (either may be None) on the labelled frames of ``set_name``.

    MACE against ``cheap_level`` (energy, forces, stress); the ensemble against the level its gaps are at and,
    when it was fine-tuned and its cheap-stage models are kept, its cheap-stage members against the cheap level
    (model ``gnn <id> (cheap stage)``). Measures only what is labelled so far; an empty list if nothing is.
    ``flagged``: the frames marked held out count as members of ``set_name`` (:func:`labelled_frames`).
    """
    errors: list[FrameErrors] = []
    mlip_rows: list[dict] = []
    gnn_rows: list[dict] = []
    rows = labelled_frames(store, cheap_level, set_name=set_name, flagged=flagged)
    rows = rows[rows["energy_ev"].notna() & rows["forces_ev_per_a"].notna()]
    if model_id is not None and len(rows):
        atoms = store.load_structures(rows["structure_hash"].tolist())
        stresses = [None if s is None or (isinstance(s, float) and s != s) else s for s in rows["stress_ev_per_a3"]]
        predictions = mace_frame_predictions(
            load_mace_calculator(mace_model_path(store, model_id), device="cpu", dtype="float64"),
            [atoms[h] for h in rows["structure_hash"]],
            rows["energy_ev"].tolist(),
            rows["forces_ev_per_a"].tolist(),
            stresses,
        )
        errors += mace_errors_of(predictions, model=f"mace {model_id}", level=cheap_level)
        mlip_rows += [
            {"model_id": model_id, "evaluated_on": cheap_level, "level": cheap_level, "structure_hash": h, **row}
            for h, row in zip(rows["structure_hash"], predictions, strict=True)
        ]
    if ensemble_id is not None:
        gap_level = ensemble_level(store, ensemble_id)
        member_ids = store.query(
            "SELECT model_id FROM gnn_models WHERE ensemble_id = ? ORDER BY ensemble_index", [ensemble_id]
        )["model_id"].tolist()
        final_stage = "cheap" if gap_level == cheap_level else "high"
        stages = [(gap_level, ensemble_model_dirs(store, ensemble_id), f"gnn {ensemble_id}", final_stage)]
        if gap_level != cheap_level:
            cheap_dirs = ensemble_model_dirs(store, ensemble_id, stage="cheap")
            if cheap_dirs:
                stages.append((cheap_level, cheap_dirs, f"gnn {ensemble_id} (cheap stage)", "cheap"))
        for level, directories, name, stage in stages:
            frames = labelled_frames(store, level, set_name=set_name, flagged=flagged)
            frames = frames[frames["gap_ev"].notna()]
            if not len(frames):
                continue
            atoms = store.load_structures(frames["structure_hash"].tolist())
            per_model = predict_gaps_per_model([atoms[h] for h in frames["structure_hash"]], load_ensemble(directories))
            reference = frames["gap_ev"].to_numpy()
            errors.append(gap_errors(per_model.mean(axis=0), reference, model=name, level=level))
            for member, gaps in zip(member_ids, per_model, strict=True):
                gnn_rows += [
                    {
                        "model_id": member,
                        "stage": stage,
                        "structure_hash": h,
                        "level": level,
                        "reference_ev": float(r),
                        "predicted_ev": float(g),
                    }
                    for h, r, g in zip(frames["structure_hash"], reference, gaps, strict=True)
                ]
    _store_errors(store, errors, set_name, mlip_rows=mlip_rows, gnn_rows=gnn_rows)
    return errors


def evaluate_newest_models(store: Store, config, *, ensemble_id: str | None) -> list[FrameErrors]:  # RunConfig
    """The newest MACE and gap ensemble ``ensemble_id`` measured on the config's held-out MD frames; stored.

    :func:`evaluate_on_frames` on ``active_learning.heldout_set`` (the frames marked held out count); without a MACE
    model, the gap errors only. An empty list when none of those frames is labelled (a project without held-out frames).
    """
    from capml_core.errors import NotComputedError
    from capml_core.store.queries import latest_model

    try:
        model_id: str | None = latest_model(store)[0]
    except NotComputedError:
        model_id = None
    return evaluate_on_frames(
        store,
        cheap_level=config.mlip.level or config.reference.cheap_level,
        model_id=model_id,
        ensemble_id=ensemble_id,
        set_name=config.active_learning.heldout_set,
        flagged=True,
    )


def _store_errors(
    store: Store,
    errors: Sequence[FrameErrors],
    set_name: str,
    *,
    mlip_rows: Sequence[dict] = (),
    gnn_rows: Sequence[dict] = (),
) -> None:
    """Keep what was measured, a re-measurement replacing.

    ``heldout_errors``: one row per model, level, quantity; the per-frame predictions: ``mlip_predictions`` and
    ``gnn_predictions`` with split = ``set_name`` (the dashboard's parity on the held-out MD frames).
    """
    if not errors:
        return
    with store.write() as writer:
        if mlip_rows:
            writer.replace_split_predictions("mlip_predictions", set_name, mlip_rows)
        if gnn_rows:
            writer.replace_split_predictions("gnn_predictions", set_name, gnn_rows)
        for e in errors:
            writer.delete_rows(
                "heldout_errors", {"model": e.model, "level": e.level, "quantity": e.quantity, "set_name": set_name}
            )
        writer.add_rows("heldout_errors", [{**e.__dict__, "set_name": set_name} for e in errors])


def stored_errors(store: Store, *, mace_model_id: str | None, ensemble_id: str | None) -> pd.DataFrame:
    """The stored held-out errors of a MACE model and a gap ensemble (its cheap stage included)."""
    names = [n for n in (mace_model_id and f"mace {mace_model_id}", ensemble_id and f"gnn {ensemble_id}") if n]
    if ensemble_id:
        names.append(f"gnn {ensemble_id} (cheap stage)")
    return store.query(
        "SELECT * FROM heldout_errors WHERE model IN (SELECT unnest(?)) ORDER BY model, quantity", [names]
    )


def require_errors(errors: Sequence[FrameErrors], set_name: str) -> Sequence[FrameErrors]:
    """``errors`` unchanged; a clear error when no frame of ``set_name`` is labelled yet."""
    if not errors:
        raise CapmlError(f"no frame of the selection {set_name!r} is labelled yet (capml label --set {set_name}@LEVEL)")
    return errors
