"""Processes, hosts and project folders: who owns a run or a claim, and can we write here."""

from __future__ import annotations

import os
from pathlib import Path

import pandas as pd

from capml_core.errors import StoreError

#: Hours after which a claim of a process on another host (whose liveness cannot be checked) is stale.
CLAIM_MAX_AGE_H = 48.0


def this_host() -> str:
    """The machine's host name (recorded with a run's pid: a pid means something only on its own host)."""
    import socket

    return socket.gethostname()


def process_alive(pid: int | None, host: str | None) -> bool:
    """Whether process ``pid`` of ``host`` still runs (a process of another host is assumed to)."""
    if pid is None or pd.isna(pid):
        return False  # written by a capml that did not record its process: cannot be running now
    if host != this_host():
        return True
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # exists, owned by someone else
    return True


def check_project_dir(project_dir: str | Path) -> None:
    """Refuse a project directory that cannot be created or written to, naming what is in the way.

    Raises
    ------
    StoreError
        A path above it is a regular file, or the nearest existing folder is not writable.
    """
    path = Path(project_dir).expanduser().resolve()
    existing = path
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        raise StoreError(
            f"project directory {path}: {existing} is a file, not a folder; choose another project directory "
            "(--project DIR or run.project_dir)"
        )
    if not os.access(existing, os.W_OK | os.X_OK):
        what = "is not writable" if existing == path else f"cannot be created: {existing} is not writable"
        raise StoreError(
            f"project directory {path} {what} (permission denied); choose a folder you can write to "
            "(--project DIR or run.project_dir)"
        )
