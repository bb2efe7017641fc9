"""Periodic radius graphs of structures, the element feature table, and feature normalisation.

The paper's convention: one node per atom of the cell; an edge j -> i for every periodic image of atom j within
the cutoff of atom i (so one pair of atoms can be joined by several edges, one per image), an atom's bonds to
its own periodic images are self-edges (i -> i), and the edge feature is the distance (Å). Node features are
atomic number, atomic mass (u), atomic radius (pm) and Pauling electronegativity, from the element table.
Node and edge features (and the band gap) are min-max normalised to [0, 1] with constants fitted on a
training set and saved with the model.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from functools import cache

import numpy as np
from ase import Atoms

from capml_core.errors import InvalidInputError

#: Version of the element feature table: bump it when the table's definition changes.
ELEMENT_TABLE_VERSION = 1
#: Node feature names, in column order.
NODE_FEATURES = ("atomic_number", "atomic_mass_u", "atomic_radius_pm", "electronegativity_pauling")
#: Closest approach (Å) below which two atoms are taken to overlap (a broken structure).
MIN_DISTANCE_A = 0.5


@dataclass(frozen=True)
class ElementTable:
    """Node features per element.

    Attributes
    ----------
    version
        ``<ELEMENT_TABLE_VERSION>/mendeleev <version>``: a model trained with one table refuses another.
    features
        Symbol -> (atomic number, mass u, atomic radius pm, Pauling electronegativity).
    """

    version: str
    features: dict[str, tuple[float, float, float, float]]

    def lookup(self, symbols: Sequence[str]) -> np.ndarray:
        """Feature rows (n, 4) for these symbols.

        Raises
        ------
        InvalidInputError
            An element missing from the table (no radius or electronegativity, e.g. noble gases).
        """
        unknown = sorted(set(symbols) - set(self.features))
        if unknown:
            raise InvalidInputError(
                f"element(s) {unknown} have no features in element table {self.version} "
                "(atomic radius and Pauling electronegativity are both needed)"
            )
        return np.array([self.features[s] for s in symbols], dtype=np.float64)


@cache
def element_table() -> ElementTable:
    """The element feature table, from the mendeleev package (its own database; nothing downloaded)."""
    from importlib.metadata import version

    from mendeleev.fetch import fetch_table

    frame = fetch_table("elements")
    features = {}
    for row in frame.itertuples(index=False):
        radius = row.atomic_radius if row.atomic_radius == row.atomic_radius else row.covalent_radius_pyykko
        chi = row.en_pauling
        if radius != radius or chi != chi or radius is None or chi is None:  # NaN: no value for this element
            continue
        features[row.symbol] = (float(row.atomic_number), float(row.atomic_weight), float(radius), float(chi))
    return ElementTable(version=f"{ELEMENT_TABLE_VERSION}/mendeleev {version('mendeleev')}", features=features)


@dataclass(frozen=True)
class PeriodicGraph:
    """A structure as a graph (raw, unnormalised features).

    Attributes
    ----------
    node_features
        (n_atoms, 4): :data:`NODE_FEATURES`.
    edge_index
        (2, n_edges) int64: row 0 the source atom j, row 1 the target atom i.
    edge_distance_a
        (n_edges,) distances (Å).
    """

    node_features: np.ndarray
    edge_index: np.ndarray
    edge_distance_a: np.ndarray


def build_graph(atoms: Atoms, *, cutoff_a: float = 5.5, table: ElementTable | None = None) -> PeriodicGraph:
    """Periodic radius graph of a structure (matscipy's C neighbour list, every periodic image counted).

    Parameters
    ----------
    atoms
        The structure (periodic in 3D).
    cutoff_a
        Cutoff radius (Å).
    table
        Element features (default: :func:`element_table`).

    Raises
    ------
    InvalidInputError
        No atoms, an element without features, overlapping atoms, or no edge within the cutoff.
    """
    from matscipy.neighbours import neighbour_list

    if len(atoms) == 0:
        raise InvalidInputError("cannot build a graph of an empty structure")
    features = (table or element_table()).lookup(atoms.get_chemical_symbols())
    target, source, distance = neighbour_list("ijd", atoms, cutoff_a)
    if len(distance) == 0:
        raise InvalidInputError(f"no pair of atoms within {cutoff_a} Å: the graph has no edges")
    if distance.min() < MIN_DISTANCE_A:
        k = int(np.argmin(distance))
        raise InvalidInputError(
            f"atoms {target[k]} and {source[k]} overlap ({distance[k]:.3f} Å apart, < {MIN_DISTANCE_A} Å)"
        )
    return PeriodicGraph(
        node_features=features,
        edge_index=np.stack([source, target]).astype(np.int64),
        edge_distance_a=distance.astype(np.float64),
    )


@dataclass(frozen=True)
class Normaliser:
    """Min-max normalisation constants of node features, edge distance and band gap (fitted on training data).

    Attributes
    ----------
    node_min, node_max
        Per node feature (4 values each).
    edge_min_a, edge_max_a
        Edge distance range (Å).
    gap_min_ev, gap_max_ev
        Band-gap range (eV) mapped onto [0, 1].
    element_table_version
        Version of the element table the constants belong to.
    """

    node_min: tuple[float, ...]
    node_max: tuple[float, ...]
    edge_min_a: float
    edge_max_a: float
    gap_min_ev: float
    gap_max_ev: float
    element_table_version: str

    @classmethod
    def fit(cls, graphs: Iterable[PeriodicGraph], gaps_ev: Sequence[float], *, table_version: str) -> Normaliser:
        """Constants from training graphs and their gaps (eV)."""
        graphs = list(graphs)
        nodes = np.concatenate([g.node_features for g in graphs])
        edges = np.concatenate([g.edge_distance_a for g in graphs])
        gaps = np.asarray(gaps_ev, dtype=np.float64)
        return cls(
            node_min=tuple(nodes.min(axis=0).tolist()),
            node_max=tuple(nodes.max(axis=0).tolist()),
            edge_min_a=float(edges.min()),
            edge_max_a=float(edges.max()),
            gap_min_ev=float(gaps.min()),
            gap_max_ev=float(gaps.max()),
            element_table_version=table_version,
        )

    def nodes(self, features: np.ndarray) -> np.ndarray:
        """Node features scaled to [0, 1] (a feature constant over the training set maps to 0)."""
        low, high = np.asarray(self.node_min), np.asarray(self.node_max)
        span = np.where(high > low, high - low, 1.0)
        return (features - low) / span

    def edges(self, distance_a: np.ndarray) -> np.ndarray:
        """Distances scaled to [0, 1]."""
        span = self.edge_max_a - self.edge_min_a or 1.0
        return (distance_a - self.edge_min_a) / span

    def gap_to_unit(self, gap_ev: np.ndarray) -> np.ndarray:
        """Gap (eV) -> [0, 1]."""
        return (np.asarray(gap_ev) - self.gap_min_ev) / (self.gap_max_ev - self.gap_min_ev)

    def gap_from_unit(self, value: np.ndarray) -> np.ndarray:
        """[0, 1] -> gap (eV)."""
        return np.asarray(value) * (self.gap_max_ev - self.gap_min_ev) + self.gap_min_ev

    def to_json(self) -> str:
        """JSON form (saved beside a model)."""
        return json.dumps(asdict(self), indent=2)

    @classmethod
    def from_json(cls, text: str) -> Normaliser:
        """Inverse of :meth:`to_json`."""
        data = json.loads(text)
        return cls(**{**data, "node_min": tuple(data["node_min"]), "node_max": tuple(data["node_max"])})
