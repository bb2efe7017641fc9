"""Run configuration: one pydantic model for a whole run, loaded from TOML.

Units: lattice parameters and distances in Å, temperatures in K, time in fs or ps (as the field name says),
frequencies in THz, energies in eV.

Paths to *inputs* (parent structure file, datasets to import, model files) are resolved relative to the
directory of the configuration file. The *output* location ``run.project_dir`` is resolved relative to the
current working directory (like ASE and phonopy, which write where they run); it defaults to
``runs/<run.name>``.

Every section rejects unknown keys. :func:`load_config` turns any problem into one
:class:`~capml_core.errors.ConfigError` whose message names the file, the field, the value given and what is
allowed; it never writes anything.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Annotated, Any, Literal, get_args

from ase import Atoms
from ase.data import chemical_symbols
from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    PositiveFloat,
    PositiveInt,
    ValidationInfo,
    field_validator,
    model_validator,
)

from capml_core.system.structures import (
    build_cubic_antiperovskite,
    build_cubic_perovskite,
    read_structure_file,
    scaled_supercell,
    vegard_lattice_a,
)
from capml_core.types import LabelName, ParentBuilder

NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]*$"
LEVEL_PATTERN = r"^[a-z0-9][a-z0-9._-]*$"
Name = Annotated[str, Field(pattern=NAME_PATTERN, max_length=64)]
LevelName = Annotated[str, Field(pattern=LEVEL_PATTERN, max_length=64)]
Temperature = Annotated[float, Field(ge=0.0, le=5000.0)]


def _element(symbol: str) -> str:
    if symbol not in chemical_symbols[1:]:
        raise ValueError(f"{symbol!r} is not a chemical element symbol (e.g. 'Ag', 'Br', 'I')")
    return symbol


Element = Annotated[str, AfterValidator(_element)]


class Section(BaseModel):
    """Base of every configuration section: frozen, unknown keys rejected."""

    model_config = ConfigDict(extra="forbid", frozen=True)


def _input_path(value: Path | None, info: ValidationInfo) -> Path | None:
    """Resolve an input path against the config file's directory and check that it exists."""
    if value is None:
        return None
    base_dir = (info.context or {}).get("base_dir")
    path = Path(value).expanduser()
    if not path.is_absolute() and base_dir is not None:
        path = Path(base_dir) / path
    path = path.resolve()
    if not path.is_file():
        raise ValueError(f"file not found: {path}")
    return path


# --------------------------------------------------------------------------------------------- system
class RunSection(Section):
    """Identity of the run and where its results go."""

    name: Name = Field(description="Run name; also the default project directory runs/<name>.")
    project_dir: Path | None = Field(
        default=None,
        description="Directory holding the DuckDB store and artifacts (relative to the CWD; default: runs/<name>).",
    )
    seed: int = Field(
        default=0,
        ge=0,
        description="Seed of the gnn stage only: weight initialisation and batch order of every GNN it trains "
        "(ensemble member i: seed x 1000 + i) and the learning curve's subsets. Other draws have their own seeds "
        "(dataset.sets seed, gnn/mlip split_seed, mlip.seed, disorder.seed, md.seed).",
    )


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


GNNArchitectureName = Literal["paper", "three-layer", "four-layer", "mean-pool", "relu-output", "wide"]


