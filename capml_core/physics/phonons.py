"""Harmonic phonons with phonopy: force constants of a cell, their files, Γ frequencies.

capml works with force constants of the whole simulation cell (e.g. the 40-atom 2x2x2 supercell) treated as
phonopy's unit cell with an identity supercell matrix: the atom order is then the cell's own (ASE ``repeat``
order), and the Γ point of that cell carries every q-point commensurate with it. Units: Å, eV/Å² for force
constants, THz for frequencies, K for temperatures.
"""

from __future__ import annotations

import logging
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from ase import Atoms

from capml_core.errors import InvalidInputError
from capml_core.types import ForceFunction, ProgressCallback

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class ForceConstants:
    """Force constants of a cell.

    Attributes
    ----------
    cell
        The cell they belong to (positions in Å).
    force_constants
        Second derivatives of the energy (eV/Å²), shape (n_atoms, n_atoms, 3, 3), the cell's atom order.
    """

    cell: Atoms
    force_constants: np.ndarray


def to_phonopy_atoms(atoms: Atoms):  # noqa: ANN201 - phonopy type imported lazily
    """ASE Atoms -> PhonopyAtoms (symbols, cell and scaled positions)."""
    from phonopy.structure.atoms import PhonopyAtoms

    return PhonopyAtoms(
        symbols=atoms.get_chemical_symbols(),
        cell=np.asarray(atoms.cell[:]),
        scaled_positions=atoms.get_scaled_positions(wrap=False),
    )


def build_phonopy(cell: Atoms, force_constants: np.ndarray | None = None, *, primitive_matrix: str = "P"):  # noqa: ANN201
    """A Phonopy object whose unit cell is ``cell`` and supercell the same cell (identity matrix).

    ``primitive_matrix``: "P" keeps the whole cell as phonopy's primitive cell (its Γ point then carries every
    q-point commensurate with the cell); "auto" lets phonopy find the smallest primitive cell (dispersions).
    """
    from phonopy import Phonopy

    phonon = Phonopy(to_phonopy_atoms(cell), supercell_matrix=np.eye(3, dtype=int), primitive_matrix=primitive_matrix)
    if force_constants is not None:
        n = len(cell)
        if np.shape(force_constants) != (n, n, 3, 3):
            raise InvalidInputError(
                f"force constants of shape {np.shape(force_constants)} do not fit a cell of {n} atoms "
                f"(expected ({n}, {n}, 3, 3))"
            )
        phonon.force_constants = np.asarray(force_constants, dtype=np.float64)
    return phonon


def compute_force_constants(
    cell: Atoms,
    forces: ForceFunction,
    *,
    displacement_a: float = 0.01,
    progress: ProgressCallback | None = None,
) -> ForceConstants:
    """Force constants of ``cell`` by finite displacements (phonopy), forces from ``forces(atoms)``.

    Parameters
    ----------
    cell
        The cell (e.g. the 2x2x2 supercell of the parent); its symmetry reduces the displacements needed.
    forces
        Returns the forces (eV/Å, shape (n_atoms, 3)) of a structure: a reference level or an MLIP.
    displacement_a
        Finite displacement (Å).
    progress
        ``progress(done, total)`` after each displaced structure.
    """
    phonon = build_phonopy(cell)
    phonon.generate_displacements(distance=displacement_a, is_plusminus="auto")
    supercells = phonon.supercells_with_displacements
    logger.info("force constants of %s: %d displaced structures", cell.get_chemical_formula(), len(supercells))
    sets = []
    for i, displaced in enumerate(supercells):
        atoms = Atoms(
            symbols=displaced.symbols, cell=displaced.cell, scaled_positions=displaced.scaled_positions, pbc=True
        )
        sets.append(np.asarray(forces(atoms), dtype=np.float64))
        if progress is not None:
            progress(i + 1, len(supercells))
    phonon.forces = np.array(sets)
    phonon.produce_force_constants()
    phonon.symmetrize_force_constants()
    return ForceConstants(cell=cell.copy(), force_constants=np.array(phonon.force_constants))


