"""Training of GNN band-gap ensembles: splits, hyperparameter search, learning curves, two stages."""

from __future__ import annotations

import logging
import uuid
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from capml_core.config.stage_sections import GNNSection
from capml_core.errors import NotComputedError
from capml_core.models.gap_head import KERNEL_ARCHITECTURE
from capml_core.models.gnn import (
    ARCHITECTURES,
    CHEAP_STAGE_DIRNAME,
    Metrics,
    Splits,
    TrainingSettings,
    compute_metrics,
    new_model,
    refit_gap_range,
    train,
)
from capml_core.models.graphs import build_graph
from capml_core.models.metrics import split_of
from capml_core.stages.gap_rows import split_rows
from capml_core.stages.kernel_training import (
    Descriptors,
    kernel_learning_points,
    kernel_validation_predictions,
    train_kernel_member,
)
from capml_core.store.database import Store

logger = logging.getLogger(__name__)


def level_split_hashes(store: Store, level: str, gnn: GNNSection) -> dict[str, tuple[list[str], np.ndarray]]:
    """Structures with a gap at ``level``, split into train/valid/test by structure hash: (hashes, gaps in eV).

    Raises
    ------
    NotComputedError
        Fewer than 10 labelled gaps.
    """
    frame = store.labelled_gaps(level)
    if len(frame) < 10:
        raise NotComputedError(f"only {len(frame)} structures with a {level} gap: label more before training")
    hashes = frame["structure_hash"].tolist()
    gaps = frame["gap_ev"].to_numpy()
    splits = [
        split_of(h, seed=gnn.split_seed, valid_fraction=gnn.valid_fraction, test_fraction=gnn.test_fraction)
        for h in hashes
    ]
    if "valid" not in splits and splits.count("train") > 1:  # a small level: early stopping needs a validation set
        moved = len(splits) - 1 - splits[::-1].index("train")
        splits[moved] = "valid"
        logger.warning(
            "%s: no structure fell in the validation split; %s moved there from training", level, hashes[moved]
        )
    out = {}
    for name in ("train", "valid", "test"):
        rows = [i for i, s in enumerate(splits) if s == name]
        out[name] = ([hashes[i] for i in rows], gaps[rows])
    return out


def level_splits(store: Store, level: str, gnn: GNNSection) -> Splits:
    """:func:`level_split_hashes` with the structures as graphs: (hashes, graphs, gaps) per split."""
    return with_graphs(store, level_split_hashes(store, level, gnn), gnn)


def with_graphs(store: Store, split_hashes: dict[str, tuple[list[str], np.ndarray]], gnn: GNNSection) -> Splits:
    """Splits of :func:`level_split_hashes` with the structures as graphs: (hashes, graphs, gaps) per split."""
    atoms = store.load_structures([h for hashes, _ in split_hashes.values() for h in hashes])
    return {
        name: (hashes, [build_graph(atoms[h], cutoff_a=gnn.cutoff_a) for h in hashes], gaps)
        for name, (hashes, gaps) in split_hashes.items()
    }


@dataclass(frozen=True)
class Trial:
    """One hyperparameter setting tried on the validation split."""

    architecture: str
    learning_rate: float | None  # None: a kernel head (no optimiser)
    batch_size: int | None
    valid: Metrics
    epochs_run: int


