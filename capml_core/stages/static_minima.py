"""The static reference: the distorted minima the MD settles in, found by quenching MD frames.

The cubic Pm-3m cell is a saddle of Ag3SBr_xI_(1-x): MD leaves it for distorted wells. Eg(0) of the paper is the
gap of the cubic structure; a user also wants the gap of the lowest structure there is. :func:`quench_md_frames`
relaxes positions and cell (MACE, ASE's BFGS on a FrechetCellFilter) from the last production frame of every
complete MD run of a model and from the cubic structure of the disorder scan (positions free), and stores per
composition each minimum's energy per atom against the cubic one (``static_minima``; relaxed structures kind
``relaxed``, never training data). :func:`lowest_minima` names the lowest per composition; those of the end
members are what a DFT relaxation confirms (``deploy/static-reference.sh``).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import numpy as np
import pandas as pd

from capml_core.config.schema import RunConfig
from capml_core.models.mace import load_mace_calculator
from capml_core.physics.md import production_frames, read_trajectory, trajectory_frame
from capml_core.physics.relax import relax_structure
from capml_core.store.database import Store
from capml_core.store.queries import complete_md_runs, lowest_energy_structures, mace_model_path
from capml_core.store.records import StructureRecord
from capml_core.system.structures import quantize, structure_hash
from capml_core.types import ProgressCallback

logger = logging.getLogger(__name__)

#: Symmetry tolerance (Å) of the space group reported for each minimum (thermal noise of a quench is below it).
SYMPREC_A = 0.05
#: ``source`` of the cubic structure's row.
CUBIC = "cubic"
#: Structure set (``<name>@<level>``) of the DFT-relaxed minima still to be labelled at the high level.
STATIC_REFERENCE_SET = "static-reference"
#: ``static_minima.model_id`` of the DFT relaxations: this prefix and the level.
DFT_MODEL_PREFIX = "dft-"
#: Project subdirectory of the DFT relaxations: ``<hash>-<mode>/relax.traj`` (their steps) and the DFT files.
RELAXATIONS_DIR = "static-reference"


def space_group(atoms) -> str:
    """International symbol and number of a structure's space group at :data:`SYMPREC_A` (spglib)."""
    import spglib

    cell = (atoms.cell[:], atoms.get_scaled_positions(), atoms.numbers)
    return spglib.get_spacegroup(cell, symprec=SYMPREC_A) or "unknown"


