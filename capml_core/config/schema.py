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

from pydantic import (
    Field,
    model_validator,
)

from capml_core.config.base import Name, Section
from capml_core.config.inputs import DatasetSection, ReferenceSection, SystemSection
from capml_core.config.stage_sections import (
    ActiveLearningSection,
    DisorderSection,
    ExecutionSection,
    GapsSection,
    GNNSection,
    MDSection,
    MLIPSection,
    PhononsSection,
)


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
        for field, values in (
            ("gaps.reference_compositions", self.gaps.reference_compositions),
            ("md.compositions", self.md.compositions),
        ):
            missing = [x for x in values or [] if not self.studies(x)]
            if missing:
                raise ValueError(
                    f"{field}: {missing} not studied by the run; allowed: values of system.compositions "
                    f"{self.system.compositions}"
                )
        for i, check in enumerate(self.gaps.dft_check):
            if not self.studies(check.composition_x):
                raise ValueError(
                    f"gaps.dft_check[{i}].composition_x: {check.composition_x} not studied by the run; allowed: "
                    f"values of system.compositions {self.system.compositions}"
                )
            unknown = [t for t in check.temperatures_k if not any(math.isclose(t, m) for m in self.md.temperatures_k)]
            if unknown:
                raise ValueError(
                    f"gaps.dft_check[{i}].temperatures_k: {unknown} are not MD temperatures; allowed: values of "
                    f"md.temperatures_k {self.md.temperatures_k}"
                )
        return self

    def dft_check_frames(self, composition_x: float, temperature_k: float) -> int:
        """Frames ``gaps.dft_check`` recomputes with DFT for this (x, T) (0: not checked)."""
        for check in self.gaps.dft_check:
            if math.isclose(check.composition_x, composition_x, abs_tol=1e-9) and any(
                math.isclose(t, temperature_k) for t in check.temperatures_k
            ):
                return check.frames
        return 0

    def has_eg0_dft(self, composition_x: float) -> bool:
        """Whether the cubic structure's Eg(0) of this composition is computed with DFT too.

        A composition of ``gaps.reference_compositions`` (or the end members), or one whose Eg(T) ``gaps.dft_check``
        checks: its checked ΔEg/Eg needs a DFT Eg(0) (one calculation).
        """
        return self.is_gap_checked(composition_x) or any(
            math.isclose(check.composition_x, composition_x, abs_tol=1e-9) for check in self.gaps.dft_check
        )

    def studies(self, composition_x: float) -> bool:
        """Whether ``composition_x`` is one of ``system.compositions`` (to 1e-9)."""
        return any(math.isclose(composition_x, c, abs_tol=1e-9) for c in self.system.compositions)

    def simulates(self, composition_x: float) -> bool:
        """Whether the dynamics stage runs MD of this composition (``md.compositions``; default: every one)."""
        chosen = self.md.compositions
        return chosen is None or any(math.isclose(composition_x, c, abs_tol=1e-9) for c in chosen)

    def gap_check_compositions(self) -> list[float]:
        """Compositions checked with DFT in the gap stages: ``gaps.reference_compositions``, or the end members."""
        if self.gaps.reference_compositions is not None:
            return list(self.gaps.reference_compositions)
        return [x for x in self.system.compositions if x in (0.0, 1.0)]

    def is_gap_checked(self, composition_x: float) -> bool:
        """Whether the gap stages also compute this composition with DFT."""
        return any(math.isclose(composition_x, c, abs_tol=1e-9) for c in self.gap_check_compositions())
