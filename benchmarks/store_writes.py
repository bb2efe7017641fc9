"""Store writes: capml's batched insert vs a row-by-row INSERT, same 2,200 labelled 40-atom structures.

2,200 is the size of the paper's PBEsol dataset. Both paths write identical rows (checked) into fresh stores;
the batched path is what `capml data import` and the labelling stage use. Runs in well under a minute.
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

import numpy as np

from capml_core.config.loading import load_config
from capml_core.store.database import Store
from capml_core.store.records import LabelRecord, StructureRecord
from capml_core.system.structures import structure_hash

N = 2200
REPO = Path(__file__).resolve().parent.parent


def make_records() -> tuple[list[StructureRecord], list[LabelRecord]]:
    system = load_config(REPO / "data" / "configs" / "ag3sbri-demo.toml").config.system
    rng = np.random.default_rng(0)
    structures, labels = [], []
    for i in range(N):
        atoms = system.supercell_at(0.5) if i == 0 else structures[0].atoms.copy()
        atoms.positions += rng.normal(0.0, 0.05, atoms.positions.shape)
        h = structure_hash(atoms)
        structures.append(StructureRecord(atoms=atoms, structure_hash=h, kind="uniform", composition_x=0.5))
        labels.append(
            LabelRecord(
                h,
                "bench",
                energy_ev=float(rng.normal()),
                forces_ev_per_a=rng.normal(size=(40, 3)),
                stress_ev_per_a3=rng.normal(size=6) * 1e-3,
                gap_ev=float(rng.uniform(0.5, 1.0)),
            )
        )
    return structures, labels


def batched(project: Path, structures, labels) -> float:
    store = Store(project)
    store.initialise()
    start = time.perf_counter()
    with store.write() as writer:
        writer.add_structures(structures, run_id="bench")
        writer.add_labels(labels, run_id="bench")
    return time.perf_counter() - start


def row_by_row(project: Path, structures, labels) -> float:
    store = Store(project)
    store.initialise()
    start = time.perf_counter()
    with store.write() as writer:
        con = writer.con
        for s in structures:
            a = s.atoms
            con.execute(
                "INSERT INTO structures (structure_hash, formula, n_atoms, composition_x, kind, run_id, numbers, "
                "positions_a, cell_a, pbc, created_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, now())",
                [
                    s.structure_hash,
                    a.get_chemical_formula(mode="metal"),
                    len(a),
                    s.composition_x,
                    s.kind,
                    "bench",
                    a.numbers.tolist(),
                    a.positions.ravel().tolist(),
                    a.cell[:].ravel().tolist(),
                    a.pbc.tolist(),
                ],
            )
        for r in labels:
            con.execute(
                "INSERT INTO labels (structure_hash, level, status, energy_ev, forces_ev_per_a, stress_ev_per_a3, "
                "gap_ev, run_id, created_at) VALUES (?, ?, 'ok', ?, ?, ?, ?, ?, now())",
                [
                    r.structure_hash,
                    r.level,
                    r.energy_ev,
                    r.forces_ev_per_a.ravel().tolist(),
                    r.stress_ev_per_a3.tolist(),
                    r.gap_ev,
                    "bench",
                ],
            )
    return time.perf_counter() - start


def main() -> None:
    structures, labels = make_records()
    with tempfile.TemporaryDirectory() as tmp:
        t_batch = batched(Path(tmp) / "batched", structures, labels)
        t_rows = row_by_row(Path(tmp) / "rows", structures, labels)
        checks = "SELECT count(*), sum(gap_ev), sum(list_sum(forces_ev_per_a)) FROM labels"
        a = Store(Path(tmp) / "batched").query(checks).iloc[0].tolist()
        b = Store(Path(tmp) / "rows").query(checks).iloc[0].tolist()
        assert a[0] == b[0] == N and np.allclose(a[1:], b[1:]), (a, b)
    print(f"{N} labelled 40-atom structures: batched {t_batch:.2f} s, row by row {t_rows:.2f} s")
    print(f"headline: {t_rows / t_batch:.0f}x store write of {N} labelled structures vs row-by-row INSERT, same rows")


if __name__ == "__main__":
    main()
