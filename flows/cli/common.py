"""What every ``capml`` command shares: options, loading the config, clear errors, the store, consoles, tables."""

from __future__ import annotations

import importlib.util
import sys
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, NoReturn

import typer
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from rich.table import Table

from capml_core.errors import CapmlError

if TYPE_CHECKING:
    from capml_core.config.loading import LoadedConfig
    from capml_core.store.database import Store
    from capml_core.tables import ResultTable

console = Console(soft_wrap=True, width=None if sys.stdout.isatty() else 120)  # logs and pipes: wide tables
err_console = Console(stderr=True)

ConfigOption = Annotated[
    Path | None, typer.Option("--config", "-c", help="Run configuration (TOML); gives the project directory.")
]
ProjectOption = Annotated[
    Path | None, typer.Option("--project", "-p", help="Project directory (holds capml.duckdb); overrides the config's.")
]

ModelOption = Annotated[
    str | None, typer.Option("--model", help="MACE model id to use (default: the project's newest trained model).")
]
EnsembleOption = Annotated[
    str | None, typer.Option("--ensemble", help="GNN ensemble id to use (default: the project's newest ensemble).")
]
ScanOption = Annotated[
    str | None, typer.Option("--scan", help="Disorder scan id whose lowest structures to use (default: the newest).")
]

#: Optional dependency groups of pyproject.toml -> the modules whose absence means the group is not installed.
EXTRAS: dict[str, tuple[str, ...]] = {
    "flows": ("prefect",),
    "dft": ("gpaw",),
    "dashboard": ("streamlit", "plotly"),
}


def fail(err: Exception) -> NoReturn:
    """Print ``error: <message>`` on stderr and stop with exit code 2."""
    err_console.print(f"[bold red]error:[/] {escape(str(err))}", highlight=False, soft_wrap=True)
    raise typer.Exit(code=2)


def _missing_extra(module: str) -> str | None:
    """The extra that provides ``module`` (a top-level or dotted name), if it is one of the optional groups."""
    top = module.partition(".")[0]
    return next((extra for extra, modules in EXTRAS.items() if top in modules), None)


def _extra_message(extra: str, command: str) -> str:
    return f"{command} needs the {extra!r} extra: pip install 'capml[{extra}]'"


def _importable(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):  # a parent that fails to import; a module set to None in sys.modules
        return False


def require_extra(extra: str, command: str) -> None:
    """Refuse to go on when the optional dependency group ``extra`` is not installed.

    Prints ``error: COMMAND needs the 'EXTRA' extra: pip install 'capml[EXTRA]'`` and exits with code 2.
    """
    if not all(_importable(module) for module in EXTRAS[extra]):
        fail(CapmlError(_extra_message(extra, command)))


@contextmanager
def capml_errors() -> Iterator[None]:
    """Turn a :class:`CapmlError` raised in the block into ``error: <message>`` and exit code 2.

    A missing module of an optional dependency group (e.g. gpaw: the DFT levels) says which extra to install.
    """
    try:
        yield
    except CapmlError as err:
        fail(err)
    except ModuleNotFoundError as err:
        extra = _missing_extra(err.name or "")
        if extra is None:
            raise
        fail(CapmlError(_extra_message(extra, f"this command ({err.name} is not installed)")))


def parse_settings(settings: list[str] | None) -> dict[str, Any]:
    """``section.field=value`` strings -> overrides; the value is read as TOML (``2``, ``[300, 600]``, ``'cuda'``)."""
    import tomllib

    overrides: dict[str, Any] = {}
    for item in settings or []:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise CapmlError(f"--set {item!r}: expected section.field=value, e.g. md.workers=2")
        try:
            overrides[key.strip()] = tomllib.loads(f"v = {value}")["v"]
        except tomllib.TOMLDecodeError:
            overrides[key.strip()] = value  # a bare word: a string
    return overrides


