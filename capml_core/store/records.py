"""Rows the store writes: structures, labels, write counts."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from ase import Atoms

from capml_core.types import LabelStatus, StructureKind


@dataclass(frozen=True)
class StructureRecord:
    """A structure to store, with what it is.

    Attributes
    ----------
    atoms
        The structure (positions and cell in Å).
    structure_hash
        Its content hash.
    kind
        thermal, uniform, equilibrium or imported.
    composition_x
        Fraction of the first sublattice species (None when the structure has neither).
    temperature_k, amplitude_a
        Temperature (K) of a thermal structure; displacement amplitude (Å) of a displaced one.
    seed
        Seed that reproduces the structure, if any.
    source
        Where it came from (file path, generator name).
    """

    atoms: Atoms
    structure_hash: str
    kind: StructureKind
    composition_x: float | None = None
    temperature_k: float | None = None
    amplitude_a: float | None = None
    seed: int | None = None
    source: str | None = None


@dataclass(frozen=True)
class LabelRecord:
    """Reference labels of one structure at one level (absent labels are None).

    Attributes
    ----------
    energy_ev
        Total energy (eV).
    forces_ev_per_a
        Forces (eV/Å), shape (n_atoms, 3).
    stress_ev_per_a3
        Stress (eV/Å³), Voigt order xx yy zz yz xz xy (ASE), positive = tensile.
    gap_ev
        Band gap (eV).
    """

    structure_hash: str
    level: str
    status: LabelStatus = "ok"
    energy_ev: float | None = None
    forces_ev_per_a: np.ndarray | None = None
    stress_ev_per_a3: np.ndarray | None = None
    gap_ev: float | None = None
    extras: Mapping[str, Any] = field(default_factory=dict)
    error: str | None = None
    wall_time_s: float | None = None
    source: str | None = None


@dataclass(frozen=True)
class WriteCounts:
    """Rows a write added (``new``) and rows that were already there (``existing``)."""

    new: int
    existing: int
