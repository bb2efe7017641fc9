"""Band-gap GNN: architectures, deterministic splits, training that learns, save/load, ensemble prediction."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from ase.io import read

from capml_core.errors import InvalidInputError
from capml_core.models.gnn import (
    ARCHITECTURES,
    GapModel,
    TrainingSettings,
    build_model,
    compute_metrics,
    new_model,
    predict_gaps,
    to_data,
    train,
)
from capml_core.models.graphs import build_graph
from capml_core.models.metrics import split_of
from capml_core.store.queries import latest_ensemble
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


def test_gnn_train_and_predict_commands(demo_store_copy: Path, tmp_path: Path) -> None:
    """Two-stage training on the bundled labels (PBEsol, then GLLB-SC), results in the store, CLI prediction."""
    from ase.io import write
    from typer.testing import CliRunner

    from capml_core.store.database import Store
    from flows.cli import app
    from tests.conftest import DEMO_CONFIG, GLLBSC_FILE, REPO

    config = tmp_path / "c.toml"
    text = DEMO_CONFIG.read_text().replace('"../', f'"{REPO}/data/')
    assert "ensemble_size = 3 " in text, "the demo config's ensemble size changed: update this test"
    text = text.replace("ensemble_size = 3 ", "ensemble_size = 1 ").replace("epochs = 150", "epochs = 80")
    config.write_text(text)
    runner = CliRunner()
    no_mace = runner.invoke(app, ["gnn", "train", "-c", str(config), "-p", str(demo_store_copy)])
    assert no_mace.exit_code != 0 and "no MACE model is trained yet: run capml mlip train first" in no_mace.output
    config.write_text(text.replace(', "mace-kernel"]', "]"))  # the demo searches a kernel head on MACE too
    result = runner.invoke(app, ["gnn", "train", "-c", str(config), "-p", str(demo_store_copy)])
    assert result.exit_code == 0, result.output
    assert "GNN test split" in result.output and "cheap level" in result.output and "high level" in result.output
    store = Store(demo_store_copy)
    metrics = store.query("SELECT stage, split, n, mae_ev FROM gnn_metrics ORDER BY stage, split")
    assert metrics["n"].sum() == 103 + 48  # every labelled structure is predicted once, in one split
    high_test = metrics[(metrics["stage"] == "high") & (metrics["split"] == "test")]["mae_ev"].iloc[0]
    assert high_test < 0.25  # GLLB-SC gaps span 1.3-2.1 eV
    parity = store.query("SELECT level, reference_ev, predicted_ev FROM gnn_predictions WHERE stage = 'high'")
    assert set(parity["level"]) == {"gpaw-gllbsc"} and len(parity) == 48
    frames = read(GLLBSC_FILE, index=":3")
    write(tmp_path / "three.extxyz", frames)
    predicted = runner.invoke(app, ["gnn", "predict", str(tmp_path / "three.extxyz"), "-p", str(demo_store_copy)])
    lines = predicted.output.strip().splitlines()
    assert lines[0] == "frame,formula,gap_ev,gap_std_ev" and len(lines) == 4
    gaps = [float(line.split(",")[2]) for line in lines[1:]]
    assert all(1.0 < g < 2.5 for g in gaps)  # fine-tuned: GLLB-SC scale, not PBEsol's
    _bad_model_files_are_refused(runner, app, store, tmp_path / "three.extxyz", tmp_path)


def _bad_model_files_are_refused(runner, app, store, structures: Path, tmp_path: Path) -> None:
    """A truncated, foreign-architecture or pickled model.pt: exit 2, one message naming the file, nothing run."""
    import shutil

    import torch

    from tests.test_hostile_inputs import crafted_pickle

    relpath = store.query("SELECT relpath FROM gnn_models ORDER BY created_at DESC LIMIT 1")["relpath"][0]
    good = store.project_dir / relpath
    same = runner.invoke(app, ["gnn", "predict", str(structures), "--model", str(good)])
    assert same.exit_code == 0 and len(same.output.strip().splitlines()) == 4
    marker = tmp_path / "side-effect"
    cases = {}
    for name in ("truncated", "foreign", "pickle"):
        folder = tmp_path / name
        shutil.copytree(good, folder)
        cases[name] = folder
    data = (good / "model.pt").read_bytes()
    (cases["truncated"] / "model.pt").write_bytes(data[: len(data) // 2])
    from capml_core.models.gnn import Architecture

    foreign = Architecture(conv_layers=5, hidden_channels=7)  # no named architecture has this shape
    torch.save(build_model(foreign).state_dict(), cases["foreign"] / "model.pt")
    crafted_pickle(cases["pickle"] / "model.pt", marker)
    expected = {
        "truncated": "not a readable capml GNN weights file (truncated or not a torch file",
        "foreign": "weights of another architecture than model.json's",
        "pickle": "holds pickled Python object posix.system, not only tensors; refused",
    }
    for name, folder in cases.items():
        result = runner.invoke(app, ["gnn", "predict", str(structures), "--model", str(folder / "model.pt")])
        assert result.exit_code == 2, (name, result.output)
        message = " ".join(result.output.split())
        assert str(folder / "model.pt") in message and expected[name] in message, (name, message)
        assert "weights_only=False" not in message and "Traceback" not in message
    (good / "model.pt").write_bytes((cases["pickle"] / "model.pt").read_bytes())  # planted in the project
    planted = runner.invoke(app, ["gnn", "predict", str(structures), "-p", str(store.project_dir)])
    assert planted.exit_code == 2 and "refused" in planted.output
    assert not marker.exists()


def test_config_names_exactly_the_known_architectures() -> None:
    from typing import get_args

    from capml_core.config.stage_sections import GNNArchitectureName
    from capml_core.models.gap_head import KERNEL_ARCHITECTURE

    assert set(get_args(GNNArchitectureName)) == set(ARCHITECTURES) | {KERNEL_ARCHITECTURE}


def test_search_picks_by_validation_and_the_curve_records_what_data_buys(demo_store_copy: Path) -> None:
    from capml_core.config.loading import load_config
    from capml_core.stages.gnn import fit_band_gap_model
    from capml_core.store.database import Store
    from tests.conftest import DEMO_CONFIG

    gnn = load_config(DEMO_CONFIG).config.gnn.model_copy(
        update={
            "ensemble_size": 1,
            "epochs": 40,
            "fine_tune_epochs": 20,
            "patience": 20,
            "search_architectures": ["paper", "mean-pool"],
            "learning_curve_fractions": [0.3, 1.0],
            "baseline_architecture": "three-layer",  # not searched: always trained as the comparison
        }
    )
    store = Store(demo_store_copy)
    result = fit_band_gap_model(store, gnn, cheap_level="gpaw-pbesol", high_level="gpaw-gllbsc")
    assert [t.valid.mae_ev for t in result.search] == sorted(t.valid.mae_ev for t in result.search)
    trials = store.query("SELECT architecture, rank, valid_mae_ev FROM gnn_trials ORDER BY rank")
    assert trials["rank"].tolist() == [1, 2] and set(trials["architecture"]) == {"paper", "mean-pool"}
    models = store.query("SELECT ensemble_id, architecture FROM gnn_models ORDER BY created_at")
    assert models["architecture"].tolist() == ["three-layer", result.search[0].architecture]  # baseline first
    assert models["ensemble_id"].tolist() == [result.baseline.ensemble_id, result.ensemble.ensemble_id]
    assert result.baseline.ensemble_id.startswith("baseline-")
    # the baseline is a comparison: later stages and the dashboard's metrics use the search's best
    assert latest_ensemble(store)[0] == result.ensemble.ensemble_id
    assert set(store.gnn_results()[0]["model_id"]) == set(result.ensemble.model_ids)
    comparison = store.gnn_baseline_comparison().set_index(["role", "stage"])
    for role, trained in (("search best", result.ensemble), ("baseline", result.baseline)):
        for stage, m in trained.ensemble_test_metrics.items():
            row = comparison.loc[(role, stage)]
            assert row["n"] == m.n and row["mae_ev"] == pytest.approx(m.mae_ev, abs=1e-9)
            assert row["r2"] == pytest.approx(m.r2, abs=1e-9)
    # the same test structures for both
    tests = store.query(
        """SELECT g.ensemble_id, list(DISTINCT p.structure_hash ORDER BY p.structure_hash) AS hashes
           FROM gnn_predictions p JOIN gnn_models g USING (model_id) WHERE p.split = 'test' GROUP BY ALL"""
    )
    assert len(tests) == 2 and list(tests["hashes"].iloc[0]) == list(tests["hashes"].iloc[1])
    sizes = [n for n, _ in result.curve]
    assert sizes == sorted(sizes) and sizes[-1] > 2 * sizes[0]
    curve = store.query("SELECT n_train, test_mae_ev FROM gnn_learning_curve ORDER BY n_train")
    assert curve["n_train"].tolist() == sizes and curve["test_mae_ev"].notna().all()


def test_models_move_between_devices(pbesol) -> None:
    import torch

    _, graphs, gaps = pbesol
    model = new_model("paper", ARCHITECTURES["paper"], graphs[:10], gaps[:10], cutoff_a=5.5)
    expected = "cuda" if torch.cuda.is_available() else "cpu"
    assert model.to("auto").device.type == expected
    assert model.to("cpu").device.type == "cpu"
    assert model.predict_graphs(graphs[:3]).shape == (3,)


def test_a_small_level_always_gets_a_validation_structure(tmp_path: Path) -> None:
    """With tiny split fractions no structure may fall in validation; one moves there from training."""
    from capml_core.config.stage_sections import GNNSection
    from capml_core.stages.gnn_training import level_splits
    from capml_core.store.database import Store
    from capml_core.store.records import LabelRecord, StructureRecord
    from capml_core.system.structures import quantize, structure_hash

    frames = read(PBESOL_FILE, index=":12")
    store = Store(tmp_path / "project")
    records = [StructureRecord(atoms=quantize(a.copy()), structure_hash="", kind="imported") for a in frames]
    records = [StructureRecord(atoms=r.atoms, structure_hash=structure_hash(r.atoms), kind="imported") for r in records]
    with store.write() as writer:
        writer.add_structures(records, run_id=None)
        writer.add_labels(
            [LabelRecord(r.structure_hash, "lvl", gap_ev=1.0 + 0.1 * i) for i, r in enumerate(records)], run_id=None
        )
    gnn = GNNSection(valid_fraction=0.001, test_fraction=0.001)
    splits = level_splits(store, "lvl", gnn)
    assert len(splits["valid"][0]) == 1 and len(splits["train"][0]) == 11 and splits["test"][0] == []