class GNNSection(Section):
    """Stage 5 (``gnn``): GNN band-gap model, trained on the cheap level's gaps then fine-tuned on the high level's.

    ``architecture`` names one of :data:`capml_core.models.gnn.ARCHITECTURES` (paper: 2 GraphConv layers of 64, max
    pool, dropout 0.4, sigmoid output).
    """

    architecture: GNNArchitectureName = Field(
        default="paper",
        description="Model: 'paper', or a variant with 3 or 4 graph layers, mean pooling, ReLU output or 128 "
        "channels ('wide'); the search's best replaces it when search_architectures is set.",
    )
    cutoff_a: PositiveFloat = Field(default=5.5, description="Graph cutoff radius (Å).")
    epochs: PositiveInt = Field(
        default=500,
        description="Maximum epochs of the training on the cheap level's gaps (also of each search trial and "
        "learning-curve model).",
    )
    fine_tune_epochs: PositiveInt = Field(
        default=300, description="Maximum epochs of the fine-tuning on the high level."
    )
    batch_size: PositiveInt = Field(
        default=32,
        description="Batch size (graphs) of the ensemble's training and fine-tuning and of the learning curve; "
        "the ensemble uses the search's best instead when searching.",
    )
    learning_rate: PositiveFloat = Field(
        default=1e-3,
        description="Adam learning rate on the cheap level (ensemble, learning curve); the ensemble uses the "
        "search's best instead when searching.",
    )
    fine_tune_learning_rate: PositiveFloat = Field(
        default=5e-4, description="Adam learning rate of the fine-tuning on the high level."
    )
    patience: PositiveInt = Field(default=80, description="Epochs without validation improvement before stopping.")
    valid_fraction: Annotated[float, Field(gt=0.0, lt=0.5)] = Field(
        default=0.1,
        description="Share of each level's structures in the validation split (early stopping, search selection).",
    )
    test_fraction: Annotated[float, Field(gt=0.0, lt=0.5)] = Field(
        default=0.1, description="Share of each level's structures in the test split (used only for metrics)."
    )
    split_seed: Annotated[int, Field(ge=0)] = Field(
        default=0,
        description="Seed of the train/validation/test split (a hash of seed and structure, stable as data grow).",
    )
    ensemble_size: PositiveInt = Field(default=1, description="Independently seeded models (prediction spread).")
    search_architectures: list[GNNArchitectureName] = Field(
        default_factory=list,
        description="Architectures the hyperparameter search tries on the cheap level, with every learning rate "
        "and batch size below; best validation MAE wins (empty: no search).",
    )
    search_learning_rates: list[PositiveFloat] = Field(
        default_factory=lambda: [1e-3, 3e-3], description="Learning rates the hyperparameter search tries."
    )
    search_batch_sizes: list[PositiveInt] = Field(
        default_factory=lambda: [16, 32], description="Batch sizes (graphs) the hyperparameter search tries."
    )
    learning_curve_fractions: list[Annotated[float, Field(gt=0.0, le=1.0)]] = Field(
        default_factory=lambda: [0.25, 0.5, 0.75, 1.0],
        description="Fractions of the cheap level's training split for the learning curve (empty: none).",
    )
    baseline_architecture: GNNArchitectureName | None = Field(
        default=None,
        description="With a search: also train this architecture (e.g. 'paper') with the config's learning rate "
        "and batch size as a second ensemble on the same splits and seeds (id baseline-<key>), so the search's "
        "best is compared with it on the same test structures; not trained when the search's best is that very "
        "setting. None: no baseline.",
    )


