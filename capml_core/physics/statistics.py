"""Time-series statistics: autocorrelation times, block averages, averages with uncertainties."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from capml_core.errors import InvalidInputError


# ------------------------------------------------------------------------------------------- analysis
def integrated_autocorrelation_time(series: np.ndarray, *, window_factor: float = 5.0) -> float:
    """Integrated autocorrelation time of a series, in frames (1 for uncorrelated data).

    tau = 1 + 2 sum_{t=1..M} rho(t), with Sokal's window: the smallest M with M >= window_factor * tau(M).
    """
    x = np.asarray(series, dtype=float) - np.mean(series)
    n = len(x)
    if n < 4 or np.allclose(x, 0.0):
        return 1.0
    spectrum = np.fft.rfft(x, n=2 * n)
    acf = np.fft.irfft(spectrum * np.conjugate(spectrum))[:n]
    acf /= acf[0]
    tau = 1.0
    for m in range(1, n):
        tau = 1.0 + 2.0 * float(np.sum(acf[1 : m + 1]))
        if m >= window_factor * tau:
            break
    return max(tau, 1.0)


# ------------------------------------------------------------------------------------------- statistics
def block_average_error(series: np.ndarray, *, min_blocks: int = 4) -> float:
    """Standard error (same unit as the series) of the mean of a possibly correlated series.

    Flyvbjerg-Petersen blocking: average neighbouring pairs repeatedly; at each level k the naive standard
    error e_k of the block means, itself uncertain by d_k = e_k / sqrt(2 (blocks − 1)). The answer is e_k of the
    first level from which no later level (with at least ``min_blocks`` blocks) lies more than its d above it:
    the plateau that correlated data reach once blocks are longer than the correlation time. A series too
    short to block gives the naive standard error; one value gives NaN.
    """
    x = np.asarray(series, dtype=float)
    if len(x) < 2:
        return float("nan")
    levels: list[tuple[float, float]] = []
    blocks = x
    while len(blocks) >= min_blocks:
        error = float(np.std(blocks, ddof=1) / np.sqrt(len(blocks)))
        levels.append((error, error / np.sqrt(2.0 * (len(blocks) - 1))))
        half = len(blocks) // 2
        blocks = 0.5 * (blocks[0 : 2 * half : 2] + blocks[1 : 2 * half : 2])
    if not levels:
        return float(np.std(x, ddof=1) / np.sqrt(len(x)))
    for k, (error, _) in enumerate(levels):
        if all(later <= error + spread for later, spread in levels[k + 1 :]):
            return error
    return levels[-1][0]


def ensemble_spread(values: np.ndarray) -> float:
    """Sample standard deviation over an ensemble (0 for one model)."""
    return float(np.std(values, ddof=1)) if len(values) > 1 else 0.0


@dataclass(frozen=True)
class GapAverage:
    """Thermal average of snapshot gaps against the static gap (eV; relative values are fractions)."""

    n_snapshots: int
    mean_gap_ev: float
    statistical_error_ev: float
    model_error_ev: float
    error_ev: float
    static_gap_ev: float
    delta_ev: float
    delta_error_ev: float
    relative_change: float
    relative_error: float


def average_gaps(snapshot_gaps: np.ndarray, static_gaps: np.ndarray) -> GapAverage:
    """Average GNN gaps over snapshots: <Eg>, ΔEg = <Eg> − Eg(0), ΔEg/Eg(0), each with its uncertainty.

    Parameters
    ----------
    snapshot_gaps
        Gaps (eV) of each model (rows) for each snapshot (columns), snapshots in time order.
    static_gaps
        Each model's gap (eV) of the static relaxed structure.
    """
    gaps = np.atleast_2d(np.asarray(snapshot_gaps, dtype=float))
    static = np.asarray(static_gaps, dtype=float)
    if gaps.shape[0] != len(static) or gaps.shape[1] == 0:
        raise InvalidInputError(
            f"average_gaps: {gaps.shape[0]} models x {gaps.shape[1]} snapshots vs {len(static)} static gaps"
        )
    series = gaps.mean(axis=0)
    mean, static_mean = float(series.mean()), float(static.mean())
    statistical = block_average_error(series) if len(series) > 1 else 0.0
    per_model = gaps.mean(axis=1)
    model = ensemble_spread(per_model)
    delta_model = ensemble_spread(per_model - static)
    relative_model = ensemble_spread((per_model - static) / static)
    delta = mean - static_mean
    return GapAverage(
        n_snapshots=int(gaps.shape[1]),
        mean_gap_ev=mean,
        statistical_error_ev=statistical,
        model_error_ev=model,
        error_ev=float(np.hypot(statistical, model)),
        static_gap_ev=static_mean,
        delta_ev=delta,
        delta_error_ev=float(np.hypot(statistical, delta_model)),
        relative_change=delta / static_mean,
        relative_error=float(np.hypot(statistical / static_mean, relative_model)),
    )
