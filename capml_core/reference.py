"""Reference levels: DFT calculators behind one interface.

A level labels a structure with energy (eV), forces (eV/Å), stress (eV/Å³, ASE Voigt order xx yy zz yz xz xy,
positive = tensile) and band gap (eV), each when the level provides it, and says its name and settings.

Levels:

- ``gpaw-pbesol``: GPAW plane waves (400 eV), PBEsol exchange-correlation with the PBE PAW datasets (GPAW has
  no PBEsol datasets; VASP likewise uses PBE POTCARs for PBEsol), Γ only on the 40-atom cell, Fermi-Dirac
  smearing 0.01 eV. Gap: LUMO - HOMO.
- ``gpaw-gllbsc``: GPAW GLLB-SC: quasi-particle gap = Kohn-Sham gap + derivative discontinuity of the response
  potential. Band gaps only.

GPAW is imported inside :meth:`ReferenceLevel.compute`, so this module loads without it.
"""

from __future__ import annotations

import logging
import time
from abc import ABC, abstractmethod
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
from ase import Atoms

from capml_core.config import ReferenceSection
from capml_core.errors import CalculationFailed, InvalidInputError
from capml_core.types import LabelName

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class LabelResult:
    """Labels of one structure computed at one level (None where the level does not provide a label).

    Attributes
    ----------
    level
        Name of the level.
    energy_ev
        Total energy (eV).
    forces_ev_per_a
        Forces (eV/Å), shape (n_atoms, 3).
    stress_ev_per_a3
        Stress (eV/Å³), Voigt order xx yy zz yz xz xy.
    gap_ev
        Band gap (eV).
    extras
        Other numbers the level reports (e.g. Kohn-Sham gap and discontinuity of GLLB-SC), JSON-ready.
    wall_time_s
        Wall time of the calculation (s).
    """

    level: str
    energy_ev: float | None = None
    forces_ev_per_a: np.ndarray | None = None
    stress_ev_per_a3: np.ndarray | None = None
    gap_ev: float | None = None
    extras: Mapping[str, Any] = field(default_factory=dict)
    wall_time_s: float | None = None


class ReferenceLevel(ABC):
    """A reference level: one method, fixed settings, the labels it provides."""

    #: Name used in the store and on the command line.
    name: ClassVar[str]
    #: Code family: gpaw, vasp, ...
    backend: ClassVar[str]
    #: Labels this level computes.
    provides: ClassVar[tuple[LabelName, ...]]

    @abstractmethod
    def settings(self) -> dict[str, Any]:
        """Every setting that changes the numbers (JSON-ready), stored with the level."""

    @abstractmethod
    def compute(self, atoms: Atoms, *, workdir: Path | None = None) -> LabelResult:
        """Label one structure.

        Parameters
        ----------
        atoms
            The structure (Å); it is not modified.
        workdir
            Directory for the code's text output (None: no output file).

        Raises
        ------
        CalculationFailed
            The calculation did not converge or the code crashed.
        """


def _homo_lumo_gap(calc: Any) -> tuple[float, float, float]:
    """HOMO, LUMO and gap (eV) from a converged GPAW calculation."""
    homo, lumo = calc.get_homo_lumo()
    return float(homo), float(lumo), float(lumo - homo)


class GpawPbesol(ReferenceLevel):
    """GPAW plane-wave PBEsol (PBE PAW datasets): energy, forces, stress and Kohn-Sham gap.

    Parameters
    ----------
    cutoff_ev
        Plane-wave cutoff (eV).
    kpts
        Γ-centred k-point grid.
    smearing_ev
        Fermi-Dirac width (eV).
    """

    name = "gpaw-pbesol"
    backend = "gpaw"
    provides = ("energy", "forces", "stress", "gap")

    def __init__(self, *, cutoff_ev: float = 400.0, kpts: tuple[int, int, int] = (1, 1, 1), smearing_ev: float = 0.01):
        self.cutoff_ev = cutoff_ev
        self.kpts = tuple(kpts)
        self.smearing_ev = smearing_ev

    def settings(self) -> dict[str, Any]:
        """GPAW settings of this level."""
        import gpaw

        return {
            "code": "gpaw",
            "gpaw_version": gpaw.__version__,
            "mode": f"PW({self.cutoff_ev:g})",
            "xc": "PBEsol",
            "setups": "PBE",
            "kpts": {"size": list(self.kpts), "gamma": True},
            "occupations": f"FermiDirac({self.smearing_ev:g})",
        }

    def _calculator(self, txt: str | Path | None) -> Any:
        from gpaw import GPAW, PW, FermiDirac

        return GPAW(
            mode=PW(self.cutoff_ev),
            xc=pbesol_with_pbe_setups(),
            kpts={"size": self.kpts, "gamma": True},
            occupations=FermiDirac(self.smearing_ev),
            txt=txt,
        )

    def compute(self, atoms: Atoms, *, workdir: Path | None = None) -> LabelResult:
        """Energy (eV), forces (eV/Å), stress (eV/Å³) and Kohn-Sham gap (eV) of one structure."""
        work = atoms.copy()
        txt = _txt_path(workdir, self.name)
        work.calc = self._calculator(txt)
        start = time.perf_counter()
        try:
            energy = work.get_potential_energy()
            forces = work.get_forces()
            stress = work.get_stress(voigt=True)
            homo, lumo, gap = _homo_lumo_gap(work.calc)
        except Exception as err:  # GPAW's convergence errors and crashes
            raise CalculationFailed(f"{self.name}: {type(err).__name__}: {err}") from err
        return LabelResult(
            level=self.name,
            energy_ev=float(energy),
            forces_ev_per_a=np.asarray(forces, dtype=np.float64),
            stress_ev_per_a3=np.asarray(stress, dtype=np.float64),
            gap_ev=gap,
            extras={"homo_ev": homo, "lumo_ev": lumo},
            wall_time_s=time.perf_counter() - start,
        )