def quench_md_frames(
    store: Store,
    config: RunConfig,
    *,
    model_id: str,
    scan_id: str,
    compositions: Sequence[float] | None = None,
    stored_frames: bool = False,
    progress: ProgressCallback | None = None,
) -> pd.DataFrame:
    """Relax (positions and cell, MACE ``model_id``) the cubic structure and the last frame of every MD run.

    ``stored_frames``: also every MD frame in ``md_frames`` (the held-out and the rounds' frames, drawn from MD of
    earlier models; source ``md-frame <hash>``), so minima can be found before this model has MD runs of its own.
    ``compositions``: only these (default: every one). Resumable: sources already quenched with this model are
    skipped. Returns the model's ``static_minima`` rows.

    Raises
    ------
    NotComputedError
        Nothing to quench from: no complete MD run of ``model_id`` (and no stored frame with ``stored_frames``).
    """
    disorder = config.disorder
    calculator = load_mace_calculator(mace_model_path(store, model_id), device="cpu", dtype="float64")

    def wanted(x: float) -> bool:
        return compositions is None or any(abs(x - c) < 1e-9 for c in compositions)

    cubic = lowest_energy_structures(store, scan_id)
    runs = store.query(
        "SELECT md_id, path, composition_x, temperature_k FROM md_runs WHERE complete AND model_id = ? ORDER BY md_id",
        [model_id],
    )
    frames = (
        store.query("SELECT structure_hash, composition_x, temperature_k FROM md_frames ORDER BY structure_hash")
        if stored_frames
        else pd.DataFrame(columns=["structure_hash", "composition_x", "temperature_k"])
    )
    if runs.empty and frames.empty:
        complete_md_runs(store, model_id)  # raises the NotComputedError that says what to run
    done = set(
        store.query("SELECT composition_x, source FROM static_minima WHERE model_id = ?", [model_id]).itertuples(
            index=False, name=None
        )
    )
    jobs = [(x, CUBIC, None, atoms) for x, atoms in cubic.items() if (x, CUBIC) not in done and wanted(x)]
    quenched_runs = {source.split("#")[0] for _, source in done if "#" in source}
    for run in runs.itertuples():
        if not wanted(float(run.composition_x)) or run.md_id in quenched_runs:  # the file is not needed again
            continue
        trajectory = read_trajectory(store.project_dir / run.path)
        last = int(production_frames(trajectory, config.md.equilibration_ps)[-1])
        source = f"{run.md_id}#{last}"
        if (float(run.composition_x), source) not in done:
            jobs.append(
                (float(run.composition_x), source, float(run.temperature_k), trajectory_frame(trajectory, last))
            )
    todo = [
        f
        for f in frames.itertuples()
        if wanted(float(f.composition_x)) and (float(f.composition_x), f"md-frame {f.structure_hash}") not in done
    ]
    stored = store.load_structures([f.structure_hash for f in todo])
    for f in todo:
        jobs.append(
            (
                float(f.composition_x),
                f"md-frame {f.structure_hash}",
                None if pd.isna(f.temperature_k) else float(f.temperature_k),
                stored[f.structure_hash],
            )
        )
    for number, (x, source, temperature, atoms) in enumerate(sorted(jobs, key=lambda j: (j[0], j[1] != CUBIC))):
        result = relax_structure(
            atoms, calculator, mode="full", fmax_ev_per_a=disorder.fmax_ev_per_a, max_steps=max(disorder.max_steps, 500)
        )
        relaxed = quantize(result.atoms)
        digest = structure_hash(relaxed)
        per_atom = result.energy_ev / len(relaxed)
        row = {
            "model_id": model_id,
            "scan_id": scan_id,
            "composition_x": x,
            "source": source,
            "md_temperature_k": temperature,
            "structure_hash": digest,
            "energy_ev_per_atom": per_atom,
            "converged": result.converged,
            "steps": result.steps,
            "max_force_ev_per_a": result.max_force_ev_per_a,
            "volume_a3": float(relaxed.get_volume()),
            "space_group": space_group(relaxed),
        }
        with store.write() as writer:
            writer.add_structures(
                [StructureRecord(atoms=relaxed, structure_hash=digest, kind="relaxed", composition_x=x, source=source)],
                run_id=None,
            )
            writer.add_rows("static_minima", [row])
        if progress is not None:
            progress(number + 1, len(jobs))
    return minima_table(store, model_id)


#: A minimum whose volume differs from the cubic cell's by more than this fraction is not a candidate for the lowest
#: structure: a potential trained at one volume per composition (the bundled data) extrapolates its energy there
#: (the demo-profile MACE lets a few quenches swell by 40-70 % to "minima" 150 meV/atom down; docs/active-learning.md).
MAX_VOLUME_CHANGE = 0.05


def minima_table(store: Store, model_id: str, *, max_volume_change: float = MAX_VOLUME_CHANGE) -> pd.DataFrame:
    """``static_minima`` of one model with each energy relative to the composition's cubic one (meV/atom).

    Adds ``volume_change`` (fraction, against the cubic structure) and ``trusted`` (within ``max_volume_change``;
    every DFT minimum, model id ``dft-<level>``, is: the rule guards against a potential's stress, not DFT's).
    """
    table = store.query(
        """SELECT m.*, 1000 * (m.energy_ev_per_atom - c.energy_ev_per_atom) AS below_cubic_mev_per_atom,
                  m.volume_a3 / c.volume_a3 - 1 AS volume_change
           FROM static_minima m LEFT JOIN static_minima c
             ON c.model_id = m.model_id AND c.composition_x = m.composition_x AND c.source = 'cubic'
           WHERE m.model_id = ? ORDER BY m.composition_x, m.energy_ev_per_atom""",
        [model_id],
    )
    within = table["volume_change"].isna() | (table["volume_change"].abs() <= max_volume_change)
    table["trusted"] = within | model_id.startswith(DFT_MODEL_PREFIX)
    return table


def lowest_minima(store: Store, model_id: str, *, max_volume_change: float = MAX_VOLUME_CHANGE) -> pd.DataFrame:
    """Per composition, the lowest trusted minimum found for ``model_id`` (one row each; empty if none quenched)."""
    table = minima_table(store, model_id, max_volume_change=max_volume_change)
    table = table[table["trusted"]]
    if table.empty:
        return table
    return table.loc[table.groupby("composition_x")["energy_ev_per_atom"].idxmin()].reset_index(drop=True)


