"""End-to-end snapshot band gaps: capml's path vs the straightforward one, same model, same snapshots.

capml: neighbour-list graphs + ensemble prediction, several graphs per forward pass. Straightforward: per-pair
Python loop over periodic images for each graph, one forward pass per structure and model. 40-atom MD-like
snapshots (the bundled structures with extra random displacements), the paper's architecture (untrained
weights: speed does not depend on them), one torch thread (one CPU core). Runs in about 40 s.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import torch
from ase.io import read

from capml_core.models.gnn import ARCHITECTURES, GapModel, build_model, predict_gaps
from capml_core.models.graphs import Normaliser, PeriodicGraph, build_graph, element_table

REPO = Path(__file__).resolve().parent.parent
ENSEMBLE = 3
N_SNAPSHOTS = 400


def main() -> None:
    torch.set_num_threads(1)
    base = read(REPO / "data" / "datasets" / "gpaw-pbesol.extxyz", index=":")
    rng = np.random.default_rng(0)
    snapshots = []
    for i in range(N_SNAPSHOTS):
        atoms = base[i % len(base)].copy()
        atoms.positions += rng.normal(0.0, 0.05, atoms.positions.shape)
        snapshots.append(atoms)
    graphs = [build_graph(a) for a in snapshots[:50]]
    normaliser = Normaliser.fit(graphs, np.linspace(0.5, 1.0, 50), table_version=element_table().version)
    models = []
    for seed in range(ENSEMBLE):
        torch.manual_seed(seed)
        module = build_model(ARCHITECTURES["paper"]).eval()
        models.append(GapModel("paper", ARCHITECTURES["paper"], normaliser, 5.5, module, {}))

    results = {}
    for batch in (1, 4, 8, 16):
        predict_gaps(snapshots[:16], models, batch_size=batch)  # warm-up
        start = time.perf_counter()
        mean, _ = predict_gaps(snapshots, models, batch_size=batch)
        results[batch] = (time.perf_counter() - start, mean)
    best_batch = min(results, key=lambda b: results[b][0])
    t_fast, mean_fast = results[best_batch]

    import sys

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from graphs import per_pair_loop_edges

    n_slow = 10
    start = time.perf_counter()
    slow = []
    for atoms in snapshots[:n_slow]:
        edges = per_pair_loop_edges(atoms, 5.5)
        graph = PeriodicGraph(
            node_features=element_table().lookup(atoms.get_chemical_symbols()),
            edge_index=np.array([[j for j, _, _ in edges], [i for _, i, _ in edges]], dtype=np.int64),
            edge_distance_a=np.array([d for _, _, d in edges]),
        )
        slow.append(np.mean([m.predict_graphs([graph], batch_size=1)[0] for m in models]))
    t_slow = (time.perf_counter() - start) / n_slow * N_SNAPSHOTS
    assert np.allclose(slow, mean_fast[:n_slow], atol=1e-5), "both paths must predict the same gaps"
    for batch, (elapsed, _) in results.items():
        print(f"batch {batch:2d}: {N_SNAPSHOTS / elapsed:7.0f} gaps/s (ensemble of {ENSEMBLE}, graphs included)")
    print(f"straightforward: {N_SNAPSHOTS / t_slow:.1f} gaps/s (per-pair loop graphs, one forward pass each)")
    print(
        f"headline: {t_slow / t_fast:.0f}x snapshot gaps/s vs per-pair loop + one pass per structure "
        f"({N_SNAPSHOTS / t_fast:.0f} gaps/s, batch {best_batch}, {ENSEMBLE} models, same predictions)"
    )


if __name__ == "__main__":
    main()