class GpawGllbsc(ReferenceLevel):
    """GPAW GLLB-SC band gap: Kohn-Sham gap + derivative discontinuity (eV).

    Parameters
    ----------
    cutoff_ev
        Plane-wave cutoff (eV).
    kpts
        Γ-centred k-point grid.
    smearing_ev
        Fermi-Dirac width (eV).
    extra_bands
        Unoccupied bands beyond the occupied ones (GPAW ``nbands=-extra_bands``).
    eigenstates_tolerance
        Convergence target of the eigenstates (GPAW's default 4e-8 stalls on some displaced cells).
    maxiter
        Maximum SCF iterations.
    """

    name = "gpaw-gllbsc"
    backend = "gpaw"
    provides = ("gap",)

    def __init__(
        self,
        *,
        cutoff_ev: float = 400.0,
        kpts: tuple[int, int, int] = (1, 1, 1),
        smearing_ev: float = 0.01,
        extra_bands: int = 16,
        eigenstates_tolerance: float = 1e-5,
        maxiter: int = 150,
    ):
        self.cutoff_ev = cutoff_ev
        self.kpts = tuple(kpts)
        self.smearing_ev = smearing_ev
        self.extra_bands = extra_bands
        self.eigenstates_tolerance = eigenstates_tolerance
        self.maxiter = maxiter

    def settings(self) -> dict[str, Any]:
        """GPAW settings of this level."""
        import gpaw

        return {
            "code": "gpaw",
            "gpaw_version": gpaw.__version__,
            "mode": f"PW({self.cutoff_ev:g})",
            "xc": "GLLBSC",
            "kpts": {"size": list(self.kpts), "gamma": True},
            "occupations": f"FermiDirac({self.smearing_ev:g})",
            "nbands": -self.extra_bands,
            "convergence": {"bands": "occupied", "eigenstates": self.eigenstates_tolerance},
            "maxiter": self.maxiter,
        }

    def compute(self, atoms: Atoms, *, workdir: Path | None = None) -> LabelResult:
        """Quasi-particle gap (eV) = Kohn-Sham gap + discontinuity; both parts in ``extras``."""
        from gpaw import GPAW, PW, FermiDirac

        work = atoms.copy()
        work.calc = GPAW(
            mode=PW(self.cutoff_ev),
            xc="GLLBSC",
            kpts={"size": self.kpts, "gamma": True},
            occupations=FermiDirac(self.smearing_ev),
            nbands=-self.extra_bands,
            convergence={"bands": "occupied", "eigenstates": self.eigenstates_tolerance},
            maxiter=self.maxiter,
            txt=_txt_path(workdir, self.name),
        )
        start = time.perf_counter()
        try:
            work.get_potential_energy()
            homo, lumo, ks_gap = _homo_lumo_gap(work.calc)
            response = work.calc.hamiltonian.xc.response
            potential = response.calculate_discontinuity_potential(homo, lumo)
            ks_gap_resp, dxc = response.calculate_discontinuity(potential)
        except Exception as err:
            raise CalculationFailed(f"{self.name}: {type(err).__name__}: {err}") from err
        return LabelResult(
            level=self.name,
            gap_ev=float(ks_gap_resp + dxc),
            extras={"ks_gap_ev": float(ks_gap_resp), "dxc_ev": float(dxc), "homo_ev": homo, "lumo_ev": lumo},
            wall_time_s=time.perf_counter() - start,
        )


def pbesol_with_pbe_setups() -> Any:
    """GPAW's PBEsol functional, reading the PBE PAW datasets (there are no PBEsol ones)."""
    from gpaw.xc import XC

    functional = XC("PBEsol")
    functional.get_setup_name = lambda: "PBE"  # the dataset files are <symbol>.PBE
    return functional


def _txt_path(workdir: Path | None, name: str) -> Path | None:
    if workdir is None:
        return None
    workdir.mkdir(parents=True, exist_ok=True)
    return workdir / f"{name}.txt"


#: Levels capml can compute, by name.
LEVELS: dict[str, type[ReferenceLevel]] = {cls.name: cls for cls in (GpawPbesol, GpawGllbsc)}


def get_level(name: str, reference: ReferenceSection | None = None) -> ReferenceLevel:
    """The level of this name, with the settings of a config's ``[reference]`` section (default: defaults).

    Raises
    ------
    InvalidInputError
        Unknown name (the message lists the known ones).
    """
    if name not in LEVELS:
        raise InvalidInputError(
            f"reference level {name!r} cannot be computed by capml; known: {', '.join(sorted(LEVELS))} "
            "(other levels can be imported with `capml data import`)"
        )
    if reference is None:
        return LEVELS[name]()
    settings = getattr(reference, name.replace("-", "_"))
    return LEVELS[name](**settings.model_dump())
