"""Active learning: MD frames outside the training data's contact distances are selected, labelled, trained on."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from tests.conftest import DATASETS, DEMO_CONFIG, TINY, project_copy


def _brute_shortest(atoms, cutoff: float = 4.0) -> dict[tuple[str, str], float]:
    """Shortest distance per species pair by minimum image over all pairs (valid for cells > 2 x cutoff)."""
    distances = atoms.get_all_distances(mic=True)
    symbols = atoms.get_chemical_symbols()
    out: dict[tuple[str, str], float] = {}
    for i in range(len(atoms)):
        for j in range(i + 1, len(atoms)):
            pair = tuple(sorted((symbols[i], symbols[j])))
            if distances[i, j] < cutoff and distances[i, j] < out.get(pair, np.inf):
                out[pair] = float(distances[i, j])
    return out


def _cell():  # Atoms
    from capml_core.config.loading import load_config
    from capml_core.stages.training_sets import end_member_cell

    cell = end_member_cell(load_config(DEMO_CONFIG).config.system, "Br")
    cell.rattle(0.15, seed=3)
    return cell


def test_shortest_distances_match_a_minimum_image_search() -> None:
    from capml_core.stages.active_learning import shortest_distances

    cell = _cell()
    found, expected = shortest_distances(cell), _brute_shortest(cell)
    assert set(found) == set(expected) and {("Ag", "S"), ("Ag", "Br"), ("Ag", "Ag")} <= set(found)
    for pair, distance in expected.items():
        assert found[pair] == pytest.approx(distance, abs=1e-9)


def test_the_first_frames_that_leave_the_training_contacts_are_selected() -> None:
    from capml_core.stages.active_learning import select_frames, shortest_distances

    cell = _cell()
    reference = shortest_distances(cell)
    s_index = cell.get_chemical_symbols().index("S")
    neighbours = np.argsort(cell.get_distances(s_index, range(len(cell)), mic=True))
    ag = int(next(i for i in neighbours if cell[i].symbol == "Ag"))
    start = cell.get_distance(s_index, ag, mic=True)
    vector = cell.get_distance(s_index, ag, mic=True, vector=True) / start
    positions = []
    for k in range(40):  # the S atom walks towards its nearest Ag, 0.02 Å per 10 fs frame
        frame = cell.positions.copy()
        frame[s_index] += vector * 0.02 * k
        positions.append(frame)
    trajectory = {
        "time_fs": np.arange(40) * 10.0,
        "positions_a": np.array(positions),
        "numbers": cell.numbers,
        "cell_a": cell.cell[:],
    }
    threshold = 0.9 * reference[("Ag", "S")]
    first = int(np.argmax([start - 0.02 * k < threshold for k in range(40)]))
    chosen = select_frames(trajectory, reference, distance_fraction=0.9, max_frames=2, min_separation_fs=50.0)
    assert [c[0] for c in chosen] == [first, first + 5]  # the first one out, then 50 fs later
    assert all(pair == ("Ag", "S") and d < threshold for _, pair, d in chosen)
    assert select_frames(trajectory, reference, distance_fraction=0.5, max_frames=2, min_separation_fs=0.0) == []


def _mlip_page() -> None:
    from dashboard.views.mlip import render_mlip

    render_mlip()


@pytest.mark.slow
@pytest.mark.timeout(1500)
def test_a_round_labels_the_selected_frames_retrains_mace_and_reruns_md(trained, tmp_path: Path, monkeypatch) -> None:
    """x = 1 only, hot MD with the tiny MACE, one GPAW PBEsol label per run (250 eV): one real round."""
    from prefect.testing.utilities import prefect_test_harness

    from capml_core.physics.md import read_trajectory, trajectory_frame
    from capml_core.stages.active_learning import training_contact_distances
    from flows.pipeline import pipeline

    source, _, _, _ = trained
    project, store = project_copy(source, tmp_path)
    overrides = {
        **{f"mlip.{key}": value for key, value in TINY.items()},
        "system.compositions": [1.0],
        "md.temperatures_k": [900.0],
        "md.duration_ps": 0.4,
        "md.equilibration_ps": 0.05,
        "active_learning.rounds": 1,
        "active_learning.distance_fraction": 1.0,
        "active_learning.max_frames_per_run": 1,
        "reference.gpaw_pbesol.cutoff_ev": 250.0,
        "reference.max_calculations": 0,
    }
    models_before = store.query("SELECT model_id FROM mlip_models")["model_id"].tolist()
    reference = training_contact_distances(store, "gpaw-pbesol")
    stages = ["mlip", "disorder", "dynamics", "active-learning"]
    with prefect_test_harness(server_startup_timeout=120):
        first = pipeline(config_path=str(DEMO_CONFIG), project_dir=str(project), stages=stages, overrides=overrides)
        rounds = first["active_learning"]
        assert len(rounds) == 1 and rounds[0]["selected"] == rounds[0]["labelled"] == 1
        frames = store.query("SELECT * FROM active_learning_frames")
        assert len(frames) == 1 and frames["round"].tolist() == [1]
        row = frames.iloc[0]
        run = store.query("SELECT * FROM md_runs WHERE md_id = ?", [row["md_id"]]).iloc[0]
        trajectory = read_trajectory(project / run["path"])
        ratios = []
        for frame in range(int(row["frame"]) + 1):  # the selected frame is the first one outside the data
            distances = _brute_shortest(trajectory_frame(trajectory, frame))
            ratios.append(min(d / reference.get(pair, 4.0) for pair, d in distances.items()))
        assert ratios[-1] < 1.0 and min(ratios[:-1], default=1.0) >= 1.0
        label = store.query(
            "SELECT status, energy_ev, gap_ev FROM labels WHERE structure_hash = ? AND level = 'gpaw-pbesol'",
            [row["structure_hash"]],
        )
        assert label["status"].tolist() == ["ok"] and np.isfinite(label["energy_ev"][0])
        assert store.query("SELECT kind FROM structures WHERE structure_hash = ?", [row["structure_hash"]])[
            "kind"
        ].tolist() == ["md-snapshot"]
        models = store.query("SELECT model_id, n_train, n_valid, n_test FROM mlip_models ORDER BY created_at")
        new = models.iloc[-1]
        assert new["model_id"] == rounds[0]["model_id"] and new["model_id"] not in models_before
        old = models.set_index("model_id").loc[first["mlip"]["model_id"]]
        assert new["n_train"] == old["n_train"] + 1  # the selected frame always goes to training
        assert (new["n_valid"], new["n_test"]) == (old["n_valid"], old["n_test"])
        md = store.query("SELECT model_id, complete FROM md_runs WHERE model_id = ?", [new["model_id"]])
        assert md["complete"].tolist() == [True]  # the MD redone with the retrained model
        # the round is done: running the stage again selects, labels and trains nothing
        n_labels = store.query("SELECT count(*) AS n FROM labels")["n"][0]
        again = pipeline(
            config_path=str(DEMO_CONFIG), project_dir=str(project), stages=["active-learning"], overrides=overrides
        )
    assert again["active_learning"] == []
    # the Interatomic potential page lists the round and its frame
    import streamlit as st
    from streamlit.testing.v1 import AppTest

    monkeypatch.setenv("CAPML_PROJECT_DIR", str(project))
    st.cache_data.clear()
    at = AppTest.from_function(_mlip_page, default_timeout=60).run()
    assert not at.exception
    assert any("Active learning" in h.value for h in at.subheader)
    rounds = next(d.value for d in at.dataframe if "labelled" in d.value.columns)
    assert rounds[["round", "frames", "labelled"]].values.tolist() == [[1, 1, 1]] and rounds["closest"][0] < 1.0
    assert store.query("SELECT count(*) AS n FROM labels")["n"][0] == n_labels
    assert len(store.query("SELECT * FROM active_learning_frames")) == 1


def test_rounds_travel_as_a_checked_csv_file(tmp_path: Path) -> None:
    """A project's rounds exported and imported into a new store are the same rows; a bad file writes nothing."""
    from capml_core.errors import InvalidInputError
    from capml_core.stages.rounds import ROUND_COLUMNS, export_rounds, import_rounds
    from capml_core.store.database import Store

    written = tmp_path / "rounds.csv"
    written.write_text(
        "round,model_id,frames_added,frames_total,dft_calls,dft_failed,dft_cpu_h,mace_force_mae_ev_per_a,"
        "gnn_high_mae_ev,targets_met\n"
        "0,mace-a,0,0,0,0,0,0.077,0.539,false\n"
        "1,mace-b,24,24,48,0,4.44,0.071,0.099,False\n"
    )
    first = Store(tmp_path / "first")
    assert import_rounds(first, written) == 2
    rows = first.query("SELECT * FROM active_learning_rounds ORDER BY round")
    assert rows["dft_cpu_h"].tolist() == [0.0, 4.44] and rows["gnn_high_mae_ev"].tolist() == [0.539, 0.099]
    assert rows["training_cpu_h"].isna().all() and not rows["targets_met"].any()
    assert import_rounds(first, written) == 2 and len(first.query("SELECT * FROM active_learning_rounds")) == 2
    exported = tmp_path / "exported.csv"
    assert export_rounds(first, exported) == 2
    assert exported.read_text().splitlines()[0] == ",".join(ROUND_COLUMNS)
    second = Store(tmp_path / "second")
    import_rounds(second, exported)
    columns = ", ".join(ROUND_COLUMNS)
    again = second.query(f"SELECT {columns} FROM active_learning_rounds ORDER BY round")
    assert again.equals(first.query(f"SELECT {columns} FROM active_learning_rounds ORDER BY round"))
    for line, message in (
        ("2,mace-c,24,48,48,0,lots,0.07,0.09,false", "column dft_cpu_h: 'lots' is not a number"),
        ("2,mace-c,-1,48,48,0,1.0,0.07,0.09,false", "column frames_added: '-1' is not a whole number >= 0"),
        ("2,,24,48,48,0,1.0,0.07,0.09,false", "column model_id: '' is not a model id"),
        ("2,mace-c,24,48,48,0,1.0,0.07,0.09,maybe", "column targets_met: 'maybe' is not true or false"),
    ):
        bad = tmp_path / "bad.csv"
        bad.write_text(written.read_text() + line + "\n")
        with pytest.raises(InvalidInputError, match=f"line 4, {message}"):
            import_rounds(second, bad)
    bad.write_text("round,model_id,__import__\n0,x,os\n")
    with pytest.raises(InvalidInputError, match="columns __import__ unknown"):
        import_rounds(second, bad)
    assert len(second.query("SELECT * FROM active_learning_rounds")) == 2  # nothing written by a refused file


