"""Import of labelled datasets (extended XYZ) into the store, with validation.

A file is read and checked completely before anything is written; a bad file raises
:class:`~capml_core.errors.DatasetError` listing every problem found (file, frame, key, what is wrong), and
the store is left unchanged. A good file is written in one transaction: structures (keyed by content hash)
and labels (keyed by structure hash + level). Importing the same file again adds nothing.

Units expected in the file: energy eV, forces eV/Å (``arrays``), stress eV/Å³ (``info``; 6 Voigt components
xx yy zz yz xz xy, or a 3x3 matrix; positive = tensile, as ASE), band gap eV.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from ase import Atoms

from capml_core.config.inputs import ImportSpec, LabelKeys, SystemSection
from capml_core.errors import DatasetError
from capml_core.provenance import file_sha256
from capml_core.store.database import Store
from capml_core.store.records import LabelRecord, StructureRecord
from capml_core.system.labelled import LabelledStructure
from capml_core.system.structures import structure_hash, substituted_fraction
from capml_core.types import ProgressCallback

logger = logging.getLogger(__name__)

#: Problems listed in a DatasetError before the rest are counted only.
MAX_PROBLEMS_SHOWN = 20


@dataclass(frozen=True)
class ImportReport:
    """What an import did.

    Attributes
    ----------
    path, level
        The file and the level its labels were stored under.
    n_frames
        Frames in the file.
    n_duplicate_frames
        Frames whose structure repeats an earlier frame of the same file (the first is kept).
    new_structures, new_labels
        Rows added to the store.
    existing_labels
        Labels that were already stored (re-import) and kept.
    sha256
        Checksum of the file.
    differing
        Already stored structures whose stored labels differ from the file's: (hash, label names, description
        of the first difference); the stored labels were kept.
    """

    path: Path
    level: str
    n_frames: int
    n_duplicate_frames: int
    new_structures: int
    new_labels: int
    existing_labels: int
    sha256: str
    differing: list[tuple[str, list[str], str]] = field(default_factory=list)

    def summary(self) -> str:
        """One line: frames, repeats, what was added and what was already stored."""
        return (
            f"{self.path.name} -> level {self.level}: {self.n_frames} frames ({self.n_duplicate_frames} repeated in "
            f"the file), {self.new_structures} new structures, {self.new_labels} new labels, {self.existing_labels} "
            "already stored"
        )

    def warning(self) -> str | None:
        """What to know when stored labels differ from the file's (None when none do)."""
        if not self.differing:
            return None
        names = sorted({name for _, labels, _ in self.differing for name in labels})
        return (
            f"{len(self.differing)} of the already stored structures have other labels at {self.level} in the store "
            f"than in this file ({', '.join(names)}; e.g. {self.differing[0][2]}): the stored labels were kept. "
            "Import the file under another --level name to keep both"
        )


def _show(value: Any) -> str:
    """A value as a user wrote it (numpy scalars shown as plain numbers)."""
    return str(value.item()) if isinstance(value, np.generic) else repr(value)


def _finite_scalar(value: Any) -> float | None:
    try:
        number = float(np.asarray(value, dtype=np.float64).reshape(()))
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None


def _stress_voigt(value: Any) -> np.ndarray | None:
    """Stress as 6 Voigt components (eV/Å³) from 6 values or a 3x3 matrix; None if malformed."""
    try:
        array = np.asarray(value, dtype=np.float64)
    except (TypeError, ValueError):
        return None
    if array.size == 9:
        m = array.reshape(3, 3)
        array = np.array([m[0, 0], m[1, 1], m[2, 2], m[1, 2], m[0, 2], m[0, 1]])
    if array.shape != (6,):
        return None
    return array


def _lookup(atoms: Atoms, key: str) -> Any:
    """A label from ``info``, ``arrays`` or (as ASE's extxyz reader puts standard keys) the calculator."""
    if key in atoms.info:
        return atoms.info[key]
    if key in atoms.arrays:
        return atoms.arrays[key]
    calc = atoms.calc
    if calc is not None and key in getattr(calc, "results", {}):
        return calc.results[key]
    return None


