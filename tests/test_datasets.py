from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from ase.io import read, write

from capml_core.config.inputs import LabelKeys
from capml_core.config.loading import load_config
from capml_core.errors import DatasetError
from capml_core.stages.datasets import import_labelled_dataset, load_labelled_extxyz
from capml_core.store.database import Store
from capml_core.store.queries import summarise_dataset
from tests.conftest import DEMO_CONFIG, GLLBSC_FILE, PBESOL_FILE

PBESOL_KEYS = LabelKeys.build(prefix="pbesol")
SPECIES = {"Ag", "S", "Br", "I"}


def test_bundled_dataset_is_stored_with_exact_numbers(demo_store_dir: Path) -> None:
    store = Store(demo_store_dir)
    summary = summarise_dataset(store)
    levels = {lv.level: lv for lv in summary.levels}
    # 103 PBEsol + 48 GLLB-SC structures, one equilibrium cell is in both files
    assert summary.n_structures == 150
    assert summary.compositions == tuple(k / 8 for k in range(9))
    pbesol, gllbsc = levels["gpaw-pbesol"], levels["gpaw-gllbsc"]
    assert (pbesol.n_ok, pbesol.n_energy, pbesol.n_forces, pbesol.n_stress, pbesol.n_gap) == (103, 103, 103, 103, 103)
    assert (gllbsc.n_ok, gllbsc.n_energy, gllbsc.n_gap) == (48, 0, 48)
    frames = read(PBESOL_FILE, index=":")
    assert pbesol.gap_mean_ev == pytest.approx(np.mean([f.info["pbesol_gap"] for f in frames]), abs=1e-12)
    # GLLB-SC gaps open the PBEsol gap (derivative discontinuity), as in the reference data
    assert gllbsc.gap_min_ev > pbesol.gap_max_ev
    # labels round-trip exactly, forces in eV/Å with shape (40, 3), stress in ASE Voigt order
    first = frames[0]
    row = store.query(
        "SELECT l.* FROM labels l JOIN structures s USING (structure_hash) "
        "WHERE s.seed = 1000 AND level = 'gpaw-pbesol'"
    )
    assert row["energy_ev"][0] == pytest.approx(first.info["pbesol_energy"], abs=1e-9)
    assert np.allclose(np.reshape(row["forces_ev_per_a"][0], (40, 3)), first.arrays["pbesol_forces"], atol=1e-12)
    assert np.allclose(row["stress_ev_per_a3"][0], first.info["pbesol_stress"], atol=1e-15)
    per_x = store.query("SELECT composition_x, count(*) AS n FROM structures GROUP BY 1 ORDER BY 1")
    assert per_x["n"].sum() == 150 and len(per_x) == 9


def test_reimport_adds_nothing(demo_store_copy: Path) -> None:
    store = Store(demo_store_copy)
    before = store.query("SELECT count(*) AS n FROM labels")["n"][0]
    report = import_labelled_dataset(
        store,
        PBESOL_FILE,
        level="gpaw-pbesol",
        keys=PBESOL_KEYS,
        sublattice_species=("Br", "I"),
        allowed_species=SPECIES,
    )
    assert (report.new_structures, report.new_labels, report.existing_labels) == (0, 0, 103)
    assert store.query("SELECT count(*) AS n FROM labels")["n"][0] == before


def test_same_structures_at_another_level_share_the_structure_rows(demo_store_copy: Path) -> None:
    store = Store(demo_store_copy)
    report = import_labelled_dataset(store, PBESOL_FILE, level="other-level", keys=PBESOL_KEYS)
    assert (report.new_structures, report.new_labels) == (0, 103)


def _bad_copy(tmp_path: Path, edit) -> Path:  # a callable editing a list of frames
    frames = read(PBESOL_FILE, index=":5")
    edit(frames)
    path = tmp_path / "bad.extxyz"
    write(path, frames, format="extxyz")
    return path


def _drop_gap(frames) -> None:
    del frames[2].info["pbesol_gap"]


def _short_forces(frames) -> None:
    frames[1].new_array("pbesol_f2", frames[1].arrays["pbesol_forces"][:, :2].copy())
    del frames[1].arrays["pbesol_forces"]
    frames[1].arrays["pbesol_forces"] = frames[1].arrays.pop("pbesol_f2")


def _nan_energy(frames) -> None:
    frames[4].info["pbesol_energy"] = float("nan")


def _nan_force(frames) -> None:
    frames[0].arrays["pbesol_forces"][3, 1] = np.nan


def _unknown_species(frames) -> None:
    symbols = frames[3].get_chemical_symbols()
    frames[3].set_chemical_symbols(["Cl" if s == "S" else s for s in symbols])


def _negative_gap(frames) -> None:
    frames[0].info["pbesol_gap"] = -0.2


def _bad_stress(frames) -> None:
    frames[2].info["pbesol_stress"] = np.array([1.0, 2.0, 3.0])


