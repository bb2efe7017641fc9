from __future__ import annotations

from pathlib import Path

import pytest

from capml_core.config.inputs import LabelKeys
from capml_core.config.loading import load_config
from capml_core.errors import ConfigError
from tests.conftest import DEMO_CONFIG, PAPER_CONFIG, PBESOL_FILE, REPO


def test_paper_config_reproduces_the_papers_settings() -> None:
    cfg = load_config(PAPER_CONFIG).config
    assert cfg.system.parent.builder == "antiperovskite"
    assert cfg.system.parent.species == {"A": "Ag", "B": "S", "X": "Br"}
    assert cfg.system.vegard_lattice_a == {"Br": 4.793, "I": 4.869}
    assert cfg.system.supercell == (2, 2, 2)
    assert cfg.system.compositions == [k / 8 for k in range(9)]
    from capml_core.models.gnn import ARCHITECTURES

    paper = ARCHITECTURES[cfg.gnn.architecture]
    assert cfg.gnn.cutoff_a == 5.5 and (paper.conv_layers, paper.hidden_channels) == (2, 64)
    assert (paper.pooling, paper.dropout, paper.head_channels, paper.output) == ("max", 0.4, 16, "sigmoid")
    assert (cfg.mlip.channels, cfg.mlip.r_max_a, cfg.mlip.valid_fraction) == (256, 8.0, 0.05)
    assert (cfg.mlip.energy_weight, cfg.mlip.forces_weight, cfg.mlip.stress_weight) == (1.0, 150.0, 10.0)
    assert (cfg.md.timestep_fs, cfg.md.friction_per_fs, cfg.md.duration_ps) == (1.0, 5e-3, 40.0)
    assert cfg.md.temperatures_k == [100.0, 200.0, 300.0, 400.0, 500.0, 600.0]
    assert cfg.disorder.fmax_ev_per_a == 0.05
    pbesol, hsesol = cfg.dataset.sets
    assert (pbesol.level, hsesol.level) == ("vasp-pbesol", "vasp-hsesol")
    assert pbesol.temperatures_k == [150.0, 300.0, 450.0, 600.0]
    assert pbesol.uniform_amplitudes_a == [0.2, 0.4, 0.6, 0.8]
    assert pbesol.seed != hsesol.seed  # distinct sets


def test_demo_config_is_small_and_imports_the_bundled_data(tmp_path: Path) -> None:
    loaded = load_config(DEMO_CONFIG)
    cfg = loaded.config
    assert cfg.mlip.channels < 256 and cfg.md.duration_ps < 40
    levels = [spec.level for spec in cfg.dataset.imports]
    # the shipped files, capml's own, the held-out MD frames (measured on, never trained on), rounds 1-2's MD frames
    assert levels == ["gpaw-pbesol"] * 3 + ["gpaw-gllbsc"] * 2 + ["gpaw-pbesol", "gpaw-gllbsc"] * 3
    assert [spec.path.name for spec in cfg.dataset.imports[5:]] == [
        "capml-md-heldout-gpaw-pbesol.extxyz",
        "capml-md-heldout-gpaw-gllbsc.extxyz",
        "capml-md-al-round1-gpaw-pbesol.extxyz",
        "capml-md-al-round1-gpaw-gllbsc.extxyz",
        "capml-md-al-round2-gpaw-pbesol.extxyz",
        "capml-md-al-round2-gpaw-gllbsc.extxyz",
    ]
    assert cfg.dataset.imports[0].path == PBESOL_FILE.resolve()
    assert cfg.dataset.imports[3].label_keys() == LabelKeys(energy=None, forces=None, stress=None, gap="gllbsc_gap")
    assert cfg.dataset.imports[4].label_keys() == LabelKeys(energy=None, forces=None, stress=None, gap="REF_gap")
    # outputs default to runs/<name> under the working directory (tmp_path here)
    assert loaded.project_dir == (tmp_path / "runs" / "ag3sbri-demo").resolve()


