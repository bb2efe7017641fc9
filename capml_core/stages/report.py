"""What a project found and how far to trust it: one report from the store alone (``capml report``).

Reads, never computes: the newest gap ensemble used by the bandgaps stage and the MACE model of its MD runs;
their errors on the test splits and on the held-out MD frames (``heldout_errors``, written by ``capml evaluate``
and ``capml al record``); Eg(0) of the cubic and of the lowest structure; Eg(T, x) with uncertainty, ΔEg/Eg and
the DFT checks of the same frames and their verdicts; the independent estimates; the stabilisation temperature of
each composition from the phonon verdicts; the comparison with the published gaps; the active-learning rounds; the
compute it took (CPU hours of DFT, MD and training stored with the results).
:func:`project_report` returns one JSON-ready dict (keys listed in docs/report.md); :func:`report_tables` the
same as tables. ``flags`` lists every result a user must not take at face value.
"""

from __future__ import annotations

import json
import math
from typing import Any

import numpy as np
import pandas as pd

from capml_core.config.stage_sections import GapsSection
from capml_core.errors import NotComputedError
from capml_core.physics.stability import stabilisation_temperatures
from capml_core.stages.bandgaps import compare_with_published
from capml_core.stages.estimates import ESTIMATE_METHODS
from capml_core.stages.heldout import stored_errors
from capml_core.stages.md_frames import HELD_OUT_SET
from capml_core.store.database import Store
from capml_core.tables import ResultTable, table

#: A checked Eg(T) whose verdict is one of these is flagged.
FLAGGED_VERDICTS = ("disagrees", "too noisy")


def _number(value: Any) -> float | None:
    """A finite float, or None (for JSON)."""
    if value is None:
        return None
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None


def _relative(gap_ev: Any, eg0_ev: float | None) -> float | None:
    """(Eg − Eg(0)) / Eg(0), or None where either is missing."""
    gap = _number(gap_ev)
    return None if gap is None or not eg0_ev else (gap - eg0_ev) / eg0_ev


def _composition_key(x: float) -> str:
    return f"{x:g}"


def stabilisation(verdicts: pd.DataFrame) -> dict[str, dict[str, Any]]:
    """Per composition (as text): the stabilisation temperature, and, where there is none, why.

    The temperature is :func:`capml_core.physics.stability.stabilisation_temperatures`'s; ``verdicts``:
    composition_x, temperature_k, stable, reason of each MD run.
    """
    onsets = stabilisation_temperatures(
        (float(r.composition_x), float(r.temperature_k), bool(r.stable)) for r in verdicts.itertuples(index=False)
    )
    out: dict[str, dict[str, Any]] = {}
    for x, onset in onsets.items():
        reason = None
        if onset is None:
            of = verdicts[np.isclose(verdicts["composition_x"], x)].sort_values("temperature_k")
            hottest = of[~of["stable"].astype(bool)].iloc[-1]
            reason = f"not stabilised by {of['temperature_k'].max():g} K: {hottest['reason']}"
        out[_composition_key(x)] = {"temperature_k": onset, "reason": reason}
    return out


def phonon_gate(verdicts: pd.DataFrame) -> dict[str, Any]:
    """Whether the phonon gate was on and how the MD runs' stability verdicts came out.

    ``verdicts``: stable, passes_gate and config_json (the run configuration that judged it) of each MD run.
    ``gate``: ``phonons.gate`` of the judging run's configuration; where no configuration is stored, read off the
    verdicts (a run judged not stable that passes had the gate off; one that does not, on; None: cannot tell).
    """
    stable = verdicts["stable"].astype(bool)
    passes = verdicts["passes_gate"].astype(bool)
    gates = set()
    for text in verdicts.get("config_json", pd.Series(dtype=object)).dropna().unique():
        try:
            gates.add(bool(json.loads(text).get("phonons", {}).get("gate", True)))
        except (ValueError, AttributeError):
            continue
    if len(gates) == 1:
        gate = gates.pop()
    elif (~stable & passes).any():
        gate = False
    elif (~stable & ~passes).any():
        gate = True
    else:
        gate = None
    return {
        "gate": gate,
        "n_runs": int(len(verdicts)),
        "n_stable": int(stable.sum()),
        "n_not_stable": int((~stable).sum()),
        "n_not_stable_averaged": int((~stable & passes).sum()),
    }


