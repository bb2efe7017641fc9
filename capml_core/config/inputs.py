"""Config sections of the inputs: the materials system, the datasets and the reference (DFT) levels."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Annotated, Literal, get_args

from ase import Atoms
from pydantic import (
    Field,
    PositiveFloat,
    PositiveInt,
    ValidationInfo,
    field_validator,
    model_validator,
)

from capml_core.config.base import Element, LevelName, Name, Section, _input_path
from capml_core.system.structures import (
    build_cubic_antiperovskite,
    build_cubic_perovskite,
    read_structure_file,
    scaled_supercell,
    vegard_lattice_a,
)
from capml_core.types import LabelName, ParentBuilder


class ParentSection(Section):
    """The parent (undisordered) unit cell: a built-in builder, or a CIF/POSCAR file."""

    builder: ParentBuilder | None = Field(
        default=None,
        description="Built-in cubic Pm-3m builder: 'antiperovskite' (A3BX, e.g. Ag3SBr: A on face centres, "
        "B body centre, X corner) or 'perovskite' (ABX3, e.g. CsPbBr3: A corner, B body centre, X faces).",
    )
    file: Path | None = Field(default=None, description="CIF or POSCAR file of the parent cell.")
    species: dict[Literal["A", "B", "X"], Element] | None = Field(
        default=None, description="Builder only: element of each site role, e.g. {A='Ag', B='S', X='Br'}."
    )
    lattice_a: PositiveFloat | None = Field(
        default=None,
        description="Builder only: cubic lattice parameter (Å) of the built cell; every supercell is rescaled to "
        "the Vegard a(x) of system.vegard_lattice_a, so it does not set the simulated lattice.",
    )

    _check_file = field_validator("file")(_input_path)

    @model_validator(mode="after")
    def _builder_or_file(self) -> ParentSection:
        if (self.builder is None) == (self.file is None):
            raise ValueError("builder: give exactly one of 'builder' (allowed: antiperovskite, perovskite) or 'file'")
        if self.builder is not None:
            if self.species is None or set(self.species) != {"A", "B", "X"}:
                raise ValueError("species: a builder needs species = {A = '...', B = '...', X = '...'}")
            if self.lattice_a is None:
                raise ValueError("lattice_a: a builder needs lattice_a (Å)")
        elif self.species is not None or self.lattice_a is not None:
            raise ValueError("file: 'species' and 'lattice_a' belong to a builder; a parent file defines both itself")
        return self

    def build(self) -> Atoms:
        """The parent unit cell (periodic Atoms, Å) from the builder or the file."""
        if self.builder is not None:
            assert self.species is not None and self.lattice_a is not None  # guaranteed by the validator
            builder = build_cubic_antiperovskite if self.builder == "antiperovskite" else build_cubic_perovskite
            return builder(self.species["A"], self.species["B"], self.species["X"], self.lattice_a)
        atoms = read_structure_file(self.file)
        atoms.pbc = True
        return atoms


class SublatticeSection(Section):
    """The substituted sublattice: the sites of ``site_species`` in the parent, shared by ``species``."""

    site_species: Element = Field(description="Element whose sites in the parent are substituted, e.g. 'Br'.")
    species: tuple[Element, Element] = Field(
        description="The two species sharing the sublattice; the composition x is the fraction of the first."
    )

    @model_validator(mode="after")
    def _distinct(self) -> SublatticeSection:
        if self.species[0] == self.species[1]:
            raise ValueError(f"species: the two species must differ, got {list(self.species)}")
        return self


class SystemSection(Section):
    """The solid solution: parent, substituted sublattice, supercell, Vegard end points, compositions."""

    name: str = Field(description="Human-readable name, e.g. 'Ag3SBr_xI_(1-x)'.")
    parent: ParentSection = Field(description="The parent unit cell (builder or file).")
    sublattice: SublatticeSection = Field(description="The substituted sublattice and its two species.")
    supercell: tuple[PositiveInt, PositiveInt, PositiveInt] = Field(
        default=(2, 2, 2),
        description="Repeats of the parent cell along its three lattice vectors: the simulation cell of every "
        "stage (e.g. 2x2x2 of a 5-atom cell = 40 atoms).",
    )
    vegard_lattice_a: dict[Element, PositiveFloat] = Field(
        description="Lattice parameter (Å) of the parent cell for each end member, keyed by sublattice species; "
        "a(x) is interpolated linearly (Vegard) and the parent cell scaled isotropically so that its first "
        "lattice vector has length a(x)."
    )
    compositions: list[Annotated[float, Field(ge=0.0, le=1.0)]] = Field(
        description="Compositions x (fraction of sublattice.species[0]) studied by the run; each a multiple of "
        "1/(number of sublattice sites in the supercell)."
    )

    @model_validator(mode="after")
    def _vegard_keys(self) -> SystemSection:
        if set(self.vegard_lattice_a) != set(self.sublattice.species):
            raise ValueError(
                f"vegard_lattice_a: must have one entry per sublattice species {list(self.sublattice.species)}, "
                f"got keys {sorted(self.vegard_lattice_a)}"
            )
        if not self.compositions:
            raise ValueError("compositions: list at least one x in [0, 1]")
        repeated = sorted(
            {x for x in self.compositions if sum(math.isclose(x, y, abs_tol=1e-9) for y in self.compositions) > 1}
        )
        if repeated:
            raise ValueError(f"compositions: {repeated} listed more than once; list each composition x once")
        return self

    def supercell_at(self, x: float) -> Atoms:
        """The undistorted supercell at the Vegard lattice parameter of composition x (all sites ``site_species``)."""
        a_x = vegard_lattice_a(x, self.sublattice.species, self.vegard_lattice_a)
        return scaled_supercell(self.parent.build(), a_x, self.supercell)

    def allowed_species(self) -> set[str]:
        """Elements a structure of this system may contain: parent elements + sublattice species."""
        parent = self.parent.build()
        return (set(parent.get_chemical_symbols()) - {self.sublattice.site_species}) | set(self.sublattice.species)


# ------------------------------------------------------------------------------------- stage sections
class LabelKeys(Section):
    """Where each label sits in an extended-XYZ frame (``info`` or ``arrays`` key); None = not in the file."""

    energy: str | None = Field(default="energy", description="info key of the total energy (eV).")
    forces: str | None = Field(default="forces", description="arrays key of the forces (eV/Å), shape (n, 3).")
    stress: str | None = Field(
        default="stress", description="info key of the stress (eV/Å³), Voigt xx yy zz yz xz xy or 3x3."
    )
    gap: str | None = Field(default="gap", description="info key of the band gap (eV).")

    @classmethod
    def build(
        cls,
        *,
        labels: tuple[LabelName, ...] = get_args(LabelName),
        prefix: str | None = None,
        overrides: dict[LabelName, str] | None = None,
    ) -> LabelKeys:
        """Keys for ``labels``: ``overrides[label]``, else ``<prefix>_<label>`` (``<label>`` without prefix)."""
        overrides = overrides or {}
        return cls(
            **{
                name: (overrides.get(name) or (f"{prefix}_{name}" if prefix else name)) if name in labels else None
                for name in get_args(LabelName)
            }
        )

    def present(self) -> dict[str, str]:
        """Label name -> key for the labels this file provides."""
        return {name: key for name in get_args(LabelName) if (key := getattr(self, name)) is not None}


class ImportSpec(Section):
    """One labelled extended-XYZ file to import at a reference level.

    The key of each label in the file is ``key_names[label]`` if given, else ``<key_prefix>_<label>`` (or just
    ``<label>`` without a prefix); only the labels listed in ``labels`` are expected.
    """

    path: Path = Field(description="Labelled extended-XYZ file (relative to the configuration file's directory).")
    level: LevelName = Field(description="Reference level the labels belong to, e.g. 'gpaw-pbesol'.")
    labels: list[LabelName] = Field(
        default_factory=lambda: list(get_args(LabelName)),
        min_length=1,
        description="Labels every frame carries (any of energy, forces, stress, gap).",
    )
    key_prefix: str | None = Field(
        default=None, description="Prefix of the label keys, e.g. 'pbesol' for pbesol_energy, pbesol_forces, ..."
    )
    key_names: dict[LabelName, str] = Field(
        default_factory=dict, description="Explicit key per label, overriding the prefix rule."
    )
    temperature_key: str | None = Field(default=None, description="info key of a temperature (K), if any.")
    amplitude_key: str | None = Field(
        default=None, description="info key of a displacement amplitude (Å), e.g. 'sigma_A', if any."
    )

    _check_path = field_validator("path")(_input_path)

    @model_validator(mode="after")
    def _keys_for_listed_labels(self) -> ImportSpec:
        extra = sorted(set(self.key_names) - set(self.labels))
        if extra:
            raise ValueError(f"key_names: given for {extra}, which are not in labels {self.labels}")
        return self

    def label_keys(self) -> LabelKeys:
        """Where each label sits in the file."""
        return LabelKeys.build(labels=tuple(self.labels), prefix=self.key_prefix, overrides=self.key_names)


class StructureSetSection(Section):
    """A named set of generated training structures, to be labelled at one reference level.

    Per composition x of the system: ``thermal_per_point`` structures at each temperature,
    ``uniform_per_point`` at each uniform amplitude and ``equilibrium_per_composition`` undisplaced ones, each
    with its own random arrangement of the sublattice species and a seed derived from ``seed`` (so a set
    regenerates bit for bit and two sets with different seeds are distinct).
    """

    name: Name = Field(description="Name of the set (unique among dataset.sets); its structures are stored under it.")
    level: LevelName = Field(
        description="Reference level the set is labelled at by the label stage, e.g. 'gpaw-pbesol' (a level capml "
        "cannot compute is skipped there with a warning)."
    )
    seed: int = Field(ge=0, description="Seed of the set; every structure's seed derives from it.")
    temperatures_k: list[Annotated[float, Field(gt=0.0, le=5000.0)]] = Field(
        default_factory=list, description="Temperatures (K) of thermal (phonon) displacements."
    )
    thermal_per_point: Annotated[int, Field(ge=0)] = Field(
        default=0, description="Thermal structures per composition and temperature."
    )
    uniform_amplitudes_a: list[Annotated[float, Field(gt=0.0, le=2.0)]] = Field(
        default_factory=list,
        description="Amplitudes (Å) of uniform random displacements: every atom moves in a random direction by a "
        "length drawn uniformly from [0, amplitude].",
    )
    uniform_per_point: Annotated[int, Field(ge=0)] = Field(
        default=0, description="Uniformly displaced structures per composition and amplitude."
    )
    equilibrium_per_composition: Annotated[int, Field(ge=0)] = Field(
        default=0, description="Undisplaced structures (Vegard cell, random arrangement) per composition."
    )

    @model_validator(mode="after")
    def _something(self) -> StructureSetSection:
        if self.thermal_per_point and not self.temperatures_k:
            raise ValueError("temperatures_k: thermal_per_point > 0 needs at least one temperature")
        if self.uniform_per_point and not self.uniform_amplitudes_a:
            raise ValueError("uniform_amplitudes_a: uniform_per_point > 0 needs at least one amplitude")
        return self


class DatasetSection(Section):
    """Stages 1-2 (``dataset-import``, ``dataset-generate``): training structures, imported or generated.

    Generated sets, the paper's: 150-600 K thermal, 0.2-0.8 Å uniform, a few equilibrium cells.

    Thermal displacements are drawn from the harmonic phonons of the end members (force constants of the
    supercell, interpolated linearly in x between the two end members, masses of the actual species).
    """

    force_constants: dict[Element, Path] = Field(
        default_factory=dict,
        description="phonopy file (with force constants) of each end member's supercell, keyed by sublattice "
        "species; an end member without a file gets its force constants computed at force_constants_level.",
    )
    force_constants_level: LevelName = Field(
        default="gpaw-pbesol",
        description="Level whose forces give an end member's force constants when it has no file: a level capml "
        "computes forces at (e.g. 'gpaw-pbesol', 'vasp-pbesol') or 'mace' (the project's latest MACE model); "
        "computed once, kept under <project>/phonons/.",
    )
    displacement_a: PositiveFloat = Field(
        default=0.01,
        description="Finite displacement (Å) for the end members' force constants (and MACE's in the mlip "
        "stage's phonon comparison).",
    )
    cutoff_frequency_thz: Annotated[float, Field(ge=0.0)] = Field(
        default=0.1, description="Modes with |frequency| below this (THz) get no thermal amplitude."
    )
    max_displacement_a: PositiveFloat = Field(
        default=1.0, description="A thermal displacement longer than this (Å) is shortened to it."
    )
    sets: list[StructureSetSection] = Field(
        default_factory=list, description="Structure sets to generate, each labelled at its own level."
    )
    imports: list[ImportSpec] = Field(default_factory=list, description="Labelled extended-XYZ datasets to import.")

    @field_validator("force_constants")
    @classmethod
    def _check_fc(cls, value: dict[str, Path], info: ValidationInfo) -> dict[str, Path]:
        out = {}
        for species, path in value.items():
            try:
                out[species] = _input_path(path, info)
            except ValueError as err:
                raise ValueError(f"{species}: {err}") from None
        return out

    @model_validator(mode="after")
    def _unique_set_names(self) -> DatasetSection:
        names = [s.name for s in self.sets]
        if len(names) != len(set(names)):
            raise ValueError(f"sets: set names must be unique, got {names}")
        return self


class GpawSettings(Section):
    """Settings of the GPAW PBEsol level (defaults: those of the bundled reference data)."""

    cutoff_ev: PositiveFloat = Field(default=400.0, description="Plane-wave cutoff (eV).")
    kpts: tuple[PositiveInt, PositiveInt, PositiveInt] = Field(
        default=(1, 1, 1), description="Γ-centred k-point grid of the simulation cell."
    )
    smearing_ev: PositiveFloat = Field(default=0.01, description="Fermi-Dirac width (eV).")


class GllbscSettings(GpawSettings):
    """Settings of the GPAW GLLB-SC level."""

    extra_bands: PositiveInt = Field(default=16, description="Empty bands beyond the occupied ones.")
    eigenstates_tolerance: PositiveFloat = Field(
        default=1e-5, description="SCF convergence target of the occupied eigenstates (GPAW 'eigenstates')."
    )
    maxiter: PositiveInt = Field(default=150, description="Maximum SCF iterations.")


class VaspSettings(Section):
    """Settings of a VASP level (paper: 550 eV, PBEsol / HSEsol, k-grid equivalent to 12x12x12 on the 5-atom cell).

    VASP runs outside capml's control: give ``command`` (e.g. "srun vasp_std") to run it from the labelling
    stage, and ``VASP_PP_PATH`` in the environment (ASE's convention) for the POTCAR files.
    """

    encut_ev: PositiveFloat = Field(default=550.0, description="Plane-wave cutoff ENCUT (eV).")
    kpts: tuple[PositiveInt, PositiveInt, PositiveInt] = Field(
        default=(6, 6, 6), description="Γ-centred k-grid of the simulation cell (6x6x6 on 2x2x2 = 12x12x12 per cell)."
    )
    ediff_ev: PositiveFloat = Field(default=1e-6, description="Electronic convergence EDIFF (eV).")
    sigma_ev: PositiveFloat = Field(default=0.01, description="Gaussian smearing SIGMA (eV), ISMEAR = 0.")
    setups: dict[Element, str] = Field(
        default_factory=dict, description="POTCAR variants per element, ASE style, e.g. {Ag = '_pv'}."
    )
    command: str | None = Field(
        default=None,
        description="Shell command that runs VASP in the input directory; None: the level is not computed "
        "(the label stage skips it with a warning).",
    )


class ReferenceSection(Section):
    """Stage 3 (``label``): reference levels and their settings.

    The label stage computes each structure set at the set's own level (levels capml computes: gpaw-pbesol,
    gpaw-gllbsc, vasp-pbesol, vasp-hsesol; others are imported). ``cheap_level`` (energies, forces, stresses,
    gaps) and ``high_level`` (gaps) say which labels the GNN and MACE learn.
    """

    cheap_level: LevelName = Field(
        default="gpaw-pbesol",
        description="Level whose gaps train the GNN (search, ensemble, learning curve) and whose energies, forces "
        "and stresses train MACE unless mlip.level is set.",
    )
    high_level: LevelName = Field(
        default="gpaw-gllbsc",
        description="Level whose gaps fine-tune the GNN; also the level of the gap stages' DFT checks unless "
        "gaps.reference_level is set.",
    )
    workers: PositiveInt = Field(
        default=1,
        description="Worker processes (one thread each) of the label stage and of the gap stages' DFT checks.",
    )
    max_calculations: Annotated[int, Field(ge=0)] | None = Field(
        default=None,
        description="Most calculations one pipeline run starts per level (None: all pending; 0: label nothing).",
    )
    gpaw_pbesol: GpawSettings = Field(default=GpawSettings(), description="Settings of the level 'gpaw-pbesol'.")
    gpaw_gllbsc: GllbscSettings = Field(
        default=GllbscSettings(), description="Settings of the level 'gpaw-gllbsc' (band gaps only)."
    )
    vasp_pbesol: VaspSettings = Field(default=VaspSettings(), description="Settings of the level 'vasp-pbesol'.")
    vasp_hsesol: VaspSettings = Field(
        default=VaspSettings(), description="Settings of the level 'vasp-hsesol' (band gaps only)."
    )