def validate_frame(
    atoms: Atoms,
    *,
    keys: LabelKeys,
    allowed_species: set[str] | None,
    temperature_key: str | None = None,
    amplitude_key: str | None = None,
) -> tuple[LabelledStructure | None, list[str]]:
    """Check one frame; returns the validated record (or None) and the list of problems found."""
    problems: list[str] = []
    symbols = set(atoms.get_chemical_symbols())
    if allowed_species is not None and not symbols <= allowed_species:
        problems.append(
            f"unknown species {sorted(symbols - allowed_species)}; allowed: {', '.join(sorted(allowed_species))}"
        )
    if not np.all(np.isfinite(atoms.positions)) or not np.all(np.isfinite(atoms.cell[:])):
        problems.append("positions or cell contain NaN/inf")
    if atoms.cell.rank != 3 or abs(atoms.cell.volume) < 1e-6:
        problems.append("the cell is missing or singular (need a 3D periodic cell: Lattice=...)")
    n_atoms = len(atoms)
    labels: dict[str, Any] = {}
    for name, key in keys.present().items():
        value = _lookup(atoms, key)
        if value is None:
            available = sorted(set(atoms.info) | set(atoms.arrays) - {"numbers", "positions"})
            problems.append(f"missing {name} label '{key}' (keys in this frame: {', '.join(available)})")
            continue
        if name in ("energy", "gap"):
            number = _finite_scalar(value)
            if number is None:
                problems.append(f"{name} '{key}' = {_show(value)}: not a finite number")
            elif name == "gap" and number < 0.0:
                problems.append(f"gap '{key}' = {number}: a band gap cannot be negative")
            labels[name] = number
        elif name == "forces":
            forces = np.asarray(value, dtype=np.float64)
            if forces.shape != (n_atoms, 3):
                problems.append(f"forces '{key}' have shape {forces.shape}, expected ({n_atoms}, 3)")
            elif not np.all(np.isfinite(forces)):
                problems.append(f"forces '{key}' contain NaN/inf")
            labels[name] = forces
        else:
            stress = _stress_voigt(value)
            if stress is None:
                shape = np.shape(value)
                problems.append(f"stress '{key}' has shape {shape}, expected 6 Voigt components or 3x3")
            elif not np.all(np.isfinite(stress)):
                problems.append(f"stress '{key}' contains NaN/inf")
            labels[name] = stress
    conditions: dict[str, float | None] = {"temperature": None, "amplitude": None}
    for name, key in (("temperature", temperature_key), ("amplitude", amplitude_key)):
        if key is None:
            continue
        number = _finite_scalar(atoms.info.get(key))
        if number is None or number < 0.0:
            problems.append(f"{name} '{key}' = {_show(atoms.info.get(key))}: need a finite number >= 0")
        conditions[name] = number
    if problems:
        return None, problems
    label_keys = set(keys.present().values())
    extras = {
        k: (v.item() if isinstance(v, np.generic) else v)
        for k, v in atoms.info.items()
        if k not in label_keys and isinstance(v, (int, float, str, bool, np.generic))
    }
    clean = Atoms(numbers=atoms.numbers, positions=atoms.positions, cell=atoms.cell, pbc=atoms.pbc)
    return (
        LabelledStructure(
            atoms=clean,
            structure_hash=structure_hash(clean),
            energy_ev=labels.get("energy"),
            forces_ev_per_a=labels.get("forces"),
            stress_ev_per_a3=labels.get("stress"),
            gap_ev=labels.get("gap"),
            temperature_k=conditions["temperature"],
            amplitude_a=conditions["amplitude"],
            extras=extras,
        ),
        [],
    )


#: ``config_type`` values of a capml export kept as the structure's kind on import (the dataset's own kinds).
GENERATED_KINDS = ("thermal", "uniform", "equilibrium")


