"""Which gap model generalises to MD frames: the GNN vs a kernel head on MACE's descriptors, with a learning curve.

On a project of the active-learning recipe (default ``runs/ag3sbri-al``) with labelled held-out MD frames: the
held-out frames of half the MD runs (seed 22) are the test set; n = 0, ¼, ½, all of the other half's frames are
added to the training data. Two models, both trained only on what they are given:

- the GNN: the project's newest ensemble (round 0), each member fine-tuned on the dataset's high-level training
  split plus the n frames (the config's fine-tuning settings; frames in the hash split's validation share
  validate, as in a real round: benchmarks/md_frame_training.py);
- capml's kernel gap head on MACE descriptors (``capml_core.models.gap_head``: species-averaged invariant node
  features of the project's MACE model, standardised, Gaussian kernel ridge, width and regularisation by 5-fold
  cross-validation on the training data alone), in two forms: the high-level gap learnt directly, and as a
  correction to a head on the cheap level (dataset cheap-level gaps plus the added frames' cheap labels).

Prints the test MAE and mean error of both per n (the learning curve on MD frames) and ends with the headline:
the kernel head's test MAE with every training frame added. A few minutes on 2 cores.

    python benchmarks/gap_models.py [--project DIR] [--config FILE] [--ensemble ID]
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
    parser.add_argument("--ensemble", default=None, help="GNN ensemble to start from (default: the newest)")
    args = parser.parse_args()

    import torch
    from md_frame_training import fine_tune_ensemble

    from capml_core.config.loading import load_config
    from capml_core.models.committee import mace_descriptors
    from capml_core.models.gap_head import fit_delta_head, fit_kernel_head
    from capml_core.models.gnn import load_ensemble, to_data
    from capml_core.models.graphs import build_graph
    from capml_core.models.mace import load_mace_calculator
    from capml_core.stages.gnn_training import level_splits
    from capml_core.store.database import Store
    from capml_core.store.queries import ensemble_model_dirs, latest_ensemble, latest_model, mace_model_path

    torch.set_num_threads(1)
    loaded = load_config(args.config, project_dir=args.project)
    config, store = loaded.config, Store(loaded.project_dir)
    gnn, high = config.gnn, config.reference.high_level
    ensemble_id = args.ensemble or latest_ensemble(store)[0]
    members = load_ensemble(ensemble_model_dirs(store, ensemble_id))
    frames = store.query(
        """SELECT f.structure_hash, f.md_id, l.gap_ev FROM md_frames f JOIN labels l USING (structure_hash)
           WHERE f.held_out AND l.level = ? AND l.status = 'ok' AND l.gap_ev IS NOT NULL ORDER BY f.md_id""",
        [high],
    )
    runs = sorted(frames["md_id"].unique())
    test_runs = set(np.random.default_rng(22).choice(runs, size=len(runs) // 2, replace=False))
    test, extra = frames[frames["md_id"].isin(test_runs)], frames[~frames["md_id"].isin(test_runs)]
    extra = extra.iloc[np.random.default_rng(5).permutation(len(extra))]  # the order frames are added in
    cheap_level = config.reference.cheap_level
    cheap_rows = store.labelled_gaps(cheap_level)  # dataset structures only (held-out frames excluded)
    cheap_frames = store.query(
        """SELECT f.structure_hash, l.gap_ev FROM md_frames f JOIN labels l USING (structure_hash)
           WHERE f.held_out AND l.level = ? AND l.status = 'ok' AND l.gap_ev IS NOT NULL""",
        [cheap_level],
    )
    cheap_gap = dict(zip(cheap_rows["structure_hash"], cheap_rows["gap_ev"], strict=True))
    cheap_base = list(cheap_gap)
    cheap_gap |= dict(zip(cheap_frames["structure_hash"], cheap_frames["gap_ev"], strict=True))
    splits = level_splits(store, high, gnn)
    base_hashes, base_gaps = list(splits["train"][0]), splits["train"][2]
    valid_graphs, valid_gaps = splits["valid"][1], splits["valid"][2]
    structures = store.load_structures(list({*base_hashes, *cheap_base, *frames["structure_hash"]}))
    calculator = load_mace_calculator(mace_model_path(store, latest_model(store)[0]), device="cpu")
    species = list(config.system.allowed_species())
    all_hashes = list(structures)
    described = mace_descriptors(calculator, [structures[h] for h in all_hashes], species)
    descriptor = dict(zip(all_hashes, described, strict=True))
    graph = {h: build_graph(structures[h], cutoff_a=members[0].cutoff_a) for h in frames["structure_hash"]}
    base_graphs = splits["train"][1]
    test_gaps = test["gap_ev"].to_numpy()
    test_graphs = [graph[h] for h in test["structure_hash"]]
    print(
        f"ensemble {ensemble_id}; {len(base_hashes)} dataset training gaps at {high}; test {len(test)} held-out frames "
        f"of {len(test_runs)} MD runs; up to {len(extra)} MD frames added"
    )
    start = time.perf_counter()
    results = []
    for n in sorted({0, len(extra) // 4, len(extra) // 2, len(extra)}):
        added = extra.iloc[:n]
        hashes = base_hashes + added["structure_hash"].tolist()
        gaps = np.concatenate([base_gaps, added["gap_ev"].to_numpy()])
        x = np.array([descriptor[h] for h in hashes])
        x_test = np.array([descriptor[h] for h in test["structure_hash"]])
        direct = fit_kernel_head(x, gaps)
        head = direct.predict(x_test) - test_gaps
        cheap_hashes = cheap_base + [h for h in added["structure_hash"] if h in cheap_gap]
        cheap = fit_kernel_head(np.array([descriptor[h] for h in cheap_hashes]), [cheap_gap[h] for h in cheap_hashes])
        delta = fit_delta_head(cheap, x, gaps).predict(x_test) - test_gaps
        models = fine_tune_ensemble(
            members,
            gnn,
            (base_graphs, base_gaps),
            (valid_graphs, valid_gaps),
            (added["structure_hash"].tolist(), [graph[h] for h in added["structure_hash"]], added["gap_ev"].to_numpy()),
        )
        tuned = [m.predict_data([to_data(g, m.normaliser) for g in test_graphs]) for m in models]
        network = np.mean(tuned, axis=0) - test_gaps
        results.append((n, np.abs(network).mean(), np.abs(head).mean(), np.abs(delta).mean()))
        print(
            f"n = {n:3d} MD frames: GNN MAE {np.abs(network).mean():.3f} eV (mean {network.mean():+.3f}); head "
            f"{np.abs(head).mean():.3f} eV (mean {head.mean():+.3f}; CV {direct.cv_mae_ev:.3f}, gamma {direct.gamma}, "
            f"lambda {direct.regularisation}); head as a correction of the cheap head {np.abs(delta).mean():.3f} eV "
            f"(mean {delta.mean():+.3f})  [{time.perf_counter() - start:.0f} s]"
        )
    n, network_mae, head_mae, delta_mae = results[-1]
    print(
        f"headline: {min(head_mae, delta_mae):.3f}eV gap MAE of the kernel head on held-out MD frames with {n} MD "
        f"frames in training (GNN {network_mae:.3f} eV)"
    )


if __name__ == "__main__":
    main()
