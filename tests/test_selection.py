"""Committee disagreement and the selection by uncertainty and diversity (numbers worked out by hand)."""

from __future__ import annotations

import numpy as np
import pytest

from capml_core.models.committee import committee_disagreement, species_descriptor
from capml_core.models.selection import (
    farthest_point_sampling,
    select_uncertain_diverse,
    standardise,
    uncertainty_score,
)


def test_committee_disagreement_is_the_spread_of_the_members() -> None:
    # two structures of 2 and 4 atoms; three members
    energies = np.array([[-10.0, -20.0], [-10.0, -20.0], [-10.0, -20.0 + 0.012 * 3]])
    forces_a = np.zeros((3, 2, 3))
    forces_a[2, 0] = [0.3, 0.0, 0.0]  # one member pushes atom 0 by 0.3 eV/Å
    forces_b = np.zeros((3, 4, 3))
    got = committee_disagreement(energies, [forces_a, forces_b], [2, 4])
    # structure 2: per-atom energies 0, 0, 9 meV/atom -> population std sqrt(18) meV/atom
    assert got.energy_std_mev_per_atom == pytest.approx([0.0, np.sqrt(18.0)])
    # atom 0: deviations -0.1, -0.1, +0.2 along x -> sqrt((0.01 + 0.01 + 0.04) / 3) = 0.1414 eV/Å
    assert got.force_std_max_ev_per_a == pytest.approx([np.sqrt(0.02), 0.0])
    assert got.force_std_mean_ev_per_a == pytest.approx([np.sqrt(0.02) / 2, 0.0])
    with pytest.raises(ValueError, match="expected"):
        committee_disagreement(energies[:, :1], [forces_a, forces_b], [2, 4])


def test_species_descriptor_averages_per_species_and_keeps_absent_species_as_zeros() -> None:
    features = np.array([[1.0, 2.0], [3.0, 4.0], [10.0, 20.0]])
    out = species_descriptor(features, ["Ag", "Ag", "S"], ["Ag", "S", "I"])
    assert out.tolist() == [2.0, 3.0, 10.0, 20.0, 0.0, 0.0]


def test_farthest_point_sampling_spreads_out_and_avoids_labelled_points() -> None:
    points = np.array([[0.0], [1.0], [2.0], [10.0]])
    assert farthest_point_sampling(points, 3, first=0).tolist() == [0, 3, 2]
    # a labelled point at 10: starting from 0, the next is the one farthest from both 0 and 10 (at 2, then 1)
    assert farthest_point_sampling(points, 3, first=0, labelled=np.array([[10.0]])).tolist() == [0, 2, 1]
    assert farthest_point_sampling(points, 1, first=None, labelled=np.array([[10.0]])).tolist() == [0]
    assert farthest_point_sampling(points, 9).tolist() == [0, 3, 2, 1]  # at most all of them


def test_uncertainty_score_puts_measures_of_any_unit_on_one_scale() -> None:
    measures = {
        "energy": np.array([1.0, 2.0, 8.0]),  # meV/atom, median 2
        "gap": np.array([0.01, 0.04, 0.01]),  # eV, median 0.01
        "absent": np.array([np.nan, np.nan, np.nan]),  # a committee of one: skipped
    }
    assert uncertainty_score(measures).tolist() == pytest.approx([1.0, 4.0, 4.0])
    with pytest.raises(ValueError, match="no disagreement measure"):
        uncertainty_score({"absent": np.array([np.nan])})


def test_selection_by_uncertainty_and_diversity_does_not_pick_a_cluster() -> None:
    rng = np.random.default_rng(0)
    cluster = rng.normal(0.0, 0.01, size=(10, 2))  # ten nearly identical, most uncertain frames
    spread = np.array([[5.0, 0.0], [0.0, 5.0], [-5.0, 0.0], [0.0, -5.0]])
    descriptors = np.vstack([cluster, spread])
    scores = np.concatenate([np.full(10, 10.0) + np.arange(10) * 0.01, np.array([5.0, 4.0, 3.0, 2.0])])
    by_uncertainty = select_uncertain_diverse(scores, descriptors, 3, candidate_factor=1.0)
    assert sorted(by_uncertainty.tolist()) == [7, 8, 9]  # uncertainty alone: three of the cluster
    diverse = select_uncertain_diverse(scores, descriptors, 3, candidate_factor=14 / 3)
    assert diverse[0] == 9 and sum(i >= 10 for i in diverse) == 2  # the top frame, then away from the cluster
    labelled = np.array([[0.0, 0.0]])  # the cluster is already known: start at the top, then go elsewhere
    known = select_uncertain_diverse(scores, descriptors, 2, candidate_factor=7.0, labelled_descriptors=labelled)
    assert known[0] == 9 and known[1] >= 10


def test_standardise_scales_by_the_reference() -> None:
    x = np.array([[0.0, 1.0], [2.0, 1.0]])
    assert standardise(x).tolist() == [[-1.0, 0.0], [1.0, 0.0]]  # a constant column stays finite
