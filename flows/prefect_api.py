"""One Prefect API per pipeline run.

Without ``PREFECT_API_URL`` Prefect starts a temporary ("ephemeral") API server in every process that needs
one; worker processes of a fan-out stage would each start their own on the same port (uvicorn's "address
already in use"), and on a fresh, busy machine the first start (database migrations, cold imports) can take
longer than Prefect's 20 s default. So the entry point starts the temporary server once, with a generous
timeout, and exports its URL: every child process inherits ``PREFECT_API_URL`` and talks to that one server.
"""

from __future__ import annotations

import os

from capml_core.errors import CapmlError

#: Seconds to wait for Prefect's temporary server to answer, unless PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS
#: says otherwise (Prefect's default, 20 s, is too short for a fresh database on a busy machine).
DEFAULT_STARTUP_TIMEOUT_S = 300
TIMEOUT_VARIABLE = "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS"


class PrefectStartupError(CapmlError):
    """Prefect's temporary API server did not start."""


def startup_timeout_s() -> int:
    """The start-up timeout (s): ``PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS``, else 300."""
    raw = os.environ.get(TIMEOUT_VARIABLE, str(DEFAULT_STARTUP_TIMEOUT_S))
    try:
        value = int(raw)
    except ValueError:
        value = 0
    if value < 1:
        raise CapmlError(f"{TIMEOUT_VARIABLE}={raw!r}: expected a whole number of seconds ≥ 1")
    return value


def ensure_prefect_api() -> str:
    """The API URL this process and its children use: ``PREFECT_API_URL`` if set, else a temporary server's.

    The temporary server is started once per process (Prefect's own singleton, which the flow engine then
    reuses) and its URL exported to ``os.environ`` so that worker processes never start a second one.

    Raises
    ------
    PrefectStartupError
        The server did not answer within the timeout; the message says what to do.
    """
    url = os.environ.get("PREFECT_API_URL")
    if url:
        return url
    timeout = startup_timeout_s()
    from prefect.server.api.server import SubprocessASGIServer

    server = SubprocessASGIServer()
    try:
        server.start(timeout=timeout)
    except Exception as err:  # prefect raises RuntimeError (timeout) or httpx errors
        first_line = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise PrefectStartupError(
            f"Prefect's temporary API server did not start within {timeout} s ({first_line[:300]}). On a busy or "
            f"fresh machine allow longer ({TIMEOUT_VARIABLE}=900), or start a server yourself "
            "(prefect server start) and set PREFECT_API_URL=http://127.0.0.1:4200/api"
        ) from err
    os.environ["PREFECT_API_URL"] = server.api_url
    return server.api_url