def test_config_hash_ignores_location_but_not_content(tmp_path: Path) -> None:
    text = DEMO_CONFIG.read_text().replace('"../', f'"{REPO}/data/')
    moved = tmp_path / "moved.toml"
    moved.write_text(text)
    a, b = load_config(DEMO_CONFIG), load_config(moved)
    assert a.config == b.config  # same resolved paths, same settings
    changed = tmp_path / "changed.toml"
    changed.write_text(text.replace("seed = 2026", "seed = 7"))
    assert load_config(changed).config_hash != b.config_hash


def _write(tmp_path: Path, replace: tuple[str, str] | None = None, append: str = "") -> Path:
    text = DEMO_CONFIG.read_text().replace('"../', f'"{REPO}/data/')
    if replace is not None:
        assert replace[0] in text, replace[0]
        text = text.replace(*replace)
    path = tmp_path / "bad.toml"
    path.write_text(text + append)
    return path


@pytest.mark.parametrize(
    ("replace", "append", "expected"),
    [
        (
            ('builder = "antiperovskite"', 'builder = "spinel"'),
            "",
            ["system.parent.builder", "'spinel'", "'antiperovskite' or 'perovskite'"],
        ),
        (
            ("compositions = [0.0, 0.25, 0.5, 0.75, 1.0]", "compositions = [0.0, 0.3]"),
            "",
            ["system.compositions", "0.3", "8 sublattice sites", "multiples of 1/8"],
        ),
        (
            ("temperatures_k = [150.0, 600.0]", "temperatures_k = [-10.0, 600.0]"),
            "",
            ["dataset.sets[0].temperatures_k[0]", "-10.0", "greater than 0"],
        ),
        (
            ("uniform_amplitudes_a = [0.2]", "uniform_amplitudes_a = [-0.2]"),
            "",
            ["dataset.sets[0].uniform_amplitudes_a[0]", "-0.2", "greater than 0"],
        ),
        (
            ('force_constants = { Br = "', 'force_constants = { Cl = "'),
            "",
            ["dataset.force_constants", "['Cl']", "allowed keys: Br, I"],
        ),
        (("phonons/Ag3SBr", "phonons/nope"), "", ["dataset.force_constants.Br", "file not found"]),
        (
            ("seed = 2026", "seed = 2026\ncolour = 'red'"),
            "",
            ["run.colour", "unknown key", "allowed keys here: name, project_dir, seed"],
        ),
        (
            ('species = ["Br", "I"]', 'species = ["Br", "Xq"]'),
            "",
            ["system.sublattice.species[1]", "'Xq'", "not a chemical element"],
        ),
        (("I = 4.869", "Cl = 4.869"), "", ["system.vegard_lattice_a", "one entry per sublattice species"]),
        (
            ('site_species = "Br"', 'site_species = "Cl"'),
            "",
            ["system.sublattice.site_species", "'Cl'", "allowed: Ag, Br, S"],
        ),
        (('path = "', 'path = "/nope-'), "", ["dataset.imports[0].path", "file not found"]),
        (
            ('labels = ["gap"]', 'labels = ["bandgap"]'),
            "",
            ["dataset.imports[3].labels[0]", "'bandgap'", "'energy', 'forces', 'stress' or 'gap'"],
        ),
        (("[md]", "[md]\ntimestep_fs = 0"), "", ["md.timestep_fs", "greater than 0"]),
        (
            ("[md]", "[md]\ncompositions = [0.0, 0.3]"),
            "",
            ["md.compositions", "[0.3] not studied by the run", "allowed: values of system.compositions"],
        ),
        (None, "\n[phonons2]\nx = 1\n", ["phonons2", "unknown key", "allowed keys here:", "phonons"]),
    ],
)
def test_bad_values_name_file_field_value_and_what_is_allowed(
    tmp_path: Path, replace: tuple[str, str] | None, append: str, expected: list[str]
) -> None:
    path = _write(tmp_path, replace, append)
    with pytest.raises(ConfigError) as info:
        load_config(path)
    message = str(info.value)
    assert str(path) in message
    for fragment in expected:
        assert fragment in message, (fragment, message)
    assert not (tmp_path / "runs").exists()  # nothing written


def test_unreadable_files(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "missing.toml")
    broken = tmp_path / "broken.toml"
    broken.write_text("[run\nname = 1")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_config(broken)