def search_hyperparameters(
    store: Store, gnn: GNNSection, *, level: str, seed: int = 0, search_id: str | None = None
) -> tuple[str, list[Trial]]:
    """Train every (architecture, learning rate, batch size) of the config's search on ``level``.

    Selection uses the validation split only (the test split stays unseen); every trial is recorded in
    ``gnn_trials`` with its rank. Returns the search id and the trials, best (lowest validation MAE) first.
    A ``search_id`` already in the store (a content key, :func:`gnn_stage_key`) returns its stored trials.
    """
    import itertools

    if search_id is not None:
        stored = store.query("SELECT * FROM gnn_trials WHERE search_id = ? ORDER BY rank", [search_id])
        if not stored.empty:
            logger.info("GNN search %s already done: %d trials reused", search_id, len(stored))
            return search_id, [
                Trial(
                    str(r.architecture),
                    None if pd.isna(r.learning_rate) else float(r.learning_rate),  # NULL: a kernel head
                    None if pd.isna(r.batch_size) else int(r.batch_size),
                    # gnn_trials keeps MAE and RMSE of the validation split only
                    Metrics(0, float("nan"), float(r.valid_mae_ev), float(r.valid_rmse_ev), float("nan")),
                    int(r.epochs_run),
                )
                for r in stored.itertuples()
            ]
    trials = []
    split_hashes = level_split_hashes(store, level, gnn)
    valid_gaps = split_hashes["valid"][1]
    if KERNEL_ARCHITECTURE in gnn.search_architectures:  # one trial: no learning rate or batch size to vary
        descriptors = Descriptors(store, focus_md_frames=gnn.md_frame_focus)
        predicted, cv_mae = kernel_validation_predictions(descriptors, split_hashes, seed=seed)
        valid = compute_metrics(valid_gaps, predicted)
        trials.append(Trial(KERNEL_ARCHITECTURE, None, None, valid, 0))
        logger.info("search %s: validation MAE %.4f eV (CV %.4f eV)", KERNEL_ARCHITECTURE, valid.mae_ev, cv_mae)
    networks = [name for name in gnn.search_architectures if name != KERNEL_ARCHITECTURE]
    data = with_graphs(store, split_hashes, gnn) if networks else {}
    _, train_graphs, train_gaps = data.get("train", (None, None, None))
    _, valid_graphs, _ = data.get("valid", (None, None, None))
    grid = itertools.product(networks, gnn.search_learning_rates, gnn.search_batch_sizes)
    for name, learning_rate, batch_size in grid:
        model = new_model(name, ARCHITECTURES[name], train_graphs, train_gaps, cutoff_a=gnn.cutoff_a, seed=seed)
        settings = TrainingSettings(gnn.epochs, batch_size, learning_rate, gnn.patience, seed)
        train(model, train_graphs, train_gaps, valid_graphs, valid_gaps, settings, stage="search")
        valid = compute_metrics(valid_gaps, model.predict_graphs(valid_graphs))
        trials.append(Trial(name, learning_rate, batch_size, valid, model.history["stages"][-1]["epochs_run"]))
        logger.info("search %s lr %g batch %d: validation MAE %.4f eV", name, learning_rate, batch_size, valid.mae_ev)
    trials.sort(key=lambda t: t.valid.mae_ev)
    search_id = search_id or f"search-{uuid.uuid4().hex[:10]}"
    with store.write() as writer:
        writer.add_rows(
            "gnn_trials",
            [
                {
                    "search_id": search_id,
                    "trial": i,
                    "architecture": t.architecture,
                    "learning_rate": t.learning_rate,
                    "batch_size": t.batch_size,
                    "level": level,
                    "valid_mae_ev": t.valid.mae_ev,
                    "valid_rmse_ev": t.valid.rmse_ev,
                    "epochs_run": t.epochs_run,
                    "rank": i + 1,
                }
                for i, t in enumerate(trials)
            ],
        )
    return search_id, trials


def learning_curve(
    store: Store, gnn: GNNSection, *, level: str, architecture: str, seed: int = 0, curve_id: str | None = None
) -> tuple[str, list[tuple[int, Metrics]]]:
    """Test metrics of models trained on growing fractions of the training split (what more data buys).

    Recorded in ``gnn_learning_curve``; returns the curve id and (training-set size, test metrics) pairs.
    A ``curve_id`` already in the store (a content key) returns the stored curve.
    """
    if curve_id is not None:
        stored = store.query("SELECT * FROM gnn_learning_curve WHERE curve_id = ? ORDER BY n_train", [curve_id])
        if not stored.empty:
            return curve_id, [
                (
                    int(r.n_train),
                    Metrics(0, float(r.test_r2), float(r.test_mae_ev), float(r.test_rmse_ev), float("nan")),
                )
                for r in stored.itertuples()
            ]
    if architecture == KERNEL_ARCHITECTURE:
        splits = level_split_hashes(store, level, gnn)
        points = kernel_learning_points(
            Descriptors(store, focus_md_frames=gnn.md_frame_focus),
            splits,
            gnn.learning_curve_fractions,
            seed=seed,
        )
        return _record_curve(store, curve_id, level, architecture, points)
    data = level_splits(store, level, gnn)
    _, train_graphs, train_gaps = data["train"]
    _, valid_graphs, valid_gaps = data["valid"]
    _, test_graphs, test_gaps = data["test"]
    order = np.random.default_rng(seed).permutation(len(train_graphs))
    points = []
    for fraction in sorted(set(gnn.learning_curve_fractions)):
        chosen = order[: max(4, int(round(fraction * len(order))))]
        graphs, gaps = [train_graphs[i] for i in chosen], train_gaps[chosen]
        model = new_model(architecture, ARCHITECTURES[architecture], graphs, gaps, cutoff_a=gnn.cutoff_a, seed=seed)
        settings = TrainingSettings(gnn.epochs, gnn.batch_size, gnn.learning_rate, gnn.patience, seed)
        train(model, graphs, gaps, valid_graphs, valid_gaps, settings, stage=f"curve {len(chosen)}")
        points.append((len(chosen), compute_metrics(test_gaps, model.predict_graphs(test_graphs))))
    return _record_curve(store, curve_id, level, architecture, points)


