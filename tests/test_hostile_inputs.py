"""Bad and hostile inputs, a fresh and busy machine, two runs on one project: one clear message, nothing run.

Each case is one found by a battery of bad inputs; each test failed before its fix.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import pickle
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from capml_core.config.loading import load_config
from capml_core.errors import ConfigError, StoreError
from capml_core.store.database import Store
from capml_core.store.hosts import check_project_dir
from capml_core.store.records import StructureRecord
from flows.cli import app
from tests.conftest import DEMO_CONFIG, GLLBSC_FILE, REPO

runner = CliRunner()
BIN = Path(sys.executable).parent
SIDE_EFFECT = "capml-hostile-side-effect"


class _RunsACommand:
    """A pickle whose loading runs a shell command (what a crafted model file does)."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def crafted_pickle(path: Path, marker: Path) -> Path:
    """A file torch.load(weights_only=False) would turn into ``touch marker``."""
    import torch

    torch.save({"model": _RunsACommand(marker)}, path)
    return path


def _cli(*args: str, env: dict[str, str] | None = None, timeout: float = 600) -> subprocess.CompletedProcess:
    return subprocess.run(
        [str(BIN / "capml"), *args], capture_output=True, text=True, timeout=timeout, env=env, cwd=REPO
    )


# ------------------------------------------------------------------------------------------- Prefect, fresh and busy
def _spin() -> None:
    while True:
        pass


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_capml_run_starts_on_an_empty_prefect_home_while_both_cores_are_busy(tmp_path: Path) -> None:
    """A fresh PREFECT_HOME (migrations) under load takes longer than Prefect's 20 s: capml waits, one server."""
    load = [mp.get_context("spawn").Process(target=_spin, daemon=True) for _ in range(2)]
    for process in load:
        process.start()
    try:
        env = {**os.environ, "PREFECT_HOME": str(tmp_path / "empty-prefect-home"), "OMP_NUM_THREADS": "1"}
        env.pop("PREFECT_API_URL", None)
        env.pop("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", None)
        project = tmp_path / "project"
        result = _cli("run", str(DEMO_CONFIG), "--project", str(project), "--stage", "dataset-summary", env=env)
    finally:
        for process in load:
            process.kill()
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-4000:]
    assert output.count("Starting temporary server") == 1 and "Traceback" not in output, output[-4000:]
    assert Store(project).runs()["status"].tolist() == ["done"]


