"""Time-series statistics: autocorrelation times, block averages, averages with uncertainties."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from capml_core.errors import InvalidInputError


# ------------------------------------------------------------------------------------------- analysis
def integrated_autocorrelation_time(series: np.ndarray, *, window_factor: float = 5.0) -> float:
    """Integrated autocorrelation time of a series, in frames (1 for uncorrelated data).

    tau = 1 + 2 sum_{t=1..M} rho(t) with Sokal's window (the smallest M with M >= window_factor * tau(M)):
    emcee's ``autocorr.integrated_time``. The variance of the mean of n values is var * tau / n.
    """
    from emcee.autocorr import integrated_time

    x = np.asarray(series, dtype=float)
    if len(x) < 4 or np.allclose(x - x.mean(), 0.0):
        return 1.0
    return max(float(integrated_time(x, c=window_factor, tol=0, quiet=True)[0]), 1.0)


# ------------------------------------------------------------------------------------------- statistics
#: Blocking is trusted only where its optimal block length leaves at least this many blocks.
MIN_BLOCKS = 16


@dataclass(frozen=True)
class SeriesMean:
    """Mean of a correlated series and its 1-sigma standard error (unit of the series).

    ``method``: ``blocking`` (Flyvbjerg-Petersen reblocking at the optimal block length of Wolff and Lee et al.,
    pyblock, with >= :data:`MIN_BLOCKS` blocks), ``inflated`` (too few blocks: the naive error inflated by the
    statistical inefficiency tau of :func:`statistical_inefficiency`, the variance's bias removed and Student's t
    for n / tau samples, so a short series is not understated), or ``single`` (one value: no error).
    ``half_difference``: mean of the second half minus the first's, with its error: a run whose halves differ by
    more than a few errors has not equilibrated.
    """

    n: int
    mean: float
    error: float
    tau: float
    method: str
    blocks: int | None
    half_difference: float
    half_difference_error: float

    @property
    def n_effective(self) -> float:
        """Independent samples the series is worth (n / tau)."""
        return self.n / self.tau

    def equilibrated(self, sigmas: float = 2.0) -> bool:
        """False if the halves differ by more than ``sigmas`` times the error of their difference."""
        if not np.isfinite(self.half_difference_error):
            return True
        return bool(abs(self.half_difference) <= sigmas * self.half_difference_error)


def statistical_inefficiency(series: np.ndarray) -> float:
    """Autocorrelation time tau (frames) for the error of a series' mean; at most n / 2.

    The larger of Sokal's windowed estimate (emcee) and the AR(1) value (1 + r1) / (1 - r1) of the lag-1
    autocorrelation r1, bias-corrected by (1 + 4 r1) / n (Kendall): short series underestimate both.
    """
    x = np.asarray(series, dtype=float)
    n = len(x)
    if n < 4 or np.allclose(x - x.mean(), 0.0):
        return 1.0
    d = x - x.mean()
    r1 = float(np.sum(d[1:] * d[:-1]) / np.sum(d * d))
    r1 = min(r1 + (1.0 + 4.0 * r1) / n, 0.99)
    ar1 = (1.0 + r1) / (1.0 - r1) if r1 > 0.0 else 1.0
    return float(min(max(integrated_autocorrelation_time(x), ar1, 1.0), n / 2.0))


def _error_of_mean(x: np.ndarray, tau: float) -> tuple[float, str, int | None]:
    from pyblock.blocking import find_optimal_block, reblock
    from scipy.stats import t as student_t

    n = len(x)
    if n < 2:
        return float("nan"), "single", None
    if n >= 4 and np.std(x) > 0.0:
        levels = reblock(x)
        optimal = find_optimal_block(n, levels)[0]
        if np.isfinite(optimal) and levels[int(optimal)].ndata >= MIN_BLOCKS:
            level = levels[int(optimal)]
            return float(level.std_err), "blocking", int(level.ndata)
    # too few blocks: var(mean) = s² tau / n, with the sample variance's bias (n - 1) / (n - tau) removed and
    # Student's t for n / tau independent samples, so the bar is a 1-sigma (68 %) interval
    variance = float(np.var(x, ddof=1)) * tau / n * (n - 1) / max(n - tau, 1.0)
    factor = float(student_t.ppf(0.8413, max(n / tau - 1.0, 1.0)))
    return float(np.sqrt(variance) * factor), "inflated", None


def series_mean(series: np.ndarray) -> SeriesMean:
    """Mean of a time series with an error that holds for correlated data (see :class:`SeriesMean`)."""
    x = np.asarray(series, dtype=float)
    if len(x) == 0:
        raise InvalidInputError("series_mean: an empty series")
    tau = statistical_inefficiency(x)
    error, method, blocks = _error_of_mean(x, tau)
    half = len(x) // 2
    if half >= 2:
        first, second = x[:half], x[len(x) - half :]
        e1 = _error_of_mean(first, statistical_inefficiency(first))[0]
        e2 = _error_of_mean(second, statistical_inefficiency(second))[0]
        difference, difference_error = float(second.mean() - first.mean()), float(np.hypot(e1, e2))
    else:
        difference, difference_error = float("nan"), float("nan")
    return SeriesMean(len(x), float(x.mean()), error, tau, method, blocks, difference, difference_error)


def ensemble_spread(values: np.ndarray) -> float:
    """Sample standard deviation over an ensemble (0 for one model)."""
    return float(np.std(values, ddof=1)) if len(values) > 1 else 0.0


@dataclass(frozen=True)
class GapAverage:
    """Thermal average of snapshot gaps against the static gap (eV; relative values are fractions).

    ``tau_snapshots``: the gap series' integrated autocorrelation time in snapshots; ``error_method`` and the
    halves' difference as :class:`SeriesMean`.
    """

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
    tau_snapshots: float
    n_effective: float
    error_method: str
    half_difference_ev: float
    half_difference_error_ev: float


def average_gaps(snapshot_gaps: np.ndarray, static_gaps: np.ndarray) -> GapAverage:
    """Average model gaps over snapshots: <Eg>, ΔEg = <Eg> − Eg(0), ΔEg/Eg(0), each with its uncertainty.

    The statistical error is that of the ensemble-mean series (:func:`series_mean`: blocking where it has enough
    blocks, else the autocorrelation-inflated error); the model error the spread over the ensemble of each
    model's own average (or its own ΔEg, where common offsets cancel).

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
    series = series_mean(gaps.mean(axis=0))
    mean, static_mean = series.mean, float(static.mean())
    statistical = 0.0 if series.n == 1 else series.error
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
        tau_snapshots=series.tau,
        n_effective=series.n_effective,
        error_method=series.method,
        half_difference_ev=series.half_difference,
        half_difference_error_ev=series.half_difference_error,
    )
