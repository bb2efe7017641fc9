"""A band-gap head on MACE descriptors: Gaussian kernel ridge regression, hyperparameters by cross-validation.

The GNN (GraphConv on distances) trained on harmonic displacements of the cubic cell is 0.5 eV too low on the
distorted MD frames the pipeline evaluates. MACE's invariant node features, averaged per species
(:func:`capml_core.models.committee.mace_descriptors`), describe the local environments the potential has learnt;
a kernel ridge regression on them (standardised per feature) generalises much better to MD frames
(``benchmarks/gap_models.py``). For descriptors x_i and gaps y_i (eV):

    gap(x) = ybar + sum_i w_i k(x, x_i),   k(a, b) = exp(-gamma |a - b|^2 / n_features),
    w = (K + lambda I)^-1 (y - ybar),

with (gamma, lambda) chosen by k-fold cross-validation (MAE) on the training data alone. Where the model is used
on some structures and trained on many others (MD frames among hundreds of harmonic displacements of the cubic
cell), a ``focus`` mask makes the cross-validation score the error on the focus structures only and lets it give
the others a regularisation f times larger (f chosen too, 1 among the choices): the head fits where it is used
and takes the rest as weaker evidence. Two levels as for the
GNN: a head on the cheap level, and the high level learnt as a correction to it (:class:`DeltaGapHead`: the
high-level gap is the cheap head's plus a head fitted on the differences), since the high level has fewer labels.
Files (:meth:`KernelGapHead.save`): ``head.json`` (settings) and ``head.npz`` (arrays, read without pickle).

:class:`KernelGapModel` is a head bound to one MACE model file (``gnn.architecture = "mace-kernel"``): a member of a
gap ensemble like a GNN, loaded by :func:`capml_core.models.gnn.load_ensemble` and evaluated by
:func:`capml_core.models.gnn.predict_gaps_per_model`, so every stage that predicts gaps can use it.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np
from ase import Atoms

from capml_core.errors import InvalidInputError

#: Kernel widths and regularisations tried by default.
DEFAULT_GAMMAS = (0.03, 0.1, 0.3, 1.0, 3.0)
DEFAULT_LAMBDAS = (1e-3, 1e-2, 1e-1)
#: Regularisation factors of the structures outside the focus tried by default (1: all alike).
DEFAULT_OTHER_FACTORS = (1.0, 3.0, 10.0, 30.0, 100.0)
HEAD_FORMAT_VERSION = 1
#: Arrays of a head's ``.npz`` file.
ARRAY_NAMES = ("mean", "scale", "points", "weights")


def gaussian_kernel(a: np.ndarray, b: np.ndarray, gamma: float) -> np.ndarray:
    """exp(-gamma |a - b|^2 / n_features) between the rows of ``a`` and ``b`` (standardised descriptors)."""
    from scipy.spatial.distance import cdist

    return np.exp(-gamma * cdist(a, b, "sqeuclidean") / a.shape[1])


@dataclass(frozen=True)
class KernelGapHead:
    """A fitted head: standardisation, training points, weights, offset (eV) and its hyperparameters."""

    mean: np.ndarray
    scale: np.ndarray
    points: np.ndarray
    weights: np.ndarray
    offset_ev: float
    gamma: float
    regularisation: float
    cv_mae_ev: float
    #: regularisation of the structures outside the focus / of the focus ones (1: no focus)
    other_factor: float = 1.0

    def predict(self, descriptors: np.ndarray) -> np.ndarray:
        """Gaps (eV) of structures given their descriptors (n, n_features)."""
        x = np.asarray(descriptors, dtype=float)
        if x.ndim != 2 or x.shape[1] != self.points.shape[1]:
            raise InvalidInputError(f"descriptors of shape {x.shape}; this head takes (n, {self.points.shape[1]})")
        x = (x - self.mean) / self.scale
        return gaussian_kernel(x, self.points, self.gamma) @ self.weights + self.offset_ev

    def save(self, directory: str | Path, *, prefix: str = "head") -> Path:
        """Write ``<prefix>.json`` and ``<prefix>.npz`` to ``directory``."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        np.savez(
            directory / f"{prefix}.npz", mean=self.mean, scale=self.scale, points=self.points, weights=self.weights
        )
        meta = {
            "format_version": HEAD_FORMAT_VERSION,
            "offset_ev": self.offset_ev,
            "gamma": self.gamma,
            "regularisation": self.regularisation,
            "cv_mae_ev": self.cv_mae_ev,
            "other_factor": self.other_factor,
        }
        (directory / f"{prefix}.json").write_text(json.dumps(meta, indent=2))
        return directory

    @classmethod
    def load(cls, directory: str | Path, *, prefix: str = "head") -> KernelGapHead:
        """Read a head written by :meth:`save` (arrays without pickle).

        Raises
        ------
        InvalidInputError
            Missing or malformed files, another format version.
        """
        directory = Path(directory)
        meta_file, arrays_file = directory / f"{prefix}.json", directory / f"{prefix}.npz"
        if not meta_file.is_file() or not arrays_file.is_file():
            raise InvalidInputError(f"{directory}: not a capml gap head (need {prefix}.json and {prefix}.npz)")
        try:
            meta = json.loads(meta_file.read_text(encoding="utf-8"))
            if meta.get("format_version") != HEAD_FORMAT_VERSION:
                raise InvalidInputError(
                    f"{meta_file}: gap-head format {meta.get('format_version')}, this capml reads {HEAD_FORMAT_VERSION}"
                )
            with np.load(arrays_file, allow_pickle=False) as arrays:
                fields = {
                    name: np.asarray(arrays[name], dtype=float) for name in ("mean", "scale", "points", "weights")
                }
            return cls(
                **fields,
                offset_ev=float(meta["offset_ev"]),
                gamma=float(meta["gamma"]),
                regularisation=float(meta["regularisation"]),
                cv_mae_ev=float(meta["cv_mae_ev"]),
                other_factor=float(meta.get("other_factor", 1.0)),
            )
        except InvalidInputError:
            raise
        except (ValueError, KeyError, TypeError, OSError, AttributeError) as err:
            raise InvalidInputError(
                f"{directory}: not a readable capml gap head ({type(err).__name__}: {err})"
            ) from err