@pytest.mark.slow
def test_a_prefect_server_that_does_not_start_is_one_clear_message(tmp_path: Path) -> None:
    env = {**os.environ, "PREFECT_HOME": str(tmp_path / "ph"), "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "1"}
    env.pop("PREFECT_API_URL", None)
    project = tmp_path / "project"
    result = _cli("run", str(DEMO_CONFIG), "--project", str(project), "--stage", "dataset-summary", env=env)
    assert result.returncode == 2, result.stdout + result.stderr
    assert "Prefect's temporary API server did not start within 1 s" in result.stderr
    assert "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS" in result.stderr and "Traceback" not in result.stderr
    assert not project.exists()


# ------------------------------------------------------------------------------------------- configuration files
@pytest.mark.parametrize(
    ("text", "opened", "stopped"),
    [
        ('[run]\nname = "x"\n[system]\ncompositions = [0.0, 0.5\nname = "y"\n', "line 4, column 16", "line 5"),
        ('[run]\nname = "x"\n[system]\nspecies = { A = "Ag"\nname = "y"\n', "line 4, column 11", "line 4"),
        ('[run]\nname = "x"  # a [ in a comment\n[system\nname = "y"\n', "line 3, column 1", "line 3"),
    ],
)
def test_a_toml_syntax_error_points_at_the_unclosed_bracket(tmp_path: Path, text: str, opened: str, stopped: str):
    path = tmp_path / "bad.toml"
    path.write_text(text)
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    message = str(caught.value)
    assert str(path) in message and f"opened at {opened} is not closed" in message
    assert f"parsing stopped at {stopped}" in message


def test_a_bad_set_value_is_blamed_on_set_not_on_the_file(tmp_path: Path) -> None:
    project = tmp_path / "p"
    result = runner.invoke(app, ["run", str(DEMO_CONFIG), "-p", str(project), "--set", "md.workers=abc"])
    assert result.exit_code == 2
    assert "--set (on top of" in result.output and "--set md.workers='abc': field 'md.workers'" in result.output
    mixed = runner.invoke(app, ["run", str(DEMO_CONFIG), "-p", str(project), "--set", "system.compositions=[0.5, 0.5]"])
    assert mixed.exit_code == 2 and "--set system.compositions=[0.5, 0.5]" in mixed.output
    assert "listed more than once" in mixed.output
    assert not project.exists()


def test_duplicate_compositions_are_refused(tmp_path: Path) -> None:
    path = tmp_path / "dup.toml"
    text = DEMO_CONFIG.read_text().replace('"../', f'"{REPO}/data/')
    path.write_text(text.replace("compositions = [0.0, 0.25, 0.5, 0.75, 1.0]", "compositions = [0.0, 0.25, 0.250]"))
    with pytest.raises(
        ConfigError, match=r"'system.compositions' = \[0.0, 0.25, 0.25\]: \[0.25\] listed more than once"
    ):
        load_config(path)


@pytest.mark.parametrize("content", [b"garbage\n", b"data_x\n_cell_length_a 5\nloop_\n_atom_site_label\nfoo bar\n"])
def test_a_garbage_parent_file_says_why_it_is_not_readable(tmp_path: Path, content: bytes) -> None:
    cif = tmp_path / "parent.cif"
    cif.write_bytes(content)
    text = DEMO_CONFIG.read_text().replace('"../', f'"{REPO}/data/')
    text = text.replace(
        'builder = "antiperovskite"\nspecies = { A = "Ag", B = "S", X = "Br" }\nlattice_a = 4.793', f'file = "{cif}"'
    )
    config = tmp_path / "c.toml"
    config.write_text(text)
    with pytest.raises(ConfigError) as caught:
        load_config(config)
    message = str(caught.value)
    assert f"field 'system.parent.file' = '{cif}': not a structure file ASE can read (" in message
    reason = message.split("ASE can read (")[1].split(")")[0]
    assert reason.strip() and "give a CIF, POSCAR or extended-XYZ file" in message


def test_an_unknown_element_symbol_names_frame_line_symbol_and_allowed_species(tmp_path: Path) -> None:
    lines = GLLBSC_FILE.read_text().splitlines()
    two_frames = lines[:84]
    n_atoms = int(two_frames[0])
    assert n_atoms == 40
    symbol_line = 42 + 2 + 5  # frame 1, its sixth atom
    two_frames[symbol_line] = "Xx" + two_frames[symbol_line][2:]
    bad = tmp_path / "bad.extxyz"
    bad.write_text("\n".join(two_frames) + "\n")
    project = tmp_path / "p"
    args = ["data", "import", str(bad), "--level", "gpaw-gllbsc", "-c", str(DEMO_CONFIG), "-p", str(project)]
    result = runner.invoke(app, [*args, "--labels", "gap", "--prefix", "gllbsc"])
    assert result.exit_code == 2
    assert f"frame 1 (line {symbol_line + 1}): unknown element symbol 'Xx'" in result.output
    assert "allowed species: Ag, Br, I, S" in result.output and not project.exists()


# ------------------------------------------------------------------------------------------- project folders
def _read_only_folder_command(folder: Path, command: list[str]) -> list[str]:
    """``command`` run where ``folder`` is read-only: chmod for a user, a read-only mount for root."""
    if os.geteuid() != 0:
        folder.chmod(0o555)
        return command
    if shutil.which("unshare") is None:
        pytest.skip("root without unshare: cannot make a read-only folder")
    quoted = " ".join(f"'{part}'" for part in command)
    return ["unshare", "-m", "sh", "-c", f"mount -t tmpfs -o ro,size=1m tmpfs '{folder}' && exec {quoted}"]


@pytest.mark.slow
@pytest.mark.parametrize("where", ["under-a-file", "read-only"])
def test_a_project_folder_that_cannot_be_written_is_one_message_for_every_write_command(
    tmp_path: Path, where: str
) -> None:
    if where == "under-a-file":
        (tmp_path / "a-file").write_text("x")
        project = tmp_path / "a-file" / "project"
        expected = "is a file, not a folder"
    else:
        (tmp_path / "ro").mkdir()
        project = tmp_path / "ro" / "project"
        expected = "is not writable (permission denied)"
    commands = {
        "data import": ["data", "import", str(GLLBSC_FILE), "--level", "gpaw-gllbsc", "-c", str(DEMO_CONFIG)]
        + ["--labels", "gap", "--prefix", "gllbsc", "-p", str(project)],
        "data generate": ["data", "generate", "-c", str(DEMO_CONFIG), "-p", str(project)],
        "run": ["run", str(DEMO_CONFIG), "-p", str(project), "--stage", "dataset-summary"],
    }
    env = {**os.environ, "PREFECT_HOME": str(tmp_path / "prefect-home")}
    for name, args in commands.items():
        command = [str(BIN / "capml"), *args]
        if where == "read-only":
            command = _read_only_folder_command(tmp_path / "ro", command)
        result = subprocess.run(command, capture_output=True, text=True, env=env, cwd=REPO, timeout=300)
        assert result.returncode == 2, (name, result.stdout[-2000:], result.stderr[-2000:])
        assert expected in result.stderr and f"project directory {project}" in result.stderr, (name, result.stderr)
        assert "Traceback" not in result.stdout + result.stderr, name
        assert "Starting temporary server" not in result.stdout + result.stderr, name  # refused before Prefect


def test_check_project_dir_names_the_file_in_the_way(tmp_path: Path) -> None:
    (tmp_path / "f").write_text("")
    with pytest.raises(StoreError, match=f"{tmp_path / 'f'} is a file, not a folder"):
        check_project_dir(tmp_path / "f" / "a" / "b")
    check_project_dir(tmp_path / "new" / "deeper")  # creatable: fine, and nothing created
    assert not (tmp_path / "new").exists()


# ------------------------------------------------------------------------------------------- two runs, killed runs
def _store_with_pending(tmp_path: Path, n: int) -> tuple[Store, list[str]]:
    from ase.build import bulk

    from capml_core.system.structures import structure_hash

    store = Store(tmp_path / "proj")
    records = []
    for i in range(n):
        atoms = bulk("Ag", "fcc", a=4.0 + 0.01 * i, cubic=True)
        records.append(StructureRecord(atoms=atoms, structure_hash=structure_hash(atoms), kind="equilibrium"))
    with store.write() as writer:
        writer.add_structures(records, run_id=None)
        writer.add_to_set("s", "gpaw-pbesol", [r.structure_hash for r in records])
    return store, [r.structure_hash for r in records]


def test_work_claimed_by_a_live_process_is_left_to_it_and_a_dead_ones_is_taken_over(tmp_path: Path) -> None:
    store, hashes = _store_with_pending(tmp_path, 3)
    other = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        with store.write() as writer:  # another capml process claims the first two
            writer.con.execute(
                "INSERT INTO label_claims VALUES (?, 'gpaw-pbesol', ?, ?, now()), (?, 'gpaw-pbesol', ?, ?, now())",
                [hashes[0], other.pid, _host(), hashes[1], other.pid, _host()],
            )
        with store.write() as writer:
            assert writer.claim_labels("gpaw-pbesol", hashes) == [hashes[2]]
            writer.release_labels("gpaw-pbesol")
    finally:
        other.kill()
        other.wait()
    time.sleep(0.1)
    with store.write() as writer:  # its process is gone: its claims are stale
        assert writer.claim_labels("gpaw-pbesol", hashes) == hashes
        writer.release_labels("gpaw-pbesol")
    assert store.query("SELECT count(*) AS n FROM label_claims")["n"][0] == 0


def _host() -> str:
    from capml_core.store.hosts import this_host

    return this_host()


def test_scratch_folders_of_killed_calculations_are_cleaned_and_live_ones_kept(tmp_path: Path) -> None:
    import json

    from capml_core.stages.labelling import OWNER_FILE, clean_scratch

    scratch = tmp_path / "scratch"
    other = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    try:
        for name, pid in (("live", other.pid), ("dead", dead.pid)):
            (scratch / name).mkdir(parents=True)
            (scratch / name / OWNER_FILE).write_text(json.dumps({"pid": pid, "host": _host()}))
            (scratch / name / "gpaw.txt").write_text("SCF ...")
        assert clean_scratch(scratch) == 1
        assert (scratch / "live").is_dir() and not (scratch / "dead").exists()
    finally:
        other.kill()
        other.wait()


# ------------------------------------------------------------------------------------------- SQL of any size
def test_sql_caps_printed_rows_streams_a_file_and_stops_a_long_query(demo_store_dir: Path, tmp_path: Path) -> None:
    project = str(demo_store_dir)
    many = runner.invoke(app, ["sql", "SELECT * FROM range(1000000) t(i)", "-p", project, "--output", "csv"])
    assert many.exit_code == 0
    assert many.stdout.count("\n") == 1 + 1000  # header + the first 1000 rows
    assert "999000 more rows left out (first 1000 shown)" in many.stderr
    out = tmp_path / "all.csv"
    streamed = runner.invoke(
        app, ["sql", "SELECT i, i * 2 AS j FROM range(1000000) t(i)", "-p", project, "--file", str(out)]
    )
    assert streamed.exit_code == 0 and "1000000 rows ->" in streamed.output
    lines = out.read_text().splitlines()
    assert lines[0] == "i,j" and len(lines) == 1_000_001 and lines[-1] == "999999,1999998"
    slow = "SELECT count(*) FROM range(100000000) a, range(100000) b"
    started = time.monotonic()
    stopped = runner.invoke(app, ["sql", slow, "-p", project, "--timeout", "1"])
    assert stopped.exit_code == 2 and "query stopped after 1 s, its time limit" in stopped.output
    assert time.monotonic() - started < 30


# ------------------------------------------------------------------------------------------- re-import
def test_reimporting_other_labels_for_stored_structures_says_which_were_kept(tmp_path: Path) -> None:
    import re

    lines = GLLBSC_FILE.read_text().splitlines()[:42]
    original = tmp_path / "one.extxyz"
    original.write_text("\n".join(lines) + "\n")
    changed = tmp_path / "changed.extxyz"
    stored_gap = float(re.search(r"gllbsc_gap=([0-9.]+)", lines[1]).group(1))
    lines[1] = re.sub(r"gllbsc_gap=[0-9.]+", f"gllbsc_gap={stored_gap + 0.1:.5f}", lines[1])
    changed.write_text("\n".join(lines) + "\n")
    project = tmp_path / "p"
    args = [
        "--level",
        "gpaw-gllbsc",
        "-c",
        str(DEMO_CONFIG),
        "-p",
        str(project),
        "--labels",
        "gap",
        "--prefix",
        "gllbsc",
    ]
    assert runner.invoke(app, ["data", "import", str(original), *args]).exit_code == 0
    same = runner.invoke(app, ["data", "import", str(original), *args])
    assert same.exit_code == 0 and "other labels" not in same.output
    again = runner.invoke(app, ["data", "import", str(changed), *args])
    assert again.exit_code == 0 and "1 already stored" in again.output
    assert "have other labels at gpaw-gllbsc in the store than in this file (gap;" in again.output
    assert f"stored {stored_gap:.4f}, file {stored_gap + 0.1:.4f}" in again.output
    assert "the stored labels were kept" in again.output
    kept = Store(project).query("SELECT gap_ev FROM labels")["gap_ev"].tolist()
    assert kept == pytest.approx([stored_gap])


# ------------------------------------------------------------------------------------------- model files
def test_a_crafted_pickle_is_refused_by_the_safe_mace_loader_and_runs_nothing(tmp_path: Path) -> None:
    from capml_core.errors import InvalidInputError
    from capml_core.models.mace_files import load_safe_model

    marker = tmp_path / SIDE_EFFECT
    for path in (crafted_pickle(tmp_path / "evil.model", marker), tmp_path / "plain.model"):
        if path.name == "plain.model":
            path.write_bytes(pickle.dumps(_RunsACommand(marker)))
        with pytest.raises(InvalidInputError, match="loading it would run code it names, so capml refuses it") as err:
            load_safe_model(path)
        assert "posix.system" in str(err.value) and "capml mlip convert" in str(err.value)
    assert not marker.exists()
    truncated = tmp_path / "truncated.capml-mace.pt"
    truncated.write_bytes(b"PK\x03\x04 not really")
    with pytest.raises(InvalidInputError, match="not a MACE model file"):
        load_safe_model(truncated)
    assert not np.any([marker.exists()])
