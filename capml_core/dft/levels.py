"""Reference levels: DFT calculators behind one interface.

A level labels a structure with energy (eV), forces (eV/Å), stress (eV/Å³, ASE Voigt order xx yy zz yz xz xy,
positive = tensile) and band gap (eV), each when the level provides it, and says its name and settings.

Levels:

- ``gpaw-pbesol``: GPAW plane waves (400 eV), PBEsol exchange-correlation with the PBE PAW datasets (GPAW has
  no PBEsol datasets; VASP likewise uses PBE POTCARs for PBEsol), Γ only on the 40-atom cell, Fermi-Dirac
  smearing 0.01 eV. Gap: LUMO - HOMO.
- ``gpaw-gllbsc``: GPAW GLLB-SC: quasi-particle gap = Kohn-Sham gap + derivative discontinuity of the response
  potential. Band gaps only.
- ``vasp-pbesol``, ``vasp-hsesol``: VASP through ASE's calculator with the paper's settings (550 eV, PBEsol /
  HSEsol, Γ-centred k-grid equivalent to 12x12x12 on the 5-atom cell); input sets are written in full, VASP is
  run by a configured command, vasprun.xml is parsed.

GPAW is imported inside :meth:`ReferenceLevel.compute`, so this module loads without it.
"""

from __future__ import annotations

import logging
import tempfile
import time
from abc import ABC, abstractmethod
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
from ase import Atoms

from capml_core.config.inputs import ReferenceSection
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

    def unavailable_reason(self) -> str | None:
        """Why this level cannot compute on this machine (None: it can)."""
        return None

    def ase_calculator(self, workdir: Path | None = None) -> Any:
        """An ASE calculator of this level for work beyond single labels (a DFT relaxation).

        Raises
        ------
        InvalidInputError
            The level gives no forces and stress (e.g. a gap-only level).
        """
        raise InvalidInputError(
            f"level {self.name} has no ASE calculator for relaxations (it provides {self.provides})"
        )

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


class _GpawLevel(ReferenceLevel):
    """Settings and calculator shared by the GPAW levels (plane waves, Γ-centred k-grid, Fermi-Dirac).

    Parameters
    ----------
    cutoff_ev
        Plane-wave cutoff (eV).
    kpts
        Γ-centred k-point grid.
    smearing_ev
        Fermi-Dirac width (eV).
    """

    backend = "gpaw"
    #: GPAW's name of the functional, as recorded in the settings.
    xc_name: ClassVar[str]

    def __init__(self, *, cutoff_ev: float = 400.0, kpts: tuple[int, int, int] = (1, 1, 1), smearing_ev: float = 0.01):
        self.cutoff_ev = cutoff_ev
        self.kpts = tuple(kpts)
        self.smearing_ev = smearing_ev

    def _xc(self) -> Any:
        return self.xc_name

    def _extra_parameters(self) -> dict[str, Any]:
        """Level-specific GPAW parameters beyond mode, xc, kpts and occupations."""
        return {}

    def settings(self) -> dict[str, Any]:
        """GPAW settings of this level."""
        import gpaw

        return {
            "code": "gpaw",
            "gpaw_version": gpaw.__version__,
            "mode": f"PW({self.cutoff_ev:g})",
            "xc": self.xc_name,
            "kpts": {"size": list(self.kpts), "gamma": True},
            "occupations": f"FermiDirac({self.smearing_ev:g})",
            **self._extra_parameters(),
        }

    def _calculator(self, workdir: Path | None) -> Any:
        from gpaw import GPAW, PW, FermiDirac

        return GPAW(
            mode=PW(self.cutoff_ev),
            xc=self._xc(),
            kpts={"size": self.kpts, "gamma": True},
            occupations=FermiDirac(self.smearing_ev),
            txt=_txt_path(workdir, self.name),
            **self._extra_parameters(),
        )


class GpawPbesol(_GpawLevel):
    """GPAW plane-wave PBEsol with the PBE PAW datasets: energy, forces, stress and Kohn-Sham gap."""

    name = "gpaw-pbesol"
    provides = ("energy", "forces", "stress", "gap")
    xc_name = "PBEsol"

    def _xc(self) -> Any:
        return pbesol_with_pbe_setups()

    def ase_calculator(self, workdir: Path | None = None) -> Any:
        """GPAW with this level's settings (energies, forces, stress for a relaxation)."""
        return self._calculator(workdir)

    def settings(self) -> dict[str, Any]:
        """GPAW settings of this level (PBEsol read with the PBE datasets)."""
        return {**super().settings(), "setups": "PBE"}

    def compute(self, atoms: Atoms, *, workdir: Path | None = None) -> LabelResult:
        """Energy (eV), forces (eV/Å), stress (eV/Å³) and Kohn-Sham gap (eV) of one structure."""
        work = atoms.copy()
        work.calc = self._calculator(workdir)
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


