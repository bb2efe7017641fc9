"""Arrangements of species on a sublattice: symmetry-inequivalent enumeration and sampling."""

from __future__ import annotations

import itertools
import logging
import math
import warnings
from dataclasses import dataclass

import numpy as np
from ase import Atoms, units

from capml_core.errors import InvalidInputError

logger = logging.getLogger(__name__)


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
    perms: np.ndarray, x: float, *, max_enumerated: int, sample_size: int, rng: np.random.Generator
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
    if classes <= max_enumerated:
        chosen, selection = enumerate_inequivalent(perms, k), "all"
        if len(chosen) != classes:
            raise ArithmeticError(f"enumeration found {len(chosen)} classes, Burnside {classes}")
    else:
        chosen, selection = sample_inequivalent(perms, k, sample_size, rng), "sample"
    return CompositionPlan(x, n, k, math.comb(n, k), classes, selection, chosen)


def arrangement_structure(cell: Atoms, site_species: str, species: tuple[str, str], arrangement: Arrangement) -> Atoms:
    """A copy of ``cell`` with the arrangement on its ``site_species`` sites (occupation 1: ``species[0]``)."""
    cell = cell.copy()
    sites = sublattice_sites(cell, site_species)
    symbols = np.array(cell.get_chemical_symbols(), dtype=object)
    first, second = species
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
        p = weights * np.exp(-(energies - energies.min()) / (units.kB * temperature_k))
    return p / p.sum()


def mixing_energies(lowest_ev_per_atom: dict[float, float]) -> dict[float, float]:
    """E_mix(x) = E(x) − [x E(1) + (1 − x) E(0)] (eV/atom) from the lowest energy per composition (needs x = 0, 1)."""
    if 0.0 not in lowest_ev_per_atom or 1.0 not in lowest_ev_per_atom:
        return {}
    e0, e1 = lowest_ev_per_atom[0.0], lowest_ev_per_atom[1.0]
    return {x: e - (x * e1 + (1.0 - x) * e0) for x, e in sorted(lowest_ev_per_atom.items())}
