"""Dataset stage: the configured training structure sets, generated and recorded in the store.

A set holds thermal, uniform and equilibrium supercells of a solid solution.

Every structure of a set is reproducible from the set's seed: its own seed is derived from (set seed, kind,
composition, temperature or amplitude, index), and both its Br/I arrangement and its displacements are drawn
from that seed. Lengths in Å, temperatures in K, force constants in eV/Å².
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from ase import Atoms

from capml_core.config.inputs import DatasetSection, StructureSetSection, SystemSection
from capml_core.errors import InvalidInputError, NotComputedError
from capml_core.physics.phonons import (
    ForceConstants,
    compute_force_constants,
    load_force_constants,
    save_force_constants,
    thermal_displacements,
)
from capml_core.store.database import Store
from capml_core.store.records import StructureRecord
from capml_core.system.structures import derive_seed, occupy_sublattice, quantize, structure_hash, uniform_displacements
from capml_core.types import ForceFunction

logger = logging.getLogger(__name__)


def store_structure_set(
    store: Store,
    system: SystemSection,
    dataset: DatasetSection,
    structure_set: StructureSetSection,
    end_members: dict[str, ForceConstants],
    *,
    run_id: str | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> tuple[int, int]:
    """Build a set and store its structures and membership in one transaction; returns (size, new structures)."""
    total = len(plan_structure_set(system, structure_set))
    records = []
    for record in generate_structure_set(system, dataset, structure_set, end_members):
        records.append(record)
        if progress is not None:
            progress(len(records), total)
    with store.write() as writer:
        counts = writer.add_structures(records, run_id=run_id)
        writer.add_to_set(structure_set.name, structure_set.level, [r.structure_hash for r in records])
    logger.info("set %s: %d structures, %d new", structure_set.name, len(records), counts.new)
    return len(records), counts.new


def end_member_cell(system: SystemSection, species: str) -> Atoms:
    """The undistorted supercell of the end member whose sublattice is all ``species`` (Vegard lattice)."""
    first, second = system.sublattice.species
    if species not in (first, second):
        raise InvalidInputError(f"{species!r} is not a sublattice species; allowed: {first}, {second}")
    x = 1.0 if species == first else 0.0
    cell = system.supercell_at(x)
    return occupy_sublattice(
        cell,
        site_species=system.sublattice.site_species,
        species=system.sublattice.species,
        x=x,
        rng=np.random.default_rng(0),  # no choice to make at x = 0 or 1
    )


def end_member_force_constants(
    system: SystemSection,
    dataset: DatasetSection,
    species: str,
    *,
    cache_dir: Path,
    forces: ForceFunction | None = None,
) -> ForceConstants:
    """Force constants of one end member's supercell, mapped onto :func:`end_member_cell`.

    From the config's phonopy file if it names one; else from ``cache_dir`` if computed before; else computed
    by finite displacements with ``forces`` (eV/Å, e.g. a reference level) and saved to ``cache_dir`` as a
    phonopy yaml file, so it is computed once per project.

    Raises
    ------
    NotComputedError
        Nothing to load and no ``forces`` given.
    """
    cell = end_member_cell(system, species)
    if species in dataset.force_constants:
        return load_force_constants(dataset.force_constants[species], target=cell)
    cached = Path(cache_dir) / f"{species}-{dataset.force_constants_level}-force-constants.yaml"
    if cached.is_file():
        return load_force_constants(cached, target=cell)
    if forces is None:
        raise NotComputedError(
            f"no force constants for the {species} end member: give dataset.force_constants.{species} (a phonopy "
            f"file) or let the pipeline compute them at {dataset.force_constants_level} (capml run)"
        )
    logger.info("computing force constants of the %s end member (%d atoms)", species, len(cell))
    fc = compute_force_constants(cell, forces, displacement_a=dataset.displacement_a)
    save_force_constants(cached, fc)
    return fc


def force_constants_at(x: float, species: tuple[str, str], end_members: dict[str, ForceConstants]) -> np.ndarray:
    """Force constants (eV/Å²) at composition x: linear in x between the end members (virtual crystal)."""
    missing = [s for s in species if s not in end_members]
    if missing:
        raise InvalidInputError(f"no force constants for end member(s) {missing}: give a phonopy file or compute them")
    return x * end_members[species[0]].force_constants + (1.0 - x) * end_members[species[1]].force_constants


@dataclass(frozen=True)
class PlannedStructure:
    """One structure of a set before it is built: what it is and the seed that makes it."""

    kind: str
    composition_x: float
    temperature_k: float | None
    amplitude_a: float | None
    index: int
    seed: int


_KIND_ORDER = {"equilibrium": 0, "thermal": 1, "uniform": 2}


def plan_structure_set(system: SystemSection, structure_set: StructureSetSection) -> list[PlannedStructure]:
    """Every structure of a set, in a fixed, balanced order.

    Ordered by index first, then kind, temperature/amplitude and composition: any leading part of the list
    (what a partly finished labelling pass has done) covers every composition and condition about evenly.
    """
    plan = []
    for x in system.compositions:
        for temperature in structure_set.temperatures_k:
            for i in range(structure_set.thermal_per_point):
                seed = derive_seed(structure_set.seed, "thermal", round(x, 9), temperature, i)
                plan.append(PlannedStructure("thermal", x, temperature, None, i, seed))
        for amplitude in structure_set.uniform_amplitudes_a:
            for i in range(structure_set.uniform_per_point):
                seed = derive_seed(structure_set.seed, "uniform", round(x, 9), amplitude, i)
                plan.append(PlannedStructure("uniform", x, None, amplitude, i, seed))
        for i in range(structure_set.equilibrium_per_composition):
            seed = derive_seed(structure_set.seed, "equilibrium", round(x, 9), i)
            plan.append(PlannedStructure("equilibrium", x, None, None, i, seed))
    return sorted(
        plan,
        key=lambda p: (p.index, _KIND_ORDER[p.kind], p.temperature_k or 0.0, p.amplitude_a or 0.0, p.composition_x),
    )


def build_structure(
    planned: PlannedStructure,
    system: SystemSection,
    dataset: DatasetSection,
    end_members: dict[str, ForceConstants] | None,
) -> Atoms:
    """Build one planned structure: Vegard supercell, random arrangement, displacements."""
    rng = np.random.default_rng(planned.seed)
    cell = system.supercell_at(planned.composition_x)
    atoms = occupy_sublattice(
        cell,
        site_species=system.sublattice.site_species,
        species=system.sublattice.species,
        x=planned.composition_x,
        rng=rng,
    )
    if planned.kind == "thermal":
        assert planned.temperature_k is not None
        if not end_members:
            raise InvalidInputError("thermal structures need force constants of the end members")
        fc = force_constants_at(planned.composition_x, system.sublattice.species, end_members)
        atoms.positions += thermal_displacements(
            atoms,
            fc,
            temperature_k=planned.temperature_k,
            seed=derive_seed(planned.seed, "phonons"),
            cutoff_frequency_thz=dataset.cutoff_frequency_thz,
            max_displacement_a=dataset.max_displacement_a,
        )
    elif planned.kind == "uniform":
        assert planned.amplitude_a is not None
        atoms.positions += uniform_displacements(len(atoms), planned.amplitude_a, rng)
    return quantize(atoms)


def generate_structure_set(
    system: SystemSection,
    dataset: DatasetSection,
    structure_set: StructureSetSection,
    end_members: dict[str, ForceConstants] | None = None,
) -> Iterator[StructureRecord]:
    """Build every structure of a set (lazily, in plan order) as store records."""
    for planned in plan_structure_set(system, structure_set):
        atoms = build_structure(planned, system, dataset, end_members)
        yield StructureRecord(
            atoms=atoms,
            structure_hash=structure_hash(atoms),
            kind=planned.kind,  # type: ignore[arg-type]
            composition_x=planned.composition_x,
            temperature_k=planned.temperature_k,
            amplitude_a=planned.amplitude_a,
            seed=planned.seed,
            source=f"set {structure_set.name}",
        )


def end_members_for(
    system: SystemSection, dataset: DatasetSection, *, cache_dir: Path, forces: ForceFunction | None = None
) -> dict[str, ForceConstants]:
    """Force constants of both end members when some set has thermal structures (else an empty dict)."""
    thermal = any(s.thermal_per_point and s.temperatures_k for s in dataset.sets)
    if not thermal:
        return {}
    return {
        species: end_member_force_constants(system, dataset, species, cache_dir=cache_dir, forces=forces)
        for species in system.sublattice.species
    }
