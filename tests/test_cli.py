from __future__ import annotations

from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner

from capml_core.store.database import Store
from flows.cli import app
from tests.conftest import DEMO_CONFIG, PBESOL_FILE

runner = CliRunner()


def test_help_lists_only_the_working_commands() -> None:
    result = runner.invoke(app, ["--help"])
    assert result.exit_code == 0
    commands = set(typer.main.get_command(app).commands)
    # every listed command is exercised by a test (dashboard: test_dashboard.py, run: test_flow.py, mlip:
    # test_mlip.py, disorder: test_disorder.py, md and phonons: test_stability.py, gaps and modes: test_bandgaps.py,
    # sql: test_sql.py, deploy: test_operations.py, al and static: test_dynamics.py, report: test_bandgaps.py)
    assert commands == {
        "report",
        "run",
        "deploy",
        "runs",
        "sql",
        "dashboard",
        "version",
        "data",
        "config",
        "label",
        "gnn",
        "mlip",
        "disorder",
        "md",
        "phonons",
        "gaps",
        "modes",
        "evaluate",
        "al",
        "static",
    }
    assert all(name in result.output for name in commands)
    data_help = runner.invoke(app, ["data", "--help"]).output
    assert all(
        word in data_help
        for word in ("import", "generate", "export", "export-tables", "summary", "sample-frames", "restore-frames")
    )


def test_data_import_then_summary_then_sql(tmp_path: Path) -> None:
    project = tmp_path / "proj"
    args = [
        "data",
        "import",
        str(PBESOL_FILE),
        "--level",
        "gpaw-pbesol",
        "--config",
        str(DEMO_CONFIG),
        "--project",
        str(project),
        "--prefix",
        "pbesol",
        "--amplitude-key",
        "sigma_A",
    ]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    assert "103 frames" in result.output and "103 new labels" in result.output
    again = runner.invoke(app, args)
    assert "0 new labels, 103 already stored" in again.output
    summary = runner.invoke(app, ["data", "summary", "--project", str(project)])
    assert summary.exit_code == 0 and "103 structures" in summary.output
    sql = runner.invoke(
        app,
        [
            "sql",
            "--project",
            str(project),
            "--output",
            "csv",
            "SELECT count(*) AS n, round(max(amplitude_a), 2) AS s FROM labelled_structures",
        ],
    )
    assert sql.exit_code == 0 and sql.output.strip().splitlines()[-1] == "103,0.13"
    assert Store(project).query("SELECT count(*) AS n FROM labels")["n"][0] == 103


def test_cli_errors_are_one_clear_message_and_write_nothing(tmp_path: Path) -> None:
    project = tmp_path / "proj"
    result = runner.invoke(
        app,
        [
            "data",
            "import",
            str(PBESOL_FILE),
            "--level",
            "gpaw-pbesol",
            "--config",
            str(DEMO_CONFIG),
            "--project",
            str(project),
        ],
    )  # default keys: energy, ...
    assert result.exit_code == 2
    assert "missing energy label 'energy'" in result.output and "pbesol_energy" in result.output
    assert not (project / "capml.duckdb").exists()
    bad_label = runner.invoke(
        app,
        [
            "data",
            "import",
            str(PBESOL_FILE),
            "--level",
            "gpaw-pbesol",
            "--config",
            str(DEMO_CONFIG),
            "--project",
            str(project),
            "--labels",
            "gap,colour",
        ],
    )
    assert bad_label.exit_code == 2 and "labels[1]" in bad_label.output and "'colour'" in bad_label.output
    bad_level = runner.invoke(
        app,
        [
            "data",
            "import",
            str(PBESOL_FILE),
            "--level",
            "GPAW PBEsol",
            "--config",
            str(DEMO_CONFIG),
            "--project",
            str(project),
            "--prefix",
            "pbesol",
        ],
    )
    assert bad_level.exit_code == 2 and "field 'level'" in bad_level.output
    sql = runner.invoke(app, ["sql", "--project", str(project), "SELECT 1"])
    assert sql.exit_code == 2 and "no store yet" in sql.output
    assert not project.exists()


def test_config_check(tmp_path: Path) -> None:
    result = runner.invoke(app, ["config", "check", str(DEMO_CONFIG)])
    assert result.exit_code == 0
    assert "40 atoms" in result.output and "8 sites of Br" in result.output
    broken = tmp_path / "c.toml"
    broken.write_text(DEMO_CONFIG.read_text().replace("supercell = [2, 2, 2]", "supercell = [2, 0, 2]"))
    result = runner.invoke(app, ["config", "check", str(broken)])
    assert result.exit_code == 2 and "system.supercell[1]" in result.output and "= 0" in result.output


def test_version_reports_the_pinned_stack() -> None:
    import json

    result = runner.invoke(app, ["version"])
    versions = json.loads(result.output)
    assert versions["torch"] == "2.13.0+cpu" and versions["ase"] == "3.29.0" and versions["duckdb"] == "2.0.0"
    assert versions["capml"].startswith("0.1.0")