def _imported_kind(extras: dict[str, Any]) -> str:
    """A frame's kind: the ``config_type`` capml wrote for a generated structure, else 'imported'."""
    kind = extras.get("config_type")
    return kind if kind in GENERATED_KINDS else "imported"


def _imported_temperature(record: LabelledStructure) -> float | None:
    """Temperature (K) from the import's ``temperature_key``, else the ``temperature_k`` capml's export writes."""
    if record.temperature_k is not None:
        return record.temperature_k
    value = _finite_scalar(record.extras.get("temperature_k"))
    return value if value is not None and value > 0.0 else None


def _wall_time_s(extras: dict[str, Any]) -> float | None:
    """The label's compute time (s) a file exported by capml carries as ``wall_time_s``; None if absent or invalid."""
    value = _finite_scalar(extras.get("wall_time_s"))
    return value if value is not None and value >= 0.0 else None


def _find_symbol(path: Path, symbol: str) -> str:
    """'frame N (line L): ' of the first atom line whose symbol is ``symbol`` ('' if not found)."""
    lines = path.read_text(encoding="utf-8", errors="replace").splitlines()
    start, frame = 0, 0
    while start < len(lines):
        try:
            n_atoms = int(lines[start].split()[0])
        except (ValueError, IndexError):
            return ""
        for offset in range(start + 2, min(start + 2 + n_atoms, len(lines))):
            fields = lines[offset].split()
            if fields and fields[0] == symbol:
                return f"frame {frame} (line {offset + 1}): "
        start, frame = start + 2 + n_atoms, frame + 1
    return ""


def load_labelled_extxyz(
    path: str | Path,
    *,
    keys: LabelKeys,
    allowed_species: set[str] | None = None,
    temperature_key: str | None = None,
    amplitude_key: str | None = None,
    progress: ProgressCallback | None = None,
) -> list[LabelledStructure]:
    """Read and validate every frame of an extended-XYZ file.

    Parameters
    ----------
    path
        The file.
    keys
        Where each label sits; labels whose key is None are not expected.
    allowed_species
        Elements a frame may contain (None: any).
    temperature_key, amplitude_key
        ``info`` keys of the temperature (K) / displacement amplitude (Å) of each frame, if any.
    progress
        Called as ``progress(done, total)`` while frames are checked.

    Raises
    ------
    DatasetError
        The file is unreadable, empty, or has frames with problems (all are listed).
    """
    from ase.io import read

    path = Path(path)
    if not path.is_file():
        raise DatasetError(f"{path}: file not found")
    try:
        frames = read(path, index=":", format="extxyz")
    except KeyError as err:  # ASE's parser: a symbol that names no element
        symbol = str(err.args[0]) if err.args else ""
        where = _find_symbol(path, symbol)
        allowed = ", ".join(sorted(allowed_species)) if allowed_species else "element symbols (H ... Og)"
        raise DatasetError(
            f"{path}: {where}unknown element symbol {symbol!r}; allowed species: {allowed}; nothing was imported"
        ) from err
    except Exception as err:  # ASE's extxyz parser raises several types on malformed input
        detail = str(err).strip() or type(err).__name__
        raise DatasetError(f"{path}: not a readable extended-XYZ file: {detail}; nothing was imported") from err
    if not frames:
        raise DatasetError(f"{path}: no structures in the file")
    records: list[LabelledStructure] = []
    problems: list[str] = []
    for index, atoms in enumerate(frames):
        record, frame_problems = validate_frame(
            atoms,
            keys=keys,
            allowed_species=allowed_species,
            temperature_key=temperature_key,
            amplitude_key=amplitude_key,
        )
        problems.extend(f"frame {index}: {p}" for p in frame_problems)
        if record is not None:
            records.append(record)
        if progress is not None:
            progress(index + 1, len(frames))
    if problems:
        shown = "\n  ".join(problems[:MAX_PROBLEMS_SHOWN])
        more = f"\n  ... and {len(problems) - MAX_PROBLEMS_SHOWN} more" if len(problems) > MAX_PROBLEMS_SHOWN else ""
        raise DatasetError(
            f"{path}: rejected, {len(problems)} problem(s) in {len(frames)} frames; nothing was imported:\n  "
            f"{shown}{more}"
        )
    return records


