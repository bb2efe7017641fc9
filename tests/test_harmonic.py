"""Harmonic phonons at 0 K: Γ modes, band paths, folded dispersion, DOS, imaginary modes; the stage with MACE."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

from capml_core.config.loading import load_config
from capml_core.errors import InvalidInputError
from capml_core.physics.harmonic import cell_dispersion, find_imaginary_modes, harmonic_phonons, phonon_dos
from capml_core.physics.phonons import dispersion, gamma_modes, symmetry_path, unfolded_dispersion
from capml_core.stages.training_sets import end_member_force_constants
from capml_core.store.database import Store
from tests.conftest import DEMO_CONFIG


@pytest.fixture(scope="module")
def bromide():  # ForceConstants of the cubic Ag3SBr 2x2x2 cell (GPAW PBEsol, bundled)
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
    assert folded.frequencies_thz.shape[1] == 120
    # the 40-atom cell's own simple-cubic zone (lattice 2a): its X, M, R in its own reciprocal basis
    assert [t for _, t in folded.ticks] == ["Γ", "X", "M", "Γ", "R", "X|R", "M"]
    assert folded.path.points["X"] == (0.0, 0.5, 0.0) and folded.path.points["R"] == (0.5, 0.5, 0.5)
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


def test_an_ordered_supercell_unfolds_onto_the_parent_bands_and_disorder_spreads_their_weight(bromide) -> None:
    from capml_core.system.structures import build_cubic_antiperovskite

    parent = build_cubic_antiperovskite("Ag", "S", "Br", 4.793)
    unfolded = unfolded_dispersion(bromide.cell, bromide.force_constants, parent, (2, 2, 2))
    primitive = dispersion(bromide.cell, bromide.force_constants)  # the 5-atom cell's own 15 bands
    assert [t for _, t in unfolded.ticks] == [t for _, t in primitive.ticks] == ["Γ", "X", "M", "Γ", "R", "X|R", "M"]
    assert np.allclose(unfolded.distances, primitive.distances, atol=1e-9)
    assert unfolded.frequencies_thz.shape == unfolded.weights.shape == (len(primitive.distances), 120)
    assert np.allclose(unfolded.weights.sum(axis=1), 15.0)  # one parent cell's worth of bands at every q
    for q in range(len(unfolded.distances)):  # all the weight on the parent's bands, none elsewhere
        on_parent = np.abs(unfolded.frequencies_thz[q][:, None] - primitive.frequencies_thz[q][None, :]).min(1) < 1e-4
        assert unfolded.weights[q][on_parent].sum() == pytest.approx(15.0, abs=1e-8)
    # four of eight halogens iodine in a low-symmetry arrangement (its masses): the weight spreads over more bands
    mixed = bromide.cell.copy()
    halogens = [i for i, s in enumerate(mixed.get_chemical_symbols()) if s == "Br"]
    symbols = mixed.get_chemical_symbols()
    for i in (0, 1, 2, 5):
        symbols[halogens[i]] = "I"
    mixed.set_chemical_symbols(symbols)
    disordered = unfolded_dispersion(mixed, bromide.force_constants, parent, (2, 2, 2))
    assert np.allclose(disordered.weights.sum(axis=1), 15.0)

    def purity(bands) -> float:  # mean over q of sum_b w^2 / 15: 1 when each parent band sits on one band
        return float(((bands.weights**2).sum(axis=1) / 15.0).mean())

    assert purity(unfolded) > 0.93 and purity(disordered) < 0.82  # measured 0.947 and 0.793
    # not a supercell of the parent: said, with the site and the distance
    moved = bromide.cell.copy()
    moved.positions[0] += (1.6, 1.0, 0.0)
    with pytest.raises(InvalidInputError, match="not a \\(2, 2, 2\\) supercell.*Å away"):
        unfolded_dispersion(moved, bromide.force_constants, parent, (2, 2, 2))
    with pytest.raises(InvalidInputError, match="40 atoms is not a \\(3, 3, 3\\) supercell"):
        unfolded_dispersion(bromide.cell, bromide.force_constants, parent, (3, 3, 3))


@pytest.mark.slow
def test_stage_computes_each_lowest_structure_once(trained, tmp_path: Path) -> None:
    from capml_core.stages.disorder import run_disorder_scan
    from capml_core.stages.phonons import run_harmonic_phonons
    from capml_core.store.queries import latest_model, latest_scan_id

    source, config, _, _ = trained
    project = tmp_path / "project"
    shutil.copytree(source, project)
    store = Store(project)
    model_id = latest_model(store)[0]
    config = config.model_copy(update={"disorder": config.disorder.model_copy(update={"workers": 2})})
    run_disorder_scan(store, config, model_id=model_id)
    ids = {"model_id": model_id, "scan_id": latest_scan_id(store)}
    results = run_harmonic_phonons(store, config, **ids)
    assert [r.composition_x for r in results] == [0.0, 0.25, 0.5, 0.75, 1.0]
    for r in results:  # each dispersion follows its structure's own symmetry: cubic for the end members
        labels = store.load_arrays(r.artifact_id)["tick_labels"].tolist()
        path = symmetry_path(store.load_atoms(r.structure_hash))
        assert labels[0] == "Γ" and set("|".join(labels).split("|")) == set(path.labels)
        if r.composition_x in (0.0, 1.0):
            assert labels == ["Γ", "X", "M", "Γ", "R", "X|R", "M"]
    arrays = store.load_arrays(results[2].artifact_id)
    # x = 0.5 unfolded onto the 5-atom parent's zone: every q-point carries one parent cell's 15 bands of weight
    assert arrays["unfolded_tick_labels"].tolist() == ["Γ", "X", "M", "Γ", "R", "X|R", "M"]
    assert arrays["unfolded_thz"].shape == arrays["unfolded_weights"].shape == (len(arrays["unfolded_distances"]), 120)
    assert np.allclose(arrays["unfolded_weights"].sum(axis=1), 15.0)
    fc = arrays["force_constants"]
    assert fc.shape == (40, 40, 3, 3) and np.allclose(fc.sum(axis=1), 0.0, atol=1e-3)  # acoustic sum rule
    assert np.allclose(fc, fc.transpose(1, 0, 3, 2), atol=1e-3)  # symmetric (eV/Å²)
    gamma = np.sort(np.abs(arrays["gamma_frequencies_thz"]))
    assert gamma[:3].max() < 0.05  # three acoustic zeros
    for r in results:
        assert r.imaginary.n_gamma == int(np.sum(store.load_arrays(r.artifact_id)["gamma_frequencies_thz"] < -0.05))
    assert len(run_harmonic_phonons(store, config, **ids)) == 5
    assert store.query("SELECT count(*) AS n FROM phonon_harmonic")["n"][0] == 5  # not recomputed


# ------------------------------------------------------------------------------------------- band paths
def _parent(c_over_a: float = 1.0, axis: int = 2):  # Atoms
    from capml_core.system.structures import build_cubic_antiperovskite

    parent = build_cubic_antiperovskite("Ag", "S", "Br", 4.793)
    lengths = np.full(3, 4.793)
    lengths[axis] *= c_over_a
    parent.set_cell(np.diag(lengths), scale_atoms=True)
    return parent


def test_cubic_parent_gets_the_simple_cubic_path_with_its_break() -> None:
    path = symmetry_path(_parent())
    assert path.spacegroup == 221 and path.bravais == "cP2"  # Pm-3m
    assert path.segments == (("Γ", "X", "M", "Γ", "R", "X"), ("R", "M"))  # X|R: a jump, not a line X-R
    assert path.points["Γ"] == (0.0, 0.0, 0.0) and path.points["M"] == (0.5, 0.5, 0.0)
    assert path.points["R"] == (0.5, 0.5, 0.5)
    assert sorted(path.points["X"]) == [0.0, 0.0, 0.5]  # a face centre of the cubic zone
    noisy = _parent()
    noisy.positions += np.random.default_rng(0).normal(scale=1e-4, size=noisy.positions.shape)  # a relaxation's
    assert symmetry_path(noisy).segments == path.segments  # noise (Å) does not lower the path's symmetry
    assert symmetry_path(noisy, symprec=1e-6).bravais == "aP2"  # ... unless the tolerance is below it: triclinic


def test_strained_parents_get_their_own_path_in_the_cell_s_basis() -> None:
    tetragonal = symmetry_path(_parent(1.03))
    assert tetragonal.spacegroup == 123 and tetragonal.bravais == "tP1"  # P4/mmm
    assert {"Z", "A"} <= set(tetragonal.labels) and "Z" in tetragonal.segments[0]
    assert tetragonal.points["Z"] == (0.0, 0.0, 0.5) and tetragonal.points["A"] == (0.5, 0.5, 0.5)
    # the same strain along a: seekpath's standard cell puts the 4-fold axis along c, the path comes back
    # in this cell's basis, so Z (along the 4-fold axis) lies along b1 here
    along_a = symmetry_path(_parent(1.03, axis=0))
    assert abs(along_a.points["Z"][0]) == 0.5 and along_a.points["Z"][1:] == (0.0, 0.0)
    assert sorted(np.abs(along_a.points["A"])) == [0.5, 0.5, 0.5]


def test_a_decorated_supercell_gets_the_path_of_its_own_zone_and_symmetry() -> None:
    """2x2x2 cell (40 atoms): cubic as the end member; Br/I in alternating layers along c: tetragonal P4/mmm."""
    end_member = _parent().repeat(2)
    assert symmetry_path(end_member).bravais == "cP2"
    assert symmetry_path(end_member).points["X"] == (0.0, 0.5, 0.0)  # of the 40-atom cell's own zone, not (0, 1, 0)
    layered = end_member.copy()
    symbols = layered.get_chemical_symbols()
    for i, position in enumerate(layered.get_scaled_positions()):
        if symbols[i] == "Br" and position[2] > 0.25:
            symbols[i] = "I"
    layered.set_chemical_symbols(symbols)
    path = symmetry_path(layered)
    assert path.spacegroup == 123 and path.bravais == "tP1" and path.points["Z"] == (0.0, 0.0, 0.5)


def test_dispersion_of_a_strained_cell_follows_its_own_path(bromide) -> None:
    """The bundled force constants on a 1 % tetragonally strained copy: the ticks are the tetragonal path's."""
    from capml_core.physics.phonons import build_phonopy

    cell = bromide.cell.copy()
    cell.set_cell(np.asarray(cell.cell[:]) @ np.diag([1.0, 1.0, 1.01]), scale_atoms=True)
    bands = dispersion(cell, bromide.force_constants)
    labels = [t for _, t in bands.ticks]
    assert labels[:4] == ["Γ", "X", "M", "Γ"] and {"Z", "A", "R"} <= set(labels) and bands.path.bravais == "tP1"
    # the frequencies at the Z tick are phonopy's at Z of the 5-atom primitive cell the path was made for
    phonon = build_phonopy(cell, bromide.force_constants, primitive_matrix="auto")
    assert len(phonon.primitive) == 5
    phonon.run_qpoints([list(bands.path.points["Z"])])
    z_distance = next(d for d, t in bands.ticks if t == "Z")
    row = bands.frequencies_thz[int(np.argmin(np.abs(bands.distances - z_distance)))]
    assert np.allclose(np.sort(row), np.sort(phonon.qpoints.frequencies[0]), atol=1e-8)
    assert bands.path.points["Z"] == (0.0, 0.0, 0.5)


def test_harmonic_phonons_of_an_atoms_and_a_calculator() -> None:
    """EMT copper, conventional fcc cell (4 atoms): stable, three acoustic zeros, X-point modes folded to Γ."""
    from ase.build import bulk
    from ase.calculators.emt import EMT

    cell = bulk("Cu", "fcc", a=3.6, cubic=True)
    result = harmonic_phonons(cell, EMT())
    assert result.force_constants.shape == (4, 4, 3, 3)
    frequencies = np.sort(result.gamma.frequencies_thz)
    assert np.all(np.abs(frequencies[:3]) < 0.05) and frequencies[3] > 3.0  # X modes of fcc Cu (EMT) fold to Γ
    assert not result.imaginary.unstable and result.imaginary.n_gamma == 0 and result.imaginary.branches == []
    assert result.dispersion.path.bravais == "cP2"  # the 4-atom cell's own zone: simple cubic
    assert np.trapezoid(result.dos_states_per_thz, result.dos_frequencies_thz) == pytest.approx(12.0, rel=0.01)
