"""The static reference's relaxation bookkeeping: a long relaxation resumes from its trajectory."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from ase.build import bulk
from ase.calculators.lj import LennardJones

from capml_core.physics.relax import relax_structure, resume_point


def _distorted_cell():
    atoms = bulk("Ar", "fcc", a=5.4, cubic=True).repeat((2, 1, 1))
    atoms.positions += np.random.default_rng(1).normal(0.0, 0.08, size=atoms.positions.shape)
    return atoms


def test_a_killed_relaxation_resumes_from_its_last_step(tmp_path: Path) -> None:
    calculator = LennardJones(sigma=3.4, epsilon=0.0104, rc=8.0, smooth=True)
    trajectory = tmp_path / "relax.traj"
    start = _distorted_cell()
    assert resume_point(start, trajectory) == (start, 0)  # nothing written yet: start from the structure given
    first = relax_structure(start, calculator, mode="full", fmax_ev_per_a=1e-4, max_steps=3, trajectory=trajectory)
    assert not first.converged and first.steps == 3
    atoms, written = resume_point(start, trajectory)
    assert written == 4  # the start and three steps
    assert np.allclose(atoms.positions, first.atoms.positions) and np.allclose(atoms.cell, first.atoms.cell)
    rest = relax_structure(atoms, calculator, mode="full", fmax_ev_per_a=1e-3, max_steps=200, trajectory=trajectory)
    whole = relax_structure(start, calculator, mode="full", fmax_ev_per_a=1e-3, max_steps=200)
    assert rest.converged and whole.converged
    assert rest.energy_ev == pytest.approx(whole.energy_ev, abs=1e-5)  # same minimum, reached in two pieces
    assert resume_point(start, trajectory)[1] == written + rest.steps  # appended, not overwritten
    trajectory.write_bytes(trajectory.read_bytes()[:100])  # a kill mid-write: start over, no crash
    assert resume_point(start, trajectory)[1] == 0


def test_a_minimum_far_from_the_cubic_volume_is_not_the_lowest(tmp_path: Path) -> None:
    """A quench that swelled the cell (a potential extrapolating off its training volumes) is kept but left out."""
    from capml_core.stages.static_minima import lowest_minima, minima_table, summary_lines
    from capml_core.store.database import Store

    store = Store(tmp_path / "p")
    rows = [
        ("cubic", -3.000, 900.0),
        ("md-frame a", -3.090, 910.0),  # +1 %: a candidate
        ("md-frame b", -3.160, 1500.0),  # +67 %: lower, but not trusted
    ]
    with store.write() as writer:
        writer.add_rows(
            "static_minima",
            [
                {
                    "model_id": model_id,
                    "composition_x": 1.0,
                    "source": source,
                    "structure_hash": source,
                    "energy_ev_per_atom": energy,
                    "volume_a3": volume,
                }
                for source, energy, volume in rows
                for model_id in ("mace-x", "dft-gpaw-pbesol")
            ],
        )
    table = minima_table(store, "mace-x").set_index("source")
    assert table.loc["md-frame b", "volume_change"] == pytest.approx(600.0 / 900.0)
    assert table["trusted"].tolist() == [False, True, True]  # ordered by energy
    lowest = lowest_minima(store, "mace-x")
    assert lowest["source"].tolist() == ["md-frame a"]
    assert lowest["below_cubic_mev_per_atom"].item() == pytest.approx(-90.0)
    (line,) = summary_lines(minima_table(store, "mace-x"))
    assert "lowest md-frame a" in line and "1 left out" in line
    assert lowest_minima(store, "mace-x", max_volume_change=1.0)["source"].tolist() == ["md-frame b"]
    assert minima_table(store, "dft-gpaw-pbesol")["trusted"].all()  # DFT's own volume is not a potential's bias
    assert lowest_minima(store, "dft-gpaw-pbesol")["source"].tolist() == ["md-frame b"]