def _solve(
    points: np.ndarray, targets: np.ndarray, gamma: float, regularisation: np.ndarray
) -> tuple[np.ndarray, float]:
    """Weights and offset of kernel ridge regression with a per-structure regularisation (vector, eV^2 units of K)."""
    offset = float(targets.mean())
    kernel = gaussian_kernel(points, points, gamma) + np.diag(regularisation)
    from scipy.linalg import cho_factor, cho_solve

    return cho_solve(cho_factor(kernel), targets - offset), offset


def _fold_assignment(n: int, focus: np.ndarray, folds: int, seed: int) -> np.ndarray:
    """Fold of each structure: focus and other structures dealt out separately, so every fold has focus ones."""
    rng = np.random.default_rng(seed)
    assignment = np.empty(n, dtype=int)
    for group in (focus, ~focus):
        rows = np.flatnonzero(group)
        assignment[rows] = rng.permutation(len(rows)) % folds
    return assignment


def fit_kernel_head(
    descriptors: np.ndarray,
    gaps_ev: Sequence[float],
    *,
    focus: Sequence[bool] | None = None,
    gammas: Sequence[float] = DEFAULT_GAMMAS,
    regularisations: Sequence[float] = DEFAULT_LAMBDAS,
    other_factors: Sequence[float] = DEFAULT_OTHER_FACTORS,
    folds: int = 5,
    seed: int = 0,
) -> KernelGapHead:
    """Fit a head; (gamma, lambda) by ``folds``-fold cross-validation MAE on these data only.

    ``focus``: structures the head is for (e.g. MD frames). With at least ``folds`` of them the score is their MAE
    alone and the other structures' regularisation is lambda times a factor from ``other_factors``; without, every
    structure counts and is regularised alike.

    Raises
    ------
    InvalidInputError
        Fewer structures than folds, or descriptors, gaps and focus of different lengths.
    """
    x = np.asarray(descriptors, dtype=float)
    y = np.asarray(gaps_ev, dtype=float)
    if len(x) != len(y) or len(x) < max(folds, 2):
        raise InvalidInputError(f"{len(x)} descriptors and {len(y)} gaps: need as many, and at least {folds}")
    mask = np.zeros(len(x), dtype=bool) if focus is None else np.asarray(focus, dtype=bool)
    if mask.shape != (len(x),):
        raise InvalidInputError(f"focus of shape {mask.shape} for {len(x)} structures: need one flag per structure")
    focused = folds <= mask.sum() < len(x)
    scored = mask if focused else np.ones(len(x), dtype=bool)
    factors = tuple(other_factors) if focused else (1.0,)
    mean, scale = x.mean(axis=0), x.std(axis=0)
    scale = np.where(scale > 0, scale, 1.0)
    z = (x - mean) / scale
    assignment = _fold_assignment(len(z), scored, folds, seed)
    best: tuple[float, float, float, float] | None = None
    for gamma in gammas:
        for regularisation in regularisations:
            for factor in factors:
                ridge = np.where(scored, regularisation, regularisation * factor)
                errors = []
                for fold in range(folds):
                    train, test = assignment != fold, (assignment == fold) & scored
                    weights, offset = _solve(z[train], y[train], gamma, ridge[train])
                    predicted = gaussian_kernel(z[test], z[train], gamma) @ weights + offset
                    errors.append(np.abs(predicted - y[test]).mean())
                score = float(np.mean(errors))
                if best is None or score < best[0]:
                    best = (score, gamma, regularisation, factor)
    assert best is not None
    score, gamma, regularisation, factor = best
    weights, offset = _solve(z, y, gamma, np.where(scored, regularisation, regularisation * factor))
    return KernelGapHead(mean, scale, z, weights, offset, float(gamma), float(regularisation), score, float(factor))