def _gap_errors_by_composition(store: Store, ensemble_id: str) -> list[dict[str, Any]]:
    """The gap model's errors (eV, model − DFT) on the held-out MD frames, per composition and level.

    Every frame it was measured on counts once, whichever held-out sets hold it: where in composition it is weak.
    """
    rows = store.query(
        """WITH frames AS (
               SELECT p.structure_hash, p.level, p.stage, avg(p.predicted_ev) AS predicted,
                      any_value(p.reference_ev) AS reference
               FROM gnn_predictions p
               WHERE p.model_id IN (SELECT model_id FROM gnn_models WHERE ensemble_id = ?)
                 AND p.split IN (SELECT DISTINCT set_name FROM heldout_errors)
               GROUP BY p.structure_hash, p.level, p.stage)
           SELECT s.composition_x, f.level, count(*) AS n, avg(abs(f.predicted - f.reference)) AS mae,
                  avg(f.predicted - f.reference) AS mean_error
           FROM frames f JOIN structures s USING (structure_hash)
           GROUP BY s.composition_x, f.level ORDER BY f.level, s.composition_x""",
        [ensemble_id],
    )
    return [
        {
            "composition_x": float(r.composition_x),
            "level": r.level,
            "n": int(r.n),
            "mae_ev": _number(r.mae),
            "mean_error_ev": _number(r.mean_error),
        }
        for r in rows.itertuples(index=False)
    ]


def _flag_unchecked_beside_disagreeing(gap_rows: list[dict[str, Any]]) -> list[str]:
    """Flag the unchecked Eg(T) of a composition whose DFT check disagrees; one sentence per such composition.

    The same model on the same composition: nothing says its other temperatures are better than the checked one.
    """
    by_x: dict[float, list[dict[str, Any]]] = {}
    for row in gap_rows:
        by_x.setdefault(round(row["composition_x"], 6), []).append(row)
    flags = []
    for x, rows in sorted(by_x.items()):
        against = [r for r in rows if r["dft_verdict"] == "disagrees"]
        unchecked = [r for r in rows if r["dft_verdict"] is None]
        if not against or not unchecked:
            continue
        for r in unchecked:
            r["flagged"] = True
        checks = ", ".join(
            f"{r['temperature_k']:g} K {r['dft_difference_ev']:+.3f} ± {r['dft_difference_error_ev']:.3f} eV"
            for r in against
        )
        temperatures = ", ".join(f"{r['temperature_k']:g}" for r in unchecked)
        flags.append(
            f"x = {x:g}: the model disagrees with DFT on this composition's checked frames ({checks}), so its "
            f"unchecked Eg(T) at {temperatures} K is flagged too"
        )
    return flags


def dft_check_summary(gap_rows: list[dict[str, Any]], tolerance_ev: float) -> dict[str, Any] | None:
    """The DFT checks of Eg(T) together: verdict counts and model − DFT over the checked runs (eV), or None.

    ``rms_difference_ev`` is what an unchecked Eg(T) of the same model may be off by beyond its ± (statistical error
    and ensemble spread only): the model's systematic error where it is used, measured by DFT.
    """
    checked = [g for g in gap_rows if g["dft_verdict"] and g["dft_difference_ev"] is not None]
    if not checked:
        return None
    differences = np.array([g["dft_difference_ev"] for g in checked])
    verdicts = [g["dft_verdict"] for g in checked]
    return {
        "n": len(checked),
        "agrees": verdicts.count("agrees"),
        "disagrees": verdicts.count("disagrees"),
        "too_noisy": verdicts.count("too noisy"),
        "tolerance_ev": tolerance_ev,
        "within_tolerance": int((np.abs(differences) <= tolerance_ev).sum()),
        "mean_difference_ev": float(differences.mean()),
        "rms_difference_ev": float(np.sqrt((differences**2).mean())),
        "max_abs_difference_ev": float(np.abs(differences).max()),
    }


