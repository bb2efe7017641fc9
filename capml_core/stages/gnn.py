"""GNN stage: train the band-gap ensemble from the store and record it."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from capml_core.config.stage_sections import GNNSection
from capml_core.errors import NotComputedError
from capml_core.models.gap_head import KERNEL_ARCHITECTURE
from capml_core.models.gnn import Metrics
from capml_core.models.graphs import element_table
from capml_core.provenance import content_key
from capml_core.stages.gnn_training import (
    Trial,
    TwoStageResult,
    learning_curve,
    search_hyperparameters,
    train_two_stage,
)
from capml_core.store.database import Store
from capml_core.store.queries import latest_model
from capml_core.store.schema import GNN_BASELINE_PREFIX as BASELINE_PREFIX
from capml_core.tables import ResultTable, table

logger = logging.getLogger(__name__)


def gnn_stage_key(store: Store, gnn: GNNSection, *, cheap_level: str, high_level: str | None, seed: int) -> str:
    """Content key of the gnn stage: its settings, levels and seed, and every gap it trains and tests on.

    The same key means the same search, ensemble and learning curve, so a re-run reuses them; a new label,
    a changed gap, a changed setting or (for a kernel head) a new MACE model gives a new key (12 hex digits of
    a SHA-256).
    """
    payload: dict[str, Any] = {
        "gnn": gnn.model_dump(mode="json"),
        "levels": [cheap_level, high_level],
        "seed": seed,
        "table": element_table().version,
    }
    if KERNEL_ARCHITECTURE in {gnn.architecture, gnn.baseline_architecture, *gnn.search_architectures}:
        try:
            payload["mace_model"] = latest_model(store)[0]  # the kernel head's descriptors are this model's
        except NotComputedError as err:
            raise NotComputedError(
                f"{store.path}: gnn.architecture, search_architectures or baseline_architecture names "
                f"'{KERNEL_ARCHITECTURE}', a gap model on MACE descriptors, and no MACE model is trained yet: run "
                "capml mlip train first (capml run trains MACE before the GNN), or leave it out of the gnn section"
            ) from err
    for level in filter(None, (cheap_level, high_level)):
        frame = store.labelled_gaps(level).sort_values("structure_hash")
        payload[level] = [
            [h, round(float(g), 8)] for h, g in zip(frame["structure_hash"], frame["gap_ev"], strict=True)
        ]
    return content_key(payload)


@dataclass(frozen=True)
class GNNStageResult:
    """The gnn stage: optional search (best first), the two-stage ensemble, optional learning curve and baseline."""

    search: list[Trial]
    ensemble: TwoStageResult
    curve: list[tuple[int, Metrics]]
    baseline: TwoStageResult | None = None

    def tables(self) -> list[ResultTable]:
        """The best trials of the search, the ensemble's (and baseline's) test errors, the learning curve."""
        out = []
        if self.search:
            rows = [
                (
                    str(rank),
                    t.architecture,
                    "-" if t.learning_rate is None else f"{t.learning_rate:g}",
                    "-" if t.batch_size is None else str(t.batch_size),
                    f"{t.valid.mae_ev:.3f}",
                )
                for rank, t in enumerate(self.search[:5], start=1)
            ]
            columns = ("rank", "architecture", "learning rate", "batch", "validation MAE (eV)")
            out.append(table(f"GNN search ({len(self.search)} trials)", columns, rows))
        rows = []
        for name, result in (("ensemble", self.ensemble), ("baseline", self.baseline)):
            if result is None:
                continue
            for stage, m in result.ensemble_test_metrics.items():
                rows.append(
                    (
                        f"{name} {result.ensemble_id}",
                        f"{stage} level",
                        str(m.n),
                        f"{m.mae_ev:.3f}",
                        f"{m.rmse_ev:.3f}",
                        f"{m.r2:.3f}",
                        f"{m.max_error_ev:.3f}",
                    )
                )
        columns = ("models", "stage", "n test", "MAE (eV)", "RMSE (eV)", "R²", "max error (eV)")
        out.append(table("GNN test split", columns, rows, notes=[f"{len(self.ensemble.model_ids)} model(s)"]))
        if self.curve:
            rows = [(str(n), f"{m.mae_ev:.3f}") for n, m in self.curve]
            out.append(table("GNN learning curve", ("training structures", "test MAE (eV)"), rows))
        return out


def fit_band_gap_model(
    store: Store,
    gnn: GNNSection,
    *,
    cheap_level: str,
    high_level: str | None,
    run_id: str | None = None,
    seed: int = 0,
) -> GNNStageResult:
    """Search (if ``gnn.search_architectures``), train and fine-tune the ensemble, then the learning curve.

    With a search and ``gnn.baseline_architecture``, that architecture (with the config's learning rate and
    batch size) is trained as a second ensemble ``baseline-<key>`` on the same splits with the same seeds, first,
    so the newest ensemble stays the search's best; it is skipped when the search's best is that setting.

    Content-keyed (:func:`gnn_stage_key`): the search, ensemble and curve ids derive from the settings and the
    gaps, so a re-run on unchanged data reuses them (nothing retrained) and an interrupted run resumes at the
    next ensemble member.
    """
    key = gnn_stage_key(store, gnn, cheap_level=cheap_level, high_level=high_level, seed=seed)
    trials: list[Trial] = []
    overrides: dict[str, Any] = {}
    if gnn.search_architectures:
        _, trials = search_hyperparameters(store, gnn, level=cheap_level, seed=seed, search_id=f"search-{key}")
        best = trials[0]
        overrides = {
            "architecture_name": best.architecture,
            "learning_rate": best.learning_rate,
            "batch_size": best.batch_size,
        }
    baseline = None
    name = gnn.baseline_architecture
    if trials and name is not None:
        best = trials[0]
        if (best.architecture, best.learning_rate, best.batch_size) == (name, gnn.learning_rate, gnn.batch_size):
            logger.info("GNN baseline %s is the search's best: no separate baseline", name)
        else:
            baseline = train_two_stage(
                store,
                gnn,
                cheap_level=cheap_level,
                high_level=high_level,
                run_id=run_id,
                seed=seed,
                architecture_name=name,
                ensemble_id=f"{BASELINE_PREFIX}{key}",
            )
    ensemble = train_two_stage(
        store,
        gnn,
        cheap_level=cheap_level,
        high_level=high_level,
        run_id=run_id,
        seed=seed,
        ensemble_id=f"ensemble-{key}",
        **overrides,
    )
    curve: list[tuple[int, Metrics]] = []
    if gnn.learning_curve_fractions:
        best = {k: overrides[k] for k in ("learning_rate", "batch_size") if k in overrides}
        _, curve = learning_curve(
            store,
            gnn.model_copy(update=best),
            level=cheap_level,
            architecture=overrides.get("architecture_name", gnn.architecture),
            seed=seed,
            curve_id=f"curve-{key}",
        )
    return GNNStageResult(trials, ensemble, curve, baseline)
