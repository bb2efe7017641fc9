"""MACE models as ASE calculators, and the MACE trainer."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from ase import Atoms

from capml_core.config.stage_sections import MLIPSection
from capml_core.errors import CalculationFailed, InvalidInputError
from capml_core.models.mace_files import (
    MaceModelInfo,
    import_torch,
    load_safe_model,
)
from capml_core.system.labelled import LabelledStructure
from capml_core.types import ForceFunction


# ------------------------------------------------------------------------------------------- model files
def check_foundation(info: MaceModelInfo, mlip: MLIPSection, species: Sequence[str], *, source: str = "") -> None:
    """Refuse a foundation model whose cutoff or size differs from the config, or that lacks an element.

    MACE's trainer silently takes the cutoff and size of the foundation model; capml asks the config to state
    them, so a run's settings say what was trained.
    """
    from ase.data import atomic_numbers

    where = f"{source}: " if source else ""
    if abs(info.r_max_a - mlip.r_max_a) > 1e-6:
        raise InvalidInputError(
            f"{where}mlip.r_max_a = {mlip.r_max_a} Å but the foundation model {info.path} has a cutoff of "
            f"{info.r_max_a} Å; fine-tuning keeps the foundation's cutoff: set mlip.r_max_a = {info.r_max_a}"
        )
    if info.channels is not None and info.channels != mlip.channels:
        raise InvalidInputError(
            f"{where}mlip.channels = {mlip.channels} but the foundation model {info.path} has {info.channels} "
            f"channels; fine-tuning keeps the foundation's size: set mlip.channels = {info.channels}"
        )
    missing = sorted(s for s in set(species) if atomic_numbers[s] not in info.atomic_numbers)
    if missing:
        raise InvalidInputError(f"{where}the foundation model {info.path} has no parameters for {', '.join(missing)}")


def resolve_device(device: str) -> str:
    """'cpu' or 'cuda' ('auto': CUDA when torch sees a GPU)."""
    if device == "auto":
        return "cuda" if import_torch().cuda.is_available() else "cpu"
    if device == "cuda" and not import_torch().cuda.is_available():
        raise InvalidInputError("mlip.device = 'cuda' but torch sees no CUDA device here; allowed: cpu, auto")
    return device


def load_mace_calculator(path: str | Path, *, device: str = "auto", dtype: str = "float64"):
    """An ASE calculator for a MACE model file (float64 for phonons and relaxations, float32 for fast MD).

    Energies eV, forces eV/Å, stress eV/Å³ (ASE convention).
    """
    if dtype not in ("float32", "float64"):
        raise InvalidInputError(f"MACE dtype {dtype!r}; allowed: float32, float64")
    model = load_safe_model(path)  # capml's form only: a pickled .model file is refused, never unpickled
    from mace.calculators import MACECalculator

    return MACECalculator(models=model, device=resolve_device(device), default_dtype=dtype)


def write_extxyz(path: Path, structures: Sequence[LabelledStructure]) -> None:
    """Write structures with REF_energy / REF_forces / REF_stress for MACE (whole file, then renamed)."""
    from ase.io import write

    frames = []
    for item in structures:
        atoms = item.atoms.copy()
        atoms.info = {"structure_hash": item.structure_hash, ENERGY_KEY: item.energy_ev}
        if item.stress_ev_per_a3 is not None:
            atoms.info[STRESS_KEY] = item.stress_ev_per_a3
        atoms.arrays[FORCES_KEY] = item.forces_ev_per_a
        frames.append(atoms)
    tmp = path.with_suffix(".tmp")
    write(tmp, frames, format="extxyz")
    tmp.replace(path)


# ------------------------------------------------------------------------------------------- training
def mace_arguments(
    mlip: MLIPSection, *, work_dir: Path, files: dict[str, Path], device: str, foundation: Path | None
) -> list[str]:
    """Command-line arguments of MACE's trainer for one capml training."""
    args = {
        "name": MACE_RUN_NAME,
        "seed": mlip.seed,
        "work_dir": work_dir,
        "model_dir": work_dir,
        "train_file": files["train"],
        "valid_file": files["valid"],
        "energy_key": ENERGY_KEY,
        "forces_key": FORCES_KEY,
        "stress_key": STRESS_KEY,
        "E0s": "average",
        "loss": "stress" if mlip.stress_weight > 0 else "weighted",
        "energy_weight": mlip.energy_weight,
        "forces_weight": mlip.forces_weight,
        "stress_weight": mlip.stress_weight,
        "r_max": mlip.r_max_a,
        "num_channels": mlip.channels,
        "max_L": mlip.max_l,
        "correlation": mlip.correlation,
        "num_interactions": mlip.num_interactions,
        "max_num_epochs": mlip.max_epochs,
        "patience": mlip.patience,
        "batch_size": mlip.batch_size,
        "valid_batch_size": mlip.batch_size,
        "lr": mlip.learning_rate,
        "default_dtype": mlip.dtype,
        "device": device,
        "eval_interval": 1,
        "error_table": "PerAtomRMSEstressvirials" if mlip.stress_weight > 0 else "PerAtomRMSE",
    }
    if foundation is not None:
        args.update({"foundation_model": foundation, "multiheads_finetuning": False})
    argv = [f"--{key}={value}" for key, value in args.items()]
    if mlip.pair_repulsion:
        argv.append("--pair_repulsion")
    if mlip.ema_decay > 0:
        argv += ["--ema", f"--ema_decay={mlip.ema_decay}"]
    if mlip.stage_two_fraction > 0:
        start = max(1, round(mlip.max_epochs * (1.0 - mlip.stage_two_fraction)))
        argv += ["--stage_two", f"--start_stage_two={start}", f"--stage_two_stress_weight={mlip.stress_weight}"]
    if any((work_dir / "checkpoints").glob("*.pt")):
        argv.append("--restart_latest")
    return argv