@dataclass(frozen=True)
class DeltaGapHead:
    """High-level gaps as the cheap head's plus a correction head fitted on (high - cheap prediction)."""

    cheap: KernelGapHead
    correction: KernelGapHead

    def predict(self, descriptors: np.ndarray) -> np.ndarray:
        """High-level gaps (eV)."""
        return self.cheap.predict(descriptors) + self.correction.predict(descriptors)

    def save(self, directory: str | Path) -> Path:
        """Write ``cheap.*`` and ``correction.*`` to ``directory``."""
        self.cheap.save(directory, prefix="cheap")
        return self.correction.save(directory, prefix="correction")

    @classmethod
    def load(cls, directory: str | Path) -> DeltaGapHead:
        """Read a head written by :meth:`save`."""
        return cls(KernelGapHead.load(directory, prefix="cheap"), KernelGapHead.load(directory, prefix="correction"))


def fit_delta_head(
    cheap: KernelGapHead, descriptors: np.ndarray, high_gaps_ev: Sequence[float], **settings
) -> DeltaGapHead:
    """The high level as a correction to ``cheap`` (settings as :func:`fit_kernel_head`)."""
    residual = np.asarray(high_gaps_ev, dtype=float) - cheap.predict(descriptors)
    return DeltaGapHead(cheap, fit_kernel_head(descriptors, residual, **settings))


#: Architecture name of a kernel-head gap model (a choice of ``gnn.architecture`` beside the GNN architectures).
KERNEL_ARCHITECTURE = "mace-kernel"
#: The description file of a kernel gap model's directory.
KERNEL_MODEL_FILE = "kernel.json"
KERNEL_FORMAT_VERSION = 1


@lru_cache(maxsize=4)
def _descriptor_calculator(path: str, device: str):
    from capml_core.models.mace import load_mace_calculator

    return load_mace_calculator(path, device=device, dtype="float64")


def kernel_descriptors(
    structures: Sequence[Atoms], mace_model: str | Path, species: Sequence[str], *, device: str = "cpu"
) -> np.ndarray:
    """(n_structures, n_features) species-averaged MACE node features of ``structures`` (the heads' input)."""
    from capml_core.models.committee import mace_descriptors

    if not structures:
        return np.zeros((0, 0))
    return mace_descriptors(_descriptor_calculator(str(mace_model), device), structures, species)


