"""Prefect deployments of capml: work pools and the deployments of deploy/prefect.yaml, on a Prefect server.

Needs a server (``PREFECT_API_URL``): Prefect's ephemeral mode keeps no deployments between processes.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from capml_core.errors import CapmlError

#: The checkout whose flow code the deployments run (the working directory Prefect records for them).
REPO = Path(__file__).resolve().parent.parent
PREFECT_FILE = REPO / "deploy" / "prefect.yaml"
#: Work pools the deployments use: CPU processes, and GPU processes (their deployments set CAPML_DEVICE=cuda).
WORK_POOLS = ("capml-local", "capml-gpu")


def _require_server() -> str:
    url = os.environ.get("PREFECT_API_URL") or ""
    if not url:
        from prefect.settings import PREFECT_API_URL

        url = PREFECT_API_URL.value() or ""
    if not url:
        raise CapmlError(
            "no Prefect server: start one with `prefect server start --host 127.0.0.1` and set "
            "PREFECT_API_URL=http://127.0.0.1:4200/api (deployments need a server; ephemeral mode keeps none)"
        )
    return url


def ensure_work_pools(names: tuple[str, ...] = WORK_POOLS) -> list[str]:
    """Create the process work pools that do not exist yet; returns the names created."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import WorkPoolCreate
    from prefect.exceptions import ObjectNotFound
    from prefect.workers.process import ProcessWorker

    _require_server()
    created = []
    with get_client(sync_client=True) as client:
        for name in names:
            try:
                client.read_work_pool(name)
            except ObjectNotFound:
                client.create_work_pool(
                    WorkPoolCreate(
                        name=name,
                        type="process",
                        base_job_template=ProcessWorker.get_default_base_job_template(),
                        description=f"capml {'GPU' if 'gpu' in name else 'CPU'} process workers",
                    )
                )
                created.append(name)
    return created


def register_deployments(prefect_file: Path | None = None) -> list[str]:
    """``prefect deploy --all`` of a deployment file, run from the checkout; returns 'flow/deployment' names."""
    import yaml

    _require_server()
    path = Path(prefect_file or PREFECT_FILE).resolve()
    if not path.is_file():
        raise CapmlError(f"{path}: deployment file not found")
    command = [sys.executable, "-m", "prefect", "--no-prompt", "deploy", "--all", "--prefect-file", str(path)]
    done = subprocess.run(command, cwd=REPO, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise CapmlError(f"prefect deploy failed ({path}):\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}")
    from prefect.flows import load_flow_from_entrypoint

    names = []
    for deployment in yaml.safe_load(path.read_text())["deployments"]:
        flow = load_flow_from_entrypoint(str(REPO / deployment["entrypoint"]))
        names.append(f"{flow.name}/{deployment['name']}")
    return names