def run_mace_trainer(argv: Sequence[str], *, log_path: Path, max_epochs: int, on_epoch: EpochCallback | None) -> int:
    """Run ``python -m mace.cli.run_train`` with ``argv``; returns the last epoch reported.

    Its output goes to ``log_path``; ``on_epoch(epoch, max_epochs, line)`` is called on each epoch line.

    Raises
    ------
    CalculationFailed
        The trainer exited with an error (the message has the end of its log).
    """
    env = dict(os.environ)
    env.setdefault("OMP_NUM_THREADS", "1")
    env["TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD"] = "1"
    last_epoch = -1
    tail: list[str] = []
    with open(log_path, "a", encoding="utf-8") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "mace.cli.run_train", *argv],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            env=env,
            cwd=log_path.parent,
        )
        assert process.stdout is not None
        try:
            for line in process.stdout:
                log.write(line)
                log.flush()
                tail = [*tail[-29:], line.rstrip()]
                if match := _EPOCH_LINE.search(line):
                    last_epoch = int(match.group(1))
                    if on_epoch is not None:
                        on_epoch(last_epoch + 1, max_epochs, line.strip())
        except BaseException:  # interrupted (Ctrl-C, a killed task): stop the trainer, keep its checkpoints
            process.kill()
            process.wait()
            raise
        code = process.wait()
    if code != 0:
        raise CalculationFailed(f"MACE's trainer exited with status {code} (log: {log_path}):\n" + "\n".join(tail))
    return last_epoch


# ------------------------------------------------------------------------------------------- evaluation
def predict_labels(calculator, atoms: Atoms) -> tuple[float, np.ndarray, np.ndarray]:
    """Energy (eV), forces (eV/Å) and stress (eV/Å³, Voigt) of ``atoms`` from an ASE calculator."""
    work = atoms.copy()
    work.calc = calculator
    return float(work.get_potential_energy()), np.asarray(work.get_forces()), np.asarray(work.get_stress(voigt=True))


def calculator_forces(calculator) -> ForceFunction:
    """``forces(atoms)`` (eV/Å) from an ASE calculator."""

    def forces(atoms: Atoms) -> np.ndarray:
        work = atoms.copy()
        work.calc = calculator
        return np.asarray(work.get_forces())

    return forces


_CALCULATORS: dict[tuple[str, str, str], Any] = {}


def cached_mace_calculator(model_path: str | Path, device: str, dtype: str):  # MACECalculator
    """The MACE calculator of a model file, loaded once per worker process (keyed by path, device, dtype)."""
    key = (str(model_path), device, dtype)
    if key not in _CALCULATORS:
        _CALCULATORS[key] = load_mace_calculator(model_path, device=device, dtype=dtype)
    return _CALCULATORS[key]


#: Name MACE gives the files of a capml training (``<work_dir>/capml.model``).
MACE_RUN_NAME = "capml"


#: Keys of the labels in the extended-XYZ files handed to MACE.
ENERGY_KEY, FORCES_KEY, STRESS_KEY = "REF_energy", "REF_forces", "REF_stress"


EpochCallback = Callable[[int, int, str], None]


# ------------------------------------------------------------------------------------------- training data
_EPOCH_LINE = re.compile(r"Epoch (\d+):")
