"""MACE stage: training through MACE's own trainer, fine-tuning, evaluation, calculators, phonon validation.

The slow tests train one tiny model (8 channels, L = 0, a few epochs) on the bundled PBEsol data once per
session; a second tiny model is fine-tuned from it on another split, which exercises the foundation path
with a model capml trained itself (foundation weights cannot be downloaded here).
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
from ase.io import read
from typer.testing import CliRunner

from capml_core.config.loading import load_config
from capml_core.config.stage_sections import MLIPSection
from capml_core.errors import ConfigError, DatasetError, InvalidInputError
from capml_core.models.mace import mace_arguments
from capml_core.stages.mlip import inspect_mace_model, labelled_structures, model_id_for, split_structures
from capml_core.store.database import Store
from capml_core.store.queries import latest_model
from capml_core.store.records import LabelRecord
from tests.conftest import DEMO_CONFIG, PBESOL_FILE, REPO, TINY, _tiny_config, project_copy


# ------------------------------------------------------------------------------------------- fast
def test_trainer_arguments_carry_the_papers_weights_split_files_and_fine_tuning(tmp_path: Path) -> None:
    mlip = MLIPSection()
    files = {name: tmp_path / f"{name}.extxyz" for name in ("train", "valid", "test")}
    argv = mace_arguments(mlip, work_dir=tmp_path, files=files, device="cpu", foundation=None)
    args = dict(a[2:].split("=", 1) for a in argv if "=" in a)
    assert (args["energy_weight"], args["forces_weight"], args["stress_weight"]) == ("1.0", "150.0", "10.0")
    assert (args["r_max"], args["num_channels"], args["loss"]) == ("8.0", "256", "stress")
    assert args["train_file"] == str(files["train"]) and args["valid_file"] == str(files["valid"])
    assert "test_file" not in args and "foundation_model" not in args and "--restart_latest" not in argv
    (tmp_path / "checkpoints").mkdir()
    (tmp_path / "checkpoints" / "capml_run-1_epoch-3.pt").write_bytes(b"")
    argv = mace_arguments(mlip, work_dir=tmp_path, files=files, device="cpu", foundation=tmp_path / "f.model")
    args = dict(a[2:].split("=", 1) for a in argv if "=" in a)
    assert args["foundation_model"] == str(tmp_path / "f.model") and args["multiheads_finetuning"] == "False"
    assert "--restart_latest" in argv  # an interrupted training resumes from its checkpoint


def test_a_model_file_that_is_missing_or_not_mace_is_refused_with_its_path(tmp_path: Path) -> None:
    with pytest.raises(InvalidInputError, match="nothing.model: MACE model file not found"):
        inspect_mace_model(tmp_path / "nothing.model")
    text = tmp_path / "text.model"
    text.write_text("not a model")
    with pytest.raises(InvalidInputError, match="text.model: not a MACE model file"):
        inspect_mace_model(text)
    import torch

    torch.save({"weights": [1, 2]}, tmp_path / "dict.model")
    with pytest.raises(InvalidInputError, match="dict.model: not a capml MACE file"):
        inspect_mace_model(tmp_path / "dict.model")


def test_config_refuses_unknown_mlip_keys_and_a_missing_foundation_file(tmp_path: Path) -> None:
    text = DEMO_CONFIG.read_text().replace('"../', f'"{REPO}/data/')
    bad = tmp_path / "bad.toml"
    bad.write_text(text.replace("channels = 32", "chanels = 4"))
    with pytest.raises(ConfigError, match="mlip.chanels"):
        load_config(bad)
    bad.write_text(text.replace("channels = 32", 'foundation_model = "mace-mpa-0-medium.model"\nchannels = 32'))
    with pytest.raises(ConfigError, match="mace-mpa-0-medium.model"):
        load_config(bad)


def test_missing_stress_is_a_clear_error_and_the_split_is_reproducible(demo_store_copy: Path) -> None:
    store = Store(demo_store_copy)
    structures = labelled_structures(store, "gpaw-pbesol", need_stress=True)
    assert len(structures) == 103 and all(s.stress_ev_per_a3.shape == (6,) for s in structures)
    first = split_structures(structures, MLIPSection(test_fraction=0.1, valid_fraction=0.05))
    again = split_structures(structures[::-1], MLIPSection(test_fraction=0.1, valid_fraction=0.05))
    assert {k: sorted(s.structure_hash for s in v) for k, v in first.items()} == {
        k: sorted(s.structure_hash for s in v) for k, v in again.items()
    }
    assert 3 <= len(first["valid"]) <= 10 and 5 <= len(first["test"]) <= 18
    victim = structures[0]
    with store.write() as writer:  # an imported structure whose file had no stress
        writer.add_labels(
            [
                LabelRecord(
                    structure_hash=victim.structure_hash,
                    level="other",
                    energy_ev=victim.energy_ev,
                    forces_ev_per_a=victim.forces_ev_per_a,
                    source="no-stress.extxyz",
                )
            ],
            run_id=None,
        )
        writer.add_labels(
            [
                LabelRecord(
                    structure_hash=s.structure_hash,
                    level="other",
                    energy_ev=s.energy_ev,
                    forces_ev_per_a=s.forces_ev_per_a,
                    stress_ev_per_a3=s.stress_ev_per_a3,
                )
                for s in structures[1:12]
            ],
            run_id=None,
        )
    with pytest.raises(DatasetError, match=r"1 of 12 structures labelled at other have no stress \(from no-stress"):
        labelled_structures(store, "other", need_stress=True)
    assert len(labelled_structures(store, "other", need_stress=False)) == 12
    frame = {"md_id": "md-x", "model_id": "mace-x", "held_out": False, "selection": "random", "temperature_k": 300.0}
    with store.write() as writer:  # two of them MD frames of active-learning rounds 2 and 4
        writer.add_rows(
            "md_frames",
            [
                {**frame, "structure_hash": s.structure_hash, "frame": i, "round": r}
                for i, (s, r) in enumerate(zip(structures[1:3], (2, 4), strict=True))
            ],
        )
    kept = labelled_structures(store, "other", need_stress=False, max_md_frame_round=3)
    assert len(kept) == 11 and structures[2].structure_hash not in {s.structure_hash for s in kept}
    assert len(labelled_structures(store, "other", need_stress=False, max_md_frame_round=1)) == 10
    assert len(labelled_structures(store, "other", need_stress=False, max_md_frame_round=None)) == 12
    mlip = MLIPSection(test_fraction=0.1, valid_fraction=0.05)
    splits = split_structures(kept, mlip)  # the id follows the structures trained on, not the setting
    assert model_id_for(mlip, "other", splits, None) == model_id_for(
        mlip.model_copy(update={"max_md_frame_round": 3}), "other", splits, None
    )


def test_dispersion_contains_the_supercell_gamma_modes_and_three_acoustic_zeros() -> None:
    from capml_core.physics.phonons import dispersion, gamma_frequencies_thz
    from capml_core.stages.training_sets import end_member_force_constants

    config = load_config(DEMO_CONFIG).config
    fc = end_member_force_constants(config.system, config.dataset, "Br", cache_dir=Path("unused"))
    bands = dispersion(fc.cell, fc.force_constants)
    assert bands.frequencies_thz.shape[1] == 15  # 5-atom primitive cell of the 40-atom supercell
    assert [label for _, label in bands.ticks] == ["Γ", "X", "M", "Γ", "R", "X|R", "M"]  # seekpath's cP path
    at_gamma = np.sort(bands.frequencies_thz[0])
    assert np.sum(np.abs(at_gamma) < 0.05) == 3  # acoustic modes
    supercell = gamma_frequencies_thz(fc.cell, fc.force_constants)  # Γ, X, M, R of the primitive cell
    for value in np.concatenate([bands.frequencies_thz[0], bands.frequencies_thz[-1]]):  # Γ and M
        assert np.min(np.abs(supercell - value)) < 1e-6
    assert at_gamma[0] < -2.0  # the cubic parent is dynamically unstable (paper, Fig. 5)


# ------------------------------------------------------------------------------------------- slow
@pytest.mark.slow
def test_training_from_scratch_records_model_errors_and_predictions(trained) -> None:
    project, config, result, epochs = trained
    store = Store(project)
    assert epochs == [1, 2, 3, 4] and result.model.newly_trained and result.model.path.is_file()
    model = store.query("SELECT * FROM mlip_models")
    assert model["kind"].tolist() == ["scratch"] and model["r_max_a"][0] == pytest.approx(4.5)
    assert model["channels"][0] == 8 and model["n_train"][0] + model["n_valid"][0] + model["n_test"][0] == 103
    metrics = store.query("SELECT quantity, split, n FROM mlip_metrics ORDER BY ALL")
    assert len(metrics) == 9  # energy, forces, stress x train, valid, test
    n_test = int(model["n_test"][0])
    assert result.test_metrics["forces"]["n"] == n_test * 40 * 3 and result.test_metrics["stress"]["n"] == n_test * 6
    # learning happened: test forces far better than predicting zero force
    forces = store.query("SELECT forces_reference_ev_per_a AS f FROM mlip_predictions WHERE split = 'test'")
    mean_abs_force = float(np.mean(np.abs(np.concatenate(forces["f"].map(np.asarray).tolist()))))
    assert result.test_metrics["forces"]["mae"] < 0.5 * mean_abs_force
    assert store.query("SELECT count(*) AS n FROM mlip_predictions")["n"][0] == 103
    # same settings and data: nothing retrained
    from capml_core.stages.mlip import fit_mlip

    again = fit_mlip(store, config)
    assert not again.model.newly_trained and again.model.model_id == result.model.model_id


@pytest.mark.slow
def test_calculator_is_translation_invariant_and_float64(trained) -> None:
    from capml_core.stages.mlip import run_calculator

    project, _, _, _ = trained
    store = Store(project)
    calculator = run_calculator(store, latest_model(store)[0], device="cpu", dtype="float64")
    atoms = store.load_structures(store.query("SELECT structure_hash FROM labels LIMIT 1")["structure_hash"])
    atoms = next(iter(atoms.values()))
    atoms.calc = calculator
    energy, forces = atoms.get_potential_energy(), atoms.get_forces()
    assert forces.dtype == np.float64 and atoms.get_stress().shape == (6,)
    assert np.abs(forces.sum(axis=0)).max() < 1e-8  # Newton's third law for a conservative potential
    shifted = atoms.copy()
    shifted.positions += [0.37, -1.1, 2.3]
    shifted.calc = calculator
    assert shifted.get_potential_energy() == pytest.approx(energy, abs=1e-8)
    assert np.allclose(shifted.get_forces(), forces, atol=1e-8)


@pytest.mark.slow
def test_phonon_validation_compares_all_supercell_modes_of_both_end_members(trained) -> None:
    project, _, result, _ = trained
    rows = {row["end_member"]: row for row in result.phonons}
    assert set(rows) == {"Br", "I"}
    for row in rows.values():
        assert row["n_modes"] == 120 and row["reference"] == "gpaw-pbesol"
        assert row["n_imaginary_reference"] == 66  # the DFT parent: 66 of 120 modes imaginary
        assert np.isfinite(row["mae_thz"]) and row["mae_thz"] < 5.0
    arrays = Store(project).load_arrays(rows["Br"]["artifact_id"])
    gamma = np.sort(np.abs(arrays["model_gamma_thz"]))
    assert gamma[:3].max() < 0.05  # MACE's force constants keep the three acoustic zeros at Γ
    assert arrays["model_dispersion_thz"].shape == arrays["reference_dispersion_thz"].shape == (186, 15)


@pytest.mark.slow
def test_fine_tuning_from_a_capml_model_file_and_its_foundation_table(trained, tmp_path: Path) -> None:
    from capml_core.stages.mlip import fit_mlip

    project, _, scratch, _ = trained
    foundation = tmp_path / "foundation.model"
    shutil.copy(scratch.model.path, foundation)
    target = tmp_path / "finetune"
    shutil.copytree(project, target)
    store = Store(target)
    with pytest.raises(InvalidInputError, match=r"mlip.r_max_a = 5.0 Å but the foundation model .* 4.5 Å"):
        fit_mlip(store, _tiny_config(target, foundation_model=foundation, r_max_a=5.0, split_seed=7))
    with pytest.raises(InvalidInputError, match="mlip.channels = 16 but the foundation model .* has 8 channels"):
        fit_mlip(store, _tiny_config(target, foundation_model=foundation, channels=16, split_seed=7))
    assert store.query("SELECT count(*) AS n FROM mlip_models")["n"][0] == 1  # refusals wrote nothing
    tuned = fit_mlip(store, _tiny_config(target, foundation_model=foundation, split_seed=7, learning_rate=0.005))
    models = store.query("SELECT model_id, kind, foundation_model_id FROM mlip_models ORDER BY kind")
    assert sorted(models["kind"]) == ["fine-tuned", "foundation", "scratch"]
    assert tuned.model.foundation_id in set(models["model_id"])
    both = store.query(
        """SELECT m.kind, x.mae FROM mlip_metrics x JOIN mlip_models m USING (model_id)
           WHERE x.quantity = 'forces' AND x.split = 'test' AND m.kind IN ('foundation', 'fine-tuned')"""
    ).set_index("kind")["mae"]
    assert both["fine-tuned"] < both["foundation"]  # fine-tuning improved the held-out forces
    results = store.mlip_results()
    assert set(results["models"]["kind"]) == {"fine-tuned", "foundation"}


def _tiny_toml(path: Path, **mlip) -> Path:
    """The demo config with the [mlip] section replaced by TINY (+ ``mlip``)."""
    text = DEMO_CONFIG.read_text().replace('"../', f'"{REPO}/data/')
    head, rest = text.split("[mlip]", 1)
    tail = rest[rest.index("\n[", 1) :]
    values = {**TINY, **mlip}
    body = "".join(f"{k} = {str(v).lower() if isinstance(v, bool) else repr(v)}\n" for k, v in values.items())
    path.write_text(head.replace("'", '"') + "[mlip]\n" + body.replace("'", '"') + tail)
    return path


@pytest.mark.slow
def test_cli_trains_evaluates_a_model_file_and_refuses_a_bad_one(trained, tmp_path: Path) -> None:
    from flows.cli import app

    project, _, scratch, _ = trained
    target = tmp_path / "project"
    shutil.copytree(project, target)
    config = _tiny_toml(tmp_path / "demo.toml", validate_phonons=True)
    runner = CliRunner()
    result = runner.invoke(app, ["mlip", "train", "-c", str(config), "-p", str(target)])
    assert result.exit_code == 0, result.output
    assert f"MACE model {scratch.model.model_id}" in result.output and "(already trained)" in result.output
    assert "Γ-point phonons" in result.output and "66 /" in result.output
    result = runner.invoke(app, ["mlip", "evaluate", str(scratch.model.path), "-c", str(config), "-p", str(target)])
    assert result.exit_code == 0, result.output
    assert "forces" in result.output and "foundation-" in result.output
    bad = tmp_path / "bad.model"
    bad.write_text("x")
    result = runner.invoke(app, ["mlip", "evaluate", str(bad), "-c", str(config), "-p", str(target)])
    assert result.exit_code == 2 and "bad.model: not a MACE model file" in result.output


@pytest.mark.slow
def test_thermal_structures_from_force_constants_of_the_trained_mace(trained) -> None:
    """dataset.force_constants_level = "mace": the end members' phonons come from the project's MACE."""
    from capml_core.config.inputs import StructureSetSection
    from capml_core.stages.mlip import force_constants_cache_dir, force_function
    from capml_core.stages.training_sets import end_members_for, generate_structure_set

    project, config, result, _ = trained
    store = Store(project)
    dataset = config.dataset.model_copy(update={"force_constants": {}, "force_constants_level": "mace"})
    cache = force_constants_cache_dir(store, "mace")
    assert cache == project / "phonons" / result.model.model_id  # a retrained model gets its own
    fcs = end_members_for(config.system, dataset, cache_dir=cache, forces=force_function("mace", None, store))
    assert sorted(p.name for p in cache.iterdir()) == ["Br-mace-force-constants.yaml", "I-mace-force-constants.yaml"]
    assert np.allclose(fcs["Br"].force_constants.sum(axis=1), 0.0, atol=1e-3)  # acoustic sum rule (eV/Å²)
    hot = StructureSetSection(name="t", level="gpaw-pbesol", seed=3, temperatures_k=[600.0], thermal_per_point=1)
    records = list(generate_structure_set(config.system, dataset, hot, fcs))
    assert len(records) == len(config.system.compositions)
    from ase.geometry import find_mic

    from capml_core.stages.training_sets import end_member_cell

    iodide = next(r for r in records if r.composition_x == 0.0)
    ideal = end_member_cell(config.system, "I")
    displacement, _ = find_mic(iodide.atoms.positions - ideal.positions, ideal.cell)
    rms = float(np.sqrt(np.mean(np.sum(displacement**2, axis=1))))
    assert 0.1 < rms < 1.0  # Å at 600 K (soft Ag and halogen modes)


def _mlip_page() -> None:
    from dashboard.views.mlip import render_mlip

    render_mlip()


@pytest.mark.slow
def test_dashboard_page_draws_parity_and_both_dispersions(trained, monkeypatch: pytest.MonkeyPatch) -> None:
    import json

    import streamlit as st
    from streamlit.testing.v1 import AppTest

    from tests.test_dashboard import _decoded

    project, _, _, _ = trained
    monkeypatch.setenv("CAPML_PROJECT_DIR", str(project))
    st.cache_data.clear()
    at = AppTest.from_function(_mlip_page, default_timeout=60).run()
    assert not at.exception
    table = at.dataframe[0].value
    assert set(table["quantity"]) == {"energy", "forces", "stress"} and len(table) == 9
    assert at.dataframe[1].value["n_imaginary_reference"].tolist() == [66, 66]
    specs = [json.loads(c.proto.spec) for c in at.get("plotly_chart")]
    assert len(specs) == 5  # energy, forces, stress parity + one dispersion per end member
    energy = specs[0]
    assert sum(len(_decoded(t["x"])) for t in energy["data"] if t["name"] != "y = x") == 103
    relative = np.concatenate([_decoded(t["x"]) for t in energy["data"] if t["name"] != "y = x"])
    assert relative.min() == 0.0 and relative.max() < 500.0  # meV/atom above each composition's lowest
    assert energy["layout"]["yaxis"]["scaleanchor"] == "x"  # equal axes
    forces = specs[1]  # 103 x 120 components: 10,000 drawn, the caption says so
    assert sum(len(_decoded(t["x"])) for t in forces["data"] if t["name"] != "y = x") == 10_000
    assert any("10,000 of 12,360 components drawn" in c.value for c in at.caption)
    dispersion = specs[3]
    assert len(dispersion["data"]) == 30  # 15 branches from the reference and 15 from MACE
    assert {t["name"] for t in dispersion["data"]} == {"gpaw-pbesol", "MACE"}


@pytest.mark.slow
def test_a_crafted_mace_pickle_runs_nothing_through_any_entry_point(trained, tmp_path: Path) -> None:
    """mlip evaluate, mlip.foundation_model (config check, mlip train), a model planted in the project: refused."""
    from capml_core.models.mace import load_mace_calculator
    from flows.cli import app
    from tests.test_hostile_inputs import crafted_pickle

    project, _, scratch, _ = trained
    marker = tmp_path / "side-effect"
    evil = crafted_pickle(tmp_path / "mace-foundation.model", marker)
    config = _tiny_toml(tmp_path / "demo.toml")
    runner = CliRunner()
    refused = "loading it would run code it names, so capml refuses it"
    fresh = tmp_path / "fresh-project"
    result = runner.invoke(app, ["mlip", "evaluate", str(evil), "-c", str(config), "-p", str(fresh)])
    assert result.exit_code == 2 and refused in " ".join(result.output.split()) and not fresh.exists()
    with_foundation = _tiny_toml(tmp_path / "foundation.toml", foundation_model=str(evil))
    checked = runner.invoke(app, ["config", "check", str(with_foundation)])
    assert checked.exit_code == 2 and refused in " ".join(checked.output.split())
    trained_fresh = runner.invoke(app, ["mlip", "train", "-c", str(with_foundation), "-p", str(fresh)])
    assert trained_fresh.exit_code == 2 and refused in " ".join(trained_fresh.output.split())
    assert not fresh.exists()  # validated before anything was written
    target = tmp_path / "planted"
    shutil.copytree(project, target)
    planted = target / scratch.model.path.relative_to(project)
    planted.write_bytes(evil.read_bytes())
    for other in (target / "mlip").rglob("*.model"):
        other.write_bytes(evil.read_bytes())
    with pytest.raises(InvalidInputError, match=refused):
        load_mace_calculator(planted)
    scan = runner.invoke(app, ["disorder", "-c", str(config), "-p", str(target)])
    assert scan.exit_code == 2 and refused in " ".join(scan.output.split()), scan.output
    assert not marker.exists()


@pytest.mark.slow
def test_capml_form_gives_the_trainers_energies_and_convert_needs_trust(trained, tmp_path: Path) -> None:
    import torch
    from mace.calculators import MACECalculator

    from capml_core.models.mace import load_mace_calculator
    from capml_core.models.mace_files import SAFE_SUFFIX
    from flows.cli import app

    _, _, scratch, _ = trained
    assert scratch.model.path.name.endswith(SAFE_SUFFIX)
    pickles = sorted(scratch.model.path.parent.glob("capml*.model"))
    trainer_output = [p for p in pickles if "compiled" not in p.name][-1]
    runner = CliRunner()
    untrusted = runner.invoke(app, ["mlip", "convert", str(trainer_output), str(tmp_path / f"m{SAFE_SUFFIX}")])
    assert untrusted.exit_code == 2 and "add --trust" in untrusted.output
    assert not (tmp_path / f"m{SAFE_SUFFIX}").exists()
    converted = runner.invoke(
        app, ["mlip", "convert", str(trainer_output), str(tmp_path / f"m{SAFE_SUFFIX}"), "--trust"]
    )
    assert converted.exit_code == 0 and "cutoff 4.5 Å" in converted.output
    atoms = read(PBESOL_FILE, index=3)
    reference = MACECalculator(model_paths=str(trainer_output), device="cpu", default_dtype="float64")
    for path in (scratch.model.path, tmp_path / f"m{SAFE_SUFFIX}"):
        ours, theirs = atoms.copy(), atoms.copy()
        ours.calc, theirs.calc = load_mace_calculator(path, device="cpu"), reference
        assert ours.get_potential_energy() == pytest.approx(theirs.get_potential_energy(), abs=1e-9)
        np.testing.assert_allclose(ours.get_forces(), theirs.get_forces(), atol=1e-9)
    assert torch.load(scratch.model.path, weights_only=True)["format"] == "capml-mace-1"


def test_kernel_gap_ensemble_on_the_trained_mace_fits_both_levels_and_reloads(trained, tmp_path: Path) -> None:
    """gnn.architecture = "mace-kernel": searched beside a GNN, members differ, predictions reload exactly."""
    from capml_core.models.gap_head import KernelGapModel
    from capml_core.models.gnn import load_ensemble, predict_gaps
    from capml_core.stages.gnn import fit_band_gap_model
    from capml_core.store.queries import ensemble_model_dirs, latest_ensemble

    _, store = project_copy(trained[0], tmp_path)
    levels = {"cheap_level": "gpaw-pbesol", "high_level": "gpaw-gllbsc"}
    search = trained[1].gnn.model_copy(
        update={
            "ensemble_size": 1,
            "epochs": 20,
            "fine_tune_epochs": 10,
            "patience": 10,
            "search_architectures": ["mace-kernel", "paper"],
            "search_learning_rates": [3e-3],
            "search_batch_sizes": [16],
            "learning_curve_fractions": [],
        }
    )
    searched = fit_band_gap_model(store, search, **levels)
    trials = store.query("SELECT architecture, learning_rate, valid_mae_ev FROM gnn_trials ORDER BY rank")
    assert sorted(trials["architecture"]) == ["mace-kernel", "paper"] and trials["valid_mae_ev"].is_monotonic_increasing
    assert trials.set_index("architecture")["learning_rate"].isna().tolist() == [
        a == "mace-kernel" for a in trials["architecture"]
    ]  # a kernel head has no optimiser
    assert searched.search[0].architecture == trials["architecture"][0]
    reused = fit_band_gap_model(store, search, **levels)  # the stored search, read back with its NULLs
    assert [(t.architecture, t.learning_rate) for t in reused.search] == [
        (t.architecture, t.learning_rate) for t in searched.search
    ]

    gnn = search.model_copy(
        update={"architecture": "mace-kernel", "search_architectures": [], "ensemble_size": 3,
                "learning_curve_fractions": [0.3, 1.0]}
    )  # fmt: skip
    result = fit_band_gap_model(store, gnn, **levels)
    ensemble_id = result.ensemble.ensemble_id
    assert latest_ensemble(store)[0] == ensemble_id
    models = store.query("SELECT architecture FROM gnn_models WHERE ensemble_id = ?", [ensemble_id])
    assert models["architecture"].tolist() == ["mace-kernel"] * 3
    sizes = [n for n, _ in result.curve]
    assert len(sizes) == 2 and sizes[1] > 2 * sizes[0]
    # better than the mean on unseen structures, at both levels (cheap: 103 PBEsol, high: 48 GLLB-SC gaps)
    for stage in ("cheap", "high"):
        test = store.query(
            """SELECT p.structure_hash, p.reference_ev, avg(p.predicted_ev) AS predicted,
                      stddev_pop(p.predicted_ev) AS spread
               FROM gnn_predictions p JOIN gnn_models g USING (model_id)
               WHERE g.ensemble_id = ? AND p.stage = ? AND p.split = 'test' GROUP BY ALL ORDER BY 1""",
            [ensemble_id, stage],
        )
        mae = (test["predicted"] - test["reference_ev"]).abs().mean()
        assert len(test) >= 3 and mae < (test["reference_ev"] - test["reference_ev"].mean()).abs().mean(), stage
        assert (test["spread"] > 0).all()  # members fitted on different 80 % of the training split
        assert result.ensemble.ensemble_test_metrics[stage].mae_ev == pytest.approx(mae, abs=1e-9)
    # loaded back from disk: the stored high-level test predictions, exactly; the cheap stage kept beside them
    directories = ensemble_model_dirs(store, ensemble_id)
    members = load_ensemble(directories)
    assert all(isinstance(m, KernelGapModel) for m in members)
    atoms = store.load_structures(test["structure_hash"].tolist())
    structures = [atoms[h] for h in test["structure_hash"]]
    mean, _ = predict_gaps(structures, members)
    assert mean == pytest.approx(test["predicted"].to_numpy(), abs=1e-6)
    cheap_mean, _ = predict_gaps(structures, load_ensemble(ensemble_model_dirs(store, ensemble_id, stage="cheap")))
    assert np.abs(mean - cheap_mean).mean() > 0.3  # GLLB-SC opens the PBEsol gap by about 0.7 eV
    # the same data: reused, nothing refitted; a changed MACE file: refused (its descriptors mean something else)
    again = fit_band_gap_model(store, gnn, **levels)
    assert again.ensemble.model_ids == result.ensemble.model_ids
    assert len(store.query("SELECT * FROM gnn_models WHERE ensemble_id = ?", [ensemble_id])) == 3
    with members[0].mace_model.open("ab") as handle:
        handle.write(b"\0")
    with pytest.raises(InvalidInputError, match="changed since the head was fitted"):
        load_ensemble(directories)


def test_kernel_heads_are_tuned_on_the_md_frames_among_their_structures(trained, tmp_path: Path) -> None:
    """gnn.md_frame_focus: the MD frames (kind md-frame) are the heads' focus; the members record it."""
    from capml_core.models.gap_head import KernelGapModel
    from capml_core.stages.gnn import fit_band_gap_model
    from capml_core.stages.kernel_training import Descriptors

    _, store = project_copy(trained[0], tmp_path)
    frames = store.labelled_gaps("gpaw-pbesol")["structure_hash"].tolist()[::4]  # a quarter play the MD frames
    with store.write() as writer:
        writer.con.execute(
            "UPDATE structures SET kind = 'md-frame' WHERE structure_hash IN (SELECT unnest(?))", [frames]
        )
    hashes = store.labelled_gaps("gpaw-pbesol")["structure_hash"].tolist()
    mask = Descriptors(store, focus_md_frames=True).focus(hashes)
    assert mask.tolist() == [h in set(frames) for h in hashes] and 5 <= mask.sum() < len(hashes)
    assert Descriptors(store).focus(hashes) is None  # the default of the library: no focus
    gnn = trained[1].gnn.model_copy(
        update={"architecture": "mace-kernel", "search_architectures": [], "ensemble_size": 1,
                "learning_curve_fractions": [], "md_frame_focus": True}
    )  # fmt: skip
    result = fit_band_gap_model(store, gnn, cheap_level="gpaw-pbesol", high_level="gpaw-gllbsc")
    (relpath,) = store.query("SELECT relpath FROM gnn_models WHERE ensemble_id = ?", [result.ensemble.ensemble_id])[
        "relpath"
    ]
    stages = KernelGapModel.load(store.project_dir / relpath).history["stages"]
    assert [s["stage"] for s in stages] == ["cheap", "high"]
    assert all(s["other_factor"] in (1.0, 3.0, 10.0, 30.0, 100.0) for s in stages)