def test_parent_from_a_cif_file_works_like_the_builder(tmp_path: Path) -> None:
    from ase.io import write

    from capml_core.system.structures import build_cubic_perovskite

    write(tmp_path / "CsPbBr3.cif", build_cubic_perovskite("Cs", "Pb", "Br", 5.87))
    text = """
[run]
name = "cspbbri"
[system]
name = "CsPb(Br_xI_1-x)3"
compositions = [0.0, 0.5, 1.0]
[system.parent]
file = "CsPbBr3.cif"
[system.sublattice]
site_species = "Br"
species = ["Br", "I"]
[system.vegard_lattice_a]
Br = 5.87
I = 6.29
"""
    (tmp_path / "cs.toml").write_text(text)
    cfg = load_config(tmp_path / "cs.toml").config
    assert cfg.system.parent.file == (tmp_path / "CsPbBr3.cif").resolve()
    # 3 halide sites x 8 cells = 24 sites: x = 1/3 is not realisable... but 1/24 multiples are
    (tmp_path / "cs2.toml").write_text(text.replace("[0.0, 0.5, 1.0]", "[0.3]"))
    with pytest.raises(ConfigError, match="24 sublattice sites"):
        load_config(tmp_path / "cs2.toml")


def test_every_shipped_config_loads_and_the_active_learning_recipe_starts_from_the_held_out_models() -> None:
    from capml_core.config.loading import load_config
    from tests.conftest import CONFIGS

    loaded = {path.name: load_config(path).config for path in sorted(CONFIGS.glob("*.toml"))}
    assert len(loaded) >= 6
    al, heldout = loaded["ag3sbri-active-learning.toml"], loaded["ag3sbri-heldout-md.toml"]
    assert al.mlip.committee_size == 3 and al.gnn.ensemble_size == 3 and al.active_learning.frames_per_round == 24
    # the same MACE (committee size is not part of a model's id) and MD: round 0 is the held-out recipe's model
    assert al.mlip.model_dump(exclude={"committee_size"}) == heldout.mlip.model_dump(exclude={"committee_size"})
    assert al.md == heldout.md and al.system == heldout.system
    added = [spec for spec in al.dataset.imports if spec not in heldout.dataset.imports]
    assert [spec.path.name for spec in added] == [
        "capml-md-heldout-gpaw-pbesol.extxyz",
        "capml-md-heldout-gpaw-gllbsc.extxyz",
    ]  # held-out frames only: no training set sees them, so the training data are the held-out recipe's


def test_study_config_covers_what_the_study_promises() -> None:
    """data/configs/ag3sbri-study.toml: 9 compositions x 100-600 K, >= 10 ps MD, phonon verdicts, DFT checks of Eg(T)
    at >= 3 temperatures for the end members and x = 0.5 and at 300 K for every composition, the estimates at
    every temperature, and the active-learning data (held-out frames and rounds 1-3) among its imports."""
    cfg = load_config(REPO / "data" / "configs" / "ag3sbri-study.toml").config
    assert len(cfg.system.compositions) == 9 and cfg.md.temperatures_k == [100.0, 200.0, 300.0, 400.0, 500.0, 600.0]
    # verdicts for every run, the gate off: every 10-ps Ag3SBr run sits off the cubic sites (the config says why)
    assert cfg.md.duration_ps - cfg.md.equilibration_ps >= 8.0 and not cfg.phonons.gate
    for x in (0.0, 0.5, 1.0):
        assert sum(cfg.dft_check_frames(x, t) > 0 for t in cfg.md.temperatures_k) >= 3
    assert all(cfg.dft_check_frames(x, 300.0) >= 2 for x in cfg.system.compositions)
    assert cfg.gaps.estimate_samples > 0 and cfg.gaps.estimate_temperatures_k is None  # every MD temperature
    names = {spec.path.name for spec in cfg.dataset.imports}
    assert {
        f"capml-md-{part}-gpaw-{level}.extxyz"
        for part in ("heldout", "al-round1", "al-round2", "al-round3", "al-round4", "al-round5")
        for level in ("pbesol", "gllbsc")
    } <= names
    assert cfg.gnn.architecture == "mace-kernel" and not cfg.gnn.search_architectures
