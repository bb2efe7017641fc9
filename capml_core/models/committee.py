"""Uncertainty of a MACE committee and a GNN ensemble on structures, and MACE descriptors to measure diversity.

A committee is a set of MACE models trained on the same data with different seeds and splits; where they agree
the data pin the prediction down, where they disagree the structure lies outside what the data cover. For one
structure of N atoms with committee energies E_m (eV) and forces F_m,i (eV/Å), m = 1..M:

- energy disagreement: the standard deviation of E_m / N over the members (meV/atom);
- force disagreement of atom i: sqrt(mean_m |F_m,i - mean_m F_m,i|^2) (eV/Å), reported as its mean and its
  maximum over the atoms.

The GNN ensemble's spread is the standard deviation of the members' gaps (eV). Descriptors: per structure,
MACE's invariant node features averaged over the atoms of each species (species order fixed by the caller), so
structures of different composition live in one space.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from ase import Atoms


@dataclass(frozen=True)
class CommitteeDisagreement:
    """Per-structure disagreement of a committee (arrays of length n_structures)."""

    energy_std_mev_per_atom: np.ndarray
    force_std_mean_ev_per_a: np.ndarray
    force_std_max_ev_per_a: np.ndarray


def committee_disagreement(
    energies_ev: np.ndarray, forces_ev_per_a: Sequence[np.ndarray], n_atoms: Sequence[int]
) -> CommitteeDisagreement:
    """Disagreement from committee predictions.

    Parameters
    ----------
    energies_ev
        (n_models, n_structures) total energies.
    forces_ev_per_a
        per structure, an (n_models, n_atoms, 3) array of forces.
    n_atoms
        atoms per structure.
    """
    energies_ev = np.asarray(energies_ev, dtype=float)
    if energies_ev.ndim != 2 or energies_ev.shape[1] != len(forces_ev_per_a):
        raise ValueError(f"energies {energies_ev.shape}: expected (n_models, {len(forces_ev_per_a)})")
    per_atom = energies_ev / np.asarray(n_atoms, dtype=float)[None, :]
    energy_std = per_atom.std(axis=0) * 1000.0
    mean_f, max_f = [], []
    for forces in forces_ev_per_a:
        forces = np.asarray(forces, dtype=float)
        deviation = forces - forces.mean(axis=0, keepdims=True)
        per_atom_std = np.sqrt((deviation**2).sum(axis=2).mean(axis=0))
        mean_f.append(per_atom_std.mean())
        max_f.append(per_atom_std.max())
    return CommitteeDisagreement(energy_std, np.asarray(mean_f), np.asarray(max_f))


def committee_predict(calculators: Sequence, structures: Sequence[Atoms]) -> tuple[np.ndarray, list[np.ndarray]]:
    """Energies (n_models, n_structures) in eV and forces (per structure (n_models, n_atoms, 3), eV/Å).

    ``calculators``: one ASE calculator per committee member.
    """
    energies = np.zeros((len(calculators), len(structures)))
    forces: list[np.ndarray] = [np.zeros((len(calculators), len(a), 3)) for a in structures]
    for m, calculator in enumerate(calculators):
        for s, atoms in enumerate(structures):
            work = atoms.copy()
            work.calc = calculator
            energies[m, s] = work.get_potential_energy()
            forces[s][m] = work.get_forces()
    return energies, forces


def species_descriptor(node_features: np.ndarray, symbols: Sequence[str], species: Sequence[str]) -> np.ndarray:
    """One vector per structure: node features (n_atoms, n_features) averaged per species, concatenated.

    A species absent from the structure contributes zeros (``species`` fixes the order and the length).
    """
    node_features = np.asarray(node_features, dtype=float)
    symbols = np.asarray(symbols)
    blocks = []
    for element in species:
        mask = symbols == element
        blocks.append(node_features[mask].mean(axis=0) if mask.any() else np.zeros(node_features.shape[1]))
    return np.concatenate(blocks)


def mace_descriptors(calculator, structures: Sequence[Atoms], species: Sequence[str]) -> np.ndarray:
    """(n_structures, n_species x n_features) species-averaged invariant MACE node features of each structure.

    ``calculator``: a MACE ASE calculator (``get_descriptors``); with a committee, the first member's.
    """
    out = []
    for atoms in structures:
        features = calculator.get_descriptors(atoms, invariants_only=True)
        if isinstance(features, list):
            features = features[0]
        out.append(species_descriptor(features, atoms.get_chemical_symbols(), species))
    return np.asarray(out)
