"""Band-gap GNN (PyTorch Geometric): architectures, training, metrics, saving and batched prediction.

The paper's best model: GraphConv(4->64) + BatchNorm + ReLU, GraphConv(64->64) + BatchNorm + ReLU, global
max pool, dropout 0.4, Linear(64->16) + ReLU, Linear(16->1) + sigmoid, on min-max normalised features and gap.
Distances enter GraphConv as edge weights. Variants (layers, pooling, output, width) are named architectures.

torch and PyG are imported inside the functions that need them.
"""

from __future__ import annotations

import json
import logging
import uuid
from collections.abc import Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any, Literal

import numpy as np
from ase import Atoms

from capml_core.config import GNNSection
from capml_core.errors import InvalidInputError, NotComputedError
from capml_core.evaluation import error_metrics, split_of
from capml_core.graphs import Normaliser, PeriodicGraph, build_graph, element_table
from capml_core.store import GNN_BASELINE_PREFIX as BASELINE_PREFIX
from capml_core.store import Store

logger = logging.getLogger(__name__)

#: Version of the saved-model format; a model file of another version is refused.
MODEL_FORMAT_VERSION = 1


@dataclass(frozen=True)
class Architecture:
    """A GNN architecture.

    Attributes
    ----------
    conv_layers
        GraphConv layers (each followed by BatchNorm and ReLU).
    hidden_channels
        Width of the graph layers.
    pooling
        Global pooling of node embeddings: max, mean or add.
    dropout
        Dropout before the dense head.
    head_channels
        Width of the hidden dense layer.
    output
        Output activation on the normalised gap: sigmoid (paper) or relu.
    """

    conv_layers: int = 2
    hidden_channels: int = 64
    pooling: Literal["max", "mean", "add"] = "max"
    dropout: float = 0.4
    head_channels: int = 16
    output: Literal["sigmoid", "relu"] = "sigmoid"


#: Named architectures: the paper's best and the variants it searched.
ARCHITECTURES: dict[str, Architecture] = {
    "paper": Architecture(),
    "three-layer": Architecture(conv_layers=3),
    "four-layer": Architecture(conv_layers=4),
    "mean-pool": Architecture(pooling="mean"),
    "relu-output": Architecture(output="relu"),
    "wide": Architecture(hidden_channels=128),
}


