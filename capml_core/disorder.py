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

import itertools
import logging
import math
import warnings
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
from ase import Atoms

from capml_core.config import DisorderSection, SystemSection
from capml_core.errors import InvalidInputError
from capml_core.structures import build_supercell

logger = logging.getLogger(__name__)

BOLTZMANN_EV_PER_K = 8.617333262e-5


# ------------------------------------------------------------------------------------------- symmetry
def sublattice_sites(cell: Atoms, site_species: str) -> np.ndarray:
    """Indices of the sublattice sites (atoms of ``site_species``) in ``cell``'s order."""
    sites = np.flatnonzero(np.array(cell.get_chemical_symbols()) == site_species)
    if len(sites) == 0:
        raise InvalidInputError(f"the cell has no {site_species} sites to substitute")
    return sites


def site_permutations(cell: Atoms, sites: np.ndarray, *, symprec: float = 1e-3) -> np.ndarray:
    """Distinct permutations of ``sites`` by the space group of ``cell`` (spglib), shape (n_perm, n_sites).

    Row g maps site i to site ``perms[g, i]`` (indices into ``sites``). The identity is included.
    """
    import spglib

    spg_cell = (np.asarray(cell.cell[:]), cell.get_scaled_positions(), cell.get_atomic_numbers())
    with warnings.catch_warnings():  # spglib 2.8 warns about its error-handling mode; None is checked below
        warnings.simplefilter("ignore", DeprecationWarning)
        symmetry = spglib.get_symmetry(spg_cell, symprec=symprec)
    if symmetry is None:
        raise InvalidInputError("spglib found no symmetry for the parent supercell")
    frac = cell.get_scaled_positions()[sites]
    perms = set()
    for rotation, translation in zip(symmetry["rotations"], symmetry["translations"], strict=True):
        image = frac @ rotation.T + translation
        delta = image[:, None, :] - frac[None, :, :]
        delta -= np.round(delta)
        match = np.linalg.norm(delta @ np.asarray(cell.cell[:]), axis=2) < 10 * symprec
        if not np.all(match.sum(axis=1) == 1):
            raise InvalidInputError("a symmetry operation does not map the sublattice onto itself")
        perms.add(tuple(np.argmax(match, axis=1)))
    return np.array(sorted(perms), dtype=np.int64)


def count_inequivalent(perms: np.ndarray, k: int) -> int:
    """Number of orbits of k-subsets of the sites under the permutations (Burnside's lemma, exact)."""
    n = perms.shape[1]
    total = 0
    for perm in perms:
        # cycle lengths of this permutation
        seen = np.zeros(n, dtype=bool)
        lengths = []
        for start in range(n):
            if not seen[start]:
                length, i = 0, start
                while not seen[i]:
                    seen[i] = True
                    i = perm[i]
                    length += 1
                lengths.append(length)
        # fixed k-subsets = unions of whole cycles with k sites: subset-sum count
        ways = [1] + [0] * k
        for length in lengths:
            for size in range(k, length - 1, -1):
                ways[size] += ways[size - length]
        total += ways[k]
    if total % len(perms):
        raise ArithmeticError("Burnside count is not an integer: the permutations do not form a group")
    return total // len(perms)


def _orbit(labelling: np.ndarray, perms: np.ndarray) -> set[bytes]:
    """All images of a 0/1 labelling (as bytes of '0'/'1')."""
    images = np.empty_like(perms, dtype=np.uint8)
    images[np.arange(len(perms))[:, None], perms] = labelling[None, :]
    return {row.tobytes() for row in (images + ord("0"))}


def _key(orbit: set[bytes]) -> str:
    return max(orbit).decode()


@dataclass(frozen=True)
class Arrangement:
    """One symmetry class of arrangements at a composition.

    Attributes
    ----------
    key
        Representative as a string of '1' (``species[0]``) / '0' over the sublattice sites.
    multiplicity
        Number of arrangements in the class (size of the orbit).
    """

    key: str
    multiplicity: int

    @property
    def occupation(self) -> np.ndarray:
        """Boolean per site: True where ``species[0]`` sits."""
        return np.frombuffer(self.key.encode(), dtype=np.uint8) == ord("1")


def enumerate_inequivalent(perms: np.ndarray, k: int) -> list[Arrangement]:
    """Every class of k-subsets with its multiplicity (visits each k-subset once; each orbit computed once)."""
    n = perms.shape[1]
    seen: set[bytes] = set()
    out = []
    row = np.zeros(n, dtype=np.uint8)
    for chosen in itertools.combinations(range(n), k):
        row[:] = ord("0")
        row[list(chosen)] = ord("1")
        if row.tobytes() in seen:
            continue
        orbit = _orbit((row == ord("1")).astype(np.uint8), perms)
        seen |= orbit
        out.append(Arrangement(_key(orbit), len(orbit)))
    return sorted(out, key=lambda a: a.key, reverse=True)


