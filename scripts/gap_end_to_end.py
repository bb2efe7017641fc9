"""A gap model that learns its own features, judged as the DFT checks of Eg(T) judge: per MD run.

The kernel heads of the pipeline read MACE features learnt for the energy; ``scripts/gap_bias_floor.py`` measured
that they resolve a run's mean gap to about 0.06-0.075 eV whatever they are trained on. Here the project's MACE
network itself is trained on the gap labels (end to end: every weight of the body, from the energy model's values,
and a new readout), on the same data as the pipeline's ensemble (the training splits of both levels: a cheap and a
high-level output of one network, their errors summed; the epoch with the lowest high-level validation MAE kept).
Readouts (``--pooling``):

- ``mean``: a per-atom MLP on the invariant node features of every layer, averaged over the atoms (a gap per level);
- ``band-edges``: per atom a valence and a conduction edge, the cell's band edges their smooth maximum and minimum
  (log-sum-exp, learnt width): the gap set by the atoms whose environment sets the band edges.

It is then measured on the project's DFT-check frames (never trained on), per run: model − DFT averaged over a run's
frames, the rms over the runs and how many are within 0.05 eV, and how closely it follows DFT frame by frame
(``--own-run-half``: trained with half of every run's own check frames too, the other half predicted, two folds).
Numbers of docs/active-learning.md ("The per-run bias floor"); about 10 s per epoch on one core.

    OMP_NUM_THREADS=1 python scripts/gap_end_to_end.py [--project DIR] [--pooling mean|band-edges]
        [--own-run-half] [--epochs 80] [--seed 0]
"""

from __future__ import annotations

import argparse
import copy
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from gap_bias_floor import TOLERANCE_EV, check_frames, follows, summary  # noqa: E402 - a script beside this one

from capml_core.config.loading import load_config  # noqa: E402 - the repository root on the path first
from capml_core.models.mace_files import import_torch, load_safe_model  # noqa: E402
from capml_core.stages.gnn_training import level_split_hashes  # noqa: E402
from capml_core.store.database import Store  # noqa: E402
from capml_core.store.queries import latest_model  # noqa: E402

#: Hidden width of the per-atom readout.
READOUT_WIDTH = 64
#: Structures per training batch.
BATCH_SIZE = 8
#: Learning rates of the MACE body (fine-tuned) and of the new readout.
BODY_LR, READOUT_LR = 2e-4, 2e-3
#: Initial width (eV) of the band-edge readout's smooth maximum and minimum.
EDGE_WIDTH_EV = 0.2
LEVELS = ("cheap", "high")


def training_labels(store: Store, config) -> dict[str, dict[str, list[float]]]:
    """{split: {structure hash: [cheap gap, high gap] (eV, NaN where unlabelled)}} of the pipeline's gap data."""
    labels: dict[str, dict[str, list[float]]] = {}
    for column, level in enumerate((config.reference.cheap_level, config.reference.high_level)):
        for split, (hashes, gaps) in level_split_hashes(store, level, config.gnn).items():
            for h, gap in zip(hashes, gaps, strict=True):
                labels.setdefault(split, {}).setdefault(h, [np.nan, np.nan])[column] = float(gap)
    return labels