class GpawGllbsc(_GpawLevel):
    """GPAW GLLB-SC band gap: Kohn-Sham gap + derivative discontinuity (eV).

    Parameters
    ----------
    extra_bands
        Unoccupied bands beyond the occupied ones (GPAW ``nbands=-extra_bands``).
    eigenstates_tolerance
        Convergence target of the eigenstates (GPAW's default 4e-8 stalls on some displaced cells).
    maxiter
        Maximum SCF iterations.
    **common
        ``cutoff_ev``, ``kpts``, ``smearing_ev`` as for every GPAW level.
    """

    name = "gpaw-gllbsc"
    provides = ("gap",)
    xc_name = "GLLBSC"

    def __init__(
        self, *, extra_bands: int = 16, eigenstates_tolerance: float = 1e-5, maxiter: int = 150, **common: Any
    ):
        super().__init__(**common)
        self.extra_bands = extra_bands
        self.eigenstates_tolerance = eigenstates_tolerance
        self.maxiter = maxiter

    def _extra_parameters(self) -> dict[str, Any]:
        return {
            "nbands": -self.extra_bands,
            "convergence": {"bands": "occupied", "eigenstates": self.eigenstates_tolerance},
            "maxiter": self.maxiter,
        }

    def compute(self, atoms: Atoms, *, workdir: Path | None = None) -> LabelResult:
        """Quasi-particle gap (eV) = Kohn-Sham gap + discontinuity; both parts in ``extras``."""
        work = atoms.copy()
        work.calc = self._calculator(workdir)
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


