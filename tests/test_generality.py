"""A second solid solution from a CIF file and a config only: CsPb(Br_xI_(1-x))3 (no code change)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from capml_core.config.loading import load_config
from capml_core.stages.training_sets import generate_structure_set
from capml_core.store.database import Store
from flows.cli import app
from tests.conftest import CONFIGS, REPO

CONFIG = CONFIGS / "cspbbri.toml"
runner = CliRunner()


def test_cspbbri_structures_from_the_cif(tmp_path: Path) -> None:
    config = load_config(CONFIG).config
    no_thermal = config.dataset.sets[0].model_copy(update={"thermal_per_point": 0})
    records = list(generate_structure_set(config.system, config.dataset, no_thermal))
    assert len(records) == 5 * 2  # 5 compositions x (1 uniform + 1 equilibrium)
    for record in records:
        symbols = record.atoms.get_chemical_symbols()
        assert len(symbols) == 40 and symbols.count("Cs") == 8 and symbols.count("Pb") == 8
        assert symbols.count("Br") == round(24 * record.composition_x)  # 24 halide sites
        assert symbols.count("Br") + symbols.count("I") == 24
        a = record.atoms.cell.lengths()[0] / 2
        assert a == pytest.approx(record.composition_x * 5.874 + (1 - record.composition_x) * 6.289)


@pytest.mark.slow
def test_cspbbri_thermal_set_and_one_gpaw_label(tmp_path: Path) -> None:
    """1x1x1 cells and light GPAW settings keep it to ~1 min: force constants of both end members, one label."""
    text = CONFIG.read_text().replace('"../structures/', f'"{REPO}/data/structures/')
    text = text.replace("supercell = [2, 2, 2]", "supercell = [1, 1, 1]")
    text = text.replace(
        "compositions = [0.0, 0.25, 0.5, 0.75, 1.0]   # multiples of 1/24",
        "compositions = [0.0, 0.3333333333333333, 1.0]",
    )
    text += "\n[reference.gpaw_pbesol]\ncutoff_ev = 250.0\nkpts = [2, 2, 2]\n"
    config = tmp_path / "small.toml"
    config.write_text(text)
    project = tmp_path / "proj"
    generated = runner.invoke(app, ["data", "generate", "-c", str(config), "-p", str(project)])
    assert generated.exit_code == 0, generated.output
    assert "set pbesol (gpaw-pbesol): 12 structures" in generated.output  # 3 x (2 thermal + 1 + 1)
    assert sorted(p.name for p in (project / "phonons").iterdir()) == [
        "Br-gpaw-pbesol-force-constants.yaml",
        "I-gpaw-pbesol-force-constants.yaml",
    ]
    labelled = runner.invoke(
        app, ["label", "-c", str(config), "-p", str(project), "--level", "gpaw-pbesol", "--limit", "1"]
    )
    assert labelled.exit_code == 0, labelled.output
    assert "1 labelled, 0 failed" in labelled.output
    store = Store(project)
    row = store.query("SELECT l.*, s.formula, s.kind FROM labels l JOIN structures s USING (structure_hash)").iloc[0]
    assert row["status"] == "ok" and row["gap_ev"] > 0.5  # CsPbBr3/I3 are semiconductors
    assert np.allclose(np.reshape(row["forces_ev_per_a"], (5, 3)).sum(axis=0), 0.0, atol=0.05)
    thermal = store.query("SELECT count(*) AS n FROM structures WHERE kind = 'thermal'")["n"][0]
    assert thermal == 6
