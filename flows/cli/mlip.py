"""``capml mlip ...``: train or fine-tune MACE, evaluate a MACE file, convert a trusted pickle."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from capml_core.errors import CapmlError
from capml_core.store.database import Store
from flows.cli.common import ProjectOption, bar, capml_errors, console, load, print_tables

mlip_app = typer.Typer(help="MACE interatomic potential: train or fine-tune, evaluate.", no_args_is_help=True)


@mlip_app.command("train")
def mlip_train(
    config: Annotated[Path, typer.Option("--config", "-c", help="Run configuration (TOML; uses mlip, reference).")],
    project: ProjectOption = None,
) -> None:
    """Train MACE (or fine-tune mlip.foundation_model) on the level's energies, forces, stresses; evaluate it."""
    from capml_core.stages.mlip import fit_mlip
    from capml_core.store.database import Store

    with capml_errors():
        loaded = load(config, project)
        with bar("MACE epochs") as progress:
            task_id = progress.add_task("MACE", total=loaded.config.mlip.max_epochs)
            result = fit_mlip(
                Store(loaded.project_dir),
                loaded.config,
                on_epoch=lambda epoch, total, line: progress.update(task_id, completed=epoch, total=total),
            )
    model = result.model
    console.print(f"MACE model {model.model_id}: {model.path}" + ("" if model.newly_trained else " (already trained)"))
    _print_mlip_tables(
        Store(loaded.project_dir), [model.model_id] + ([model.foundation_id] if model.foundation_id else [])
    )


def _print_mlip_tables(store: Store, model_ids: list[str]) -> None:
    from capml_core.stages.mlip import mlip_tables

    print_tables(mlip_tables(store, model_ids))


@mlip_app.command("evaluate")
def mlip_evaluate(
    model_file: Annotated[Path, typer.Argument(help="A MACE .model file (e.g. a foundation model).")],
    config: Annotated[Path, typer.Option("--config", "-c", help="Run configuration (TOML; uses mlip, reference).")],
    project: ProjectOption = None,
    device: Annotated[str, typer.Option(help="cpu, cuda or auto.")] = "auto",
) -> None:
    """Errors of any MACE model file on the project's labelled structures (same splits as training)."""
    from capml_core.stages.mlip import evaluate_file
    from capml_core.store.database import Store

    with capml_errors():
        loaded = load(config, project)
        store = Store(loaded.project_dir)
        model_id = evaluate_file(store, loaded.config, model_file, device=device)
    _print_mlip_tables(store, [model_id])


@mlip_app.command("convert")
def mlip_convert(
    source: Annotated[Path, typer.Argument(help="A MACE .model file (a pickle) that you trust.")],
    target: Annotated[Path, typer.Argument(help="Output file in capml's form (*.capml-mace.pt).")],
    trust: Annotated[
        bool, typer.Option("--trust", help="Confirm you trust the file: converting unpickles it, running its code.")
    ] = False,
) -> None:
    """Convert a MACE .model pickle you trust to capml's form, the only MACE form capml loads."""
    from capml_core.models.mace_files import SAFE_SUFFIX, convert_trusted_pickle, inspect_mace_model

    with capml_errors():
        if not trust:
            raise CapmlError(
                f"{source}: converting a .model file unpickles it, which runs any code it holds; only for a file "
                "whose source you trust: add --trust"
            )
        if not target.name.endswith(SAFE_SUFFIX):
            raise CapmlError(f"{target}: name the output *{SAFE_SUFFIX}")
        info = inspect_mace_model(convert_trusted_pickle(source, target))
    console.print(
        f"{source} -> {target}: MACE, cutoff {info.r_max_a:g} Å, {info.channels} channels, L = {info.max_l}, "
        f"elements {list(info.atomic_numbers)}"
    )
