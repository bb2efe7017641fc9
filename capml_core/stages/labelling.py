"""Labelling: compute reference labels of stored structures in worker processes, storing each as it finishes.

Resumable by construction: the work list is "members of a set at this level without a label there", every
finished calculation is one committed store transaction, so a kill loses at most the calculations in flight
and a re-run continues with the rest. A failed calculation is stored with its error (status 'failed') and
reported; it is not retried unless asked (``include_failed``), never in a loop.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
import traceback
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd
from ase import Atoms

from capml_core.config.schema import RunConfig
from capml_core.dft.levels import LabelResult, ReferenceLevel, get_level
from capml_core.errors import CalculationFailed
from capml_core.parallel import JobMap, local_map
from capml_core.store.database import Store
from capml_core.store.hosts import process_alive, this_host
from capml_core.store.records import LabelRecord

logger = logging.getLogger(__name__)

#: Output files of a failed calculation kept besides its ``*.txt`` logs (VASP's own logs).
LOG_FILES = ("OUTCAR", "OSZICAR")
#: progress(done, total, last) after each finished calculation; ``last`` is its record.
#: Called after each label: (done, total, the label's record).
LabelProgressCallback = Callable[[int, int, LabelRecord], None]


@dataclass(frozen=True)
class LabellingReport:
    """What a labelling pass did.

    Attributes
    ----------
    level
        The level.
    n_pending
        Structures that had no label when the pass started.
    n_ok, n_failed
        Calculations that finished with labels / with an error.
    failures
        (structure hash, error) of the failed ones.
    mean_calculation_s
        Mean wall time of one successful calculation (s), None if none succeeded.
    n_skipped
        Structures left to another capml process that had claimed them.
    """

    level: str
    n_pending: int
    n_ok: int
    n_failed: int
    failures: list[tuple[str, str]] = field(default_factory=list)
    mean_calculation_s: float | None = None
    n_skipped: int = 0

    def summary(self) -> str:
        """One line: labelled, failed, left to another process, mean time per calculation."""
        mean = f", {self.mean_calculation_s:.0f} s per calculation" if self.mean_calculation_s else ""
        skipped = f", {self.n_skipped} left to another capml process" if self.n_skipped else ""
        return f"{self.level}: {self.n_ok} labelled, {self.n_failed} failed{skipped}{mean}"


#: Sub-folder of the project directory where calculations run (one folder each, removed when it ends).
SCRATCH_DIRNAME = "scratch"
#: File in each scratch folder naming the process that owns it (JSON: pid, host).
OWNER_FILE = "capml-owner.json"


def _scratch_folder(scratch_dir: str | None, level_name: str) -> Path:
    """A new folder for one calculation under ``scratch_dir`` (the system's temporary folder if None)."""
    if scratch_dir is not None:
        Path(scratch_dir).mkdir(parents=True, exist_ok=True)
    workdir = Path(tempfile.mkdtemp(prefix=f"{level_name}-", dir=scratch_dir))
    (workdir / OWNER_FILE).write_text(json.dumps({"pid": os.getpid(), "host": this_host()}))
    return workdir


def clean_scratch(scratch_dir: str | Path) -> int:
    """Remove scratch folders of processes of this host that have gone (killed runs); returns how many."""
    removed = 0
    for folder in Path(scratch_dir).glob("*/"):
        try:
            owner = json.loads((folder / OWNER_FILE).read_text())
        except (OSError, ValueError):
            continue  # not one of capml's, or being created
        if not process_alive(owner.get("pid"), owner.get("host")):
            shutil.rmtree(folder, ignore_errors=True)
            removed += 1
    if removed:
        logger.info("removed %d scratch folder(s) of interrupted calculations in %s", removed, scratch_dir)
    return removed


def _label_one(
    level: ReferenceLevel, structure_hash: str, atoms: Atoms, log_dir: str | None, scratch_dir: str | None = None
) -> LabelRecord:
    """Worker: one calculation -> a label record (status 'failed' with the error on failure).

    The code's text output goes to a scratch folder under ``scratch_dir``, kept in ``log_dir`` only when the
    calculation fails.
    """
    level_name = level.name
    workdir = _scratch_folder(scratch_dir, level_name)
    try:
        try:
            result: LabelResult = level.compute(atoms, workdir=workdir)
        except CalculationFailed as err:
            error = str(err)
        except Exception as err:  # a crash in the code: stored, not raised, so the other structures go on
            error = f"{type(err).__name__}: {err}\n{traceback.format_exc(limit=3)}"
        else:
            return LabelRecord(
                structure_hash=structure_hash,
                level=level_name,
                energy_ev=result.energy_ev,
                forces_ev_per_a=result.forces_ev_per_a,
                stress_ev_per_a3=result.stress_ev_per_a3,
                gap_ev=result.gap_ev,
                extras=dict(result.extras),
                wall_time_s=result.wall_time_s,
                source="capml label",
            )
        _keep_log(workdir, log_dir, structure_hash)
        return LabelRecord(structure_hash, level_name, status="failed", error=error)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


def _keep_log(workdir: Path, log_dir: str | None, structure_hash: str) -> None:
    if log_dir is None:
        return
    kept = [*workdir.glob("*.txt"), *(workdir / name for name in LOG_FILES if (workdir / name).is_file())]
    for path in kept:
        target = Path(log_dir) / f"{structure_hash}-{path.name}"
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(path, target)


def label_structures(
    store: Store,
    level: ReferenceLevel,
    structure_hashes: Sequence[str],
    *,
    workers: int = 1,
    run_id: str | None = None,
    progress: LabelProgressCallback | None = None,
    job_map: JobMap | None = None,
) -> LabellingReport:
    """Label structures at a level in ``workers`` processes; each result is stored as soon as it finishes.

    Parameters
    ----------
    store
        Store holding the structures; receives the labels.
    level
        The reference level (sent to the workers by pickling: a level's settings travel with it).
    structure_hashes
        Structures to label (usually :meth:`Store.pending_labels`).
    workers
        Worker processes (each single-threaded).
    run_id
        Run credited with the labels.
    progress
        Called after each finished calculation.
    job_map
        Where the calculations run (default: ``workers`` local processes, a child process even for one);
        the results come back here and this process alone writes them.
    """
    level_name = level.name
    structures = store.load_structures(structure_hashes)
    wanted = [h for h in structure_hashes if h in structures]
    scratch_dir = store.project_dir / SCRATCH_DIRNAME
    with store.write() as writer:
        writer.register_level(level.name, backend=level.backend, settings=level.settings())
        todo = writer.claim_labels(level_name, wanted)  # another live process's claims are left to it
    if scratch_dir.is_dir():
        clean_scratch(scratch_dir)
    if len(todo) < len(wanted):
        logger.warning(
            "%s: %d of %d structures are being labelled by another capml process on this project; skipped",
            level_name,
            len(wanted) - len(todo),
            len(wanted),
        )
    log_dir = str(store.project_dir / "logs" / level_name)
    n_ok = 0
    failures: list[tuple[str, str]] = []
    times: list[float] = []
    job_map = job_map or local_map(workers, isolate=True)
    jobs = [(level, h, structures[h], log_dir, str(scratch_dir)) for h in todo]
    try:
        for _, record in job_map(_label_one, jobs, name=f"label {level_name}"):
            _store_label(store, record, run_id)
            if record.status == "ok":
                n_ok += 1
                if record.wall_time_s is not None:
                    times.append(record.wall_time_s)
            else:
                failures.append((record.structure_hash, record.error or ""))
                logger.warning(
                    "%s failed on %s: %s", level_name, record.structure_hash, (record.error or "").splitlines()[0]
                )
            if progress is not None:
                progress(n_ok + len(failures), len(todo), record)
    finally:
        with store.write() as writer:
            writer.release_labels(level_name)
    return LabellingReport(
        level=level_name,
        n_pending=len(todo),
        n_ok=n_ok,
        n_failed=len(failures),
        failures=failures,
        mean_calculation_s=sum(times) / len(times) if times else None,
        n_skipped=len(wanted) - len(todo),
    )


def _store_label(store: Store, record: LabelRecord, run_id: str | None) -> None:
    with store.write() as writer:
        writer.add_labels([record], run_id=run_id)
        writer.release_labels(record.level, [record.structure_hash])


# ------------------------------------------------------------------------------------------- reference DFT
def gap_reference_level(config: RunConfig) -> str:
    """The level DFT checks of gaps run at: ``gaps.reference_level``, else the high level."""
    return config.gaps.reference_level or config.reference.high_level


def reference_gaps(
    store: Store,
    config: RunConfig,
    structure_hashes: list[str],
    *,
    run_id: str | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> tuple[str, dict[str, float | None]]:
    """Reference DFT gaps (eV) of stored structures at ``gaps.reference_level``, computing the missing ones.

    Uses the labelling stage's machinery (``reference.workers`` processes, each result stored as it finishes,
    so an interrupted check resumes). Returns the level and, per hash, the gap (None when the calculation
    failed or the level cannot run here).
    """
    level_name = gap_reference_level(config)
    if not structure_hashes:
        return level_name, {}
    level = get_level(level_name, config.reference)

    def labelled() -> pd.DataFrame:
        return store.query(
            "SELECT structure_hash, status, gap_ev FROM labels "
            "WHERE level = ? AND structure_hash IN (SELECT unnest(?))",
            [level_name, list(structure_hashes)],
        )

    done = labelled()
    missing = [h for h in dict.fromkeys(structure_hashes) if h not in set(done["structure_hash"])]
    reason = level.unavailable_reason()
    if missing and reason is not None:
        logger.warning("reference gaps at %s not computed here: %s", level_name, reason)
    elif missing:
        logger.info("reference gaps: %d calculations at %s", len(missing), level_name)

        report = None if progress is None else (lambda done_n, total, record: progress(done_n, total))
        label_structures(store, level, missing, workers=config.reference.workers, run_id=run_id, progress=report)
        done = labelled()
    gaps = {
        r.structure_hash: (float(r.gap_ev) if r.status == "ok" and pd.notna(r.gap_ev) else None)
        for r in done.itertuples(index=False)
    }
    return level_name, {h: gaps.get(h) for h in structure_hashes}


def store_check_structures(
    store: Store,
    pairs: list[tuple[Sequence[Atoms], str]],
    *,
    kind: str,
    composition_x: float | None,
    temperature_k: float | None,
    run_id: str | None,
) -> list[list[str]]:
    """Store the distorted structures a DFT check computes (``pairs``: (structures, source label)); their hashes.

    ``kind`` is a derived kind (never training data); one transaction for all of them. Hashed as given.
    """
    from capml_core.store.records import StructureRecord
    from capml_core.system.structures import structure_hash

    records, hashes = [], []
    for structures, source in pairs:
        group = []
        for sign, atoms in zip(("plus", "minus"), structures, strict=False):
            digest = structure_hash(atoms)
            group.append(digest)
            records.append(
                StructureRecord(
                    atoms=atoms,
                    structure_hash=digest,
                    kind=kind,
                    composition_x=composition_x,
                    temperature_k=temperature_k,
                    source=f"{source} ({sign})",
                )
            )
        hashes.append(group)
    with store.write() as writer:
        writer.add_structures(records, run_id=run_id)
    return hashes