def test_a_rounds_cost_comes_from_its_frames_also_when_its_files_were_imported(tmp_path: Path) -> None:
    """Round 3's shipped files imported into a new store: 24 frames, 48 DFT calls and their CPU hours, as labelled."""
    from ase.io import read

    from capml_core.config.inputs import LabelKeys
    from capml_core.stages.datasets import import_labelled_dataset
    from capml_core.stages.rounds import round_costs
    from capml_core.store.database import Store

    store = Store(tmp_path / "imported")
    files = {
        "gpaw-pbesol": (DATASETS / "capml-md-al-round3-gpaw-pbesol.extxyz", LabelKeys.build(prefix="REF")),
        "gpaw-gllbsc": (
            DATASETS / "capml-md-al-round3-gpaw-gllbsc.extxyz",
            LabelKeys.build(labels=("gap",), prefix="REF"),
        ),
    }
    seconds = 0.0
    for level, (path, keys) in files.items():
        import_labelled_dataset(store, path, level=level, keys=keys)
        seconds += sum(float(a.info["wall_time_s"]) for a in read(path, ":"))
    costs = round_costs(store, 3, list(files))
    assert (costs["frames_added"], costs["frames_total"], costs["dft_calls"], costs["dft_failed"]) == (24, 24, 48, 0)
    assert costs["dft_cpu_h"] == pytest.approx(seconds / 3600.0) and 1.0 < costs["dft_cpu_h"] < 3.0
    assert round_costs(store, 2, list(files))["dft_calls"] == 0  # another round's frames are not in this store