def md_frame_row(info: dict[str, Any], structure_hash: str) -> dict[str, Any] | None:
    """The ``md_frames`` row of a frame whose ``info`` says it is an MD frame (``config_type=md-frame``), else None.

    Such a frame keeps its provenance on import, and a held-out one (``held_out``) stays out of training.
    """
    if info.get("config_type") != "md-frame" or "md_id" not in info or "model_id" not in info:
        return None
    return {
        "structure_hash": structure_hash,
        "md_id": str(info["md_id"]),
        "frame": int(info.get("frame", -1)),
        "time_fs": float(info["time_fs"]) if "time_fs" in info else None,
        "composition_x": float(info["composition_x"]) if "composition_x" in info else None,
        "temperature_k": float(info["temperature_k"]) if "temperature_k" in info else None,
        "model_id": str(info["model_id"]),
        "held_out": bool(info.get("held_out", False)),
        "selection": str(info.get("selection", "imported")),
        "round": int(info.get("round", 0)),
        "seed": int(info["seed"]) if isinstance(info.get("seed"), int) else None,
    }


#: Stored and imported labels closer than this are the same (eV, eV/Å, eV/Å³, eV).
LABEL_TOLERANCE = {"energy": 1e-5, "forces": 1e-5, "stress": 1e-7, "gap": 1e-5}


def _differing_labels(store: Store, labels: Sequence[LabelRecord], level: str) -> list[tuple[str, list[str], str]]:
    """Labels of ``labels`` whose structure is already labelled 'ok' at ``level`` with other values."""
    stored = store.query(
        """SELECT structure_hash, energy_ev, forces_ev_per_a, stress_ev_per_a3, gap_ev FROM labels
           WHERE level = ? AND status = 'ok' AND structure_hash IN (SELECT unnest(?))""",
        [level, [r.structure_hash for r in labels]],
    ).set_index("structure_hash")
    out: list[tuple[str, list[str], str]] = []
    for record in labels:
        if record.structure_hash not in stored.index:
            continue
        row = stored.loc[record.structure_hash]
        names: list[str] = []
        first = ""
        for name, new, old in (
            ("energy", record.energy_ev, row["energy_ev"]),
            ("forces", record.forces_ev_per_a, row["forces_ev_per_a"]),
            ("stress", record.stress_ev_per_a3, row["stress_ev_per_a3"]),
            ("gap", record.gap_ev, row["gap_ev"]),
        ):
            if new is None or not _present_array(old):
                continue
            a, b = np.ravel(np.asarray(new, dtype=float)), np.ravel(np.asarray(old, dtype=float))
            if a.shape != b.shape or np.max(np.abs(a - b)) > LABEL_TOLERANCE[name]:
                names.append(name)
                if not first:
                    if a.size == 1 and b.size == 1:
                        detail = f"stored {b[0]:.4f}, file {a[0]:.4f}"
                    elif a.shape == b.shape:
                        detail = f"largest difference {np.max(np.abs(a - b)):.3g}"
                    else:
                        detail = f"{b.size} stored values, {a.size} in the file"
                    first = f"{record.structure_hash[:12]} {name}: {detail}"
        if names:
            out.append((record.structure_hash, names, first))
    return out


def _present_array(value: Any) -> bool:
    if value is None or value is pd.NA:
        return False
    if isinstance(value, float):
        return not math.isnan(value)
    return True


