"""The kernel gap head on descriptors: it learns a smooth function, picks its hyperparameters by CV, round-trips."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from capml_core.errors import InvalidInputError
from capml_core.models.gap_head import DeltaGapHead, KernelGapHead, fit_delta_head, fit_kernel_head


def _data(n: int, seed: int):
    rng = np.random.default_rng(seed)
    x = rng.uniform(-1.0, 1.0, size=(n, 3)) * np.array([1.0, 10.0, 0.01])  # features of very different scales
    return x, 1.0 + 0.5 * np.sin(2.0 * x[:, 0]) + 0.02 * x[:, 1]


def test_the_head_learns_a_smooth_gap_and_generalises() -> None:
    x, y = _data(160, 0)
    head = fit_kernel_head(x, y)
    x_new, y_new = _data(40, 1)
    error = np.abs(head.predict(x_new) - y_new)
    assert error.mean() < 0.02 and head.cv_mae_ev < 0.03  # the function spans 0.6 eV
    assert head.gamma in (0.03, 0.1, 0.3, 1.0, 3.0) and head.regularisation in (1e-3, 1e-2, 1e-1)
    constant = fit_kernel_head(x, np.full(len(x), 1.2))
    assert np.allclose(constant.predict(x_new), 1.2)  # no signal: the mean, exactly
    with pytest.raises(InvalidInputError, match="takes"):
        head.predict(x_new[:, :2])
    with pytest.raises(InvalidInputError, match="at least 5"):
        fit_kernel_head(x[:3], y[:3])


def test_the_high_level_as_a_correction_of_the_cheap_head(tmp_path: Path) -> None:
    x, cheap_gaps = _data(160, 0)
    cheap = fit_kernel_head(x, cheap_gaps)
    subset = slice(0, 40)  # the high level has fewer labels: a constant shift plus a small slope
    high = cheap_gaps[subset] + 0.8 + 0.1 * x[subset, 0]
    head = fit_delta_head(cheap, x[subset], high)
    x_new, y_new = _data(40, 1)
    assert np.abs(head.predict(x_new) - (y_new + 0.8 + 0.1 * x_new[:, 0])).mean() < 0.03
    head.save(tmp_path / "head")
    loaded = DeltaGapHead.load(tmp_path / "head")
    assert np.allclose(loaded.predict(x_new), head.predict(x_new))
    (tmp_path / "head" / "correction.json").write_text('{"format_version": 99}')
    with pytest.raises(InvalidInputError, match="format 99"):
        KernelGapHead.load(tmp_path / "head", prefix="correction")
    (tmp_path / "head" / "cheap.npz").write_bytes(b"not an npz")
    with pytest.raises(InvalidInputError, match="not a readable capml gap head"):
        KernelGapHead.load(tmp_path / "head", prefix="cheap")
