"""Harmonic phonons at 0 K: Γ modes, folded dispersion, DOS, imaginary modes; the stage on MACE structures."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

from capml_core.config.loading import load_config
from capml_core.physics.harmonic import cell_dispersion, find_imaginary_modes, gamma_modes, phonon_dos
from capml_core.physics.phonons import dispersion
from capml_core.store.database import Store
from capml_core.system.training_sets import end_member_force_constants
from tests.conftest import DEMO_CONFIG


@pytest.fixture(scope="module")
def bromide():  # noqa: ANN201 - ForceConstants of the cubic Ag3SBr 2x2x2 cell (GPAW PBEsol, bundled)
    config = load_config(DEMO_CONFIG).config
    return end_member_force_constants(config.system, config.dataset, "Br", cache_dir=Path("unused"))


def test_gamma_modes_are_orthonormal_and_the_dos_counts_every_mode(bromide) -> None:
    modes = gamma_modes(bromide.cell, bromide.force_constants)
    assert modes.frequencies_thz.shape == (120,) and modes.eigenvectors.shape == (120, 120)
    overlap = modes.eigenvectors.conj().T @ modes.eigenvectors
    assert np.allclose(overlap, np.eye(120), atol=1e-8)
    weights = modes.species_weights(bromide.cell.get_chemical_symbols())
    assert np.allclose(sum(weights.values()), 1.0)
    softest = int(np.argmin(modes.frequencies_thz))
    assert weights["Br"][softest] > 0.5  # the softest modes of the cubic parent are halogen modes
    frequencies, dos = phonon_dos(bromide.cell, bromide.force_constants)
    assert np.trapezoid(dos, frequencies) == pytest.approx(120.0, rel=0.01)  # 3N states per cell


def test_folded_dispersion_matches_the_primitive_one_at_gamma_and_marks_the_unstable_branches(bromide) -> None:
    folded = cell_dispersion(bromide.cell, bromide.force_constants)
    assert folded.frequencies_thz.shape[1] == 120 and [t for _, t in folded.ticks][:3] == ["Γ", "X", "M"]
    primitive = dispersion(bromide.cell, bromide.force_constants)
    # Γ of the 40-atom cell carries Γ, X, M and R of the 5-atom cell
    for label in ("Γ", "X", "M", "R"):
        where = [d for d, t in primitive.ticks if label in t.split("|")][0]
        values = primitive.frequencies_thz[np.argmin(np.abs(primitive.distances - where))]
        for value in values:
            assert np.min(np.abs(folded.frequencies_thz[0] - value)) < 1e-6
    modes = gamma_modes(bromide.cell, bromide.force_constants)
    imaginary = find_imaginary_modes(modes, folded)
    assert imaginary.unstable and imaginary.n_gamma == 66  # DFT: 66 of 120 modes imaginary at 0 K
    assert imaginary.min_frequency_thz == pytest.approx(-2.394, abs=1e-3)
    assert imaginary.branches[0][2] == pytest.approx(imaginary.min_frequency_thz)
    assert len(imaginary.branches) >= 66


@pytest.mark.slow
def test_stage_computes_each_lowest_structure_once(trained, tmp_path: Path) -> None:
    from capml_core.stages.disorder import run_disorder_scan
    from capml_core.stages.phonons import run_harmonic_phonons

    source, config, _, _ = trained
    project = tmp_path / "project"
    shutil.copytree(source, project)
    store = Store(project)
    run_disorder_scan(store, config.model_copy(update={"disorder": config.disorder.model_copy(update={"workers": 2})}))
    results = run_harmonic_phonons(store, config)
    assert [r.composition_x for r in results] == [0.0, 0.25, 0.5, 0.75, 1.0]
    arrays = store.load_arrays(results[2].artifact_id)
    fc = arrays["force_constants"]
    assert fc.shape == (40, 40, 3, 3) and np.allclose(fc.sum(axis=1), 0.0, atol=1e-3)  # acoustic sum rule
    assert np.allclose(fc, fc.transpose(1, 0, 3, 2), atol=1e-3)  # symmetric (eV/Å²)
    gamma = np.sort(np.abs(arrays["gamma_frequencies_thz"]))
    assert gamma[:3].max() < 0.05  # three acoustic zeros
    for r in results:
        assert r.imaginary.n_gamma == int(np.sum(store.load_arrays(r.artifact_id)["gamma_frequencies_thz"] < -0.05))
    assert len(run_harmonic_phonons(store, config)) == 5
    assert store.query("SELECT count(*) AS n FROM phonon_harmonic")["n"][0] == 5  # not recomputed
