"""The dashboard: Streamlit's AppTest, and a real headless browser (Debian's chromium via Playwright)."""

from __future__ import annotations

import base64
import signal
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from streamlit.testing.v1 import AppTest

from capml_core.stages.shipping import shipped_result_dirs
from tests.browser import (
    CHROMIUM_ARGS,
    PAGES,
    chromium_path,
    dashboard_page,
    navigate_in_app,
    served_dashboard,
    show_three_d,
    visit_page,
)
from tests.conftest import REPO

APP = REPO / "dashboard" / "app.py"


def _run_app(project: Path, monkeypatch: pytest.MonkeyPatch) -> AppTest:
    monkeypatch.setenv("CAPML_PROJECT_DIR", str(project))
    return AppTest.from_file(str(APP), default_timeout=60).run()


def _decoded(array_spec) -> np.ndarray:  # plotly 7 stores arrays as base64 dicts
    if isinstance(array_spec, dict) and "bdata" in array_spec:
        return np.frombuffer(base64.b64decode(array_spec["bdata"]), dtype=np.dtype(array_spec["dtype"]))
    return np.asarray(array_spec)


def test_a_run_whose_process_died_shows_as_interrupted(demo_store_copy: Path, monkeypatch) -> None:
    from capml_core.store.database import Store

    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    store = Store(demo_store_copy)
    with store.write() as w:
        w.start_run(
            run_id="killed",
            name="demo",
            config_hash="abc",
            config_json=None,
            config_path=None,
            code_version="t",
            packages={},
        )
        w.set_stage("killed", "label", "running")
        w.con.execute("UPDATE runs SET pid = ? WHERE run_id = 'killed'", [dead.pid])  # as if SIGKILLed
    at = _run_app(demo_store_copy, monkeypatch)
    assert not at.exception
    assert {m.label: m.value for m in at.metric}["latest run"] == "interrupted"
    assert at.dataframe[0].value["status"].tolist() == ["interrupted"]
    assert at.dataframe[1].value["status"].tolist() == ["interrupted"]


def test_overview_shows_runs_coverage_and_gap_histograms(demo_store_copy: Path, monkeypatch) -> None:
    from capml_core.store.database import Store
    from flows.tasks import new_run_id

    store = Store(demo_store_copy)
    run_id = new_run_id("demo")
    with store.write() as w:
        w.start_run(
            run_id=run_id,
            name="demo",
            config_hash="abc",
            config_json=None,
            config_path=None,
            code_version="test",
            packages={},
        )
        w.set_stage(run_id, "dataset-import", "done")
        w.finish_run(run_id, status="done")
    at = _run_app(demo_store_copy, monkeypatch)
    assert not at.exception
    metrics = {m.label: m.value for m in at.metric}
    assert metrics == {"runs": "1", "latest run": "done", "structures": "150", "reference levels": "2"}
    assert at.dataframe[0].value["run_id"].tolist() == [run_id]
    assert at.dataframe[1].value["stage"].tolist() == ["dataset-import"]
    charts = {c.proto.id: c for c in at.get("plotly_chart")}
    assert len(charts) == 3
    import json

    specs = [json.loads(c.proto.spec) for c in at.get("plotly_chart")]
    heat = next(s for s in specs if s["data"][0]["type"] == "heatmap")
    # coverage of the first level (gpaw-gllbsc): 48 structures over 9 compositions
    assert _decoded(heat["data"][0]["z"]).sum() == 48 and len(heat["data"][0]["x"]) == 9
    hist = next(s for s in specs if s["data"][0]["type"] == "histogram")
    gaps = {trace["name"]: _decoded(trace["x"]) for trace in hist["data"]}
    assert set(gaps) == {"gpaw-pbesol", "gpaw-gllbsc"}
    assert len(gaps["gpaw-pbesol"]) == 103 and len(gaps["gpaw-gllbsc"]) == 48
    assert gaps["gpaw-gllbsc"].min() > gaps["gpaw-pbesol"].max()
    # choosing the other level redraws the coverage map for it
    at.selectbox(key="coverage_level").select("gpaw-pbesol").run()
    heat = next(
        json.loads(c.proto.spec)
        for c in at.get("plotly_chart")
        if json.loads(c.proto.spec)["data"][0]["type"] == "heatmap"
    )
    assert _decoded(heat["data"][0]["z"]).sum() == 103


