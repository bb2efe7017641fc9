"""Wall time of the demo pipeline with 1 vs 2 workers per fan-out stage, and of a second, fully cached run.

The demo config (data/configs/ag3sbri-demo.toml) with a shorter profile so that three pipeline runs fit in a
few minutes: no new DFT labels, a 1-model GNN ensemble, a 3-epoch MACE with 8 channels, 0.4 ps MD at 200 and
300 K (10 runs), everything else as in `make demo`. Each of the first two runs starts from an empty project
(the fan-out stages, disorder relaxations and MD, run with 1, then 2 worker processes); the third re-runs the
second project unchanged, so every stage finds its content-keyed results in the store. Prefect's local
ephemeral mode, as `capml run`. About 5 minutes on 2 cores (longer than a minute: it is the whole pipeline
three times). Measured here: 164 s with 1 worker, 143 s with 2 (GNN and MACE training are one process each and
dominate), 8 s for the cached re-run.
"""

from __future__ import annotations

import os
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
CONFIG = REPO / "data" / "configs" / "ag3sbri-demo.toml"
PROFILE = {
    "reference.max_calculations": 0,
    "gnn.ensemble_size": 1,
    "gnn.epochs": 60,
    "gnn.fine_tune_epochs": 40,
    "mlip.max_epochs": 3,
    "mlip.channels": 8,
    "md.duration_ps": 0.4,
    "md.equilibration_ps": 0.05,
    "md.temperatures_k": [200.0, 300.0],
}


def main() -> None:
    from flows.settings import configure_environment

    configure_environment()
    os.environ.setdefault("PREFECT_HOME", tempfile.mkdtemp(prefix="capml-bench-prefect-"))
    from flows.pipeline import pipeline

    def run(project: Path, workers: int) -> tuple[float, dict]:
        overrides = {**PROFILE, "disorder.workers": workers, "md.workers": workers}
        start = time.perf_counter()
        summary = pipeline(config_path=str(CONFIG), project_dir=str(project), overrides=overrides)
        return time.perf_counter() - start, summary

    with tempfile.TemporaryDirectory() as tmp:
        one, first = run(Path(tmp) / "one", 1)
        two, second = run(Path(tmp) / "two", 2)
        cached, third = run(Path(tmp) / "two", 2)
    same = third["gnn"]["ensemble_id"] == second["gnn"]["ensemble_id"] and third["mlip"] == second["mlip"]
    same &= [r["md_id"] for r in third["dynamics"]] == [r["md_id"] for r in second["dynamics"]]
    print(f"1 worker : {one:6.1f} s  (from an empty project)")
    print(f"2 workers: {two:6.1f} s  (from an empty project)")
    print(f"re-run   : {cached:6.1f} s  (2 workers, same project: {'everything reused' if same else 'RECOMPUTED'})")
    if not same:
        raise SystemExit("the re-run did not reuse the stored results")
    print(
        f"headline: {one / two:.2f}x demo pipeline with 2 workers vs 1 ({two:.0f} vs {one:.0f} s); "
        f"fully cached re-run {cached:.0f} s ({100 * cached / two:.0f} % of a fresh run)"
    )


if __name__ == "__main__":
    main()
