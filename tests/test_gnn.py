"""Band-gap GNN: architectures, deterministic splits, training that learns, save/load, ensemble prediction."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from ase.io import read

from capml_core.errors import InvalidInputError
from capml_core.gnn import (
    ARCHITECTURES,
    GapModel,
    TrainingSettings,
    build_model,
    compute_metrics,
    new_model,
    predict_gaps,
    split_of,
    to_data,
    train,
)
from capml_core.graphs import build_graph
from tests.conftest import PBESOL_FILE


@pytest.fixture(scope="module")
def pbesol():
    frames = read(PBESOL_FILE, index=":")
    return frames, [build_graph(a) for a in frames], np.array([f.info["pbesol_gap"] for f in frames])


def test_paper_architecture_shapes_and_parameter_count() -> None:
    import torch

    model = build_model(ARCHITECTURES["paper"])
    n = sum(p.numel() for p in model.parameters())
    # GraphConv(4->64): 2x(4x64)+64; GraphConv(64->64): 2x(64x64)+64; 2 BatchNorm(64): 4x64; 64->16; 16->1
    assert n == (2 * 4 * 64 + 64) + (2 * 64 * 64 + 64) + 2 * 2 * 64 + (64 * 16 + 16) + (16 + 1)
    assert isinstance(model.convs[0], torch.nn.Module) and len(model.convs) == 2
    assert len(build_model(ARCHITECTURES["four-layer"]).convs) == 4


def test_splits_are_deterministic_by_structure_and_roughly_sized() -> None:
    hashes = [f"{i:020x}" for i in range(4000)]
    splits = [split_of(h, seed=1, valid_fraction=0.1, test_fraction=0.1) for h in hashes]
    assert splits == [split_of(h, seed=1, valid_fraction=0.1, test_fraction=0.1) for h in hashes]
    assert 0.08 < splits.count("test") / 4000 < 0.12 and 0.08 < splits.count("valid") / 4000 < 0.12
    other = [split_of(h, seed=2, valid_fraction=0.1, test_fraction=0.1) for h in hashes]
    assert other != splits


def test_metrics() -> None:
    m = compute_metrics([1.0, 2.0, 3.0], [1.1, 1.9, 3.3])
    assert m.mae_ev == pytest.approx(0.5 / 3) and m.max_error_ev == pytest.approx(0.3)
    assert m.rmse_ev == pytest.approx(np.sqrt((0.01 + 0.01 + 0.09) / 3)) and m.r2 == pytest.approx(1 - 0.11 / 2)


def test_training_learns_the_pbesol_gaps_and_round_trips(pbesol, tmp_path: Path) -> None:
    frames, graphs, gaps = pbesol
    train_idx, valid_idx = np.arange(0, 80), np.arange(80, 103)
    model = new_model(
        "paper", ARCHITECTURES["paper"], [graphs[i] for i in train_idx], gaps[train_idx], cutoff_a=5.5, seed=0
    )
    baseline = compute_metrics(gaps[valid_idx], np.full(len(valid_idx), gaps[train_idx].mean()))
    train(
        model,
        [graphs[i] for i in train_idx],
        gaps[train_idx],
        [graphs[i] for i in valid_idx],
        gaps[valid_idx],
        TrainingSettings(epochs=120, batch_size=16, learning_rate=3e-3, patience=40),
        stage="pbesol",
    )
    predicted = model.predict_graphs([graphs[i] for i in valid_idx])
    metrics = compute_metrics(gaps[valid_idx], predicted)
    assert metrics.mae_ev < 0.75 * baseline.mae_ev  # it learns the gap's dependence on structure
    assert 0.3 < predicted.min() and predicted.max() < 1.2  # within the sigmoid's gap range (eV)
    model.save(tmp_path / "m")
    back = GapModel.load(tmp_path / "m")
    assert np.allclose(back.predict_graphs([graphs[i] for i in valid_idx]), predicted, atol=1e-6)
    # batching does not change predictions (BatchNorm in eval mode)
    assert np.allclose(back.predict_graphs([graphs[i] for i in valid_idx], batch_size=1), predicted, atol=1e-5)
    mean, spread = predict_gaps([frames[i] for i in valid_idx], [model, back])
    assert np.allclose(mean, predicted, atol=1e-5) and np.allclose(spread, 0.0, atol=1e-5)
    assert model.history["stages"][0]["stage"] == "pbesol"


def test_a_model_of_another_version_is_refused(pbesol, tmp_path: Path) -> None:
    _, graphs, gaps = pbesol
    model = new_model("paper", ARCHITECTURES["paper"], graphs[:10], gaps[:10], cutoff_a=5.5)
    model.save(tmp_path / "m")
    meta = json.loads((tmp_path / "m" / "model.json").read_text())
    (tmp_path / "m" / "model.json").write_text(json.dumps({**meta, "format_version": 99}))
    with pytest.raises(InvalidInputError, match="model format version 99"):
        GapModel.load(tmp_path / "m")
    meta["normaliser"]["element_table_version"] = "0/other"
    (tmp_path / "m" / "model.json").write_text(json.dumps(meta))
    with pytest.raises(InvalidInputError, match="trained with element table 0/other"):
        GapModel.load(tmp_path / "m")
    with pytest.raises(InvalidInputError, match="not a capml GNN model"):
        GapModel.load(tmp_path / "nothing")


def test_targets_are_normalised_with_the_model(pbesol) -> None:
    _, graphs, gaps = pbesol
    model = new_model("paper", ARCHITECTURES["paper"], graphs, gaps, cutoff_a=5.5)
    data = to_data(graphs[0], model.normaliser, gaps[0])
    assert 0.0 <= float(data.y) <= 1.0
    assert data.x.shape == (40, 4) and data.edge_weight.shape[0] == data.edge_index.shape[1]
