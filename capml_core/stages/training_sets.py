"""Dataset stage: generate the configured structure sets and record them in the store."""

from __future__ import annotations

import logging
from collections.abc import Callable

from capml_core.config.schema import DatasetSection, StructureSetSection, SystemSection
from capml_core.physics.phonons import (
    ForceConstants,
)
from capml_core.store.database import Store
from capml_core.system.training_sets import generate_structure_set, plan_structure_set

logger = logging.getLogger(__name__)


def store_structure_set(
    store: Store,
    system: SystemSection,
    dataset: DatasetSection,
    structure_set: StructureSetSection,
    end_members: dict[str, ForceConstants],
    *,
    run_id: str | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> tuple[int, int]:
    """Build a set and store its structures and membership in one transaction; returns (size, new structures)."""
    total = len(plan_structure_set(system, structure_set))
    records = []
    for record in generate_structure_set(system, dataset, structure_set, end_members):
        records.append(record)
        if progress is not None:
            progress(len(records), total)
    with store.write() as writer:
        counts = writer.add_structures(records, run_id=run_id)
        writer.add_to_set(structure_set.name, structure_set.level, [r.structure_hash for r in records])
    logger.info("set %s: %d structures, %d new", structure_set.name, len(records), counts.new)
    return len(records), counts.new
