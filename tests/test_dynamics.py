"""Langevin MD: config checks, decorrelation time, health checks, resumable trajectories, the dynamics stage."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from capml_core.config.loading import load_config
from capml_core.config.stage_sections import MDSection
from capml_core.errors import ConfigError
from capml_core.physics.md import FRAME_DATASETS, check_health, read_trajectory, run_md
from capml_core.physics.statistics import integrated_autocorrelation_time
from capml_core.store.database import Store
from capml_core.store.queries import latest_model, latest_scan_id
from tests.conftest import DEMO_CONFIG, REPO, md_config, project_copy


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("temperatures_k = [0.0]", "md.temperatures_k.0"),
        ("timestep_fs = 5.0", "md.timestep_fs"),
        ("save_every_steps = 40", "field 'md.save_every_steps' = 40: .*frames must be at most 25 fs apart"),
        ("equilibration_ps = 3.0", "field 'md.equilibration_ps' = 3.0: must be shorter than duration_ps"),
    ],
)
def test_bad_md_settings_are_refused_before_any_run(tmp_path: Path, line: str, message: str) -> None:
    text = DEMO_CONFIG.read_text().replace('"../', f'"{REPO}/data/')
    key = line.split(" = ")[0]
    lines = [x for x in text.split("[md]", 1)[1].split("[gaps]", 1)[0].splitlines() if x.startswith(key)]
    body = text.split("[md]", 1)
    section = body[1].replace(lines[0], line) if lines else body[1].replace("\n", f"\n{line}\n", 1)
    bad = tmp_path / "bad.toml"
    bad.write_text(body[0] + "[md]" + section)
    with pytest.raises(ConfigError, match=message):
        load_config(bad)


def test_integrated_autocorrelation_time_of_white_and_red_noise() -> None:
    rng = np.random.default_rng(0)
    assert integrated_autocorrelation_time(rng.normal(size=20000)) == pytest.approx(1.0, abs=0.1)
    phi, x = 0.9, np.zeros(200000)
    noise = rng.normal(size=len(x))
    for i in range(1, len(x)):
        x[i] = phi * x[i - 1] + noise[i]
    assert integrated_autocorrelation_time(x) == pytest.approx((1 + phi) / (1 - phi), rel=0.1)  # AR(1): 19


def _synthetic(temperature: float, target: float, *, drift: float = 0.0, diffuse: bool = False) -> dict:
    rng = np.random.default_rng(1)
    n_frames, n_atoms = 400, 8
    time_fs = np.arange(n_frames) * 5.0
    sites = np.array(np.meshgrid(*[np.arange(2) * 3.0] * 3)).reshape(3, -1).T
    positions = sites[None] + rng.normal(0.0, 0.1, (n_frames, n_atoms, 3))
    if diffuse:  # the first species wanders off
        positions[:, :4] += np.cumsum(rng.normal(0.0, 0.2, (n_frames, 4, 3)), axis=0)
    return {
        "time_fs": time_fs,
        "positions_a": positions,
        "temperature_k": rng.normal(temperature, 20.0, n_frames),
        "potential_energy_ev": n_atoms * (drift * time_fs / 1000.0 + rng.normal(0.0, 1e-3, n_frames)),
        "numbers": np.array([47] * 4 + [16] * 4),
        "cell_a": np.eye(3) * 6.0,
        "target_temperature_k": target,
    }


def test_health_checks_flag_temperature_drift_and_diffusion() -> None:
    md = MDSection(duration_ps=2.0, equilibration_ps=0.1)
    healthy = check_health(_synthetic(300.0, 300.0), md.equilibration_ps)
    assert healthy.status == "ok" and healthy.problems == [] and healthy.mean_temperature_k == pytest.approx(300, abs=3)
    assert healthy.msd_a2["Ag"] == pytest.approx(0.03, rel=0.2)  # 3 x (0.1 Å)²
    assert check_health(_synthetic(420.0, 300.0), md.equilibration_ps).problems == ["temperature 420 K, target 300 K"]
    assert (
        "drifts" in check_health(_synthetic(300.0, 300.0, drift=0.05), md.equilibration_ps).problems[0]
    )  # 50 meV/atom/ps
    wandering = check_health(_synthetic(300.0, 300.0, diffuse=True), md.equilibration_ps)
    assert any(p.startswith("Ag atoms leave their sites") for p in wandering.problems)
    assert not any(p.startswith("S atoms") for p in wandering.problems)


def test_a_run_closer_than_any_training_structure_has_left_the_training_data() -> None:
    """An S pair at 1.5 Å where the training structures never had two S closer than 2.9 Å: MACE extrapolates."""
    from capml_core.stages.dynamics import CONTACT_FRACTION, contacts_outside_training

    trajectory = _synthetic(300.0, 300.0)  # sites 3 Å apart, 0.1 Å noise
    training = {("Ag", "Ag"): 2.5, ("Ag", "S"): 2.5, ("S", "S"): 2.9}
    assert contacts_outside_training(trajectory, training, 0.1) is None
    assert contacts_outside_training(trajectory, {("S", "S"): 2.0 / CONTACT_FRACTION}, 0.1) is None  # not closer
    close = {**trajectory, "positions_a": trajectory["positions_a"].copy()}
    first_s, second_s = 4, 5  # the 5th and 6th atom are S, 3 Å apart
    close["positions_a"][300:350, second_s] = close["positions_a"][300:350, first_s] + [1.5, 0.0, 0.0]  # 1.5-1.75 ps
    why = contacts_outside_training(close, training, 0.1)
    assert why is not None and why.startswith("outside MACE's training data: S-S at 1.") and "2.90 Å" in why
    assert contacts_outside_training(close, {("Ag", "Ag"): 2.5}, 0.1) is None  # a pair the data never had: not judged
    assert contacts_outside_training(close, training, 1.8) is None  # only in the equilibration: not judged


def test_a_thinned_trajectory_keeps_the_runs_frame_indices_and_times(tmp_path: Path) -> None:
    """A checkpoint's trajectory: the positions of the band-gap series' frames only, read with the run's own frame
    indices and times; a frame it dropped is a clear error, not a wrong structure."""
    from ase.build import bulk
    from ase.calculators.emt import EMT

    from capml_core.errors import InvalidInputError
    from capml_core.physics.md import frames_with_positions, trajectory_frame, write_thinned_trajectory

    whole = tmp_path / "whole.h5"
    settings = {"temperature_k": 300.0, "timestep_fs": 2.0, "friction_per_fs": 0.01, "seed": 1}
    run_md(bulk("Cu", cubic=True) * (2, 2, 2), EMT(), n_steps=200, save_every_steps=2, path=whole, **settings)
    full = read_trajectory(whole)
    assert len(full["time_fs"]) == 101 and frames_with_positions(full).tolist() == list(range(101))
    assert write_thinned_trajectory(whole, tmp_path / "thin.h5", np.array([40, 8, 12, 100, 8])) == 4
    thin = read_trajectory(tmp_path / "thin.h5")
    assert thin["thinned"] and "velocities_a_per_fs" not in thin and thin["complete"] == full["complete"]
    assert np.array_equal(thin["time_fs"], full["time_fs"])  # the run's times and frame indices
    assert np.array_equal(thin["potential_energy_ev"], full["potential_energy_ev"])
    assert frames_with_positions(thin).tolist() == [8, 12, 40, 100]
    assert np.array_equal(trajectory_frame(thin, 40).positions, trajectory_frame(full, 40).positions)
    with pytest.raises(InvalidInputError, match="frame 41: not kept by this thinned trajectory"):
        trajectory_frame(thin, 41)
    assert (tmp_path / "thin.h5").stat().st_size < whole.stat().st_size / 4
    # a thinned file thinned again keeps what it has of the frames asked for
    assert write_thinned_trajectory(tmp_path / "thin.h5", tmp_path / "thinner.h5", np.array([8, 9, 100])) == 2
    with pytest.raises(InvalidInputError, match="outside"):
        write_thinned_trajectory(whole, tmp_path / "bad.h5", np.array([5, 101]))


# ------------------------------------------------------------------------------------------- slow
@pytest.mark.slow
def test_md_file_resumes_after_a_kill_without_gaps(trained, tmp_path: Path) -> None:
    import h5py

    from capml_core.stages.mlip import run_calculator
    from capml_core.stages.training_sets import end_member_cell

    project, config, _, _ = trained
    calculator = run_calculator(Store(project), latest_model(Store(project))[0], device="cpu", dtype="float32")
    md = MDSection(temperatures_k=[100.0], duration_ps=0.3, equilibration_ps=0.05, save_every_steps=5)
    cell = end_member_cell(config.system, "Br")
    settings = {"temperature_k": 100.0, "timestep_fs": md.timestep_fs, "friction_per_fs": md.friction_per_fs}
    settings |= {"n_steps": 300, "save_every_steps": 5, "seed": 3}
    whole = tmp_path / "whole.h5"
    assert run_md(cell, calculator, **settings, path=whole).trajectory is None
    trajectory = read_trajectory(whole)
    assert len(trajectory["time_fs"]) == 61 and trajectory["complete"]  # frame 0 and every 5 of 300 steps
    assert trajectory["temperature_k"][0] == pytest.approx(100.0, rel=0.4)  # Maxwell-Boltzmann start, 40 atoms
    momentum = (trajectory["masses_amu"][:, None] * trajectory["velocities_a_per_fs"][0]).sum(axis=0)
    assert np.allclose(momentum, 0.0, atol=1e-10)  # the centre of mass does not drift
    # a kill after 120 steps: the file holds 25 frames and is not complete
    killed = tmp_path / "killed.h5"
    shutil.copy(whole, killed)
    with h5py.File(killed, "a") as handle:
        for name in FRAME_DATASETS:
            handle[name].resize(25, axis=0)
        handle.attrs["complete"] = False
    run_md(cell, calculator, **settings, path=killed)
    resumed = read_trajectory(killed)
    assert np.array_equal(resumed["time_fs"], trajectory["time_fs"]) and resumed["complete"]
    assert np.array_equal(resumed["positions_a"][:25], trajectory["positions_a"][:25])  # kept, not recomputed
    step = np.linalg.norm(resumed["positions_a"][25] - resumed["positions_a"][24], axis=1).max()
    assert step < 0.2  # continued from the last frame (5 fs), not restarted
    # without a file the same run stays in memory, frame for frame (same seed, same calculator)
    in_memory = run_md(cell, calculator, **settings).trajectory
    assert in_memory["complete"] and in_memory["positions_a"].shape == trajectory["positions_a"].shape
    assert np.allclose(in_memory["positions_a"], trajectory["positions_a"], atol=1e-8)
    assert np.allclose(in_memory["potential_energy_ev"], trajectory["potential_energy_ev"], atol=1e-6)


@pytest.mark.slow
@pytest.mark.timeout(1500)  # 265 s alone; MD, a committee of 3, quenches: > 600 s beside other tests
def test_dynamics_stage_runs_every_composition_once(trained, tmp_path: Path) -> None:
    from capml_core.stages.disorder import run_disorder_scan
    from capml_core.stages.dynamics import run_dynamics
    from capml_core.stages.md_frames import sample_random_frames

    source, config, _, _ = trained
    project, store = project_copy(source, tmp_path)
    config = md_config(config, [100.0], duration_ps=0.1, equilibration_ps=0.02)
    run_disorder_scan(store, config, model_id=latest_model(store)[0])
    part = config.model_copy(update={"md": config.md.model_copy(update={"compositions": [0.0, 1.0]})})
    first = run_dynamics(store, part, model_id=latest_model(store)[0], scan_id=latest_scan_id(store))
    assert sorted(r.composition_x for r in first) == [0.0, 1.0]  # a study split in parts: these first
    levels = ["gpaw-pbesol", "gpaw-gllbsc"]  # the held-out draw of _held_out_frames_round_trip, in two parts
    drawn = sample_random_frames(store, config.md, model_id=latest_model(store)[0], levels=levels, per_run=2, seed=3)
    assert sorted({f.md_id for f in drawn}) == sorted(r.md_id for r in first) and len(drawn) == 4  # the first part's
    results = run_dynamics(store, config, model_id=latest_model(store)[0], scan_id=latest_scan_id(store))
    for r in first:  # the next part: the first part's trajectories are gone, their frames stay
        r.path.rename(r.path.with_suffix(".away"))
    more = sample_random_frames(store, config.md, model_id=latest_model(store)[0], levels=levels, per_run=2, seed=3)
    for r in first:
        r.path.with_suffix(".away").rename(r.path)
    assert [f.structure_hash for f in more[:4]] == [f.structure_hash for f in drawn] and len(more) == 10
    assert sorted({f.md_id for f in more}) == sorted(r.md_id for r in results)  # as one draw: the round trip below
    assert sorted(r.composition_x for r in results) == [0.0, 0.25, 0.5, 0.75, 1.0]
    assert {r.md_id for r in first} <= {r.md_id for r in results}  # the same runs, not repeated
    rows = store.query("SELECT * FROM md_runs ORDER BY composition_x")
    assert rows["complete"].all() and (rows["n_frames"] == 21).all() and (rows["n_steps"] == 100).all()
    assert rows["status"].isin(["ok", "warning"]).all() and (rows["decorrelation_fs"] >= 5.0).all()
    stamps = {r.md_id: r.path.stat().st_mtime_ns for r in results}
    assert all(stamps[r.md_id] == r.path.stat().st_mtime_ns for r in first)
    again = run_dynamics(store, config, model_id=latest_model(store)[0], scan_id=latest_scan_id(store))
    assert {r.md_id: r.path.stat().st_mtime_ns for r in again} == stamps  # nothing rerun
    _held_out_frames_round_trip(store, config, tmp_path)
    _uncertainty_round(store, config)
    _quenched_minima(store, config)
    _trainable_frames_keep_away(store, config)


def _trainable_frames_keep_away(store, config) -> None:
    """A trainable draw on runs with held-out frames: no frame within the separation, no DFT-checked run."""
    from capml_core.errors import DatasetError
    from capml_core.stages.md_frames import runs_of_other_compositions, sample_random_frames

    held = store.query("SELECT md_id, time_fs FROM md_frames WHERE held_out")
    skipped = str(held["md_id"].iloc[0])
    frames = sample_random_frames(
        store,
        config.md,
        model_id=latest_model(store)[0],
        levels=["gpaw-pbesol"],
        per_run=3,
        seed=4,
        set_name="al-round9",
        held_out=False,
        round_index=9,
        separation_fs=20.0,
        skip_md_ids=[skipped],
    )
    assert len(frames) == 3 * (held["md_id"].nunique() - 1) and skipped not in {f.md_id for f in frames}
    for f in frames:
        assert not f.held_out and f.round == 9
        times = held.loc[held["md_id"] == f.md_id, "time_fs"].to_numpy()
        assert times.size == 2 and np.abs(times - f.time_fs).min() >= 20.0  # 4 frames of 5 fs or more away
    # a draw limited to some compositions (--composition): the runs of the others are skipped, a missing one named
    model_id = latest_model(store)[0]
    others = runs_of_other_compositions(store, model_id, [0.5, 1.0])
    kept = store.query("SELECT md_id FROM md_runs WHERE complete AND composition_x IN (0.5, 1.0)")["md_id"].tolist()
    assert len(kept) == 2 and set(others).isdisjoint(kept) and len(others) == 3
    with pytest.raises(DatasetError, match=r"x = 0.3 has no complete MD run .* its runs have x = 0.0, 0.25"):
        runs_of_other_compositions(store, model_id, [0.3, 0.5])


def _quenched_minima(store, config) -> None:
    """MD frames quenched with MACE: a minimum per run, the cubic structure per composition, ranked against it."""
    from capml_core.stages.static_minima import lowest_minima, quench_md_frames

    model_id, scan_id = latest_model(store)[0], latest_scan_id(store)
    table = quench_md_frames(store, config, model_id=model_id, scan_id=scan_id)
    assert len(table) == 10 and sorted(table["source"].str.startswith("cubic")) == [False] * 5 + [True] * 5
    cubic = table[table["source"] == "cubic"]
    assert np.allclose(cubic["below_cubic_mev_per_atom"], 0.0)
    assert cubic.set_index("composition_x").loc[0.0, "space_group"] == "Pm-3m (221)"  # forces vanish by symmetry
    lowest = lowest_minima(store, model_id)
    assert lowest["composition_x"].tolist() == [0.0, 0.25, 0.5, 0.75, 1.0]
    assert (lowest["below_cubic_mev_per_atom"] <= 1e-9).all()
    assert store.query(
        "SELECT DISTINCT kind FROM structures WHERE structure_hash IN (SELECT unnest(?))",
        [table["structure_hash"].tolist()],
    )["kind"].tolist() == ["relaxed"]
    moved = store.project_dir / store.query("SELECT path FROM md_runs WHERE composition_x = 0.5")["path"][0]
    moved.rename(moved.with_suffix(".away"))  # a run quenched before: its trajectory is not read again
    again = quench_md_frames(store, config, model_id=model_id, scan_id=scan_id)
    moved.with_suffix(".away").rename(moved)
    assert again["created_at"].tolist() == table["created_at"].tolist()  # nothing relaxed twice
    # the stored MD frames (held-out, rounds') of one composition as further sources
    stored = store.query("SELECT structure_hash FROM md_frames WHERE composition_x = 1.0")["structure_hash"]
    assert len(stored) >= 1
    more = quench_md_frames(store, config, model_id=model_id, scan_id=scan_id, compositions=[1.0], stored_frames=True)
    added = more[~more["source"].isin(table["source"])]
    assert sorted(added["source"]) == sorted(f"md-frame {h}" for h in stored)
    assert (added["composition_x"] == 1.0).all() and np.isfinite(added["below_cubic_mev_per_atom"]).all()
    from typer.testing import CliRunner

    from flows.cli import app

    shown = CliRunner().invoke(app, ["static", "show", "-c", str(DEMO_CONFIG), "-p", str(store.project_dir)])
    assert shown.exit_code == 0 and "Pm-3m (221)" in shown.output and "x = 1.000: lowest" in shown.output


def _uncertainty_round(store, config) -> None:
    """A committee of 3 tiny MACE models on the MD frames: disagreement stored per frame, a round of frames
    chosen by it (never a held-out frame), labelled sets at both levels, and the round measured on the held-out
    frames (MACE labels 10 meV/atom off: the energy target is missed)."""
    from capml_core.config.stage_sections import ActiveLearningSection
    from capml_core.stages.md_frames import read_frame_pool
    from capml_core.stages.mlip import committee_ids, train_committee
    from capml_core.stages.rounds import record_round, rounds_table
    from capml_core.stages.uncertainty import evaluate_uncertainty, select_round

    model_id = latest_model(store)[0]
    mlip = config.mlip.model_copy(update={"committee_size": 3})
    members = train_committee(
        store, mlip, level="gpaw-pbesol", species=config.system.allowed_species(), primary_id=model_id
    )
    assert len(set(members)) == 3 and committee_ids(store, model_id) == members
    assert latest_model(store)[0] == model_id  # members are never the model the stages use
    al = ActiveLearningSection(frames_per_round=3, uncertainty_stride_fs=20.0, candidate_factor=2.0)
    config = config.model_copy(update={"active_learning": al})
    evaluation = evaluate_uncertainty(store, config, model_id=model_id, ensemble_id=None)
    frames = evaluation.frames
    assert len(frames) == 5 * 5  # production 20-100 fs of 5 runs, every 20 fs
    assert (frames["energy_std_mev_per_atom"] > 0).all() and (frames["force_std_max_ev_per_a"] > 0).all()
    assert frames["gap_std_ev"].isna().all() and (frames["committee_size"] == 3).all()
    again = evaluate_uncertainty(store, config, model_id=model_id, ensemble_id=None)
    assert again.uncertainty_id == evaluation.uncertainty_id and len(again.frames) == len(frames)
    held_out = set(store.query("SELECT structure_hash FROM md_frames WHERE held_out")["structure_hash"])
    levels = ["gpaw-pbesol", "gpaw-gllbsc"]
    chosen = select_round(store, config, uncertainty_id=evaluation.uncertainty_id, round_index=1, levels=levels)
    assert len(chosen) == 3 and not held_out & {f.structure_hash for f in chosen}
    assert all(f.selection == "uncertainty" and f.round == 1 and not f.held_out for f in chosen)
    for level in levels:
        assert sorted(store.pending_labels(level, set_name=f"al-round1@{level}")) == sorted(
            f.structure_hash for f in chosen
        )
    scores = frames["force_std_max_ev_per_a"] / frames["force_std_max_ev_per_a"].median()
    energy_scores = frames["energy_std_mev_per_atom"] / frames["energy_std_mev_per_atom"].median()
    best = frames.loc[np.maximum(scores, energy_scores).idxmax()]  # the most uncertain frame is always chosen
    assert (best.md_id, best.frame) in {(f.md_id, f.frame) for f in chosen}
    assert [
        f.structure_hash
        for f in select_round(store, config, uncertainty_id=evaluation.uncertainty_id, round_index=1, levels=levels)
    ] == [f.structure_hash for f in chosen]  # resumed, not redrawn
    row = record_round(store, config, round_index=0, model_id=model_id, ensemble_id=None)
    assert row["mace_energy_mae_mev_per_atom"] == pytest.approx(10.0, abs=1e-6) and row["n_heldout_cheap"] == 10
    assert row["frames_added"] == 0 and row["targets_met"] is False and row["gnn_high_mae_ev"] is None
    stored = json.loads(row["targets_json"])  # which targets, and the limits they were judged by (the dashboard's)
    assert stored["mace_energy"] is False and stored["gnn_high_mae"] is None  # 10 meV/atom > 5; no GNN measured
    assert stored["limits"]["mace_energy_mae_mev_per_atom"] == config.active_learning.target_energy_mae_mev_per_atom
    assert "10.0" in rounds_table(store, config).rows[0][5]
    from typer.testing import CliRunner

    from flows.cli import app

    runner, project = CliRunner(), ["-c", str(DEMO_CONFIG), "-p", str(store.project_dir)]
    shown = runner.invoke(app, ["al", "rounds", *project])
    assert shown.exit_code == 0 and "active-learning rounds" in shown.output and "targets:" in shown.output
    refused = runner.invoke(app, ["al", "select", "--round", "0", *project])
    assert refused.exit_code != 0 and "frames are added from round 1 on" in refused.output
    pool = store.project_dir / "round1-pool.extxyz"  # the round's frames for another machine (restore-frames)
    written = runner.invoke(app, ["al", "select", "--round", "1", "--pool", str(pool), *project])
    assert written.exit_code == 0, written.output
    assert [f.structure_hash for f in read_frame_pool(pool)] == [f.structure_hash for f in chosen]


def _held_out_frames_round_trip(store, config, tmp_path: Path) -> None:
    """Frames drawn at random from production MD, a pool file, a new store, labels exported and imported: the
    provenance survives and held-out frames never enter a training set."""
    from capml_core.config.inputs import ImportSpec
    from capml_core.stages.datasets import export_labelled_extxyz, import_spec
    from capml_core.stages.md_frames import read_frame_pool, restore_frame_pool, sample_random_frames, write_frame_pool
    from capml_core.store.database import Store
    from capml_core.store.records import LabelRecord

    levels = ["gpaw-pbesol", "gpaw-gllbsc"]
    frames = sample_random_frames(store, config.md, model_id=latest_model(store)[0], levels=levels, per_run=2, seed=3)
    assert len(frames) == 10 and len({f.structure_hash for f in frames}) == 10
    assert all(f.time_fs >= 20.0 and f.held_out and f.selection == "random" for f in frames)  # production only
    assert [
        f.structure_hash
        for f in sample_random_frames(
            store, config.md, model_id=latest_model(store)[0], levels=levels, per_run=2, seed=9
        )
    ] == [f.structure_hash for f in frames]  # a stored draw is reused, not redrawn
    assert store.pending_labels("gpaw-gllbsc", set_name="md-heldout@gpaw-gllbsc") == [f.structure_hash for f in frames]
    _evaluate_measures_known_offsets(store, frames)
    pool = write_frame_pool(frames, tmp_path / "pool.extxyz")
    assert [f.structure_hash for f in read_frame_pool(tmp_path / "pool.extxyz")] == [f.structure_hash for f in frames]
    fresh = Store(tmp_path / "fresh")
    assert restore_frame_pool(fresh, tmp_path / "pool.extxyz", levels=levels) == pool == 10
    columns = "structure_hash, md_id, frame, time_fs, temperature_k, model_id, held_out"
    assert fresh.query(f"SELECT {columns} FROM md_frames ORDER BY 1").equals(
        store.query(f"SELECT {columns} FROM md_frames ORDER BY 1")
    )
    gaps = [
        LabelRecord(f.structure_hash, "gpaw-gllbsc", gap_ev=1.0 + 0.01 * i, wall_time_s=100.0 + i)
        for i, f in enumerate(frames)
    ]
    with fresh.write() as writer:
        writer.add_labels(gaps, run_id=None)
    assert fresh.labelled_gaps("gpaw-gllbsc").empty  # labelled, but held out: no training set sees them
    exported = tmp_path / "heldout-gllbsc.extxyz"
    assert export_labelled_extxyz(fresh, exported, level="gpaw-gllbsc", set_name="md-heldout@gpaw-gllbsc") == 10
    third = Store(tmp_path / "third")
    spec = ImportSpec.model_validate(
        {"path": exported, "level": "gpaw-gllbsc", "labels": ["gap"], "key_prefix": "REF"},
        context={"base_dir": tmp_path},
    )
    import_spec(third, spec, config.system)
    kinds = third.query("SELECT DISTINCT kind FROM structures")["kind"].tolist()
    assert kinds == ["md-frame"] and third.query("SELECT bool_and(held_out) AS h FROM md_frames")["h"][0]
    assert third.labelled_gaps("gpaw-gllbsc").empty
    cost = third.query("SELECT count(*) AS n, sum(wall_time_s) AS s FROM labels").iloc[0]
    assert cost["n"] == 10 and cost["s"] == pytest.approx(1045.0)  # the DFT cost travels with the labels


def _evaluate_measures_known_offsets(store, frames) -> None:
    """`capml evaluate` on frames whose 'DFT' labels are the MACE model's own values shifted by known amounts."""
    import json

    from typer.testing import CliRunner

    from capml_core.models.mace import load_mace_calculator
    from capml_core.store.queries import latest_model
    from capml_core.store.records import LabelRecord
    from flows.cli import app

    _, path = latest_model(store)
    calculator = load_mace_calculator(path, device="cpu", dtype="float64")
    labels = []
    for f in frames:
        atoms = f.atoms.copy()
        atoms.calc = calculator
        energy = atoms.get_potential_energy() + 0.010 * len(atoms)  # DFT 10 meV/atom above the model
        forces = atoms.get_forces() - 0.02  # every component 0.02 eV/Å below
        labels.append(LabelRecord(f.structure_hash, "gpaw-pbesol", energy_ev=energy, forces_ev_per_a=forces))
    with store.write() as writer:
        writer.add_labels(labels, run_id=None)
    result = CliRunner().invoke(app, ["evaluate", "-c", str(DEMO_CONFIG), "-p", str(store.project_dir), "--json"])
    assert result.exit_code == 0, result.output
    errors = {row["quantity"]: row for row in json.loads(result.stdout)}
    assert errors["energy"]["n"] == 10 and errors["energy"]["unit"] == "meV/atom"
    assert errors["energy"]["mean_error"] == pytest.approx(-10.0, abs=1e-6)
    assert errors["energy"]["mae"] == pytest.approx(10.0, abs=1e-6)
    assert errors["forces"]["mean_error"] == pytest.approx(0.02, abs=1e-9) and errors["forces"]["n"] == 10 * 40 * 3
    kept = store.query(  # per frame, for the dashboard's parity on held-out MD frames
        "SELECT * FROM mlip_predictions WHERE split = 'md-heldout' ORDER BY structure_hash"
    )
    assert sorted(kept["structure_hash"]) == sorted(f.structure_hash for f in frames)
    offsets = kept["energy_predicted_ev_per_atom"] - kept["energy_reference_ev_per_atom"]
    assert np.allclose(offsets, -0.010, atol=1e-9) and kept["stress_reference_ev_per_a3"].isna().all()
    again = CliRunner().invoke(app, ["evaluate", "-c", str(DEMO_CONFIG), "-p", str(store.project_dir)])
    assert again.exit_code == 0, again.output
    assert len(store.query("SELECT 1 FROM mlip_predictions WHERE split = 'md-heldout'")) == 10  # replaced, not added