def build_model(architecture: Architecture, *, n_node_features: int = 4):  # noqa: ANN201 - torch imported lazily
    """The torch module of an architecture."""
    import torch
    from torch_geometric.nn import GraphConv, global_add_pool, global_max_pool, global_mean_pool

    pools = {"max": global_max_pool, "mean": global_mean_pool, "add": global_add_pool}

    class GapGNN(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            a = architecture
            sizes = [n_node_features] + [a.hidden_channels] * a.conv_layers
            self.convs = torch.nn.ModuleList(GraphConv(i, o) for i, o in zip(sizes[:-1], sizes[1:], strict=True))
            self.norms = torch.nn.ModuleList(torch.nn.BatchNorm1d(a.hidden_channels) for _ in range(a.conv_layers))
            self.pool = pools[a.pooling]
            self.dropout = torch.nn.Dropout(a.dropout)
            self.head = torch.nn.Linear(a.hidden_channels, a.head_channels)
            self.out = torch.nn.Linear(a.head_channels, 1)
            self.activation = torch.sigmoid if a.output == "sigmoid" else torch.relu

        def forward(self, data):  # noqa: ANN001, ANN202 - a PyG Batch -> (n_graphs,)
            x = data.x
            for conv, norm in zip(self.convs, self.norms, strict=True):
                x = torch.relu(norm(conv(x, data.edge_index, data.edge_weight)))
            x = self.dropout(self.pool(x, data.batch))
            return self.activation(self.out(torch.relu(self.head(x)))).squeeze(-1)

    return GapGNN()


def to_data(graph: PeriodicGraph, normaliser: Normaliser, gap_ev: float | None = None):  # noqa: ANN201
    """A PyG ``Data`` with normalised features (and target, when a gap is given)."""
    import torch
    from torch_geometric.data import Data

    data = Data(
        x=torch.as_tensor(normaliser.nodes(graph.node_features), dtype=torch.float32),
        edge_index=torch.as_tensor(graph.edge_index, dtype=torch.long),
        edge_weight=torch.as_tensor(normaliser.edges(graph.edge_distance_a), dtype=torch.float32),
    )
    if gap_ev is not None:
        data.y = torch.tensor([float(normaliser.gap_to_unit(gap_ev))], dtype=torch.float32)
    return data


@dataclass(frozen=True)
class Metrics:
    """Errors of predicted gaps (eV) against references."""

    n: int
    r2: float
    mae_ev: float
    rmse_ev: float
    max_error_ev: float


def compute_metrics(reference_ev: Sequence[float], predicted_ev: Sequence[float]) -> Metrics:
    """R², MAE, RMSE and maximum absolute error (eV)."""
    m = error_metrics(reference_ev, predicted_ev)
    return Metrics(n=m.n, r2=m.r2, mae_ev=m.mae, rmse_ev=m.rmse, max_error_ev=m.max_error)


@dataclass(frozen=True)
class TrainingSettings:
    """Optimiser settings of one training stage."""

    epochs: int = 300
    batch_size: int = 32
    learning_rate: float = 1e-3
    patience: int = 60
    seed: int = 0


def _read_state_dict(weights: Path, architecture: Architecture, module: Any) -> dict[str, Any]:
    """The tensors of a ``model.pt`` that fit ``module``; never unpickles anything but tensors.

    Raises
    ------
    InvalidInputError
        A truncated or foreign file, pickled objects other than tensors, or weights of another architecture.
    """
    import pickle
    import re
    import zipfile

    import torch

    try:
        state = torch.load(weights, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:  # torch's weights-only unpickler met a class or function, or garbage
        found = re.search(r"GLOBAL ([\w.]+)", str(err))
        if found is None:
            raise InvalidInputError(
                f"{weights}: not a readable capml GNN weights file (truncated or not a torch file)"
            ) from err
        what = f"pickled Python object {found.group(1)}"
        raise InvalidInputError(
            f"{weights}: holds {what}, not only tensors; refused (capml never runs code from a model file). "
            "A capml GNN weights file is the state_dict that capml gnn train writes"
        ) from err
    except (RuntimeError, EOFError, OSError, zipfile.BadZipFile, ValueError) as err:
        reason = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise InvalidInputError(
            f"{weights}: not a readable capml GNN weights file (truncated or not a torch file: {reason[:200]})"
        ) from err
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise InvalidInputError(f"{weights}: holds a {type(state).__name__}, not a state_dict of tensors")
    expected = module.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    misshapen = sorted(k for k in set(expected) & set(state) if tuple(state[k].shape) != tuple(expected[k].shape))
    if missing or unexpected or misshapen:
        problems = []
        for label, keys in (("missing", missing), ("unexpected", unexpected), ("of another shape", misshapen)):
            if keys:
                problems.append(f"{len(keys)} {label} ({', '.join(keys[:3])}{', ...' if len(keys) > 3 else ''})")
        raise InvalidInputError(
            f"{weights}: weights of another architecture than model.json's ({architecture}): "
            f"{'; '.join(problems)}; use the model.json written with these weights"
        )
    return state


@dataclass
class GapModel:
    """A trained model: architecture, weights, normalisation, element table version and its training record."""

    name: str
    architecture: Architecture
    normaliser: Normaliser
    cutoff_a: float
    module: Any
    history: dict[str, Any]

    def save(self, directory: str | Path) -> Path:
        """Write ``model.pt`` (state dict) and ``model.json`` (everything else) to ``directory``."""
        import torch

        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        torch.save(self.module.state_dict(), directory / "model.pt")
        meta = {
            "format_version": MODEL_FORMAT_VERSION,
            "name": self.name,
            "architecture": asdict(self.architecture),
            "normaliser": json.loads(self.normaliser.to_json()),
            "cutoff_a": self.cutoff_a,
            "history": self.history,
        }
        (directory / "model.json").write_text(json.dumps(meta, indent=2))
        return directory

    @classmethod
    def load(cls, directory: str | Path) -> GapModel:
        """Read a model saved by :meth:`save`.

        Raises
        ------
        InvalidInputError
            Missing files, another format version, or an element table other than this capml's.
        """
        directory = Path(directory)
        meta_file, weights = directory / "model.json", directory / "model.pt"
        if not meta_file.is_file() or not weights.is_file():
            raise InvalidInputError(f"{directory}: not a capml GNN model (need model.json and model.pt)")
        try:
            meta = json.loads(meta_file.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError) as err:
            raise InvalidInputError(f"{meta_file}: not a capml GNN model description (not valid JSON: {err})") from err
        if not isinstance(meta, dict):
            raise InvalidInputError(f"{meta_file}: not a capml GNN model description (a JSON object is expected)")
        if meta.get("format_version") != MODEL_FORMAT_VERSION:
            raise InvalidInputError(
                f"{meta_file}: model format version {meta.get('format_version')}, this capml reads "
                f"{MODEL_FORMAT_VERSION}; retrain the model"
            )
        try:
            normaliser = Normaliser.from_json(json.dumps(meta["normaliser"]))
            architecture = Architecture(**meta["architecture"])
            name, cutoff_a, history = str(meta["name"]), float(meta["cutoff_a"]), meta["history"]
        except (KeyError, TypeError, ValueError) as err:
            raise InvalidInputError(
                f"{meta_file}: not a capml GNN model description ({type(err).__name__}: {err}); it needs name, "
                "architecture, normaliser, cutoff_a and history as written by capml gnn train"
            ) from err
        if normaliser.element_table_version != element_table().version:
            raise InvalidInputError(
                f"{meta_file}: trained with element table {normaliser.element_table_version}, this capml has "
                f"{element_table().version}; retrain the model"
            )
        module = build_model(architecture)
        module.load_state_dict(_read_state_dict(weights, architecture, module))
        module.eval()
        return cls(name, architecture, normaliser, cutoff_a, module, history)

    def predict_graphs(self, graphs: Sequence[PeriodicGraph], *, batch_size: int = 8) -> np.ndarray:
        """Gaps (eV) of prebuilt graphs, ``batch_size`` graphs per forward pass."""
        return self.predict_data([to_data(g, self.normaliser) for g in graphs], batch_size=batch_size)

    def to(self, device: str) -> GapModel:
        """Move the model to a torch device ('cpu', 'cuda', 'cuda:1', or 'auto': CUDA when available)."""
        import torch

        if device == "auto":
            device = "cuda" if torch.cuda.is_available() else "cpu"
        self.module.to(torch.device(device))
        return self

    @property
    def device(self) -> Any:
        """The torch device the model's weights are on."""
        return next(self.module.parameters()).device

    def predict_data(self, data: Sequence[Any], *, batch_size: int = 8) -> np.ndarray:
        """Gaps (eV) of PyG ``Data`` already normalised with this model's node and edge constants."""
        import torch
        from torch_geometric.loader import DataLoader

        self.module.eval()
        device = self.device
        out = []
        with torch.no_grad():
            for batch in DataLoader(list(data), batch_size=batch_size, shuffle=False):
                out.append(self.module(batch.to(device)).cpu().numpy())
        return self.normaliser.gap_from_unit(np.concatenate(out)) if out else np.zeros(0)


def train(
    model: GapModel,
    train_graphs: Sequence[PeriodicGraph],
    train_gaps_ev: Sequence[float],
    valid_graphs: Sequence[PeriodicGraph],
    valid_gaps_ev: Sequence[float],
    settings: TrainingSettings,
    *,
    stage: str,
) -> GapModel:
    """Train (or fine-tune) ``model`` in place on one level's gaps; keeps the weights of the best validation loss.

    Parameters
    ----------
    model
        The model (its normaliser's gap range is the one the targets are scaled with).
    train_graphs, train_gaps_ev
        Training graphs and gaps (eV).
    valid_graphs, valid_gaps_ev
        Validation graphs and gaps (eV), for early stopping.
    settings
        Epochs, batch size, learning rate, patience, seed.
    stage
        Name recorded in the history, e.g. 'pbesol' or 'fine-tune'.
    """
    import copy

    import torch
    from torch_geometric.loader import DataLoader

    torch.manual_seed(settings.seed)
    generator = torch.Generator().manual_seed(settings.seed)
    train_data = [to_data(g, model.normaliser, y) for g, y in zip(train_graphs, train_gaps_ev, strict=True)]
    valid_data = [to_data(g, model.normaliser, y) for g, y in zip(valid_graphs, valid_gaps_ev, strict=True)]
    loader = DataLoader(
        train_data,
        batch_size=settings.batch_size,
        shuffle=True,
        drop_last=len(train_data) > settings.batch_size,
        generator=generator,
    )
    valid_loader = DataLoader(valid_data, batch_size=256)
    optimiser = torch.optim.Adam(model.module.parameters(), lr=settings.learning_rate)
    loss_fn = torch.nn.MSELoss()
    best, best_state, waited, curve = float("inf"), None, 0, []
    for epoch in range(settings.epochs):
        model.module.train()
        total = 0.0
        for batch in loader:
            optimiser.zero_grad()
            loss = loss_fn(model.module(batch), batch.y)
            loss.backward()
            optimiser.step()
            total += loss.item() * batch.num_graphs
        model.module.eval()
        with torch.no_grad():
            valid_loss = float(np.mean([loss_fn(model.module(b), b.y).item() for b in valid_loader]))
        curve.append((epoch, total / len(train_data), valid_loss))
        if valid_loss < best - 1e-7:
            best, best_state, waited = valid_loss, copy.deepcopy(model.module.state_dict()), 0
        else:
            waited += 1
            if waited >= settings.patience:
                break
    if best_state is not None:
        model.module.load_state_dict(best_state)
    model.module.eval()
    model.history.setdefault("stages", []).append(
        {
            "stage": stage,
            "settings": asdict(settings),
            "epochs_run": len(curve),
            "best_valid_loss": best,
            "curve": curve,
        }
    )
    logger.info("%s: %d epochs, best validation loss %.5f", stage, len(curve), best)
    return model


def new_model(
    name: str,
    architecture: Architecture,
    graphs: Sequence[PeriodicGraph],
    gaps_ev: Sequence[float],
    *,
    cutoff_a: float,
    seed: int = 0,
) -> GapModel:
    """An untrained model with normalisation fitted on the training graphs and gaps."""
    import torch

    torch.manual_seed(seed)
    normaliser = Normaliser.fit(graphs, gaps_ev, table_version=element_table().version)
    return GapModel(name, architecture, normaliser, cutoff_a, build_model(architecture), {"seed": seed})


def refit_gap_range(model: GapModel, gaps_ev: Sequence[float]) -> GapModel:
    """The same model with its gap scaling refitted (before fine-tuning on another level's gaps)."""
    gaps = np.asarray(gaps_ev, dtype=float)
    model.normaliser = replace(model.normaliser, gap_min_ev=float(gaps.min()), gap_max_ev=float(gaps.max()))
    return model


def predict_gaps(
    structures: Sequence[Atoms], models: Sequence[GapModel], *, batch_size: int = 8
) -> tuple[np.ndarray, np.ndarray]:
    """Ensemble band gaps (eV) of structures: mean and standard deviation over the models.

    Graphs are built once (all models of an ensemble share cutoff and element table) and evaluated
    ``batch_size`` per forward pass, on each model's device (see :meth:`GapModel.to`). On one CPU core
    batches of about 16 were fastest here; on a GPU larger batches win.
    """
    stacked = predict_gaps_per_model(structures, models, batch_size=batch_size)
    return stacked.mean(axis=0), stacked.std(axis=0)


def predict_gaps_per_model(
    structures: Sequence[Atoms], models: Sequence[GapModel], *, batch_size: int = 8
) -> np.ndarray:
    """Band gaps (eV) of structures from each model of an ensemble: array (n_models, n_structures)."""
    if not models:
        raise InvalidInputError("predict_gaps needs at least one model")
    cutoffs = {m.cutoff_a for m in models}
    if len(cutoffs) != 1:
        raise InvalidInputError(f"the ensemble's models use different cutoffs {sorted(cutoffs)}")
    cutoff = cutoffs.pop()
    graphs = [build_graph(a, cutoff_a=cutoff) for a in structures]
    inputs: dict[tuple, list[Any]] = {}  # normalised inputs, shared by models with the same feature scaling
    predictions = []
    for model in models:
        n = model.normaliser
        key = (n.node_min, n.node_max, n.edge_min_a, n.edge_max_a)
        if key not in inputs:
            inputs[key] = [to_data(g, n) for g in graphs]
        predictions.append(model.predict_data(inputs[key], batch_size=batch_size))
    return np.array(predictions)


Splits = dict[str, tuple[list[str], list[PeriodicGraph], np.ndarray]]


def level_splits(store: Store, level: str, gnn: GNNSection) -> Splits:
    """Structures with a gap at ``level`` as graphs, split into train/valid/test by structure hash.

    Raises
    ------
    NotComputedError
        Fewer than 10 labelled gaps.
    """
    frame = store.labelled_gaps(level)
    if len(frame) < 10:
        raise NotComputedError(f"only {len(frame)} structures with a {level} gap: label more before training")
    atoms = store.load_structures(frame["structure_hash"].tolist())
    hashes = frame["structure_hash"].tolist()
    gaps = frame["gap_ev"].to_numpy()
    splits = [
        split_of(h, seed=gnn.split_seed, valid_fraction=gnn.valid_fraction, test_fraction=gnn.test_fraction)
        for h in hashes
    ]
    if "valid" not in splits and splits.count("train") > 1:  # a small level: early stopping needs a validation set
        moved = len(splits) - 1 - splits[::-1].index("train")
        splits[moved] = "valid"
        logger.warning(
            "%s: no structure fell in the validation split; %s moved there from training", level, hashes[moved]
        )
    out: Splits = {}
    for name in ("train", "valid", "test"):
        rows = [i for i, s in enumerate(splits) if s == name]
        out[name] = (
            [hashes[i] for i in rows],
            [build_graph(atoms[hashes[i]], cutoff_a=gnn.cutoff_a) for i in rows],
            gaps[rows],
        )
    return out


@dataclass(frozen=True)
class Trial:
    """One hyperparameter setting tried on the validation split."""

    architecture: str
    learning_rate: float
    batch_size: int
    valid: Metrics
    epochs_run: int


def search_hyperparameters(
    store: Store, gnn: GNNSection, *, level: str, seed: int = 0, search_id: str | None = None
) -> tuple[str, list[Trial]]:
    """Train every (architecture, learning rate, batch size) of the config's search on ``level``.

    Selection uses the validation split only (the test split stays unseen); every trial is recorded in
    ``gnn_trials`` with its rank. Returns the search id and the trials, best (lowest validation MAE) first.
    A ``search_id`` already in the store (a content key, :func:`gnn_stage_key`) returns its stored trials.
    """
    import itertools

    if search_id is not None:
        stored = store.query("SELECT * FROM gnn_trials WHERE search_id = ? ORDER BY rank", [search_id])
        if not stored.empty:
            logger.info("GNN search %s already done: %d trials reused", search_id, len(stored))
            return search_id, [
                Trial(
                    str(r.architecture),
                    float(r.learning_rate),
                    int(r.batch_size),
                    # gnn_trials keeps MAE and RMSE of the validation split only
                    Metrics(0, float("nan"), float(r.valid_mae_ev), float(r.valid_rmse_ev), float("nan")),
                    int(r.epochs_run),
                )
                for r in stored.itertuples()
            ]
    data = level_splits(store, level, gnn)
    _, train_graphs, train_gaps = data["train"]
    _, valid_graphs, valid_gaps = data["valid"]
    trials = []
    grid = itertools.product(gnn.search_architectures, gnn.search_learning_rates, gnn.search_batch_sizes)
    for name, learning_rate, batch_size in grid:
        model = new_model(name, ARCHITECTURES[name], train_graphs, train_gaps, cutoff_a=gnn.cutoff_a, seed=seed)
        settings = TrainingSettings(gnn.epochs, batch_size, learning_rate, gnn.patience, seed)
        train(model, train_graphs, train_gaps, valid_graphs, valid_gaps, settings, stage="search")
        valid = compute_metrics(valid_gaps, model.predict_graphs(valid_graphs))
        trials.append(Trial(name, learning_rate, batch_size, valid, model.history["stages"][-1]["epochs_run"]))
        logger.info("search %s lr %g batch %d: validation MAE %.4f eV", name, learning_rate, batch_size, valid.mae_ev)
    trials.sort(key=lambda t: t.valid.mae_ev)
    search_id = search_id or f"search-{uuid.uuid4().hex[:10]}"
    with store.write() as writer:
        writer.add_rows(
            "gnn_trials",
            [
                {
                    "search_id": search_id,
                    "trial": i,
                    "architecture": t.architecture,
                    "learning_rate": t.learning_rate,
                    "batch_size": t.batch_size,
                    "level": level,
                    "valid_mae_ev": t.valid.mae_ev,
                    "valid_rmse_ev": t.valid.rmse_ev,
                    "epochs_run": t.epochs_run,
                    "rank": i + 1,
                }
                for i, t in enumerate(trials)
            ],
        )
    return search_id, trials


def learning_curve(
    store: Store, gnn: GNNSection, *, level: str, architecture: str, seed: int = 0, curve_id: str | None = None
) -> tuple[str, list[tuple[int, Metrics]]]:
    """Test metrics of models trained on growing fractions of the training split (what more data buys).

    Recorded in ``gnn_learning_curve``; returns the curve id and (training-set size, test metrics) pairs.
    A ``curve_id`` already in the store (a content key) returns the stored curve.
    """
    if curve_id is not None:
        stored = store.query("SELECT * FROM gnn_learning_curve WHERE curve_id = ? ORDER BY n_train", [curve_id])
        if not stored.empty:
            return curve_id, [
                (
                    int(r.n_train),
                    Metrics(0, float(r.test_r2), float(r.test_mae_ev), float(r.test_rmse_ev), float("nan")),
                )
                for r in stored.itertuples()
            ]
    data = level_splits(store, level, gnn)
    _, train_graphs, train_gaps = data["train"]
    _, valid_graphs, valid_gaps = data["valid"]
    _, test_graphs, test_gaps = data["test"]
    order = np.random.default_rng(seed).permutation(len(train_graphs))
    points = []
    for fraction in sorted(set(gnn.learning_curve_fractions)):
        chosen = order[: max(4, int(round(fraction * len(order))))]
        graphs, gaps = [train_graphs[i] for i in chosen], train_gaps[chosen]
        model = new_model(architecture, ARCHITECTURES[architecture], graphs, gaps, cutoff_a=gnn.cutoff_a, seed=seed)
        settings = TrainingSettings(gnn.epochs, gnn.batch_size, gnn.learning_rate, gnn.patience, seed)
        train(model, graphs, gaps, valid_graphs, valid_gaps, settings, stage=f"curve {len(chosen)}")
        points.append((len(chosen), compute_metrics(test_gaps, model.predict_graphs(test_graphs))))
    curve_id = curve_id or f"curve-{uuid.uuid4().hex[:10]}"
    with store.write() as writer:
        writer.add_rows(
            "gnn_learning_curve",
            [
                {
                    "curve_id": curve_id,
                    "level": level,
                    "architecture": architecture,
                    "n_train": n,
                    "test_mae_ev": m.mae_ev,
                    "test_rmse_ev": m.rmse_ev,
                    "test_r2": m.r2,
                }
                for n, m in points
            ],
        )
    return curve_id, points


@dataclass(frozen=True)
class TwoStageResult:
    """Models of a two-stage training and their test metrics (per stage: 'cheap' and, if any, 'high')."""

    ensemble_id: str
    model_ids: list[str]
    test_metrics: dict[str, Metrics]
    ensemble_test_metrics: dict[str, Metrics]


def train_two_stage(
    store: Store,
    gnn: GNNSection,
    *,
    cheap_level: str,
    high_level: str | None,
    run_id: str | None = None,
    seed: int = 0,
    architecture_name: str | None = None,
    learning_rate: float | None = None,
    batch_size: int | None = None,
    ensemble_id: str | None = None,
) -> TwoStageResult:
    """Train an ensemble on ``cheap_level`` gaps, fine-tune each member on ``high_level`` gaps, store everything.

    ``architecture_name``, ``learning_rate`` and ``batch_size`` override the config's (e.g. with the best
    trial of a search).

    Splits are by structure (:func:`split_of`, seeded with ``gnn.split_seed``): the test split is used only to
    report metrics. Each model is saved under ``artifacts/gnn/<model_id>/`` and recorded in ``gnn_models``
    with its metrics per stage and split (``gnn_metrics``) and every prediction (``gnn_predictions``).
    With an ``ensemble_id`` (a content key, :func:`gnn_stage_key`) the member ids follow from it and members
    already stored are reused, not retrained: an interrupted ensemble resumes at the next member.

    Raises
    ------
    NotComputedError
        Too few labelled gaps at a level to split (fewer than 10).
    """
    name = architecture_name or gnn.architecture
    architecture = ARCHITECTURES[name]
    gnn = gnn.model_copy(
        update={
            "architecture": name,
            "learning_rate": learning_rate or gnn.learning_rate,
            "batch_size": batch_size or gnn.batch_size,
        }
    )
    stages: list[tuple[str, str]] = [("cheap", cheap_level)] + ([("high", high_level)] if high_level else [])
    data = {stage: level_splits(store, level, gnn) for stage, level in stages}
    model_ids, test_predictions, tests = [], {s: [] for s, _ in stages}, {}
    keyed = ensemble_id is not None
    ensemble_id = ensemble_id or f"ensemble-{uuid.uuid4().hex[:10]}"
    for member in range(gnn.ensemble_size):
        member_seed = seed * 1000 + member
        if keyed:
            suffix = ensemble_id.removeprefix("ensemble-")
            model_id = f"gnn-{gnn.architecture}-{suffix}-{member}"
            if _reuse_member(store, model_id, data, test_predictions, tests, first=member == 0):
                logger.info("GNN member %s already trained: reused", model_id)
                model_ids.append(model_id)
                continue
        else:
            model_id = f"gnn-{gnn.architecture}-{uuid.uuid4().hex[:10]}"
        _, train_graphs, train_gaps = data["cheap"]["train"]
        model = new_model(
            gnn.architecture, architecture, train_graphs, train_gaps, cutoff_a=gnn.cutoff_a, seed=member_seed
        )
        metrics_rows, prediction_rows = [], []
        for stage, level in stages:
            _, train_graphs, train_gaps = data[stage]["train"]
            _, valid_graphs, valid_gaps = data[stage]["valid"]
            if stage == "cheap":
                settings = TrainingSettings(gnn.epochs, gnn.batch_size, gnn.learning_rate, gnn.patience, member_seed)
            else:
                refit_gap_range(model, train_gaps)
                settings = TrainingSettings(
                    gnn.fine_tune_epochs, gnn.batch_size, gnn.fine_tune_learning_rate, gnn.patience, member_seed
                )
            train(model, train_graphs, train_gaps, valid_graphs, valid_gaps, settings, stage=stage)
            for split, (hashes, graphs, gaps) in data[stage].items():
                if not hashes:
                    continue
                predicted = model.predict_graphs(graphs)
                m = compute_metrics(gaps, predicted)
                metrics_rows.append({"model_id": model_id, "stage": stage, "split": split, **asdict(m)})
                prediction_rows += [
                    {
                        "model_id": model_id,
                        "stage": stage,
                        "structure_hash": h,
                        "level": level,
                        "split": split,
                        "reference_ev": float(y),
                        "predicted_ev": float(p),
                    }
                    for h, y, p in zip(hashes, gaps, predicted, strict=True)
                ]
                if split == "test":
                    test_predictions[stage].append(predicted)
                    tests[stage] = (gaps, m) if member == 0 else tests[stage]
        relpath = Path("artifacts") / "gnn" / model_id
        model.save(store.project_dir / relpath)
        with store.write() as writer:
            writer.add_gnn_model(
                {
                    "model_id": model_id,
                    "ensemble_id": ensemble_id,
                    "run_id": run_id,
                    "architecture": gnn.architecture,
                    "cheap_level": cheap_level,
                    "high_level": high_level,
                    "ensemble_index": member,
                    "seed": member_seed,
                    "relpath": relpath.as_posix(),
                    "settings_json": gnn.model_dump_json(),
                },
                metrics_rows,
                prediction_rows,
            )
        model_ids.append(model_id)
    ensemble = {stage: compute_metrics(tests[stage][0], np.mean(test_predictions[stage], axis=0)) for stage in tests}
    return TwoStageResult(ensemble_id, model_ids, {s: tests[s][1] for s in tests}, ensemble)


def _reuse_member(
    store: Store, model_id: str, data: dict[str, Splits], test_predictions: dict, tests: dict, *, first: bool
) -> bool:
    """Put a stored member's test predictions where a freshly trained one's go; False if it is not stored."""
    if store.query("SELECT 1 FROM gnn_models WHERE model_id = ?", [model_id]).empty:
        return False
    for stage, splits in data.items():
        hashes, _, gaps = splits["test"]
        if not hashes:
            continue
        rows = store.query(
            """SELECT structure_hash, predicted_ev FROM gnn_predictions
               WHERE model_id = ? AND stage = ? AND split = 'test'""",
            [model_id, stage],
        )
        predicted_by_hash = dict(zip(rows["structure_hash"], rows["predicted_ev"], strict=True))
        predicted = np.array([predicted_by_hash[h] for h in hashes])
        test_predictions[stage].append(predicted)
        if first:
            tests[stage] = (gaps, compute_metrics(gaps, predicted))
    return True


def gnn_stage_key(store: Store, gnn: GNNSection, *, cheap_level: str, high_level: str | None, seed: int) -> str:
    """Content key of the gnn stage: its settings, levels and seed, and every gap it trains and tests on.

    The same key means the same search, ensemble and learning curve, so a re-run reuses them; a new label,
    a changed gap or a changed setting gives a new key (12 hex digits of a SHA-256).
    """
    from capml_core.provenance import content_key

    payload: dict[str, Any] = {
        "gnn": gnn.model_dump(mode="json"),
        "levels": [cheap_level, high_level],
        "seed": seed,
        "table": element_table().version,
    }
    for level in filter(None, (cheap_level, high_level)):
        frame = store.labelled_gaps(level).sort_values("structure_hash")
        payload[level] = [
            [h, round(float(g), 8)] for h, g in zip(frame["structure_hash"], frame["gap_ev"], strict=True)
        ]
    return content_key(payload)


#: SQL condition on ``gnn_models`` rows: models of the project's ensembles, baselines excluded.
_NOT_BASELINE = f"NOT starts_with(ensemble_id, '{BASELINE_PREFIX}')"


def latest_ensemble(store: Store) -> tuple[str, str]:
    """The newest trained ensemble: (ensemble id, the level its gaps are at: high level if fine-tuned).

    Baseline ensembles (``gnn.baseline_architecture``) are comparisons, never the model later stages use.
    """
    rows = store.query(
        f"""SELECT ensemble_id, coalesce(high_level, cheap_level) AS level FROM gnn_models WHERE {_NOT_BASELINE}
           ORDER BY created_at DESC LIMIT 1"""
    )
    if rows.empty:
        raise NotComputedError(f"{store.path}: no trained GNN yet (capml gnn train)")
    return str(rows["ensemble_id"][0]), str(rows["level"][0])


def load_ensemble_by_id(store: Store, ensemble_id: str) -> list[GapModel]:
    """The models of one ensemble, in ensemble order."""
    rows = store.query("SELECT relpath FROM gnn_models WHERE ensemble_id = ? ORDER BY ensemble_index", [ensemble_id])
    if rows.empty:
        raise NotComputedError(f"{store.path}: no GNN ensemble {ensemble_id}")
    return [GapModel.load(store.project_dir / p) for p in rows["relpath"]]


def load_ensemble(store: Store, model_ids: Sequence[str] | None = None) -> list[GapModel]:
    """The models of the latest trained ensemble (or the given ids) from a store."""
    if model_ids is None:
        rows = store.query(
            f"""SELECT relpath FROM gnn_models WHERE ensemble_id =
                 (SELECT ensemble_id FROM gnn_models WHERE {_NOT_BASELINE} ORDER BY created_at DESC LIMIT 1)
               ORDER BY ensemble_index"""
        )
        if rows.empty:
            raise NotComputedError(f"{store.path}: no trained GNN yet (capml gnn train)")
    else:
        rows = store.query("SELECT relpath FROM gnn_models WHERE model_id IN (SELECT unnest(?))", [list(model_ids)])
    return [GapModel.load(store.project_dir / p) for p in rows["relpath"]]


@dataclass(frozen=True)
class GNNStageResult:
    """The gnn stage: optional search (best first), the two-stage ensemble, optional learning curve and baseline."""

    search: list[Trial]
    ensemble: TwoStageResult
    curve: list[tuple[int, Metrics]]
    baseline: TwoStageResult | None = None


def fit_band_gap_model(
    store: Store,
    gnn: GNNSection,
    *,
    cheap_level: str,
    high_level: str | None,
    run_id: str | None = None,
    seed: int = 0,
) -> GNNStageResult:
    """Search (if ``gnn.search_architectures``), train and fine-tune the ensemble, then the learning curve.

    With a search and ``gnn.baseline_architecture``, that architecture (with the config's learning rate and
    batch size) is trained as a second ensemble ``baseline-<key>`` on the same splits with the same seeds, first,
    so the newest ensemble stays the search's best; it is skipped when the search's best is that setting.

    Content-keyed (:func:`gnn_stage_key`): the search, ensemble and curve ids derive from the settings and the
    gaps, so a re-run on unchanged data reuses them (nothing retrained) and an interrupted run resumes at the
    next ensemble member.
    """
    key = gnn_stage_key(store, gnn, cheap_level=cheap_level, high_level=high_level, seed=seed)
    trials: list[Trial] = []
    overrides: dict[str, Any] = {}
    if gnn.search_architectures:
        _, trials = search_hyperparameters(store, gnn, level=cheap_level, seed=seed, search_id=f"search-{key}")
        best = trials[0]
        overrides = {
            "architecture_name": best.architecture,
            "learning_rate": best.learning_rate,
            "batch_size": best.batch_size,
        }
    baseline = None
    name = gnn.baseline_architecture
    if trials and name is not None:
        best = trials[0]
        if (best.architecture, best.learning_rate, best.batch_size) == (name, gnn.learning_rate, gnn.batch_size):
            logger.info("GNN baseline %s is the search's best: no separate baseline", name)
        else:
            baseline = train_two_stage(
                store,
                gnn,
                cheap_level=cheap_level,
                high_level=high_level,
                run_id=run_id,
                seed=seed,
                architecture_name=name,
                ensemble_id=f"{BASELINE_PREFIX}{key}",
            )
    ensemble = train_two_stage(
        store,
        gnn,
        cheap_level=cheap_level,
        high_level=high_level,
        run_id=run_id,
        seed=seed,
        ensemble_id=f"ensemble-{key}",
        **overrides,
    )
    curve: list[tuple[int, Metrics]] = []
    if gnn.learning_curve_fractions:
        best = {k: overrides[k] for k in ("learning_rate", "batch_size") if k in overrides}
        _, curve = learning_curve(
            store,
            gnn.model_copy(update=best),
            level=cheap_level,
            architecture=overrides.get("architecture_name", gnn.architecture),
            seed=seed,
            curve_id=f"curve-{key}",
        )
    return GNNStageResult(trials, ensemble, curve, baseline)