def _models(store: Store, ensemble_id: str, mace_model_id: str | None) -> dict[str, Any]:
    levels = store.query(
        """SELECT DISTINCT m.architecture, m.cheap_level, m.high_level FROM gnn_models m WHERE m.ensemble_id = ?""",
        [ensemble_id],
    )
    cheap, high = levels["cheap_level"].iloc[0], levels["high_level"].iloc[0]
    metrics = store.query(
        """SELECT stage, avg(mae_ev) AS mae, max(n) AS n FROM gnn_metrics
           WHERE model_id IN (SELECT model_id FROM gnn_models WHERE ensemble_id = ?) AND split = 'test'
           GROUP BY stage""",
        [ensemble_id],
    ).set_index("stage")
    every_set = stored_errors(store, mace_model_id=mace_model_id, ensemble_id=ensemble_id)
    heldout = every_set[every_set["set_name"] == HELD_OUT_SET]  # the yardstick of the md_frames_* numbers
    gnn: dict[str, Any] = {}
    for stage, level in (("cheap", cheap), ("high", high)):
        if level is None or (isinstance(level, float) and math.isnan(level)):
            continue
        name = f"gnn {ensemble_id}" + (" (cheap stage)" if stage == "cheap" and high else "")
        frames = heldout[(heldout["model"] == name) & (heldout["quantity"] == "gap") & (heldout["level"] == level)]
        gnn[level] = {
            "stage": stage,
            "test_mae_ev": _number(metrics["mae"].get(stage)) if stage in metrics.index else None,
            "n_test": int(metrics["n"].get(stage)) if stage in metrics.index else 0,
            "md_frames_mae_ev": _number(frames["mae"].iloc[0]) if len(frames) else None,
            "md_frames_mean_error_ev": _number(frames["mean_error"].iloc[0]) if len(frames) else None,
            "n_md_frames": int(frames["n"].iloc[0]) if len(frames) else 0,
        }
    mace: dict[str, Any] = {"model_id": mace_model_id}
    if mace_model_id:
        test = store.query(
            "SELECT quantity, mae FROM mlip_metrics WHERE model_id = ? AND split = 'test'", [mace_model_id]
        ).set_index("quantity")["mae"]
        mine = heldout[heldout["model"] == f"mace {mace_model_id}"].set_index("quantity")
        mace.update(
            {
                "test_force_mae_ev_per_a": _number(test.get("forces")),
                "test_energy_mae_mev_per_atom": _number(1000.0 * test["energy"]) if "energy" in test else None,
                "md_frames_force_mae_ev_per_a": _number(mine["mae"].get("forces")) if "forces" in mine.index else None,
                "md_frames_energy_mae_mev_per_atom": _number(mine["mae"].get("energy"))
                if "energy" in mine.index
                else None,
                "n_md_frames": int(mine["n"].get("energy", 0)) if "energy" in mine.index else 0,
            }
        )
    return {
        "gnn": gnn,
        "gnn_by_composition": _gap_errors_by_composition(store, ensemble_id),
        "gap_ensemble_id": ensemble_id,
        "gap_architecture": str(levels["architecture"].iloc[0]),
        "mace": mace,
        "heldout_sets": [
            {
                "set_name": r.set_name,
                "model": r.model,
                "level": r.level,
                "quantity": r.quantity,
                "unit": r.unit,
                "n": int(r.n),
                "mae": _number(r.mae),
                "mean_error": _number(r.mean_error),
            }
            for r in every_set.sort_values(["set_name", "model", "quantity"]).itertuples(index=False)
        ],
    }


def _compute(store: Store) -> dict[str, Any]:
    """CPU hours the stored results took: each DFT label and MD run ran on one core, training from its own clock.

    DFT labels imported from shipped files (``source`` a file name) were computed elsewhere: counted apart, with
    the time their files record.
    """
    dft = store.query(
        """SELECT level, CASE WHEN source LIKE '%.extxyz' THEN 'imported' ELSE 'computed here' END AS origin,
                  count(*) AS n, count(*) FILTER (WHERE status <> 'ok') AS failed,
                  coalesce(sum(wall_time_s), 0) / 3600 AS cpu_h
           FROM labels GROUP BY ALL ORDER BY origin, level"""
    )
    md = store.query("SELECT count(*) AS n, coalesce(sum(wall_time_s), 0) / 3600 AS h FROM md_runs")
    mace = store.query("SELECT coalesce(sum(train_seconds), 0) / 3600 AS h FROM mlip_models WHERE kind <> 'foundation'")
    stages = store.query(
        """SELECT stage, coalesce(sum(epoch(finished_at - started_at)), 0) / 3600 AS h FROM stages
           WHERE stage IN ('gnn', 'disorder') GROUP BY stage"""
    ).set_index("stage")["h"]
    rows = [
        {"level": r.level, "origin": r.origin, "n": int(r.n), "failed": int(r.failed), "cpu_h": float(r.cpu_h)}
        for r in dft.itertuples(index=False)
    ]
    numbers = {
        "dft": rows,
        "md_runs": int(md["n"].iloc[0]),
        "md_cpu_h": float(md["h"].iloc[0]),
        "mace_training_h": float(mace["h"].iloc[0]),
        "gap_model_training_h": float(stages.get("gnn", 0.0)),
        "disorder_scan_h": float(stages.get("disorder", 0.0)),
    }
    numbers["total_cpu_h"] = (
        sum(r["cpu_h"] for r in rows if r["origin"] == "computed here")
        + numbers["md_cpu_h"]
        + numbers["mace_training_h"]
        + numbers["gap_model_training_h"]
        + numbers["disorder_scan_h"]
    )
    return numbers