def summary_lines(table: pd.DataFrame) -> list[str]:
    """One line per composition: lowest trusted minimum, its space group and energy below the cubic cell."""
    lines = []
    for x, group in table.groupby("composition_x"):
        trusted = group[group["trusted"]] if "trusted" in group else group
        best = trusted.loc[trusted["energy_ev_per_atom"].idxmin()]
        quenched = trusted[trusted["source"] != CUBIC]
        spread = quenched["below_cubic_mev_per_atom"].to_numpy(dtype=float)
        untrusted = len(group) - len(trusted)
        skipped = (
            f"; {untrusted} left out (volume off the cubic cell's by > {MAX_VOLUME_CHANGE:.0%})" if untrusted else ""
        )
        lines.append(
            f"x = {x:.3f}: lowest {best.source} ({best.space_group}) {best.below_cubic_mev_per_atom:+.1f} meV/atom vs "
            f"cubic; {len(spread)} quenched frames span {np.nanmin(spread):+.1f} … {np.nanmax(spread):+.1f}{skipped}"
            if len(spread)
            else f"x = {x:.3f}: only the cubic structure relaxed{skipped}"
        )
    return lines


def dft_relax_minimum(
    store: Store,
    config: RunConfig,
    *,
    structure_hash_: str,
    composition_x: float,
    source: str,
    mode: str,
    fmax_ev_per_a: float = 0.02,
    max_steps: int = 80,
) -> dict:
    """Relax one stored structure with the cheap reference level (GPAW PBEsol here) and store the minimum.

    The steps go to ``<project>/static-reference/<hash>-<mode>/relax.traj``; a killed relaxation restarts from
    its last frame. The minimum is stored as a structure (kind ``relaxed``), labelled at the cheap level by the
    final step (energy, forces, stress, gap) and recorded in ``static_minima`` under model id
    ``dft-<level>`` (source ``source``). Label it at the high level with ``capml label --set
    static-reference@<high level>``.
    """
    from capml_core.dft.levels import get_level
    from capml_core.physics.relax import resume_point
    from capml_core.store.records import LabelRecord

    level = get_level(config.reference.cheap_level, config.reference)
    workdir = store.project_dir / RELAXATIONS_DIR / f"{structure_hash_[:12]}-{mode}"
    workdir.mkdir(parents=True, exist_ok=True)
    trajectory = workdir / "relax.traj"
    start = store.load_structures([structure_hash_])[structure_hash_]
    atoms, done_steps = resume_point(start, trajectory)
    logger.info("DFT relaxation (%s) of %s: %d steps done before", mode, structure_hash_[:12], done_steps)
    result = relax_structure(
        atoms,
        level.ase_calculator(workdir),
        mode=mode,
        fmax_ev_per_a=fmax_ev_per_a,
        max_steps=max(1, max_steps - done_steps),
        trajectory=trajectory,
    )
    relaxed = quantize(result.atoms)
    digest = structure_hash(relaxed)
    label = level.compute(relaxed, workdir=workdir)
    row = {
        "model_id": f"{DFT_MODEL_PREFIX}{level.name}",
        "scan_id": None,
        "composition_x": composition_x,
        "source": source,
        "md_temperature_k": None,
        "structure_hash": digest,
        "energy_ev_per_atom": label.energy_ev / len(relaxed),
        "converged": result.converged,
        "steps": done_steps + result.steps,
        "max_force_ev_per_a": result.max_force_ev_per_a,
        "volume_a3": float(relaxed.get_volume()),
        "space_group": space_group(relaxed),
    }
    high = config.reference.high_level
    with store.write() as writer:
        writer.add_structures(
            [
                StructureRecord(
                    atoms=relaxed,
                    structure_hash=digest,
                    kind="relaxed",
                    composition_x=composition_x,
                    source=f"dft relaxation of {structure_hash_}",
                )
            ],
            run_id=None,
        )
        writer.add_labels(
            [
                LabelRecord(
                    digest,
                    level.name,
                    energy_ev=label.energy_ev,
                    forces_ev_per_a=label.forces_ev_per_a,
                    stress_ev_per_a3=label.stress_ev_per_a3,
                    gap_ev=label.gap_ev,
                    wall_time_s=result.wall_time_s + label.wall_time_s,
                )
            ],
            run_id=None,
        )
        writer.delete_rows(
            "static_minima", {"model_id": row["model_id"], "composition_x": composition_x, "source": source}
        )
        writer.add_rows("static_minima", [row])
        if high:
            writer.add_to_set(f"{STATIC_REFERENCE_SET}@{high}", high, [digest])
    return row
