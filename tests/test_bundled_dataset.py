"""capml's own bundled reference dataset (data/datasets/capml-gpaw-*.extxyz), grown by the labelling stage.

The files hold the recipe's structures (at least 400 PBEsol and a distinct 150 GLLB-SC, the dataset's targets).
These tests check the counts, that every frame is a structure of the recipe (same content hash as regenerated),
that the two levels label distinct structures, that labels are finite and forces balance; and they recompute one
random structure per level with GPAW (slow: one 40-atom calculation per level, about 3 minutes in all; CI stays
well under 40 minutes with it, so it is not skipped there).
"""

from __future__ import annotations

import numpy as np
import pytest
from ase.io import read

from capml_core.config.loading import load_config
from capml_core.dft.levels import GpawGllbsc, GpawPbesol
from capml_core.stages.training_sets import end_members_for, generate_structure_set
from capml_core.system.structures import structure_hash
from tests.conftest import CONFIGS, DATASETS

RECIPE = CONFIGS / "ag3sbri-reference-dataset.toml"
FILES = {"gpaw-pbesol": DATASETS / "capml-gpaw-pbesol.extxyz", "gpaw-gllbsc": DATASETS / "capml-gpaw-gllbsc.extxyz"}
MIN_STRUCTURES = {"gpaw-pbesol": 400, "gpaw-gllbsc": 150}  # the recipe has 423 and 153


@pytest.fixture(scope="module")
def recipe_hashes(tmp_path_factory):
    config = load_config(RECIPE).config
    end_members = end_members_for(config.system, config.dataset, cache_dir=tmp_path_factory.mktemp("fc"))
    return {
        s.level: {r.structure_hash for r in generate_structure_set(config.system, config.dataset, s, end_members)}
        for s in config.dataset.sets
    }


@pytest.mark.parametrize("level", sorted(FILES))
def test_bundled_frames_are_recipe_structures_with_sound_labels(level: str, recipe_hashes) -> None:
    frames = read(FILES[level], index=":")
    assert len(frames) >= MIN_STRUCTURES[level]
    hashes = [structure_hash(f) for f in frames]
    assert len(set(hashes)) == len(frames)
    assert set(hashes) <= recipe_hashes[level]  # regenerated bit for bit from the recipe's seeds
    for frame, digest in zip(frames, hashes, strict=True):
        stored = frame.info["structure_hash"]  # ASE's reader turns an all-digit hash into a number
        assert stored == digest if isinstance(stored, str) else float(stored) == float(digest)
    gaps = np.array([f.info["REF_gap"] for f in frames])
    assert np.all(np.isfinite(gaps)) and gaps.min() > 0.0 and gaps.max() < 3.0  # strong disorder: down to ~0.2 eV
    if level == "gpaw-pbesol":
        for frame in frames:
            forces = frame.arrays["REF_forces"]
            assert np.isfinite(frame.info["REF_energy"])
            assert np.all(np.isfinite(forces)) and np.all(np.isfinite(frame.info["REF_stress"]))
            # Newton's third law, up to the plane-wave grid's noise, which grows with the forces (the 600 K cells
            # with close contacts reach 18 eV/Å and a net force of 0.09 eV/Å)
            assert np.abs(forces.sum(axis=0)).max() < 0.05 + 0.01 * np.abs(forces).max()
    # every composition and every temperature of the recipe is represented
    assert {f.info["composition_x"] for f in frames} == {k / 8 for k in range(9)}
    thermal = {f.info["temperature_k"] for f in frames if f.info["config_type"] == "thermal"}
    assert thermal == {100.0, 200.0, 300.0, 400.0, 500.0, 600.0}


def test_the_two_levels_label_distinct_structures() -> None:
    frames = {level: {structure_hash(f): f for f in read(path, index=":")} for level, path in FILES.items()}
    shared = frames["gpaw-pbesol"].keys() & frames["gpaw-gllbsc"].keys()
    # only the undistorted cells of the two end members can coincide: each has a single arrangement
    assert {
        (frames["gpaw-gllbsc"][h].info["config_type"], frames["gpaw-gllbsc"][h].info["composition_x"]) for h in shared
    } <= {
        ("equilibrium", 0.0),
        ("equilibrium", 1.0),
    }
    assert len(frames["gpaw-gllbsc"]) - len(shared) >= MIN_STRUCTURES["gpaw-gllbsc"]