def test_overview_gives_relative_changes_against_the_model_and_the_dft_eg0(tmp_path: Path, monkeypatch) -> None:
    """Where DFT computed the cubic Eg(0), the overview shows ΔEg/Eg against it beside the model's own."""
    import shutil

    from capml_core.stages.report import project_report
    from capml_core.store.database import Store

    source = next(p for p in shipped_result_dirs() if p.name == "ag3sbri-active-learning")
    shutil.copy(source / "capml.duckdb", tmp_path / "capml.duckdb")
    at = _run_app(tmp_path, monkeypatch)
    assert not at.exception
    titles = [m.value for m in at.markdown]
    first = titles.index("**ΔEg/Eg(0) (%) against the cubic structure** (the model's Eg(0))")
    second = next(i for i, t in enumerate(titles) if t.startswith("**ΔEg/Eg(0) (%) against DFT's cubic Eg(0)**"))
    assert first < second
    against_dft = next(d.value for d in at.dataframe if "300 K" in d.value and len(d.value) == 2)
    report = {(g["composition_x"], g["temperature_k"]): g for g in project_report(Store(tmp_path))["gaps"]}
    assert against_dft.index.tolist() == [0.0, 1.0]  # the end members: DFT's Eg(0) computed there
    assert against_dft.loc[0.0, "300 K"] == pytest.approx(
        100 * report[(0.0, 300.0)]["relative_change_dft_eg0"], abs=0.06
    )
    assert any("cubic Eg(0) 1.585 eV is -0.098 eV off" in w.value for w in at.warning)


def test_empty_project_says_what_to_do(tmp_path: Path, monkeypatch) -> None:
    at = _run_app(tmp_path / "nothing-here", monkeypatch)
    assert not at.exception
    assert "capml run" in at.info[0].value
    assert not (tmp_path / "nothing-here").exists()  # the dashboard never creates a store


@pytest.mark.slow
def test_real_browser_draws_the_charts(demo_store_copy: Path, tmp_path: Path) -> None:
    from PIL import Image
    from playwright.sync_api import sync_playwright

    shot = tmp_path / "overview.png"
    with served_dashboard(demo_store_copy) as url, sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=chromium_path(), args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": 1400, "height": 2400})
        page.goto(f"{url}/", wait_until="domcontentloaded")
        page.wait_for_selector(".js-plotly-plot .main-svg .trace", timeout=60_000)
        page.wait_for_function("document.querySelectorAll('.js-plotly-plot').length >= 3", timeout=60_000)
        page.wait_for_timeout(1000)
        n_bars = page.locator(".js-plotly-plot .trace.bars .point").count()
        heat_drawn = page.locator(".js-plotly-plot .hm, .js-plotly-plot image").count()
        page.screenshot(path=str(shot), full_page=True)
        title = page.title()
        page.goto(f"{url}/dataset", wait_until="domcontentloaded")
        page.wait_for_selector(".js-plotly-plot .trace.boxes", timeout=60_000)
        n_boxes = page.locator(".js-plotly-plot .trace.boxes").count()
        page.screenshot(path=str(tmp_path / "dataset.png"), full_page=True)
        browser.close()
    port = int(url.rsplit(":", 1)[1])
    with pytest.raises(ConnectionRefusedError):  # `capml dashboard` is the server: stopping it leaves none behind
        socket.create_connection(("127.0.0.1", port), timeout=5).close()
    assert n_boxes == 2  # one box trace per reference level
    assert title == "capml"
    assert n_bars >= 10, n_bars  # histogram bins + label bars are drawn as SVG paths
    assert heat_drawn >= 1
    image = np.asarray(Image.open(shot).convert("RGB"))
    assert image.shape[1] == 1400
    colours = {tuple(c) for c in image[::4, ::4].reshape(-1, 3)}
    assert len(colours) > 50  # a drawn page, not a blank one
    blues = np.mean((image[..., 2] > 150) & (image[..., 0] < 120))
    assert blues > 0.005  # the blue histogram/heat-map pixels are there


def _dataset_page() -> None:
    from dashboard.views.dataset import render_dataset

    render_dataset()