def sample_inequivalent(
    perms: np.ndarray, k: int, size: int, rng: np.random.Generator, *, max_draws: int = 0
) -> list[Arrangement]:
    """``size`` distinct classes found by drawing random k-subsets (fewer if draws run out).

    Random k-subsets hit a class with probability proportional to its multiplicity, as configurations of
    the random alloy do.
    """
    n = perms.shape[1]
    found: dict[str, int] = {}
    draws = max_draws or 50 * size
    for _ in range(draws):
        labelling = np.zeros(n, dtype=np.uint8)
        labelling[rng.choice(n, size=k, replace=False)] = 1
        orbit = _orbit(labelling, perms)
        found.setdefault(_key(orbit), len(orbit))
        if len(found) == size:
            break
    return [Arrangement(key, mult) for key, mult in sorted(found.items(), reverse=True)]


@dataclass(frozen=True)
class CompositionPlan:
    """What the scan does at one composition."""

    composition_x: float
    n_sites: int
    n_first: int
    n_labellings: int
    n_inequivalent: int
    selection: str  # 'all' or 'sample'
    arrangements: list[Arrangement]


def plan_composition(
    perms: np.ndarray, x: float, disorder: DisorderSection, rng: np.random.Generator
) -> CompositionPlan:
    """All inequivalent arrangements when there are at most ``max_enumerated``, else a random sample.

    The paper: all when <= 100, about 100 sampled when > 1000; between the two it says nothing, and capml
    samples ``sample_size`` as well, so no composition needs more relaxations than the larger of the two.
    """
    n = perms.shape[1]
    k = int(round(x * n))
    if not np.isclose(k, x * n, atol=1e-6):
        raise InvalidInputError(f"composition x = {x} is not realisable on {n} sites: use a multiple of 1/{n}")
    classes = count_inequivalent(perms, k)
    if classes <= disorder.max_enumerated:
        chosen, selection = enumerate_inequivalent(perms, k), "all"
        if len(chosen) != classes:
            raise ArithmeticError(f"enumeration found {len(chosen)} classes, Burnside {classes}")
    else:
        chosen, selection = sample_inequivalent(perms, k, disorder.sample_size, rng), "sample"
    return CompositionPlan(x, n, k, math.comb(n, k), classes, selection, chosen)


def plan_scan(system: SystemSection, disorder: DisorderSection) -> Iterator[CompositionPlan]:
    """Plans for every composition of the system (symmetry of the undecorated parent supercell)."""
    cell = build_supercell(system, system.compositions[0])
    sites = sublattice_sites(cell, system.sublattice.site_species)
    perms = site_permutations(cell, sites)
    logger.info("disorder: %d sublattice sites, %d symmetry permutations", len(sites), len(perms))
    for i, x in enumerate(system.compositions):
        yield plan_composition(perms, x, disorder, np.random.default_rng([disorder.seed, i]))


def arrangement_structure(system: SystemSection, x: float, arrangement: Arrangement) -> Atoms:
    """The supercell at the Vegard lattice of x with the arrangement on the sublattice."""
    cell = build_supercell(system, x)
    sites = sublattice_sites(cell, system.sublattice.site_species)
    symbols = np.array(cell.get_chemical_symbols(), dtype=object)
    first, second = system.sublattice.species
    symbols[sites] = np.where(arrangement.occupation, first, second)
    cell.set_chemical_symbols(list(symbols))
    return cell


# ------------------------------------------------------------------------------------------- thermodynamics
def configurational_probabilities(
    energies_ev: np.ndarray, multiplicities: np.ndarray, temperature_k: float
) -> np.ndarray:
    """Boltzmann probabilities of classes with total energies (eV per supercell) and multiplicities.

    p_i = g_i exp(-(E_i - E_min) / kT) / Z; at T = 0 all weight goes to the lowest energy.
    """
    energies = np.asarray(energies_ev, dtype=float)
    weights = np.asarray(multiplicities, dtype=float)
    if temperature_k <= 0:
        p = (energies == energies.min()).astype(float) * weights
    else:
        p = weights * np.exp(-(energies - energies.min()) / (BOLTZMANN_EV_PER_K * temperature_k))
    return p / p.sum()


# ------------------------------------------------------------------------------------------- relaxation
@dataclass(frozen=True)
class Relaxation:
    """A relaxed structure: energy (eV per cell), convergence, BFGS steps, largest remaining force (eV/Å)."""

    atoms: Atoms
    energy_ev: float
    converged: bool
    steps: int
    max_force_ev_per_a: float
    wall_time_s: float


