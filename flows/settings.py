"""Process environment for capml's entry points (CLI, flows, dashboard); never read by capml_core."""

from __future__ import annotations

import os
from pathlib import Path

from flows.prefect_api import DEFAULT_STARTUP_TIMEOUT_S, TIMEOUT_VARIABLE

#: Debian's gpaw-data installs the PAW datasets here.
DEBIAN_GPAW_SETUPS = Path("/usr/share/gpaw-setups")


def configure_environment() -> None:
    """Set defaults (only where the user set nothing) before Prefect, torch or GPAW are imported.

    - Prefect: no telemetry; capml_core's log records go to the Prefect run logs; a temporary server may take
      up to 300 s to start (a fresh database on a busy machine).
    - Threads: one OpenMP/BLAS thread per process (fastest measured for GPAW and MACE on small machines;
      parallelism comes from worker processes).
    - GPAW: PAW datasets from Debian's gpaw-data.
    """
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    os.environ.setdefault("PREFECT_LOGGING_EXTRA_LOGGERS", "capml_core")
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    # a fresh PREFECT_HOME on a busy machine: migrations + cold imports take longer than Prefect's 20 s
    os.environ.setdefault(TIMEOUT_VARIABLE, str(DEFAULT_STARTUP_TIMEOUT_S))
    if DEBIAN_GPAW_SETUPS.is_dir():
        os.environ.setdefault("GPAW_SETUP_PATH", str(DEBIAN_GPAW_SETUPS))
