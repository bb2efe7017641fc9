"""Shared fixtures: bundled data paths, a fresh project dir per test, an imported demo store."""

from __future__ import annotations

import os
import random
import shutil
import sys
import tempfile
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parent.parent
CONFIGS = REPO / "data" / "configs"
DATASETS = REPO / "data" / "datasets"
DEMO_CONFIG = CONFIGS / "ag3sbri-demo.toml"
PAPER_CONFIG = CONFIGS / "ag3sbri.toml"
PBESOL_FILE = DATASETS / "gpaw-pbesol.extxyz"
GLLBSC_FILE = DATASETS / "gpaw-gllbsc.extxyz"

# Prefect: no telemetry, and a private home (its SQLite database) for the test session
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ["PREFECT_HOME"] = tempfile.mkdtemp(prefix="capml-test-prefect-")


@pytest.fixture(autouse=True)
def _isolated(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Every test runs in its own directory with seeded RNGs: relative outputs land in tmp_path.

    ``sys.modules['__main__']`` is restored after each test: Streamlit's AppTest leaves it pointing at a
    temporary script, which spawned worker processes (labelling, store tests) would then try to run.
    """
    monkeypatch.chdir(tmp_path)
    monkeypatch.setitem(sys.modules, "__main__", sys.modules["__main__"])
    random.seed(0)
    np.random.seed(0)


@pytest.fixture(scope="session")
def demo_store_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A project directory whose store holds the two shipped datasets (103 PBEsol, 48 GLLB-SC; once per session).

    Only the shipped files, not capml's own growing ones, so that counts in tests stay fixed.
    """
    from capml_core.config.loading import load_config
    from capml_core.stages.datasets import import_spec
    from capml_core.store.database import Store

    project = tmp_path_factory.mktemp("demo-project")
    loaded = load_config(DEMO_CONFIG, project_dir=project)
    store = Store(project)
    system = loaded.config.system
    for spec in loaded.config.dataset.imports:
        if spec.path in (PBESOL_FILE, GLLBSC_FILE):
            import_spec(store, spec, system)
    return project


@pytest.fixture()
def demo_store_copy(demo_store_dir: Path, tmp_path: Path) -> Path:
    """A private copy of the demo project a test may write to."""
    target = tmp_path / "project"
    shutil.copytree(demo_store_dir, target)
    return target


#: A tiny MACE profile (8 channels, L = 0): trains in seconds, enough to test the stages that use MACE.
TINY = {
    "channels": 8,
    "max_l": 0,
    "correlation": 2,
    "num_interactions": 2,
    "r_max_a": 4.5,
    "max_epochs": 4,
    "batch_size": 8,
    "dtype": "float32",
    "device": "cpu",
    "test_fraction": 0.15,
    "validate_phonons": False,
}


def _tiny_config(project: Path, **mlip):  # RunConfig
    from capml_core.config.loading import load_config
    from capml_core.config.stage_sections import MLIPSection

    loaded = load_config(DEMO_CONFIG, project_dir=project)
    return loaded.config.model_copy(update={"mlip": MLIPSection(**{**TINY, **mlip})})


@pytest.fixture(scope="session")
def trained(tmp_path_factory: pytest.TempPathFactory, demo_store_dir: Path):
    """A tiny MACE trained from scratch on the bundled PBEsol labels (shared by the slow tests)."""
    from capml_core.stages.mlip import fit_mlip
    from capml_core.store.database import Store

    project = tmp_path_factory.mktemp("mlip") / "project"
    shutil.copytree(demo_store_dir, project)
    config = _tiny_config(project, validate_phonons=True)
    epochs: list[int] = []
    result = fit_mlip(Store(project), config, on_epoch=lambda e, n, line: epochs.append(e))
    return project, config, result, epochs


def project_copy(source: Path, parent: Path):  # (project dir, Store)
    """A private copy of a fixture's project (``parent/project``) and its store, for a test that writes to it."""
    from capml_core.store.database import Store

    project = parent / "project"
    shutil.copytree(source, project)
    return project, Store(project)


def md_config(config, temperatures_k: list[float], duration_ps: float, equilibration_ps: float):
    """A config for short stage tests: 2 relaxation and MD workers, the phonon gate on, a short MD."""
    from capml_core.config.stage_sections import MDSection

    return config.model_copy(
        update={
            "disorder": config.disorder.model_copy(update={"workers": 2}),
            "phonons": config.phonons.model_copy(update={"gate": True}),
            "md": MDSection(
                temperatures_k=temperatures_k, duration_ps=duration_ps, equilibration_ps=equilibration_ps, workers=2
            ),
        }
    )


def wait_until_served(url: str, process, timeout_s: float, output) -> None:  # Popen, () -> str
    """Poll ``url`` until it answers 200; fail with ``output()`` if ``process`` dies or ``timeout_s`` passes."""
    import time
    import urllib.request

    deadline = time.monotonic() + timeout_s
    while True:
        try:
            with urllib.request.urlopen(url, timeout=2) as reply:
                if reply.status == 200:
                    return
        except OSError:
            pass
        assert process.poll() is None, output()
        assert time.monotonic() < deadline, f"{url} did not answer in {timeout_s:.0f} s"
        time.sleep(0.5)


#: The longest test files (a whole demo, two pipeline runs): collected first, so that the parallel suite
#: (pytest -n 2 --dist loadfile) starts them at once instead of leaving one of them for the end.
LONGEST_FIRST = ("test_demo.py", "test_flow.py")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Move the tests of LONGEST_FIRST to the front, keeping the order within each file."""
    rank = {name: i for i, name in enumerate(LONGEST_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))
