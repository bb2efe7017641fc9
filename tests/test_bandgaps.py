"""Finite-temperature gaps: block-averaging errors, ensemble uncertainties, published data, and the stages.

The stage tests run on the tiny MACE of conftest's ``trained`` fixture with a small GNN ensemble trained here;
the phonon verdicts that gate the stage are written directly (DynaPhoPy is tested in test_anharmonic.py).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from capml_core.errors import InvalidInputError
from capml_core.physics.statistics import average_gaps, integrated_autocorrelation_time, series_mean
from capml_core.stages.bandgaps import PUBLISHED_COLUMNS, load_published_gaps
from capml_core.store.database import Store
from capml_core.store.queries import latest_model, latest_scan_id
from tests.conftest import REPO, md_config, project_copy


def _ar1(n: int, rho: float, rng: np.random.Generator) -> np.ndarray:
    noise = rng.normal(size=n)
    x = np.empty(n)
    x[0] = noise[0] / np.sqrt(1 - rho**2)
    for i in range(1, n):
        x[i] = rho * x[i - 1] + noise[i]
    return x * np.sqrt(1 - rho**2)  # unit variance


def test_error_bars_of_correlated_series_cover_the_true_mean_68_percent_of_the_time() -> None:
    """AR(1) series of known tau (19 and 9 frames), long enough for blocking and too short for it: the 1-sigma
    bar holds the true mean (0) in about 68 % of 300 repeats either way; the naive error would hold it in ~25 %."""
    rng = np.random.default_rng(11)
    for n, rho, method in ((4096, 0.9, "blocking"), (120, 0.8, "inflated"), (40, 0.8, "inflated")):
        results = [series_mean(_ar1(n, rho, rng)) for _ in range(300)]
        assert sum(r.method == method for r in results) >= 290
        coverage = np.mean([abs(r.mean) <= r.error for r in results])
        assert 0.60 <= coverage <= 0.78, (n, rho, coverage)  # measured: 0.67, 0.74, 0.74
        true_tau = (1 + rho) / (1 - rho)
        assert np.median([r.tau for r in results]) == pytest.approx(true_tau, rel=0.15)
        assert np.mean([r.equilibrated() for r in results]) >= 0.9  # stationary: the halves agree (2 sigma)
    long = _ar1(2**14, 0.9, rng)
    assert integrated_autocorrelation_time(long) == pytest.approx(19.0, rel=0.3)  # emcee's; its own error ~15 %
    assert series_mean(long).error == pytest.approx(np.sqrt(19.0 / 2**14), rel=0.3)  # pyblock's plateau
    white = rng.normal(size=2000)
    assert series_mean(white).tau == pytest.approx(1.0, abs=0.15)
    assert series_mean(white).error == pytest.approx(1 / np.sqrt(2000), rel=0.2)
    drifting = _ar1(400, 0.5, rng) + np.linspace(0.0, 2.0, 400)  # a run still relaxing: the halves differ
    found = series_mean(drifting)
    assert found.half_difference == pytest.approx(1.0, abs=0.4) and not found.equilibrated()  # error ~0.17
    single = series_mean(np.array([1.3]))
    assert single.mean == 1.3 and np.isnan(single.error) and single.method == "single"


def test_average_gaps_separates_statistics_and_model_spread() -> None:
    rng = np.random.default_rng(3)
    series = 1.2 + 0.05 * rng.normal(size=64)
    # two models that differ by a constant offset of ±0.1 eV at every structure, static included
    gaps = np.vstack([series + 0.1, series - 0.1])
    static = np.array([1.5 + 0.1, 1.5 - 0.1])
    average = average_gaps(gaps, static)
    assert average.n_snapshots == 64
    assert average.mean_gap_ev == pytest.approx(series.mean())
    assert average.static_gap_ev == pytest.approx(1.5)
    assert average.delta_ev == pytest.approx(series.mean() - 1.5)
    assert average.relative_change == pytest.approx((series.mean() - 1.5) / 1.5)
    assert average.model_error_ev == pytest.approx(np.std([0.1, -0.1], ddof=1))  # the offsets spread <Eg> ...
    assert average.delta_error_ev == pytest.approx(average.statistical_error_ev)  # ... but cancel in ΔEg
    assert average.statistical_error_ev == pytest.approx(0.05 / 8, rel=0.35)
    assert average.error_ev == pytest.approx(np.hypot(average.statistical_error_ev, average.model_error_ev))
    one_model = average_gaps(series[None, :], np.array([1.5]))
    assert one_model.model_error_ev == 0.0
    with pytest.raises(InvalidInputError, match="2 models x 64 snapshots vs 1 static"):
        average_gaps(gaps, np.array([1.5]))


def test_bundled_table_one_loads() -> None:
    frame = load_published_gaps(REPO / "data" / "experiment" / "ag3sbri-table1.csv")
    assert list(frame.columns) == list(PUBLISHED_COLUMNS)
    measured = frame[frame["kind"] == "experiment"]
    assert len(measured) == 6 and set(measured["temperature_k"]) == {300.0}
    assert sorted(set(measured["composition_x"])) == [0.0, 0.3, 0.5, 0.7, 1.0]
    paper = frame[frame["kind"] == "calculation"]
    assert paper.query("temperature_k == 0 and composition_x == 1.0")["gap_ev"].item() == 1.8


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (
            "composition_x,temperature_k,gap_ev,kind,source\n0,300,1,experiment,a\n",
            r"missing column\(s\) \['uncertainty_ev'\]",
        ),
        (
            ",".join(PUBLISHED_COLUMNS) + "\n0,300,wide,0.1,experiment,a\n",
            "row 1, column gap_ev = 'wide': not a number",
        ),
        (
            ",".join(PUBLISHED_COLUMNS) + "\n0,300,1,0.1,experiment,a\n1.5,300,1,0.1,experiment,b\n",
            "row 2, column composition_x = 1.5; allowed: 0 to 1",
        ),
        (
            ",".join(PUBLISHED_COLUMNS) + "\n0,300,1,0.1,guess,a\n",
            "row 1, column kind = 'guess'; allowed: experiment, calculation",
        ),
    ],
)
def test_bad_published_gaps_are_refused(tmp_path: Path, body: str, message: str) -> None:
    path = tmp_path / "gaps.csv"
    path.write_text(body)
    with pytest.raises(InvalidInputError, match=message) as err:
        load_published_gaps(path)
    assert "gaps.csv" in str(err.value)


def test_a_composition_whose_eg_t_is_checked_gets_its_eg0_in_dft_too() -> None:
    """The checked ΔEg/Eg needs a DFT Eg(0): gaps.dft_check's compositions join gaps.reference_compositions."""
    from capml_core.config.loading import load_config
    from capml_core.config.stage_sections import GapDFTCheck
    from tests.conftest import DEMO_CONFIG

    config = load_config(DEMO_CONFIG).config  # reference_compositions = [], no checks
    assert not any(config.has_eg0_dft(x) for x in config.system.compositions)
    checks = [GapDFTCheck(composition_x=0.5, temperatures_k=[300.0], frames=4)]
    checked = config.model_copy(update={"gaps": config.gaps.model_copy(update={"dft_check": checks})})
    assert [x for x in config.system.compositions if checked.has_eg0_dft(x)] == [0.5]
    ends = config.model_copy(update={"gaps": config.gaps.model_copy(update={"reference_compositions": None})})
    assert [x for x in config.system.compositions if ends.has_eg0_dft(x)] == [0.0, 1.0]


