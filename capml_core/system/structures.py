"""Structures: parent cells, supercells, Vegard lattice, sublattice composition and content hashes.

Lengths in Å. Structures are ASE ``Atoms``.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from ase import Atoms

from capml_core.errors import InvalidInputError

#: Decimals kept when hashing positions and cell (Å): 1e-6 Å is far below any physical difference.
HASH_DECIMALS = 6

# Fractional coordinates of the cubic Pm-3m perovskite family (5 atoms).
_FACE_CENTRES = [(0.5, 0.5, 0.0), (0.5, 0.0, 0.5), (0.0, 0.5, 0.5)]
_BODY_CENTRE = (0.5, 0.5, 0.5)
_CORNER = (0.0, 0.0, 0.0)


def build_cubic_antiperovskite(a_site: str, b_site: str, x_site: str, lattice_a: float) -> Atoms:
    """Cubic Pm-3m anti-perovskite A3BX, e.g. Ag3SBr.

    A (x3) on the face centres, B on the body centre, X on the corner; atom order A, A, A, B, X (the order
    of the bundled reference data).

    Parameters
    ----------
    a_site, b_site, x_site
        Elements of the three site roles.
    lattice_a
        Cubic lattice parameter (Å).
    """
    return Atoms(
        symbols=[a_site] * 3 + [b_site, x_site],
        scaled_positions=[*_FACE_CENTRES, _BODY_CENTRE, _CORNER],
        cell=np.eye(3) * lattice_a,
        pbc=True,
    )


def build_cubic_perovskite(a_site: str, b_site: str, x_site: str, lattice_a: float) -> Atoms:
    """Cubic Pm-3m perovskite ABX3, e.g. CsPbBr3: A corner, B body centre, X (x3) face centres.

    Parameters
    ----------
    a_site, b_site, x_site
        Elements of the three site roles.
    lattice_a
        Cubic lattice parameter (Å).
    """
    return Atoms(
        symbols=[a_site, b_site] + [x_site] * 3,
        scaled_positions=[_CORNER, _BODY_CENTRE, *_FACE_CENTRES],
        cell=np.eye(3) * lattice_a,
        pbc=True,
    )


def read_structure_file(path: str | Path) -> Atoms:
    """The first structure of a file ASE reads (CIF, POSCAR, extended XYZ, ...).

    Raises
    ------
    InvalidInputError
        The file cannot be read as a structure, or holds no atoms or no cell; the message says why.
    """
    from ase.io import read

    path = Path(path)
    try:
        atoms = read(path)
    except Exception as err:  # ASE's readers raise many types (often bare asserts) on a malformed file
        detail = str(err).strip()
        reason = f"{type(err).__name__}: {detail}" if detail else f"{type(err).__name__} in ASE's reader"
        raise InvalidInputError(
            f"not a structure file ASE can read ({reason}); give a CIF, POSCAR or extended-XYZ file of the "
            "parent unit cell"
        ) from err
    if isinstance(atoms, list):  # pragma: no cover - read() of one file returns one frame by default
        atoms = atoms[0]
    if len(atoms) == 0:
        raise InvalidInputError("the file holds no atoms; give a CIF, POSCAR or extended-XYZ file of the parent cell")
    if atoms.cell.rank < 3:
        raise InvalidInputError(f"the structure has no 3D cell (cell rank {atoms.cell.rank}); a parent needs one")
    return atoms


def sublattice_site_count(parent: Atoms, site_species: str, supercell: Sequence[int]) -> int:
    """Number of substituted sites in the supercell: parent sites of ``site_species`` times the repeat."""
    per_cell = sum(1 for s in parent.get_chemical_symbols() if s == site_species)
    return per_cell * int(np.prod(supercell))


def vegard_lattice_a(x: float, species: Sequence[str], end_points: dict[str, float]) -> float:
    """Vegard lattice parameter (Å) at composition x (fraction of ``species[0]``).

    ``a(x) = x a[species[0]] + (1 - x) a[species[1]]``.
    """
    if not 0.0 <= x <= 1.0:
        raise InvalidInputError(f"composition x = {x}: must lie in [0, 1]")
    return x * end_points[species[0]] + (1.0 - x) * end_points[species[1]]


def scaled_supercell(parent: Atoms, lattice_a: float, supercell: Sequence[int]) -> Atoms:
    """The parent cell scaled isotropically so that its first lattice vector is ``lattice_a`` (Å), repeated.

    Atom order: parent order within each cell, cells in C order (ASE's ``repeat``).
    """
    parent = parent.copy()
    scale = lattice_a / np.linalg.norm(parent.cell[0])
    parent.set_cell(parent.cell * scale, scale_atoms=True)
    return parent.repeat(tuple(supercell))


def substituted_fraction(atoms: Atoms, species: Sequence[str]) -> float | None:
    """Fraction of ``species[0]`` among the atoms of the two sublattice species; None if neither is present."""
    symbols = atoms.get_chemical_symbols()
    n_first = symbols.count(species[0])
    n_total = n_first + symbols.count(species[1])
    return n_first / n_total if n_total else None


def quantize(atoms: Atoms) -> Atoms:
    """Round positions and cell to the hash grid (1e-6 Å), in place; returns ``atoms``.

    Structures capml creates are quantized before they are hashed, so they and their hash survive a round
    trip through text formats (extended XYZ keeps 8 decimals) far from any rounding boundary of the hash.
    """
    atoms.set_cell(np.round(atoms.cell[:], HASH_DECIMALS) + 0.0, scale_atoms=False)
    atoms.positions = np.round(atoms.positions, HASH_DECIMALS) + 0.0
    return atoms


def structure_hash(atoms: Atoms) -> str:
    """Stable content hash (hex, 20 characters) of a structure.

    Built from atomic numbers, positions and cell rounded to 1e-6 Å, and periodic boundary conditions, in atom
    order. Identical structures give identical hashes on every machine; labels and calculator state do not
    enter.
    """
    positions = np.round(np.asarray(atoms.positions, dtype=np.float64), HASH_DECIMALS) + 0.0  # -0.0 -> 0.0
    cell = np.round(np.asarray(atoms.cell[:], dtype=np.float64), HASH_DECIMALS) + 0.0
    digest = hashlib.sha256()
    digest.update(np.asarray(atoms.numbers, dtype="<i8").tobytes())
    digest.update(positions.astype("<f8").tobytes())
    digest.update(cell.astype("<f8").tobytes())
    digest.update(np.asarray(atoms.pbc, dtype=np.uint8).tobytes())
    return digest.hexdigest()[:20]


# ------------------------------------------------------------------------------------ generation
def derive_seed(*parts: object) -> int:
    """A seed in [0, 2**32) derived deterministically from any printable parts (set seed, kind, x, ...)."""
    text = "|".join(repr(p) for p in parts)
    return int.from_bytes(hashlib.sha256(text.encode()).digest()[:4], "little")


def occupy_sublattice(
    cell: Atoms, *, site_species: str, species: Sequence[str], x: float, rng: np.random.Generator
) -> Atoms:
    """Random arrangement of the two sublattice species at composition x (exact count: round(x n_sites)).

    Parameters
    ----------
    cell
        Cell whose ``site_species`` atoms form the sublattice.
    site_species
        Element marking the sublattice sites in ``cell``.
    species
        The two species; ``species[0]`` gets a fraction x of the sites.
    x
        Composition (must be realisable: x n_sites an integer).
    rng
        Random generator (the choice of sites).
    """
    symbols = cell.get_chemical_symbols()
    sites = [i for i, s in enumerate(symbols) if s == site_species]
    n_first = x * len(sites)
    if not np.isclose(n_first, round(n_first), atol=1e-6):
        raise InvalidInputError(
            f"composition x = {x} is not realisable on {len(sites)} sites: use a multiple of 1/{len(sites)}"
        )
    chosen = set(rng.choice(sites, size=int(round(n_first)), replace=False).tolist())
    for i in sites:
        symbols[i] = species[0] if i in chosen else species[1]
    out = cell.copy()
    out.set_chemical_symbols(symbols)
    return out


def uniform_displacements(n_atoms: int, amplitude_a: float, rng: np.random.Generator) -> np.ndarray:
    """Random displacements (Å), shape (n_atoms, 3): isotropic direction, length uniform in [0, amplitude]."""
    if amplitude_a < 0:
        raise InvalidInputError(f"uniform amplitude {amplitude_a} Å: must be >= 0")
    directions = rng.normal(size=(n_atoms, 3))
    directions /= np.linalg.norm(directions, axis=1, keepdims=True)
    return directions * rng.uniform(0.0, amplitude_a, size=(n_atoms, 1))
