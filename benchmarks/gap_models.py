"""Which gap model generalises to MD frames: the GNN vs a kernel head on MACE's descriptors, with a learning curve.

On a project of the active-learning recipe (default ``runs/ag3sbri-al``) with labelled held-out MD frames: the
held-out frames of half the MD runs (seed 22) are the test set; n = 0, ¼, ½, all of the other half's frames are
added to the training data. Two models, both trained only on what they are given:

- the GNN: the project's newest ensemble (round 0), each member fine-tuned on the dataset's high-level training
  split plus the n frames (the config's fine-tuning settings);
- a kernel ridge head on MACE descriptors (species-averaged invariant node features of the project's MACE model,
  standardised; Gaussian kernel): the high-level gap learned directly, its width and regularisation chosen by
  5-fold cross-validation on the training data alone.

Prints the test MAE and mean error of both per n (the learning curve on MD frames) and ends with the headline:
the kernel head's test MAE with every training frame added. A few minutes on 2 cores.

    python benchmarks/gap_models.py [--project DIR] [--config FILE] [--ensemble ID]
"""

from __future__ import annotations

import argparse
import copy
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
GAMMAS = (0.1, 0.3, 1.0, 3.0)
LAMBDAS = (1e-3, 1e-2, 1e-1)


def kernel(a: np.ndarray, b: np.ndarray, gamma: float) -> np.ndarray:
    """Gaussian kernel exp(-gamma |a - b|² / n_features) of standardised descriptors."""
    from scipy.spatial.distance import cdist

    return np.exp(-gamma * cdist(a, b, "sqeuclidean") / a.shape[1])


def fit_krr(x: np.ndarray, y: np.ndarray, gamma: float, lam: float):
    """Kernel ridge regression on centred targets; returns predict(x_new)."""
    mean = float(y.mean())
    coefficients = np.linalg.solve(kernel(x, x, gamma) + lam * np.eye(len(x)), y - mean)
    return lambda new: kernel(new, x, gamma) @ coefficients + mean


def cross_validated_krr(x: np.ndarray, y: np.ndarray, seed: int = 0):
    """The (gamma, lambda) of the grid with the lowest 5-fold CV MAE on (x, y), refitted on all of it."""
    folds = np.random.default_rng(seed).permutation(len(x)) % 5
    best = None
    for gamma in GAMMAS:
        for lam in LAMBDAS:
            errors = []
            for fold in range(5):
                train, test = folds != fold, folds == fold
                errors.append(np.abs(fit_krr(x[train], y[train], gamma, lam)(x[test]) - y[test]).mean())
            if best is None or np.mean(errors) < best[0]:
                best = (float(np.mean(errors)), gamma, lam)
    return fit_krr(x, y, best[1], best[2]), best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default=str(REPO / "data" / "configs" / "ag3sbri-active-learning.toml"))
    parser.add_argument("--project", default=None)
    parser.add_argument("--ensemble", default=None, help="GNN ensemble to start from (default: the newest)")
    args = parser.parse_args()

    import torch

    from capml_core.config.loading import load_config
    from capml_core.models.committee import mace_descriptors
    from capml_core.models.gnn import TrainingSettings, load_ensemble, to_data, train
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
    splits = level_splits(store, high, gnn)
    base_hashes, base_gaps = list(splits["train"][0]), splits["train"][2]
    valid_graphs, valid_gaps = splits["valid"][1], splits["valid"][2]
    structures = store.load_structures(base_hashes + frames["structure_hash"].tolist())
    calculator = load_mace_calculator(mace_model_path(store, latest_model(store)[0]), device="cpu")
    species = list(config.system.allowed_species())
    all_hashes = base_hashes + frames["structure_hash"].tolist()
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
        mean, scale = x.mean(axis=0), x.std(axis=0) + 1e-12
        predict, (cv_mae, gamma, lam) = cross_validated_krr((x - mean) / scale, gaps)
        x_test = (np.array([descriptor[h] for h in test["structure_hash"]]) - mean) / scale
        head = predict(x_test) - test_gaps
        tuned = []
        for index, member in enumerate(members):
            model = copy.deepcopy(member)
            if n:
                settings = TrainingSettings(
                    gnn.fine_tune_epochs, gnn.batch_size, gnn.fine_tune_learning_rate, gnn.patience, 1000 + index
                )
                train(
                    model,
                    base_graphs + [graph[h] for h in added["structure_hash"]],
                    gaps,
                    valid_graphs,
                    valid_gaps,
                    settings,
                    stage="benchmark",
                )
            tuned.append(model.predict_data([to_data(g, model.normaliser) for g in test_graphs]))
        network = np.mean(tuned, axis=0) - test_gaps
        results.append((n, np.abs(network).mean(), network.mean(), np.abs(head).mean(), head.mean()))
        print(
            f"n = {n:3d} MD frames: GNN MAE {np.abs(network).mean():.3f} eV (mean {network.mean():+.3f}); kernel head "
            f"MAE {np.abs(head).mean():.3f} eV (mean {head.mean():+.3f}; CV {cv_mae:.3f}, gamma {gamma}, lambda {lam})"
            f"  [{time.perf_counter() - start:.0f} s]"
        )
    n, _, _, head_mae, head_mean = results[-1]
    print(
        f"headline: {head_mae:.3f}eV kernel-head gap MAE on held-out MD frames with {n} MD frames in training "
        f"(GNN {results[-1][1]:.3f} eV)"
    )


if __name__ == "__main__":
    main()