def test_trainable_frames_keep_away_from_the_frames_measured_on_and_held_out_ones_from_the_trained(
    tmp_path: Path,
) -> None:
    """A frame trained on within the gap's correlation time of a held-out or DFT-checked frame of the same run
    makes that measurement optimistic: draws keep a separation, on both sides of the line, per run."""
    from capml_core.stages.md_frames import draw_random_frames, frames_apart, frames_to_avoid
    from capml_core.store.database import Store

    rng = np.random.default_rng(1)
    draws = np.array([draw_random_frames(np.arange(100, 200), 4, rng) for _ in range(2000)])
    assert all((draws[:, k] // 25 == 4 + k).all() for k in range(4))  # one frame per quarter of the candidates
    counts = np.bincount(draws.ravel() - 100, minlength=100)
    assert counts.min() > 40 and counts.max() < 120  # each frame drawn about 8000 / 100 = 80 times
    assert draw_random_frames(np.array([7, 3, 5]), 4, rng).tolist() == [3, 5, 7]  # fewer candidates: all

    times = np.arange(11) * 500.0  # frames every 0.5 ps, 0-5 ps
    kept = frames_apart(np.arange(2, 11), times, [2000.0], separation_fs=1000.0)
    assert kept.tolist() == [2, 6, 7, 8, 9, 10]  # 1.5-2.5 ps gone: within 1 ps of the frame at 2 ps
    assert frames_apart(np.arange(2, 11), times, [2000.0, 4500.0], 1000.0).tolist() == [2, 6, 7]  # 1 ps: kept
    assert frames_apart(np.arange(2, 11), times, [2000.0], 0.0).tolist() == list(range(2, 11))  # no separation
    assert frames_apart(np.arange(2, 11), times, [], 1000.0).tolist() == list(range(2, 11))

    store = Store(tmp_path / "p")
    store.initialise()
    frame = {"composition_x": 1.0, "temperature_k": 300.0, "model_id": "mace-x", "selection": "random", "round": 0}
    with store.write() as writer:
        writer.add_rows(
            "md_frames",
            [
                {**frame, "structure_hash": "h1", "md_id": "md-a", "frame": 4, "time_fs": 2000.0, "held_out": True},
                {**frame, "structure_hash": "h2", "md_id": "md-a", "frame": 8, "time_fs": 4000.0, "held_out": False},
                {**frame, "structure_hash": "h3", "md_id": "md-b", "frame": 2, "time_fs": 1000.0, "held_out": True},
            ],
        )
        writer.add_rows(
            "gap_dft_frames",
            [
                {
                    "md_id": "md-a",
                    "ensemble_id": "e",
                    "frame": 9,
                    "time_fs": 4500.0,
                    "structure_hash": "h4",
                    "level": "gpaw-gllbsc",
                    "model_gap_ev": 1.2,
                    "dft_gap_ev": 1.1,
                },
            ],
        )
    assert frames_to_avoid(store, ["md-a", "md-b"], held_out=False) == {"md-a": [2000.0, 4500.0], "md-b": [1000.0]}
    assert frames_to_avoid(store, ["md-a", "md-b"], held_out=True) == {"md-a": [4000.0]}
    assert frames_to_avoid(store, [], held_out=False) == {}
