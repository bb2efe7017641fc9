"""Shared type aliases (``Literal`` options are checked with ``typing.get_args``)."""

from __future__ import annotations

from typing import Literal

import numpy as np
from numpy.typing import NDArray

FloatArray = NDArray[np.float64]
IntArray = NDArray[np.int64]

#: Kinds of structures in the store.
StructureKind = Literal["thermal", "uniform", "equilibrium", "imported", "md-snapshot", "relaxed", "frozen-mode"]
#: Kinds the later stages derive (relaxed arrangements, frozen-mode distortions checked with DFT): never
#: training data for the GNN or MACE, never counted in the dataset.
DERIVED_KINDS = ("relaxed", "frozen-mode")
#: SQL condition on ``structures.kind`` (alias ``s``) that keeps the dataset's structures only.
DATASET_KIND_SQL = "s.kind NOT IN (" + ", ".join(f"'{kind}'" for kind in DERIVED_KINDS) + ")"
#: Labels a reference level can provide.
LabelName = Literal["energy", "forces", "stress", "gap"]
#: Status of a pipeline stage or a labelling calculation.
StageStatus = Literal["running", "done", "failed", "skipped"]
LabelStatus = Literal["ok", "failed"]
#: Parent structure builders built into capml.
ParentBuilder = Literal["antiperovskite", "perovskite"]