def project_report(store: Store) -> dict[str, Any]:
    """The report of one project (see module doc); JSON-ready (None for what was not computed).

    Raises
    ------
    NotComputedError
        No band gaps in the store yet (run the pipeline, or ``capml gaps``).
    """
    with store.batch():  # a dozen reads, one connection
        return _project_report(store)


def _project_report(store: Store) -> dict[str, Any]:
    results = store.bandgap_results()
    static, thermal = results["static"], results["thermal"]
    if static.empty:
        raise NotComputedError(f"{store.path}: no band gaps yet: run the pipeline (capml run) or capml gaps")
    ensemble_id = static["ensemble_id"].iloc[0]
    runs = store.query(
        "SELECT md_id, model_id, status, problems FROM md_runs WHERE md_id IN (SELECT unnest(?))",
        [thermal["md_id"].tolist()],
    )
    mace_model_id = runs["model_id"].iloc[0] if len(runs) else None
    md_problems = {r.md_id: r.problems for r in runs.itertuples(index=False) if r.status != "ok" and r.problems}
    checks = results["checks"].set_index("md_id") if len(results["checks"]) else pd.DataFrame()
    lowest = (
        results["lowest"].set_index(results["lowest"]["composition_x"].round(6)) if len(results["lowest"]) else None
    )
    flags: list[str] = []
    static_rows = []
    for r in static.itertuples(index=False):
        x = round(float(r.composition_x), 6)
        static_rows.append(
            {
                "composition_x": float(r.composition_x),
                "cubic_gap_ev": _number(r.gap_ev),
                "cubic_gap_spread_ev": _number(r.gap_std_ev),
                "cubic_dft_gap_ev": _number(r.reference_gap_ev),
                "lowest_gap_ev": _number(lowest.loc[x, "gap_ev"]) if lowest is not None and x in lowest.index else None,
                "lowest_source": str(lowest.loc[x, "structure_source"])
                if lowest is not None and x in lowest.index
                else None,
            }
        )
    tolerance_ev = (
        float(checks["tolerance_ev"].iloc[0])
        if len(checks)
        else GapsSection.model_fields["dft_check_tolerance_ev"].default
    )
    dft_eg0 = {round(s["composition_x"], 6): s["cubic_dft_gap_ev"] for s in static_rows if s["cubic_dft_gap_ev"]}
    for s in static_rows:  # the model's own Eg(0) enters ΔEg/Eg: say when it is off the DFT value of the same cell
        both = s["cubic_dft_gap_ev"] is not None and s["cubic_gap_ev"] is not None
        error = s["cubic_gap_ev"] - s["cubic_dft_gap_ev"] if both else None
        s["cubic_model_minus_dft_ev"] = error
        if error is not None and abs(error) > tolerance_ev:
            flags.append(
                f"x = {s['composition_x']:g}: the model's cubic Eg(0) {s['cubic_gap_ev']:.3f} eV is {error:+.3f} eV "
                f"off DFT's {s['cubic_dft_gap_ev']:.3f} eV: read ΔEg/Eg against the DFT Eg(0)"
            )
    gap_rows = []
    for r in thermal.itertuples(index=False):
        check = checks.loc[r.md_id] if len(checks) and r.md_id in checks.index else None
        eg0 = dft_eg0.get(round(float(r.composition_x), 6))
        verdict = None if check is None else str(check["verdict"])
        averaged = _number(r.mean_gap_ev) is not None
        equilibrated = None if not averaged or pd.isna(getattr(r, "equilibrated", None)) else bool(r.equilibrated)
        unhealthy = md_problems.get(r.md_id)  # the MD itself: drift, contacts outside MACE's training data
        flagged = bool(verdict in FLAGGED_VERDICTS or equilibrated is False or not r.passes_gate or unhealthy)
        row = {
            "composition_x": float(r.composition_x),
            "temperature_k": float(r.temperature_k),
            "gap_ev": _number(r.mean_gap_ev),
            "error_ev": _number(r.error_ev),
            "relative_change": _number(r.relative_change),
            "relative_error": _number(r.relative_error),
            "relative_change_lowest": _number(getattr(r, "lowest_relative_change", None)),
            "dft_eg0_ev": eg0,
            "relative_change_dft_eg0": _relative(r.mean_gap_ev, eg0),
            "relative_error_dft_eg0": None if eg0 is None else _number(r.error_ev / eg0),
            "n_effective": _number(getattr(r, "n_effective", None)),
            "equilibrated": equilibrated,
            "passes_gate": bool(r.passes_gate),
            "dft_gap_ev": None if check is None else _number(check["dft_gap_ev"]),
            "dft_error_ev": None if check is None else _number(check["dft_error_ev"]),
            "model_gap_same_frames_ev": None if check is None else _number(check["model_gap_ev"]),
            "dft_difference_ev": None if check is None else _number(check["difference_ev"]),
            "dft_difference_error_ev": None if check is None else _number(check["difference_error_ev"]),
            "n_dft_frames": 0 if check is None else int(check["n_frames"]),
            "dft_relative_change": None if check is None else _relative(check["dft_gap_ev"], eg0),
            "dft_relative_error": None if check is None or eg0 is None else _number(check["dft_error_ev"] / eg0),
            "dft_verdict": verdict,
            "flagged": flagged,
            "reason": r.reason,
        }
        gap_rows.append(row)
        where = f"x = {r.composition_x:g}, {r.temperature_k:g} K"
        if verdict in FLAGGED_VERDICTS:
            finding = (
                "the model disagrees with DFT on the same frames"
                if verdict == "disagrees"
                else f"the DFT check on the same frames cannot decide ({verdict})"
            )
            flags.append(
                f"{where}: {finding} (model − DFT "
                f"{row['dft_difference_ev']:+.3f} ± {row['dft_difference_error_ev']:.3f} eV)"
            )
        if equilibrated is False:
            flags.append(f"{where}: not equilibrated ({r.reason})")
        if not r.passes_gate:
            flags.append(f"{where}: dropped by the phonon gate ({r.reason})")
        if unhealthy:
            flags.append(f"{where}: MD health: {unhealthy}")
    flags += _flag_unchecked_beside_disagreeing(gap_rows)
    if not len(checks):
        flags.append("no Eg(T) was checked with DFT on the MD's frames (gaps.dft_check)")
    check_summary = dft_check_summary(gap_rows, tolerance_ev)
    if check_summary and check_summary["n"] >= 2 and check_summary["rms_difference_ev"] > tolerance_ev:
        flags.append(
            f"over the {check_summary['n']} DFT-checked Eg(T), model − DFT is "
            f"{check_summary['rms_difference_ev']:.3f} eV rms (tolerance {tolerance_ev:g} eV): the Eg(T) of a run "
            "without a check may be off by about as much beyond its ± (statistical error and ensemble spread only)"
        )
    estimates = [
        {
            "composition_x": float(e.composition_x),
            "temperature_k": float(e.temperature_k),
            "method": e.method,
            "imaginary_treatment": e.imaginary_treatment,
            "gap_ev": _number(e.gap_ev),
            "error_ev": _number(e.error_ev),
            "relative_change": _number(e.relative_change),
            "dft_gap_ev": _number(e.dft_gap_ev),
        }
        for e in results["estimates"].itertuples(index=False)
    ]
    verdicts = store.query(
        """SELECT m.composition_x, m.temperature_k, p.stable, p.passes_gate, p.reason, r.config_json
           FROM phonon_anharmonic p JOIN md_runs m USING (md_id) LEFT JOIN runs r ON r.run_id = p.run_id
           WHERE m.model_id = ?""",
        [mace_model_id],
    )
    stabilised = stabilisation(verdicts) if len(verdicts) else {}
    gate = phonon_gate(verdicts)
    if gate["n_not_stable_averaged"]:
        flags.append(
            f"the phonon gate is off: {gate['n_not_stable_averaged']} of {gate['n_runs']} MD runs judged not "
            "dynamically stable feed Eg(T) (docs/dynamics.md)"
        )
    ours = pd.concat(
        [
            pd.DataFrame(
                {
                    "composition_x": static["composition_x"],
                    "temperature_k": 0.0,
                    "gap_ev": static["gap_ev"],
                    "error_ev": static["gap_std_ev"],
                }
            ),
            thermal.loc[thermal["mean_gap_ev"].notna(), ["composition_x", "temperature_k"]].assign(
                gap_ev=thermal["mean_gap_ev"], error_ev=thermal["error_ev"]
            ),
        ],
        ignore_index=True,
    )
    published = []
    if len(results["published"]):
        compared = compare_with_published(ours, results["published"])
        for c in compared.itertuples(index=False):
            published.append(
                {
                    "kind": c.kind,
                    "source": c.source,
                    "composition_x": float(c.composition_x),
                    "temperature_k": float(c.temperature_k),
                    "gap_ev": _number(c.gap_ev),
                    "uncertainty_ev": _number(c.uncertainty_ev),
                    "capml_gap_ev": _number(c.capml_gap_ev),
                    "difference_ev": _number(c.difference_ev),
                    "difference_error_ev": _number(c.difference_error_ev),
                    "outside": None if pd.isna(c.outside) else bool(c.outside),
                }
            )
        outside = [p for p in published if p["outside"]]
        if outside:
            flags.append(
                f"{len(outside)} of {sum(p['capml_gap_ev'] is not None for p in published)} published gaps lie "
                "outside capml's value by more than twice the combined uncertainty"
            )
    models = _models(store, ensemble_id, mace_model_id)
    for level, numbers in models["gnn"].items():
        if numbers["md_frames_mae_ev"] is None:
            flags.append(f"the gap model's error on held-out MD frames at {level} is not measured (capml evaluate)")
    rounds = store.query("SELECT * EXCLUDE (run_id, created_at) FROM active_learning_rounds ORDER BY round")
    return {
        "project": str(store.project_dir),
        "models": models,
        "static": static_rows,
        "gaps": gap_rows,
        "dft_checks": check_summary,
        "estimates": estimates,
        "stabilisation_k": {x: v["temperature_k"] for x, v in stabilised.items()},
        "stabilisation_reasons": {x: v["reason"] for x, v in stabilised.items() if v["reason"]},
        "phonon_gate": gate,
        "published": published,
        "active_learning_rounds": [
            {k: (_number(v) if isinstance(v, (float, np.floating)) else v) for k, v in row.items()}
            for row in rounds.to_dict("records")
        ],
        "compute": _compute(store),
        "flags": flags,
    }