def load(config: Path, project: Path | None = None, settings: list[str] | None = None) -> LoadedConfig:
    """Load and validate a run configuration, with ``--project`` and ``--set`` overrides (raises CapmlError).

    The one place the CLI reads a configuration; call it inside :func:`capml_errors`.
    """
    from capml_core.config.loading import load_config

    return load_config(config, project_dir=project, overrides=parse_settings(settings))


def project_dir(config: Path | None, project: Path | None) -> Path:
    """The store's directory: ``--project``, else the one the ``--config`` names (raises CapmlError)."""
    if project is not None:
        return project.expanduser().resolve()
    if config is not None:
        return load(config).project_dir
    raise CapmlError("give --config CONFIG.toml or --project DIR to say which store to use")


def open_store(config: Path | None, project: Path | None) -> Store:
    """The project's store, found from ``--project`` or ``--config`` (raises CapmlError)."""
    from capml_core.store.database import Store

    return Store(project_dir(config, project))


def model_or_latest(store: Store, model: str | None) -> str:
    """``--model`` checked against the store, or the newest trained MACE model (raises CapmlError)."""
    from capml_core.store.queries import latest_model, mace_model_path

    if model is None:
        return latest_model(store)[0]
    mace_model_path(store, model)  # says which models exist when this one does not
    return model


def ensemble_or_latest(store: Store, ensemble: str | None) -> str:
    """``--ensemble`` checked against the store, or the newest GNN ensemble (raises CapmlError)."""
    from capml_core.store.queries import ensemble_level, latest_ensemble

    if ensemble is None:
        return latest_ensemble(store)[0]
    ensemble_level(store, ensemble)
    return ensemble


def scan_or_latest(store: Store, scan: str | None) -> str:
    """``--scan``, or the newest disorder scan (raises CapmlError)."""
    from capml_core.store.queries import latest_scan_id

    return latest_scan_id(store) if scan is None else scan


def print_tables(tables: Sequence[ResultTable]) -> None:
    """Print results' own tables (:class:`capml_core.tables.ResultTable`) as rich tables, then their notes."""
    for result in tables:
        shown = Table(*result.columns, title=result.title)
        for i, row in enumerate(result.rows):
            shown.add_row(*row, style="yellow" if i in result.warnings else None)
        console.print(shown)
        for note in result.notes:
            console.print(note)


def bar(what: str) -> Progress:
    """A progress bar on stderr (``what``: its label, may hold ``{task.description}``)."""
    return Progress(
        TextColumn(f"{what}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(), console=err_console
    )


def progress_callback(progress: Progress, task_id: Any) -> Callable[[int, int], None]:
    """A ``progress(done, total)`` callback that moves one task of a bar."""
    return lambda done, total: progress.update(task_id, completed=done, total=total)


@contextmanager
def two_bars(first: str, second: str) -> Iterator[tuple[Callable[[int, int], None], Callable[[int, int], None]]]:
    """Two progress bars (a stage's own work and its DFT checks); yields their ``progress(done, total)`` callbacks."""
    with bar("{task.description}") as bars:
        yield (
            progress_callback(bars, bars.add_task(first, total=None)),
            progress_callback(bars, bars.add_task(second, total=None)),
        )


def print_summary(summary: dict) -> None:
    """The dataset summary table (structures, labels per level, gap ranges)."""
    table = Table(
        title=f"{summary['n_structures']} structures, x = " + ", ".join(f"{x:g}" for x in summary["compositions"])
    )
    for column in ("level", "ok", "failed", "energy", "forces", "stress", "gap", "gap eV min", "mean", "max"):
        table.add_column(column)
    for lv in summary["levels"]:
        gaps = (
            ["-"] * 3
            if lv["gap_mean_ev"] is None
            else [f"{lv[k]:.3f}" for k in ("gap_min_ev", "gap_mean_ev", "gap_max_ev")]
        )
        counts = (str(lv[k]) for k in ("n_ok", "n_failed", "n_energy", "n_forces", "n_stress", "n_gap"))
        table.add_row(lv["level"], *counts, *gaps)
    console.print(table)
