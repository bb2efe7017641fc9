"""Shared type aliases (``Literal`` options are checked with ``typing.get_args``)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal

import numpy as np
from ase import Atoms
from numpy.typing import NDArray

FloatArray = NDArray[np.float64]
IntArray = NDArray[np.int64]

#: Kinds of structures in the store.
StructureKind = Literal[
    "thermal", "uniform", "equilibrium", "imported", "md-snapshot", "md-frame", "relaxed", "frozen-mode", "gap-check"
]
#: Kinds the later stages derive (relaxed arrangements, frozen-mode distortions checked with DFT, MD frames whose
#: gaps check a thermal average): never training data for the GNN or MACE, never counted in the dataset.
DERIVED_KINDS = ("relaxed", "frozen-mode", "gap-check")
#: SQL condition on ``structures`` (alias ``s``) that keeps the dataset's structures only: no derived kinds and no
#: held-out MD frames (``md_frames.held_out``: the yardstick the models are measured on, never trained on).
DATASET_KIND_SQL = (
    "s.kind NOT IN ("
    + ", ".join(f"'{kind}'" for kind in DERIVED_KINDS)
    + ") AND s.structure_hash NOT IN (SELECT structure_hash FROM md_frames WHERE held_out)"
)
#: Labels a reference level can provide.
LabelName = Literal["energy", "forces", "stress", "gap"]
#: Status of a pipeline stage or a labelling calculation.
StageStatus = Literal["running", "done", "failed", "skipped", "interrupted"]
LabelStatus = Literal["ok", "failed"]
#: Parent structure builders built into capml.
ParentBuilder = Literal["antiperovskite", "perovskite"]
#: Forces (eV/Å, shape (n_atoms, 3)) of a structure.
ForceFunction = Callable[[Atoms], np.ndarray]
#: Called as work advances: (done, total).
ProgressCallback = Callable[[int, int], None]