def _fmt(value: float | None, digits: int = 3, *, percent: bool = False, signed: bool = False) -> str:
    if value is None:
        return "-"
    value = 100.0 * value if percent else value
    text = f"{value:+.{digits}f}" if signed else f"{value:.{digits}f}"
    return text + (" %" if percent else "")


def gate_summary(gate: dict[str, Any] | None) -> str:
    """'phonon gate off: 4 of 6 runs stable, 2 not stable averaged' and the like."""
    if not gate or not gate["n_runs"]:
        return "no verdicts"
    state = {True: "on", False: "off", None: "on or off: every run stable"}[gate["gate"]]
    text = f"phonon gate {state}: {gate['n_stable']} of {gate['n_runs']} MD runs stable"
    if gate["n_not_stable_averaged"]:
        text += f", {gate['n_not_stable_averaged']} not stable averaged anyway"
    return text


def dft_checks_sentence(summary: dict[str, Any] | None, n_gaps: int) -> str:
    """'5 of 54 averages checked: 3 agree, 1 disagree, 1 too noisy; model − DFT 0.075 eV rms ...' (or none)."""
    if not summary:
        return f"none of {n_gaps} averages checked"
    counts = ", ".join(
        f"{summary[key]} {word}"
        for key, word in (("agrees", "agree"), ("disagrees", "disagree"), ("too_noisy", "too noisy"))
        if summary[key]
    )
    return (
        f"{summary['n']} of {n_gaps} averages checked: {counts}; model − DFT {summary['rms_difference_ev']:.3f} eV "
        f"rms over them (largest {summary['max_abs_difference_ev']:.3f} eV), {summary['within_tolerance']} within "
        f"{summary['tolerance_ev']:g} eV"
    )