def import_labelled_dataset(
    store: Store,
    path: str | Path,
    *,
    level: str,
    keys: LabelKeys,
    sublattice_species: Sequence[str] | None = None,
    allowed_species: set[str] | None = None,
    temperature_key: str | None = None,
    amplitude_key: str | None = None,
    run_id: str | None = None,
    progress: ProgressCallback | None = None,
) -> ImportReport:
    """Validate a labelled extended-XYZ file and store its structures and labels at ``level``.

    Parameters
    ----------
    store
        The target store.
    path
        The extended-XYZ file.
    level
        Reference level of the labels (e.g. 'gpaw-pbesol').
    keys
        Where each label sits in a frame.
    sublattice_species
        The two species of the substituted sublattice; the composition x stored is the fraction of the first.
    allowed_species
        Elements a structure may contain (None: any).
    temperature_key, amplitude_key
        ``info`` keys of each frame's temperature (K) / displacement amplitude (Å), if any.
    run_id
        Run to credit the rows to.
    progress
        ``progress(done, total)`` while validating.

    Raises
    ------
    DatasetError
        The file was rejected (see :func:`load_labelled_extxyz`); the store is unchanged.
    """
    path = Path(path).resolve()
    records = load_labelled_extxyz(
        path,
        keys=keys,
        allowed_species=allowed_species,
        temperature_key=temperature_key,
        amplitude_key=amplitude_key,
        progress=progress,
    )
    sha = file_sha256(path)
    unique = {r.structure_hash: r for r in reversed(records)}  # first occurrence wins
    source = path.name
    frames = {h: md_frame_row(r.extras, h) for h, r in unique.items()}
    structures = [
        StructureRecord(
            atoms=r.atoms,
            structure_hash=h,
            kind="md-frame" if frames[h] else _imported_kind(r.extras),
            composition_x=substituted_fraction(r.atoms, sublattice_species) if sublattice_species else None,
            temperature_k=frames[h]["temperature_k"] if frames[h] else _imported_temperature(r),
            amplitude_a=r.amplitude_a,
            seed=int(r.extras["seed"]) if isinstance(r.extras.get("seed"), int) else None,
            source=source,
        )
        for h, r in unique.items()
    ]
    labels = [
        LabelRecord(
            structure_hash=h,
            level=level,
            energy_ev=r.energy_ev,
            forces_ev_per_a=r.forces_ev_per_a,
            stress_ev_per_a3=r.stress_ev_per_a3,
            gap_ev=r.gap_ev,
            extras=r.extras,
            source=source,
            wall_time_s=_wall_time_s(r.extras),
        )
        for h, r in unique.items()
    ]
    differing = _differing_labels(store, labels, level) if store.exists() else []
    with store.write() as writer:
        writer.register_level(level, backend="import", settings={"file": source, "sha256": sha, "keys": keys.present()})
        structure_counts = writer.add_structures(structures, run_id=run_id)
        label_counts = writer.add_labels(labels, run_id=run_id)
        writer.add_rows("md_frames", [{**row, "run_id": run_id} for row in frames.values() if row])
    report = ImportReport(
        path=path,
        level=level,
        n_frames=len(records),
        n_duplicate_frames=len(records) - len(unique),
        new_structures=structure_counts.new,
        new_labels=label_counts.new,
        existing_labels=label_counts.existing,
        sha256=sha,
        differing=differing,
    )
    if differing:
        logger.warning(
            "%s: %d structures were already stored at level %s with other labels (%s); the stored labels were kept",
            path.name,
            len(differing),
            level,
            differing[0][2],
        )
    logger.info(
        "imported %s at level %s: %d frames, %d duplicates, %d new structures, %d new labels",
        path.name,
        level,
        report.n_frames,
        report.n_duplicate_frames,
        report.new_structures,
        report.new_labels,
    )
    return report


def import_spec(
    store: Store,
    spec: ImportSpec,
    system: SystemSection,
    *,
    run_id: str | None = None,
    progress: ProgressCallback | None = None,
) -> ImportReport:
    """Import the labelled file a config's ``[[dataset.imports]]`` entry names, checked against the system."""
    return import_labelled_dataset(
        store,
        spec.path,
        level=spec.level,
        keys=spec.label_keys(),
        sublattice_species=system.sublattice.species,
        allowed_species=system.allowed_species(),
        temperature_key=spec.temperature_key,
        amplitude_key=spec.amplitude_key,
        run_id=run_id,
        progress=progress,
    )


