"""Langevin MD with MACE for the 40-atom cell: several temperatures at once vs one after another.

Trains the demo's small MACE for 3 epochs on the bundled PBEsol data (speed does not depend on its quality),
then runs the same MD jobs (Ag3SBr cell, 0.8 ps each, 2 temperatures) through capml's dynamics code: one after
another in one process, then all at once in one process per temperature (``md.workers``), one torch thread
each; the parallel time includes starting the worker processes (a few seconds each). On a 2-core machine
the parallel run can gain at most 2x. About 1.5 minutes (longer runs hide the start-up better).
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
TEMPERATURES_K = (200.0, 400.0)


def main() -> None:
    import torch

    from capml_core.config.loading import load_config
    from capml_core.config.stage_sections import MDSection
    from capml_core.models.mace import cached_mace_calculator
    from capml_core.parallel import local_map
    from capml_core.stages.datasets import import_spec
    from capml_core.stages.dynamics import MDJob, md_job
    from capml_core.stages.mlip import train_mace
    from capml_core.stages.training_sets import end_member_cell
    from capml_core.store.database import Store

    torch.set_num_threads(1)
    config = load_config(REPO / "data" / "configs" / "ag3sbri-demo.toml").config
    md = MDSection(temperatures_k=list(TEMPERATURES_K), duration_ps=0.8, equilibration_ps=0.05)
    with tempfile.TemporaryDirectory() as tmp:
        store = Store(tmp)
        spec = config.dataset.imports[0]
        species = config.system.allowed_species()
        import_spec(store, spec, config.system)
        mlip = config.mlip.model_copy(update={"max_epochs": 3, "stage_two_fraction": 0.0})
        model = train_mace(store, mlip, level=spec.level, species=sorted(species))
        cell = end_member_cell(config.system, "Br")

        def jobs(tag: str) -> list[MDJob]:
            return [MDJob(cell, t, md, model.path, Path(tmp) / f"{tag}-{t:.0f}.h5", seed=1) for t in TEMPERATURES_K]

        cached_mace_calculator(model.path, "cpu", md.dtype)  # the model is loaded before the clock starts
        start = time.perf_counter()
        for job in jobs("serial"):
            md_job(job, "cpu")  # the stage's own job, in this process (its calculator loaded once, above)
        serial = time.perf_counter() - start
        steps = sum(job.n_steps for job in jobs("serial"))
        start = time.perf_counter()
        list(local_map(len(TEMPERATURES_K))(md_job, [(job, "cpu") for job in jobs("parallel")]))
        parallel = time.perf_counter() - start
    print(f"one after another: {steps} steps in {serial:.1f} s ({steps / serial:.0f} steps/s)")
    print(
        f"all at once ({len(TEMPERATURES_K)} processes, incl. start-up): {parallel:.1f} s "
        f"({steps / parallel:.0f} steps/s)"
    )
    print(
        f"headline: {serial / parallel:.1f}x MD throughput running {len(TEMPERATURES_K)} temperatures at once "
        f"({steps / parallel:.0f} vs {steps / serial:.0f} steps/s, 40-atom cell, float32, CPU)"
    )


if __name__ == "__main__":
    main()
