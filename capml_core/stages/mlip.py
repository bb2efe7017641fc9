"""MACE interatomic potentials: training and fine-tuning with MACE's own trainer, evaluation, calculators.

capml writes the labelled structures of one reference level as extended-XYZ files (train / valid / test by a
hash of each structure, so the split is reproducible and stable as the dataset grows), runs MACE's trainer
(``python -m mace.cli.run_train``) in a child process on them, and records the model, its errors and every
per-structure prediction in the store. Training from scratch or fine-tuning from a local foundation model file
(naive fine-tuning: all weights start from the foundation; the foundation's cutoff and size are kept, so the
config must state the same). An interrupted training resumes from MACE's last checkpoint.

Units: energies eV (errors per atom), forces eV/Å, stress eV/Å³ (Voigt xx yy zz yz xz xy, ASE sign), cutoff Å.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from ase import Atoms

from capml_core.config.schema import RunConfig
from capml_core.config.stage_sections import MLIPSection
from capml_core.dft.levels import LEVELS, get_level
from capml_core.errors import CalculationFailed, CapmlError, DatasetError, InvalidInputError, NotComputedError
from capml_core.models.mace import (
    MACE_RUN_NAME,
    EpochCallback,
    calculator_forces,
    check_foundation,
    load_mace_calculator,
    mace_arguments,
    predict_labels,
    resolve_device,
    run_mace_trainer,
    write_extxyz,
)
from capml_core.models.mace_files import (
    SAFE_SUFFIX,
    MaceModelInfo,
    convert_trusted_pickle,
    inspect_mace_model,
    load_safe_model,
    write_trusted_pickle,
)
from capml_core.models.metrics import error_metrics, split_of
from capml_core.physics.phonons import compute_force_constants, dispersion, gamma_frequencies_thz
from capml_core.provenance import content_key
from capml_core.stages.training_sets import end_member_force_constants
from capml_core.store.database import Store
from capml_core.store.queries import latest_model, mace_model_path
from capml_core.system.labelled import LabelledStructure
from capml_core.tables import ResultTable, table
from capml_core.types import DATASET_KIND_SQL, ForceFunction

logger = logging.getLogger(__name__)

SPLITS = ("train", "valid", "test")
QUANTITY_UNITS = {"energy": "eV/atom", "forces": "eV/Å", "stress": "eV/Å³"}


def labelled_structures(
    store: Store, level: str, *, need_stress: bool, max_md_frame_round: int | None = None
) -> list[LabelledStructure]:
    """Structures with energy and forces at ``level`` (and stress when ``need_stress``), sorted by hash.

    MD frames of active-learning rounds above ``max_md_frame_round`` are left out (None: none left out).

    Raises
    ------
    NotComputedError
        Fewer than 10 such structures.
    DatasetError
        ``need_stress`` and some structures have no stress (names them and their source).
    """
    later_rounds = ""
    if max_md_frame_round is not None:
        later = f"SELECT structure_hash FROM md_frames WHERE round > {int(max_md_frame_round)}"
        later_rounds = f"AND s.structure_hash NOT IN ({later})"
    rows = store.query(
        f"""SELECT l.structure_hash, l.energy_ev, l.forces_ev_per_a, l.stress_ev_per_a3, l.source, s.kind
           FROM labels l JOIN structures s USING (structure_hash)
           WHERE l.level = ? AND l.status = 'ok' AND l.energy_ev IS NOT NULL
             AND l.forces_ev_per_a IS NOT NULL AND {DATASET_KIND_SQL} {later_rounds} ORDER BY l.structure_hash""",
        [level],
    )
    if len(rows) < 10:
        raise NotComputedError(
            f"only {len(rows)} structures with energy and forces at {level}: label or import more before training MACE"
        )
    no_stress = rows[rows["stress_ev_per_a3"].isna()] if need_stress else rows.iloc[:0]
    if len(no_stress):
        sources = sorted({str(s) for s in no_stress["source"].fillna("?")})
        raise DatasetError(
            f"{len(no_stress)} of {len(rows)} structures labelled at {level} have no stress "
            f"(from {', '.join(sources)}; e.g. {no_stress['structure_hash'].iloc[0]}): "
            "MACE training with mlip.stress_weight > 0 needs stress. "
            "Import the stress (labels = energy,forces,stress) or set mlip.stress_weight = 0"
        )
    atoms = store.load_structures(rows["structure_hash"].tolist())
    out = []
    for row in rows.itertuples(index=False):
        stress = row.stress_ev_per_a3
        out.append(
            LabelledStructure(
                structure_hash=row.structure_hash,
                atoms=atoms[row.structure_hash],
                energy_ev=float(row.energy_ev),
                forces_ev_per_a=np.reshape(np.asarray(row.forces_ev_per_a, dtype=float), (-1, 3)),
                stress_ev_per_a3=None if stress is None or np.ndim(stress) == 0 else np.asarray(stress, dtype=float),
                kind=str(row.kind),
            )
        )
    return out


def split_structures(structures: Sequence[LabelledStructure], mlip: MLIPSection) -> dict[str, list[LabelledStructure]]:
    """Train / valid / test by a hash of (split seed, structure): reproducible and stable as data grows.

    MD frames chosen by active learning (kinds ``md-snapshot`` and ``md-frame``; held-out frames never get
    here) always go to training: they were chosen because the model had not seen their region, and the test
    split stays the dataset's, so that held-out MD-frame errors compare with it.
    """
    out: dict[str, list[LabelledStructure]] = {name: [] for name in SPLITS}
    for item in structures:
        if item.kind in ("md-snapshot", "md-frame"):
            out["train"].append(item)
            continue
        name = split_of(
            item.structure_hash,
            seed=mlip.split_seed,
            valid_fraction=mlip.valid_fraction,
            test_fraction=mlip.test_fraction,
        )
        out[name].append(item)
    if not out["valid"]:  # a tiny dataset: MACE needs a validation set
        out["valid"].append(out["train"].pop())
    return out


def model_id_for(
    mlip: MLIPSection, level: str, splits: dict[str, list[LabelledStructure]], foundation_sha: str | None
) -> str:
    """Content id of a training: settings, level, training/validation structures and foundation file."""
    settings = mlip.model_dump(
        mode="json",
        exclude={"device", "validate_phonons", "foundation_model", "committee_size", "max_md_frame_round"},
    )
    payload = {
        "settings": settings,
        "level": level,
        "foundation_sha256": foundation_sha,
        "train": [s.structure_hash for s in splits["train"]],
        "valid": [s.structure_hash for s in splits["valid"]],
    }
    return "mace-" + content_key(payload)


@dataclass(frozen=True)
class TrainedModel:
    """A MACE model recorded in the store."""

    model_id: str
    path: Path
    foundation_id: str | None
    splits: dict[str, list[str]]
    newly_trained: bool


def foundation_model_id(info: MaceModelInfo) -> str:
    """Store id of a foundation model file (by content)."""
    return f"foundation-{info.sha256[:12]}"


def train_mace(
    store: Store,
    mlip: MLIPSection,
    *,
    level: str,
    species: Sequence[str],
    run_id: str | None = None,
    on_epoch: EpochCallback | None = None,
    committee_of: str | None = None,
) -> TrainedModel:
    """Train (or fine-tune) MACE on ``level``'s labels and record the model; resumes an interrupted training.

    ``committee_of``: the model this one is a committee member of (:func:`train_committee`).

    A training with the same settings and structures that is already in the store is not repeated. The
    work files (extended XYZ, MACE's checkpoints and logs) are under ``<project>/mlip/<model id>/``.

    Raises
    ------
    InvalidInputError
        Foundation model missing, not a MACE model, or with another cutoff/size than the config.
    DatasetError, NotComputedError
        Missing stress; too few labelled structures.
    CalculationFailed
        MACE's trainer failed.
    """
    foundation = None
    if mlip.foundation_model is not None:  # checked before anything is written
        foundation = inspect_mace_model(mlip.foundation_model)
        check_foundation(foundation, mlip, species, source="mlip.foundation_model")
    store.initialise()
    structures = labelled_structures(
        store, level, need_stress=mlip.stress_weight > 0, max_md_frame_round=mlip.max_md_frame_round
    )
    splits = split_structures(structures, mlip)
    model_id = model_id_for(mlip, level, splits, foundation.sha256 if foundation else None)
    split_hashes = {name: [s.structure_hash for s in items] for name, items in splits.items()}
    foundation_id = foundation_model_id(foundation) if foundation else None
    existing = store.query("SELECT path FROM mlip_models WHERE model_id = ?", [model_id])
    if not existing.empty:
        logger.info("MACE model %s already trained (%s)", model_id, existing["path"][0])
        return TrainedModel(model_id, store.project_dir / existing["path"][0], foundation_id, split_hashes, False)

    work_dir = store.project_dir / "mlip" / model_id
    work_dir.mkdir(parents=True, exist_ok=True)
    files = {name: work_dir / f"{name}.extxyz" for name in SPLITS}
    for name in SPLITS:
        write_extxyz(files[name], splits[name])
    device = resolve_device(mlip.device)
    trainer_foundation = None
    if foundation is not None:  # MACE's trainer unpickles its foundation: give it one capml built itself
        trainer_foundation = write_trusted_pickle(load_safe_model(foundation.path), work_dir / "foundation.model")
    argv = mace_arguments(mlip, work_dir=work_dir, files=files, device=device, foundation=trainer_foundation)
    logger.info(
        "MACE %s: %s on %d train / %d valid structures of %s (%d held out), %s",
        model_id,
        f"fine-tuning {foundation.path}" if foundation else "training from scratch",
        len(splits["train"]),
        len(splits["valid"]),
        level,
        len(splits["test"]),
        device,
    )
    start = time.perf_counter()
    last_epoch = run_mace_trainer(
        argv, log_path=work_dir / "mace-train.log", max_epochs=mlip.max_epochs, on_epoch=on_epoch
    )
    seconds = time.perf_counter() - start
    # with stage two MACE writes both models; the stage-two one is the final one
    trainer_output = work_dir / f"{MACE_RUN_NAME}{'_stagetwo' if mlip.stage_two_fraction > 0 else ''}.model"
    if not trainer_output.is_file():
        raise CalculationFailed(f"MACE's trainer finished without writing {trainer_output}")
    # the trainer's pickle, written moments ago by this training, becomes capml's form; only that is ever loaded
    model_path = convert_trusted_pickle(trainer_output, work_dir / f"{MACE_RUN_NAME}{SAFE_SUFFIX}")
    info = inspect_mace_model(model_path)
    rows = []
    if foundation is not None:
        rows.append(_model_row(foundation_id, foundation, kind="foundation", run_id=run_id, path=str(foundation.path)))
    rows.append(
        _model_row(
            model_id,
            info,
            kind="fine-tuned" if foundation else "scratch",
            run_id=run_id,
            path=str(model_path.relative_to(store.project_dir)),
            level=level,
            foundation_id=foundation_id,
            counts={name: len(items) for name, items in splits.items()},
            epochs=last_epoch + 1,
            seconds=seconds,
            settings=mlip.model_dump(mode="json"),
            committee_of=committee_of,
        )
    )
    evaluation = []
    for evaluated_id, path in [(foundation_id, foundation.path)] if foundation else []:
        evaluation.append(evaluate_model(path, evaluated_id, splits, level=level, device=device))
    evaluation.append(evaluate_model(model_path, model_id, splits, level=level, device=device))
    with store.write() as writer:
        writer.add_rows("mlip_models", rows)
        for metrics, predictions in evaluation:
            writer.add_rows("mlip_metrics", metrics)
            writer.add_rows("mlip_predictions", predictions)
    return TrainedModel(model_id, model_path, foundation_id, split_hashes, True)


def _model_row(
    model_id: str,
    info: MaceModelInfo,
    *,
    kind: str,
    run_id: str | None,
    path: str,
    level: str | None = None,
    foundation_id: str | None = None,
    counts: dict[str, int] | None = None,
    epochs: int | None = None,
    seconds: float | None = None,
    settings: dict[str, Any] | None = None,
    committee_of: str | None = None,
) -> dict[str, Any]:
    counts = counts or {}
    return {
        "model_id": model_id,
        "run_id": run_id,
        "kind": kind,
        "level": level,
        "foundation_model_id": foundation_id,
        "path": path,
        "sha256": info.sha256,
        "r_max_a": info.r_max_a,
        "channels": info.channels,
        "max_l": info.max_l,
        "correlation": info.correlation,
        "n_train": counts.get("train"),
        "n_valid": counts.get("valid"),
        "n_test": counts.get("test"),
        "epochs": epochs,
        "train_seconds": seconds,
        "settings_json": json.dumps(settings) if settings else None,
        "committee_of": committee_of,
    }


def committee_member_settings(mlip: MLIPSection, member: int) -> MLIPSection:
    """Settings of committee member ``member`` (0: the model itself): seed and split seed shifted by ``member``."""
    return mlip.model_copy(update={"seed": mlip.seed + member, "split_seed": mlip.split_seed + member})


def train_committee(
    store: Store,
    mlip: MLIPSection,
    *,
    level: str,
    species: Sequence[str],
    primary_id: str,
    run_id: str | None = None,
    on_epoch: EpochCallback | None = None,
) -> list[str]:
    """Train the ``mlip.committee_size - 1`` other members of ``primary_id``'s committee; returns all ids.

    Members differ from the primary model in the trainer's seed and in the train/valid/test split
    (:func:`committee_member_settings`); members already trained are reused.
    """
    ids = [primary_id]
    for member in range(1, mlip.committee_size):
        trained = train_mace(
            store,
            committee_member_settings(mlip, member),
            level=level,
            species=species,
            run_id=run_id,
            on_epoch=on_epoch,
            committee_of=primary_id,
        )
        ids.append(trained.model_id)
    return ids


def committee_ids(store: Store, primary_id: str) -> list[str]:
    """The trained committee of a MACE model: the model itself first, then its members in training order."""
    rows = store.query(
        "SELECT model_id FROM mlip_models WHERE committee_of = ? ORDER BY created_at, model_id", [primary_id]
    )
    return [primary_id, *rows["model_id"].tolist()]


def evaluate_model(
    model_path: Path,
    model_id: str,
    splits: dict[str, list[LabelledStructure]],
    *,
    level: str,
    device: str = "cpu",
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Errors per quantity and split, and per-structure predictions, of a MACE model (float64)."""
    calculator = load_mace_calculator(model_path, device=device, dtype="float64")
    metrics, predictions = [], []
    for split, items in splits.items():
        if not items:
            continue
        collected: dict[str, tuple[list[np.ndarray], list[np.ndarray]]] = {q: ([], []) for q in QUANTITY_UNITS}
        for item in items:
            energy, forces, stress = predict_labels(calculator, item.atoms)
            n = len(item.atoms)
            predictions.append(
                {
                    "model_id": model_id,
                    "evaluated_on": level,
                    "structure_hash": item.structure_hash,
                    "level": level,
                    "split": split,
                    "n_atoms": n,
                    "energy_reference_ev_per_atom": item.energy_ev / n,
                    "energy_predicted_ev_per_atom": energy / n,
                    "forces_reference_ev_per_a": item.forces_ev_per_a.ravel().tolist(),
                    "forces_predicted_ev_per_a": forces.ravel().tolist(),
                    "stress_reference_ev_per_a3": None
                    if item.stress_ev_per_a3 is None
                    else item.stress_ev_per_a3.tolist(),
                    "stress_predicted_ev_per_a3": stress.tolist(),
                }
            )
            collected["energy"][0].append(np.array([item.energy_ev / n]))
            collected["energy"][1].append(np.array([energy / n]))
            collected["forces"][0].append(item.forces_ev_per_a.ravel())
            collected["forces"][1].append(forces.ravel())
            if item.stress_ev_per_a3 is not None:
                collected["stress"][0].append(item.stress_ev_per_a3)
                collected["stress"][1].append(stress)
        for quantity, (reference, predicted) in collected.items():
            if not reference:
                continue
            m = error_metrics(np.concatenate(reference), np.concatenate(predicted))
            metrics.append(
                {
                    "model_id": model_id,
                    "evaluated_on": level,
                    "quantity": quantity,
                    "split": split,
                    "unit": QUANTITY_UNITS[quantity],
                    **vars(m),
                }
            )
    return metrics, predictions


# ------------------------------------------------------------------------------------------- phonons
@dataclass(frozen=True)
class PhononValidation:
    """Γ-point frequencies (THz) of an end member's supercell from the reference level and from MACE."""

    end_member: str
    reference: str
    reference_thz: np.ndarray
    model_thz: np.ndarray
    reference_dispersion: Any
    model_dispersion: Any

    @property
    def metrics(self):
        """MAE, RMSE, R² and maximum error (THz) of the sorted frequencies (all commensurate q-points)."""
        return error_metrics(np.sort(self.reference_thz), np.sort(self.model_thz))


def validate_phonons(
    calculator,  # an ASE calculator
    reference_force_constants: dict[str, Any],
    *,
    displacement_a: float,
    reference: str,
) -> list[PhononValidation]:
    """Harmonic phonons of each end member with MACE vs the reference force constants.

    MACE's force constants are computed with phonopy on the same cell (the end member's supercell, the
    reference's atom order) with the same finite displacement; compared are the frequencies at the cell's
    Γ point, i.e. at every q-point commensurate with the supercell (the only points where the reference's
    finite-displacement frequencies are exact), plus the dispersions along the structure's symmetry path
    (seekpath; Γ-X-M-Γ-R-X|R-M for a cubic cell) for plots.
    """

    def forces(atoms: Atoms) -> np.ndarray:
        atoms = atoms.copy()
        atoms.calc = calculator
        return atoms.get_forces()

    out = []
    for species, ref in sorted(reference_force_constants.items()):
        model = compute_force_constants(ref.cell, forces, displacement_a=displacement_a)
        out.append(
            PhononValidation(
                end_member=species,
                reference=reference,
                reference_thz=gamma_frequencies_thz(ref.cell, ref.force_constants),
                model_thz=gamma_frequencies_thz(ref.cell, model.force_constants),
                reference_dispersion=dispersion(ref.cell, ref.force_constants),
                model_dispersion=dispersion(ref.cell, model.force_constants),
            )
        )
    return out


def store_phonon_validation(
    store: Store, model_id: str, results: Sequence[PhononValidation], *, run_id: str | None
) -> None:
    """Write the phonon comparison (metrics row + dispersion arrays) of a model."""
    rows = []
    for result in results:
        m = result.metrics
        arrays = {
            "reference_gamma_thz": result.reference_thz,
            "model_gamma_thz": result.model_thz,
            "distances": result.reference_dispersion.distances,
            "reference_dispersion_thz": result.reference_dispersion.frequencies_thz,
            "model_dispersion_thz": result.model_dispersion.frequencies_thz,
            "tick_distances": np.array([d for d, _ in result.reference_dispersion.ticks]),
            "tick_labels": np.array([label for _, label in result.reference_dispersion.ticks]),
        }
        with store.write() as writer:
            artifact_id = writer.save_arrays(
                "mlip-phonons", arrays, run_id=run_id, meta={"model_id": model_id, "end_member": result.end_member}
            )
        rows.append(
            {
                "model_id": model_id,
                "end_member": result.end_member,
                "reference": result.reference,
                "n_modes": m.n,
                "mae_thz": m.mae,
                "rmse_thz": m.rmse,
                "r2": m.r2,
                "max_error_thz": m.max_error,
                "n_imaginary_reference": int(np.sum(result.reference_thz < -IMAGINARY_TOLERANCE_THZ)),
                "n_imaginary_model": int(np.sum(result.model_thz < -IMAGINARY_TOLERANCE_THZ)),
                "min_frequency_reference_thz": float(result.reference_thz.min()),
                "min_frequency_model_thz": float(result.model_thz.min()),
                "artifact_id": artifact_id,
            }
        )
    with store.write() as writer:
        writer.add_rows("mlip_phonons", rows)


#: A mode counts as imaginary when its frequency is below minus this (THz; acoustic modes at Γ are ~0).
IMAGINARY_TOLERANCE_THZ = 0.05


# ------------------------------------------------------------------------------------------- the stage
#: ``dataset.force_constants_level`` value that means "the project's latest trained MACE model".
MACE_LEVEL = "mace"


def force_constants_cache_dir(store: Store, level: str) -> Path:
    """Where computed end-member force constants are kept: per project, and per model for ``"mace"``."""
    if level == MACE_LEVEL and store.exists():
        try:
            return store.project_dir / "phonons" / latest_model(store)[0]
        except CapmlError:  # no model (yet): the force function says so if it is ever called
            pass
    return store.project_dir / "phonons"


@dataclass(frozen=True)
class MlipStageResult:
    """What the ``mlip`` stage produced: the model and its errors (test split) and phonon comparison."""

    model: TrainedModel
    test_metrics: dict[str, dict[str, float]]
    phonons: list[dict[str, Any]]


def fit_mlip(
    store: Store,
    config: RunConfig,
    *,
    run_id: str | None = None,
    on_epoch: EpochCallback | None = None,
) -> MlipStageResult:
    """The ``mlip`` stage: train or fine-tune MACE, evaluate it, validate its phonons against the reference.

    Phonon reference: the config's phonopy files of the end members if given (``dataset.force_constants``),
    else force constants computed once per project at the training level (``<project>/phonons/``).
    """
    mlip = config.mlip
    level = mlip.level or config.reference.cheap_level
    model = train_mace(
        store, mlip, level=level, species=config.system.allowed_species(), run_id=run_id, on_epoch=on_epoch
    )
    phonons = store.query("SELECT * FROM mlip_phonons WHERE model_id = ? ORDER BY end_member", [model.model_id])
    if mlip.validate_phonons and phonons.empty:
        dataset = config.dataset.model_copy(update={"force_constants_level": level})
        forces = force_function(level, config.reference, store, field="mlip.level")
        reference_fcs = {
            species: end_member_force_constants(
                config.system, dataset, species, cache_dir=store.project_dir / "phonons", forces=forces
            )
            for species in config.system.sublattice.species
        }
        calculator = load_mace_calculator(model.path, device=resolve_device(mlip.device), dtype="float64")
        results = validate_phonons(calculator, reference_fcs, displacement_a=dataset.displacement_a, reference=level)
        store_phonon_validation(store, model.model_id, results, run_id=run_id)
        phonons = store.query("SELECT * FROM mlip_phonons WHERE model_id = ? ORDER BY end_member", [model.model_id])
    if mlip.committee_size > 1:
        train_committee(
            store,
            mlip,
            level=level,
            species=config.system.allowed_species(),
            primary_id=model.model_id,
            run_id=run_id,
            on_epoch=on_epoch,
        )
    metrics = store.query(
        "SELECT quantity, n, r2, mae, rmse, max_error FROM mlip_metrics WHERE model_id = ? AND split = 'test'",
        [model.model_id],
    )
    return MlipStageResult(
        model=model,
        test_metrics={r.quantity: {"n": r.n, "r2": r.r2, "mae": r.mae, "rmse": r.rmse} for r in metrics.itertuples()},
        phonons=phonons.drop(columns=["created_at"]).to_dict("records"),
    )


def evaluate_file(store: Store, config, model_file: str | Path, *, device: str = "auto") -> str:
    """Evaluate a MACE file (e.g. a foundation model) on the config's training level; returns its store id.

    Uses the same split of the structures as training, so its test errors compare with a trained model's.
    """
    mlip = config.mlip
    level = mlip.level or config.reference.cheap_level
    info = inspect_mace_model(model_file)  # before anything is written: a bad file leaves no store behind
    if not store.exists():
        raise NotComputedError(f"{store.path}: no store yet; import labelled data first (capml data import)")
    store.initialise()
    structures = labelled_structures(store, level, need_stress=False, max_md_frame_round=mlip.max_md_frame_round)
    splits = split_structures(structures, mlip)
    model_id = foundation_model_id(info)
    metrics, predictions = evaluate_model(info.path, model_id, splits, level=level, device=resolve_device(device))
    with store.write() as writer:
        writer.add_rows(
            "mlip_models", [_model_row(model_id, info, kind="foundation", run_id=None, path=str(info.path))]
        )
        writer.add_rows("mlip_metrics", metrics)
        writer.add_rows("mlip_predictions", predictions)
    return model_id


def run_calculator(store: Store, model_id: str, *, device: str = "auto", dtype: str = "float64"):
    """ASE calculator of one MACE model of the project (the newest: ``latest_model(store)[0]``)."""
    return load_mace_calculator(mace_model_path(store, model_id), device=device, dtype=dtype)


def force_function(  # reference: ReferenceSection
    level: str, reference, store: Store, *, device: str = "auto", field: str = "dataset.force_constants_level"
) -> ForceFunction:
    """Forces (eV/Å) at a reference level (``reference``: the config's section), or from MACE for ``"mace"``.

    A level that gives no forces is refused, naming ``field`` (the config field that chose it).

    The MACE model is loaded when the first forces are asked for, so a level that is never used (force
    constants read from files) needs no trained model.
    """
    if level == MACE_LEVEL:
        cache: list[ForceFunction] = []

        def mace_forces(atoms: Atoms) -> np.ndarray:
            if not cache:
                cache.append(
                    calculator_forces(run_calculator(store, latest_model(store)[0], device=device, dtype="float64"))
                )
            return cache[0](atoms)

        return mace_forces

    if level in LEVELS and "forces" not in LEVELS[level].provides:
        forcing = sorted(name for name, cls in LEVELS.items() if "forces" in cls.provides)
        provides = ", ".join(LEVELS[level].provides)
        raise InvalidInputError(
            f"{field} = {level!r} gives no forces (it provides {provides}); "
            f"allowed: {', '.join([*forcing, MACE_LEVEL])}"
        )

    def reference_forces(atoms: Atoms) -> np.ndarray:
        result = get_level(level, reference).compute(atoms)
        logger.info("%s forces of a displaced structure in %.0f s", level, result.wall_time_s or 0.0)
        return result.forces_ev_per_a

    return reference_forces


def mlip_tables(store: Store, model_ids: Sequence[str]) -> list[ResultTable]:
    """Stored errors of MACE models against the reference level, and their end members' Γ phonons vs DFT."""
    metrics = store.query(
        """SELECT model_id, quantity, split, unit, n, mae, rmse, r2 FROM mlip_metrics
           WHERE model_id IN (SELECT unnest(?)) ORDER BY model_id DESC, quantity, split DESC""",
        [list(model_ids)],
    )
    rows = [
        (r.model_id, r.quantity, r.split, str(r.n), f"{r.mae:.4g}", f"{r.rmse:.4g}", f"{r.r2:.3f}", r.unit)
        for r in metrics.itertuples()
    ]
    columns = ("model", "quantity", "split", "n", "MAE", "RMSE", "R²", "unit")
    out = [table("errors vs the reference level", columns, rows)]
    phonons = store.query("SELECT * FROM mlip_phonons WHERE model_id IN (SELECT unnest(?))", [list(model_ids)])
    if not phonons.empty:
        rows = [
            (
                r.end_member,
                str(r.n_modes),
                f"{r.mae_thz:.3f}",
                f"{r.r2:.3f}",
                f"{r.n_imaginary_reference} / {r.n_imaginary_model}",
                f"{r.min_frequency_reference_thz:.2f} / {r.min_frequency_model_thz:.2f}",
            )
            for r in phonons.itertuples()
        ]
        columns = ("end member", "modes", "MAE (THz)", "R²", "imaginary ref / MACE", "lowest ref / MACE (THz)")
        out.append(table("Γ-point phonons of the end-member supercells: MACE vs the reference level", columns, rows))
    return out