def _record_curve(
    store: Store, curve_id: str | None, level: str, architecture: str, points: list[tuple[int, Metrics]]
) -> tuple[str, list[tuple[int, Metrics]]]:
    curve_id = curve_id or f"curve-{uuid.uuid4().hex[:10]}"
    with store.write() as writer:
        writer.add_rows(
            "gnn_learning_curve",
            [
                {
                    "curve_id": curve_id,
                    "level": level,
                    "architecture": architecture,
                    "n_train": n,
                    "test_mae_ev": m.mae_ev,
                    "test_rmse_ev": m.rmse_ev,
                    "test_r2": m.r2,
                }
                for n, m in points
            ],
        )
    return curve_id, points


@dataclass(frozen=True)
class TwoStageResult:
    """Models of a two-stage training and their test metrics (per stage: 'cheap' and, if any, 'high')."""

    ensemble_id: str
    model_ids: list[str]
    test_metrics: dict[str, Metrics]
    ensemble_test_metrics: dict[str, Metrics]


def train_two_stage(
    store: Store,
    gnn: GNNSection,
    *,
    cheap_level: str,
    high_level: str | None,
    run_id: str | None = None,
    seed: int = 0,
    architecture_name: str | None = None,
    learning_rate: float | None = None,
    batch_size: int | None = None,
    ensemble_id: str | None = None,
) -> TwoStageResult:
    """Train an ensemble on ``cheap_level`` gaps, fine-tune each member on ``high_level`` gaps, store everything.

    ``architecture_name``, ``learning_rate`` and ``batch_size`` override the config's (e.g. with the best
    trial of a search).

    Splits are by structure (:func:`split_of`, seeded with ``gnn.split_seed``): the test split is used only to
    report metrics. Each model is saved under ``artifacts/gnn/<model_id>/`` and recorded in ``gnn_models``
    with its metrics per stage and split (``gnn_metrics``) and every prediction (``gnn_predictions``).
    With an ``ensemble_id`` (a content key, :func:`gnn_stage_key`) the member ids follow from it and members
    already stored are reused, not retrained: an interrupted ensemble resumes at the next member.

    Raises
    ------
    NotComputedError
        Too few labelled gaps at a level to split (fewer than 10).
    """
    name = architecture_name or gnn.architecture
    kernel = name == KERNEL_ARCHITECTURE
    gnn = gnn.model_copy(
        update={
            "architecture": name,
            "learning_rate": learning_rate or gnn.learning_rate,
            "batch_size": batch_size or gnn.batch_size,
        }
    )
    stages: list[tuple[str, str]] = [("cheap", cheap_level)] + ([("high", high_level)] if high_level else [])
    if kernel:
        data = {stage: level_split_hashes(store, level, gnn) for stage, level in stages}
        descriptors = Descriptors(store, focus_md_frames=gnn.md_frame_focus)
        descriptors.set_species(list(data.values()))
    else:
        data = {stage: level_splits(store, level, gnn) for stage, level in stages}
    model_ids, test_predictions, tests = [], {s: [] for s, _ in stages}, {}
    keyed = ensemble_id is not None
    ensemble_id = ensemble_id or f"ensemble-{uuid.uuid4().hex[:10]}"
    for member in range(gnn.ensemble_size):
        member_seed = seed * 1000 + member
        if keyed:
            suffix = ensemble_id.removeprefix("ensemble-")
            model_id = f"gnn-{gnn.architecture}-{suffix}-{member}"
            if _reuse_member(store, model_id, data, test_predictions, tests, first=member == 0):
                logger.info("GNN member %s already trained: reused", model_id)
                model_ids.append(model_id)
                continue
        else:
            model_id = f"gnn-{gnn.architecture}-{uuid.uuid4().hex[:10]}"
        member_args = {"model_id": model_id, "member": member, "members": gnn.ensemble_size, "seed": member_seed}
        if kernel:
            fitted = train_kernel_member(store, descriptors, data, dict(stages), **member_args)
        else:
            fitted = _train_gnn_member(store, gnn, data, dict(stages), **member_args)
        relpath, metrics_rows, prediction_rows, member_tests = fitted
        for stage, predicted in member_tests.items():
            test_predictions[stage].append(predicted)
            gaps = data[stage]["test"][-1]
            tests[stage] = (gaps, compute_metrics(gaps, predicted)) if member == 0 else tests[stage]
        row = {
            "model_id": model_id,
            "ensemble_id": ensemble_id,
            "run_id": run_id,
            "architecture": gnn.architecture,
            "cheap_level": cheap_level,
            "high_level": high_level,
            "ensemble_index": member,
            "seed": member_seed,
            "relpath": relpath.as_posix(),
            "settings_json": gnn.model_dump_json(),
        }
        with store.write() as writer:
            writer.add_gnn_model(row, metrics_rows, prediction_rows)
        model_ids.append(model_id)
    ensemble = {stage: compute_metrics(tests[stage][0], np.mean(test_predictions[stage], axis=0)) for stage in tests}
    return TwoStageResult(ensemble_id, model_ids, {s: tests[s][1] for s in tests}, ensemble)