def test_reference_compositions_must_be_studied(tmp_path: Path) -> None:
    from capml_core.config.loading import load_config
    from capml_core.errors import ConfigError
    from tests.conftest import DEMO_CONFIG

    text = (
        DEMO_CONFIG.read_text()
        .replace('"../', f'"{REPO}/data/')
        .replace("reference_compositions = []", "reference_compositions = [0.3]")
    )
    path = tmp_path / "bad.toml"
    path.write_text(text)
    with pytest.raises(
        ConfigError, match=r"field .gaps.reference_compositions. = \[0.3\]: \[0.3\] not studied by the run"
    ):
        load_config(path)
    base = DEMO_CONFIG.read_text().replace('"../', f'"{REPO}/data/')
    for check, message in (
        ("composition_x = 0.3\ntemperatures_k = [300.0]", r"gaps.dft_check\[0\].composition_x' = 0.3: 0.3 not studied"),
        ("composition_x = 1.0\ntemperatures_k = [450.0]", r"temperatures_k' = \[450.0\]: \[450.0\] are not MD"),
        ("composition_x = 1.0\ntemperatures_k = [300.0]\nframes = 1", r"frames.* = 1: .*greater than or equal to 2"),
    ):
        path.write_text(base + "\n[[gaps.dft_check]]\n" + check + "\n")
        with pytest.raises(ConfigError, match=message):
            load_config(path)
    path.write_text(base + "\n[[gaps.dft_check]]\ncomposition_x = 1.0\ntemperatures_k = [300.0]\n")
    assert load_config(path).config.dft_check_frames(1.0, 300.0) == 6  # the default count


def test_special_displacements_go_to_dft_only_at_the_configured_compositions_and_temperatures() -> None:
    from capml_core.config.loading import load_config
    from capml_core.stages.estimates import _estimated_with_dft

    config = load_config(REPO / "data" / "configs" / "ag3sbri-study.toml").config
    assert config.gaps.estimate_dft and config.gaps.estimate_dft_temperatures_k == [100.0, 300.0, 600.0]
    assert _estimated_with_dft(config, 1.0, 300.0) and _estimated_with_dft(config, 0.0, 600.0)
    assert not _estimated_with_dft(config, 1.0, 200.0)  # the model's estimate only
    assert not _estimated_with_dft(config, 0.5, 300.0)  # not a reference composition
    every = config.model_copy(update={"gaps": config.gaps.model_copy(update={"estimate_dft_temperatures_k": None})})
    assert _estimated_with_dft(every, 1.0, 200.0)
    off = config.model_copy(update={"gaps": config.gaps.model_copy(update={"estimate_dft": False})})
    assert not _estimated_with_dft(off, 1.0, 300.0)


# ------------------------------------------------------------------------------------------- the stages
@pytest.fixture(scope="module")
def gap_project(trained, tmp_path_factory: pytest.TempPathFactory):  # (project, config)
    """Tiny MACE → disorder scan → 0.3 ps MD at 50 and 100 K → a 2-model GNN: what the gap stages start from."""
    from capml_core.config.stage_sections import GNNSection
    from capml_core.stages.disorder import run_disorder_scan
    from capml_core.stages.dynamics import run_dynamics
    from capml_core.stages.gnn_training import train_two_stage

    source, config, _, _ = trained
    project, store = project_copy(source, tmp_path_factory.mktemp("gaps"))
    config = md_config(config, [50.0, 100.0], duration_ps=0.3, equilibration_ps=0.05)
    run_disorder_scan(store, config, model_id=latest_model(store)[0])
    run_dynamics(store, config, model_id=latest_model(store)[0], scan_id=latest_scan_id(store))
    gnn = GNNSection(epochs=8, fine_tune_epochs=4, batch_size=16, ensemble_size=2, learning_curve_fractions=[])
    train_two_stage(store, gnn, cheap_level="gpaw-pbesol", high_level="gpaw-gllbsc", seed=1)
    return project, config


def _verdicts(store: Store, unstable: set[tuple[float, float]]) -> None:
    """Phonon verdicts for every MD run: stable except the (x, T) in ``unstable``."""
    runs = store.query("SELECT md_id, structure_hash, composition_x, temperature_k FROM md_runs")
    rows = []
    for r in runs.itertuples(index=False):
        stable = (float(r.composition_x), float(r.temperature_k)) not in unstable
        rows.append(
            {
                "md_id": r.md_id,
                "structure_hash": r.structure_hash,
                "composition_x": r.composition_x,
                "temperature_k": r.temperature_k,
                "stable": stable,
                "passes_gate": stable,
                "reason": "stable" if stable else "2 modes below 0.1 THz",
            }
        )
    with store.write() as writer:
        writer.add_rows("phonon_anharmonic", rows)


