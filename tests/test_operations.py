"""Operations: a Prefect server + worker on loopback running a deployment, Dask fan-out, resume after SIGKILL."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from capml_core.store.database import Store
from capml_core.store.queries import latest_model
from tests.conftest import DEMO_CONFIG, REPO, project_copy, wait_until_served

pytestmark = pytest.mark.slow
BIN = Path(sys.executable).parent


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _start(command: list[str], env: dict[str, str], log: Path) -> subprocess.Popen:
    """A background process in its own process group (so the cleanup reaches its children)."""
    return subprocess.Popen(
        command, env=env, stdout=log.open("w"), stderr=subprocess.STDOUT, start_new_session=True, cwd=REPO
    )


def _stop(process: subprocess.Popen) -> None:
    if process.poll() is None:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=10)


@pytest.fixture()
def prefect_server(tmp_path: Path) -> Iterator[dict[str, str]]:
    """A Prefect server on 127.0.0.1 (free port, private PREFECT_HOME); yields the environment that uses it."""
    port = _free_port()
    env = {
        **os.environ,
        "PREFECT_HOME": str(tmp_path / "prefect-home"),
        "PREFECT_API_URL": f"http://127.0.0.1:{port}/api",
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    }
    server = _start(
        [str(BIN / "prefect"), "server", "start", "--host", "127.0.0.1", "--port", str(port)],
        env,
        tmp_path / "server.log",
    )
    try:
        url = f"http://127.0.0.1:{port}/api/health"
        wait_until_served(url, server, 120, lambda: (tmp_path / "server.log").read_text()[-3000:])
        yield env
    finally:
        _stop(server)


@pytest.mark.timeout(600)
def test_a_deployment_runs_on_a_local_server_and_worker_and_writes_the_store(prefect_server, tmp_path: Path) -> None:
    env, project = prefect_server, tmp_path / "project"
    registered = subprocess.run(
        [str(BIN / "capml"), "deploy"], env=env, capture_output=True, text=True, timeout=300, cwd=tmp_path
    )
    assert registered.returncode == 0, registered.stdout + registered.stderr
    for name in ("capml-pipeline/on-demand", "capml-pipeline/nightly-gaps", "capml-dataset-import/on-demand"):
        assert name in registered.stdout
    worker = _start(
        [str(BIN / "prefect"), "worker", "start", "--pool", "capml-local", "--limit", "1"], env, tmp_path / "w.log"
    )
    try:
        triggered = subprocess.run(
            [
                str(BIN / "prefect"),
                "deployment",
                "run",
                "capml-dataset-import/on-demand",
                "--param",
                f"config_path={DEMO_CONFIG}",
                "--param",
                f"project_dir={project}",
                "--watch",
                "--watch-timeout",
                "400",
            ],
            env=env,
            capture_output=True,
            text=True,
            timeout=450,
        )
        output = triggered.stdout + triggered.stderr
        assert triggered.returncode == 0, output + (tmp_path / "w.log").read_text()[-3000:]
        assert "Completed" in output
    finally:
        _stop(worker)
    store = Store(project)
    runs = store.runs()
    assert runs["status"].tolist() == ["done"]
    assert store.stages()["stage"].tolist() == ["dataset-import"]
    assert store.query("SELECT count(*) AS n FROM labels")["n"][0] > 150  # the demo's bundled imports
    # the schedule of the nightly deployment is registered with the server
    from prefect.client.orchestration import get_client
    from prefect.settings import PREFECT_API_URL, temporary_settings

    with temporary_settings({PREFECT_API_URL: env["PREFECT_API_URL"]}), get_client(sync_client=True) as client:
        nightly = client.read_deployment_by_name("capml-pipeline/nightly-gaps")
    assert [s.schedule.cron for s in nightly.schedules] == ["0 2 * * *"]
    assert nightly.parameters["stages"] == ["dataset-import", "dataset-summary", "gnn", "bandgaps", "modes"]


def _relaxations(store: Store) -> dict[tuple[float, str], tuple[float, str, float]]:
    rows = store.query(
        "SELECT composition_x, arrangement, energy_ev, structure_hash, wall_time_s FROM disorder_relaxations"
    )
    return {
        (round(r.composition_x, 9), r.arrangement): (r.energy_ev, r.structure_hash, r.wall_time_s)
        for r in rows.itertuples()
    }


@pytest.mark.timeout(900)
def test_disorder_fans_out_to_a_dask_cluster_and_matches_the_in_process_scan(trained, tmp_path: Path) -> None:
    """Relaxations as Prefect tasks on a Dask LocalCluster (2 workers) give the in-process scan's results."""
    from prefect.testing.utilities import prefect_test_harness

    from capml_core.stages.disorder import run_disorder_scan
    from flows.pipeline import disorder_flow

    source, config, _, _ = trained
    local_project, local_store = project_copy(source, tmp_path / "local")
    run_disorder_scan(
        local_store,
        config.model_copy(update={"disorder": config.disorder.model_copy()}),
        model_id=latest_model(local_store)[0],
    )
    dask_project, dask_store = project_copy(source, tmp_path / "dask")
    with prefect_test_harness(server_startup_timeout=120):
        summary = disorder_flow(
            config_path=str(DEMO_CONFIG),
            project_dir=str(dask_project),
            overrides={"execution.task_runner": "dask", "disorder.workers": 2},
        )
    assert summary["disorder"]["relaxed"] == {0.0: 1, 0.25: 3, 0.5: 6, 0.75: 3, 1.0: 1}
    local, fanned = _relaxations(local_store), _relaxations(dask_store)
    assert set(local) == set(fanned) and len(fanned) == 14
    for key, (energy, digest, _) in local.items():
        assert fanned[key][0] == pytest.approx(energy, abs=1e-6)
        assert fanned[key][1] == digest  # the same relaxed structure (quantised positions)