def test_dataset_page_shows_sets_coverage_gaps_and_failures(demo_store_copy: Path, monkeypatch) -> None:
    import json

    from capml_core.config.loading import load_config
    from capml_core.stages.training_sets import end_member_force_constants, generate_structure_set
    from capml_core.store.database import Store
    from capml_core.store.records import LabelRecord
    from tests.conftest import DEMO_CONFIG

    config = load_config(DEMO_CONFIG).config
    store = Store(demo_store_copy)
    end_members = {
        s: end_member_force_constants(config.system, config.dataset, s, cache_dir=demo_store_copy) for s in ("Br", "I")
    }
    records = list(generate_structure_set(config.system, config.dataset, config.dataset.sets[0], end_members))
    with store.write() as w:
        w.start_run(  # a run records its configuration: the axis is named after the system's species
            run_id="run-demo",
            name="demo",
            config_hash="abc",
            config_json=config.model_dump_json(),
            config_path=None,
            code_version="test",
            packages={},
        )
        w.add_structures(records, run_id=None)
        w.add_to_set("demo", "gpaw-pbesol", [r.structure_hash for r in records])
        w.add_labels(
            [
                LabelRecord(records[0].structure_hash, "gpaw-pbesol", gap_ev=0.5),
                LabelRecord(records[1].structure_hash, "gpaw-pbesol", status="failed", error="SCF stalled"),
            ],
            run_id=None,
        )
    monkeypatch.setenv("CAPML_PROJECT_DIR", str(demo_store_copy))
    at = AppTest.from_function(_dataset_page, default_timeout=60).run()
    assert not at.exception
    # the demo set has one structure in every (composition, condition) cell: a table, not a uniform heat map
    grid = at.dataframe[0].value
    assert grid.to_numpy().sum() == 15 and len(grid.columns) == 5 and (grid.to_numpy() == grid.to_numpy()[0, 0]).all()
    progress = at.dataframe[1].value
    assert progress[["set_name", "n_structures", "n_ok", "n_failed", "n_pending"]].values.tolist() == [
        ["demo", 15, 1, 1, 13]
    ]
    specs = [json.loads(c.proto.spec) for c in at.get("plotly_chart")]
    assert not [s for s in specs if s["data"][0]["type"] == "heatmap"]
    box = next(s for s in specs if s["data"][0]["type"] == "box")
    assert {trace["name"] for trace in box["data"]} == {"gpaw-pbesol", "gpaw-gllbsc"}
    assert box["layout"]["xaxis"]["title"]["text"] == "Br fraction x"  # named after the species (the run's config)
    failed = at.dataframe[2].value
    assert failed["error"].tolist() == ["SCF stalled"]


def _gnn_page() -> None:
    from dashboard.views.gnn import render_gnn

    render_gnn()


def test_band_gap_model_page_draws_parity_and_errors(demo_store_copy: Path, monkeypatch) -> None:
    import json

    from capml_core.config.loading import load_config
    from capml_core.stages.gnn_training import train_two_stage
    from capml_core.store.database import Store
    from tests.conftest import DEMO_CONFIG

    monkeypatch.setenv("CAPML_PROJECT_DIR", str(demo_store_copy))
    empty = AppTest.from_function(_gnn_page, default_timeout=60).run()
    assert "No trained model yet" in empty.info[0].value
    gnn = load_config(DEMO_CONFIG).config.gnn.model_copy(
        update={"ensemble_size": 1, "epochs": 30, "fine_tune_epochs": 20}
    )
    train_two_stage(Store(demo_store_copy), gnn, cheap_level="gpaw-pbesol", high_level="gpaw-gllbsc")
    import streamlit as st

    st.cache_data.clear()  # the page caches reads until the store changes
    at = AppTest.from_function(_gnn_page, default_timeout=60).run()
    assert not at.exception
    table = at.dataframe[0].value
    assert set(zip(table["stage"], table["split"], strict=True)) == {
        (s, p) for s in ("cheap", "high") for p in ("train", "valid", "test")
    }
    assert table.groupby("stage")["n"].sum().to_dict() == {"cheap": 103, "high": 48}
    specs = [json.loads(c.proto.spec) for c in at.get("plotly_chart")]
    scatters = [s for s in specs if s["data"][0]["type"] == "scatter"]
    assert len(scatters) == 2 and len(specs) == 4  # parity + error histogram per stage (no search or curve yet)
    n_points = sum(len(_decoded(t["x"])) for t in scatters[1]["data"] if t["name"] != "y = x")
    assert n_points == 48


def _active_learning_page() -> None:
    from dashboard.views.active_learning import render_active_learning_rounds

    render_active_learning_rounds()


