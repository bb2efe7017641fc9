"""Disorder scan: symmetry classes with multiplicities (checked against a brute-force orbit count with an
independently built group), the all-or-sample rule, probabilities, MACE relaxations, resume, CLI.
"""

from __future__ import annotations

import itertools
import math
import shutil
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from capml_core.config.loading import load_config
from capml_core.config.stage_sections import DisorderSection
from capml_core.errors import InvalidInputError
from capml_core.store.database import Store
from capml_core.store.queries import latest_model, latest_scan_id
from capml_core.system.arrangements import (
    Arrangement,
    arrangement_structure,
    configurational_probabilities,
    count_inequivalent,
    enumerate_inequivalent,
    plan_composition,
    sample_inequivalent,
    site_permutations,
    sublattice_sites,
)
from tests.conftest import DEMO_CONFIG, REPO


def _system(n: int):  # SystemSection
    system = load_config(DEMO_CONFIG).config.system
    return system.model_copy(update={"supercell": (n, n, n), "compositions": [0.0]})


def _spglib_permutations(n: int) -> np.ndarray:
    cell = _system(n).supercell_at(0.0)
    return site_permutations(cell, sublattice_sites(cell, "Br"))


def _independent_group(n: int) -> np.ndarray:
    """The halogen sites of an n x n x n cubic supercell as integer points (mod n) and the 48 x n³ operations
    of Pm-3m built by hand (signed permutation matrices about a halogen site, lattice translations); returns
    the site permutations in the order of the points of capml's supercell."""
    cell = _system(n).supercell_at(0.0)
    sites = sublattice_sites(cell, "Br")
    points = (
        np.round(cell.get_scaled_positions()[sites] * n - cell.get_scaled_positions()[sites[0]] * n).astype(int) % n
    )
    index = {tuple(p): i for i, p in enumerate(points)}
    perms = set()
    for axes in itertools.permutations(range(3)):
        for signs in itertools.product((1, -1), repeat=3):
            matrix = np.zeros((3, 3), dtype=int)
            for row, (axis, sign) in enumerate(zip(axes, signs, strict=True)):
                matrix[row, axis] = sign
            for shift in itertools.product(range(n), repeat=3):
                images = (points @ matrix.T + shift) % n
                perms.add(tuple(index[tuple(p)] for p in images))
    return np.array(sorted(perms))


def _brute_force_orbits(perms: np.ndarray, n_sites: int, k: int) -> list[int]:
    """Orbit sizes of all k-subsets, by visiting every labelling and marking its images."""
    seen: set[tuple[int, ...]] = set()
    sizes = []
    for chosen in itertools.combinations(range(n_sites), k):
        if chosen in seen:
            continue
        orbit = {tuple(sorted(int(perm[i]) for i in chosen)) for perm in perms}
        seen |= orbit
        sizes.append(len(orbit))
    return sorted(sizes)


def test_2x2x2_classes_match_a_brute_force_orbit_count_with_a_hand_built_group() -> None:
    perms = _spglib_permutations(2)
    assert perms.shape == (48, 8)  # 384 space-group operations act as 48 permutations of the 8 sites
    assert set(map(tuple, perms)) == set(map(tuple, _independent_group(2)))
    counts = [count_inequivalent(perms, k) for k in range(9)]
    assert counts == [1, 1, 3, 3, 6, 3, 3, 1, 1]  # 22 of 256 labellings
    for k in range(9):
        classes = enumerate_inequivalent(perms, k)
        assert sorted(a.multiplicity for a in classes) == _brute_force_orbits(perms, 8, k)
        assert sum(a.multiplicity for a in classes) == math.comb(8, k)
        assert all(a.key.count("1") == k for a in classes)
    assert sorted(a.multiplicity for a in enumerate_inequivalent(perms, 4)) == [2, 6, 6, 8, 24, 24]


def test_3x3x3_counts_without_enumerating_the_labellings() -> None:
    perms = _spglib_permutations(3)
    assert perms.shape == (1296, 27)  # 48 point operations x 27 translations, all distinct on 27 sites
    assert set(map(tuple, perms)) == set(map(tuple, _independent_group(3)))
    counts = [count_inequivalent(perms, k) for k in range(28)]
    assert counts[:5] == [1, 1, 3, 10, 34] and counts == counts[::-1]
    for k in (2, 3):
        assert sorted(a.multiplicity for a in enumerate_inequivalent(perms, k)) == _brute_force_orbits(perms, 27, k)
    # all 2^27 labellings, counted by the orbit sizes: every class's orbit divides the group order
    assert counts[13] == 16384
    sample = sample_inequivalent(perms, 13, 50, np.random.default_rng(1))
    assert len({a.key for a in sample}) == 50
    assert all(1296 % a.multiplicity == 0 and a.key.count("1") == 13 for a in sample)
    # a sampled class's key is the largest string of its orbit: the same class drawn again gives the same key
    again = sample_inequivalent(perms, 13, 50, np.random.default_rng(1))
    assert [a.key for a in again] == [a.key for a in sample]


