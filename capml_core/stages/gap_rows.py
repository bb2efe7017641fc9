"""Rows a trained gap-model member leaves in the store: metrics per split and every prediction (GNN or kernel)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict

import numpy as np

from capml_core.models.gnn import compute_metrics


def split_rows(
    model_id: str, stage: str, level: str, split: str, hashes: Sequence[str], gaps_ev: np.ndarray, predicted_ev
) -> tuple[dict, list[dict]]:
    """One ``gnn_metrics`` row and the ``gnn_predictions`` rows of one member on one split of one stage."""
    metrics = {"model_id": model_id, "stage": stage, "split": split, **asdict(compute_metrics(gaps_ev, predicted_ev))}
    predictions = [
        {
            "model_id": model_id,
            "stage": stage,
            "structure_hash": h,
            "level": level,
            "split": split,
            "reference_ev": float(y),
            "predicted_ev": float(p),
        }
        for h, y, p in zip(hashes, gaps_ev, predicted_ev, strict=True)
    ]
    return metrics, predictions
