"""Band-gap GNN (PyTorch Geometric): architectures, training, metrics, saving and batched prediction.

The paper's best model: GraphConv(4->64) + BatchNorm + ReLU, GraphConv(64->64) + BatchNorm + ReLU, global
max pool, dropout 0.4, Linear(64->16) + ReLU, Linear(16->1) + sigmoid, on min-max normalised features and gap.
Distances enter GraphConv as edge weights. Variants (layers, pooling, output, width) are named architectures.

torch and PyG are imported inside the functions that need them.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any, Literal

import numpy as np
from ase import Atoms

from capml_core.errors import InvalidInputError
from capml_core.models.gap_head import KernelGapModel, is_kernel_model_dir
from capml_core.models.graphs import Normaliser, PeriodicGraph, build_graph, element_table
from capml_core.models.metrics import error_metrics

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


#: Subdirectory of a fine-tuned model's directory holding the model as it was after the cheap-level stage.
CHEAP_STAGE_DIRNAME = "cheap"


def build_model(architecture: Architecture, *, n_node_features: int = 4):  # torch imported lazily
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

        def forward(self, data):  # a PyG Batch -> (n_graphs,)
            x = data.x
            for conv, norm in zip(self.convs, self.norms, strict=True):
                x = torch.relu(norm(conv(x, data.edge_index, data.edge_weight)))
            x = self.dropout(self.pool(x, data.batch))
            return self.activation(self.out(torch.relu(self.head(x)))).squeeze(-1)

    return GapGNN()


def to_data(graph: PeriodicGraph, normaliser: Normaliser, gap_ev: float | None = None):
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


def load_ensemble(directories: Sequence[str | Path]) -> list[GapModel | KernelGapModel]:
    """An ensemble of gap models from their directories: GNNs or kernel heads on MACE descriptors.

    A GNN's directory holds ``model.json`` + ``model.pt``, a kernel head's ``kernel.json``
    (:class:`capml_core.models.gap_head.KernelGapModel`).

    A project's are under ``<project>/artifacts/gnn/``, listed by ``capml_core.store.queries.ensemble_model_dirs``.
    """
    return [KernelGapModel.load(d) if is_kernel_model_dir(d) else GapModel.load(Path(d)) for d in directories]


def is_gap_model_dir(directory: str | Path) -> bool:
    """True if ``directory`` holds a gap model of either kind."""
    return (Path(directory) / "model.json").is_file() or is_kernel_model_dir(directory)


def predict_gaps(
    structures: Sequence[Atoms], models: Sequence[GapModel | KernelGapModel], *, batch_size: int = 8
) -> tuple[np.ndarray, np.ndarray]:
    """Ensemble band gaps (eV) of structures: mean and standard deviation over the models.

    Graphs are built once (all models of an ensemble share cutoff and element table) and evaluated
    ``batch_size`` per forward pass, on each model's device (see :meth:`GapModel.to`). On one CPU core
    batches of about 16 were fastest here; on a GPU larger batches win.
    """
    stacked = predict_gaps_per_model(structures, models, batch_size=batch_size)
    return stacked.mean(axis=0), stacked.std(axis=0)


def predict_gaps_per_model(
    structures: Sequence[Atoms], models: Sequence[GapModel | KernelGapModel], *, batch_size: int = 8
) -> np.ndarray:
    """Band gaps (eV) of structures from each model of an ensemble: array (n_models, n_structures).

    GNN members share one set of graphs, kernel members of one MACE model one set of descriptors.
    """
    if not models:
        raise InvalidInputError("predict_gaps needs at least one model")
    gnns = [m for m in models if isinstance(m, GapModel)]
    cutoffs = {m.cutoff_a for m in gnns}
    if len(cutoffs) > 1:
        raise InvalidInputError(f"the ensemble's models use different cutoffs {sorted(cutoffs)}")
    cutoff = cutoffs.pop() if cutoffs else None
    graphs = [build_graph(a, cutoff_a=cutoff) for a in structures] if gnns else []
    inputs: dict[tuple, Any] = {}  # normalised graphs per feature scaling; descriptors per MACE model
    predictions = []
    for model in models:
        if isinstance(model, KernelGapModel):
            key = ("kernel", model.mace_sha256, model.species)
            if key not in inputs:
                inputs[key] = model.descriptors(structures)
            predictions.append(model.predict_descriptors(inputs[key]))
            continue
        n = model.normaliser
        key = (n.node_min, n.node_max, n.edge_min_a, n.edge_max_a)
        if key not in inputs:
            inputs[key] = [to_data(g, n) for g in graphs]
        predictions.append(model.predict_data(inputs[key], batch_size=batch_size))
    return np.array(predictions)


Splits = dict[str, tuple[list[str], list[PeriodicGraph], np.ndarray]]