@pytest.mark.slow
@pytest.mark.parametrize(("level", "calculator"), [("gpaw-pbesol", GpawPbesol()), ("gpaw-gllbsc", GpawGllbsc())])
def test_a_random_bundled_structure_recomputes_to_its_label(level: str, calculator) -> None:
    frames = read(FILES[level], index=":")
    frame = frames[np.random.default_rng(7).integers(len(frames))]
    result = calculator.compute(frame)
    assert result.gap_ev == pytest.approx(frame.info["REF_gap"], abs=0.01)
    if level == "gpaw-pbesol":
        assert abs(result.energy_ev - frame.info["REF_energy"]) / len(frame) < 1e-3
        assert np.abs(result.forces_ev_per_a - frame.arrays["REF_forces"]).max() < 0.01


def test_held_out_md_frames_cover_every_composition_and_temperature_and_stay_held_out() -> None:
    """The held-out yardstick: one random production frame per (x, T), labelled at both levels as GPAW finishes."""
    from capml_core.stages.md_frames import read_frame_pool

    pool = read_frame_pool(DATASETS / "capml-md-heldout-pool.extxyz")
    points = {(f.composition_x, f.temperature_k) for f in pool}
    assert len(pool) == 54 and len(points) == 54  # 9 compositions x 100, 200, ..., 600 K
    assert {x for x, _ in points} == {k / 8 for k in range(9)} and {t for _, t in points} == {
        100.0 * k for k in range(1, 7)
    }
    assert all(f.held_out and f.selection == "random" and f.time_fs >= 500.0 for f in pool)  # production part only
    hashes = {f.structure_hash for f in pool}
    for level in ("gpaw-pbesol", "gpaw-gllbsc"):
        labelled = read(DATASETS / f"capml-md-heldout-{level}.extxyz", index=":")
        assert labelled and all(a.info["config_type"] == "md-frame" and a.info["held_out"] for a in labelled)
        assert {a.info["structure_hash"] for a in labelled} <= hashes
        assert {structure_hash(a) for a in labelled} <= hashes  # the geometry is the pool's, to the last digit
        gaps = np.array([a.info["REF_gap"] for a in labelled])
        assert np.all(np.isfinite(gaps)) and np.all((gaps > 0.0) & (gaps < 3.0))
        if level == "gpaw-pbesol":
            assert all(
                np.isfinite(a.arrays["REF_forces"]).all() and np.isfinite(a.info["REF_energy"]) for a in labelled
            )


def test_a_store_rebuilt_from_the_shipped_held_out_file_measures_on_all_its_frames(tmp_path) -> None:
    """Imported held-out frames (no selection recorded) are the yardstick of `capml evaluate` and `al record`."""
    from capml_core.config.inputs import ImportSpec
    from capml_core.stages.datasets import import_spec
    from capml_core.stages.heldout import labelled_frames
    from capml_core.store.database import Store

    config = load_config(CONFIGS / "ag3sbri-active-learning.toml", project_dir=tmp_path).config
    store = Store(tmp_path)
    path = DATASETS / "capml-md-heldout-gpaw-gllbsc.extxyz"
    spec = ImportSpec.model_validate(
        {"path": path, "level": "gpaw-gllbsc", "labels": ["gap"], "key_prefix": "REF"}, context={"base_dir": tmp_path}
    )
    import_spec(store, spec, config.system)
    shipped = {a.info["structure_hash"]: a.info["REF_gap"] for a in read(path, index=":")}
    frames = labelled_frames(store, "gpaw-gllbsc", flagged=True)
    assert dict(zip(frames["structure_hash"], frames["gap_ev"], strict=True)) == pytest.approx(shipped)
    assert len(frames) == 54 and frames["temperature_k"].between(100.0, 600.0).all()
    assert labelled_frames(store, "gpaw-gllbsc").empty  # by selection only: nothing was selected in this store
    assert store.labelled_gaps("gpaw-gllbsc").empty  # and no training set sees them