@dataclass
class KernelGapModel:
    """One member of a kernel gap ensemble: a head on the descriptors of one MACE model file.

    ``head``: a :class:`KernelGapHead` (one level) or a :class:`DeltaGapHead` (the high level as a correction to
    the cheap one). ``species`` fixes the descriptor's order; ``mace_sha256`` is the MACE file the head was fitted
    on (a changed file is refused: its descriptors mean something else). ``history``: how it was fitted.
    """

    head: KernelGapHead | DeltaGapHead
    mace_model: Path
    mace_sha256: str
    species: tuple[str, ...]
    history: dict
    device: str = "cpu"
    name: str = KERNEL_ARCHITECTURE

    def to(self, device: str) -> KernelGapModel:
        """Evaluate the MACE descriptors on ``device`` ('cpu', 'cuda', 'auto')."""
        from capml_core.models.mace import resolve_device

        self.device = resolve_device(device)
        return self

    def descriptors(self, structures: Sequence[Atoms]) -> np.ndarray:
        """The descriptors this model reads (compute once and share between members of one MACE model)."""
        return kernel_descriptors(structures, self.mace_model, self.species, device=self.device)

    def predict_descriptors(self, descriptors: np.ndarray) -> np.ndarray:
        """Gaps (eV) from descriptors of :meth:`descriptors`."""
        return self.head.predict(descriptors) if len(descriptors) else np.zeros(0)

    def predict_structures(self, structures: Sequence[Atoms]) -> np.ndarray:
        """Gaps (eV) of structures."""
        return self.predict_descriptors(self.descriptors(structures))

    def save(self, directory: str | Path) -> Path:
        """Write ``kernel.json`` and the head's arrays; the MACE file is referred to relative to ``directory``."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        delta = isinstance(self.head, DeltaGapHead)
        self.head.save(directory) if delta else self.head.save(directory, prefix="head")
        meta = {
            "format_version": KERNEL_FORMAT_VERSION,
            "name": self.name,
            "kind": "delta" if delta else "single",
            "mace_model": os.path.relpath(self.mace_model.resolve(), directory.resolve()),
            "mace_sha256": self.mace_sha256,
            "species": list(self.species),
            "history": self.history,
        }
        (directory / KERNEL_MODEL_FILE).write_text(json.dumps(meta, indent=2))
        return directory

    @classmethod
    def load(cls, directory: str | Path) -> KernelGapModel:
        """Read a model written by :meth:`save`.

        Raises
        ------
        InvalidInputError
            Missing or malformed files, another format, a MACE file that is missing or not the one fitted on.
        """
        from capml_core.provenance import file_sha256

        directory = Path(directory)
        meta_file = directory / KERNEL_MODEL_FILE
        try:
            meta = json.loads(meta_file.read_text(encoding="utf-8"))
            version = meta.get("format_version") if isinstance(meta, dict) else None
            if version != KERNEL_FORMAT_VERSION:
                raise InvalidInputError(
                    f"{meta_file}: kernel gap model format {version}, this capml reads {KERNEL_FORMAT_VERSION}"
                )
            kind, species = meta["kind"], tuple(str(s) for s in meta["species"])
            mace_model = (directory / str(meta["mace_model"])).resolve()
            sha256, history = str(meta["mace_sha256"]), dict(meta.get("history", {}))
        except InvalidInputError:
            raise
        except (OSError, ValueError, KeyError, TypeError) as err:
            raise InvalidInputError(f"{meta_file}: not a capml kernel gap model ({type(err).__name__}: {err})") from err
        if kind not in ("single", "delta"):
            raise InvalidInputError(f"{meta_file}: kind {kind!r}; allowed: single, delta")
        if not mace_model.is_file():
            raise InvalidInputError(f"{meta_file}: its MACE model {mace_model} is missing")
        if file_sha256(mace_model) != sha256:
            raise InvalidInputError(
                f"{meta_file}: the MACE model {mace_model} changed since the head was fitted (sha256 "
                f"{sha256[:12]}...); refit the gap model"
            )
        head = DeltaGapHead.load(directory) if kind == "delta" else KernelGapHead.load(directory, prefix="head")
        return cls(head, mace_model, sha256, species, history)


def is_kernel_model_dir(directory: str | Path) -> bool:
    """True if ``directory`` holds a kernel gap model (``kernel.json``)."""
    return (Path(directory) / KERNEL_MODEL_FILE).is_file()
