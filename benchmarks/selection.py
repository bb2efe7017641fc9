"""Frames chosen by uncertainty vs at random: the GNN's error on MD frames after adding k labelled frames.

On a project of the active-learning recipe (default ``runs/ag3sbri-al``, data/configs/ag3sbri-active-learning.toml)
whose MD frames are labelled at the high level (the held-out set, the rounds' frames): half of the held-out frames
(drawn with a fixed seed, whole MD runs never split) are the evaluation set; every other labelled MD frame is
the pool. The project's newest GNN ensemble (round 0: trained without MD frames) is fine-tuned, member by member
with the config's fine-tuning settings, on its high-level training split plus k pool frames chosen

- by uncertainty: capml's selection (ensemble gap spread, then farthest points in MACE's descriptor space,
  ``capml_core.models.selection.select_uncertain_diverse``), or
- at random (several seeds),

and measured on the evaluation frames (MAE of the ensemble mean, eV). Same k, same members, same seeds. The
headline: how many times fewer labels uncertainty needs (k_max over the k, interpolated linearly along
the uncertainty curve at the error k_max random labels give; target >= 2x). A few minutes per k on 2 cores.

    python benchmarks/selection.py [--project DIR] [--config FILE] [--ks 4,8,16] [--random-seeds 2] [--ensemble ID]
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default=str(REPO / "data" / "configs" / "ag3sbri-active-learning.toml"))
    parser.add_argument("--project", default=None)
    parser.add_argument("--ks", default="4,8,16")
    parser.add_argument("--random-seeds", type=int, default=2)
    parser.add_argument("--ensemble", default=None, help="GNN ensemble to start from (default: the newest)")
    args = parser.parse_args()

    import torch
    from md_frame_training import fine_tune_ensemble

    from capml_core.config.loading import load_config
    from capml_core.models.committee import mace_descriptors
    from capml_core.models.gnn import load_ensemble, predict_gaps_per_model, to_data
    from capml_core.models.graphs import build_graph
    from capml_core.models.mace import load_mace_calculator
    from capml_core.models.selection import select_uncertain_diverse
    from capml_core.stages.gnn_training import level_splits
    from capml_core.store.database import Store
    from capml_core.store.queries import (
        ensemble_level,
        ensemble_model_dirs,
        latest_ensemble,
        latest_model,
        mace_model_path,
    )

    torch.set_num_threads(1)
    loaded = load_config(args.config, project_dir=args.project)
    config, store = loaded.config, Store(loaded.project_dir)
    gnn, high = config.gnn, config.reference.high_level
    ensemble_id, level = latest_ensemble(store)
    if args.ensemble:
        ensemble_id, level = args.ensemble, ensemble_level(store, args.ensemble)
    if level != high:
        raise SystemExit(f"{ensemble_id} gives {level} gaps; the benchmark needs a model fine-tuned on {high}")
    members = load_ensemble(ensemble_model_dirs(store, ensemble_id))
    frames = store.query(
        """SELECT f.structure_hash, f.md_id, f.held_out, l.gap_ev FROM md_frames f JOIN labels l USING (structure_hash)
           WHERE l.level = ? AND l.status = 'ok' AND l.gap_ev IS NOT NULL ORDER BY f.md_id, f.frame""",
        [high],
    )
    rng = np.random.default_rng(22)
    held_runs = sorted(frames.loc[frames["held_out"], "md_id"].unique())
    evaluation_runs = set(rng.choice(held_runs, size=len(held_runs) // 2, replace=False))
    is_eval = frames["md_id"].isin(evaluation_runs) & frames["held_out"]
    evaluation, pool = frames[is_eval], frames[~is_eval & ~frames["md_id"].isin(evaluation_runs)]
    atoms = store.load_structures(frames["structure_hash"].tolist())
    graph = {h: build_graph(atoms[h], cutoff_a=members[0].cutoff_a) for h in frames["structure_hash"]}
    splits = level_splits(store, high, gnn)  # the dataset's high-level splits (MD frames of rounds included)
    pool_hashes = set(pool["structure_hash"])
    keep = [i for i, h in enumerate(splits["train"][0]) if h not in pool_hashes]
    base_graphs = [splits["train"][1][i] for i in keep]
    base_gaps = splits["train"][2][keep]
    valid_graphs, valid_gaps = splits["valid"][1], splits["valid"][2]
    print(
        f"ensemble {ensemble_id} ({len(members)} members); {len(base_graphs)} dataset training gaps, pool "
        f"{len(pool)} MD frames, evaluation {len(evaluation)} held-out frames of {len(evaluation_runs)} runs"
    )

    eval_graphs = [graph[h] for h in evaluation["structure_hash"]]
    eval_gaps = evaluation["gap_ev"].to_numpy()

    def evaluate(models) -> float:
        predictions = [m.predict_data([to_data(g, m.normaliser) for g in eval_graphs]) for m in models]
        return float(np.mean(np.abs(np.mean(predictions, axis=0) - eval_gaps)))

    def fine_tuned(chosen: list[str]) -> float:
        gaps = pool.set_index("structure_hash").loc[chosen, "gap_ev"].to_numpy()
        added = (list(chosen), [graph[h] for h in chosen], gaps)
        return evaluate(fine_tune_ensemble(members, gnn, (base_graphs, base_gaps), (valid_graphs, valid_gaps), added))

    start = time.perf_counter()
    spread = predict_gaps_per_model([atoms[h] for h in pool["structure_hash"]], members).std(axis=0)
    calculator = load_mace_calculator(mace_model_path(store, latest_model(store)[0]), device="cpu")
    descriptors = mace_descriptors(
        calculator, [atoms[h] for h in pool["structure_hash"]], list(config.system.allowed_species())
    )
    ks = [k for k in (int(v) for v in args.ks.split(",")) if k <= len(pool)]
    baseline = evaluate(members)
    print(f"no frame added: MAE {baseline:.4f} eV")
    by_uncertainty, at_random = {}, {}
    hashes = pool["structure_hash"].to_numpy()
    for k in ks:
        chosen = hashes[
            select_uncertain_diverse(spread, descriptors, k, candidate_factor=config.active_learning.candidate_factor)
        ]
        by_uncertainty[k] = fine_tuned(list(chosen))
        at_random[k] = float(
            np.mean(
                [
                    fine_tuned(list(np.random.default_rng(seed).choice(hashes, size=k, replace=False)))
                    for seed in range(args.random_seeds)
                ]
            )
        )
        print(
            f"k = {k:3d}: uncertainty {by_uncertainty[k]:.4f} eV, random {at_random[k]:.4f} eV "
            f"(mean of {args.random_seeds} draws)  [{time.perf_counter() - start:.0f} s]"
        )
    k_max = ks[-1]
    target = at_random[k_max]  # the error k_max random labels give
    curve_k = np.array([0] + ks, dtype=float)
    curve_mae = np.array([baseline] + [by_uncertainty[k] for k in ks])
    reached = np.flatnonzero(curve_mae <= target)
    if len(reached) == 0:
        print(
            f"headline: <1.0x fewer labels by uncertainty ({k_max} chosen by uncertainty: "
            f"{by_uncertainty[k_max]:.4f} eV, at random {target:.4f} eV)"
        )
        return
    j = int(reached[0])
    needed = (
        0.0
        if j == 0
        else curve_k[j - 1]
        + (curve_mae[j - 1] - target) / (curve_mae[j - 1] - curve_mae[j]) * (curve_k[j] - curve_k[j - 1])
    )
    factor = k_max / max(needed, 1.0)
    print(
        f"headline: {factor:.1f}x fewer labels by uncertainty for the held-out MAE of {k_max} random labels "
        f"({target:.4f} eV: {needed:.1f} labels by uncertainty)"
    )


if __name__ == "__main__":
    main()