def test_generate_then_export_roundtrip(tmp_path: Path) -> None:
    import numpy as np
    from ase.io import read

    project = tmp_path / "proj"
    result = runner.invoke(app, ["data", "generate", "--config", str(DEMO_CONFIG), "--project", str(project)])
    assert result.exit_code == 0, result.output
    assert "set demo (gpaw-pbesol): 15 structures, 15 new" in result.output
    again = runner.invoke(app, ["data", "generate", "--config", str(DEMO_CONFIG), "--project", str(project)])
    assert "15 structures, 0 new" in again.output  # regenerated bit for bit: same hashes
    pending = runner.invoke(
        app, ["label", "-c", str(DEMO_CONFIG), "-p", str(project), "--level", "gpaw-pbesol", "--limit", "0"]
    )
    assert pending.exit_code == 0 and "15 structures pending, labelling 0" in pending.output
    # a store written by the previous capml (schema 10) is migrated by `capml label`, a write command
    import duckdb

    con = duckdb.connect(str(project / "capml.duckdb"))
    for table in (
        "md_frames",
        "label_claims",
        "md_uncertainty",
        "active_learning_rounds",
        "static_minima",
        "gap_dft_frames",
        "gap_dft_checks",
        "gap_estimates",
        "gap_mode_groups",
        "heldout_errors",
    ):  # schema 12-16
        con.execute(f"DROP TABLE {table}")
    from capml_core.store.schema import MIGRATIONS

    for statement in MIGRATIONS[16]:  # and the columns schema 16 added
        if statement.startswith("ALTER TABLE"):
            table, column = statement.split()[2], statement.split()[5]
            con.execute(f"ALTER TABLE {table} DROP COLUMN {column}")
    con.execute("ALTER TABLE mlip_models DROP COLUMN committee_of")
    for column in ("pid", "host"):
        con.execute(f"ALTER TABLE runs DROP COLUMN {column}")
    for column in ("max_site_offset_a", "site_offset_atom"):
        con.execute(f"ALTER TABLE phonon_anharmonic DROP COLUMN {column}")
    con.execute("UPDATE schema_meta SET value = '10' WHERE key = 'schema_version'")
    con.close()
    migrated = runner.invoke(
        app, ["label", "-c", str(DEMO_CONFIG), "-p", str(project), "--level", "gpaw-pbesol", "--limit", "0"]
    )
    assert migrated.exit_code == 0 and "15 structures pending" in migrated.output, migrated.output
    unknown = runner.invoke(app, ["label", "-c", str(DEMO_CONFIG), "-p", str(project), "--level", "dft-magic"])
    assert unknown.exit_code == 2 and "known: gpaw-gllbsc, gpaw-pbesol, vasp-hsesol, vasp-pbesol" in unknown.output
    vasp = runner.invoke(app, ["label", "-c", str(DEMO_CONFIG), "-p", str(project), "--level", "vasp-pbesol"])
    assert vasp.exit_code == 2 and "no VASP command configured" in vasp.output

    runner.invoke(
        app,
        [
            "data",
            "import",
            str(PBESOL_FILE),
            "--level",
            "gpaw-pbesol",
            "--config",
            str(DEMO_CONFIG),
            "--project",
            str(project),
            "--prefix",
            "pbesol",
        ],
    )
    out = tmp_path / "train.extxyz"
    exported = runner.invoke(app, ["data", "export", str(out), "--level", "gpaw-pbesol", "--project", str(project)])
    assert exported.exit_code == 0 and "103 structures" in exported.output and "REF_forces" in exported.output
    frames = read(out, index=":")
    assert len(frames) == 103
    originals = {round(f.info["pbesol_energy"], 9): f for f in read(PBESOL_FILE, index=":")}
    for frame in frames[:5]:
        original = originals[round(frame.info["REF_energy"], 9)]
        assert np.allclose(frame.arrays["REF_forces"], original.arrays["pbesol_forces"])
        assert np.allclose(frame.info["REF_stress"], original.info["pbesol_stress"])
        assert np.allclose(frame.positions, original.positions)
    # what was exported imports back at another level, unchanged
    back = runner.invoke(
        app,
        [
            "data",
            "import",
            str(out),
            "--level",
            "copy",
            "--config",
            str(DEMO_CONFIG),
            "--project",
            str(project),
            "--prefix",
            "REF",
        ],
    )
    assert "0 new structures, 103 new labels" in back.output, back.output
    none = runner.invoke(app, ["data", "export", str(out), "--level", "nothing", "--project", str(project)])
    assert none.exit_code == 2 and "no structure labelled at level 'nothing'" in none.output