class MLIPSection(Section):
    """Stage 6 (``mlip``): MACE on the cheap level's energies, forces and stresses, trained by MACE's own trainer.

    Paper: fine-tune mace-mpa-0-medium on PBEsol; 256 channels, 8 Å, loss weights E 1 / F 150 / S 10, a 95/5
    train/validation split.

    Structures labelled at ``level`` are split by structure hash: ``test_fraction`` of them is held out for
    evaluation, ``valid_fraction`` of them is MACE's validation set. With ``foundation_model`` the model
    is fine-tuned from that local file (its cutoff and size must match ``r_max_a`` and ``channels``), else a
    model of the given size is trained from scratch.
    """

    level: LevelName | None = Field(default=None, description="Level of the training labels (default: cheap level).")
    foundation_model: Path | None = Field(
        default=None,
        description="Local MACE foundation model to fine-tune, in capml's form (capml mlip convert FILE.model "
        "OUT.capml-mace.pt --trust); None trains from scratch.",
    )
    channels: PositiveInt = Field(default=256, description="Channels of the hidden features (MACE num_channels).")
    max_l: Annotated[int, Field(ge=0, le=3)] = Field(default=1, description="Symmetry order of the messages (max_L).")
    correlation: Annotated[int, Field(ge=1, le=4)] = Field(
        default=3, description="Correlation order of the messages (MACE correlation): body order minus one."
    )
    num_interactions: Annotated[int, Field(ge=1, le=4)] = Field(
        default=2, description="Message-passing layers (MACE num_interactions)."
    )
    r_max_a: PositiveFloat = Field(default=8.0, description="Cutoff radius (Å).")
    pair_repulsion: bool = Field(
        default=False, description="Add MACE's ZBL pair repulsion (keeps MD of a small model off short contacts)."
    )
    energy_weight: Annotated[float, Field(ge=0.0)] = Field(default=1.0, description="Loss weight of the energies.")
    forces_weight: Annotated[float, Field(ge=0.0)] = Field(default=150.0, description="Loss weight of the forces.")
    stress_weight: Annotated[float, Field(ge=0.0)] = Field(
        default=10.0,
        description="Loss weight of the stresses; > 0 needs a stress on every training structure, 0 trains "
        "without stress.",
    )
    valid_fraction: Annotated[float, Field(gt=0.0, lt=1.0)] = Field(
        default=0.05, description="Share of the structures in MACE's validation set (at least one structure)."
    )
    test_fraction: Annotated[float, Field(ge=0.0, lt=0.5)] = Field(
        default=0.1, description="Structures held out of training for evaluation."
    )
    split_seed: Annotated[int, Field(ge=0)] = Field(
        default=0,
        description="Seed of the train/validation/test split (a hash of seed and structure, stable as data grow).",
    )
    seed: Annotated[int, Field(ge=0)] = Field(default=1, description="Seed of MACE's trainer (MACE --seed).")
    max_epochs: PositiveInt = Field(default=200, description="Maximum training epochs (MACE max_num_epochs).")
    patience: PositiveInt = Field(default=50, description="Epochs without validation improvement before stopping.")
    batch_size: PositiveInt = Field(default=5, description="Batch size (structures) of training and validation.")
    learning_rate: PositiveFloat = Field(default=0.01, description="Learning rate (MACE lr).")
    ema_decay: Annotated[float, Field(ge=0.0, lt=1.0)] = Field(
        default=0.99, description="Exponential moving average of the weights (0: off)."
    )
    stage_two_fraction: Annotated[float, Field(ge=0.0, lt=1.0)] = Field(
        default=0.0,
        description="Last share of the epochs trained in MACE's stage two (energy weight 1000, forces 100, "
        "stress weight unchanged, learning rate 1e-3); 0: off (the paper's fixed weights).",
    )
    dtype: Literal["float32", "float64"] = Field(default="float64", description="Training precision.")
    device: Literal["cpu", "cuda", "auto"] = Field(
        default="auto",
        description="Device of the training, the phonon comparison and the phonons stage's harmonic force "
        "constants ('auto': CUDA when torch sees a GPU).",
    )
    validate_phonons: bool = Field(
        default=True,
        description="Compare the model's Γ-point phonons of the end-member supercells with the training level's "
        "(force constants from dataset.force_constants files, else computed at that level).",
    )

    _check_model = field_validator("foundation_model")(_input_path)


class DisorderSection(Section):
    """Stage 7 (``disorder``): inequivalent arrangements of the sublattice species per composition, relaxed with MACE.

    All symmetry-inequivalent arrangements when a composition has at most ``max_enumerated``, else a random
    sample of ``sample_size`` distinct ones (the paper: all up to 100, about 100 above 1,000). ``relax``:
    "cell" relaxes the cell parameters with fractional positions fixed (the paper), "full" also the positions.
    """

    max_enumerated: PositiveInt = Field(
        default=100,
        description="Enumerate all inequivalent arrangements of a composition when there are at most this many.",
    )
    sample_size: PositiveInt = Field(
        default=100,
        description="Otherwise: distinct arrangements sampled by random draws (at most 50 x this many draws; "
        "fewer arrangements if they run out).",
    )
    seed: Annotated[int, Field(ge=0)] = Field(default=0, description="Seed of the random sampling (per composition).")
    relax: Literal["cell", "full"] = Field(
        default="cell",
        description="'cell': cell parameters only, fractional positions fixed; 'full': cell and positions.",
    )
    fmax_ev_per_a: PositiveFloat = Field(
        default=0.05, description="BFGS convergence: largest force, cell stress included (eV/Å)."
    )
    max_steps: PositiveInt = Field(
        default=300, description="Maximum BFGS steps per relaxation (an unconverged one is recorded as such)."
    )
    workers: PositiveInt = Field(default=1, description="Relaxations in parallel (processes, one thread each).")
    device: Literal["cpu", "cuda", "auto"] = Field(
        default="cpu", description="Device of the MACE relaxations ('auto': CUDA when torch sees a GPU)."
    )