def report_tables(report: dict[str, Any]) -> list[ResultTable]:
    """The report as tables: models, Eg(0), Eg(T) with its DFT checks, estimates, stabilisation, flags."""
    models = report["models"]
    model_rows = [
        (
            f"gap model ({models['gap_architecture']}) at {level}",
            _fmt(n["test_mae_ev"]),
            _fmt(n["md_frames_mae_ev"]),
            _fmt(n["md_frames_mean_error_ev"], signed=True),
            f"{n['n_test']} / {n['n_md_frames']}",
        )
        for level, n in models["gnn"].items()
    ]
    mace = models["mace"]
    if mace.get("model_id"):
        model_rows.append(
            (
                f"MACE {mace['model_id']} forces (eV/Å)",
                _fmt(mace.get("test_force_mae_ev_per_a")),
                _fmt(mace.get("md_frames_force_mae_ev_per_a")),
                "-",
                f"- / {mace.get('n_md_frames', 0)}",
            )
        )
        model_rows.append(
            (
                "MACE energy (meV/atom)",
                _fmt(mace.get("test_energy_mae_mev_per_atom"), 1),
                _fmt(mace.get("md_frames_energy_mae_mev_per_atom"), 1),
                "-",
                "",
            )
        )
    tables = [
        table(
            f"models: test split and held-out MD frames ({HELD_OUT_SET}; MAE)",
            ("model", "test", "MD frames", "mean error", "n"),
            model_rows,
        ),
        table(
            "Eg(0): cubic structure (the paper's definition) and lowest structure found",
            ("x", "cubic (eV)", "cubic, DFT (eV)", "lowest (eV)"),
            [
                (
                    f"{s['composition_x']:.4g}",
                    _fmt(s["cubic_gap_ev"]),
                    _fmt(s["cubic_dft_gap_ev"]),
                    _fmt(s["lowest_gap_ev"]),
                )
                for s in report["static"]
            ],
        ),
    ]
    other_sets = [e for e in models.get("heldout_sets", []) if e["set_name"] != HELD_OUT_SET]
    if other_sets:  # e.g. the study's own MD frames: the models measured where they are used
        tables.insert(
            1,
            table(
                "models on other held-out MD frames (model - DFT)",
                ("frames", "model", "quantity", "n", "MAE", "mean error"),
                [
                    (
                        e["set_name"],
                        f"{e['model']} at {e['level']}",
                        f"{e['quantity']} ({e['unit']})",
                        str(e["n"]),
                        _fmt(e["mae"], 4),
                        _fmt(e["mean_error"], 4, signed=True),
                    )
                    for e in other_sets
                ],
            ),
        )
    by_composition = models.get("gnn_by_composition", [])
    if by_composition:
        tables.insert(
            2 if other_sets else 1,
            table(
                "gap model on every held-out MD frame, by composition (model - DFT, eV)",
                ("x", "level", "n", "MAE", "mean error"),
                [
                    (
                        f"{e['composition_x']:g}",
                        e["level"],
                        str(e["n"]),
                        _fmt(e["mae_ev"]),
                        _fmt(e["mean_error_ev"], signed=True),
                    )
                    for e in by_composition
                ],
            ),
        )
    gap_rows, flagged = [], []
    for i, g in enumerate(report["gaps"]):
        gap_rows.append(
            (
                f"{g['composition_x']:.4g}",
                f"{g['temperature_k']:g}",
                f"{_fmt(g['gap_ev'])} ± {_fmt(g['error_ev'])}",
                f"{_fmt(g['relative_change'], 1, percent=True, signed=True)}",
                f"{_fmt(g.get('relative_change_dft_eg0'), 1, percent=True, signed=True)}",
                "-"
                if g["dft_gap_ev"] is None
                else f"{_fmt(g['dft_gap_ev'])} ± {_fmt(g['dft_error_ev'])} ({g['n_dft_frames']})",
                f"{_fmt(g.get('dft_relative_change'), 1, percent=True, signed=True)}",
                "-" if g["dft_verdict"] is None else g["dft_verdict"],
                "flagged" if g["flagged"] else "",
            )
        )
        if g["flagged"]:
            flagged.append(i)
    tables.append(
        table(
            "Eg(T, x) with its DFT check on the same MD frames (ΔEg/Eg against the model's and DFT's cubic Eg(0))",
            ("x", "T (K)", "Eg (eV)", "ΔEg/Eg model", "ΔEg/Eg DFT Eg(0)", "DFT Eg (frames)", "DFT ΔEg/Eg", "check", ""),
            gap_rows,
            warnings=flagged,
        )
    )
    summary = report.get("dft_checks")  # absent from reports of older capml versions
    if summary:
        tables.append(
            table(
                "DFT checks of Eg(T) together (model − DFT over the checked runs, eV)",
                ("checked", "agree", "disagree", "too noisy", "within tolerance", "mean", "rms", "largest"),
                [
                    (
                        str(summary["n"]),
                        str(summary["agrees"]),
                        str(summary["disagrees"]),
                        str(summary["too_noisy"]),
                        f"{summary['within_tolerance']} (± {summary['tolerance_ev']:g})",
                        _fmt(summary["mean_difference_ev"], signed=True),
                        _fmt(summary["rms_difference_ev"]),
                        _fmt(summary["max_abs_difference_ev"]),
                    )
                ],
                warnings=[0] if summary["rms_difference_ev"] > summary["tolerance_ev"] else [],
            )
        )
    if report["estimates"]:
        tables.append(_estimates_table(report))
    if report["published"]:
        tables.append(_published_table(report["published"]))
    if report["stabilisation_k"]:
        tables.append(
            table(
                "dynamic stability: stabilisation temperature per composition ("
                + gate_summary(report.get("phonon_gate"))
                + ")",
                ("x", "stable from (K)", "reason"),
                [
                    (x, "-" if t is None else f"{t:g}", report["stabilisation_reasons"].get(x, ""))
                    for x, t in report["stabilisation_k"].items()
                ],
            )
        )
    if report.get("compute"):
        tables.append(_compute_table(report["compute"]))
    tables.append(
        table(
            "flags: results not to take at face value",
            ("flag",),
            [(f,) for f in report["flags"]] or [("none",)],
            warnings=range(len(report["flags"])),
        )
    )
    return tables


