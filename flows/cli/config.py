"""``capml config ...``: check a run configuration."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from flows.cli.common import capml_errors, console, load

config_app = typer.Typer(help="Run configurations: check.", no_args_is_help=True)


@config_app.command("check")
def config_check(config: Annotated[Path, typer.Argument(help="Run configuration (TOML).")]) -> None:
    """Validate a configuration and show what it describes; writes nothing."""
    from capml_core.system.structures import sublattice_site_count

    with capml_errors():
        loaded = load(config)
        foundation = loaded.config.mlip.foundation_model
        if foundation is not None:  # read in capml's form only (a pickle is refused, never run)
            from capml_core.models.mace import check_foundation
            from capml_core.models.mace_files import inspect_mace_model

            info = inspect_mace_model(foundation)
            check_foundation(info, loaded.config.mlip, loaded.config.system.allowed_species(), source=str(loaded.path))
    system = loaded.config.system
    parent = system.parent.build()
    n_sites = sublattice_site_count(parent, system.sublattice.site_species, system.supercell)
    cell = system.supercell_at(system.compositions[0])
    console.print(f"[green]valid[/] {loaded.path}  (hash {loaded.config_hash[:12]})")
    console.print(
        f"system      {system.name}: parent {parent.get_chemical_formula()}, supercell "
        f"{'x'.join(map(str, system.supercell))} = {len(cell)} atoms, {n_sites} sites of "
        f"{system.sublattice.site_species} shared by {'/'.join(system.sublattice.species)}"
    )
    console.print(f"x           {', '.join(f'{x:g}' for x in system.compositions)}")
    console.print(
        f"imports     {', '.join(f'{s.path.name} ({s.level})' for s in loaded.config.dataset.imports) or '-'}"
    )
    if foundation is not None:
        console.print(f"foundation  {foundation}: MACE, cutoff {info.r_max_a:g} Å, {info.channels} channels")
    console.print(f"project dir {loaded.project_dir}")
