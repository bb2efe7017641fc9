"""Reproducible train/validation/test splits by structure and regression error metrics, shared by every model."""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np


def split_of(structure_hash: str, *, seed: int, valid_fraction: float, test_fraction: float) -> str:
    """'train', 'valid' or 'test' for a structure: a hash of (seed, structure), stable as the dataset grows."""
    u = int.from_bytes(hashlib.sha256(f"{seed}|{structure_hash}".encode()).digest()[:8], "little") / 2**64
    if u < test_fraction:
        return "test"
    return "valid" if u < test_fraction + valid_fraction else "train"


@dataclass(frozen=True)
class ErrorMetrics:
    """Errors of predictions against references, in the references' unit."""

    n: int
    r2: float
    mae: float
    rmse: float
    max_error: float


def error_metrics(reference: Sequence[float] | np.ndarray, predicted: Sequence[float] | np.ndarray) -> ErrorMetrics:
    """R² (NaN when the references do not vary), MAE, RMSE and maximum absolute error of flat arrays."""
    y = np.ravel(np.asarray(reference, dtype=float))
    p = np.ravel(np.asarray(predicted, dtype=float))
    if y.shape != p.shape or y.size == 0:
        raise ValueError(f"error_metrics: {y.size} references and {p.size} predictions")
    error = p - y
    ss_tot = float(np.sum((y - y.mean()) ** 2))
    return ErrorMetrics(
        n=int(y.size),
        r2=1.0 - float(np.sum(error**2)) / ss_tot if ss_tot > 0 else float("nan"),
        mae=float(np.mean(np.abs(error))),
        rmse=float(np.sqrt(np.mean(error**2))),
        max_error=float(np.max(np.abs(error))),
    )