@pytest.mark.parametrize(
    ("edit", "expected"),
    [
        (_drop_gap, "frame 2: missing gap label 'pbesol_gap'"),
        (_short_forces, "frame 1: forces 'pbesol_forces' have shape (40, 2), expected (40, 3)"),
        (_nan_energy, "frame 4: energy 'pbesol_energy' = nan: not a finite number"),
        (_nan_force, "frame 0: forces 'pbesol_forces' contain NaN/inf"),
        (_unknown_species, "frame 3: unknown species ['Cl']; allowed: Ag, Br, I, S"),
        (_negative_gap, "frame 0: gap 'pbesol_gap' = -0.2: a band gap cannot be negative"),
        (_bad_stress, "frame 2: stress 'pbesol_stress' has shape (3,), expected 6 Voigt components or 3x3"),
    ],
)
def test_bad_files_are_rejected_and_the_store_is_unchanged(
    demo_store_copy: Path,
    tmp_path: Path,
    edit,
    expected: str,
) -> None:
    store = Store(demo_store_copy)
    before = store.query("SELECT (SELECT count(*) FROM structures) AS s, (SELECT count(*) FROM labels) AS l")
    path = _bad_copy(tmp_path, edit)
    with pytest.raises(DatasetError) as info:
        import_labelled_dataset(
            store,
            path,
            level="gpaw-pbesol-new",
            keys=PBESOL_KEYS,
            sublattice_species=("Br", "I"),
            allowed_species=SPECIES,
        )
    message = str(info.value)
    assert str(path) in message and "nothing was imported" in message
    assert expected in message, message
    after = store.query("SELECT (SELECT count(*) FROM structures) AS s, (SELECT count(*) FROM labels) AS l")
    assert before.equals(after)
    assert store.query("SELECT count(*) AS n FROM levels WHERE level = 'gpaw-pbesol-new'")["n"][0] == 0


def test_unreadable_and_empty_files_never_create_a_store(tmp_path: Path) -> None:
    store = Store(tmp_path / "fresh")
    junk = tmp_path / "junk.extxyz"
    junk.write_text("this is not\nan xyz file\n")
    with pytest.raises(DatasetError, match="not a readable extended-XYZ file"):
        import_labelled_dataset(store, junk, level="x", keys=PBESOL_KEYS)
    with pytest.raises(DatasetError, match="file not found"):
        import_labelled_dataset(store, tmp_path / "nope.extxyz", level="x", keys=PBESOL_KEYS)
    assert not store.exists()


def test_all_problems_are_listed_not_only_the_first(tmp_path: Path) -> None:
    path = _bad_copy(tmp_path, lambda frames: [f.info.pop("pbesol_gap") for f in frames])
    with pytest.raises(DatasetError, match=r"5 problem\(s\) in 5 frames") as info:
        load_labelled_extxyz(path, keys=PBESOL_KEYS)
    assert all(f"frame {i}: missing gap" in str(info.value) for i in range(5))


def test_gap_only_files_and_3x3_stress(tmp_path: Path) -> None:
    records = load_labelled_extxyz(
        GLLBSC_FILE,
        keys=LabelKeys.build(labels=("gap",), prefix="gllbsc"),
        allowed_species=SPECIES,
        amplitude_key="sigma_A",
    )
    assert len(records) == 48 and all(r.energy_ev is None and r.forces_ev_per_a is None for r in records)
    assert {r.amplitude_a for r in records} <= {0.0, 0.04, 0.07, 0.10, 0.13}
    # a 3x3 stress becomes Voigt xx yy zz yz xz xy
    frames = read(PBESOL_FILE, index=":1")
    voigt = np.asarray(frames[0].info["pbesol_stress"])
    xx, yy, zz, yz, xz, xy = voigt
    frames[0].info["pbesol_stress"] = np.array([[xx, xy, xz], [xy, yy, yz], [xz, yz, zz]]).ravel()
    path = tmp_path / "full.extxyz"
    write(path, frames)
    assert np.allclose(load_labelled_extxyz(path, keys=PBESOL_KEYS)[0].stress_ev_per_a3, voigt)


def test_standard_ase_keys_are_read_from_the_calculator(tmp_path: Path) -> None:
    """Files written by ASE with a calculator attached carry energy/forces/stress in the standard keys."""
    from ase.calculators.singlepoint import SinglePointCalculator

    frame = read(PBESOL_FILE, index=0)
    calc = SinglePointCalculator(
        frame,
        energy=frame.info["pbesol_energy"],
        forces=frame.arrays["pbesol_forces"],
        stress=frame.info["pbesol_stress"],
    )
    frame.calc = calc
    frame.info["gap"] = frame.info["pbesol_gap"]
    path = tmp_path / "ase.extxyz"
    write(path, frame)
    (record,) = load_labelled_extxyz(path, keys=LabelKeys(), allowed_species=SPECIES)
    assert record.energy_ev == pytest.approx(frame.info["pbesol_energy"])
    assert np.allclose(record.forces_ev_per_a, frame.arrays["pbesol_forces"])


def test_allowed_species_come_from_the_config() -> None:
    assert load_config(DEMO_CONFIG).config.system.allowed_species() == SPECIES
