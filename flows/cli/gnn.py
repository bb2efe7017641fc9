"""``capml gnn ...``: train the band-gap GNN ensemble, predict gaps with it."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer

from capml_core.errors import CapmlError
from flows.cli.common import (
    ConfigOption,
    EnsembleOption,
    ProjectOption,
    capml_errors,
    ensemble_or_latest,
    load,
    open_store,
    print_tables,
)

gnn_app = typer.Typer(help="Band-gap GNN: train, predict.", no_args_is_help=True)


@gnn_app.command("train")
def gnn_train(
    config: Annotated[Path, typer.Option("--config", "-c", help="Run configuration (TOML; uses gnn, reference).")],
    project: ProjectOption = None,
) -> None:
    """Search (if configured), train the GNN ensemble on the cheap level, fine-tune on the high level, curve."""
    from capml_core.stages.gnn import fit_band_gap_model
    from capml_core.store.database import Store

    with capml_errors():
        loaded = load(config, project)
        reference = loaded.config.reference
        result = fit_band_gap_model(
            Store(loaded.project_dir),
            loaded.config.gnn,
            cheap_level=reference.cheap_level,
            high_level=reference.high_level,
            seed=loaded.config.run.seed,
        )
    print_tables(result.tables())


@gnn_app.command("predict")
def gnn_predict(
    structures: Annotated[Path, typer.Argument(help="Structures to predict (any file ASE reads; all frames).")],
    config: ConfigOption = None,
    project: ProjectOption = None,
    model: Annotated[
        list[Path] | None,
        typer.Option(
            help="A gap model directory (a GNN's model.json + model.pt, or a kernel head's kernel.json) or a GNN's "
            "model.pt; repeat for an ensemble."
        ),
    ] = None,
    ensemble: EnsembleOption = None,
) -> None:
    """Band gaps (eV) of structures, per frame: mean and spread over an ensemble.

    The ensemble is the project's --ensemble (default: the newest) or the model directories given with --model.
    """
    from ase.io import read

    from capml_core.models.gnn import load_ensemble, predict_gaps
    from capml_core.store.queries import ensemble_model_dirs

    with capml_errors():
        if model:
            models = load_ensemble([path.parent if path.suffix == ".pt" else path for path in model])
        else:
            store = open_store(config, project)
            models = load_ensemble(ensemble_model_dirs(store, ensemble_or_latest(store, ensemble)))
        try:
            frames = read(structures, index=":")
        except Exception as err:  # ASE raises many types on unreadable files
            raise CapmlError(f"{structures}: not a structure file ASE can read: {err}") from err
        mean, spread = predict_gaps(frames, models)
    sys.stdout.write("frame,formula,gap_ev,gap_std_ev\n")
    for i, (atoms, m, s) in enumerate(zip(frames, mean, spread, strict=True)):
        sys.stdout.write(f"{i},{atoms.get_chemical_formula()},{m:.4f},{s:.4f}\n")
