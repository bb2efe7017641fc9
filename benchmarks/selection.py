"""Frames chosen by uncertainty vs at random: the gap model's error on MD frames after adding k labelled frames.

On a project of the active-learning recipe (default ``runs/ag3sbri-al``, data/configs/ag3sbri-active-learning.toml)
whose MD frames are labelled at both levels (the held-out set, the rounds' frames): the held-out frames of half the
MD runs (drawn with a fixed seed, whole runs never split) are the evaluation set; every other labelled MD frame is
the pool, removed from the training data. A gap ensemble of 3 members is trained on the dataset's training splits
plus k pool frames chosen

- by uncertainty: capml's selection (the starting ensemble's gap spread on the pool, then farthest points in
  MACE's descriptor space, ``capml_core.models.selection.select_uncertain_diverse``), or
- at random (several seeds),

and measured on the evaluation frames (high-level MAE of the ensemble mean, eV). Same k, same members, same seeds.
Two gap models (``--model``):

- ``kernel`` (default; the pipeline's ``mace-kernel``): capml's kernel heads refitted from scratch for every k (a
  cheap-level head, then the high level as a correction, each member on its own 80 %: the fitting of
  ``capml_core.stages.kernel_training``), on the descriptors of the project's newest MACE model; seconds per fit;
- ``gnn``: the project's newest GNN ensemble fine-tuned member by member (the config's fine-tuning settings) on
  its high-level training split plus the k frames; minutes per k.

The headline: how many times fewer labels uncertainty needs (k_max over the k, interpolated linearly along the
uncertainty curve at the error k_max random labels give; target >= 2x).

    python benchmarks/selection.py [--project DIR] [--config FILE] [--model kernel|gnn] [--ks 4,8,16,32]
                                   [--random-seeds 5] [--ensemble ID]
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent

#: Members of the kernel ensembles the benchmark fits (the recipe's ensemble size).
KERNEL_MEMBERS = 3


def kernel_model(store, config, pool, evaluation) -> tuple[np.ndarray, np.ndarray, Callable[[list[str]], float]]:
    """The kernel path: (spread on the pool, pool descriptors, MAE on the evaluation frames after adding frames)."""
    from capml_core.stages.gnn_training import level_split_hashes
    from capml_core.stages.kernel_training import Descriptors, fit_kernel_member

    cheap_level, high_level = config.reference.cheap_level, config.reference.high_level
    held = set(pool["structure_hash"]) | set(evaluation["structure_hash"])
    base = {}
    for stage, level in (("cheap", cheap_level), ("high", high_level)):
        hashes, gaps = level_split_hashes(store, level, config.gnn)["train"]
        keep = [i for i, h in enumerate(hashes) if h not in held]
        base[stage] = ([hashes[i] for i in keep], gaps[keep])
    descriptors = Descriptors(store)
    descriptors.species = tuple(config.system.allowed_species())
    pool_gaps = {stage: pool.set_index("structure_hash")[f"{stage}_gap_ev"] for stage in ("cheap", "high")}
    eval_x = descriptors.of(evaluation["structure_hash"].tolist())
    pool_x = descriptors.of(pool["structure_hash"].tolist())
    eval_gaps = evaluation["high_gap_ev"].to_numpy()
    seed = config.run.seed

    def members(chosen: list[str]):
        data = {
            stage: {
                "train": (
                    base[stage][0] + list(chosen),
                    np.concatenate([base[stage][1], pool_gaps[stage].loc[list(chosen)].to_numpy()]),
                )
            }
            for stage in ("cheap", "high")
        }
        return [
            fit_kernel_member(descriptors, data, member=m, members=KERNEL_MEMBERS, seed=seed + m)[1]
            for m in range(KERNEL_MEMBERS)
        ]

    def error_after(chosen: list[str]) -> float:
        predicted = np.mean([head.predict(eval_x) for head in members(chosen)], axis=0)
        return float(np.mean(np.abs(predicted - eval_gaps)))

    print(f"kernel heads: {len(base['cheap'][0])} cheap / {len(base['high'][0])} high dataset training gaps")
    spread = np.std([head.predict(pool_x) for head in members([])], axis=0)
    return spread, pool_x, error_after


def gnn_model(store, config, pool, evaluation, ensemble) -> tuple[np.ndarray, np.ndarray, Callable]:
    """The GNN path: the newest (or ``ensemble``) GNN ensemble fine-tuned on its training split plus the frames."""
    from md_frame_training import fine_tune_ensemble

    from capml_core.models.committee import mace_descriptors
    from capml_core.models.gnn import load_ensemble, predict_gaps_per_model, to_data
    from capml_core.models.graphs import build_graph
    from capml_core.models.mace import load_mace_calculator
    from capml_core.stages.gnn_training import level_splits
    from capml_core.store.queries import (
        ensemble_level,
        ensemble_model_dirs,
        latest_ensemble,
        latest_model,
        mace_model_path,
    )

    gnn, high = config.gnn, config.reference.high_level
    ensemble_id, level = (ensemble, ensemble_level(store, ensemble)) if ensemble else latest_ensemble(store)
    if level != high:
        raise SystemExit(f"{ensemble_id} gives {level} gaps; the benchmark needs a model fine-tuned on {high}")
    members = load_ensemble(ensemble_model_dirs(store, ensemble_id))
    if not hasattr(members[0], "cutoff_a"):
        raise SystemExit(f"{ensemble_id} is not a GNN ensemble: use --model kernel")
    hashes = pool["structure_hash"].tolist() + evaluation["structure_hash"].tolist()
    atoms = store.load_structures(hashes)
    graph = {h: build_graph(atoms[h], cutoff_a=members[0].cutoff_a) for h in hashes}
    splits = level_splits(store, high, gnn)  # the dataset's high-level splits (MD frames of rounds included)
    pool_hashes = set(pool["structure_hash"])
    keep = [i for i, h in enumerate(splits["train"][0]) if h not in pool_hashes]
    base = ([splits["train"][1][i] for i in keep], splits["train"][2][keep])
    valid = (splits["valid"][1], splits["valid"][2])
    eval_graphs = [graph[h] for h in evaluation["structure_hash"]]
    eval_gaps = evaluation["high_gap_ev"].to_numpy()
    print(f"ensemble {ensemble_id} ({len(members)} members); {len(base[0])} dataset training gaps")

    def evaluate(models) -> float:
        predictions = [m.predict_data([to_data(g, m.normaliser) for g in eval_graphs]) for m in models]
        return float(np.mean(np.abs(np.mean(predictions, axis=0) - eval_gaps)))

    def error_after(chosen: list[str]) -> float:
        if not chosen:
            return evaluate(members)
        gaps = pool.set_index("structure_hash").loc[chosen, "high_gap_ev"].to_numpy()
        return evaluate(fine_tune_ensemble(members, gnn, base, valid, (list(chosen), [graph[h] for h in chosen], gaps)))

    pool_atoms = [atoms[h] for h in pool["structure_hash"]]
    spread = predict_gaps_per_model(pool_atoms, members).std(axis=0)
    calculator = load_mace_calculator(mace_model_path(store, latest_model(store)[0]), device="cpu")
    descriptors = mace_descriptors(calculator, pool_atoms, list(config.system.allowed_species()))
    return spread, descriptors, error_after


def labelled_frames(store, config):
    """Every MD frame with an 'ok' gap at both levels: hash, run, held-out flag, cheap and high gaps (eV)."""
    return store.query(
        """SELECT f.structure_hash, f.md_id, f.held_out, c.gap_ev AS cheap_gap_ev, h.gap_ev AS high_gap_ev
           FROM md_frames f JOIN labels c USING (structure_hash) JOIN labels h USING (structure_hash)
           WHERE c.level = ? AND h.level = ? AND c.status = 'ok' AND h.status = 'ok'
             AND c.gap_ev IS NOT NULL AND h.gap_ev IS NOT NULL ORDER BY f.md_id, f.frame""",
        [config.reference.cheap_level, config.reference.high_level],
    )


def labels_needed(ks: list[int], baseline: float, by_uncertainty: dict, target: float) -> float | None:
    """Labels uncertainty needs for the error ``target`` (linear along its curve from k = 0), None if never."""
    curve_k = np.array([0] + ks, dtype=float)
    curve_mae = np.array([baseline] + [by_uncertainty[k] for k in ks])
    reached = np.flatnonzero(curve_mae <= target)
    if len(reached) == 0:
        return None
    j = int(reached[0])
    if j == 0:
        return 0.0
    step = (curve_mae[j - 1] - target) / (curve_mae[j - 1] - curve_mae[j])
    return float(curve_k[j - 1] + step * (curve_k[j] - curve_k[j - 1]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default=str(REPO / "data" / "configs" / "ag3sbri-active-learning.toml"))
    parser.add_argument("--project", default=None)
    parser.add_argument("--model", choices=("kernel", "gnn"), default="kernel")
    parser.add_argument("--ks", default="4,8,16,32")
    parser.add_argument("--random-seeds", type=int, default=5)
    parser.add_argument("--ensemble", default=None, help="--model gnn: the ensemble to start from (default: newest)")
    args = parser.parse_args()

    import torch

    from capml_core.config.loading import load_config
    from capml_core.models.selection import select_uncertain_diverse
    from capml_core.store.database import Store

    torch.set_num_threads(1)
    loaded = load_config(args.config, project_dir=args.project)
    config, store = loaded.config, Store(loaded.project_dir)
    frames = labelled_frames(store, config)
    rng = np.random.default_rng(22)
    held_runs = sorted(frames.loc[frames["held_out"], "md_id"].unique())
    evaluation_runs = set(rng.choice(held_runs, size=len(held_runs) // 2, replace=False))
    in_eval_run = frames["md_id"].isin(evaluation_runs)
    evaluation, pool = frames[in_eval_run & frames["held_out"]], frames[~in_eval_run]
    print(
        f"pool {len(pool)} MD frames ({int(pool['held_out'].sum())} held-out of other runs), evaluation "
        f"{len(evaluation)} held-out frames of {len(evaluation_runs)} runs; model {args.model}"
    )
    start = time.perf_counter()
    if args.model == "kernel":
        spread, descriptors, error_after = kernel_model(store, config, pool, evaluation)
    else:
        spread, descriptors, error_after = gnn_model(store, config, pool, evaluation, args.ensemble)
    ks = [k for k in (int(v) for v in args.ks.split(",")) if k <= len(pool)]
    baseline = error_after([])
    print(f"no frame added: MAE {baseline:.4f} eV")
    by_uncertainty, at_random = {}, {}
    hashes = pool["structure_hash"].to_numpy()
    for k in ks:
        candidates = config.active_learning.candidate_factor
        chosen = select_uncertain_diverse(spread, descriptors, k, candidate_factor=candidates)
        by_uncertainty[k] = error_after(list(hashes[chosen]))
        draws = [
            error_after(list(np.random.default_rng(seed).choice(hashes, size=k, replace=False)))
            for seed in range(args.random_seeds)
        ]
        at_random[k] = float(np.mean(draws))
        print(
            f"k = {k:3d}: uncertainty {by_uncertainty[k]:.4f} eV, random {at_random[k]:.4f} ± "
            f"{np.std(draws) / np.sqrt(len(draws)):.4f} eV (mean of {len(draws)} draws)  "
            f"[{time.perf_counter() - start:.0f} s]"
        )
    k_max = ks[-1]
    target = at_random[k_max]  # the error k_max random labels give
    needed = labels_needed(ks, baseline, by_uncertainty, target)
    if needed is None:
        print(
            f"headline: <1.0x fewer labels by uncertainty ({k_max} chosen by uncertainty: "
            f"{by_uncertainty[k_max]:.4f} eV, at random {target:.4f} eV)"
        )
        return
    factor = k_max / max(needed, 1.0)
    print(
        f"headline: {factor:.1f}x fewer labels by uncertainty for the held-out MAE of {k_max} random labels "
        f"({target:.4f} eV: {needed:.1f} labels by uncertainty, {args.model})"
    )


if __name__ == "__main__":
    main()