class PhononsSection(Section):
    """Stage 9 (``phonons``): harmonic phonons at 0 K and renormalised phonons of each MD run, with a verdict.

    Harmonic: phonopy + MACE; renormalised: DynaPhoPy on the MD velocities. The dynamic-stability verdict gates
    the band-gap stage.
    """

    displacement_a: PositiveFloat = Field(
        default=0.01,
        description="Finite displacement (Å) for the MACE force constants of each lowest-energy structure.",
    )
    resolution_thz: PositiveFloat = Field(
        default=0.05,
        description="Power-spectrum resolution (THz); raised to 1.05/(production time) for short runs.",
    )
    stability_tolerance_thz: PositiveFloat = Field(
        default=0.1, description="A non-acoustic renormalised mode at or below this (THz) counts as unstable."
    )
    max_site_offset_a: PositiveFloat | None = Field(
        default=None,
        description="If set (Å): a structure is also unstable when an atom's time-averaged MD position lies farther "
        "than this from its site (it sits in a distorted well); unset: the offset is stored and named in the reason.",
    )
    gate: bool = Field(
        default=True,
        description="Only (structure, temperature) pairs found dynamically stable are averaged in the bandgaps "
        "stage (every MD run then needs a verdict); false: all are.",
    )


class MDSection(Section):
    """Stage 8 (``dynamics``): Langevin MACE MD of each composition's lowest-energy structure, one run per temperature.

    Paper: 1 fs, friction 5e-3 fs⁻¹, 40 ps, Maxwell-Boltzmann start. Frames (positions, velocities, energies)
    are saved every ``save_every_steps``: DynaPhoPy's power spectra need a sampling interval well below the
    period of the fastest phonon (10 THz → 100 fs), so keep ``save_every_steps x timestep_fs`` ≤ 25 fs.
    """

    temperatures_k: list[Annotated[float, Field(gt=0.0, le=5000.0)]] = Field(
        default=[100.0, 200.0, 300.0, 400.0, 500.0, 600.0],
        min_length=1,
        description="MD temperatures (K > 0); the disorder stage also gives its probabilities at these.",
    )
    timestep_fs: Annotated[float, Field(gt=0.0, le=4.0)] = Field(
        default=1.0, description="Time step (fs); above 4 fs the Ag and S vibrations are not integrated stably."
    )
    friction_per_fs: PositiveFloat = Field(default=5e-3, description="Langevin friction (fs⁻¹).")
    duration_ps: PositiveFloat = Field(default=40.0, description="Length of each run, equilibration included (ps).")
    equilibration_ps: Annotated[float, Field(ge=0.0)] = Field(
        default=5.0, description="Discarded start of each run (ps)."
    )
    save_every_steps: Annotated[int, Field(ge=1, le=1000)] = Field(
        default=5, description="Steps between saved frames (save_every_steps x timestep_fs ≤ 25 fs)."
    )
    seed: Annotated[int, Field(ge=0)] = Field(
        default=0,
        description="Seed of the runs: each run's seed (Maxwell-Boltzmann start, Langevin noise) derives from it "
        "and the run's id.",
    )
    dtype: Literal["float32", "float64"] = Field(default="float32", description="MACE precision during MD.")
    device: Literal["cpu", "cuda", "auto"] = Field(
        default="cpu", description="Device of the MD ('auto': CUDA when torch sees a GPU)."
    )
    workers: PositiveInt = Field(
        default=1, description="MD runs (compositions x temperatures) in parallel (processes, one thread each)."
    )

    @model_validator(mode="after")
    def _consistent(self) -> MDSection:
        if self.equilibration_ps >= self.duration_ps:
            raise ValueError(
                f"equilibration_ps: must be shorter than duration_ps = {self.duration_ps} (got {self.equilibration_ps})"
            )
        if self.save_every_steps * self.timestep_fs > 25.0:
            raise ValueError(
                f"save_every_steps: x timestep_fs = {self.save_every_steps * self.timestep_fs:g} fs; frames must be "
                f"at most 25 fs apart for the phonon power spectra (Nyquist 20 THz): allowed save_every_steps ≤ "
                f"{int(25.0 // self.timestep_fs)}"
            )
        return self