def test_run_refuses_an_unknown_stage_or_field_before_anything_starts(tmp_path: Path) -> None:
    project = tmp_path / "proj"
    stage = runner.invoke(app, ["run", str(DEMO_CONFIG), "--project", str(project), "--stage", "phonon"])
    assert stage.exit_code != 0 and "--stage 'phonon': unknown; allowed: dataset-import" in stage.output
    field = runner.invoke(app, ["run", str(DEMO_CONFIG), "--project", str(project), "--set", "md.wrkers=2"])
    assert field.exit_code != 0 and "field 'md.wrkers': unknown key" in field.output
    value = runner.invoke(app, ["run", str(DEMO_CONFIG), "--project", str(project), "--set", "md.workers=0"])
    assert value.exit_code != 0 and "md.workers" in value.output
    assert not project.exists()  # refused before anything is written


def test_settings_are_read_as_toml_values() -> None:
    from flows.cli.common import parse_settings

    parsed = parse_settings(["md.workers=2", "md.temperatures_k=[100, 300.5]", "gaps.device=cuda", "x.y='a=b'"])
    assert parsed == {"md.workers": 2, "md.temperatures_k": [100, 300.5], "gaps.device": "cuda", "x.y": "a=b"}


# Imported first in a child process: prefect, streamlit and gpaw then fail to import, as when their extras are
# not installed. The core and the commands that do not need them work; those that do say which extra to install.
_WITHOUT_EXTRAS = """
import sys
for name in ("prefect", "streamlit", "gpaw"):
    sys.modules[name] = None
from typer.testing import CliRunner
import capml_core
from flows.cli import app
runner = CliRunner()
for args in {commands!r}:
    result = runner.invoke(app, args)
    print(f"=== {{args[0]}} rc={{result.exit_code}}")
    print(result.output)
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        print(f"exception {{result.exception!r}}")
loaded = sorted(m for m in sys.modules if m.split(".")[0] in ("prefect", "streamlit", "gpaw", "plotly"))
print("loaded", [m for m in loaded if sys.modules[m] is not None])
"""


def _without_extras(*commands: list[str]) -> str:
    import subprocess
    import sys

    script = _WITHOUT_EXTRAS.format(commands=[list(c) for c in commands])
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=300, cwd=Path(__file__).parents[1]
    )
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout


def test_core_commands_work_without_the_flows_dashboard_and_dft_extras(tmp_path: Path) -> None:
    store = tmp_path / "store"
    out = _without_extras(
        ["config", "check", str(DEMO_CONFIG)],
        ["run", str(DEMO_CONFIG), "--project", str(tmp_path / "run")],
        ["deploy"],
        ["dashboard", "--project", str(tmp_path)],
        ["label", "-c", str(DEMO_CONFIG), "-p", str(tmp_path / "label"), "--level", "gpaw-pbesol"],
        [
            "data",
            "import",
            str(PBESOL_FILE),
            "-l",
            "gpaw-pbesol",
            "-c",
            str(DEMO_CONFIG),
            "-p",
            str(store),
            "--prefix",
            "pbesol",
        ],
        ["sql", "--project", str(store), "--output", "csv", "SELECT count(*) AS n FROM labelled_structures"],
    )
    check, run, deploy, dashboard, label, data, sql = out.split("=== ")[1:]
    assert check.startswith("config rc=0") and "valid" in check and "40 atoms" in check, out
    assert data.startswith("data rc=0") and "103 new labels" in data, out
    assert sql.startswith("sql rc=0") and "\nn\n103\n" in sql, out
    assert run.startswith("run rc=2"), out
    assert "error: capml run needs the 'flows' extra: pip install 'capml[flows]'" in run, out
    assert deploy.startswith("deploy rc=2") and "capml deploy needs the 'flows' extra" in deploy, out
    assert dashboard.startswith("dashboard rc=2"), out
    assert "capml dashboard needs the 'dashboard' extra: pip install 'capml[dashboard]'" in dashboard, out
    assert label.startswith("label rc=2"), out
    assert "capml label needs the 'dft' extra: pip install 'capml[dft]'" in label, out
    assert "exception" not in out and "Traceback" not in out, out
    assert out.rstrip().endswith("loaded []"), out  # nothing of prefect, streamlit, gpaw was imported
    assert not (tmp_path / "run").exists() and not (tmp_path / "label").exists()


def test_a_missing_optional_module_names_its_extra(capsys: pytest.CaptureFixture[str]) -> None:
    from flows.cli.common import capml_errors

    try:
        with capml_errors():
            raise ModuleNotFoundError("No module named 'gpaw'", name="gpaw")
    except typer.Exit as stop:
        assert stop.exit_code == 2
    else:
        raise AssertionError("capml_errors let a missing gpaw through")
    assert "(gpaw is not installed) needs the 'dft' extra: pip install 'capml[dft]'" in capsys.readouterr().err


def test_capml_core_imports_no_prefect_and_no_streamlit() -> None:
    import ast

    root = Path(__file__).parents[1] / "capml_core"
    forbidden = {"prefect", "prefect_dask", "streamlit", "plotly", "flows", "dashboard"}
    found = []
    for path in sorted(root.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            else:
                continue
            found += [
                f"{path.relative_to(root.parent)}:{node.lineno} {n}" for n in names if n.split(".")[0] in forbidden
            ]
    assert found == [], found
