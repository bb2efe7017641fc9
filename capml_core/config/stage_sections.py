"""Config sections of the stages: GNN, MACE, disorder, phonons, MD, gaps, active learning, execution."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (
    Field,
    PositiveFloat,
    PositiveInt,
    field_validator,
    model_validator,
)

from capml_core.config.base import LevelName, Section, _input_path

GNNArchitectureName = Literal["paper", "three-layer", "four-layer", "mean-pool", "relu-output", "wide", "mace-kernel"]


class GNNSection(Section):
    """Stage 5 (``gnn``): GNN band-gap model, trained on the cheap level's gaps then fine-tuned on the high level's.

    ``architecture`` names one of :data:`capml_core.models.gnn.ARCHITECTURES` (paper: 2 GraphConv layers of 64, max
    pool, dropout 0.4, sigmoid output), or ``mace-kernel``: a kernel ridge head on the node descriptors of the
    project's newest MACE model (:mod:`capml_core.models.gap_head`; the high level learnt as a correction to the
    cheap one, hyperparameters by cross-validation on the training split, each member on a different 80 % of it),
    which needs a trained MACE model and ignores the epochs, learning rates and batch sizes.
    """

    architecture: GNNArchitectureName = Field(
        default="paper",
        description="Model: 'paper', or a variant with 3 or 4 graph layers, mean pooling, ReLU output or 128 "
        "channels ('wide'), or 'mace-kernel' (a kernel head on MACE descriptors); the search's best replaces it "
        "when search_architectures is set.",
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
    md_frame_focus: bool = Field(
        default=False,
        description="mace-kernel: with at least 5 MD frames (kind md-frame) among a level's training structures, "
        "choose the head's settings by its cross-validated error on those frames (where the model is used) and "
        "let the other structures (cubic-cell displacements) be regularised up to 100x more. It trades accuracy "
        "on the cubic cell (displacements and Eg(0): 0.1 eV in the study) for accuracy on MD frames (0.005 eV), so "
        "a search that ranks on the whole validation split may then prefer a network: use it with architecture = "
        "'mace-kernel' and no search.",
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
    max_md_frame_round: Annotated[int, Field(ge=0)] | None = Field(
        default=None,
        description="MD frames of active-learning rounds above this are not trained on (default: every round): "
        "MACE met its targets and later rounds add frames for the gap model only. The model's id depends on the "
        "structures trained on, not on this setting.",
    )
    seed: Annotated[int, Field(ge=0)] = Field(default=1, description="Seed of MACE's trainer (MACE --seed).")
    committee_size: PositiveInt = Field(
        default=1,
        description="MACE models trained on the same data (the first is the one every stage uses; member i adds i "
        "to seed and split_seed): their disagreement on MD frames is the uncertainty active learning selects by.",
    )
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
    compositions: list[float] | None = Field(
        default=None,
        min_length=1,
        description="Simulate only these compositions (values of system.compositions; default: every one). Splits a "
        "long study into parts that each run MD and its analysis (e.g. one machine session each); the runs of the "
        "others stay in the store.",
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


class GapDFTCheck(Section):
    """One composition's thermal averages to recompute with DFT on the MD frames the gap model averaged.

    For every temperature in ``temperatures_k`` (each must be an MD temperature), ``frames`` uncorrelated
    production frames of that MD run (``gap_snapshots.uncorrelated``, spread evenly over the run; never trained on)
    are recomputed at ``gaps.reference_level``; the stage stores both gaps per frame and compares the averages as
    a paired difference.
    """

    composition_x: Annotated[float, Field(ge=0.0, le=1.0)] = Field(description="Composition x (one of the run's).")
    temperatures_k: list[Annotated[float, Field(gt=0.0, le=5000.0)]] = Field(
        min_length=1, description="MD temperatures (K) whose Eg(T) is checked."
    )
    frames: Annotated[int, Field(ge=2, le=100)] = Field(
        default=6, description="Frames recomputed with DFT per temperature (GPAW GLLB-SC: 2-5 min each here)."
    )


class GapsSection(Section):
    """Stages 10-11 (``bandgaps``, ``modes``): Eg(0) and thermal averages of GNN gaps; frozen Γ-mode ΔEg/Eg.

    The gap model is the latest trained ensemble (high level after fine-tuning). Thermal gaps average the gap
    series along each MD run after equilibration (every ``series_stride_fs``), with errors from the series' own
    autocorrelation; frames ``snapshot_spacing`` of its autocorrelation times apart are the uncorrelated ones.
    Reference DFT checks (Eg(0) and ΔEg of ``reference_modes`` Γ modes spanning the frequency range) run for the
    structures of ``reference_compositions`` only: they cost one calculation per structure (GPAW GLLB-SC: about
    5 min per 40-atom cell on one core).
    """

    mode_temperatures_k: list[Annotated[float, Field(gt=0.0, le=5000.0)]] = Field(
        default=[300.0, 600.0],
        min_length=1,
        description="Temperatures (K) of the frozen-mode thermal amplitudes; DFT checks at the highest.",
    )
    series_stride_fs: Annotated[float, Field(gt=0.0, le=1000.0)] = Field(
        default=20.0,
        description="The gap is evaluated along the production part of every MD run every this many fs (at "
        "least every saved frame); Eg(T) is the mean of that series, its error from the series' own "
        "autocorrelation.",
    )
    snapshot_spacing: Annotated[float, Field(ge=1.0, le=20.0)] = Field(
        default=2.0,
        description="Uncorrelated snapshots (those a DFT check recomputes) are this many of the gap series' "
        "integrated autocorrelation times apart (≥ 1).",
    )
    min_snapshots: Annotated[int, Field(ge=2)] = Field(
        default=4,
        description="Fewer independent samples (series length / its autocorrelation time) than this: the run is "
        "still averaged, with a note in its reason (run the MD longer).",
    )
    equilibration_sigmas: Annotated[float, Field(gt=0.0, le=10.0)] = Field(
        default=2.0,
        description="A run whose gap series' second half differs from its first by more than this many errors of "
        "the difference is flagged 'not equilibrated' (averaged, never silently).",
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
        "x = 0 and 1 among system.compositions; [] for none). A composition named by dft_check gets its cubic "
        "Eg(0) in DFT as well (the reference of its checked ΔEg/Eg).",
    )
    mode_floor_thz: Annotated[float, Field(ge=0.0, le=5.0)] = Field(
        default=0.5,
        description="Real Γ modes softer than this (THz) are reported, not frozen: their thermal amplitude "
        "(∝ 1/frequency) leaves the harmonic regime.",
    )
    mode_band_edges_thz: list[Annotated[float, Field(ge=0.0, le=100.0)]] = Field(
        default=[0.5, 1.0, 2.0, 3.0, 4.0, 6.0, 10.0],
        min_length=1,
        description="Edges (THz) of the frequency bands whose modes are frozen in all at once (the last band is "
        "open above).",
    )
    mode_harmonic_limit_a: Annotated[float, Field(gt=0.0, le=2.0)] = Field(
        default=0.2,
        description="A frozen mode, subspace or band whose rms displacement exceeds this (Å) is flagged beyond "
        "the harmonic regime.",
    )
    mode_resolution_ev: Annotated[float, Field(ge=0.0, le=1.0)] = Field(
        default=0.01,
        description="A gap change counts as resolved by the gap model when larger than this (eV) and than twice "
        "the ensemble's spread of it.",
    )
    reference_bands: Annotated[int, Field(ge=0, le=20)] = Field(
        default=2,
        description="Frequency bands (largest |ΔEg|) per checked structure whose ΔEg is also computed with DFT "
        "(two calculations each; 0: none).",
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
    dft_check: list[GapDFTCheck] = Field(
        default=[],
        description="Thermal averages recomputed with DFT on the same MD frames ([] for none): per composition, "
        "the temperatures and the number of frames.",
    )
    estimate_samples: Annotated[int, Field(ge=0, le=1000)] = Field(
        default=16,
        description="Configurations of the harmonic canonical ensemble per (composition, temperature) for the "
        "independent estimates beside the MD average (classical and quantum; 0: no estimates).",
    )
    estimate_temperatures_k: list[Annotated[float, Field(gt=0.0, le=5000.0)]] | None = Field(
        default=None, description="Temperatures (K) of the independent estimates (None: md.temperatures_k)."
    )
    estimate_floor_thz: Annotated[float, Field(ge=0.0, le=5.0)] = Field(
        default=0.5,
        description="Harmonic modes softer than this (THz) are left out of the estimates' sampling (their "
        "amplitude grows as 1/frequency); imaginary modes are sampled at |frequency| and, to show the effect, "
        "also left out.",
    )
    estimate_dft: bool = Field(
        default=False,
        description="Also compute the special displacements of the reference compositions at the reference level "
        "(two DFT calculations per composition, temperature and imaginary-mode treatment).",
    )
    estimate_dft_temperatures_k: list[Annotated[float, Field(gt=0.0, le=5000.0)]] | None = Field(
        default=None,
        description="With estimate_dft: the temperatures (K) whose special displacements are computed with DFT "
        "(None: every estimate temperature); the model's estimates stay at every temperature.",
    )
    dft_check_tolerance_ev: Annotated[float, Field(gt=0.0, le=1.0)] = Field(
        default=0.05,
        description="A checked Eg(T) is flagged when its model-minus-DFT difference is larger than this (eV) and "
        "than twice its uncertainty; a check whose uncertainty exceeds it is 'too noisy to decide'.",
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
    frames_per_round: PositiveInt = Field(
        default=24,
        description="Frames a round of uncertainty-driven selection (capml al select) adds, over all MD runs.",
    )
    uncertainty_stride_fs: float = Field(
        default=50.0, gt=0.0, description="Spacing (fs) of the production frames whose uncertainty is evaluated."
    )
    candidate_factor: float = Field(
        default=3.0,
        ge=1.0,
        description="The candidate_factor x frames_per_round most uncertain frames enter the diversity selection "
        "(farthest points in MACE's descriptor space); 1: uncertainty alone.",
    )
    heldout_set: str = Field(
        default="md-heldout", description="Selection of held-out MD frames every round is measured on."
    )
    target_energy_mae_mev_per_atom: float = Field(
        default=5.0, gt=0.0, description="Stop target: MACE energy MAE on the held-out frames (meV/atom)."
    )
    target_force_ratio: float = Field(
        default=1.5, gt=0.0, description="Stop target: MACE force MAE on the held-out frames / on its test split."
    )
    target_gap_high_mae_ev: float = Field(
        default=0.08, gt=0.0, description="Stop target: GNN gap MAE at the high level on the held-out frames (eV)."
    )
    target_gap_high_mean_error_ev: float = Field(
        default=0.03, gt=0.0, description="Stop target: |mean GNN - DFT| at the high level on the held-out frames (eV)."
    )
    target_gap_cheap_mae_ev: float = Field(
        default=0.06, gt=0.0, description="Stop target: GNN gap MAE at the cheap level on the held-out frames (eV)."
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
