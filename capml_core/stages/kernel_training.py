"""Training of kernel gap ensembles (``gnn.architecture = "mace-kernel"``): heads on MACE descriptors.

The same splits, tables and two stages as the GNN (:mod:`capml_core.stages.gnn_training`): a head on the cheap
level's training split, then (with a high level) a correction head on the high level's training split
(:func:`capml_core.models.gap_head.fit_delta_head`). The descriptors are those of the project's newest MACE model
(:func:`capml_core.store.queries.latest_model`). Hyperparameters are chosen by cross-validation on each member's
training data; the validation split is measured (the search compares it with the GNN trials'), never fitted on.
Members differ by seed: each is fitted on its own 80 % of the training split (with one member: all of it), so the
ensemble's spread says where the data leave the head free.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from capml_core.models.gap_head import (
    DeltaGapHead,
    KernelGapHead,
    KernelGapModel,
    fit_delta_head,
    fit_kernel_head,
    kernel_descriptors,
)
from capml_core.models.gnn import CHEAP_STAGE_DIRNAME, Metrics, compute_metrics
from capml_core.provenance import file_sha256
from capml_core.stages.gap_rows import split_rows
from capml_core.stages.md_frames import md_frame_mask
from capml_core.store.database import Store
from capml_core.store.queries import latest_model

logger = logging.getLogger(__name__)

#: Share of the training split each member of an ensemble of several is fitted on.
MEMBER_FRACTION = 0.8

SplitHashes = dict[str, tuple[list[str], np.ndarray]]


#: Descriptors computed in this process: (MACE file sha256, species, structure hash) -> vector.
_COMPUTED: dict[tuple[str, tuple[str, ...], str], np.ndarray] = {}


class Descriptors:
    """Descriptors of the project's structures under one MACE model, each computed once per process (lazily).

    ``focus_md_frames`` (``gnn.md_frame_focus``): heads fitted on these descriptors are tuned for the MD frames
    among their structures (:meth:`focus`).
    """

    def __init__(self, store: Store, *, focus_md_frames: bool = False) -> None:
        self.store = store
        self.model_id, self.path = latest_model(store)
        self.sha256 = file_sha256(self.path)
        self.species: tuple[str, ...] = ()
        self.focus_md_frames = focus_md_frames

    def focus(self, hashes: list[str]) -> np.ndarray | None:
        """Which of ``hashes`` are MD frames (the heads' focus), or None without a focus."""
        return md_frame_mask(self.store, hashes) if self.focus_md_frames else None

    def of(self, hashes: list[str]) -> np.ndarray:
        """(len(hashes), n_features) descriptors; ``species`` must be set first."""
        keys = [(self.sha256, self.species, h) for h in hashes]
        todo = [k[2] for k in dict.fromkeys(keys) if k not in _COMPUTED]
        if todo:
            atoms = self.store.load_structures(todo)
            values = kernel_descriptors([atoms[h] for h in todo], self.path, self.species)
            _COMPUTED.update(((self.sha256, self.species, h), v) for h, v in zip(todo, values, strict=True))
            logger.info("MACE descriptors of %d structures (%s)", len(todo), self.model_id)
        return np.array([_COMPUTED[k] for k in keys])

    def set_species(self, split_hashes: list[SplitHashes]) -> None:
        """Species order: every element of every structure in the splits, sorted."""
        hashes = [h for splits in split_hashes for names, _ in splits.values() for h in names]
        atoms = self.store.load_structures(hashes)
        self.species = tuple(sorted({s for a in atoms.values() for s in a.get_chemical_symbols()}))


def kernel_validation_predictions(
    descriptors: Descriptors, splits: SplitHashes, *, seed: int
) -> tuple[np.ndarray, float]:
    """A head fitted on the training split: its gaps (eV) of the validation split and its CV MAE (eV)."""
    descriptors.set_species([splits])
    train_hashes, train_gaps = splits["train"]
    head = fit_kernel_head(descriptors.of(train_hashes), train_gaps, focus=descriptors.focus(train_hashes), seed=seed)
    return head.predict(descriptors.of(splits["valid"][0])), head.cv_mae_ev


def _member_rows(n: int, members: int, seed: int) -> np.ndarray:
    if members == 1:
        return np.arange(n)
    size = max(5, int(round(MEMBER_FRACTION * n)))
    return np.sort(np.random.default_rng(seed).choice(n, size=min(size, n), replace=False))


def fit_kernel_member(
    descriptors: Descriptors,
    data: dict[str, SplitHashes],
    *,
    member: int,
    members: int,
    seed: int,
) -> tuple[KernelGapHead, DeltaGapHead | None, dict]:
    """One member: the cheap head and (with a 'high' stage in ``data``) the delta head; and its history."""
    history: dict = {"seed": seed, "mace_model_id": descriptors.model_id, "stages": []}
    hashes, gaps = data["cheap"]["train"]
    rows = _member_rows(len(hashes), members, seed)
    chosen = [hashes[i] for i in rows]
    cheap = fit_kernel_head(descriptors.of(chosen), gaps[rows], focus=descriptors.focus(chosen), seed=seed)
    history["stages"].append({"stage": "cheap", "n_fit": len(rows), **_head_settings(cheap)})
    delta = None
    if "high" in data:
        hashes, gaps = data["high"]["train"]
        rows = _member_rows(len(hashes), members, seed + 1)
        chosen = [hashes[i] for i in rows]
        delta = fit_delta_head(cheap, descriptors.of(chosen), gaps[rows], focus=descriptors.focus(chosen), seed=seed)
        history["stages"].append({"stage": "high", "n_fit": len(rows), **_head_settings(delta.correction)})
    logger.info("kernel member %d: %s", member, history["stages"])
    return cheap, delta, history


def _head_settings(head: KernelGapHead) -> dict:
    return {
        "gamma": head.gamma,
        "regularisation": head.regularisation,
        "other_factor": head.other_factor,
        "cv_mae_ev": head.cv_mae_ev,
    }


def train_kernel_member(
    store: Store,
    descriptors: Descriptors,
    data: dict[str, SplitHashes],
    levels: dict[str, str],
    *,
    model_id: str,
    member: int,
    members: int,
    seed: int,
) -> tuple[Path, list[dict], list[dict], dict[str, np.ndarray]]:
    """Fit and save one member; its metrics and prediction rows (as the GNN's) and its test predictions."""
    cheap, delta, history = fit_kernel_member(descriptors, data, member=member, members=members, seed=seed)
    relpath = Path("artifacts") / "gnn" / model_id
    metrics_rows, prediction_rows, tests = [], [], {}
    for stage, head in (("cheap", cheap), ("high", delta)):
        if head is None:
            continue
        for split, (hashes, gaps) in data[stage].items():
            if not hashes:
                continue
            predicted = head.predict(descriptors.of(hashes))
            metrics, predictions = split_rows(model_id, stage, levels[stage], split, hashes, gaps, predicted)
            metrics_rows.append(metrics)
            prediction_rows += predictions
            if split == "test":
                tests[stage] = predicted
    species = descriptors.species
    if delta is not None:  # kept: the cheap-level head is measured on held-out frames too
        cheap_history = {**history, "stages": history["stages"][:1]}
        model = KernelGapModel(cheap, descriptors.path, descriptors.sha256, species, cheap_history)
        model.save(store.project_dir / relpath / CHEAP_STAGE_DIRNAME)
    final = KernelGapModel(delta or cheap, descriptors.path, descriptors.sha256, species, history)
    final.save(store.project_dir / relpath)
    return relpath, metrics_rows, prediction_rows, tests


def kernel_learning_points(
    descriptors: Descriptors, splits: SplitHashes, fractions: list[float], *, seed: int
) -> list[tuple[int, Metrics]]:
    """Test metrics of heads fitted on growing fractions of the training split (same order as the GNN's curve)."""
    descriptors.set_species([splits])
    train_hashes, train_gaps = splits["train"]
    test_hashes, test_gaps = splits["test"]
    order = np.random.default_rng(seed).permutation(len(train_hashes))
    points = []
    for fraction in sorted(set(fractions)):
        chosen = order[: max(5, int(round(fraction * len(order))))]
        hashes = [train_hashes[i] for i in chosen]
        head = fit_kernel_head(descriptors.of(hashes), train_gaps[chosen], focus=descriptors.focus(hashes), seed=seed)
        points.append((len(chosen), compute_metrics(test_gaps, head.predict(descriptors.of(test_hashes)))))
    return points