def test_the_papers_rule_all_up_to_max_enumerated_then_a_sample() -> None:
    perms = _spglib_permutations(3)
    rule = DisorderSection(max_enumerated=100, sample_size=20)
    rng = np.random.default_rng(0)
    small = plan_composition(perms, 4 / 27, max_enumerated=rule.max_enumerated, sample_size=rule.sample_size, rng=rng)
    assert (small.selection, small.n_inequivalent, len(small.arrangements)) == ("all", 34, 34)
    assert sum(a.multiplicity for a in small.arrangements) == math.comb(27, 4) == small.n_labellings
    middle = plan_composition(
        perms, 6 / 27, max_enumerated=rule.max_enumerated, sample_size=rule.sample_size, rng=rng
    )  # 321 classes: between 100 and 1000
    assert (middle.selection, len(middle.arrangements)) == ("sample", 20)
    large = plan_composition(perms, 13 / 27, max_enumerated=rule.max_enumerated, sample_size=rule.sample_size, rng=rng)
    assert (large.selection, large.n_inequivalent, len(large.arrangements)) == ("sample", 16384, 20)
    with pytest.raises(InvalidInputError, match="x = 0.3 is not realisable on 27 sites"):
        plan_composition(perms, 0.3, max_enumerated=rule.max_enumerated, sample_size=rule.sample_size, rng=rng)


def test_arrangement_structure_puts_the_species_where_the_key_says() -> None:
    system = load_config(DEMO_CONFIG).config.system
    atoms = arrangement_structure(
        system.supercell_at(0.5), system.sublattice.site_species, system.sublattice.species, Arrangement("10010110", 2)
    )
    sites = [i for i, s in enumerate(atoms.get_chemical_symbols()) if s in ("Br", "I")]
    assert "".join("1" if atoms[i].symbol == "Br" else "0" for i in sites) == "10010110"
    expected = system.supercell_at(0.5)
    assert np.allclose(atoms.cell[:], expected.cell[:]) and atoms.get_chemical_formula() == "Ag24Br4I4S8"


def test_configurational_probabilities_weigh_multiplicity_and_energy() -> None:
    energies, mult = np.array([0.0, 0.01, 0.05]), np.array([2, 24, 6])
    cold = configurational_probabilities(energies, mult, 0.0)
    assert cold.tolist() == [1.0, 0.0, 0.0]
    warm = configurational_probabilities(energies, mult, 300.0)
    assert warm.sum() == pytest.approx(1.0)
    kt = 8.617333262e-5 * 300.0
    assert warm[1] / warm[0] == pytest.approx(12.0 * np.exp(-0.01 / kt))
    hot = configurational_probabilities(energies, mult, 1e7)
    assert hot == pytest.approx(mult / mult.sum(), rel=1e-3)


def test_cli_plan_prints_counts_and_multiplicities(tmp_path: Path) -> None:
    from flows.cli import app

    config = tmp_path / "demo.toml"
    config.write_text(
        DEMO_CONFIG.read_text()
        .replace('"../', f'"{REPO}/data/')
        .replace("compositions = [0.0, 0.25, 0.5, 0.75, 1.0]", "compositions = [0.0, 0.125, 0.5]")
    )
    result = CliRunner().invoke(app, ["disorder", "-c", str(config), "--plan"])
    assert result.exit_code == 0, result.output
    lines = [line for line in result.output.splitlines() if line.strip().startswith(("│ 0", "| 0"))]
    assert len(lines) == 3 and "24, 24, 8, 6, 6, 2" in result.output and "70" in result.output