def _train_gnn_member(
    store: Store, gnn: GNNSection, data: dict[str, Splits], levels: dict[str, str], *, model_id: str, member: int,
    members: int, seed: int,
) -> tuple[Path, list[dict], list[dict], dict[str, np.ndarray]]:  # fmt: skip
    """Train and save one GNN member on both stages; its metrics and prediction rows and its test predictions."""
    _, train_graphs, train_gaps = data["cheap"]["train"]
    model = new_model(
        gnn.architecture, ARCHITECTURES[gnn.architecture], train_graphs, train_gaps, cutoff_a=gnn.cutoff_a, seed=seed
    )
    metrics_rows, prediction_rows, tests = [], [], {}
    relpath = Path("artifacts") / "gnn" / model_id
    for stage, level in levels.items():
        _, train_graphs, train_gaps = data[stage]["train"]
        _, valid_graphs, valid_gaps = data[stage]["valid"]
        if stage == "cheap":
            settings = TrainingSettings(gnn.epochs, gnn.batch_size, gnn.learning_rate, gnn.patience, seed)
        else:
            refit_gap_range(model, train_gaps)
            settings = TrainingSettings(
                gnn.fine_tune_epochs, gnn.batch_size, gnn.fine_tune_learning_rate, gnn.patience, seed
            )
        train(model, train_graphs, train_gaps, valid_graphs, valid_gaps, settings, stage=stage)
        for split, (hashes, graphs, gaps) in data[stage].items():
            if not hashes:
                continue
            predicted = model.predict_graphs(graphs)
            metrics, predictions = split_rows(model_id, stage, level, split, hashes, gaps, predicted)
            metrics_rows.append(metrics)
            prediction_rows += predictions
            if split == "test":
                tests[stage] = predicted
        if stage == "cheap" and "high" in levels:  # kept: the cheap-level model is measured on held-out frames too
            model.save(store.project_dir / relpath / CHEAP_STAGE_DIRNAME)
    model.save(store.project_dir / relpath)
    return relpath, metrics_rows, prediction_rows, tests


def _reuse_member(
    store: Store, model_id: str, data: dict[str, Splits], test_predictions: dict, tests: dict, *, first: bool
) -> bool:
    """Put a stored member's test predictions where a freshly trained one's go; False if it is not stored."""
    if store.query("SELECT 1 FROM gnn_models WHERE model_id = ?", [model_id]).empty:
        return False
    for stage, splits in data.items():
        hashes, gaps = splits["test"][0], splits["test"][-1]
        if not hashes:
            continue
        rows = store.query(
            """SELECT structure_hash, predicted_ev FROM gnn_predictions
               WHERE model_id = ? AND stage = ? AND split = 'test'""",
            [model_id, stage],
        )
        predicted_by_hash = dict(zip(rows["structure_hash"], rows["predicted_ev"], strict=True))
        predicted = np.array([predicted_by_hash[h] for h in hashes])
        test_predictions[stage].append(predicted)
        if first:
            tests[stage] = (gaps, compute_metrics(gaps, predicted))
    return True
