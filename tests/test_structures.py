from __future__ import annotations

import numpy as np
import pytest
from ase.io import read, write

from capml_core.config.loading import load_config
from capml_core.system.structures import (
    build_cubic_antiperovskite,
    structure_hash,
    sublattice_site_count,
    substituted_fraction,
    vegard_lattice_a,
)
from tests.conftest import DEMO_CONFIG, PBESOL_FILE


def test_antiperovskite_is_pm3m_with_the_right_sites() -> None:
    import spglib

    atoms = build_cubic_antiperovskite("Ag", "S", "Br", 4.793)
    cell = (atoms.cell[:], atoms.get_scaled_positions(), atoms.numbers)
    assert spglib.get_spacegroup(cell, symprec=1e-5) == "Pm-3m (221)"
    assert atoms.get_chemical_symbols() == ["Ag", "Ag", "Ag", "S", "Br"]
    # Ag-S distance a/2, Ag-Br distance a/sqrt(2)
    assert atoms.get_distance(0, 3) == pytest.approx(4.793 / 2)
    assert atoms.get_distance(0, 4, mic=True) == pytest.approx(4.793 / np.sqrt(2))


def test_vegard_end_points_and_midpoint() -> None:
    ends = {"Br": 4.793, "I": 4.869}
    assert vegard_lattice_a(1.0, ("Br", "I"), ends) == pytest.approx(4.793)
    assert vegard_lattice_a(0.0, ("Br", "I"), ends) == pytest.approx(4.869)
    assert vegard_lattice_a(0.5, ("Br", "I"), ends) == pytest.approx(4.831)


def test_supercell_matches_the_bundled_reference_cells() -> None:
    system = load_config(DEMO_CONFIG).config.system
    reference = read(PBESOL_FILE, index=0)  # seed 1000: 1 Br, 7 I
    x = reference.info["x_br"]
    cell = system.supercell_at(x)
    assert len(cell) == 40
    assert np.allclose(cell.cell[:], reference.cell[:], atol=1e-9)  # Vegard: 2 x 4.8595 = 9.719 Å
    parent = cell.copy()
    assert sublattice_site_count(build_cubic_antiperovskite("Ag", "S", "Br", 1.0), "Br", (2, 2, 2)) == 8
    # ideal positions are within the random displacement (sigma 0.04 Å) of the reference ones
    assert np.sqrt(np.mean((reference.positions - parent.positions) ** 2)) == pytest.approx(0.04, abs=0.01)
    assert substituted_fraction(reference, ("Br", "I")) == pytest.approx(0.125)


def test_hash_is_stable_and_content_sensitive(tmp_path) -> None:
    atoms = read(PBESOL_FILE, index=3)
    h = structure_hash(atoms)
    assert len(h) == 20
    write(tmp_path / "a.extxyz", atoms)
    assert structure_hash(read(tmp_path / "a.extxyz")) == h  # survives a file round trip
    atoms.calc = None
    atoms.info.clear()
    assert structure_hash(atoms) == h  # labels and metadata do not enter
    moved = atoms.copy()
    moved.positions[0, 0] += 1e-4
    assert structure_hash(moved) != h
    swapped = atoms.copy()
    symbols = swapped.get_chemical_symbols()
    i_site = symbols.index("I")
    symbols[i_site] = "Br"
    swapped.set_chemical_symbols(symbols)
    assert structure_hash(swapped) != h
    hashes = {structure_hash(a) for a in read(PBESOL_FILE, index=":")}
    assert len(hashes) == 103  # all reference structures are distinct
