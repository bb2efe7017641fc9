"""The ``capml`` command line (Typer): builds arguments, calls capml_core or a flow, prints results.

One module per command group; :mod:`flows.cli.common` holds what they share (loading the config, clear
errors, the store, consoles). Prefect, Streamlit and GPAW are imported only by the commands that need them.
"""

from __future__ import annotations

import typer

from flows.cli import analysis, label, query, run
from flows.cli.al import al_app
from flows.cli.common import parse_settings
from flows.cli.config import config_app
from flows.cli.data import data_app
from flows.cli.gnn import gnn_app
from flows.cli.mlip import mlip_app
from flows.cli.static import static_app
from flows.settings import configure_environment

__all__ = ["app", "main", "parse_settings"]

app = typer.Typer(
    name="capml",
    help="capml: band gaps of disordered, anharmonic semiconductors vs composition and temperature.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

# in the order `capml --help` lists them
for command in (
    run.run,
    run.deploy,
    label.label,
    analysis.disorder,
    analysis.md,
    analysis.phonons,
    analysis.gaps,
    analysis.modes,
    analysis.evaluate,
    query.runs,
    query.sql,
    query.report,
    run.dashboard,
    run.version,
):
    app.command()(command)
app.add_typer(data_app, name="data")
app.add_typer(config_app, name="config")
app.add_typer(gnn_app, name="gnn")
app.add_typer(mlip_app, name="mlip")
app.add_typer(al_app, name="al")
app.add_typer(static_app, name="static")


def main() -> None:
    """Entry point of the ``capml`` command."""
    configure_environment()
    app()
