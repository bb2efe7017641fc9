"""How far the 40-atom cell's Γ-only gap is from a converged k-grid: the cubic end members at both GPAW levels.

The 2x2x2 supercell at Γ holds exactly the states of the 5-atom cell on a Γ-centred 2x2x2 grid (Γ, X, M, R), so
the 5-atom cell at k = 2 reproduces capml's labels of the cubic 40-atom cells, and denser grids say what Γ-only
misses (the paper: 12x12x12 on the 5-atom cell). Prints one row per (compound, level, k-grid): gap (eV), where
the valence maximum and conduction minimum lie (PBEsol rows), and the CPU time. Reproduces the numbers of
docs/results-ag3sbri.md ("What differs from the paper, measured").

    OMP_NUM_THREADS=1 python scripts/kpoint_gap_check.py [--grids 2 4 8 12] [--gllbsc-grids 2 8]
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from capml_core.dft.levels import GpawGllbsc, GpawPbesol
from capml_core.system.structures import build_cubic_antiperovskite

#: Cubic lattice parameters of the end members (Å), as in data/configs/ag3sbri-*.toml.
END_MEMBERS = {"Ag3SBr": ("Br", 4.793), "Ag3SI": ("I", 4.869)}


def _band_edges(calc) -> tuple[str, str]:
    """Fractional k-points of the valence maximum and conduction minimum on the irreducible grid."""
    kpts = calc.get_ibz_k_points()
    n_occupied = int(round(calc.get_number_of_electrons())) // 2
    eigs = np.array([calc.get_eigenvalues(kpt=k) for k in range(len(kpts))])
    vbm, cbm = int(np.argmax(eigs[:, n_occupied - 1])), int(np.argmin(eigs[:, n_occupied]))
    return tuple(str((np.round(kpts[i], 3) + 0.0).tolist()) for i in (vbm, cbm))  # + 0.0: no "-0.0"


def main() -> None:
    """Compute and print the gaps of both end members on each k-grid."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--grids", type=int, nargs="+", default=[2, 4, 8, 12], help="PBEsol k-grids (n x n x n)")
    parser.add_argument("--gllbsc-grids", type=int, nargs="+", default=[2, 8], help="GLLB-SC k-grids")
    args = parser.parse_args()
    print("compound  level        k-grid  gap (eV)  VBM k            CBM k            CPU s")
    for name, (halogen, lattice_a) in END_MEMBERS.items():
        atoms = build_cubic_antiperovskite("Ag", "S", halogen, lattice_a)
        jobs = [("gpaw-pbesol", n) for n in args.grids] + [("gpaw-gllbsc", n) for n in args.gllbsc_grids]
        for level, n in jobs:
            start = time.process_time()
            if level == "gpaw-pbesol":
                work = atoms.copy()
                work.calc = GpawPbesol(kpts=(n, n, n)).ase_calculator()
                work.get_potential_energy()
                homo, lumo = work.calc.get_homo_lumo()
                gap, (vbm, cbm) = float(lumo - homo), _band_edges(work.calc)
            else:
                gap, vbm, cbm = GpawGllbsc(kpts=(n, n, n)).compute(atoms).gap_ev, "-", "-"
            print(
                f"{name:9s} {level:12s} {n:>2d}^3    {gap:8.3f}  {vbm:16s} {cbm:16s} "
                f"{time.process_time() - start:6.0f}",
                flush=True,
            )


if __name__ == "__main__":
    main()
