"""Harmonic phonons with phonopy: force constants of a cell, their files, Γ modes, band paths, dispersions.

capml works with force constants of the whole simulation cell (e.g. the 40-atom 2x2x2 supercell) treated as
phonopy's unit cell with an identity supercell matrix: the atom order is then the cell's own (ASE ``repeat``
order), and the Γ point of that cell carries every q-point commensurate with it. :func:`gamma_modes` is the
one Γ-point solve every module uses; :func:`symmetry_path` chooses the dispersion's path from the structure's
symmetry (seekpath). Units: Å, eV/Å² for force constants, THz for frequencies, K for temperatures.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Sequence
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


def to_phonopy_atoms(atoms: Atoms):  # phonopy type imported lazily
    """ASE Atoms -> PhonopyAtoms (symbols, cell and scaled positions)."""
    from phonopy.structure.atoms import PhonopyAtoms

    return PhonopyAtoms(
        symbols=atoms.get_chemical_symbols(),
        cell=np.asarray(atoms.cell[:]),
        scaled_positions=atoms.get_scaled_positions(wrap=False),
    )


def build_phonopy(cell: Atoms, force_constants: np.ndarray | None = None, *, primitive_matrix: str = "P"):
    """A Phonopy object whose unit cell is ``cell`` and supercell the same cell (identity matrix).

    ``primitive_matrix``: "P" keeps the whole cell as phonopy's primitive cell (its Γ point then carries every
    q-point commensurate with the cell); "auto" lets phonopy find the smallest primitive cell (dispersions).
    """
    from phonopy import Phonopy

    with warnings.catch_warnings():  # phonopy 4 warns that "auto" differs from phonopy 3's default: intended
        warnings.simplefilter("ignore")
        phonon = Phonopy(
            to_phonopy_atoms(cell), supercell_matrix=np.eye(3, dtype=int), primitive_matrix=primitive_matrix
        )
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


@dataclass(frozen=True)
class GammaModes:
    """Modes at Γ of a cell: frequencies (THz, imaginary negative, ascending) and eigenvectors (3N x 3N, columns).

    The eigenvectors are phonopy's, of the mass-weighted dynamical matrix: column ν is mode ν, rows ordered
    (atom 0 x, y, z, atom 1 x, ...).
    """

    frequencies_thz: np.ndarray
    eigenvectors: np.ndarray

    def species_weights(self, symbols: list[str]) -> dict[str, np.ndarray]:
        """Share of each mode's eigenvector norm carried by each species (sums to 1 per mode)."""
        n_atoms = len(symbols)
        squared = np.abs(self.eigenvectors.reshape(n_atoms, 3, -1)) ** 2
        per_atom = squared.sum(axis=1)  # (n_atoms, n_modes)
        total = per_atom.sum(axis=0)
        return {s: per_atom[np.array(symbols) == s].sum(axis=0) / total for s in sorted(set(symbols))}


def gamma_modes(cell: Atoms, force_constants: np.ndarray) -> GammaModes:
    """Frequencies (THz) and eigenvectors at Γ of the whole ``cell`` (every q-point commensurate with it).

    The one Γ-point phonopy solve of capml: force constants (eV/Å²) of shape (N, N, 3, 3) in the cell's atom
    order; imaginary frequencies are negative.
    """
    phonon = build_phonopy(cell, force_constants)
    phonon.run_qpoints([[0.0, 0.0, 0.0]], with_eigenvectors=True)
    return GammaModes(np.asarray(phonon.qpoints.frequencies[0]), np.asarray(phonon.qpoints.eigenvectors[0]))


def gamma_frequencies_thz(cell: Atoms, force_constants: np.ndarray) -> np.ndarray:
    """Phonon frequencies (THz) at Γ of ``cell`` (all q-points commensurate with it); imaginary ones < 0."""
    return gamma_modes(cell, force_constants).frequencies_thz


# ------------------------------------------------------------------------------------------- band paths
#: Symmetry tolerance (Å) of the band path: looser than phonopy's 1e-5 so that the noise a relaxation leaves
#: in the positions does not lower the symmetry the path is chosen by.
PATH_SYMPREC_A = 1e-3
#: Two generic fractional vectors: their images under a point group (as two species) have that group as their
#: symmetry, no more (one point alone would have the lattice's full symmetry when the group is trivial).
_GENERIC_POINTS = np.array([[0.0713, 0.1237, 0.1791], [0.2129, 0.0367, 0.1453]])