def test_active_learning_page_draws_errors_per_round_and_disagreement_along_a_run(tmp_path: Path, monkeypatch) -> None:
    import json

    from capml_core.store.database import Store

    store = Store(tmp_path / "project")
    store.initialise()
    common = {"uncertainty_id": "unc-1", "model_id": "mace-a", "committee_size": 3, "ensemble_size": 3}
    uncertainty = [
        {
            **common,
            "md_id": md_id,
            "frame": frame,
            "time_fs": 50.0 * frame,
            "composition_x": x,
            "temperature_k": 300.0,
            "energy_std_mev_per_atom": 1.0 + frame,
            "force_std_mean_ev_per_a": 0.01,
            "force_std_max_ev_per_a": 0.05 * (frame + 1),
            "ensemble_id": "ensemble-e",
            "gap_mean_ev": 1.0,
            "gap_std_ev": 0.02,
            "descriptor": [0.0, 1.0],
        }
        for md_id, x in (("md-a", 0.0), ("md-b", 1.0))
        for frame in range(4)
    ]
    rounds = [
        {
            "round": r,
            "model_id": f"mace-{r}",
            "frames_added": 24 * r,
            "frames_total": 24 * r,
            "dft_calls": 48 * r,
            "dft_failed": 0,
            "dft_cpu_h": 2.5 * r,
            "mace_energy_mae_mev_per_atom": 9.8 - 4 * r,
            "mace_force_mae_ev_per_a": 0.078 - 0.01 * r,
            "mace_test_force_mae_ev_per_a": 0.053,
            "gnn_cheap_mae_ev": 0.14 - 0.05 * r,
            "gnn_high_mae_ev": 0.45 - 0.3 * r,
            "gnn_high_mean_error_ev": -0.4 + 0.3 * r,
            "targets_met": False,
            "targets_json": None  # a round recorded before the limits were stored with it
            if r == 0
            else json.dumps({"gnn_high_mae": False, "limits": LIMITS}),
        }
        for r in (0, 1)
    ]
    frames = [
        {
            "structure_hash": h,
            "md_id": "md-a",
            "frame": f,
            "time_fs": 50.0 * f,
            "composition_x": 0.0,
            "temperature_k": 300.0,
            "model_id": "mace-a",
            "held_out": held,
            "selection": sel,
            "round": r,
        }
        for h, f, held, sel, r in (("h1", 1, True, "random", 0), ("h2", 3, False, "uncertainty", 1))
    ]
    with store.write() as writer:
        writer.add_rows("md_uncertainty", uncertainty)
        writer.add_rows("active_learning_rounds", rounds)
        writer.add_rows("md_frames", frames)
    monkeypatch.setenv("CAPML_PROJECT_DIR", str(store.project_dir))
    at = AppTest.from_function(_active_learning_page, default_timeout=60).run()
    assert not at.exception
    specs = {c.proto.id: json.loads(c.proto.spec) for c in at.get("plotly_chart")}
    per_round, along = list(specs.values())
    energy = per_round["data"][0]
    assert _decoded(energy["y"]).tolist() == pytest.approx([9.8, 5.8]) and _decoded(energy["x"]).tolist() == [0, 1]
    assert len(per_round["data"]) == 9  # four panels, the test-split force MAE, four stop targets
    targets = [t for t in per_round["data"] if t["name"] == "stop target"]
    assert np.concatenate([_decoded(t["y"]) for t in targets]).tolist() == pytest.approx(
        [5.0, 5.0, 1.5 * 0.053, 1.5 * 0.053, 0.06, 0.06, 0.08, 0.08]
    )  # energy, forces (1.5 x the test split, per round), gap cheap, gap high
    assert [t["yaxis"] if "yaxis" in t else "y" for t in along["data"]] == ["y", "y2", "y3"]
    assert _decoded(along["data"][1]["y"]).tolist() == pytest.approx([0.05, 0.1, 0.15, 0.2])  # run md-a first
    marks = sorted({(s["x0"], s["line"]["color"]) for s in along["layout"]["shapes"]})  # one per panel
    assert marks == [(50.0, "grey"), (150.0, "crimson")]  # held-out frame, then the frame round 1 chose
    table = at.dataframe[0].value
    assert table["frames_added"].tolist() == [0, 24] and table["dft_cpu_h"].tolist() == [0.0, 2.5]


