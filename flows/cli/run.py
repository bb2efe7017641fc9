"""Commands that run or serve: ``capml run`` (the Prefect pipeline), ``deploy``, ``dashboard``, ``version``."""

from __future__ import annotations

import json
import os
import shlex
import sys
from pathlib import Path
from typing import Annotated

import typer

from capml_core.errors import CapmlError
from flows.cli.common import (
    ConfigOption,
    ProjectOption,
    capml_errors,
    console,
    load,
    parse_settings,
    print_summary,
    project_dir,
    require_extra,
)


def run(
    config: Annotated[Path, typer.Argument(help="Run configuration (TOML).")],
    project: ProjectOption = None,
    stage: Annotated[
        list[str] | None, typer.Option("--stage", help="Run only this stage (repeatable); default: all, in order.")
    ] = None,
    settings: Annotated[
        list[str] | None,
        typer.Option("--set", help="Override a config field: section.field=value (TOML value; repeatable)."),
    ] = None,
    device: Annotated[
        str | None, typer.Option(help="cpu, cuda or auto for every stage that runs a model (default: the config's).")
    ] = None,
) -> None:
    """Run the pipeline flow (Prefect, local ephemeral mode unless PREFECT_API_URL is set) on a configuration."""
    require_extra("flows", "capml run")
    with capml_errors():
        overrides = parse_settings(settings)
        loaded = load(config, project, settings)  # fail fast, before Prefect starts
        from flows.pipeline import STAGES

        unknown = [name for name in stage or [] if name not in STAGES]
        if unknown:
            raise CapmlError(f"--stage {unknown[0]!r}: unknown; allowed: {', '.join(STAGES)}")
        from capml_core.store.hosts import check_project_dir

        check_project_dir(loaded.project_dir)  # before Prefect starts: a clear message, no flow-run traceback
    from flows.pipeline import pipeline
    from flows.prefect_api import ensure_prefect_api

    with capml_errors():
        ensure_prefect_api()  # one API for this run and its worker processes
        result = pipeline(
            config_path=str(loaded.path),
            project_dir=str(loaded.project_dir),
            stages=stage or None,
            overrides=overrides or None,
            device=device,
        )
    if "dataset" in result:
        print_summary(result["dataset"])
    exe = _own_command()
    console.print(f"\nrun [bold]{result['run_id']}[/] done; results in [bold]{result['store']}[/]")
    console.print(f"open the dashboard:  {exe} dashboard --project {loaded.project_dir}")
    console.print(f'query with SQL:      {exe} sql --project {loaded.project_dir} "SELECT * FROM labelled_structures"')
    console.print(f"what it found:       {exe} report --project {loaded.project_dir}")
    from capml_core.stages.shipping import shipped_result_dirs

    for shipped in shipped_result_dirs():
        if shipped.resolve() != loaded.project_dir.resolve():
            console.print(
                f"shipped results of {shipped.name} (computed for you, nothing to run): "
                f"{exe} dashboard --project {shipped}  |  {exe} report --project {shipped}"
            )


def deploy(
    prefect_file: Annotated[
        Path | None, typer.Option(help="Deployment file (default: deploy/prefect.yaml of this checkout).")
    ] = None,
) -> None:
    """Register capml's Prefect deployments with the server at PREFECT_API_URL (creates the work pools first).

    Then start a worker (prefect worker start --pool capml-local) and trigger a run
    (prefect deployment run capml-pipeline/on-demand). See docs/operations.md.
    """
    require_extra("flows", "capml deploy")
    from flows.deployments import WORK_POOLS, ensure_work_pools, register_deployments

    with capml_errors():
        created = ensure_work_pools()
        for name in WORK_POOLS:
            console.print(f"work pool [bold]{name}[/]: {'created' if name in created else 'exists'}")
        names = register_deployments(prefect_file)
    console.print(f"{len(names)} deployments registered:")
    for name in names:
        console.print(f"  {name}")
    console.print("\nstart a worker:  prefect worker start --pool capml-local")
    console.print("trigger a run:   prefect deployment run capml-pipeline/on-demand --param config_path=CONFIG.toml")


def _own_command() -> str:
    """How the user invoked capml (e.g. .venv/bin/capml), for commands printed back to them."""
    argv0 = Path(sys.argv[0])
    return shlex.quote(str(argv0)) if argv0.name == "capml" else "capml"


def dashboard(
    config: ConfigOption = None,
    project: ProjectOption = None,
    port: Annotated[int, typer.Option(help="Port.")] = 8501,
    host: Annotated[
        str, typer.Option(help="Address to bind (default loopback only; 0.0.0.0 exposes it to the network).")
    ] = "127.0.0.1",
) -> None:
    """Start the Streamlit dashboard (on 127.0.0.1 unless --host says otherwise), reading the store read-only."""
    require_extra("dashboard", "capml dashboard")
    with capml_errors():
        store_dir = project_dir(config, project)
    app_file = Path(__file__).resolve().parents[2] / "dashboard" / "app.py"
    env = {**os.environ, "CAPML_PROJECT_DIR": str(store_dir)}
    command = [
        sys.executable,
        "-m",
        "streamlit",
        "run",
        str(app_file),
        "--server.address",
        host,
        "--server.port",
        str(port),
        "--server.headless",
        "true",
        "--browser.gatherUsageStats",
        "false",
        "--client.toolbarMode",
        "viewer",
    ]
    console.print(f"dashboard of {store_dir} at http://{host}:{port}  (Ctrl-C stops it)")
    sys.stdout.flush()
    os.execve(command[0], command, env)  # streamlit replaces this process: a signal to it stops the server


def version() -> None:
    """Capml's version and the versions of the packages it computes with."""
    from capml_core.provenance import code_version, package_versions

    console.print(json.dumps({"capml": code_version(), **package_versions()}, indent=2))