def build_network(torch, body, pooling: str, mean_gaps: np.ndarray):
    """The MACE body with a gap readout: (batch) -> (n_structures, 2) gaps (eV) at the cheap and high level."""
    from e3nn import o3
    from torch_geometric.utils import scatter

    irreps = o3.Irreps(str(body.products[0].linear.irreps_out))
    block = (irreps.lmax + 1) ** 2
    n_scalars, n_layers = irreps.dim // block, len(body.interactions)

    class GapNetwork(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.body = body
            outputs = 2 * len(LEVELS) if pooling == "band-edges" else len(LEVELS)
            self.readout = torch.nn.Sequential(
                torch.nn.Linear(n_scalars * n_layers, READOUT_WIDTH),
                torch.nn.SiLU(),
                torch.nn.Linear(READOUT_WIDTH, outputs),
            )
            self.log_width = torch.nn.Parameter(torch.tensor(np.log(EDGE_WIDTH_EV), dtype=torch.float32))
            self.offset = torch.nn.Parameter(torch.tensor(mean_gaps, dtype=torch.float32))

        def forward(self, batch):
            features = self.body(batch.to_dict(), training=self.training, compute_force=False)["node_feats"]
            # the invariant block of each layer (the last layer holds invariants only)
            scalars = [features[:, i * block * n_scalars : (i * block + 1) * n_scalars] for i in range(n_layers)]
            per_atom = self.readout(torch.cat(scalars, dim=-1))
            graph, n = batch.batch, int(batch.num_graphs)
            if pooling == "mean":
                return scatter(per_atom, graph, 0, dim_size=n, reduce="mean") + self.offset
            width = self.log_width.exp()
            counts = torch.bincount(graph, minlength=n).to(per_atom.dtype)[:, None]

            def smooth_max(values):  # equals the value when every atom has the same
                top = scatter(values, graph, 0, dim_size=n, reduce="max")
                total = scatter(((values - top[graph]) / width).exp(), graph, 0, dim_size=n, reduce="sum")
                return top + width * (total.log() - counts.log())

            valence, conduction = per_atom[:, 0::2], per_atom[:, 1::2]
            return -smooth_max(-conduction) - smooth_max(valence) + self.offset

    return GapNetwork()


def train_and_predict(
    store: Store, config, model_path: Path, extra: dict[str, float], predict_hashes: list[str], args
) -> np.ndarray:
    """Train the network (the pipeline's data + ``extra`` high-level gaps, eV); its high-level gaps of the hashes."""
    torch = import_torch()
    from mace import data as mace_data
    from mace.tools import torch_geometric
    from mace.tools.utils import AtomicNumberTable

    torch.manual_seed(args.seed)
    labels = training_labels(store, config)
    train, valid = labels["train"], labels["valid"]
    for h, gap in extra.items():
        train.setdefault(h, [np.nan, np.nan])[1] = gap
    body = load_safe_model(model_path).float()
    z_table = AtomicNumberTable([int(z) for z in body.atomic_numbers])
    atoms = store.load_structures(sorted(set(train) | set(valid) | set(predict_hashes)))
    graphs = {
        h: mace_data.AtomicData.from_config(mace_data.config_from_atoms(a), z_table=z_table, cutoff=float(body.r_max))
        for h, a in atoms.items()
    }
    network = build_network(torch, body, args.pooling, np.nanmean(np.array(list(train.values())), axis=0))
    optimiser = torch.optim.AdamW(
        [
            {"params": network.body.parameters(), "lr": BODY_LR},
            {"params": [*network.readout.parameters(), network.log_width, network.offset], "lr": READOUT_LR},
        ],
        weight_decay=1e-5,
    )
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimiser, args.epochs)

    def batches(hashes, gaps=None, shuffle=False):
        items = []
        for i, h in enumerate(hashes):
            item = copy.copy(graphs[h])  # the gap set on a copy: predictions collate without it
            if gaps is not None:
                item.gap = torch.tensor(gaps[i : i + 1], dtype=torch.float32)
            items.append(item)
        return torch_geometric.dataloader.DataLoader(items, batch_size=BATCH_SIZE, shuffle=shuffle)

    def predict(hashes):
        network.eval()
        with torch.no_grad():
            return np.concatenate([network(b).numpy() for b in batches(hashes)])

    train_hashes = list(train)
    loader = batches(train_hashes, np.array([train[h] for h in train_hashes]), shuffle=True)
    valid_hashes = [h for h in valid if not np.isnan(valid[h][1])]
    valid_gaps = np.array([valid[h][1] for h in valid_hashes])
    best_mae, best_state = np.inf, None
    for epoch in range(args.epochs):
        network.train()
        start = time.perf_counter()
        for batch in loader:
            optimiser.zero_grad()
            known = ~torch.isnan(batch.gap)
            loss = ((network(batch) - torch.nan_to_num(batch.gap)) ** 2 * known).sum() / known.sum()
            loss.backward()
            optimiser.step()
        schedule.step()
        mae = float(np.abs(predict(valid_hashes)[:, 1] - valid_gaps).mean())
        if mae < best_mae:
            best_mae, best_state = mae, copy.deepcopy(network.state_dict())
        print(
            f"  epoch {epoch + 1}/{args.epochs}: high-level validation MAE {mae:.3f} eV "
            f"({time.perf_counter() - start:.0f} s)",
            flush=True,
        )
    network.load_state_dict(best_state)
    print(f"  kept the epoch of validation MAE {best_mae:.3f} eV", flush=True)
    return predict(predict_hashes)[:, 1]


def main() -> None:
    """Train, predict the check frames, print the per-run biases."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--project", default=str(REPO / "data" / "checkpoints" / "ag3sbri-study"))
    parser.add_argument("--config", default=str(REPO / "data" / "configs" / "ag3sbri-study.toml"))
    parser.add_argument("--pooling", choices=("mean", "band-edges"), default="mean")
    parser.add_argument("--own-run-half", action="store_true", help="half of each run's check frames trained on")
    parser.add_argument("--epochs", type=int, default=80)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    import_torch().set_num_threads(1)
    config = load_config(args.config, project_dir=args.project).config
    store = Store(args.project)
    ensemble, frames = check_frames(store)
    model_id, model_path = latest_model(store)
    print(
        f"{len(frames)} check frames of {frames['md_id'].nunique()} runs (ensemble {ensemble}); MACE {model_id} "
        f"trained on the gaps ({args.pooling} readout, {args.epochs} epochs)"
    )
    hashes = frames["structure_hash"].tolist()
    if not args.own_run_half:
        predicted = train_and_predict(store, config, model_path, {}, hashes, args)
        name = f"end to end, {args.pooling} readout"
    else:
        half = frames.groupby("md_id").cumcount().to_numpy() % 2
        predicted = np.zeros(len(frames))
        for fold in (0, 1):
            mine = half == fold
            extra = dict(zip(frames.loc[~mine, "structure_hash"], frames.loc[~mine, "dft_gap_ev"], strict=True))
            wanted = frames.loc[mine, "structure_hash"].tolist()
            predicted[mine] = train_and_predict(store, config, model_path, extra, wanted, args)
        name = f"end to end, {args.pooling}, + half of every run's frames"
    biases = {
        "stored ensemble": summary("the stored ensemble", frames, frames["model_gap_ev"].to_numpy()),
        name: summary(name, frames, predicted),
    }
    print(f"it follows DFT frame by frame with {follows(frames, predicted)}")
    table = pd.DataFrame(biases).round(3)
    table.index = [f"x {x:g}, {t:g} K" for x, t in table.index]
    print(f"model - DFT per run (eV; within {TOLERANCE_EV} eV passes):")
    print(table.to_string())


if __name__ == "__main__":
    main()
