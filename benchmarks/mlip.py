"""MACE on this machine: training seconds per epoch and Langevin MD steps per second for the 40-atom cell.

Trains a model with a config's [mlip] profile (default: the demo's CPU profile) through capml's mlip stage
(MACE's own trainer) on the bundled PBEsol data for a few epochs, then runs ASE Langevin MD of a 40-atom
Ag3SBr_0.5I_0.5 cell with that model in float64 and float32, side by side. One torch thread on CPU.

    python benchmarks/mlip.py                                   # demo profile, CPU (about 1 minute)
    python benchmarks/mlip.py --config data/configs/ag3sbri.toml --device cuda   # paper's profile on a GPU

The paper's profile (256 channels, L = 1, 8 Å) takes minutes per epoch on one CPU core: run it on a GPU.
"""

from __future__ import annotations

import argparse
import re
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
EPOCHS = 3
MD_STEPS = 60


def seconds_per_epoch(log: Path) -> float:
    """Mean wall time between consecutive epoch lines of a MACE training log (s)."""
    stamps = []
    for line in log.read_text().splitlines():
        if re.search(r"Epoch \d+:", line):
            stamps.append(time.mktime(time.strptime(line[:19], "%Y-%m-%d %H:%M:%S")) + float(line[19:23]))
    if len(stamps) < 2:
        raise RuntimeError(f"{log}: fewer than two epochs logged")
    return float(np.mean(np.diff(stamps)))


def md_steps_per_second(calculator, atoms, steps: int) -> float:
    """ASE Langevin at 300 K, 1 fs, friction 5e-3 fs⁻¹ (the paper's settings): steps per second."""
    from ase import units
    from ase.md.langevin import Langevin
    from ase.md.velocitydistribution import thermalize_momenta

    atoms = atoms.copy()
    atoms.calc = calculator
    thermalize_momenta(atoms, temperature_K=300.0, rng=np.random.default_rng(0))  # Maxwell-Boltzmann
    dynamics = Langevin(atoms, 1.0 * units.fs, temperature_K=300.0, friction=5e-3 / units.fs)
    dynamics.run(5)  # warm-up
    start = time.perf_counter()
    dynamics.run(steps)
    return steps / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default=str(REPO / "data" / "configs" / "ag3sbri-demo.toml"))
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    options = parser.parse_args()

    import torch

    from capml_core.config.loading import load_config
    from capml_core.models.mace import load_mace_calculator
    from capml_core.stages.datasets import import_spec
    from capml_core.stages.mlip import train_mace
    from capml_core.stages.training_sets import end_member_cell
    from capml_core.store.database import Store

    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as tmp:
        loaded = load_config(options.config, project_dir=tmp)
        config = loaded.config
        store = Store(loaded.project_dir)
        demo = load_config(REPO / "data" / "configs" / "ag3sbri-demo.toml").config
        spec = demo.dataset.imports[0]  # the bundled gpaw-pbesol labels
        species = config.system.allowed_species()
        import_spec(store, spec, config.system)
        mlip = config.mlip.model_copy(
            update={"max_epochs": EPOCHS, "device": options.device, "foundation_model": None, "stage_two_fraction": 0}
        )
        start = time.perf_counter()
        model = train_mace(store, mlip, level=spec.level, species=sorted(species))
        total = time.perf_counter() - start
        per_epoch = seconds_per_epoch(model.path.parent / "mace-train.log")
        n_train = len(model.splits["train"])
        print(
            f"training ({mlip.channels} channels, L={mlip.max_l}, {mlip.r_max_a} Å, {mlip.dtype}, {options.device}): "
            f"{per_epoch:.2f} s/epoch on {n_train} structures; {total:.0f} s with start-up and evaluation"
        )

        cell = end_member_cell(config.system, "Br")
        rates = {}
        for dtype in ("float64", "float32"):
            calculator = load_mace_calculator(model.path, device=options.device, dtype=dtype)
            rates[dtype] = md_steps_per_second(calculator, cell, MD_STEPS)
            print(f"Langevin MD, {len(cell)} atoms, {dtype}: {rates[dtype]:.1f} steps/s")
    print(
        f"headline: {per_epoch:.1f}s/epoch MACE training, {rates['float32']:.0f} MD steps/s float32 "
        f"({rates['float32'] / rates['float64']:.1f}x float64), 40-atom cell, {options.device}"
    )


if __name__ == "__main__":
    main()