def _present(value: Any) -> bool:
    """Whether a value read from the store is there (not None, NaN or pandas' NA)."""
    if value is None or value is pd.NA:
        return False
    return not (isinstance(value, float) and math.isnan(value))


#: ``md_frames`` columns an exported MD frame carries in ``info``.
_MD_FRAME_COLUMNS = ("md_id", "frame", "time_fs", "model_id", "held_out", "selection", "round")


def export_labelled_extxyz(
    store: Store,
    path: str | Path,
    *,
    level: str,
    set_name: str | None = None,
    prefix: str = "REF",
) -> int:
    """Write the structures labelled 'ok' at ``level`` to an extended-XYZ file; returns how many.

    Labels go to ``<prefix>_energy`` (eV), ``<prefix>_forces`` (eV/Å, per atom), ``<prefix>_stress``
    (eV/Å³, Voigt xx yy zz yz xz xy) and ``<prefix>_gap`` (eV), each only when present; ``config_type`` is
    the structure's kind; an MD frame (kind ``md-frame``) also carries its provenance (``md_id``, ``frame``,
    ``time_fs``, ``model_id``, ``held_out``, ``selection``, ``round``). MACE's trainer reads such a file directly
    (``--energy_key REF_energy --forces_key REF_forces --stress_key REF_stress``).

    Parameters
    ----------
    store
        The store.
    path
        Output file (written whole, then renamed into place).
    level
        Reference level of the labels.
    set_name
        Only members of this structure set (default: every structure labelled at ``level``).
    prefix
        Prefix of the label keys.
    """
    from ase.io import write

    sql = """SELECT l.structure_hash, l.energy_ev, l.forces_ev_per_a, l.stress_ev_per_a3, l.gap_ev, l.wall_time_s,
                    s.kind, s.composition_x, s.temperature_k, s.amplitude_a, s.seed,
                    f.md_id, f.frame, f.time_fs, f.model_id, f.held_out, f.selection, f."round"
             FROM labels l JOIN structures s USING (structure_hash) LEFT JOIN md_frames f USING (structure_hash)
             WHERE l.level = ? AND l.status = 'ok'
               AND (? IS NULL OR l.structure_hash IN (SELECT structure_hash FROM structure_sets WHERE set_name = ?))
             ORDER BY s.composition_x, s.kind, l.structure_hash"""
    rows = store.query(sql, [level, set_name, set_name])
    structures = store.load_structures(rows["structure_hash"].tolist())
    frames = []
    for row in rows.itertuples(index=False):
        atoms = structures[row.structure_hash].copy()
        atoms.info.update({"structure_hash": row.structure_hash, "config_type": row.kind, "level": level})
        for key in ("composition_x", "temperature_k", "amplitude_a", "seed", *_MD_FRAME_COLUMNS):
            if _present(value := getattr(row, key)):
                value = value.item() if isinstance(value, np.generic) else value
                atoms.info[key] = int(value) if key in ("seed", "frame", "round") else value
        if _present(row.energy_ev):
            atoms.info[f"{prefix}_energy"] = float(row.energy_ev)
        if _present(row.forces_ev_per_a):
            atoms.arrays[f"{prefix}_forces"] = np.reshape(np.asarray(row.forces_ev_per_a, dtype=float), (-1, 3))
        if _present(row.stress_ev_per_a3):
            atoms.info[f"{prefix}_stress"] = np.asarray(row.stress_ev_per_a3, dtype=float)
        if _present(row.gap_ev):
            atoms.info[f"{prefix}_gap"] = float(row.gap_ev)
        if _present(row.wall_time_s):
            atoms.info["wall_time_s"] = round(float(row.wall_time_s), 1)
        frames.append(atoms)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(path.name + ".partial")
    write(partial, frames, format="extxyz")
    partial.replace(path)
    return len(frames)