@pytest.mark.timeout(1200)
def test_a_killed_pipeline_resumes_without_recomputing_or_duplicating(trained, tmp_path: Path) -> None:
    """SIGKILL the `capml run` process in the middle of the disorder stage, run it again, compare with no kill."""
    from capml_core.stages.disorder import run_disorder_scan

    source, config, _, _ = trained
    reference_project, reference_store = project_copy(source, tmp_path / "reference")
    run_disorder_scan(reference_store, config, model_id=latest_model(reference_store)[0])
    project, store = project_copy(source, tmp_path / "killed")
    command = [str(BIN / "capml"), "run", str(DEMO_CONFIG), "--project", str(project), "--stage", "disorder"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    process = _start(command, env, tmp_path / "first.log")
    deadline = time.monotonic() + 600
    try:
        while True:  # wait for a few finished relaxations, reading the store as the dashboard does
            assert process.poll() is None, (tmp_path / "first.log").read_text()[-3000:]
            assert time.monotonic() < deadline, "the disorder stage made no progress in 600 s"
            with store.read() as con:
                done = con.execute("SELECT count(*) FROM disorder_relaxations").fetchone()[0]
            if done >= 3:
                break
            time.sleep(0.2)
    finally:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=30)
    before = _relaxations(store)
    assert 3 <= len(before) < 14  # killed in the middle
    assert store.runs()["status"].tolist() == ["interrupted"]  # its process is gone: not "running" for ever
    listed = subprocess.run(
        [str(BIN / "capml"), "runs", "--project", str(project)], env=env, capture_output=True, text=True, timeout=120
    )
    assert listed.returncode == 0 and "interrupted" in listed.stdout, listed.stdout + listed.stderr
    second = subprocess.run(command, env=env, capture_output=True, text=True, timeout=900)
    assert second.returncode == 0, second.stdout[-3000:] + second.stderr[-3000:]
    after = _relaxations(store)
    assert len(after) == 14
    assert (
        store.query(
            "SELECT count(*) AS n FROM (SELECT DISTINCT scan_id, composition_x, arrangement FROM disorder_relaxations)"
        )["n"][0]
        == 14
    )  # nothing duplicated
    for key, row in before.items():
        assert after[key] == row  # finished work kept as it was (same wall time: not recomputed)
    reference = _relaxations(reference_store)
    assert set(reference) == set(after)
    for key, (energy, digest, _) in reference.items():
        assert after[key][0] == pytest.approx(energy, abs=1e-6) and after[key][1] == digest
    assert sorted(store.runs()["status"]) == ["done", "interrupted"]  # the next run marked the killed one
    assert store.query("SELECT status FROM runs ORDER BY started_at")["status"].tolist() == ["interrupted", "done"]


def _children(pid: int) -> list[int]:
    """Child processes of ``pid`` (Linux /proc)."""
    path = Path(f"/proc/{pid}/task/{pid}/children")
    return [int(p) for p in path.read_text().split()] if path.exists() else []


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    stat = Path(f"/proc/{pid}/stat")
    return not (stat.exists() and stat.read_text().split(")")[-1].split()[0] == "Z")  # a zombie has stopped


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="prctl(PR_SET_PDEATHSIG) is Linux's")
def test_fan_out_workers_stop_when_the_stage_process_is_killed() -> None:
    """A killed stage (kill -9, a lost machine session) leaves no worker computing on: they die with it."""
    script = (
        "import time\nfrom capml_core.parallel import local_map\nlist(local_map(2)(time.sleep, [(300,), (300,)]))\n"
    )
    parent = subprocess.Popen([sys.executable, "-c", script], cwd=REPO)
    try:
        deadline = time.monotonic() + 120
        workers: list[int] = []
        while time.monotonic() < deadline:
            workers = [c for c in _children(parent.pid) if "spawn_main" in Path(f"/proc/{c}/cmdline").read_text()]
            if len(workers) == 2:
                break
            time.sleep(0.5)
        assert len(workers) == 2, "the two workers did not start"
        time.sleep(3)  # both past their initialiser, sleeping in their job
        parent.kill()
        parent.wait(timeout=30)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and any(_alive(w) for w in workers):
            time.sleep(0.2)
        assert not any(_alive(w) for w in workers), "a worker outlived the process that started it"
    finally:
        if parent.poll() is None:
            parent.kill()