class GapsSection(Section):
    """Stages 10-11 (``bandgaps``, ``modes``): Eg(0) and thermal averages of GNN gaps; frozen Γ-mode ΔEg/Eg.

    The GNN is the latest trained ensemble (high level after fine-tuning). Thermal gaps use MD snapshots after
    equilibration, ``snapshot_spacing`` decorrelation times apart (the run's measured decorrelation time).
    Reference DFT checks (Eg(0) and ΔEg of ``reference_modes`` Γ modes spanning the frequency range) run for the
    structures of ``reference_compositions`` only: they cost one calculation per structure (GPAW GLLB-SC: about
    5 min per 40-atom cell on one core).
    """

    mode_temperatures_k: list[Annotated[float, Field(gt=0.0, le=5000.0)]] = Field(
        default=[300.0, 600.0],
        min_length=1,
        description="Temperatures (K) of the frozen-mode thermal amplitudes; DFT checks at the highest.",
    )
    snapshot_spacing: Annotated[float, Field(ge=1.0, le=20.0)] = Field(
        default=2.0, description="Snapshots are this many decorrelation times apart (≥ 1)."
    )
    min_snapshots: Annotated[int, Field(ge=2)] = Field(
        default=4,
        description="Fewer uncorrelated snapshots than this: the run is still averaged, with a note in its reason "
        "(run the MD longer).",
    )
    batch_size: PositiveInt = Field(default=16, description="Graphs per GNN forward pass.")
    device: Literal["cpu", "cuda", "auto"] = Field(
        default="cpu", description="Device of the GNN in both stages ('auto': CUDA when torch sees a GPU)."
    )
    reference_level: LevelName | None = Field(
        default=None, description="Level of the DFT checks (None: reference.high_level)."
    )
    reference_compositions: list[Annotated[float, Field(ge=0.0, le=1.0)]] | None = Field(
        default=None,
        description="Compositions whose Eg(0) and mode ΔEg are also computed with DFT (None: the end members "
        "x = 0 and 1 among system.compositions; [] for none).",
    )
    reference_modes: Annotated[int, Field(ge=0, le=50)] = Field(
        default=3,
        description="Γ modes per checked structure, spread over the frequency range, whose ΔEg is also computed "
        "with DFT (two calculations each, ±u; 0: none).",
    )
    experiment: Path | None = Field(
        default=None,
        description="CSV of published gaps, stored for comparison by the bandgaps stage; columns composition_x, "
        "temperature_k, gap_ev, uncertainty_ev, kind ('experiment' or 'calculation'), source.",
    )

    _check_experiment = field_validator("experiment")(_input_path)


class ActiveLearningSection(Section):
    """Stage active-learning (after dynamics): MD frames outside MACE's training data are labelled, MACE retrained.

    Each round selects, per MD run of the current model, the first frames in which a species pair comes closer
    than ``distance_fraction`` x the shortest distance of that pair in the training structures, labels them at
    the level MACE trains on, retrains MACE, and redoes the disorder scan and the MD with the new model.
    """

    rounds: int = Field(default=0, ge=0, description="Rounds of select-label-retrain (0: the stage does nothing).")
    distance_fraction: float = Field(
        default=0.9,
        gt=0.0,
        le=1.0,
        description="A frame is outside the training data when a pair of species is closer than this fraction of "
        "the shortest distance of that pair in the training structures (pairs never within 4 Å in the training "
        "data: of 4 Å).",
    )
    max_frames_per_run: PositiveInt = Field(
        default=2, description="Frames selected per MD run and round (the first ones that leave the training data)."
    )
    min_separation_fs: float = Field(
        default=200.0, ge=0.0, description="Frames selected from one run are at least this far apart (fs)."
    )


