"""A project's results as a small directory to ship: its store and arrays, without trajectories or model files.

``ship_results`` writes a new project directory that ``capml dashboard``, ``capml sql`` and ``capml report`` read
without computing anything: the DuckDB store rebuilt compactly (DuckDB's EXPORT / IMPORT DATABASE, small blocks),
the array artifacts the pages draw (phonon dispersions, eigenvectors: ``artifacts/<kind>/*.npz``) and a
``SHIPPED.json`` saying where it came from. MD trajectories, MACE and gap-model files stay behind: the rows that
name them are kept (they say what was computed), the files are not needed to read the results.

The steps of the project's DFT relaxations (``static-reference/*/relax.traj``, ASE trajectories of a few hundred
kB) are results too and go with it: an unfinished relaxation continues from them in the shipped directory.

``with_models=True`` also copies the MACE and gap-model files and, thinned to the frames of their band-gap series
(:func:`capml_core.physics.md.write_thinned_trajectory`: a few hundred kB per run), the MD trajectories: the
directory is then a project that later stages continue (a study split over machines). A new gap model recomputes
Eg(T) and its DFT checks from the thinned files; what needs whole trajectories (phonon verdicts, held-out draws,
quenches) must have run for the MD runs it holds.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path

import duckdb
import numpy as np

from capml_core.errors import InvalidInputError
from capml_core.provenance import code_version
from capml_core.stages.static_minima import RELAXATIONS_DIR
from capml_core.store.database import Store
from capml_core.store.schema import STORE_FILENAME

#: DuckDB block size of the shipped store (bytes; DuckDB's smallest). Readers take it from the file's header.
SHIPPED_BLOCK_BYTES = 16384
#: Array artifacts larger than this (bytes) are left out, named in SHIPPED.json.
MAX_ARTIFACT_BYTES = 5_000_000
#: Artifact kinds that are models or trajectories, not results to draw.
UNSHIPPED_KINDS = ("gnn",)
MANIFEST = "SHIPPED.json"
#: Where this checkout keeps the result projects it ships.
SHIPPED_RESULTS_DIR = Path(__file__).resolve().parents[2] / "data" / "results"


def shipped_result_dirs() -> list[Path]:
    """The result projects shipped with this checkout (``data/results/*/``, each with its store)."""
    return sorted(p.parent for p in SHIPPED_RESULTS_DIR.glob("*/capml.duckdb"))


def ship_results(
    store: Store,
    target: str | Path,
    *,
    max_artifact_bytes: int = MAX_ARTIFACT_BYTES,
    with_models: bool = False,
    replace: bool = False,
) -> dict:
    """Write the results of ``store`` to the new directory ``target``; returns what SHIPPED.json records.

    ``with_models``: the MACE and gap-model files too (see module). ``replace``: ``target`` may be a directory
    shipped before (it holds SHIPPED.json); the new one is written beside it and takes its place only when complete.
    Nothing is written when ``target`` exists and is not empty (and not a shipped directory with ``replace``), or
    is the project itself.
    """
    out = Path(target)
    if out.resolve() == store.project_dir.resolve():
        raise InvalidInputError(f"{out}: the project itself; give a new directory to ship its results to")
    if out.exists() and any(out.iterdir()):
        if not replace:
            raise InvalidInputError(f"{out}: exists and is not empty; give a new directory to ship the results to")
        if not (out / MANIFEST).is_file():
            raise InvalidInputError(f"{out}: not a shipped results directory (no {MANIFEST}); not replaced")
        staging = out.with_name(out.name + ".shipping")
        shutil.rmtree(staging, ignore_errors=True)
        manifest = ship_results(store, staging, max_artifact_bytes=max_artifact_bytes, with_models=with_models)
        previous = out.with_name(out.name + ".replaced")
        shutil.rmtree(previous, ignore_errors=True)
        out.rename(previous)
        staging.rename(out)
        shutil.rmtree(previous)
        return manifest
    artifacts = store.query("SELECT artifact_id, kind, relpath, n_bytes FROM artifacts ORDER BY relpath")
    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="capml-ship-") as scratch:
        tables = store.export_tables(Path(scratch) / "tables")
        tables_sql = str(tables.resolve()).replace("'", "''")
        store_sql = str((out / STORE_FILENAME).resolve()).replace("'", "''")
        con = duckdb.connect()
        try:  # small blocks: ~40 mostly small tables take 1-2 blocks each (256 KiB by default: 23 MB, here 6 MB)
            con.execute(f"ATTACH '{store_sql}' AS shipped (BLOCK_SIZE {SHIPPED_BLOCK_BYTES})")
            con.execute("USE shipped")
            con.execute(f"IMPORT DATABASE '{tables_sql}'")
            con.execute("CHECKPOINT")
        finally:
            con.close()
    copied, left_out = [], []
    models = _copy_model_files(store, out) if with_models else []
    thinned = _thin_trajectories(store, out) if with_models else []
    for row in artifacts.itertuples(index=False):
        source = store.project_dir / row.relpath
        if with_models and row.kind in UNSHIPPED_KINDS and source.is_file():
            if not (out / row.relpath).is_file():  # not inside a model directory copied above
                models.append(_copy(source, out / row.relpath))
            continue
        if row.kind in UNSHIPPED_KINDS or row.n_bytes > max_artifact_bytes or not source.is_file():
            reason = "missing" if not source.is_file() else ("model" if row.kind in UNSHIPPED_KINDS else "too large")
            left_out.append({"artifact_id": row.artifact_id, "relpath": row.relpath, "why": reason})
            continue
        destination = out / row.relpath
        destination.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(source, destination)
        copied.append(row.relpath)
    relaxations = [
        _copy(path, out / path.relative_to(store.project_dir))
        for path in sorted(store.project_dir.glob(f"{RELAXATIONS_DIR}/*/relax.traj"))
    ]
    manifest = {
        "shipped_from": store.project_dir.name,
        "code_version": code_version(),
        "store_bytes": (out / STORE_FILENAME).stat().st_size,
        "artifacts": len(copied),
        "artifacts_bytes": sum((out / p).stat().st_size for p in copied),
        "left_out": left_out,
        "relaxation_trajectories": len(relaxations),
        "model_files": len(models),
        "model_bytes": sum(p.stat().st_size for p in models),
        "thinned_trajectories": len(thinned),
        "thinned_trajectory_bytes": sum(p.stat().st_size for p in thinned),
        "not_shipped": "the MD trajectories' frames outside the band-gap series, and velocities (their rows are kept)"
        if with_models
        else "MD trajectories, MACE and gap-model files (their rows are kept)",
    }
    (out / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
    return manifest


def _copy(source: Path, destination: Path) -> Path:
    destination.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(source, destination)
    return destination


def band_gap_series_frames(store: Store):  # pd.DataFrame
    """Per complete MD run (``md_id``, ``path``): the ``frames`` its band-gap series and DFT checks read."""
    return store.query(
        """SELECT r.md_id, r.path, list(DISTINCT f.frame) AS frames
           FROM md_runs r JOIN (SELECT md_id, frame FROM gap_snapshots
                                UNION SELECT md_id, frame FROM gap_dft_frames) f USING (md_id)
           WHERE r.complete GROUP BY ALL ORDER BY r.md_id"""
    )


def _thin_trajectories(store: Store, out: Path) -> list[Path]:
    """Each MD run's trajectory with the frames of its band-gap series (and DFT checks) only; the files written."""
    from capml_core.physics.md import write_thinned_trajectory

    written = []
    for row in band_gap_series_frames(store).itertuples(index=False):
        source = store.project_dir / row.path
        if Path(row.path).is_absolute() or not source.is_file():  # gone (an earlier checkpoint's run): rows kept
            continue
        write_thinned_trajectory(source, out / row.path, np.asarray(row.frames, dtype=int))
        written.append(out / row.path)
    return written


def _copy_model_files(store: Store, out: Path) -> list[Path]:
    """Copy the project's MACE files (relative paths of ``mlip_models``) and gap-model directories; the copies."""
    copied = []
    for path in store.query("SELECT path FROM mlip_models ORDER BY model_id")["path"]:
        source = store.project_dir / path
        if not Path(path).is_absolute() and source.is_file():  # a foundation file outside the project stays out
            copied.append(_copy(source, out / path))
    for relpath in store.query("SELECT relpath FROM gnn_models ORDER BY model_id")["relpath"]:
        source = store.project_dir / relpath
        for file in sorted(p for p in source.rglob("*") if p.is_file()):
            copied.append(_copy(file, out / relpath / file.relative_to(source)))
    return copied
