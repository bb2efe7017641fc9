"""A structure with its reference labels at one level: what a dataset file holds and what MACE trains on."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
from ase import Atoms


@dataclass(frozen=True)
class LabelledStructure:
    """A structure, its content hash and its labels at one level (None: not labelled).

    Energy (eV, total), forces (eV/Å, shape (n_atoms, 3)), stress (eV/Å³, Voigt xx yy zz yz xz xy), gap (eV);
    ``kind`` says where the structure comes from (``imported``, ``thermal``, ``md-frame``, ...), temperature (K)
    and amplitude (Å) the conditions it was made at, ``extras`` other scalars its file carried.
    """

    atoms: Atoms
    structure_hash: str
    energy_ev: float | None = None
    forces_ev_per_a: np.ndarray | None = None
    stress_ev_per_a3: np.ndarray | None = None
    gap_ev: float | None = None
    kind: str = "imported"
    temperature_k: float | None = None
    amplitude_a: float | None = None
    extras: dict[str, Any] = field(default_factory=dict)