def relax_structure(atoms: Atoms, calculator, *, mode: str, fmax_ev_per_a: float, max_steps: int) -> Relaxation:  # noqa: ANN001
    """BFGS relaxation with ASE's FrechetCellFilter until forces and stress are below ``fmax``.

    "cell" relaxes the cell with fractional positions fixed (the paper's mode), "full" the cell and positions.
    """
    import time

    from ase.constraints import FixAtoms
    from ase.filters import FrechetCellFilter
    from ase.optimize import BFGS

    if mode not in ("cell", "full"):
        raise InvalidInputError(f"relaxation mode {mode!r}; allowed: cell, full")
    start = time.perf_counter()
    work = atoms.copy()
    work.calc = calculator
    if mode == "cell":
        work.set_constraint(FixAtoms(indices=list(range(len(work)))))
    system = FrechetCellFilter(work)
    optimizer = BFGS(system, logfile=None)
    converged = bool(optimizer.run(fmax=fmax_ev_per_a, steps=max_steps))
    residual = float(np.sqrt((system.get_forces() ** 2).sum(axis=1)).max())
    energy = float(work.get_potential_energy())
    work.set_constraint()
    relaxed = Atoms(work.get_chemical_symbols(), positions=work.positions, cell=work.cell, pbc=True)
    return Relaxation(relaxed, energy, converged, int(optimizer.nsteps), residual, time.perf_counter() - start)


# ------------------------------------------------------------------------------------------- the scan
def relax_job(model_path: str, device: str, atoms: Atoms, mode: str, fmax: float, max_steps: int) -> Relaxation:
    """One relaxation with the MACE model at ``model_path`` (a fan-out job: loads the model once per worker)."""
    from capml_core.parallel import cached_mace_calculator

    calculator = cached_mace_calculator(model_path, device, "float64")
    return relax_structure(atoms, calculator, mode=mode, fmax_ev_per_a=fmax, max_steps=max_steps)


def scan_id_for(system: SystemSection, disorder: DisorderSection, model_id: str) -> str:
    """Content id of a scan: the system, the scan settings (not workers/device) and the MACE model."""
    from capml_core.provenance import content_key

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


def run_disorder_scan(
    store,  # noqa: ANN001 - capml_core.store.Store
    config,  # noqa: ANN001 - RunConfig
    *,
    run_id: str | None = None,
    progress=None,  # noqa: ANN001 - progress(done, total)
    job_map=None,  # noqa: ANN001 - capml_core.parallel.JobMap
) -> DisorderScanResult:
    """The disorder stage: plan, relax and rank every composition's arrangements with the project's MACE.

    Arrangements relaxed before (same scan id) are skipped; probabilities are written at 0 K and at
    ``md.temperatures_k``. Each relaxation is written to the store as it finishes (relaxed structure + row),
    so an interrupted scan loses at most the relaxations in flight. The relaxations run through ``job_map``
    (default: ``disorder.workers`` local processes); this process alone writes the results.
    """
    from capml_core.mlip import latest_model, resolve_device
    from capml_core.parallel import local_map
    from capml_core.store import StructureRecord
    from capml_core.structures import quantize, structure_hash

    disorder, system = config.disorder, config.system
    store.initialise()
    model_id, model_path = latest_model(store)
    plans = list(plan_scan(system, disorder))
    scan_id = scan_id_for(system, disorder, model_id)
    cell = build_supercell(system, system.compositions[0])
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
            arrangement_structure(system, x, a),
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


def write_probabilities(store, scan_id: str, temperatures_k) -> None:  # noqa: ANN001
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


def ranking(store, scan_id: str) -> dict[float, list[tuple[str, float, int]]]:  # noqa: ANN001
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


def latest_scan_id(store) -> str:  # noqa: ANN001
    """The newest disorder scan of a project."""
    from capml_core.errors import NotComputedError

    rows = store.query("SELECT scan_id FROM disorder_scans ORDER BY created_at DESC LIMIT 1")
    if rows.empty:
        raise NotComputedError(f"{store.path}: no disorder scan yet (capml disorder, or capml run)")
    return str(rows["scan_id"][0])


def lowest_energy_structures(store, scan_id: str | None = None) -> dict[float, Atoms]:  # noqa: ANN001
    """The relaxed lowest-energy structure of each composition (what the later stages start from)."""
    scan_id = scan_id or latest_scan_id(store)
    frame = store.query(
        """SELECT composition_x, structure_hash FROM disorder_relaxations WHERE scan_id = ?
           QUALIFY row_number() OVER (PARTITION BY composition_x ORDER BY energy_ev_per_atom, arrangement) = 1
           ORDER BY composition_x""",
        [scan_id],
    )
    structures = store.load_structures(frame["structure_hash"].tolist())
    return {float(x): structures[h] for x, h in zip(frame["composition_x"], frame["structure_hash"], strict=True)}


def mixing_energies(lowest_ev_per_atom: dict[float, float]) -> dict[float, float]:
    """E_mix(x) = E(x) − [x E(1) + (1 − x) E(0)] (eV/atom) from the lowest energy per composition (needs x = 0, 1)."""
    if 0.0 not in lowest_ev_per_atom or 1.0 not in lowest_ev_per_atom:
        return {}
    e0, e1 = lowest_ev_per_atom[0.0], lowest_ev_per_atom[1.0]
    return {x: e - (x * e1 + (1.0 - x) * e0) for x, e in sorted(lowest_ev_per_atom.items())}