# ------------------------------------------------------------------------------------------- slow
@pytest.mark.slow
def test_scan_relaxes_each_class_once_ranks_and_resumes(trained, tmp_path: Path) -> None:
    from capml_core.physics.relax import relax_structure
    from capml_core.stages.disorder import run_disorder_scan
    from capml_core.stages.mlip import run_calculator
    from capml_core.store.queries import lowest_energy_structures

    source, config, _, _ = trained
    project = tmp_path / "project"
    shutil.copytree(source, project)
    store = Store(project)
    config = config.model_copy(update={"disorder": config.disorder.model_copy(update={"workers": 2})})
    seen: list[tuple[int, int]] = []
    result = run_disorder_scan(
        store, config, model_id=latest_model(store)[0], progress=lambda done, total: seen.append((done, total))
    )
    assert result.n_relaxed_now == 14 and seen[-1] == (14, 14)
    assert {x: len(rows) for x, rows in result.ranking.items()} == {0.0: 1, 0.25: 3, 0.5: 6, 0.75: 3, 1.0: 1}
    relaxations = store.query("SELECT * FROM disorder_relaxations")
    assert relaxations["converged"].all() and (relaxations["max_force_ev_per_a"] < 0.05).all()
    # the paper's mode: cell relaxed, fractional positions kept
    row = relaxations.query("composition_x == 0.5").iloc[0]
    relaxed = store.load_atoms(row["structure_hash"])
    start = arrangement_structure(
        config.system.supercell_at(0.5),
        config.system.sublattice.site_species,
        config.system.sublattice.species,
        Arrangement(row["arrangement"], 1),
    )
    shift = relaxed.get_scaled_positions() - start.get_scaled_positions()
    assert np.abs(shift - np.round(shift)).max() < 1e-5
    # symmetry reduction is physics-safe: an equivalent arrangement (a symmetry image) relaxes to the same energy
    perms = _spglib_permutations(2)
    key = np.array(list(row["arrangement"]))
    images = set()
    for perm in perms:
        moved = np.empty_like(key)
        moved[perm] = key
        images.add("".join(moved))
    images.discard(row["arrangement"])
    assert images  # every x = 0.5 class has multiplicity >= 2
    image = min(images)
    calculator = run_calculator(store, latest_model(store)[0], device="cpu", dtype="float64")
    other = relax_structure(
        arrangement_structure(
            config.system.supercell_at(0.5),
            config.system.sublattice.site_species,
            config.system.sublattice.species,
            Arrangement(image, 1),
        ),
        calculator,
        mode="cell",
        fmax_ev_per_a=0.05,
        max_steps=300,
    )
    assert other.energy_ev / len(start) == pytest.approx(row["energy_ev_per_atom"], abs=2e-5)
    # probabilities sum to one per composition and temperature
    sums = store.query("SELECT sum(probability) AS s FROM disorder_probabilities GROUP BY composition_x, temperature_k")
    assert np.allclose(sums["s"], 1.0)
    lowest = lowest_energy_structures(store, latest_scan_id(store))
    assert [a.get_chemical_formula() for a in lowest.values()][2] == "Ag24Br4I4S8"
    # resume: forget three relaxations, run again: only those are redone, ranking unchanged
    with store.write() as writer:
        writer.con.execute(
            "DELETE FROM disorder_relaxations WHERE composition_x = 0.5 AND arrangement IN "
            "(SELECT arrangement FROM disorder_relaxations WHERE composition_x = 0.5 ORDER BY arrangement LIMIT 3)"
        )
    again = run_disorder_scan(
        store, config.model_copy(update={"disorder": config.disorder}), model_id=latest_model(store)[0]
    )
    assert again.n_relaxed_now == 3 and again.scan_id == result.scan_id
    for x, rows in result.ranking.items():
        assert [r[0] for r in again.ranking[x]] == [r[0] for r in rows]
        assert np.allclose([r[1] for r in again.ranking[x]], [r[1] for r in rows], atol=1e-8)


def _disorder_page() -> None:
    from dashboard.views.disorder import render_disorder

    render_disorder()


@pytest.mark.slow
def test_dashboard_page_ranks_shows_the_structure_and_mixing(trained, tmp_path: Path, monkeypatch) -> None:
    import json

    import streamlit as st
    from streamlit.testing.v1 import AppTest

    from capml_core.stages.disorder import run_disorder_scan

    source, config, _, _ = trained
    project = tmp_path / "project"
    shutil.copytree(source, project)
    monkeypatch.setenv("CAPML_PROJECT_DIR", str(project))
    st.cache_data.clear()
    empty = AppTest.from_function(_disorder_page, default_timeout=60).run()
    assert "No disorder scan yet" in empty.info[0].value
    run_disorder_scan(Store(project), config, model_id=latest_model(Store(project))[0])
    st.cache_data.clear()
    at = AppTest.from_function(_disorder_page, default_timeout=60).run()
    assert not at.exception
    counts = at.dataframe[0].value
    assert counts["n_inequivalent"].tolist() == [1, 3, 6, 3, 1] and counts["n_labellings"].tolist() == [
        1,
        28,
        70,
        28,
        1,
    ]
    assert len(at.get("plotly_chart")) == 2  # ranking, mixing energy; the 3D structure on request
    at.toggle(key="disorder_structure_shown").set_value(True).run()
    specs = [json.loads(c.proto.spec) for c in at.get("plotly_chart")]
    assert len(specs) == 3  # ranking, mixing energy, 3D structure
    from tests.test_dashboard import _decoded

    mixing = _decoded(specs[1]["data"][0]["y"])
    assert len(mixing) == 5 and mixing[0] == 0.0 and mixing[-1] == 0.0  # zero at the end members
    structure = specs[2]
    species = {t["name"] for t in structure["data"] if t.get("mode") == "markers"}
    assert species == {"Ag", "S", "I"}  # x = 0 is the first composition shown
    at.selectbox(key="disorder_x").set_value(0.5).run()
    ranking = at.dataframe[1].value
    assert len(ranking) == 6 and ranking["multiplicity"].sum() == 70 and ranking["rank"].iloc[0] == 1
