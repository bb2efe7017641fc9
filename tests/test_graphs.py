"""Periodic graphs: the paper's convention, element table, normalisation, bad input."""

from __future__ import annotations

import numpy as np
import pytest
from ase import Atoms
from ase.build import bulk
from ase.io import read

from capml_core.errors import InvalidInputError
from capml_core.models.graphs import Normaliser, build_graph, element_table
from tests.conftest import PBESOL_FILE


def test_element_table_has_the_four_features_with_a_version() -> None:
    table = element_table()
    assert table.version.startswith("1/mendeleev ")
    z, mass, radius, chi = table.features["Ag"]
    assert z == 47 and mass == pytest.approx(107.87, abs=0.01) and radius > 100 and chi == pytest.approx(1.93)
    assert table.features["I"][3] < table.features["Br"][3] < 3.0  # electronegativity falls down the group
    with pytest.raises(InvalidInputError, match=r"\['He'\] have no features"):
        table.lookup(["Ag", "He"])


def test_every_periodic_image_within_the_cutoff_is_an_edge() -> None:
    # simple cubic, a = 3 Å, one atom: 6 first (3 Å) + 12 second (4.24 Å) neighbours within 5 Å, all own images
    atoms = Atoms("Cu", cell=np.eye(3) * 3.0, pbc=True)
    graph = build_graph(atoms, cutoff_a=5.0)
    assert graph.edge_index.shape == (2, 18)
    assert (graph.edge_index == 0).all()  # self-edges: bonds to the atom's own images
    assert np.allclose(np.sort(graph.edge_distance_a), [3.0] * 6 + [np.sqrt(18)] * 12)


def test_graphs_of_the_reference_cells() -> None:
    atoms = read(PBESOL_FILE, index=0)
    graph = build_graph(atoms, cutoff_a=5.5)
    assert graph.node_features.shape == (40, 4)
    assert graph.node_features[:, 0].tolist() == atoms.numbers.tolist()
    source, target = graph.edge_index
    # undirected: the reversed edge list is the same multiset
    forward = sorted(zip(source.tolist(), target.tolist(), np.round(graph.edge_distance_a, 9).tolist(), strict=True))
    backward = sorted(zip(target.tolist(), source.tolist(), np.round(graph.edge_distance_a, 9).tolist(), strict=True))
    assert forward == backward
    assert graph.edge_distance_a.max() < 5.5 and graph.edge_distance_a.min() > 2.0
    assert not np.any(source == target)  # own images are 9.7 Å away in the 2x2x2 cell
    # the 5-atom unit cell (4.793 Å): each atom's 6 nearest own images are self-edges
    from capml_core.system.structures import build_cubic_antiperovskite

    unit = build_graph(build_cubic_antiperovskite("Ag", "S", "Br", 4.793), cutoff_a=5.5)
    self_edges = unit.edge_index[0] == unit.edge_index[1]
    assert np.bincount(unit.edge_index[0][self_edges]).tolist() == [6] * 5
    assert np.allclose(unit.edge_distance_a[self_edges], 4.793)


def test_normaliser_maps_the_training_range_onto_unit_interval() -> None:
    graphs = [build_graph(a) for a in read(PBESOL_FILE, index=":10")]
    gaps = np.linspace(0.5, 1.0, 10)
    norm = Normaliser.fit(graphs, gaps, table_version=element_table().version)
    nodes = np.concatenate([norm.nodes(g.node_features) for g in graphs])
    assert nodes.min() == pytest.approx(0.0) and nodes.max() == pytest.approx(1.0)
    edges = np.concatenate([norm.edges(g.edge_distance_a) for g in graphs])
    assert edges.min() == pytest.approx(0.0) and edges.max() == pytest.approx(1.0)
    assert norm.gap_from_unit(norm.gap_to_unit(0.73)) == pytest.approx(0.73)
    assert Normaliser.from_json(norm.to_json()) == norm


def test_bad_structures_are_refused() -> None:
    with pytest.raises(InvalidInputError, match="empty structure"):
        build_graph(Atoms(cell=np.eye(3) * 5, pbc=True))
    crowded = bulk("Ag", "fcc", a=4.09, cubic=True)
    crowded.positions[1] = crowded.positions[0] + [0.1, 0.0, 0.0]
    with pytest.raises(InvalidInputError, match=r"overlap \(0.100 Å apart"):
        build_graph(crowded)
    with pytest.raises(InvalidInputError, match="no pair of atoms within 2.0 Å"):
        build_graph(Atoms("Ag", cell=np.eye(3) * 10.0, pbc=True), cutoff_a=2.0)
