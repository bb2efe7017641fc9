"""Which unlabelled structures to label next: by model disagreement and by diversity.

Uncertainty alone picks clusters (the ten most uncertain frames of one hot run are nearly the same structure);
diversity alone ignores what the models already know. The selection here combines them:

1. a score per candidate: each disagreement measure divided by its median over the pool (so energy, force and
   gap disagreement count alike whatever their units), the maximum of these ratios;
2. the ``candidate_factor`` x k highest-scoring candidates are kept;
3. among them, k are chosen by farthest-point sampling in a descriptor space (Euclidean distance of
   standardised descriptors), starting from the highest score and keeping away from structures already labelled.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np


def uncertainty_score(measures: Mapping[str, np.ndarray]) -> np.ndarray:
    """Per candidate: max over the measures of value / median of that measure (measures with no spread skipped).

    ``measures``: name -> array over the candidates (NaN where a measure is not available for a candidate).
    """
    columns = []
    for values in measures.values():
        values = np.asarray(values, dtype=float)
        median = np.nanmedian(values) if np.isfinite(values).any() else np.nan
        if not np.isfinite(median) or median <= 0:
            continue
        columns.append(np.where(np.isfinite(values), values / median, 0.0))
    if not columns:
        raise ValueError(f"no disagreement measure with a positive median among {list(measures)}")
    return np.max(np.vstack(columns), axis=0)


def standardise(descriptors: np.ndarray, reference: np.ndarray | None = None) -> np.ndarray:
    """Descriptors centred and scaled per column by the mean and standard deviation of ``reference`` (default: self)."""
    descriptors = np.asarray(descriptors, dtype=float)
    reference = descriptors if reference is None else np.asarray(reference, dtype=float)
    scale = reference.std(axis=0)
    scale[scale == 0] = 1.0
    return (descriptors - reference.mean(axis=0)) / scale


def farthest_point_sampling(
    points: np.ndarray, k: int, *, first: int | None = 0, labelled: np.ndarray | None = None
) -> np.ndarray:
    """Indices of ``k`` points, each the farthest (Euclidean) from all chosen and ``labelled`` points so far.

    ``first`` is chosen first (None: the farthest from ``labelled``); ties go to the lower index.
    """
    points = np.asarray(points, dtype=float)
    n = len(points)
    k = min(k, n)
    if k <= 0:
        return np.zeros(0, dtype=int)
    distance = np.full(n, np.inf)
    if labelled is not None and len(labelled):
        for point in np.asarray(labelled, dtype=float):
            distance = np.minimum(distance, np.linalg.norm(points - point, axis=1))
    chosen: list[int] = []
    if first is None:
        first = int(np.argmax(distance)) if np.isfinite(distance).any() else 0
    while len(chosen) < k:
        index = first if not chosen else int(np.argmax(distance))
        chosen.append(index)
        distance = np.minimum(distance, np.linalg.norm(points - points[index], axis=1))
        distance[chosen] = -np.inf
    return np.asarray(chosen, dtype=int)


def select_uncertain_diverse(
    scores: np.ndarray,
    descriptors: np.ndarray,
    k: int,
    *,
    candidate_factor: float = 3.0,
    labelled_descriptors: np.ndarray | None = None,
) -> np.ndarray:
    """Indices (into ``scores``) of ``k`` candidates: the most uncertain ``candidate_factor`` x k, spread by FPS."""
    scores = np.asarray(scores, dtype=float)
    if len(scores) != len(descriptors):
        raise ValueError(f"{len(scores)} scores for {len(descriptors)} descriptors")
    n_candidates = min(len(scores), max(k, int(np.ceil(candidate_factor * k))))
    order = np.argsort(-scores, kind="stable")[:n_candidates]
    reference = descriptors if labelled_descriptors is None else np.vstack([descriptors, labelled_descriptors])
    points = standardise(np.asarray(descriptors)[order], reference)
    labelled = None if labelled_descriptors is None else standardise(labelled_descriptors, reference)
    picked = farthest_point_sampling(points, k, first=0, labelled=labelled)
    return order[picked]
