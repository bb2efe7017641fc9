"""Disorder scan: symmetry-inequivalent arrangements of two species on a sublattice, relaxed and ranked.

The symmetry group is the full space group of the undecorated parent supercell (all sublattice sites alike):
its rotations and the supercell's internal translations, found by spglib, act on the sublattice sites as
permutations. Two arrangements are equivalent when a permutation maps one onto the other; an arrangement's
multiplicity is the size of its orbit, and the multiplicities of a composition sum to the binomial count.

Counting uses Burnside's lemma (the number of orbits is the mean number of arrangements a permutation leaves
unchanged, computed from each permutation's cycle lengths), so the decision "all or a sample" never needs
the 2^N labellings. Enumeration visits the k-subsets once and each orbit once; sampling draws random
k-subsets and keeps distinct orbits. An arrangement is written as a string of '1' (``species[0]``) and '0'
(``species[1]``) over the sublattice sites in the supercell's atom order; its key is the lexicographically
largest string of its orbit. Energies eV, lengths Å, temperatures K.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np
from ase import Atoms

from capml_core.config.inputs import SystemSection
from capml_core.config.schema import RunConfig
from capml_core.config.stage_sections import DisorderSection
from capml_core.models.mace import cached_mace_calculator, resolve_device
from capml_core.parallel import JobMap, local_map
from capml_core.physics.relax import Relaxation, relax_structure
from capml_core.provenance import content_key
from capml_core.store.database import Store
from capml_core.store.queries import mace_model_path
from capml_core.store.records import StructureRecord
from capml_core.system.arrangements import (
    Arrangement,
    CompositionPlan,
    arrangement_structure,
    configurational_probabilities,
    plan_composition,
    site_permutations,
    sublattice_sites,
)
from capml_core.system.structures import quantize, structure_hash
from capml_core.tables import ResultTable, table
from capml_core.types import ProgressCallback

logger = logging.getLogger(__name__)


# ------------------------------------------------------------------------------------------- the scan
def relax_job(model_path: str, device: str, atoms: Atoms, mode: str, fmax: float, max_steps: int) -> Relaxation:
    """One relaxation with the MACE model at ``model_path`` (a fan-out job: loads the model once per worker)."""
    calculator = cached_mace_calculator(model_path, device, "float64")
    return relax_structure(atoms, calculator, mode=mode, fmax_ev_per_a=fmax, max_steps=max_steps)


def scan_id_for(system: SystemSection, disorder: DisorderSection, model_id: str) -> str:
    """Content id of a scan: the system, the scan settings (not workers/device) and the MACE model."""
    payload = {
        "system": system.model_dump(mode="json"),
        "disorder": disorder.model_dump(mode="json", exclude={"workers", "device"}),
        "model_id": model_id,
    }
    return "disorder-" + content_key(payload)


@dataclass(frozen=True)
class DisorderScanResult:
    """A finished scan: its id and, per composition, the ranking (lowest energy first)."""

    scan_id: str
    plans: list[CompositionPlan]
    n_relaxed_now: int
    ranking: dict[float, list[tuple[str, float, int]]]  # x -> [(arrangement, eV/atom, multiplicity)]

    def tables(self) -> list[ResultTable]:
        """The plans and the ranking (rank 1 and the gap to rank 2, meV/atom)."""
        rows = []
        for x, ranked in self.ranking.items():
            gap = f"{(ranked[1][1] - ranked[0][1]) * 1000:.2f}" if len(ranked) > 1 else "-"
            rows.append((f"{x:.4g}", ranked[0][0], f"{ranked[0][1]:.5f}", str(ranked[0][2]), gap))
        columns = ("x", "rank 1 arrangement", "eV/atom", "multiplicity", "ΔE rank 2 (meV/atom)")
        return [plans_table(self.plans), table(f"ranking {self.scan_id}", columns, rows)]


def plans_table(plans: Sequence[CompositionPlan]) -> ResultTable:
    """Per composition: labellings, inequivalent classes, what is relaxed and the largest multiplicities."""
    rows = []
    for p in plans:
        mults = sorted((a.multiplicity for a in p.arrangements), reverse=True)
        shown = ", ".join(map(str, mults[:8])) + (" …" if len(mults) > 8 else "")
        rows.append(
            (
                f"{p.composition_x:.4g}",
                str(p.n_labellings),
                str(p.n_inequivalent),
                p.selection,
                str(len(p.arrangements)),
                shown,
            )
        )
    columns = ("x", "labellings", "inequivalent", "selection", "chosen", "multiplicities")
    return table("arrangements", columns, rows)


def run_disorder_scan(
    store: Store,
    config: RunConfig,
    *,
    model_id: str,
    run_id: str | None = None,
    progress: ProgressCallback | None = None,
    job_map: JobMap | None = None,
) -> DisorderScanResult:
    """The disorder stage: plan, relax and rank every composition's arrangements with MACE model ``model_id``.

    Arrangements relaxed before (same scan id) are skipped; probabilities are written at 0 K and at
    ``md.temperatures_k``. Each relaxation is written to the store as it finishes (relaxed structure + row),
    so an interrupted scan loses at most the relaxations in flight. The relaxations run through ``job_map``
    (default: ``disorder.workers`` local processes); this process alone writes the results.
    """
    disorder, system = config.disorder, config.system
    store.initialise()
    model_path = mace_model_path(store, model_id)
    plans = list(plan_scan(system, disorder))
    scan_id = scan_id_for(system, disorder, model_id)
    cell = system.supercell_at(system.compositions[0])
    sites = sublattice_sites(cell, system.sublattice.site_species)
    with store.write() as writer:
        writer.add_rows(
            "disorder_scans",
            [
                {
                    "scan_id": scan_id,
                    "run_id": run_id,
                    "model_id": model_id,
                    "relax": disorder.relax,
                    "n_sites": len(sites),
                    "n_permutations": len(site_permutations(cell, sites)),
                    "settings_json": disorder.model_dump_json(),
                }
            ],
        )
        writer.add_rows(
            "disorder_compositions",
            [
                {
                    "scan_id": scan_id,
                    "composition_x": p.composition_x,
                    "n_first": p.n_first,
                    "n_labellings": float(p.n_labellings),
                    "n_inequivalent": float(p.n_inequivalent),
                    "selection": p.selection,
                    "n_selected": len(p.arrangements),
                }
                for p in plans
            ],
        )
        writer.add_rows(
            "disorder_arrangements",
            [
                {
                    "scan_id": scan_id,
                    "composition_x": p.composition_x,
                    "arrangement": a.key,
                    "multiplicity": a.multiplicity,
                }
                for p in plans
                for a in p.arrangements
            ],
        )
    done = store.query("SELECT composition_x, arrangement FROM disorder_relaxations WHERE scan_id = ?", [scan_id])
    finished = set(zip(done["composition_x"].round(12), done["arrangement"], strict=True))
    todo = [
        (p.composition_x, a)
        for p in plans
        for a in p.arrangements
        if (round(p.composition_x, 12), a.key) not in finished
    ]
    total, count = len(todo) + len(finished), len(finished)
    logger.info("disorder scan %s: %d relaxations to do, %d done before", scan_id, len(todo), len(finished))
    if progress is not None:
        progress(count, total)

    def record(x: float, arrangement: Arrangement, result: Relaxation) -> None:
        atoms = quantize(result.atoms)
        digest = structure_hash(atoms)
        with store.write() as writer:
            writer.add_structures(
                [StructureRecord(atoms=atoms, structure_hash=digest, kind="relaxed", composition_x=x, source=scan_id)],
                run_id=run_id,
            )
            writer.add_rows(
                "disorder_relaxations",
                [
                    {
                        "scan_id": scan_id,
                        "composition_x": x,
                        "arrangement": arrangement.key,
                        "structure_hash": digest,
                        "n_atoms": len(atoms),
                        "energy_ev": result.energy_ev,
                        "energy_ev_per_atom": result.energy_ev / len(atoms),
                        "converged": result.converged,
                        "steps": result.steps,
                        "max_force_ev_per_a": result.max_force_ev_per_a,
                        "volume_a3": float(atoms.get_volume()),
                        "cell_a": np.asarray(atoms.cell[:]).ravel().tolist(),
                        "wall_time_s": result.wall_time_s,
                    }
                ],
            )

    device = resolve_device(disorder.device)
    job_map = job_map or local_map(disorder.workers)
    jobs = [
        (
            str(model_path),
            device,
            arrangement_structure(system.supercell_at(x), system.sublattice.site_species, system.sublattice.species, a),
            disorder.relax,
            disorder.fmax_ev_per_a,
            disorder.max_steps,
        )
        for x, a in todo
    ]
    for index, relaxation in job_map(relax_job, jobs, name="relax"):
        record(*todo[index], relaxation)
        count += 1
        if progress is not None:
            progress(count, total)

    write_probabilities(store, scan_id, [0.0, *config.md.temperatures_k])
    return DisorderScanResult(scan_id, plans, len(todo), ranking(store, scan_id))


def write_probabilities(store, scan_id: str, temperatures_k) -> None:
    """Configurational probabilities of each composition's relaxed arrangements at each temperature."""
    frame = store.query(
        """SELECT r.composition_x, r.arrangement, r.energy_ev, a.multiplicity FROM disorder_relaxations r
           JOIN disorder_arrangements a USING (scan_id, composition_x, arrangement) WHERE r.scan_id = ?""",
        [scan_id],
    )
    rows = []
    for x, group in frame.groupby("composition_x"):
        for temperature in temperatures_k:
            p = configurational_probabilities(
                group["energy_ev"].to_numpy(), group["multiplicity"].to_numpy(), temperature
            )
            rows += [
                {
                    "scan_id": scan_id,
                    "composition_x": x,
                    "arrangement": key,
                    "temperature_k": float(temperature),
                    "probability": float(v),
                }
                for key, v in zip(group["arrangement"], p, strict=True)
            ]
    with store.write() as writer:
        writer.add_rows("disorder_probabilities", rows)


