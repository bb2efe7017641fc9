"""Prefect deployments of capml: work pools and the deployments of deploy/prefect.yaml, on a Prefect server.

Needs a server (``PREFECT_API_URL``): Prefect's ephemeral mode keeps no deployments between processes.
"""

from __future__ import annotations

import os
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
    """Create or update every deployment of a Prefect deployment file; returns 'flow/deployment' names.

    Reads the file's ``deployments`` (name, entrypoint, parameters, work_pool name and job_variables,
    schedules with cron/timezone/active, description) and registers them through Prefect's client with a
    ``set_working_directory`` pull step to this checkout: what ``prefect deploy --all`` does, without its
    interactive steps (and without a check of active workers that prefect 3.8.8's CLI sends malformed).
    """
    import yaml
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import DeploymentScheduleCreate
    from prefect.client.schemas.schedules import CronSchedule
    from prefect.flows import load_flow_from_entrypoint
    from prefect.utilities.callables import parameter_schema

    _require_server()
    path = Path(prefect_file or PREFECT_FILE).resolve()
    if not path.is_file():
        raise CapmlError(f"{path}: deployment file not found")
    try:
        deployments = yaml.safe_load(path.read_text())["deployments"]
    except (yaml.YAMLError, KeyError, TypeError) as err:
        raise CapmlError(f"{path}: not a Prefect deployment file with a 'deployments' list: {err}") from err
    pull_steps = [{"prefect.deployments.steps.set_working_directory": {"directory": str(REPO)}}]
    names = []
    with get_client(sync_client=True) as client:
        for index, spec in enumerate(deployments):
            where = f"{path}: deployments[{index}]"
            try:
                flow = load_flow_from_entrypoint(str(REPO / spec["entrypoint"]))
                pool = spec["work_pool"]
                schedules = [
                    DeploymentScheduleCreate(
                        schedule=CronSchedule(cron=s["cron"], timezone=s.get("timezone", "UTC")),
                        active=s.get("active", True),
                    )
                    for s in spec.get("schedules") or []
                ]
            except (KeyError, TypeError, ValueError) as err:
                raise CapmlError(
                    f"{where}: {type(err).__name__}: {err} (needs name, entrypoint, work_pool.name)"
                ) from err
            client.create_deployment(
                flow_id=client.create_flow_from_name(flow.name),
                name=spec["name"],
                description=spec.get("description") or flow.description,
                entrypoint=spec["entrypoint"],
                path=str(REPO),
                pull_steps=pull_steps,
                parameters=spec.get("parameters") or {},
                parameter_openapi_schema=parameter_schema(flow).model_dump_for_openapi(),
                enforce_parameter_schema=True,
                work_pool_name=pool["name"],
                job_variables=pool.get("job_variables") or {},
                schedules=schedules,
            )
            names.append(f"{flow.name}/{spec['name']}")
    return names
