"""Shared by the MD-frame benchmarks: fine-tune a GNN ensemble on the dataset plus added MD frames.

Added frames are split as the product would split them once in the store: a frame whose hash falls in the
validation share (``split_of`` with the config's split seed) validates, every other one trains. So the early
stopping sees MD frames too, as it does in a real round.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence

import numpy as np


def fine_tune_ensemble(
    members: Sequence,
    gnn,  # GNNSection
    base: tuple[list, np.ndarray],
    valid: tuple[list, np.ndarray],
    added: tuple[list[str], list, np.ndarray],
) -> list:
    """Copies of ``members`` fine-tuned (the config's fine-tuning settings) on base + added frames.

    ``base``/``valid``: (graphs, gaps eV) of the dataset's training and validation splits; ``added``:
    (hashes, graphs, gaps eV) of the MD frames added.
    """
    from capml_core.models.gnn import TrainingSettings, train
    from capml_core.models.metrics import split_of

    hashes, graphs, gaps = added
    to_valid = [
        split_of(h, seed=gnn.split_seed, valid_fraction=gnn.valid_fraction, test_fraction=gnn.test_fraction) == "valid"
        for h in hashes
    ]
    train_graphs = list(base[0]) + [g for g, v in zip(graphs, to_valid, strict=True) if not v]
    train_gaps = np.concatenate([base[1], [y for y, v in zip(gaps, to_valid, strict=True) if not v]])
    valid_graphs = list(valid[0]) + [g for g, v in zip(graphs, to_valid, strict=True) if v]
    valid_gaps = np.concatenate([valid[1], [y for y, v in zip(gaps, to_valid, strict=True) if v]])
    out = []
    for index, member in enumerate(members):
        model = copy.deepcopy(member)
        if len(hashes):
            settings = TrainingSettings(
                gnn.fine_tune_epochs, gnn.batch_size, gnn.fine_tune_learning_rate, gnn.patience, 1000 + index
            )
            train(model, train_graphs, train_gaps, valid_graphs, valid_gaps, settings, stage="benchmark")
        out.append(model)
    return out