def ranking(store, scan_id: str) -> dict[float, list[tuple[str, float, int]]]:
    """Per composition: (arrangement, energy eV/atom, multiplicity), lowest energy first."""
    frame = store.query(
        """SELECT r.composition_x, r.arrangement, r.energy_ev_per_atom, a.multiplicity FROM disorder_relaxations r
           JOIN disorder_arrangements a USING (scan_id, composition_x, arrangement)
           WHERE r.scan_id = ? ORDER BY r.composition_x, r.energy_ev_per_atom, r.arrangement""",
        [scan_id],
    )
    out: dict[float, list[tuple[str, float, int]]] = {}
    for row in frame.itertuples(index=False):
        out.setdefault(float(row.composition_x), []).append(
            (row.arrangement, float(row.energy_ev_per_atom), int(row.multiplicity))
        )
    return out


def plan_scan(system: SystemSection, disorder: DisorderSection) -> Iterator[CompositionPlan]:
    """Plans for every composition of the system (symmetry of the undecorated parent supercell)."""
    cell = system.supercell_at(system.compositions[0])
    sites = sublattice_sites(cell, system.sublattice.site_species)
    perms = site_permutations(cell, sites)
    logger.info("disorder: %d sublattice sites, %d symmetry permutations", len(sites), len(perms))
    for i, x in enumerate(system.compositions):
        rng = np.random.default_rng([disorder.seed, i])
        yield plan_composition(
            perms, x, max_enumerated=disorder.max_enumerated, sample_size=disorder.sample_size, rng=rng
        )