@pytest.mark.slow
def test_bandgap_stage_averages_uncorrelated_snapshots_of_gated_runs(gap_project, tmp_path: Path) -> None:
    from capml_core.errors import NotComputedError
    from capml_core.models.gnn import load_ensemble, predict_gaps_per_model
    from capml_core.physics.md import production_frames, read_trajectory, trajectory_frame
    from capml_core.stages.bandgaps import run_bandgap_stage
    from capml_core.store.queries import ensemble_model_dirs, latest_ensemble, lowest_energy_structures

    source, config = gap_project
    project, store = project_copy(source, tmp_path)
    with pytest.raises(NotComputedError, match="no phonon stability verdict; run capml phonons first"):
        run_bandgap_stage(store, config, ensemble_id=latest_ensemble(store)[0], scan_id=latest_scan_id(store))
    assert store.query("SELECT count(*) AS n FROM gap_thermal")["n"][0] == 0
    _verdicts(store, {(0.5, 100.0)})
    config = config.model_copy(
        update={
            "gaps": config.gaps.model_copy(
                update={
                    "snapshot_spacing": 1.0,
                    "min_snapshots": 3,
                    "experiment": REPO / "data/experiment/ag3sbri-table1.csv",
                }
            )
        }
    )
    result = run_bandgap_stage(store, config, ensemble_id=latest_ensemble(store)[0], scan_id=latest_scan_id(store))
    ensemble_id, level = latest_ensemble(store)
    assert result.ensemble_id == ensemble_id and level == "gpaw-gllbsc"
    models = load_ensemble(ensemble_model_dirs(store, ensemble_id))
    # Eg(0): the ensemble's gap of each relaxed lowest-energy structure
    relaxed = lowest_energy_structures(store, latest_scan_id(store))
    expected = predict_gaps_per_model(list(relaxed.values()), models)
    assert [s.composition_x for s in result.static] == list(relaxed)
    assert np.allclose([s.gap_ev for s in result.static], expected.mean(axis=0), atol=1e-6)
    assert all(s.reference_gap_ev is None for s in result.static)  # the demo checks no composition with DFT
    # Eg(T): 10 runs; the unstable one is dropped with the reason, the others averaged over their snapshots
    assert len(result.thermal) == 10
    dropped = [t for t in result.thermal if not t.passes_gate]
    assert [(t.composition_x, t.temperature_k) for t in dropped] == [(0.5, 100.0)]
    assert dropped[0].average is None and "dropped by the phonon gate: 2 modes below 0.1 THz" in dropped[0].reason
    runs = store.query("SELECT * FROM md_runs").set_index("md_id")
    static = {s.composition_x: s for s in result.static}
    rows = store.query("SELECT * FROM gap_thermal").set_index("md_id")
    for t in result.thermal:
        if t.average is None:
            continue
        run, row = runs.loc[t.md_id], rows.loc[t.md_id]
        trajectory = read_trajectory(project / run["path"])
        # the gap series: every production frame 20 fs (gaps.series_stride_fs) apart, 5 fs per saved frame
        frames = production_frames(trajectory, config.md.equilibration_ps)[::4]
        snapshots = store.query("SELECT * FROM gap_snapshots WHERE md_id = ? ORDER BY frame", [t.md_id])
        assert snapshots["frame"].tolist() == frames.tolist() and t.average.n_snapshots == len(frames) >= 10
        assert row["spacing_fs"] == pytest.approx(20.0) and t.average.mean_gap_ev == pytest.approx(
            snapshots["gap_ev"].mean()
        )
        assert row["gap_tau_fs"] == pytest.approx(20.0 * t.average.tau_snapshots)
        assert t.average.n_effective == pytest.approx(len(frames) / t.average.tau_snapshots)
        # uncorrelated snapshots (what a DFT check takes) one gap autocorrelation time apart (snapshot_spacing 1)
        marked = snapshots[snapshots["uncorrelated"]]
        assert marked["frame"].iloc[0] == frames[0] and row["n_uncorrelated"] == len(marked) >= 1
        assert np.all(np.diff(marked["time_fs"]) >= row["gap_tau_fs"] - 1e-6)
        assert t.average.error_method == "inflated"  # 13 frames: too few blocks for blocking
        assert t.equilibrated == (abs(t.average.half_difference_ev) <= 2.0 * t.average.half_difference_error_ev)
        assert ("not equilibrated" in t.reason) == (not t.equilibrated)
        assert ("independent samples" in t.reason) == (t.average.n_effective < 3)
        again = predict_gaps_per_model([trajectory_frame(trajectory, int(f)) for f in frames[:2]], models)
        assert np.allclose(again.mean(axis=0), snapshots["gap_ev"][:2], atol=1e-6)
        assert t.average.delta_ev == pytest.approx(t.average.mean_gap_ev - static[t.composition_x].gap_ev, abs=1e-6)
        assert t.average.relative_change == pytest.approx(t.average.delta_ev / static[t.composition_x].gap_ev, abs=1e-6)
        assert t.average.error_ev >= max(t.average.statistical_error_ev, t.average.model_error_ev)
        assert t.lowest_relative_change is None  # nothing quenched in this project: no lowest minimum
    published = store.query("SELECT * FROM gap_published")
    assert len(published) == 21 and set(published["kind"]) == {"experiment", "calculation"}
    # resume: nothing recomputed for the same ensemble and runs
    stamps = store.query("SELECT md_id, created_at FROM gap_thermal ORDER BY md_id")
    run_bandgap_stage(store, config, ensemble_id=latest_ensemble(store)[0], scan_id=latest_scan_id(store))
    assert store.query("SELECT md_id, created_at FROM gap_thermal ORDER BY md_id").equals(stamps)
    assert store.query("SELECT count(*) AS n FROM gap_published")["n"][0] == 21
    # other settings (the gap every 40 fs): every row recomputed and replaced, none duplicated
    before = store.query("SELECT md_id, spacing_fs, n_snapshots FROM gap_thermal ORDER BY md_id")
    wider = config.model_copy(update={"gaps": config.gaps.model_copy(update={"series_stride_fs": 40.0})})
    run_bandgap_stage(store, wider, ensemble_id=latest_ensemble(store)[0], scan_id=latest_scan_id(store))
    after = store.query(
        "SELECT md_id, created_at, spacing_fs, n_snapshots, settings_key FROM gap_thermal ORDER BY md_id"
    )
    assert after["md_id"].tolist() == stamps["md_id"].tolist() and after["settings_key"].nunique() == 1
    assert (after["created_at"] > stamps["created_at"].max()).all()
    averaged = before["spacing_fs"].notna()
    assert (after["spacing_fs"][averaged] == 2 * before["spacing_fs"][averaged]).all()
    assert ((before["n_snapshots"][averaged] + 1) // 2 == after["n_snapshots"][averaged]).all()
    assert store.query("SELECT count(*) AS n FROM (SELECT DISTINCT md_id, frame FROM gap_snapshots)")["n"][0] == len(
        store.query("SELECT * FROM gap_snapshots")
    )
    # gate off: a new ensemble averages every run, the stored verdicts stay as they are
    from capml_core.config.stage_sections import GNNSection
    from capml_core.stages.gnn_training import train_two_stage

    gnn = GNNSection(epochs=2, fine_tune_epochs=2, ensemble_size=1, learning_curve_fractions=[])
    train_two_stage(store, gnn, cheap_level="gpaw-pbesol", high_level="gpaw-gllbsc", seed=2)
    ungated = config.model_copy(update={"phonons": config.phonons.model_copy(update={"gate": False})})
    second = run_bandgap_stage(store, ungated, ensemble_id=latest_ensemble(store)[0], scan_id=latest_scan_id(store))
    assert second.ensemble_id != ensemble_id and all(t.average is not None for t in second.thermal)
    assert all(t.average.model_error_ev == 0.0 for t in second.thermal)  # one model: no ensemble spread
    assert all("model error from 1 ensemble member" in t.reason for t in second.thermal)
    # Eg(0) of the lowest minimum as well: a minimum below the cubic cell at x = 0 only (written here as the
    # static reference would: the quench itself is tested in test_dynamics.py); those rows are recomputed against it
    from capml_core.stages.static_minima import lowest_minima
    from capml_core.store.records import StructureRecord
    from capml_core.system.structures import quantize, structure_hash

    model_id = latest_model(store)[0]
    distorted = relaxed[0.0].copy()
    distorted.rattle(0.05, seed=4)
    distorted = quantize(distorted)
    minima = [
        {"source": "cubic", "structure_hash": structure_hash(relaxed[0.0]), "energy_ev_per_atom": -3.00},
        {"source": "md#9", "structure_hash": structure_hash(distorted), "energy_ev_per_atom": -3.01},
    ]
    with store.write() as writer:
        writer.add_structures(
            [
                StructureRecord(
                    atoms=distorted, structure_hash=minima[1]["structure_hash"], kind="relaxed", composition_x=0.0
                )
            ],
            run_id=None,
        )
        writer.add_rows(
            "static_minima",
            [
                {"model_id": model_id, "scan_id": None, "composition_x": 0.0, "space_group": "P1 (1)", **m}
                for m in minima
            ],
        )
    kept = store.query(
        "SELECT md_id, created_at FROM gap_thermal WHERE ensemble_id = ? AND composition_x > 0", [second.ensemble_id]
    )
    third = run_bandgap_stage(store, ungated, ensemble_id=second.ensemble_id, scan_id=latest_scan_id(store))
    lowest = lowest_minima(store, model_id)
    assert [s.composition_x for s in third.lowest] == [0.0] == lowest["composition_x"].tolist()
    assert lowest["source"].tolist() == ["md#9"]
    expected_lowest = predict_gaps_per_model(
        [store.load_atoms(lowest["structure_hash"][0])], load_ensemble(ensemble_model_dirs(store, second.ensemble_id))
    )
    assert third.lowest[0].gap_ev == pytest.approx(float(expected_lowest.mean()), abs=1e-6)
    for t in third.thermal:
        if t.composition_x == 0.0:
            assert t.lowest_static_gap_ev == pytest.approx(third.lowest[0].gap_ev)
            assert t.lowest_relative_change == pytest.approx(
                (t.average.mean_gap_ev - t.lowest_static_gap_ev) / t.lowest_static_gap_ev
            )
        else:
            assert t.lowest_relative_change is None
    assert store.query(
        "SELECT md_id, created_at FROM gap_thermal WHERE ensemble_id = ? AND composition_x > 0", [second.ensemble_id]
    ).equals(kept)  # the other compositions were not recomputed
    cubic_rows = store.bandgap_results()["static"]
    assert (cubic_rows["structure_kind"] == "cubic").all() and len(cubic_rows) == 5


def test_paired_comparison_decides_only_what_its_error_allows() -> None:
    from capml_core.stages.bandgaps import compare_paired

    rng = np.random.default_rng(5)
    thermal = 1.2 + 0.15 * rng.normal(size=6)  # both see the same thermal scatter, 0.15 eV
    close = compare_paired(thermal + 0.01 * rng.normal(size=6), thermal, tolerance_ev=0.05)
    assert close.verdict == "agrees" and close.difference_error_ev < 0.01 < close.dft_error_ev  # paired: far smaller
    offset = compare_paired(thermal - 0.12 + 0.01 * rng.normal(size=6), thermal, tolerance_ev=0.05)
    assert offset.verdict == "disagrees" and offset.difference_ev == pytest.approx(-0.12, abs=0.015)
    noisy = compare_paired(thermal + 0.3 * rng.normal(size=6), thermal, tolerance_ev=0.05)
    assert noisy.verdict == "too noisy" and noisy.difference_error_ev > 0.05
    small = compare_paired(thermal + 0.04, thermal, tolerance_ev=0.05)  # within the tolerance, however precise
    assert small.verdict == "agrees"
    one = compare_paired(thermal[:1] + 0.2, thermal[:1], tolerance_ev=0.05)
    assert one.verdict == "incomplete" and one.difference_ev == pytest.approx(0.2) and np.isnan(one.difference_error_ev)


@pytest.mark.slow
@pytest.mark.timeout(1500)  # the module's gap project (~270 s) and harmonic phonons of 5 structures
def test_a_dft_check_prefers_frames_computed_for_an_earlier_gap_model() -> None:
    """A new gap model's check reuses DFT frames within half the uncorrelated spacing, each once; none farther."""
    from capml_core.stages.bandgaps import dft_check_choice

    frames = np.arange(0, 200, 5)  # a series every 5 frames, uncorrelated every 20
    snapshots = pd.DataFrame(
        {"frame": frames, "time_fs": 10.0 * frames, "gap_ev": 1.0 + 0.001 * frames, "uncorrelated": frames % 20 == 0}
    )
    plain = dft_check_choice(snapshots, 4)
    assert plain["frame"].tolist() == [0, 60, 120, 180]  # evenly over the 10 uncorrelated snapshots
    reused = dft_check_choice(snapshots, 4, computed_frames=[55, 65, 130, 101, 400])
    # 60 -> 55 (nearest within 10, the lower on a tie), 120 -> 130; 101 is no snapshot, 400 not in the run
    assert reused["frame"].tolist() == [0, 55, 130, 180]
    assert reused["gap_ev"].tolist() == pytest.approx([1.0, 1.055, 1.13, 1.18])  # the new model's gaps of them
    assert dft_check_choice(snapshots, 4, computed_frames=[90])["frame"].tolist() == [0, 60, 120, 180]  # too far


def test_dft_checks_recompute_the_averaged_frames_and_flag_a_disagreement(
    gap_project, tmp_path: Path, monkeypatch
) -> None:
    """gaps.dft_check: uncorrelated frames of the named runs stored as 'gap-check' structures (never training
    data), their reference gaps beside the model's, the paired verdict per (x, T). The reference level here is
    one that cannot run on this machine (VASP without a command) with labels written beforehand: the
    orchestration and the statistics are tested, the DFT itself in test_labelling.py."""
    from capml_core.config.stage_sections import GapDFTCheck
    from capml_core.physics.md import read_trajectory, trajectory_frame
    from capml_core.stages.bandgaps import dft_check_choice, run_bandgap_stage
    from capml_core.store.queries import latest_ensemble
    from capml_core.store.records import LabelRecord
    from capml_core.system.structures import quantize, structure_hash

    source, config = gap_project
    _, store = project_copy(source, tmp_path)
    ensemble_id = latest_ensemble(store)[0]
    config = config.model_copy(
        update={
            "phonons": config.phonons.model_copy(update={"gate": False}),
            "gaps": config.gaps.model_copy(
                update={"reference_level": "vasp-hsesol", "reference_compositions": [], "snapshot_spacing": 1.0}
            ),
        }
    )
    # an MD run of an earlier MACE model from the same structure, its trajectory gone (a study resumed from a
    # checkpoint): not this scan's, so neither averaged nor read
    earlier = store.query("SELECT * FROM md_runs WHERE composition_x = 1.0 AND temperature_k = 100.0").iloc[0]
    earlier = {k: None if isinstance(v, float) and np.isnan(v) else v for k, v in earlier.to_dict().items()}
    earlier |= {"md_id": "md-earlier-model", "model_id": "mace-earlier", "path": "md/gone.h5"}
    with store.write() as writer:
        columns, marks = ", ".join(earlier), ", ".join("?" * len(earlier))
        writer.con.execute(f"INSERT INTO md_runs ({columns}) VALUES ({marks})", list(earlier.values()))
    run_bandgap_stage(store, config, ensemble_id=ensemble_id, scan_id=latest_scan_id(store))
    assert store.query("SELECT count(*) AS n FROM gap_thermal WHERE md_id = 'md-earlier-model'")["n"][0] == 0
    offsets = {(0.0, 100.0): [0.01, -0.02, 0.01], (1.0, 100.0): [0.19, 0.20, 0.21], (0.5, 50.0): [0.0]}
    labels, expected_frames, expected_pairs, used = [], 0, 0, {}
    for (x, t), shifts in offsets.items():
        run = store.query("SELECT md_id, path FROM md_runs WHERE composition_x = ? AND temperature_k = ?", [x, t]).iloc[
            0
        ]
        snapshots = store.query(
            "SELECT frame, time_fs, gap_ev, uncorrelated FROM gap_snapshots WHERE md_id = ? AND ensemble_id = ?",
            [run["md_id"], ensemble_id],
        )
        picked = dft_check_choice(snapshots, 3)
        assert len(picked) >= 2  # 13 frames, one autocorrelation time (at most half the series) apart
        expected_frames, expected_pairs = expected_frames + len(picked), expected_pairs + min(len(picked), len(shifts))
        used[(x, t)] = shifts[: len(picked)]
        trajectory = read_trajectory(store.project_dir / run["path"])
        for (frame, model_gap), shift in zip(picked[["frame", "gap_ev"]].itertuples(index=False), shifts, strict=False):
            digest = structure_hash(quantize(trajectory_frame(trajectory, int(frame))))
            labels.append(LabelRecord(digest, "vasp-hsesol", gap_ev=float(model_gap) - shift, wall_time_s=60.0))
    with store.write() as writer:
        writer.add_labels(labels, run_id=None)
    checks = [
        GapDFTCheck(composition_x=0.0, temperatures_k=[100.0], frames=3),
        GapDFTCheck(composition_x=1.0, temperatures_k=[100.0], frames=3),
        GapDFTCheck(composition_x=0.5, temperatures_k=[50.0], frames=3),
    ]
    config = config.model_copy(update={"gaps": config.gaps.model_copy(update={"dft_check": checks})})
    trained_on = store.query("SELECT md_id FROM md_runs WHERE composition_x = 0.0 AND temperature_k = 100.0")["md_id"][
        0
    ]
    frame = {"model_id": "mace-x", "held_out": False, "selection": "random", "round": 4, "temperature_k": 100.0}
    with store.write() as writer:  # a frame of the (0, 100 K) run in the training data: the check says so
        writer.add_rows("md_frames", [{**frame, "structure_hash": "trained", "md_id": trained_on, "frame": 0}])

    def killed(*args, **kwargs):
        raise RuntimeError("killed during the DFT")

    import capml_core.stages.bandgaps as bandgaps

    with monkeypatch.context() as patch:  # the process dies in the DFT: the chosen frames are stored already
        patch.setattr(bandgaps, "reference_gaps", killed)
        with pytest.raises(RuntimeError, match="killed during the DFT"):
            run_bandgap_stage(store, config, ensemble_id=ensemble_id, scan_id=latest_scan_id(store))
    stored = store.query("SELECT * FROM gap_dft_frames WHERE ensemble_id = ?", [ensemble_id])
    assert len(stored) == expected_frames and stored["dft_gap_ev"].isna().all()
    md_dir = store.project_dir / "md"
    md_dir.rename(store.project_dir / "md-away")
    try:  # and the next run goes on without the trajectories (a checkpoint on another machine)
        result = run_bandgap_stage(store, config, ensemble_id=ensemble_id, scan_id=latest_scan_id(store))
    finally:
        (store.project_dir / "md-away").rename(md_dir)
    by = result.checks.set_index(["composition_x", "temperature_k"])
    assert len(by) == 3 and set(by["level"]) == {"vasp-hsesol"}
    assert by.loc[(0.0, 100.0), "verdict"] == "agrees"
    assert "1 of this run's frames are training data" in by.loc[(0.0, 100.0), "note"]
    assert by.loc[(1.0, 100.0), "note"] is None or "training data" not in by.loc[(1.0, 100.0), "note"]
    assert by.loc[(1.0, 100.0), "verdict"] == "disagrees"
    assert by.loc[(1.0, 100.0), "difference_ev"] == pytest.approx(np.mean(used[(1.0, 100.0)]), abs=1e-6)  # model − DFT
    assert by.loc[(0.5, 50.0), "verdict"] == "incomplete" and "DFT calculations missing" in by.loc[(0.5, 50.0), "note"]
    frames = store.query("SELECT * FROM gap_dft_frames WHERE ensemble_id = ?", [ensemble_id])
    assert len(frames) == expected_frames and frames["dft_gap_ev"].notna().sum() == expected_pairs
    kinds = store.query(
        "SELECT DISTINCT kind FROM structures WHERE structure_hash IN (SELECT unnest(?))",
        [frames["structure_hash"].tolist()],
    )
    assert kinds["kind"].tolist() == ["gap-check"] and store.labelled_gaps("vasp-hsesol").empty  # never training
    (check_table,) = [t for t in result.tables() if t.title.startswith("DFT checks")]
    assert len(check_table.rows) == 3 and len(check_table.warnings) == 2  # the disagreement and the incomplete one
    # the missing labels arrive later (another machine): the checked frames come from the store, not the trajectories
    missing = frames[frames["dft_gap_ev"].isna()]
    with store.write() as writer:
        writer.add_labels(
            [
                LabelRecord(r.structure_hash, "vasp-hsesol", gap_ev=r.model_gap_ev + 0.01 * (-1) ** i, wall_time_s=60.0)
                for i, r in enumerate(missing.itertuples(index=False))
            ],
            run_id=None,
        )
    md_dir.rename(store.project_dir / "md-away")
    try:
        later = run_bandgap_stage(store, config, ensemble_id=ensemble_id, scan_id=latest_scan_id(store))
    finally:
        (store.project_dir / "md-away").rename(md_dir)
    completed = later.checks.set_index(["composition_x", "temperature_k"]).loc[(0.5, 50.0)]
    assert completed["verdict"] != "incomplete" and completed["n_frames"] == len(
        frames[frames["md_id"] == missing["md_id"].iloc[0]]
    )
    _eg_t_again_from_thinned_trajectories(store, config, ensemble_id)
    _independent_estimates(store, config, ensemble_id)


def _eg_t_again_from_thinned_trajectories(store: Store, config, ensemble_id: str) -> None:
    """A checkpoint's thinned trajectories (the band-gap series' frames only) give the same Eg(T) and checks when
    the averages are recomputed (a new gap model on another machine)."""
    import shutil

    from capml_core.physics.md import write_thinned_trajectory
    from capml_core.stages.bandgaps import run_bandgap_stage
    from capml_core.stages.shipping import band_gap_series_frames

    before = store.query("SELECT * FROM gap_thermal WHERE ensemble_id = ? ORDER BY md_id", [ensemble_id])
    checks = store.query("SELECT * FROM gap_dft_checks WHERE ensemble_id = ? ORDER BY md_id", [ensemble_id])
    frames = band_gap_series_frames(store)  # what a checkpoint keeps
    md_dir = store.project_dir / "md"
    md_dir.rename(store.project_dir / "md-whole")
    try:
        for row in frames.itertuples(index=False):
            write_thinned_trajectory(
                store.project_dir / "md-whole" / Path(row.path).name,
                store.project_dir / row.path,
                np.asarray(row.frames),
            )
        with store.write() as writer:
            for table in ("gap_thermal", "gap_snapshots"):
                writer.con.execute(f"DELETE FROM {table} WHERE ensemble_id = ?", [ensemble_id])
        run_bandgap_stage(store, config, ensemble_id=ensemble_id, scan_id=latest_scan_id(store))
    finally:
        shutil.rmtree(md_dir, ignore_errors=True)
        (store.project_dir / "md-whole").rename(md_dir)
    after = store.query("SELECT * FROM gap_thermal WHERE ensemble_id = ? ORDER BY md_id", [ensemble_id])
    assert len(after) == len(before) >= 5
    assert np.allclose(after["mean_gap_ev"], before["mean_gap_ev"], equal_nan=True)
    assert np.allclose(after["error_ev"], before["error_ev"], equal_nan=True)
    again = store.query("SELECT * FROM gap_dft_checks WHERE ensemble_id = ? ORDER BY md_id", [ensemble_id])
    assert again["difference_ev"].tolist() == checks["difference_ev"].tolist()


def _independent_estimates(store: Store, config, ensemble_id: str) -> None:
    """Harmonic (classical, quantum) and special-displacement estimates from the MACE force constants of each
    composition's structure, with imaginary modes at |ω| and left out, beside the MD averages."""
    from capml_core.stages.bandgaps import run_bandgap_stage
    from capml_core.stages.phonons import run_harmonic_phonons

    run_harmonic_phonons(store, config, model_id=latest_model(store)[0], scan_id=latest_scan_id(store))
    # the anharmonic variant reads DynaPhoPy's renormalised force constants of an MD run (here: |ω| ones)
    _lifted_renormalised_verdict(store, 0.0, 100.0)
    config = config.model_copy(
        update={"gaps": config.gaps.model_copy(update={"estimate_samples": 4, "estimate_temperatures_k": [100.0]})}
    )

    class Interrupted(Exception):
        pass

    def interrupt_after_two(done: int, total: int) -> None:
        if done == 2:
            raise Interrupted

    with pytest.raises(Interrupted):  # a kill in the middle of the estimates keeps the finished compositions
        run_bandgap_stage(
            store, config, ensemble_id=ensemble_id, scan_id=latest_scan_id(store), estimate_progress=interrupt_after_two
        )
    kept = store.query(
        "SELECT DISTINCT composition_x FROM gap_estimates WHERE ensemble_id = ? AND method LIKE 'harmonic-%'",
        [ensemble_id],
    )
    assert len(kept) == 2
    counted: list[tuple[int, int]] = []
    result = run_bandgap_stage(
        store,
        config,
        ensemble_id=ensemble_id,
        scan_id=latest_scan_id(store),
        estimate_progress=lambda done, total: counted.append((done, total)),
    )
    assert counted == [(i, 5) for i in range(1, 6)]
    renormalised = result.estimates[result.estimates["method"] == "special-displacement-renormalised"]
    assert len(renormalised) == 1 and renormalised["composition_x"].iloc[0] == 0.0  # only where the MD gave them
    (r,) = renormalised.itertuples(index=False)
    sd_abs = result.estimates.set_index(["composition_x", "method", "imaginary_treatment"]).loc[
        (0.0, "special-displacement", "abs")
    ]
    assert r.imaginary_treatment == "renormalised" and r.n_imaginary == 0 and r.n_configurations == 2
    assert r.note.startswith("DynaPhoPy renormalised force constants")
    # the same |ω| spectrum: the same mean-square displacement, a gap within the basis choice of degenerate modes
    assert r.rms_displacement_a == pytest.approx(sd_abs["rms_displacement_a"], rel=1e-6)
    assert r.gap_ev == pytest.approx(sd_abs["gap_ev"], abs=0.05)
    estimates = result.estimates[~result.estimates["method"].isin(["dft-phonon-sampled", r.method])]
    assert len(estimates) == 5 * 3 * 2  # compositions x (classical, quantum, special displacement) x treatments
    by = estimates.set_index(["composition_x", "method", "imaginary_treatment"])
    static = {s.composition_x: s.gap_ev for s in result.static}
    for x in static:
        classical, quantum = by.loc[(x, "harmonic-classical", "abs")], by.loc[(x, "harmonic-quantum", "abs")]
        assert (
            classical["n_configurations"] == 4 and by.loc[(x, "special-displacement", "abs"), "n_configurations"] == 2
        )
        assert quantum["rms_displacement_a"] > classical["rms_displacement_a"] > 0.02  # zero-point motion on top
        assert classical["relative_change"] == pytest.approx((classical["gap_ev"] - static[x]) / static[x])
        left_out = by.loc[(x, "harmonic-classical", "exclude")]
        assert classical["n_excluded"] <= left_out["n_excluded"] <= classical["n_excluded"] + left_out["n_imaginary"]
        assert left_out["rms_displacement_a"] <= classical["rms_displacement_a"] + 1e-12
    (table_,) = [t for t in result.tables() if t.title.startswith("ΔEg/Eg(0): MD vs")]
    assert len(table_.rows) == 5 and table_.columns[:3] == ("x", "T (K)", "MD")
    again = run_bandgap_stage(store, config, ensemble_id=ensemble_id, scan_id=latest_scan_id(store))
    assert again.estimates["created_at"].tolist() == result.estimates["created_at"].tolist()  # resumed, not redone
    _report_of(store, result)


def _lifted_renormalised_verdict(store: Store, x: float, temperature_k: float) -> None:
    """A stable verdict for the MD run at (x, T) whose 'renormalised' force constants are the harmonic ones with
    every imaginary mode at |ω| (what the stages read from DynaPhoPy; DynaPhoPy itself: test_anharmonic)."""
    from capml_core.physics.sampling import normal_modes

    run = store.query("SELECT * FROM md_runs WHERE composition_x = ? AND temperature_k = ?", [x, temperature_k]).iloc[0]
    harmonic = store.query("SELECT artifact_id FROM phonon_harmonic WHERE structure_hash = ?", [run["structure_hash"]])
    fc = store.load_arrays(harmonic["artifact_id"].iloc[0])["force_constants"]
    masses = store.load_atoms(run["structure_hash"]).get_masses()
    modes = normal_modes(fc, masses)
    root = np.repeat(masses**0.5, 3)
    lifted = (modes.vectors * np.abs(modes.omega2)) @ modes.vectors.T * root[:, None] * root[None, :]
    lifted = lifted.reshape(len(masses), 3, len(masses), 3).transpose(0, 2, 1, 3)
    with store.write() as writer:
        artifact = writer.save_arrays("phonons-anharmonic", {"renormalised_force_constants": lifted}, run_id=None)
        row = {"md_id": run["md_id"], "structure_hash": run["structure_hash"], "composition_x": x}
        row |= {"temperature_k": temperature_k, "stable": True, "passes_gate": True, "artifact_id": artifact}
        writer.add_rows("phonon_anharmonic", [row])


def _report_of(store: Store, result) -> None:
    """capml report --json on this project: the keys the study promises, the same numbers as the stage's."""
    import json

    from typer.testing import CliRunner

    from capml_core.stages.report import project_report
    from flows.cli import app

    report = project_report(store)
    high = report["models"]["gnn"]["gpaw-gllbsc"]
    assert high["test_mae_ev"] > 0 and high["md_frames_mae_ev"] is None  # no held-out frame in this project
    assert any("not measured (capml evaluate)" in f for f in report["flags"])
    assert report["models"]["mace"]["test_force_mae_ev_per_a"] > 0
    assert len(report["static"]) == 5 and all(s["cubic_gap_ev"] > 0 for s in report["static"])
    gaps = {(g["composition_x"], g["temperature_k"]): g for g in report["gaps"]}
    thermal = {(t.composition_x, t.temperature_k): t for t in result.thermal}
    assert set(gaps) == set(thermal)
    for key, g in gaps.items():
        assert g["gap_ev"] == pytest.approx(thermal[key].average.mean_gap_ev)
    assert gaps[(1.0, 100.0)]["dft_verdict"] == "disagrees" and gaps[(1.0, 100.0)]["flagged"]
    assert gaps[(0.0, 100.0)]["dft_verdict"] == "agrees" and gaps[(0.0, 100.0)]["n_dft_frames"] >= 2
    assert any(f.startswith("x = 1, 100 K: the model disagrees with DFT") for f in report["flags"])
    assert {e["method"] for e in report["estimates"]} >= {"harmonic-classical", "harmonic-quantum"}
    assert report["stabilisation_k"] == {"0": 100.0}  # the one verdict given above: stable at 100 K
    assert report["phonon_gate"] == {
        "gate": None,  # every judged run stable, no configuration stored with the verdict
        "n_runs": 1,
        "n_stable": 1,
        "n_not_stable": 0,
        "n_not_stable_averaged": 0,
    }
    assert len(report["published"]) == 21 and any(p["capml_gap_ev"] is not None for p in report["published"])
    shown = CliRunner().invoke(app, ["report", "--project", str(store.project_dir), "--json"])
    assert shown.exit_code == 0, shown.output
    assert json.loads(shown.output)["gaps"] == json.loads(json.dumps(report["gaps"]))
    text = CliRunner().invoke(app, ["report", "--project", str(store.project_dir)])
    assert text.exit_code == 0 and "flags: results not to take at face value" in text.output
    # an MD run outside MACE's training data: its Eg(T) is flagged, whatever DFT said of its gaps
    before = {key for key, g in gaps.items() if g["flagged"]}
    why = "outside MACE's training data: Br-S at 1.56 Å, closer than any training structure's 2.92 Å (x 0.53)"
    with store.write() as writer:
        writer.con.execute(
            "UPDATE md_runs SET status = 'warning', problems = ? WHERE composition_x = 0.0 AND temperature_k = 100.0",
            [why],
        )
    again = {(g["composition_x"], g["temperature_k"]): g for g in project_report(store)["gaps"]}
    assert {key for key, g in again.items() if g["flagged"]} == before | {(0.0, 100.0)}
    assert f"x = 0, 100 K: MD health: {why}" in project_report(store)["flags"]


def test_dft_phonon_sampled_estimate_averages_labelled_thermal_cells(tmp_path: Path) -> None:
    from ase.build import bulk

    from capml_core.stages.estimates import dft_phonon_sampled
    from capml_core.store.records import LabelRecord, StructureRecord
    from capml_core.system.structures import structure_hash

    store = Store(tmp_path / "p")
    records, labels = [], []
    for i, (kind, t, gap) in enumerate(
        [("equilibrium", None, 1.6), ("equilibrium", None, 1.62), ("thermal", 300.0, 1.1), ("thermal", 300.0, 1.0)]
        + [("thermal", 600.0, 0.7), ("thermal", 600.0, 0.8), ("uniform", None, 0.3)]
    ):
        atoms = bulk("Cu", "fcc", a=3.6 + 0.01 * i)
        digest = structure_hash(atoms)
        records.append(
            StructureRecord(atoms=atoms, structure_hash=digest, kind=kind, composition_x=0.5, temperature_k=t)
        )
        labels.append(LabelRecord(digest, "gpaw-gllbsc", gap_ev=gap))
    with store.write() as writer:
        writer.add_structures(records, run_id=None)
        writer.add_labels(labels, run_id=None)
    table = dft_phonon_sampled(store, "gpaw-gllbsc").set_index("temperature_k")
    assert table.loc[300.0, "gap_ev"] == pytest.approx(1.05) and table.loc[600.0, "gap_ev"] == pytest.approx(0.75)
    assert table.loc[300.0, "static_gap_ev"] == pytest.approx(1.61) and table.loc[300.0, "n_configurations"] == 2
    assert table.loc[600.0, "error_ev"] == pytest.approx(0.05)  # std 0.0707 / sqrt(2)


@pytest.mark.slow
def test_a_kernel_ensemble_gives_the_thermal_gaps_of_runs_without_phonon_verdicts(gap_project, tmp_path: Path) -> None:
    """gnn.architecture = "mace-kernel" in the bandgaps stage; gate off, no verdict stored: every run averaged."""
    from capml_core.config.stage_sections import GNNSection
    from capml_core.models.gnn import load_ensemble, predict_gaps_per_model
    from capml_core.physics.md import read_trajectory, trajectory_frame
    from capml_core.stages.bandgaps import run_bandgap_stage
    from capml_core.stages.gnn_training import train_two_stage
    from capml_core.store.queries import ensemble_model_dirs

    source, config = gap_project
    _, store = project_copy(source, tmp_path)
    gnn = GNNSection(architecture="mace-kernel", ensemble_size=3, learning_curve_fractions=[])
    kernel = train_two_stage(store, gnn, cheap_level="gpaw-pbesol", high_level="gpaw-gllbsc", seed=3)
    ungated = config.model_copy(update={"phonons": config.phonons.model_copy(update={"gate": False})})
    result = run_bandgap_stage(store, ungated, ensemble_id=kernel.ensemble_id, scan_id=latest_scan_id(store))
    assert len(result.thermal) == 10 and all(t.passes_gate and t.average is not None for t in result.thermal)
    assert all(t.average.model_error_ev > 0.0 for t in result.thermal)  # 3 members on different 80 % subsets
    # each stored snapshot gap is the members' mean on that MD frame
    run = store.query("SELECT md_id, path FROM md_runs ORDER BY md_id LIMIT 1").iloc[0]
    snapshots = store.query(
        "SELECT frame, gap_ev FROM gap_snapshots WHERE md_id = ? AND ensemble_id = ? ORDER BY frame",
        [run["md_id"], kernel.ensemble_id],
    )
    trajectory = read_trajectory(store.project_dir / run["path"])
    frames = [trajectory_frame(trajectory, int(f)) for f in snapshots["frame"]]
    members = load_ensemble(ensemble_model_dirs(store, kernel.ensemble_id))
    expected = predict_gaps_per_model(frames, members).mean(axis=0)
    assert len(frames) >= 2 and np.allclose(snapshots["gap_ev"], expected, atol=1e-6)
    assert ((snapshots["gap_ev"] > 0.2) & (snapshots["gap_ev"] < 3.0)).all()


@pytest.mark.slow
def test_mode_stage_freezes_every_optical_mode_and_checks_one_with_dft(gap_project, tmp_path: Path) -> None:
    from capml_core.config.inputs import GpawSettings
    from capml_core.models.gnn import load_ensemble, predict_gaps_per_model
    from capml_core.physics.modes import thermal_displacement
    from capml_core.stages.modes import run_mode_stage
    from capml_core.stages.phonons import run_harmonic_phonons
    from capml_core.store.queries import ensemble_model_dirs, latest_ensemble

    source, config = gap_project
    project, store = project_copy(source, tmp_path)
    config = config.model_copy(
        update={
            "gaps": config.gaps.model_copy(
                update={
                    "mode_temperatures_k": [100.0, 600.0],  # 100 K: an MD temperature (renormalised modes)
                    "reference_level": "gpaw-pbesol",
                    "reference_compositions": [1.0],
                    "reference_modes": 1,
                    "reference_bands": 1,
                }
            ),
            "reference": config.reference.model_copy(
                update={"workers": 2, "gpaw_pbesol": GpawSettings(cutoff_ev=250.0)}
            ),
        }
    )
    run_harmonic_phonons(store, config, model_id=latest_model(store)[0], scan_id=latest_scan_id(store))
    _lifted_renormalised_verdict(store, 1.0, 100.0)  # the soft manifold with the MD's frequencies, x = 1 at 100 K
    result = run_mode_stage(
        store,
        config,
        ensemble_id=latest_ensemble(store)[0],
        model_id=latest_model(store)[0],
        scan_id=latest_scan_id(store),
    )
    rows = store.query("SELECT * FROM gap_modes ORDER BY composition_x, temperature_k, mode")
    assert len(rows) == 5 * 2 * 120 and len(result) == len(rows)
    harmonic = store.query("SELECT composition_x, n_imaginary_gamma, artifact_id FROM phonon_harmonic")
    for h in harmonic.itertuples(index=False):
        mine = rows[(rows["composition_x"] == h.composition_x) & (rows["temperature_k"] == 100.0)]
        assert (mine["status"] == "acoustic").sum() == 3
        assert (mine["status"] == "imaginary").sum() == h.n_imaginary_gamma
    frozen = rows[rows["status"] == "frozen"]
    assert np.allclose(
        frozen["delta_ev"], 0.5 * (frozen["gap_plus_ev"] + frozen["gap_minus_ev"]) - frozen["gap0_ev"], atol=1e-6
    )
    assert np.allclose(frozen["relative_change"], frozen["delta_ev"] / frozen["gap0_ev"], atol=1e-6)
    assert set(frozen["dominant"]) <= {"Ag", "S", "Br/I"}
    # hotter modes are displaced further: the rms displacement grows as sqrt(1 + 2n(T))
    hot = frozen.set_index(["composition_x", "mode", "temperature_k"])["rms_displacement_a"].unstack()
    assert (hot[600.0] > hot[100.0]).all()
    # the GNN gap of a frozen structure, recomputed
    bromide = store.load_atoms(frozen[frozen["composition_x"] == 1.0]["structure_hash"].iloc[0])
    arrays = store.load_arrays(harmonic[harmonic["composition_x"] == 1.0]["artifact_id"].item())
    one = frozen[(frozen["composition_x"] == 1.0) & (frozen["temperature_k"] == 600.0)].iloc[10]
    eigenvectors = arrays["gamma_eigenvectors_real"] + 1j * arrays["gamma_eigenvectors_imag"]
    u = thermal_displacement(bromide, eigenvectors[:, one["mode"]], one["frequency_thz"], 600.0)
    models = load_ensemble(ensemble_model_dirs(store, latest_ensemble(store)[0]))
    plus = bromide.copy()
    plus.positions += u
    assert predict_gaps_per_model([plus], models).mean() == pytest.approx(one["gap_plus_ev"], abs=1e-5)
    # DFT check: one mode of x = 1 at 600 K, the softest frozen one (spread_over_frequencies picks the ends first)
    checked = rows[rows["reference_level"].notna()]
    assert len(checked) == 1 and set(checked["composition_x"]) == {1.0} and set(checked["temperature_k"]) == {600.0}
    hot_bromide = frozen[(frozen["composition_x"] == 1.0) & (frozen["temperature_k"] == 600.0)]
    assert checked["frequency_thz"].item() == hot_bromide["frequency_thz"].min()
    assert checked["reference_delta_ev"].notna().all()
    assert np.allclose(
        checked["reference_delta_ev"],
        0.5 * (checked["reference_gap_plus_ev"] + checked["reference_gap_minus_ev"]) - checked["reference_gap0_ev"],
    )
    labels = store.query("SELECT structure_hash, gap_ev FROM labels WHERE level = 'gpaw-pbesol' AND status = 'ok'")
    by_hash = dict(zip(labels["structure_hash"], labels["gap_ev"], strict=True))
    assert checked["reference_gap0_ev"].iloc[0] == pytest.approx(by_hash[checked["structure_hash"].iloc[0]])
    distorted = store.load_atoms(checked["plus_hash"].iloc[0])
    row = checked.iloc[0]
    u = thermal_displacement(bromide, eigenvectors[:, row["mode"]], row["frequency_thz"], 600.0)
    assert np.allclose(distorted.positions, bromide.positions + u, atol=1e-8)
    kinds = store.query(
        "SELECT kind FROM structures WHERE structure_hash IN (SELECT unnest(?))",
        [checked["plus_hash"].tolist() + checked["minus_hash"].tolist()],
    )
    assert (kinds["kind"] == "frozen-mode").all() and len(kinds) == 2
    training = set(store.labelled_gaps("gpaw-pbesol")["structure_hash"])
    assert not training & set(checked["plus_hash"]) and checked["structure_hash"].iloc[0] not in training
    # soft real modes below the floor are reported, not frozen; subspaces cover every mode, bands every frozen one
    assert (rows.loc[rows["status"] == "below floor", "frequency_thz"] < 0.5).all()
    groups = store.query("SELECT * FROM gap_mode_groups WHERE source = 'harmonic'")
    for (x, t), of in groups.groupby(["composition_x", "temperature_k"]):
        assert of.loc[of["kind"] == "subspace", "n_modes"].sum() == 120
        n_frozen = ((frozen["composition_x"] == x) & (frozen["temperature_k"] == t)).sum()
        assert of.loc[of["kind"] == "band", "n_modes"].sum() == n_frozen
        frozen_subspaces = of[(of["kind"] == "subspace") & (of["status"] == "frozen")]
        assert (frozen_subspaces["beyond_harmonic"] == (frozen_subspaces["rms_displacement_a"] > 0.2)).all()
    # the renormalised source: only where the MD run gave force constants, every mode in a subspace, none imaginary
    renormalised = store.query("SELECT * FROM gap_mode_groups WHERE source = 'renormalised'")
    assert set(zip(renormalised["composition_x"], renormalised["temperature_k"], strict=True)) == {(1.0, 100.0)}
    subspaces = renormalised[renormalised["kind"] == "subspace"]
    assert subspaces["n_modes"].sum() == 120 and (subspaces["status"] == "frozen").any()
    assert not (subspaces["status"] == "imaginary").any() and (subspaces["frequency_lo_thz"] >= -0.05).all()
    band_checked = groups[groups["reference_delta_ev"].notna()]  # the band of largest |ΔEg| of x = 1 at 600 K
    assert len(band_checked) == 1 and band_checked["composition_x"].item() == 1.0
    assert band_checked["temperature_k"].item() == 600.0 and band_checked["kind"].item() == "band"
    # resume: nothing recomputed, no new DFT
    n_labels = len(labels)
    run_mode_stage(
        store,
        config,
        ensemble_id=latest_ensemble(store)[0],
        model_id=latest_model(store)[0],
        scan_id=latest_scan_id(store),
    )
    assert len(store.query("SELECT * FROM gap_modes")) == len(rows)
    assert len(store.query("SELECT * FROM labels WHERE level = 'gpaw-pbesol' AND status = 'ok'")) == n_labels
    # the CLI prints the stored results
    from typer.testing import CliRunner

    from flows.cli import app
    from tests.conftest import DEMO_CONFIG

    _verdicts(store, set())
    toml = tmp_path / "cli.toml"
    toml.write_text(DEMO_CONFIG.read_text().replace('"../', f'"{REPO}/data/'))
    runner = CliRunner()
    out = runner.invoke(app, ["modes", "-c", str(toml), "-p", str(project), "--top", "2"])
    assert out.exit_code == 0, out.output
    assert "Br/I" in out.output or "Ag" in out.output
    gaps = runner.invoke(app, ["gaps", "-c", str(toml), "-p", str(project)])
    assert gaps.exit_code == 0, gaps.output
    assert "static gaps (gpaw-gllbsc)" in gaps.output and "thermal gaps" in gaps.output
    assert store.query("SELECT count(*) AS n FROM gap_thermal WHERE mean_gap_ev IS NOT NULL")["n"][0] == 10
    # the dashboard pages draw from this store
    import json
    import os

    import streamlit as st
    from streamlit.testing.v1 import AppTest

    os.environ["CAPML_PROJECT_DIR"] = str(project)
    try:
        st.cache_data.clear()
        at = AppTest.from_function(_bandgaps_page, default_timeout=60).run()
        assert not at.exception
        specs = [json.loads(c.proto.spec) for c in at.get("plotly_chart")]
        names = [t.get("name", "") for t in specs[0]["data"]]
        assert "capml 0 K (cubic)" in names and "capml 50 K" in names and "capml 100 K" in names
        assert any(n.startswith("experiment 300 K") for n in names)  # Table I next to our gaps
        assert specs[2]["data"][0]["type"] == "heatmap"
        at = AppTest.from_function(_modes_page, default_timeout=60).run()
        assert not at.exception
        specs = [json.loads(c.proto.spec) for c in at.get("plotly_chart")]
        groups = {t["name"] for t in specs[0]["data"] if t.get("mode") == "markers"}  # "<species>, <regime>"
        assert groups and {g.split(", ")[0] for g in groups} <= {"Ag", "S", "Br/I"}
        assert all(g.split(", ")[1] == "harmonic" or g.split(", ")[1].startswith("beyond harmonic") for g in groups)
        assert all(t["type"] != "cone" for spec in specs for t in spec["data"])  # the 3D pattern on request
        at.toggle(key="mode_pattern_shown").set_value(True).run()
        specs = [json.loads(c.proto.spec) for c in at.get("plotly_chart")]
        assert specs[-1]["data"][-1]["type"] == "cone"  # the displacement pattern of the first frozen mode
        at = AppTest.from_function(_overview_page, default_timeout=60).run()  # results first, trust visible
        assert not at.exception
        assert [h.value for h in at.subheader][:2] == ["Eg(x, T)", "How far to trust it"]
        warnings = [w.value for w in at.warning]
        assert any("no Eg(T) was checked with DFT" in w for w in warnings)
        names = [t.get("name", "") for t in json.loads(at.get("plotly_chart")[0].proto.spec)["data"]]
        assert names[:3] == ["capml 0 K (cubic)", "capml 50 K", "capml 100 K"]
    finally:
        del os.environ["CAPML_PROJECT_DIR"]


def _bandgaps_page() -> None:
    from dashboard.views.bandgaps import render_bandgaps

    render_bandgaps()


def _modes_page() -> None:
    from dashboard.views.modes import render_modes

    render_modes()


def _overview_page() -> None:
    from dashboard.views.overview import render_overview

    render_overview()


def test_published_gaps_are_compared_at_the_same_temperature_interpolated_in_x() -> None:
    import pandas as pd

    from capml_core.stages.bandgaps import compare_with_published, published_table

    ours = pd.DataFrame(
        {
            "composition_x": [0.0, 0.5, 1.0, 0.0],
            "temperature_k": [300.0, 300.0, 300.0, 0.0],
            "gap_ev": [1.0, 1.2, 1.6, 2.0],
            "error_ev": [0.02, 0.02, 0.04, 0.01],
        }
    )
    published = load_published_gaps(REPO / "data" / "experiment" / "ag3sbri-table1.csv")
    compared = compare_with_published(ours, published).set_index(["kind", "temperature_k", "composition_x"])
    experiment = compared.loc[("experiment", 300.0)]
    assert experiment.loc[0.3, "capml_gap_ev"] == pytest.approx(1.12)
    assert experiment.loc[0.7, "capml_gap_ev"].item() == pytest.approx(1.36)
    assert np.isnan(compared.loc[("calculation", 600.0, 0.5), "capml_gap_ev"])  # not computed at 600 K
    assert compared.loc[("calculation", 0.0, 0.0), "capml_gap_ev"] == 2.0
    # differences with their uncertainty; outside the published range when beyond twice that
    at_zero = compared.loc[("calculation", 0.0, 0.0)]
    assert at_zero["difference_ev"] == pytest.approx(0.4) and at_zero["difference_error_ev"] == pytest.approx(
        np.hypot(0.01, 0.1)
    )
    assert bool(at_zero["outside"])  # 2.0 vs 1.6 ± 0.1
    assert not bool(compared.loc[("experiment", 300.0, 0.0), "outside"])  # 1.0 vs 0.9 ± 0.1: within 2 sigma
    assert pd.isna(compared.loc[("calculation", 600.0, 0.5), "outside"])  # not computed: neither
    shown = published_table(compare_with_published(ours, published))
    assert len(shown.rows) == len(published) and len(shown.warnings) == int(compared["outside"].fillna(False).sum())


def test_gap_results_render_once_with_unaveraged_runs_as_warnings() -> None:
    from capml_core.physics.statistics import average_gaps
    from capml_core.stages.bandgaps import BandGapResult, StaticGap, ThermalGap

    per_model = np.array([[1.00, 1.10, 0.90, 1.00], [1.02, 1.12, 0.92, 1.02]])  # 2 models x 4 snapshots
    average = average_gaps(per_model, np.array([1.50, 1.52]))
    result = BandGapResult(
        "ens",
        "gpaw-gllbsc",
        [StaticGap(0.5, "h", 1.51, 0.01, 1.60)],
        [
            ThermalGap("md-a", 0.5, 300.0, True, "", average),
            ThermalGap("md-b", 0.5, 600.0, False, "dropped by the phonon gate: unstable", None),
        ],
    )
    static, thermal = result.tables()
    assert static.rows == (("0.5", "1.510", "0.010", "1.600", "-"),)  # no lowest minimum quenched
    assert thermal.warnings == {1}  # the dropped run is reported as a problem, the averaged one is not
    assert thermal.rows[0][3].startswith(f"{average.mean_gap_ev:.3f} ± ")
    assert f"{100 * average.relative_change:+.1f}" == "-33.1"  # mean of (1.00 - 1.50) / 1.50 and (1.02 - 1.52) / 1.52
    lines = thermal.lines()
    assert lines[1] == (
        True,
        "thermal gaps: x 0.5, T (K) 600, frames (independent) -, Eg (eV) -, ΔEg (eV) -, ΔEg/Eg(0) -, "
        "vs lowest minimum -, note dropped by the phonon gate: unstable",
    )