def save_force_constants(path: str | Path, fc: ForceConstants) -> Path:
    """Write force constants and their cell as a phonopy yaml file (``phonopy.load`` reads it back)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    phonon = build_phonopy(fc.cell, fc.force_constants)
    partial = path.with_name(path.name + ".partial")
    phonon.save(filename=str(partial), settings={"force_constants": True})
    partial.replace(path)
    return path


def load_force_constants(path: str | Path, *, target: Atoms | None = None) -> ForceConstants:
    """Read force constants from a phonopy file (phonopy_params.yaml / phonopy.yaml with force constants).

    Parameters
    ----------
    path
        The phonopy file.
    target
        A cell to map them onto: atoms are matched by fractional position (tolerance 1e-3), so force
        constants computed with phonopy's supercell order serve a cell built in ASE ``repeat`` order. The
        target must have the same number of atoms and the same fractional sites.

    Raises
    ------
    InvalidInputError
        Unreadable file, no force constants in it, or a cell that does not match ``target``.
    """
    import phonopy

    path = Path(path)
    if not path.is_file():
        raise InvalidInputError(f"{path}: phonopy file not found")
    try:
        phonon = phonopy.load(str(path), produce_fc=True, log_level=0)
    except Exception as err:  # phonopy raises several types on malformed yaml
        raise InvalidInputError(f"{path}: not a readable phonopy file: {err}") from err
    if phonon.force_constants is None:
        raise InvalidInputError(f"{path}: contains no force constants (nor forces to produce them)")
    supercell = phonon.supercell
    fc = np.asarray(phonon.force_constants)
    if fc.shape[0] != fc.shape[1]:  # compact form: expand to full
        from phonopy.harmonic.force_constants import compact_fc_to_full_fc

        fc = compact_fc_to_full_fc(phonon.primitive, fc)
    cell = Atoms(symbols=supercell.symbols, cell=supercell.cell, scaled_positions=supercell.scaled_positions, pbc=True)
    if target is None:
        return ForceConstants(cell=cell, force_constants=fc)
    order = match_sites(target, cell, source=str(path))
    return ForceConstants(cell=target.copy(), force_constants=fc[np.ix_(order, order)])


def match_sites(target: Atoms, reference: Atoms, *, tolerance: float = 1e-3, source: str = "") -> np.ndarray:
    """Index ``order`` such that ``reference[order[i]]`` sits on the fractional site of ``target[i]``.

    Raises
    ------
    InvalidInputError
        Different atom counts, or a site of ``target`` with no atom of ``reference`` on it.
    """
    where = f"{source}: " if source else ""
    if len(target) != len(reference):
        raise InvalidInputError(
            f"{where}force constants are for {len(reference)} atoms, the cell has {len(target)}: give force "
            "constants of the same supercell"
        )
    a = target.get_scaled_positions(wrap=True)
    b = reference.get_scaled_positions(wrap=True)
    delta = a[:, None, :] - b[None, :, :]
    delta -= np.round(delta)
    distance = np.linalg.norm(delta, axis=2)
    order = np.argmin(distance, axis=1)
    if np.max(distance[np.arange(len(a)), order]) > tolerance or len(set(order.tolist())) != len(order):
        raise InvalidInputError(f"{where}the force-constant cell's sites do not match the cell's sites")
    return order


def gamma_frequencies_thz(cell: Atoms, force_constants: np.ndarray) -> np.ndarray:
    """Phonon frequencies (THz) at Γ of ``cell`` (all q-points commensurate with it); imaginary ones < 0."""
    phonon = build_phonopy(cell, force_constants)
    phonon.run_qpoints([[0.0, 0.0, 0.0]])
    return np.asarray(phonon.qpoints.frequencies[0])


#: High-symmetry points of the simple-cubic Brillouin zone (fractions of the primitive reciprocal vectors).
CUBIC_POINTS = {
    "Γ": (0.0, 0.0, 0.0),
    "X": (0.0, 0.5, 0.0),
    "M": (0.5, 0.5, 0.0),
    "R": (0.5, 0.5, 0.5),
}
#: The path of the paper's dispersions: Γ-X-M-Γ-R-X | M-R.
CUBIC_PATH = (("Γ", "X", "M", "Γ", "R", "X"), ("M", "R"))


@dataclass(frozen=True)
class Dispersion:
    """Phonon frequencies along a path in the primitive cell's Brillouin zone.

    Attributes
    ----------
    distances
        Path coordinate of each q-point (1/Å, phonopy's), shape (n_q,).
    frequencies_thz
        Frequencies (THz; imaginary as negative), shape (n_q, n_bands).
    ticks
        (distance, label) of each high-symmetry point along the path.
    """

    distances: np.ndarray
    frequencies_thz: np.ndarray
    ticks: list[tuple[float, str]]


def dispersion(
    cell: Atoms,
    force_constants: np.ndarray,
    *,
    path: tuple[tuple[str, ...], ...] = CUBIC_PATH,
    points: dict[str, tuple[float, float, float]] | None = None,
    n_per_segment: int = 31,
    primitive_matrix: str = "auto",
) -> Dispersion:
    """Phonon dispersion of ``cell`` (force constants of the whole cell) along ``path``.

    ``primitive_matrix="auto"``: the path of the smallest primitive cell (5 atoms for a cubic end member);
    ``"P"``: the path of the whole cell's own Brillouin zone (folded bands, any decorated cell).
    """
    from phonopy.phonon.band_structure import get_band_qpoints_and_path_connections

    points = points or CUBIC_POINTS
    with warnings.catch_warnings():  # phonopy 4 warns that "auto" differs from phonopy 3's default: intended
        warnings.simplefilter("ignore")
        phonon = build_phonopy(cell, force_constants, primitive_matrix=primitive_matrix)
    segments = [[list(points[label]) for label in part] for part in path]
    qpoints, connections = get_band_qpoints_and_path_connections(segments, npoints=n_per_segment)
    phonon.run_band_structure(qpoints, path_connections=connections)
    result = phonon.band_structure
    segment_distances = [np.asarray(d) for d in result.distances]
    distances = np.concatenate(segment_distances)
    frequencies = np.concatenate([np.asarray(f) for f in result.frequencies])
    ticks: list[tuple[float, str]] = []
    segment_labels = [(part[i], part[i + 1]) for part in path for i in range(len(part) - 1)]
    for (start, end), d in zip(segment_labels, segment_distances, strict=True):
        for value, label in ((float(d[0]), start), (float(d[-1]), end)):
            if ticks and abs(ticks[-1][0] - value) < 1e-9:
                if ticks[-1][1] != label:
                    ticks[-1] = (value, f"{ticks[-1][1]}|{label}")
            else:
                ticks.append((value, label))
    return Dispersion(distances=distances, frequencies_thz=frequencies, ticks=ticks)
