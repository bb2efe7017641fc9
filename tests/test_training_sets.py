"""Training structure sets: reproducible, exact compositions, thermal amplitudes with the right physics."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from capml_core.config.loading import load_config
from capml_core.errors import InvalidInputError, NotComputedError
from capml_core.physics.phonons import gamma_frequencies_thz, thermal_displacements
from capml_core.stages.training_sets import (
    end_member_cell,
    end_member_force_constants,
    force_constants_at,
    generate_structure_set,
    plan_structure_set,
)
from capml_core.system.structures import occupy_sublattice, structure_hash, uniform_displacements
from tests.conftest import CONFIGS, DEMO_CONFIG, PAPER_CONFIG

RECIPE = CONFIGS / "ag3sbri-reference-dataset.toml"


@pytest.fixture(scope="module")
def recipe():
    return load_config(RECIPE).config


@pytest.fixture(scope="module")
def end_members(recipe, tmp_path_factory):
    cache = tmp_path_factory.mktemp("fc")
    return {s: end_member_force_constants(recipe.system, recipe.dataset, s, cache_dir=cache) for s in ("Br", "I")}


def test_set_sizes_follow_the_configs(recipe) -> None:
    sizes = {s.name: len(plan_structure_set(recipe.system, s)) for s in recipe.dataset.sets}
    assert sizes == {"gpaw-pbesol": 423, "gpaw-gllbsc": 153}
    paper = load_config(PAPER_CONFIG).config
    assert {s.name: len(plan_structure_set(paper.system, s)) for s in paper.dataset.sets} == {
        "pbesol": 2178,
        "hsesol": 990,
    }
    demo = load_config(DEMO_CONFIG).config
    assert len(plan_structure_set(demo.system, demo.dataset.sets[0])) == 15


def test_any_leading_part_of_a_set_covers_every_composition_and_temperature(recipe) -> None:
    plan = plan_structure_set(recipe.system, recipe.dataset.sets[0])
    assert {p.composition_x for p in plan[:9]} == set(recipe.system.compositions)
    first = plan[:63]  # 9 equilibrium + 6 temperatures x 9 compositions
    assert {(p.temperature_k, p.composition_x) for p in first if p.kind == "thermal"} == {
        (t, x) for t in (100.0, 200.0, 300.0, 400.0, 500.0, 600.0) for x in recipe.system.compositions
    }


def test_sets_regenerate_bit_for_bit_and_are_distinct(recipe, end_members) -> None:
    pbesol, gllbsc = recipe.dataset.sets
    small = pbesol.model_copy(update={"thermal_per_point": 1, "uniform_per_point": 1})
    first = list(generate_structure_set(recipe.system, recipe.dataset, small, end_members))
    again = list(generate_structure_set(recipe.system, recipe.dataset, small, end_members))
    assert [r.structure_hash for r in first] == [r.structure_hash for r in again]
    assert all(np.array_equal(a.atoms.positions, b.atoms.positions) for a, b in zip(first, again, strict=True))
    other = gllbsc.model_copy(update={"thermal_per_point": 1, "uniform_per_point": 1})
    second = list(generate_structure_set(recipe.system, recipe.dataset, other, end_members))
    shared = {r.structure_hash for r in first} & {r.structure_hash for r in second}
    # only the undisplaced end members (one arrangement each) can repeat across sets
    assert shared == {r.structure_hash for r in first if r.kind == "equilibrium" and r.composition_x in (0.0, 1.0)}
    assert len({r.structure_hash for r in first}) == len(first)
    for record in first:
        n_br = record.atoms.get_chemical_symbols().count("Br")
        assert n_br == round(8 * record.composition_x)  # exact composition on the 8 halogen sites
        assert structure_hash(record.atoms) == record.structure_hash
        ideal = recipe.system.supercell_at(record.composition_x)
        assert np.allclose(record.atoms.cell[:], ideal.cell[:])  # Vegard cell
        shift = np.linalg.norm(record.atoms.positions - ideal.positions, axis=1)
        if record.kind == "equilibrium":
            assert shift.max() < 1e-6  # ideal positions (on the 1e-6 Å hash grid)
        elif record.kind == "uniform":
            assert 0.0 < shift.max() <= record.amplitude_a + 2e-6
        else:
            assert record.kind == "thermal" and 0.0 < shift.max() <= recipe.dataset.max_displacement_a + 2e-6


def test_thermal_amplitudes_grow_as_sqrt_t_and_the_gamma_modes_are_those_of_a_soft_lattice(recipe, end_members):
    cell = end_member_cell(recipe.system, "Br")
    fc = end_members["Br"].force_constants
    frequencies = gamma_frequencies_thz(cell, fc)
    assert np.sum(np.abs(frequencies) < 0.05) == 3  # acoustic modes at Γ
    assert frequencies.min() < -0.5  # cubic Ag3SBr is dynamically unstable at 0 K (imaginary modes)
    assert 7.0 < frequencies.max() < 12.0  # S-dominated modes above 7 THz
    symbols = np.array(cell.get_chemical_symbols())

    def rms(temperature: float) -> dict[str, float]:
        u = np.array(
            [
                thermal_displacements(cell, fc, temperature_k=temperature, seed=s, max_displacement_a=None)
                for s in range(150)
            ]
        )
        msd = (u**2).sum(-1).mean(0)
        return {e: float(np.sqrt(msd[symbols == e].mean())) for e in ("Ag", "S", "Br")}

    low, high = rms(300.0), rms(600.0)
    for element in ("Ag", "S", "Br"):
        ratio = high[element] ** 2 / low[element] ** 2
        assert 1.75 < ratio < 2.1, (element, ratio)  # <u²> ∝ T (classical), less for stiff modes (zero point)
    assert low["S"] < low["Ag"]  # S sits in a stiff site, Ag rattles
    assert 0.1 < low["Ag"] < 0.6


def test_mixed_force_constants_interpolate_between_end_members(end_members) -> None:
    half = force_constants_at(0.5, ("Br", "I"), end_members)
    assert np.allclose(half, 0.5 * (end_members["Br"].force_constants + end_members["I"].force_constants))
    assert np.allclose(force_constants_at(1.0, ("Br", "I"), end_members), end_members["Br"].force_constants)


def test_uniform_displacements_fill_the_ball() -> None:
    u = uniform_displacements(20000, 0.4, np.random.default_rng(0))
    lengths = np.linalg.norm(u, axis=1)
    assert lengths.max() <= 0.4 and lengths.mean() == pytest.approx(0.2, abs=0.005)
    assert np.abs(u.mean(axis=0)).max() < 0.005  # no preferred direction


def test_bad_inputs(recipe, tmp_path: Path) -> None:
    cell = recipe.system.supercell_at(0.5)
    with pytest.raises(InvalidInputError, match="x = 0.3 is not realisable on 8 sites"):
        occupy_sublattice(cell, site_species="Br", species=("Br", "I"), x=0.3, rng=np.random.default_rng(0))
    with pytest.raises(InvalidInputError, match="must be > 0"):
        thermal_displacements(cell, np.zeros((40, 40, 3, 3)), temperature_k=-5.0, seed=1)
    with pytest.raises(InvalidInputError, match="amplitude -0.1"):
        uniform_displacements(4, -0.1, np.random.default_rng(0))
    without_files = recipe.dataset.model_copy(update={"force_constants": {}})
    with pytest.raises(NotComputedError, match="no force constants for the Br end member"):
        end_member_force_constants(recipe.system, without_files, "Br", cache_dir=tmp_path)
    broken = tmp_path / "broken.yaml"
    broken.write_text("phonopy:\n  version: [oops\n")
    from capml_core.physics.phonons import load_force_constants

    with pytest.raises(InvalidInputError, match="not a readable phonopy file"):
        load_force_constants(broken)


def test_generated_structures_survive_an_extxyz_round_trip_with_their_hash(recipe, end_members, tmp_path) -> None:
    """Positions are quantized to the hash grid: exporting and re-importing finds the same structures."""
    from ase.io import read, write

    small = recipe.dataset.sets[1].model_copy(update={"thermal_per_point": 3})
    records = list(generate_structure_set(recipe.system, recipe.dataset, small, end_members))
    write(tmp_path / "set.extxyz", [r.atoms for r in records])
    back = read(tmp_path / "set.extxyz", index=":")
    assert [structure_hash(a) for a in back] == [r.structure_hash for r in records]


def test_force_constants_need_a_level_that_gives_forces() -> None:
    from capml_core.config.inputs import ReferenceSection
    from capml_core.errors import InvalidInputError
    from capml_core.stages.mlip import force_function

    with pytest.raises(InvalidInputError, match="force_constants_level = 'gpaw-gllbsc' gives no forces.*allowed: gpaw"):
        force_function("gpaw-gllbsc", ReferenceSection(), None)
    with pytest.raises(InvalidInputError, match="mlip.level = 'vasp-hsesol' gives no forces"):
        force_function("vasp-hsesol", ReferenceSection(), None, field="mlip.level")
    assert callable(force_function("gpaw-pbesol", ReferenceSection(), None))  # computes nothing until called