def test_dashboard_reads_are_cached_until_the_store_changes(tmp_path: Path) -> None:
    """Each read has its own cache, reused while the store file is unchanged, read again once it changes."""
    import streamlit as st

    from dashboard.data import store_cached

    calls: list[str] = []

    from ase.build import bulk

    from capml_core.store.database import Store
    from capml_core.store.records import StructureRecord
    from capml_core.system.structures import structure_hash

    @store_cached
    def first(store: Store) -> str:
        calls.append("first")
        return "one"

    @store_cached
    def second(store: Store) -> str:
        calls.append("second")
        return store.query("SELECT count(*) AS n FROM structures")["n"][0]  # the batch's connection

    st.cache_data.clear()
    store = Store(tmp_path)
    store.initialise()
    path = str(tmp_path)
    assert (first(path), second(path), first(path), second(path)) == ("one", 0, "one", 0)
    assert calls == ["first", "second"]  # distinct functions, distinct caches; the second visit reads nothing
    with store.write() as writer:  # the store file changes
        atoms = bulk("NaCl", "rocksalt", a=5.64, cubic=True)
        record = StructureRecord(atoms=atoms, structure_hash=structure_hash(atoms), kind="equilibrium", seed=0)
        writer.add_structures([record], run_id=None)
    assert first(path) == "one" and calls == ["first", "second", "first"]

    @store_cached
    def with_key(store: Store, key: str) -> str:  # reads with more arguments (a structure by hash, ...)
        calls.append(key)
        return key.upper()

    assert (with_key(path, "a"), with_key(path, "b"), with_key(path, "a")) == ("A", "B", "A")
    assert calls[-2:] == ["a", "b"]


#: Stop targets as `capml al record` stores them with a round (targets_json's "limits").
LIMITS = {
    "mace_energy_mae_mev_per_atom": 5.0,
    "mace_force_ratio": 1.5,
    "gnn_high_mae_ev": 0.08,
    "gnn_high_mean_error_ev": 0.03,
    "gnn_cheap_mae_ev": 0.06,
}


def test_species_and_temperatures_have_one_colour_everywhere() -> None:
    from dashboard.style import SOURCE_SYMBOLS, species_colour, species_colour_map, temperature_colour

    assert species_colour_map(["I", "S", "Ag"]) == species_colour_map(["Ag", "S", "I"])  # not by plotting order
    assert len({species_colour(s) for s in ("Ag", "S", "Br", "I", "Br/I")}) == 5
    assert temperature_colour(300.0) == temperature_colour(300.0) != temperature_colour(600.0)
    assert temperature_colour(900.0) == temperature_colour(600.0)  # hotter than the scale: clipped
    assert len(set(SOURCE_SYMBOLS.values())) == 3  # capml, calculation, experiment told apart by marker


@pytest.mark.slow
@pytest.mark.parametrize("results", shipped_result_dirs(), ids=lambda p: p.name)
def test_every_page_of_the_shipped_results_in_a_real_browser(results: Path) -> None:
    """What a user must see on the shipped results: every page drawn, the trust panel, one species legend.

    One screenshot per page lands in build/screenshots/<results>/ for review (not compared: looked at).
    """
    from playwright.sync_api import sync_playwright

    shots = REPO / "build" / "screenshots" / results.name
    visits = {}
    with served_dashboard(results, stop_signal=signal.SIGINT) as url, sync_playwright() as pw:  # Ctrl-C ends it
        browser = pw.chromium.launch(executable_path=chromium_path(), args=CHROMIUM_ARGS)
        page = dashboard_page(browser)
        for name in PAGES:
            visits[name] = visit_page(page, url, name, screenshot=shots / f"{name}.png")
            if name in ("disorder", "modes"):  # the atoms by species: the 3D views, drawn on request
                assert not visits[name].species_colours  # not drawn before asked for
                visits[name].species_colours = show_three_d(page)
        moved = {name: navigate_in_app(page, name) for name in ("sql", "band-gaps")}  # from the sidebar, no reload
        browser.close()
    assert moved["sql"] is None and moved["band-gaps"] is not None  # a page switch draws the new page's charts
    with pytest.raises(ConnectionRefusedError):  # Ctrl-C on `capml dashboard` leaves no server behind
        socket.create_connection(("127.0.0.1", int(url.rsplit(":", 1)[1])), timeout=5).close()
    for name, visit in visits.items():
        assert visit.n_exceptions == 0, (name, visit.text[:2000])
        assert "Page not found" not in visit.text, name
        assert PAGES[name] in visit.text, (name, visit.text[:500])
        assert visit.n_charts >= (0 if name == "sql" else 1), name
        assert (shots / f"{name}.png").stat().st_size > 20_000, name  # a drawn page, not a blank one
    overview = visits["overview"].text
    assert "Eg(x, T)" in overview and "gap MAE on held-out MD frames" in overview
    shared = set(visits["disorder"].species_colours) & set(visits["modes"].species_colours)
    assert {"Ag", "S"} <= shared  # both pages draw the atoms by species
    assert {s: visits["disorder"].species_colours[s] for s in shared} == {
        s: visits["modes"].species_colours[s] for s in shared
    }