def _estimates_table(report: dict[str, Any]) -> ResultTable:
    """ΔEg/Eg per (x, T): the MD beside each independent estimate (imaginary modes at |ω| / left out)."""
    methods = [m for m in ESTIMATE_METHODS if any(e["method"] == m for e in report["estimates"])]
    with_dft = any(e["method"] == "special-displacement" and e["dft_gap_ev"] for e in report["estimates"])
    dft_eg0 = {round(s["composition_x"], 6): s["cubic_dft_gap_ev"] for s in report["static"]}
    md = {(round(g["composition_x"], 6), g["temperature_k"]): g["relative_change"] for g in report["gaps"]}
    cells: dict[tuple[float, float], dict[str, dict[str, float | None]]] = {}
    dft: dict[tuple[float, float], dict[str, float | None]] = {}
    for e in report["estimates"]:
        key = (round(e["composition_x"], 6), e["temperature_k"])
        cells.setdefault(key, {}).setdefault(e["method"], {})[e["imaginary_treatment"]] = e["relative_change"]
        eg0 = dft_eg0.get(key[0])
        if e["method"] == "special-displacement" and e["dft_gap_ev"] is not None and eg0:
            dft.setdefault(key, {})[e["imaginary_treatment"]] = e["dft_gap_ev"] / eg0 - 1.0

    def pair(values: dict[str, float | None]) -> str:
        shown = [_fmt(values.get(t), 1, percent=True, signed=True) for t in ("abs", "exclude") if t in values]
        shown += [_fmt(v, 1, percent=True, signed=True) for t, v in values.items() if t not in ("abs", "exclude")]
        return " / ".join(shown) if shown else "-"

    rows = []
    for key in sorted(cells):
        row = [f"{key[0]:g}", f"{key[1]:g}", _fmt(md.get(key), 1, percent=True, signed=True)]
        row += [pair(cells[key].get(m, {})) for m in methods]
        if with_dft:
            row.append(pair(dft.get(key, {})))
        rows.append(tuple(row))
    columns = ["x", "T (K)", "MD"] + methods + (["special-displacement, DFT"] if with_dft else [])
    return table(
        "independent estimates: ΔEg/Eg beside the MD's (model's cubic Eg(0); the special displacement in DFT and "
        "dft-phonon-sampled: DFT's; imaginary modes at |ω| / left out)",
        columns,
        rows,
    )


