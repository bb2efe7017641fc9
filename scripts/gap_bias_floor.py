"""How far the gap model's error averages out over one MD run: the per-run bias the DFT checks of Eg(T) judge.

On a project with DFT checks of Eg(T) (``gap_dft_frames``: the MD's own uncorrelated frames at the high level),
the kernel gap ensemble is refitted with the pipeline's own fitting (``fit_kernel_member``: 3 members, the cheap
head, then the high level as a correction) and measured on the check frames, run by run (model − DFT averaged over
a run's frames: the difference a DFT check judges against 0.05 eV):

1. the descriptors: MACE node features per species averaged (the pipeline's), averaged and their spread, averaged
   and their maximum (does the pooling lose what sets the gap?); the heads tuned on the MD frames (``md_frame_focus``);
2. more MD frames: leave one run out (the check frames of every other run added to the high-level training data);
3. frames of the run itself: half of every run's check frames trained on, the other half predicted (two folds).

Prints how closely the stored ensemble follows DFT frame by frame (slope and correlation, over all frames and within
runs); then, per variant, the MAE over the check frames, the rms of the per-run biases and how many runs are within
0.05 eV; then the per-run biases. Reproduces the numbers of docs/active-learning.md ("The per-run bias floor").

    OMP_NUM_THREADS=1 python scripts/gap_bias_floor.py [--project DIR] [--config FILE] [--ensemble ID]
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from capml_core.config.loading import load_config
from capml_core.models.mace import load_mace_calculator
from capml_core.stages.gnn_training import level_split_hashes
from capml_core.stages.kernel_training import fit_kernel_member
from capml_core.stages.md_frames import md_frame_mask
from capml_core.store.database import Store
from capml_core.store.queries import latest_model

REPO = Path(__file__).resolve().parent.parent
#: Members per refitted ensemble (the study's ``gnn.ensemble_size``).
MEMBERS = 3
#: The DFT checks' tolerance (eV): a run's bias within it passes.
TOLERANCE_EV = 0.05
#: Per-species pooling of the node features of a structure (n_atoms_of_species, n_features) -> vector.
POOLINGS: dict[str, Callable[[np.ndarray], np.ndarray]] = {
    "mean (the pipeline's)": lambda f: f.mean(axis=0),
    "mean and spread": lambda f: np.concatenate([f.mean(axis=0), f.std(axis=0)]),
    "mean and maximum": lambda f: np.concatenate([f.mean(axis=0), f.max(axis=0)]),
}


class PooledDescriptors:
    """Descriptors for ``fit_kernel_member``: MACE invariant node features pooled per species (no focus)."""

    def __init__(
        self, node_features: dict[str, tuple[np.ndarray, np.ndarray]], species, pooling, model_id, md_frames=None
    ) -> None:
        self.node_features, self.species, self.pooling, self.model_id = node_features, species, pooling, model_id
        self.md_frames = md_frames  # hashes of MD frames: the heads' focus (gnn.md_frame_focus), or None

    def of(self, hashes: Sequence[str]) -> np.ndarray:
        """(len(hashes), n_features) pooled descriptors."""
        rows = []
        for h in hashes:
            features, symbols = self.node_features[h]
            width = len(self.pooling(features[:1]))
            rows.append(
                np.concatenate(
                    [
                        self.pooling(features[symbols == s]) if (symbols == s).any() else np.zeros(width)
                        for s in self.species
                    ]
                )
            )
        return np.array(rows)

    def focus(self, hashes: Sequence[str]) -> np.ndarray | None:
        """Which of ``hashes`` are MD frames when focused (``gnn.md_frame_focus``), else None (the study's)."""
        return None if self.md_frames is None else np.array([h in self.md_frames for h in hashes])


def check_frames(store: Store, ensemble: str | None = None) -> tuple[str, pd.DataFrame]:
    """The DFT-check frames of ``ensemble`` (default: the newest checked) with model and DFT gaps (eV), run order."""
    ensemble = ensemble or str(
        store.query("SELECT ensemble_id FROM gap_dft_checks ORDER BY created_at DESC LIMIT 1")["ensemble_id"][0]
    )
    frames = store.query(
        """SELECT d.md_id, d.structure_hash, d.model_gap_ev, d.dft_gap_ev, c.composition_x, c.temperature_k
           FROM gap_dft_frames d JOIN gap_dft_checks c USING (md_id, ensemble_id)
           WHERE d.ensemble_id = ? AND d.dft_gap_ev IS NOT NULL ORDER BY d.md_id, d.frame""",
        [ensemble],
    )
    return ensemble, frames


def follows(frames: pd.DataFrame, predicted: np.ndarray) -> str:
    """How closely ``predicted`` follows DFT frame by frame: slope and correlation, overall and within runs."""
    dft = frames["dft_gap_ev"].to_numpy()
    within_model = predicted - pd.Series(predicted, index=frames.index).groupby(frames["md_id"]).transform("mean")
    within_dft = dft - frames.groupby("md_id")["dft_gap_ev"].transform("mean").to_numpy()
    slope, within_slope = np.polyfit(dft, predicted, 1)[0], np.polyfit(within_dft, within_model, 1)[0]
    r, within_r = np.corrcoef(dft, predicted)[0, 1], np.corrcoef(within_dft, within_model)[0, 1]
    return f"slope {slope:.2f} (r {r:.2f}), within a run slope {within_slope:.2f} (r {within_r:.2f})"


def refit(descriptors, base: dict, extra: pd.DataFrame, seed: int) -> Callable[[Sequence[str]], np.ndarray]:
    """An ensemble fitted on ``base`` plus ``extra`` frames (high level); returns its predictor (eV)."""
    high_hashes, high_gaps = base["high"]["train"]
    data = {
        "cheap": base["cheap"],
        "high": {
            "train": (
                list(high_hashes) + extra["structure_hash"].tolist(),
                np.concatenate([high_gaps, extra["dft_gap_ev"].to_numpy()]),
            )
        },
    }
    members = [  # member seeds as the pipeline's (capml_core.stages.gnn_training)
        fit_kernel_member(descriptors, data, member=m, members=MEMBERS, seed=seed * 1000 + m) for m in range(MEMBERS)
    ]

    def predict(hashes: Sequence[str]) -> np.ndarray:
        x = descriptors.of(hashes)
        return np.mean([delta.predict(x) for _, delta, _ in members], axis=0)

    return predict


def summary(name: str, frames: pd.DataFrame, predicted: np.ndarray) -> pd.Series:
    """Print a variant's frame MAE, per-run bias rms and runs within the tolerance; return the per-run biases."""
    difference = pd.Series(predicted - frames["dft_gap_ev"].to_numpy(), index=frames.index)
    bias = difference.groupby([frames["composition_x"], frames["temperature_k"]]).mean()
    rms = float(np.sqrt((bias**2).mean()))
    within = int((bias.abs() <= TOLERANCE_EV).sum())
    print(
        f"{name:58s} frame MAE {difference.abs().mean():.3f} eV, run bias rms {rms:.3f} eV, "
        f"{within} of {len(bias)} runs within {TOLERANCE_EV} eV"
    )
    return bias


def main() -> None:
    """Refit each variant and print its per-run biases."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--project", default=str(REPO / "data" / "checkpoints" / "ag3sbri-study"))
    parser.add_argument("--config", default=str(REPO / "data" / "configs" / "ag3sbri-study.toml"))
    parser.add_argument("--ensemble", help="whose DFT-check frames (default: the newest checked ensemble)")
    args = parser.parse_args()
    config = load_config(args.config, project_dir=args.project).config
    store = Store(args.project)
    ensemble, frames = check_frames(store, args.ensemble)
    base = {
        stage: {"train": level_split_hashes(store, level, config.gnn)["train"]}
        for stage, level in (("cheap", config.reference.cheap_level), ("high", config.reference.high_level))
    }
    hashes = sorted({h for b in base.values() for h in b["train"][0]} | set(frames["structure_hash"]))
    model_id, path = latest_model(store)
    calculator = load_mace_calculator(path, device="cpu", dtype="float64")
    atoms = store.load_structures(hashes)
    start = time.perf_counter()
    node_features = {}
    for h in hashes:
        features = calculator.get_descriptors(atoms[h], invariants_only=True)
        features = features[0] if isinstance(features, list) else features  # a committee: its first member
        node_features[h] = (np.asarray(features), np.asarray(atoms[h].get_chemical_symbols()))
    species = sorted({s for a in atoms.values() for s in a.get_chemical_symbols()})
    print(
        f"{len(frames)} check frames of {frames['md_id'].nunique()} runs (ensemble {ensemble}); MACE {model_id} "
        f"descriptors of {len(hashes)} structures in {time.perf_counter() - start:.0f} s"
    )
    print(f"the stored ensemble follows DFT frame by frame with {follows(frames, frames['model_gap_ev'].to_numpy())}")
    seed = config.run.seed
    none = frames.iloc[:0]
    biases = {"stored ensemble": summary("the stored ensemble", frames, frames["model_gap_ev"].to_numpy())}
    for name, pooling in POOLINGS.items():
        descriptors = PooledDescriptors(node_features, species, pooling, model_id)
        predict = refit(descriptors, base, none, seed)
        biases[name] = summary(f"refitted, {name}", frames, predict(frames["structure_hash"].tolist()))
    mean_pooling = POOLINGS["mean (the pipeline's)"]
    md_frames = set(frames["structure_hash"]) | {
        h for h, m in zip(hashes, md_frame_mask(store, hashes), strict=True) if m
    }
    focused = PooledDescriptors(node_features, species, mean_pooling, model_id, md_frames=md_frames)
    biases["focused on MD frames"] = summary(
        "refitted, mean, tuned on the MD frames (md_frame_focus)",
        frames,
        refit(focused, base, none, seed)(frames["structure_hash"].tolist()),
    )
    descriptors = PooledDescriptors(node_features, species, mean_pooling, model_id)
    left_out = np.zeros(len(frames))
    for run in frames["md_id"].unique():
        mine = (frames["md_id"] == run).to_numpy()
        left_out[mine] = refit(descriptors, base, frames[~mine], seed)(frames.loc[mine, "structure_hash"].tolist())
    biases["leave one run out"] = summary("+ every other run's check frames (leave one run out)", frames, left_out)
    half = frames.groupby("md_id").cumcount().to_numpy() % 2
    crossed = np.zeros(len(frames))
    for fold in (0, 1):
        mine = half == fold
        crossed[mine] = refit(descriptors, base, frames[~mine], seed)(frames.loc[mine, "structure_hash"].tolist())
    biases["half of its own run"] = summary("+ half of every run's check frames (two folds)", frames, crossed)
    table = pd.DataFrame(biases).round(3)
    table.index = [f"x {x:g}, {t:g} K" for x, t in table.index]
    print("model - DFT per run (eV):")
    print(table.to_string())


if __name__ == "__main__":
    main()
