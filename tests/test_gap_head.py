"""The kernel gap head on descriptors: it learns a smooth function, picks its hyperparameters by CV, round-trips."""

from __future__ import annotations

import json
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


def _focus_data(seed: int):
    """200 'cubic-cell' structures on g(x), 40 'MD frames' on g(x) + 0.3 x0: the many disagree with the few."""
    rng = np.random.default_rng(seed)
    x = rng.uniform(-1.0, 1.0, size=(240, 2))
    gaps = 1.0 + 0.5 * np.sin(2.0 * x[:, 0]) + 0.2 * x[:, 1]
    focus = np.arange(240) >= 200
    return x, gaps + np.where(focus, 0.3 * x[:, 0], 0.0), focus


def test_a_focus_fits_the_structures_the_head_is_used_on() -> None:
    """Scored on the focus structures, the CV gives the others a weaker say: error on new 'MD frames' drops."""
    x, gaps, focus = _focus_data(0)
    plain = fit_kernel_head(x, gaps)
    focused = fit_kernel_head(x, gaps, focus=focus)
    x_new, _, _ = _focus_data(1)
    truth = 1.0 + 0.5 * np.sin(2.0 * x_new[:, 0]) + 0.2 * x_new[:, 1] + 0.3 * x_new[:, 0]
    plain_mae = np.abs(plain.predict(x_new) - truth).mean()
    focused_mae = np.abs(focused.predict(x_new) - truth).mean()
    assert plain.other_factor == 1.0 and focused.other_factor >= 10.0
    assert focused_mae < 0.5 * plain_mae and plain_mae > 0.05  # the plain head follows the many (0.3 x0 ~ 0.15 eV)
    too_few = focus & (np.arange(240) < 204)  # 4 flagged < 5 folds: no focus, the plain head exactly
    assert np.allclose(fit_kernel_head(x, gaps, focus=too_few).predict(x_new), plain.predict(x_new))
    with pytest.raises(InvalidInputError, match="one flag per structure"):
        fit_kernel_head(x, gaps, focus=focus[:10])


def test_a_head_written_before_the_focus_reads_as_unfocused(tmp_path: Path) -> None:
    x, gaps, focus = _focus_data(0)
    head = fit_kernel_head(x, gaps, focus=focus)
    head.save(tmp_path)
    assert KernelGapHead.load(tmp_path).other_factor == head.other_factor
    meta = json.loads((tmp_path / "head.json").read_text())
    del meta["other_factor"]
    (tmp_path / "head.json").write_text(json.dumps(meta))
    old = KernelGapHead.load(tmp_path)
    assert old.other_factor == 1.0 and np.allclose(old.predict(x), head.predict(x))


def test_a_kernel_gap_model_is_bound_to_its_mace_file_and_reads_no_pickle(tmp_path: Path) -> None:
    """kernel.json names the MACE file by relative path and SHA-256; arrays are read without pickle."""
    from capml_core.models.gap_head import KernelGapModel
    from capml_core.provenance import file_sha256

    x, y = _data(60, 0)
    project = tmp_path / "project"
    mace_file = project / "mlip" / "model.capml-mace.pt"
    mace_file.parent.mkdir(parents=True)
    mace_file.write_bytes(b"stands in for a MACE file: only its hash is read here")
    model = KernelGapModel(fit_kernel_head(x, y), mace_file, file_sha256(mace_file), ("Ag", "S"), {"seed": 1})
    model.save(project / "gnn" / "member")
    moved = tmp_path / "moved"  # the project moves: the relative path follows
    project.rename(moved)
    loaded = KernelGapModel.load(moved / "gnn" / "member")
    assert loaded.mace_model == (moved / "mlip" / "model.capml-mace.pt").resolve() and loaded.species == ("Ag", "S")
    assert np.allclose(loaded.predict_descriptors(x[:5]), model.predict_descriptors(x[:5]))
    directory = moved / "gnn" / "member"
    marker = moved / "ran"
    np.savez(directory / "head.npz", mean=np.array([print], dtype=object), scale=x[0], points=x, weights=y)
    with pytest.raises(InvalidInputError, match="not a readable capml gap head"):
        KernelGapModel.load(directory)  # an object array would need pickle: refused
    assert not marker.exists()
    (moved / "mlip" / "model.capml-mace.pt").write_bytes(b"another model")
    with pytest.raises(InvalidInputError, match="changed since the head was fitted"):
        KernelGapModel.load(directory)
    (moved / "mlip" / "model.capml-mace.pt").unlink()
    with pytest.raises(InvalidInputError, match="is missing"):
        KernelGapModel.load(directory)
    (directory / "kernel.json").write_text("[1, 2]")
    with pytest.raises(InvalidInputError, match="kernel gap model format None"):
        KernelGapModel.load(directory)