class VaspLevel(ReferenceLevel):
    """A VASP level through ASE's VASP calculator: writes complete input sets, runs VASP, parses vasprun.xml.

    Parameters
    ----------
    encut_ev
        ENCUT (eV).
    kpts
        Γ-centred k-grid of the simulation cell.
    ediff_ev
        EDIFF (eV).
    sigma_ev
        SIGMA (eV) with Gaussian smearing (ISMEAR = 0).
    setups
        POTCAR variants per element (ASE's ``setups``).
    command
        Shell command that runs VASP in the input directory (None: inputs can be written, not run).
    """

    backend = "vasp"
    #: ASE ``xc`` name and extra INCAR tags of the level.
    xc: ClassVar[str]
    incar_extra: ClassVar[dict[str, Any]] = {}

    def __init__(
        self,
        *,
        encut_ev: float = 550.0,
        kpts: tuple[int, int, int] = (6, 6, 6),
        ediff_ev: float = 1e-6,
        sigma_ev: float = 0.01,
        setups: Mapping[str, str] | None = None,
        command: str | None = None,
    ):
        self.encut_ev = encut_ev
        self.kpts = tuple(kpts)
        self.ediff_ev = ediff_ev
        self.sigma_ev = sigma_ev
        self.setups = dict(setups or {})
        self.command = command

    def unavailable_reason(self) -> str | None:
        """VASP runs only with a configured command and POTCARs."""
        if self.command is None:
            return f"no VASP command configured (reference.{self.name.replace('-', '_')}.command)"
        return None

    def incar(self) -> dict[str, Any]:
        """INCAR tags (ASE keyword names, lower case) of a single point with stress."""
        return {
            "prec": "Accurate",
            "encut": self.encut_ev,
            "ediff": self.ediff_ev,
            "ismear": 0,
            "sigma": self.sigma_ev,
            "lreal": False,
            "ibrion": -1,
            "nsw": 0,
            "isif": 2,
            "nelm": 200,
            "lwave": False,
            "lcharg": False,
            "lorbit": 11,
            **self.incar_extra,
        }

    def settings(self) -> dict[str, Any]:
        """VASP settings of this level."""
        return {
            "code": "vasp",
            "xc": self.xc,
            "incar": self.incar(),
            "kpts": {"size": list(self.kpts), "gamma": True},
            "setups": self.setups,
        }

    def calculator(self, directory: Path) -> Any:
        """ASE's VASP calculator with this level's settings, writing to ``directory``."""
        from ase.calculators.vasp import Vasp

        return Vasp(
            directory=str(directory),
            command=self.command,
            xc=self.xc,
            kpts=self.kpts,
            gamma=True,
            setups=self.setups or None,
            **self.incar(),
        )

    def write_inputs(self, atoms: Atoms, directory: Path) -> list[Path]:
        """Write INCAR, KPOINTS, POSCAR (species grouped), POTCAR and ase-sort.dat to ``directory``.

        Raises
        ------
        InvalidInputError
            ASE cannot find the POTCAR files (set ``VASP_PP_PATH``).
        """
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        calc = self.calculator(directory)
        try:
            calc.write_input(atoms)
        except (OSError, RuntimeError) as err:
            raise InvalidInputError(
                f"{self.name}: cannot find the POTCAR files ({err}); set VASP_PP_PATH to the folder holding "
                "potpaw_PBE (ASE's convention)"
            ) from err
        return sorted(p for p in directory.iterdir() if p.is_file())

    def parse(self, directory: Path) -> LabelResult:
        """Labels of a finished VASP run in ``directory`` (vasprun.xml; atom order restored via ase-sort.dat).

        Raises
        ------
        CalculationFailed
            No complete vasprun.xml, or the electronic loop hit NELM without converging.
        """
        from ase.dft.bandgap import bandgap
        from ase.io import read

        directory = Path(directory)
        vasprun = directory / "vasprun.xml"
        try:
            atoms = read(vasprun, format="vasp-xml", index=-1)
        except Exception as err:  # missing file, truncated XML
            raise CalculationFailed(f"{self.name}: no complete vasprun.xml in {directory}: {err}") from err
        resort = np.loadtxt(directory / "ase-sort.dat", dtype=int)[:, 1]
        calc = atoms.calc
        n_steps = _count_scf_steps(vasprun)
        if n_steps >= int(self.incar()["nelm"]):
            raise CalculationFailed(f"{self.name}: electronic loop did not converge in NELM = {n_steps} steps")
        forces = calc.results.get("forces")
        stress = calc.results.get("stress")
        try:
            gap, _, _ = bandgap(calc, output=None)
        except ValueError as err:  # ASE: all bands occupied or empty
            raise CalculationFailed(f"{self.name}: no gap from the eigenvalues of {vasprun}: {err}") from err
        return LabelResult(
            level=self.name,
            energy_ev=float(calc.results["energy"]) if "energy" in self.provides else None,
            forces_ev_per_a=None if forces is None or "forces" not in self.provides else np.asarray(forces)[resort],
            stress_ev_per_a3=None if stress is None or "stress" not in self.provides else np.asarray(stress),
            gap_ev=float(gap),
            extras={"efermi_ev": float(calc.get_fermi_level()), "scf_steps": n_steps},
        )

    def compute(self, atoms: Atoms, *, workdir: Path | None = None) -> LabelResult:
        """Write the inputs, run ``command`` in the work directory, parse the result."""
        import subprocess

        reason = self.unavailable_reason()
        if reason is not None:
            raise CalculationFailed(f"{self.name}: {reason}")
        directory = Path(workdir or tempfile.mkdtemp(prefix=f"capml-{self.name}-"))
        self.write_inputs(atoms, directory)
        start = time.perf_counter()
        finished = subprocess.run(self.command, shell=True, cwd=directory, capture_output=True, text=True)
        # kept with OUTCAR/OSZICAR in the project's logs/<level>/ when the calculation fails
        (directory / "vasp-stdout.txt").write_text(finished.stdout)
        (directory / "vasp-stderr.txt").write_text(finished.stderr)
        if finished.returncode != 0:
            raise CalculationFailed(
                f"{self.name}: '{self.command}' exited {finished.returncode}: {finished.stderr[-500:]}"
            )
        result = self.parse(directory)
        return LabelResult(**{**vars(result), "wall_time_s": time.perf_counter() - start})


def _count_scf_steps(vasprun: Path) -> int:
    """Electronic steps of the last ionic step of a vasprun.xml."""
    import xml.etree.ElementTree as ET

    calculations = ET.parse(vasprun).getroot().findall("calculation")
    return len(calculations[-1].findall("scstep")) if calculations else 0


class VaspPbesol(VaspLevel):
    """VASP PBEsol (GGA = PS): energy, forces, stress, Kohn-Sham gap."""

    name = "vasp-pbesol"
    xc = "pbesol"
    provides = ("energy", "forces", "stress", "gap")


class VaspHsesol(VaspLevel):
    """VASP HSEsol (PBEsol-based screened hybrid, 25 % exact exchange, μ = 0.2 Å⁻¹): band gap."""

    name = "vasp-hsesol"
    xc = "hsesol"
    provides = ("gap",)
    incar_extra: ClassVar[dict[str, Any]] = {"algo": "Damped", "time": 0.4, "aexx": 0.25}


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
LEVELS: dict[str, type[ReferenceLevel]] = {cls.name: cls for cls in (GpawPbesol, GpawGllbsc, VaspPbesol, VaspHsesol)}


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