class ExecutionSection(Section):
    """Where the fan-out stages (label, disorder, dynamics) run their jobs when the pipeline runs as a Prefect flow.

    The number of workers is each stage's own ``workers``; the store is always written by the flow alone.
    """

    task_runner: Literal["processes", "dask"] = Field(
        default="processes",
        description="'processes': local worker processes (Prefect's process pool; with one worker, disorder and "
        "dynamics run in the flow's process, labelling still in a child process); 'dask': a Dask cluster through "
        "prefect-dask (LocalCluster, SLURMCluster or a running scheduler).",
    )
    dask_address: str | None = Field(
        default=None,
        description="Address of a running Dask scheduler (e.g. 'tcp://10.1.2.3:8786'); None starts a cluster of "
        "dask_cluster_class for each fan-out stage.",
    )
    dask_cluster_class: str = Field(
        default="distributed.LocalCluster",
        description="Dotted class of the Dask cluster to start, e.g. 'distributed.LocalCluster' (gets the stage's "
        "workers, one thread each) or 'dask_jobqueue.SLURMCluster'.",
    )
    dask_cluster_kwargs: dict[str, Any] = Field(
        default_factory=dict,
        description="Keyword arguments of the cluster class (SLURMCluster: queue, account, cores, memory, walltime, "
        "job_extra_directives, ...).",
    )
    dask_adapt_maximum: PositiveInt | None = Field(
        default=None, description="Scale the cluster adaptively up to this many workers (None: fixed size)."
    )


class RunConfig(Section):
    """A whole capml run."""

    run: RunSection = Field(description="Identity of the run and where its results go.")
    system: SystemSection = Field(description="The solid solution studied.")
    dataset: DatasetSection = Field(default=DatasetSection(), description="Training structures (dataset stages).")
    reference: ReferenceSection = Field(default=ReferenceSection(), description="Reference levels (label stage).")
    gnn: GNNSection = Field(default=GNNSection(), description="Band-gap GNN (gnn stage).")
    mlip: MLIPSection = Field(default=MLIPSection(), description="MACE potential (mlip stage).")
    disorder: DisorderSection = Field(default=DisorderSection(), description="Arrangement scan (disorder stage).")
    phonons: PhononsSection = Field(default=PhononsSection(), description="Phonons and stability gate (phonons stage).")
    md: MDSection = Field(default=MDSection(), description="Molecular dynamics (dynamics stage).")
    gaps: GapsSection = Field(default=GapsSection(), description="Band gaps (bandgaps and modes stages).")
    active_learning: ActiveLearningSection = Field(
        default=ActiveLearningSection(), description="Active learning of MACE from MD frames."
    )
    execution: ExecutionSection = Field(default=ExecutionSection(), description="Where fan-out jobs run.")

    @model_validator(mode="after")
    def _gap_checks_in_compositions(self) -> RunConfig:
        missing = [
            x
            for x in self.gaps.reference_compositions or []
            if not any(math.isclose(x, c, abs_tol=1e-9) for c in self.system.compositions)
        ]
        if missing:
            raise ValueError(
                f"gaps.reference_compositions: {missing} not studied by the run; allowed: values of "
                f"system.compositions {self.system.compositions}"
            )
        return self

    def gap_check_compositions(self) -> list[float]:
        """Compositions checked with DFT in the gap stages: ``gaps.reference_compositions``, or the end members."""
        if self.gaps.reference_compositions is not None:
            return list(self.gaps.reference_compositions)
        return [x for x in self.system.compositions if x in (0.0, 1.0)]

    def is_gap_checked(self, composition_x: float) -> bool:
        """Whether the gap stages also compute this composition with DFT."""
        return any(math.isclose(composition_x, c, abs_tol=1e-9) for c in self.gap_check_compositions())
