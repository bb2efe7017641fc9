"""Provenance stamped on every run: code version and versions of the packages that compute results."""

from __future__ import annotations

import subprocess
from functools import cache
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

from capml_core import __version__

#: Packages whose versions change results; recorded with every run.
TRACKED_PACKAGES = (
    "ase",
    "numpy",
    "scipy",
    "spglib",
    "phonopy",
    "gpaw",
    "torch",
    "torch-geometric",
    "mace-torch",
    "dynaphopy",
    "duckdb",
    "prefect",
)


@cache
def code_version() -> str:
    """Capml's version, plus the git commit (and '+dirty') when running from a git checkout."""
    root = Path(__file__).resolve().parent.parent
    try:
        commit = subprocess.run(
            ["git", "-C", str(root), "rev-parse", "--short=10", "HEAD"],
            capture_output=True,
            text=True,
            timeout=5,
            check=True,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no"],
            capture_output=True,
            text=True,
            timeout=5,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return __version__
    return f"{__version__}+g{commit}{'.dirty' if dirty else ''}" if commit else __version__


def file_sha256(path: str | Path) -> str:
    """SHA-256 (hex) of a file's bytes (read in 1 MiB blocks)."""
    import hashlib

    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def content_key(payload: Any) -> str:
    """12 hex digits of the SHA-256 of a JSON-ready payload (canonical: sorted keys): a settings/content key."""
    import hashlib
    import json

    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()[:12]


def package_versions() -> dict[str, str]:
    """Installed versions of :data:`TRACKED_PACKAGES` ('not installed' when absent)."""
    out = {}
    for name in TRACKED_PACKAGES:
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            out[name] = "not installed"
    return out