@dataclass(frozen=True)
class BandPath:
    """A high-symmetry path through the Brillouin zone of one cell (seekpath's HPKOT paths).

    Attributes
    ----------
    segments
        Labels of each continuous part of the path, e.g. (("Γ", "X", "M", "Γ", "R", "X"), ("R", "M")): a new
        part is a break (drawn "X|R"), not a line from X to R.
    points
        Label -> fractional coordinates in the basis of the cell's own reciprocal lattice vectors (the cell
        given, never a standardised one).
    bravais
        Seekpath's extended Bravais lattice symbol of the path, e.g. "cP2" (simple cubic, point group m-3m).
    spacegroup
        International number of the space group the path was chosen for.
    """

    segments: tuple[tuple[str, ...], ...]
    points: dict[str, tuple[float, float, float]]
    bravais: str
    spacegroup: int

    @property
    def labels(self) -> list[str]:
        """The labels along the path, in order (a break repeats no label)."""
        return [label for part in self.segments for label in part]


def symmetry_path(cell: Atoms, *, symprec: float = PATH_SYMPREC_A) -> BandPath:
    """The standard band path (seekpath, Hinuma et al. 2017) of ``cell``'s Brillouin zone, in ``cell``'s basis.

    The path follows the symmetry of the structure (atoms and lattice, tolerance ``symprec`` Å): Γ-X-M-Γ-R-X|R-M
    for a cubic Pm-3m cell, a tetragonal path with Z and A for a tetragonally strained one, and so on. The cell
    is taken as it is, as phonopy's primitive cell: also a supercell (the whole 40-atom cell), whose own
    (folded) Brillouin zone gets the path of its lattice and point group. (Seekpath alone would give the path of
    the smaller primitive cell, whose points all fold onto Γ of the supercell; so it is given a probe instead:
    the cell's lattice with two generic points and their images under the structure's rotations, which has the
    structure's point group and no internal translations.) The q-points are transformed back from seekpath's
    standardised cell to the reciprocal basis of ``cell``.
    """
    import seekpath
    import spglib

    structure = (np.asarray(cell.cell[:]), cell.get_scaled_positions(wrap=True), cell.numbers)
    symmetry = spglib.get_symmetry(structure, symprec=symprec)
    if symmetry is None:
        raise InvalidInputError(f"spglib found no symmetry of the cell {cell.get_chemical_formula()}")
    rotations = np.unique(np.asarray(symmetry["rotations"]).reshape(-1, 9), axis=0).reshape(-1, 3, 3)
    probe = np.array([r @ point for point in _GENERIC_POINTS for r in rotations]) % 1.0
    species = np.repeat([1, 2], len(rotations))
    with warnings.catch_warnings():  # edge cases (e.g. c = a of a tetragonal cell): seekpath picks a valid path
        warnings.simplefilter("ignore")
        found = seekpath.get_path_orig_cell((np.asarray(cell.cell[:]), probe, species), symprec=symprec)

    def name(label: str) -> str:
        return "Γ" if label == "GAMMA" else label

    parts: list[list[str]] = []
    for start, end in found["path"]:
        if parts and parts[-1][-1] == name(start):
            parts[-1].append(name(end))
        else:
            parts.append([name(start), name(end)])
    points = {name(k): tuple(float(c) for c in np.round(v, 12)) for k, v in found["point_coords"].items()}
    return BandPath(
        segments=tuple(tuple(p) for p in parts),
        points=points,
        bravais=str(found["bravais_lattice_extended"]),
        spacegroup=int(found["spacegroup_number"]),
    )


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
        (distance, label) of each high-symmetry point along the path; "X|R" marks a break.
    path
        The path (its points in the basis of the reciprocal lattice of phonopy's primitive cell).
    """

    distances: np.ndarray
    frequencies_thz: np.ndarray
    ticks: list[tuple[float, str]]
    path: BandPath | None = None


def dispersion(
    cell: Atoms,
    force_constants: np.ndarray,
    *,
    path: BandPath | None = None,
    n_per_segment: int = 31,
    primitive_matrix: str = "auto",
    symprec: float = PATH_SYMPREC_A,
) -> Dispersion:
    """Phonon dispersion of ``cell`` (force constants of the whole cell, eV/Å²) along a high-symmetry path (THz).

    ``primitive_matrix="auto"``: the path of the smallest primitive cell (5 atoms for a cubic end member);
    ``"P"``: the path of the whole cell's own Brillouin zone (folded bands, any decorated cell). ``path``:
    default :func:`symmetry_path` of phonopy's primitive cell (symmetry tolerance ``symprec``, Å); a given path
    must have its points in the basis of that cell's reciprocal lattice. ``n_per_segment`` q-points per line.
    """
    from phonopy.phonon.band_structure import get_band_qpoints_and_path_connections

    phonon = build_phonopy(cell, force_constants, primitive_matrix=primitive_matrix)
    if path is None:
        primitive = phonon.primitive
        path = symmetry_path(
            Atoms(
                numbers=primitive.numbers, cell=primitive.cell, scaled_positions=primitive.scaled_positions, pbc=True
            ),
            symprec=symprec,
        )
    segments = [[list(path.points[label]) for label in part] for part in path.segments]
    qpoints, connections = get_band_qpoints_and_path_connections(segments, npoints=n_per_segment)
    phonon.run_band_structure(qpoints, path_connections=connections)
    result = phonon.band_structure
    segment_distances = [np.asarray(d) for d in result.distances]
    distances = np.concatenate(segment_distances)
    frequencies = np.concatenate([np.asarray(f) for f in result.frequencies])
    return Dispersion(
        distances=distances, frequencies_thz=frequencies, ticks=path_ticks(path, segment_distances), path=path
    )


def path_ticks(path: BandPath, segment_distances: Sequence[np.ndarray]) -> list[tuple[float, str]]:
    """(distance, label) of each high-symmetry point of ``path``.

    ``segment_distances``: one line of distances per pair of the path's consecutive points; a point where the
    path breaks gets both labels ("X|R").
    """
    ticks: list[tuple[float, str]] = []
    segment_labels = [(part[i], part[i + 1]) for part in path.segments for i in range(len(part) - 1)]
    for (start, end), d in zip(segment_labels, segment_distances, strict=True):
        for value, label in ((float(d[0]), start), (float(d[-1]), end)):
            if ticks and abs(ticks[-1][0] - value) < 1e-9:
                if ticks[-1][1] != label:
                    ticks[-1] = (value, f"{ticks[-1][1]}|{label}")
            else:
                ticks.append((value, label))
    return ticks


def acoustic_modes(atoms: Atoms, eigenvectors: np.ndarray) -> list[int]:
    """The three Γ modes closest to rigid translations (largest weight on the mass-weighted translations)."""
    n_atoms = len(atoms)
    sqrt_m = np.sqrt(atoms.get_masses())
    translations = np.zeros((3 * n_atoms, 3))
    for axis in range(3):
        translations[axis::3, axis] = sqrt_m
    translations /= np.linalg.norm(translations, axis=0)
    weight = np.sum(np.abs(translations.T @ np.asarray(eigenvectors)) ** 2, axis=0)
    return sorted(int(i) for i in np.argsort(weight)[-3:])


def thermal_displacements(
    cell: Atoms,
    force_constants: np.ndarray,
    *,
    temperature_k: float,
    seed: int,
    cutoff_frequency_thz: float = 0.1,
    max_displacement_a: float | None = 1.0,
) -> np.ndarray:
    """Random displacements (Å) of the canonical ensemble of harmonic phonons at a temperature (Eq. 1).

    Phonopy's random displacements at ``temperature_k``: each normal mode gets a Gaussian amplitude of
    variance ħ(1 + 2n(ω, T)) / (2 N m ω) with the masses of ``cell``'s species. Imaginary modes enter with
    |ω| (the anharmonic potential they sit in is stabilised at finite temperature, so they are thermally
    populated; dropping them would miss the soft Ag modes that dominate the disorder); modes with
    |ω| < ``cutoff_frequency_thz`` (the acoustic ones at Γ) are skipped, and a displacement longer than
    ``max_displacement_a`` is shortened to it.

    Parameters
    ----------
    cell
        The cell (its species give the masses).
    force_constants
        Force constants of ``cell`` (eV/Å²), shape (n, n, 3, 3).
    temperature_k
        Temperature (K), > 0.
    seed
        Random seed, in [0, 2**32).
    """
    if temperature_k <= 0:
        raise InvalidInputError(f"temperature {temperature_k} K: must be > 0 for thermal displacements")
    phonon = build_phonopy(cell, force_constants)
    phonon.generate_displacements(
        number_of_snapshots=1,
        random_seed=seed,
        temperature=temperature_k,
        cutoff_frequency=cutoff_frequency_thz,
        max_distance=max_displacement_a,
    )
    return np.asarray(phonon.displacements[0], dtype=np.float64)


@dataclass(frozen=True)
class UnfoldedDispersion:
    """A supercell's phonons unfolded onto its parent cell's Brillouin zone (Allen et al., PRB 87, 085322 (2013)).

    Attributes
    ----------
    distances
        Path coordinate of each q-point (1/Å, in the parent cell's zone), shape (n_q,); a break of the path
        starts the next segment at the distance where the last one ended.
    frequencies_thz
        Every band of the supercell at the q-point folded from each path point (THz; imaginary as negative),
        shape (n_q, n_bands).
    weights
        Spectral weight of each band on the parent's q-point (0-1; the weights of one q-point add to the number
        of parent-cell bands), shape (n_q, n_bands): an ordered supercell has weights 0 or 1 and its weight-1
        bands are the parent cell's dispersion; disorder spreads the weight.
    ticks
        (distance, label) of each high-symmetry point of the parent's path; "X|R" marks a break.
    """

    distances: np.ndarray
    frequencies_thz: np.ndarray
    weights: np.ndarray
    ticks: list[tuple[float, str]]


#: Largest distance (Å) between an atom and the parent-lattice site it is mapped to in :func:`unfolded_dispersion`.
UNFOLDING_SITE_TOLERANCE_A = 1.0


def parent_site_mapping(cell: Atoms, parent: Atoms, supercell: Sequence[int]) -> tuple[np.ndarray, list[int]]:
    """The ideal sites of ``supercell`` x ``parent`` in ``cell``'s fractional coordinates, and the atom on each.

    Sites in the parent's order within each cell, cells in C order (as ASE's ``repeat``); atoms are matched to
    sites by the shortest distance under periodic boundaries (``cell``'s lattice), one atom per site.

    Raises
    ------
    InvalidInputError
        ``cell`` has another number of atoms, or an atom is more than :data:`UNFOLDING_SITE_TOLERANCE_A` from
        every free site: it is not a (decorated, displaced) supercell of the parent.
    """
    repeats = np.asarray(supercell, dtype=int)
    if len(cell) != len(parent) * int(np.prod(repeats)):
        raise InvalidInputError(
            f"a cell of {len(cell)} atoms is not a {tuple(int(n) for n in repeats)} supercell of a "
            f"{len(parent)}-atom parent"
        )
    translations = np.array(np.meshgrid(*[np.arange(n) for n in repeats], indexing="ij")).reshape(3, -1).T
    parent_fractions = parent.get_scaled_positions(wrap=True)
    sites = np.array([(f + t) / repeats for t in translations for f in parent_fractions])
    fractions = cell.get_scaled_positions(wrap=True)
    difference = fractions[None, :, :] - sites[:, None, :]
    difference -= np.round(difference)
    distance = np.linalg.norm(difference @ np.asarray(cell.cell[:]), axis=2)  # (sites, atoms), Å
    mapping = [int(i) for i in np.argmin(distance, axis=1)]
    closest = distance[np.arange(len(sites)), mapping]
    if len(set(mapping)) != len(mapping) or closest.max() > UNFOLDING_SITE_TOLERANCE_A:
        worst = int(np.argmax(closest))
        raise InvalidInputError(
            f"{cell.get_chemical_formula()}: not a {tuple(int(n) for n in repeats)} supercell of the "
            f"{parent.get_chemical_formula()} "
            f"parent (site {worst} has its nearest atom {closest[worst]:.2f} Å away, allowed "
            f"{UNFOLDING_SITE_TOLERANCE_A} Å, or two sites share an atom)"
        )
    return sites, mapping


def unfolded_dispersion(
    cell: Atoms,
    force_constants: np.ndarray,
    parent: Atoms,
    supercell: Sequence[int],
    *,
    n_per_segment: int = 31,
    symprec: float = PATH_SYMPREC_A,
) -> UnfoldedDispersion:
    """Phonons of ``cell`` (force constants of the whole cell, eV/Å²) unfolded along the parent's band path (THz).

    ``cell`` is a ``supercell`` (diagonal repetitions) of ``parent`` with any decoration and displacements
    (:func:`parent_site_mapping`); the path is :func:`symmetry_path` of the parent (Γ-X-M-Γ-R-X|R-M for a cubic
    Pm-3m parent), with the parent's lattice taken as ``cell``'s divided by the repetitions. phonopy's
    :class:`phonopy.unfolding.Unfolding` computes the weights.
    """
    from phonopy.phonon.band_structure import get_band_qpoints_and_path_connections
    from phonopy.unfolding.core import Unfolding

    repeats = np.asarray(supercell, dtype=int)
    sites, mapping = parent_site_mapping(cell, parent, repeats)
    path = symmetry_path(parent, symprec=symprec)
    segments = [[list(path.points[label]) for label in part] for part in path.segments]
    qpoints, _ = get_band_qpoints_and_path_connections(segments, npoints=n_per_segment)
    unfolding = Unfolding(
        build_phonopy(cell, force_constants), np.diag(repeats), sites, mapping, np.concatenate(qpoints)
    )
    unfolding.run()
    parent_lattice = np.asarray(cell.cell[:]) / repeats[:, None]
    reciprocal = np.linalg.inv(parent_lattice).T  # rows: reciprocal vectors without 2π (phonopy's distances)
    distances, start = [], 0.0
    for line in qpoints:
        steps = np.linalg.norm(np.diff(np.asarray(line) @ reciprocal, axis=0), axis=1)
        distances.append(start + np.concatenate([[0.0], np.cumsum(steps)]))
        start = float(distances[-1][-1])
    return UnfoldedDispersion(
        distances=np.concatenate(distances),
        frequencies_thz=np.asarray(unfolding.frequencies, dtype=float),
        weights=np.asarray(unfolding.unfolding_weights, dtype=float),
        ticks=path_ticks(path, distances),
    )