def _published_table(published: list[dict[str, Any]]) -> ResultTable:
    """The published gaps beside capml's at the same (x, T) (interpolated in x), outside 2σ marked."""
    rows, outside = [], []
    for i, p in enumerate(published):
        rows.append(
            (
                f"{p['source']} ({p['kind']})",
                f"{p['composition_x']:g}",
                f"{p['temperature_k']:g}",
                f"{_fmt(p['gap_ev'], 2)} ± {_fmt(p['uncertainty_ev'], 2)}",
                _fmt(p["capml_gap_ev"]),
                "-" if p["difference_ev"] is None else f"{p['difference_ev']:+.3f} ± {_fmt(p['difference_error_ev'])}",
                "outside 2σ" if p["outside"] else "",
            )
        )
        if p["outside"]:
            outside.append(i)
    return table(
        "published gaps beside capml's (capml at the same x and T, interpolated in x; Eg(0): the cubic cell)",
        ("source", "x", "T (K)", "published (eV)", "capml (eV)", "capml − published (eV)", ""),
        rows,
        warnings=outside,
    )


def _compute_table(compute: dict[str, Any]) -> ResultTable:
    """CPU hours per kind of work stored in the project."""
    rows = [
        (f"DFT {d['level']} ({d['origin']})", f"{d['n']} labels, {d['failed']} failed", f"{d['cpu_h']:.2f}")
        for d in compute["dft"]
    ]
    rows += [
        ("MACE MD", f"{compute['md_runs']} runs", f"{compute['md_cpu_h']:.2f}"),
        ("MACE training", "", f"{compute['mace_training_h']:.2f}"),
        ("gap model training (gnn stage)", "", f"{compute['gap_model_training_h']:.2f}"),
        ("disorder scan", "", f"{compute['disorder_scan_h']:.2f}"),
        ("total computed in this project", "", f"{compute['total_cpu_h']:.2f}"),
    ]
    return table(
        "compute: CPU hours of the stored results (one core per DFT label and MD run; imported labels were "
        "computed elsewhere)",
        ("work", "count", "CPU h"),
        rows,
    )
