"""Store schema: table definitions, migrations, version."""

from __future__ import annotations

import logging

logger = logging.getLogger(__name__)


STORE_FILENAME = "capml.duckdb"


ARTIFACTS_DIRNAME = "artifacts"


#: Version of the schema this code writes. Bump it and append a migration to change the schema.
SCHEMA_VERSION = 16


#: Ensemble ids of GNN baselines (``gnn.baseline_architecture``) start with this: comparisons, never the model
#: later stages use.
GNN_BASELINE_PREFIX = "baseline-"


#: SQL condition on ``mlip_models`` rows: models the stages use (not foundation files, not committee members).
PRIMARY_MACE_SQL = "kind <> 'foundation' AND committee_of IS NULL"


_SCHEMA_V1 = [
    "CREATE TABLE schema_meta (key VARCHAR PRIMARY KEY, value VARCHAR NOT NULL)",
    """CREATE TABLE runs (
        run_id VARCHAR PRIMARY KEY, name VARCHAR NOT NULL, config_path VARCHAR, config_hash VARCHAR NOT NULL,
        config_json VARCHAR, code_version VARCHAR NOT NULL, packages_json VARCHAR, status VARCHAR NOT NULL,
        started_at TIMESTAMP NOT NULL, finished_at TIMESTAMP, message VARCHAR)""",
    """CREATE TABLE stages (
        run_id VARCHAR NOT NULL, stage VARCHAR NOT NULL, status VARCHAR NOT NULL, started_at TIMESTAMP,
        finished_at TIMESTAMP, message VARCHAR, PRIMARY KEY (run_id, stage))""",
    """CREATE TABLE structures (
        structure_hash VARCHAR PRIMARY KEY, formula VARCHAR NOT NULL, n_atoms INTEGER NOT NULL,
        composition_x DOUBLE, kind VARCHAR NOT NULL, temperature_k DOUBLE, amplitude_a DOUBLE, seed BIGINT,
        source VARCHAR, run_id VARCHAR, numbers INTEGER[] NOT NULL, positions_a DOUBLE[] NOT NULL,
        cell_a DOUBLE[] NOT NULL, pbc BOOLEAN[] NOT NULL, created_at TIMESTAMP NOT NULL)""",
    """CREATE TABLE levels (
        level VARCHAR PRIMARY KEY, backend VARCHAR NOT NULL, settings_json VARCHAR, created_at TIMESTAMP NOT NULL)""",
    """CREATE TABLE labels (
        structure_hash VARCHAR NOT NULL, level VARCHAR NOT NULL, status VARCHAR NOT NULL, energy_ev DOUBLE,
        forces_ev_per_a DOUBLE[], stress_ev_per_a3 DOUBLE[], gap_ev DOUBLE, extras_json VARCHAR, error VARCHAR,
        wall_time_s DOUBLE, source VARCHAR, run_id VARCHAR, created_at TIMESTAMP NOT NULL,
        PRIMARY KEY (structure_hash, level))""",
    """CREATE TABLE artifacts (
        artifact_id VARCHAR PRIMARY KEY, run_id VARCHAR, kind VARCHAR NOT NULL, relpath VARCHAR NOT NULL,
        sha256 VARCHAR NOT NULL, n_bytes BIGINT NOT NULL, meta_json VARCHAR, created_at TIMESTAMP NOT NULL)""",
    """CREATE VIEW labelled_structures AS
        SELECT s.structure_hash, s.formula, s.n_atoms, s.composition_x, s.kind, s.temperature_k, s.amplitude_a,
               l.level, l.status, l.energy_ev, l.energy_ev / s.n_atoms AS energy_ev_per_atom, l.gap_ev, l.source
        FROM structures s JOIN labels l USING (structure_hash)""",
]


_SCHEMA_V2 = [
    """CREATE TABLE structure_sets (
        set_name VARCHAR NOT NULL, structure_hash VARCHAR NOT NULL, level VARCHAR NOT NULL, position INTEGER,
        PRIMARY KEY (set_name, structure_hash))""",
]


_SCHEMA_V3 = [
    """CREATE TABLE gnn_models (
        model_id VARCHAR PRIMARY KEY, ensemble_id VARCHAR NOT NULL, run_id VARCHAR,
        architecture VARCHAR NOT NULL, cheap_level VARCHAR NOT NULL,
        high_level VARCHAR, ensemble_index INTEGER NOT NULL, seed BIGINT NOT NULL, relpath VARCHAR NOT NULL,
        settings_json VARCHAR, created_at TIMESTAMP NOT NULL)""",
    """CREATE TABLE gnn_metrics (
        model_id VARCHAR NOT NULL, stage VARCHAR NOT NULL, split VARCHAR NOT NULL, n INTEGER NOT NULL, r2 DOUBLE,
        mae_ev DOUBLE, rmse_ev DOUBLE, max_error_ev DOUBLE, PRIMARY KEY (model_id, stage, split))""",
    """CREATE TABLE gnn_predictions (
        model_id VARCHAR NOT NULL, stage VARCHAR NOT NULL, structure_hash VARCHAR NOT NULL, level VARCHAR NOT NULL,
        split VARCHAR NOT NULL, reference_ev DOUBLE NOT NULL, predicted_ev DOUBLE NOT NULL,
        PRIMARY KEY (model_id, stage, structure_hash))""",
    """CREATE TABLE gnn_trials (
        search_id VARCHAR NOT NULL, trial INTEGER NOT NULL, architecture VARCHAR NOT NULL, learning_rate DOUBLE,
        batch_size INTEGER, level VARCHAR NOT NULL, valid_mae_ev DOUBLE, valid_rmse_ev DOUBLE, epochs_run INTEGER,
        rank INTEGER, created_at TIMESTAMP NOT NULL, PRIMARY KEY (search_id, trial))""",
    """CREATE TABLE gnn_learning_curve (
        curve_id VARCHAR NOT NULL, level VARCHAR NOT NULL, architecture VARCHAR NOT NULL, n_train INTEGER NOT NULL,
        test_mae_ev DOUBLE, test_rmse_ev DOUBLE, test_r2 DOUBLE, created_at TIMESTAMP NOT NULL,
        PRIMARY KEY (curve_id, n_train))""",
]


_SCHEMA_V4 = [
    """CREATE TABLE mlip_models (
        model_id VARCHAR PRIMARY KEY, run_id VARCHAR, kind VARCHAR NOT NULL, level VARCHAR,
        foundation_model_id VARCHAR, path VARCHAR NOT NULL, sha256 VARCHAR NOT NULL, r_max_a DOUBLE,
        channels INTEGER, max_l INTEGER, correlation INTEGER, n_train INTEGER, n_valid INTEGER, n_test INTEGER,
        epochs INTEGER, train_seconds DOUBLE, settings_json VARCHAR, created_at TIMESTAMP NOT NULL)""",
    """CREATE TABLE mlip_metrics (
        model_id VARCHAR NOT NULL, evaluated_on VARCHAR NOT NULL, quantity VARCHAR NOT NULL, split VARCHAR NOT NULL,
        unit VARCHAR NOT NULL, n INTEGER NOT NULL, r2 DOUBLE, mae DOUBLE, rmse DOUBLE, max_error DOUBLE,
        created_at TIMESTAMP NOT NULL, PRIMARY KEY (model_id, evaluated_on, quantity, split))""",
    """CREATE TABLE mlip_predictions (
        model_id VARCHAR NOT NULL, evaluated_on VARCHAR NOT NULL, structure_hash VARCHAR NOT NULL,
        level VARCHAR NOT NULL, split VARCHAR NOT NULL, n_atoms INTEGER NOT NULL,
        energy_reference_ev_per_atom DOUBLE, energy_predicted_ev_per_atom DOUBLE,
        forces_reference_ev_per_a DOUBLE[], forces_predicted_ev_per_a DOUBLE[],
        stress_reference_ev_per_a3 DOUBLE[], stress_predicted_ev_per_a3 DOUBLE[],
        created_at TIMESTAMP NOT NULL, PRIMARY KEY (model_id, evaluated_on, structure_hash))""",
    """CREATE TABLE mlip_phonons (
        model_id VARCHAR NOT NULL, end_member VARCHAR NOT NULL, reference VARCHAR NOT NULL, n_modes INTEGER NOT NULL,
        mae_thz DOUBLE, rmse_thz DOUBLE, r2 DOUBLE, max_error_thz DOUBLE, n_imaginary_reference INTEGER,
        n_imaginary_model INTEGER, min_frequency_reference_thz DOUBLE, min_frequency_model_thz DOUBLE,
        artifact_id VARCHAR, created_at TIMESTAMP NOT NULL, PRIMARY KEY (model_id, end_member))""",
]


_SCHEMA_V5 = [
    """CREATE TABLE disorder_scans (
        scan_id VARCHAR PRIMARY KEY, run_id VARCHAR, model_id VARCHAR, relax VARCHAR NOT NULL, n_sites INTEGER NOT NULL,
        n_permutations INTEGER NOT NULL, settings_json VARCHAR, created_at TIMESTAMP NOT NULL)""",
    """CREATE TABLE disorder_compositions (
        scan_id VARCHAR NOT NULL, composition_x DOUBLE NOT NULL, n_first INTEGER NOT NULL,
        n_labellings DOUBLE NOT NULL, n_inequivalent DOUBLE NOT NULL, selection VARCHAR NOT NULL,
        n_selected INTEGER NOT NULL, created_at TIMESTAMP NOT NULL, PRIMARY KEY (scan_id, composition_x))""",
    """CREATE TABLE disorder_arrangements (
        scan_id VARCHAR NOT NULL, composition_x DOUBLE NOT NULL, arrangement VARCHAR NOT NULL,
        multiplicity BIGINT NOT NULL, created_at TIMESTAMP NOT NULL,
        PRIMARY KEY (scan_id, composition_x, arrangement))""",
    """CREATE TABLE disorder_relaxations (
        scan_id VARCHAR NOT NULL, composition_x DOUBLE NOT NULL, arrangement VARCHAR NOT NULL,
        structure_hash VARCHAR NOT NULL, n_atoms INTEGER NOT NULL, energy_ev DOUBLE NOT NULL,
        energy_ev_per_atom DOUBLE NOT NULL, converged BOOLEAN NOT NULL, steps INTEGER NOT NULL,
        max_force_ev_per_a DOUBLE, volume_a3 DOUBLE NOT NULL, cell_a DOUBLE[] NOT NULL, wall_time_s DOUBLE,
        created_at TIMESTAMP NOT NULL, PRIMARY KEY (scan_id, composition_x, arrangement))""",
    """CREATE TABLE disorder_probabilities (
        scan_id VARCHAR NOT NULL, composition_x DOUBLE NOT NULL, arrangement VARCHAR NOT NULL,
        temperature_k DOUBLE NOT NULL, probability DOUBLE NOT NULL, created_at TIMESTAMP NOT NULL,
        PRIMARY KEY (scan_id, composition_x, arrangement, temperature_k))""",
]


_SCHEMA_V6 = [
    """CREATE TABLE md_runs (
        md_id VARCHAR PRIMARY KEY, run_id VARCHAR, model_id VARCHAR NOT NULL, structure_hash VARCHAR NOT NULL,
        composition_x DOUBLE, temperature_k DOUBLE NOT NULL, path VARCHAR NOT NULL, n_steps INTEGER NOT NULL,
        n_frames INTEGER NOT NULL, complete BOOLEAN NOT NULL, wall_time_s DOUBLE, steps_per_s DOUBLE,
        mean_temperature_k DOUBLE, std_temperature_k DOUBLE, drift_mev_per_atom_per_ps DOUBLE, msd_json VARCHAR,
        max_msd_a2 DOUBLE, min_distance_a DOUBLE, decorrelation_fs DOUBLE, status VARCHAR NOT NULL, problems VARCHAR,
        settings_json VARCHAR, created_at TIMESTAMP NOT NULL)""",
]


_SCHEMA_V7 = [
    """CREATE TABLE phonon_harmonic (
        structure_hash VARCHAR NOT NULL, model_id VARCHAR NOT NULL, displacement_a DOUBLE NOT NULL,
        composition_x DOUBLE, n_modes INTEGER NOT NULL, n_imaginary_gamma INTEGER NOT NULL, min_frequency_thz DOUBLE,
        imaginary_branches_json VARCHAR, artifact_id VARCHAR NOT NULL, run_id VARCHAR, created_at TIMESTAMP NOT NULL,
        PRIMARY KEY (structure_hash, model_id, displacement_a))""",
]


_SCHEMA_V8 = [
    """CREATE TABLE phonon_anharmonic (
        md_id VARCHAR PRIMARY KEY, structure_hash VARCHAR NOT NULL, composition_x DOUBLE, temperature_k DOUBLE NOT NULL,
        stable BOOLEAN NOT NULL, passes_gate BOOLEAN NOT NULL, reason VARCHAR, n_modes INTEGER,
        n_harmonic_imaginary INTEGER, min_renormalised_thz DOUBLE, median_linewidth_thz DOUBLE,
        thermostat_broadening_thz DOUBLE, resolution_thz DOUBLE, artifact_id VARCHAR, run_id VARCHAR,
        created_at TIMESTAMP NOT NULL)""",
]


_SCHEMA_V9 = [
    """CREATE TABLE gap_static (
        structure_hash VARCHAR NOT NULL, ensemble_id VARCHAR NOT NULL, composition_x DOUBLE, level VARCHAR NOT NULL,
        gap_ev DOUBLE NOT NULL, gap_std_ev DOUBLE, model_gaps_ev DOUBLE[], reference_level VARCHAR,
        reference_gap_ev DOUBLE, run_id VARCHAR, created_at TIMESTAMP NOT NULL,
        PRIMARY KEY (structure_hash, ensemble_id))""",
    """CREATE TABLE gap_thermal (
        md_id VARCHAR NOT NULL, ensemble_id VARCHAR NOT NULL, structure_hash VARCHAR NOT NULL, composition_x DOUBLE,
        temperature_k DOUBLE NOT NULL, level VARCHAR NOT NULL, passes_gate BOOLEAN NOT NULL, reason VARCHAR,
        decorrelation_fs DOUBLE, spacing_fs DOUBLE, n_snapshots INTEGER, mean_gap_ev DOUBLE,
        statistical_error_ev DOUBLE, model_error_ev DOUBLE, error_ev DOUBLE, static_gap_ev DOUBLE, delta_ev DOUBLE,
        delta_error_ev DOUBLE, relative_change DOUBLE, relative_error DOUBLE, run_id VARCHAR,
        created_at TIMESTAMP NOT NULL, PRIMARY KEY (md_id, ensemble_id))""",
    """CREATE TABLE gap_snapshots (
        md_id VARCHAR NOT NULL, ensemble_id VARCHAR NOT NULL, frame INTEGER NOT NULL, time_fs DOUBLE NOT NULL,
        gap_ev DOUBLE NOT NULL, gap_std_ev DOUBLE, created_at TIMESTAMP NOT NULL,
        PRIMARY KEY (md_id, ensemble_id, frame))""",
    """CREATE TABLE gap_published (
        file_sha VARCHAR NOT NULL, "row" INTEGER NOT NULL, file VARCHAR, composition_x DOUBLE NOT NULL,
        temperature_k DOUBLE NOT NULL, gap_ev DOUBLE NOT NULL, uncertainty_ev DOUBLE, kind VARCHAR NOT NULL,
        source VARCHAR, run_id VARCHAR, created_at TIMESTAMP NOT NULL, PRIMARY KEY (file_sha, "row"))""",
    """CREATE TABLE gap_modes (
        structure_hash VARCHAR NOT NULL, ensemble_id VARCHAR NOT NULL, temperature_k DOUBLE NOT NULL,
        mode INTEGER NOT NULL, composition_x DOUBLE, level VARCHAR NOT NULL, frequency_thz DOUBLE NOT NULL,
        status VARCHAR NOT NULL, rms_displacement_a DOUBLE, max_displacement_a DOUBLE, dominant VARCHAR,
        shares_json VARCHAR, gap0_ev DOUBLE, gap_plus_ev DOUBLE, gap_minus_ev DOUBLE, delta_ev DOUBLE,
        delta_std_ev DOUBLE, relative_change DOUBLE, reference_level VARCHAR, plus_hash VARCHAR, minus_hash VARCHAR,
        reference_gap0_ev DOUBLE, reference_gap_plus_ev DOUBLE, reference_gap_minus_ev DOUBLE,
        reference_delta_ev DOUBLE, reference_relative_change DOUBLE, run_id VARCHAR, created_at TIMESTAMP NOT NULL,
        PRIMARY KEY (structure_hash, ensemble_id, temperature_k, mode))""",
]


_SCHEMA_V10 = [  # the settings a derived row was computed with: other settings -> the row is recomputed
    "ALTER TABLE phonon_anharmonic ADD COLUMN settings_key VARCHAR",
    "ALTER TABLE gap_thermal ADD COLUMN settings_key VARCHAR",
    "ALTER TABLE gap_modes ADD COLUMN settings_key VARCHAR",
    """CREATE TABLE active_learning_frames (
        model_id VARCHAR NOT NULL, md_id VARCHAR NOT NULL, frame INTEGER NOT NULL, round INTEGER NOT NULL,
        time_fs DOUBLE, composition_x DOUBLE, temperature_k DOUBLE, pair VARCHAR, distance_a DOUBLE,
        training_distance_a DOUBLE, structure_hash VARCHAR NOT NULL, level VARCHAR NOT NULL, run_id VARCHAR,
        created_at TIMESTAMP NOT NULL, PRIMARY KEY (model_id, md_id, frame))""",
]


_SCHEMA_V11 = [  # how far the MD's time-averaged structure sits from the analysed one's sites
    "ALTER TABLE phonon_anharmonic ADD COLUMN max_site_offset_a DOUBLE",
    "ALTER TABLE phonon_anharmonic ADD COLUMN site_offset_atom VARCHAR",
]


_SCHEMA_V12 = [  # MD frames as data: provenance of each frame, held-out frames never trained on
    """CREATE TABLE md_frames (
        structure_hash VARCHAR PRIMARY KEY, md_id VARCHAR NOT NULL, frame INTEGER NOT NULL, time_fs DOUBLE,
        composition_x DOUBLE, temperature_k DOUBLE, model_id VARCHAR NOT NULL, held_out BOOLEAN NOT NULL,
        selection VARCHAR NOT NULL, round INTEGER NOT NULL, seed BIGINT, run_id VARCHAR,
        created_at TIMESTAMP NOT NULL)""",
]


_SCHEMA_V13 = [  # who runs what: a run's process (pid, host), claims of structures being labelled
    "ALTER TABLE runs ADD COLUMN pid INTEGER",
    "ALTER TABLE runs ADD COLUMN host VARCHAR",
    """CREATE TABLE label_claims (
        structure_hash VARCHAR NOT NULL, level VARCHAR NOT NULL, pid INTEGER NOT NULL, host VARCHAR NOT NULL,
        claimed_at TIMESTAMP NOT NULL, PRIMARY KEY (structure_hash, level))""",
]


_SCHEMA_V14 = [  # active learning by uncertainty: MACE committees, per-frame disagreement, rounds
    "ALTER TABLE mlip_models ADD COLUMN committee_of VARCHAR",
    """CREATE TABLE md_uncertainty (
        uncertainty_id VARCHAR NOT NULL, md_id VARCHAR NOT NULL, frame INTEGER NOT NULL, time_fs DOUBLE,
        composition_x DOUBLE, temperature_k DOUBLE, model_id VARCHAR NOT NULL, committee_size INTEGER NOT NULL,
        energy_std_mev_per_atom DOUBLE, force_std_mean_ev_per_a DOUBLE, force_std_max_ev_per_a DOUBLE,
        ensemble_id VARCHAR, ensemble_size INTEGER, gap_mean_ev DOUBLE, gap_std_ev DOUBLE, descriptor DOUBLE[],
        created_at TIMESTAMP NOT NULL, PRIMARY KEY (uncertainty_id, md_id, frame))""",
    """CREATE TABLE active_learning_rounds (
        round INTEGER NOT NULL, model_id VARCHAR NOT NULL, ensemble_id VARCHAR, committee_json VARCHAR,
        frames_added INTEGER NOT NULL, frames_total INTEGER NOT NULL, dft_calls INTEGER NOT NULL,
        dft_failed INTEGER NOT NULL, dft_cpu_h DOUBLE NOT NULL, training_cpu_h DOUBLE,
        mace_energy_mae_mev_per_atom DOUBLE, mace_energy_mean_error_mev_per_atom DOUBLE,
        mace_force_mae_ev_per_a DOUBLE, mace_test_force_mae_ev_per_a DOUBLE, gnn_cheap_mae_ev DOUBLE,
        gnn_high_mae_ev DOUBLE, gnn_high_mean_error_ev DOUBLE, n_heldout_cheap INTEGER, n_heldout_high INTEGER,
        targets_met BOOLEAN NOT NULL, targets_json VARCHAR, run_id VARCHAR, created_at TIMESTAMP NOT NULL,
        PRIMARY KEY (round, model_id))""",
]


_SCHEMA_V15 = [  # the static reference: minima found by quenching MD frames
    """CREATE TABLE static_minima (
        model_id VARCHAR NOT NULL, scan_id VARCHAR, composition_x DOUBLE NOT NULL, source VARCHAR NOT NULL,
        md_temperature_k DOUBLE, structure_hash VARCHAR NOT NULL, energy_ev_per_atom DOUBLE NOT NULL,
        converged BOOLEAN, steps INTEGER, max_force_ev_per_a DOUBLE, volume_a3 DOUBLE, space_group VARCHAR,
        created_at TIMESTAMP NOT NULL, PRIMARY KEY (model_id, composition_x, source))""",
]


_SCHEMA_V16 = [  # error bars that hold: the gap series' own autocorrelation, equilibration, Eg(0) of the lowest minimum
    "ALTER TABLE gap_thermal ADD COLUMN tau_snapshots DOUBLE",
    "ALTER TABLE gap_thermal ADD COLUMN gap_tau_fs DOUBLE",
    "ALTER TABLE gap_thermal ADD COLUMN n_effective DOUBLE",
    "ALTER TABLE gap_thermal ADD COLUMN error_method VARCHAR",
    "ALTER TABLE gap_thermal ADD COLUMN half_difference_ev DOUBLE",
    "ALTER TABLE gap_thermal ADD COLUMN half_difference_error_ev DOUBLE",
    "ALTER TABLE gap_thermal ADD COLUMN equilibrated BOOLEAN",
    "ALTER TABLE gap_thermal ADD COLUMN n_uncorrelated INTEGER",
    "ALTER TABLE gap_thermal ADD COLUMN lowest_static_gap_ev DOUBLE",
    "ALTER TABLE gap_thermal ADD COLUMN lowest_delta_ev DOUBLE",
    "ALTER TABLE gap_thermal ADD COLUMN lowest_relative_change DOUBLE",
    "ALTER TABLE gap_snapshots ADD COLUMN uncorrelated BOOLEAN",
    "ALTER TABLE gap_static ADD COLUMN structure_kind VARCHAR",
    "ALTER TABLE gap_static ADD COLUMN structure_source VARCHAR",
    """CREATE TABLE gap_dft_frames (
        md_id VARCHAR NOT NULL, ensemble_id VARCHAR NOT NULL, frame INTEGER NOT NULL, time_fs DOUBLE,
        structure_hash VARCHAR NOT NULL, level VARCHAR NOT NULL, model_gap_ev DOUBLE NOT NULL, dft_gap_ev DOUBLE,
        created_at TIMESTAMP NOT NULL, PRIMARY KEY (md_id, ensemble_id, frame))""",
    """CREATE TABLE gap_dft_checks (
        md_id VARCHAR NOT NULL, ensemble_id VARCHAR NOT NULL, composition_x DOUBLE, temperature_k DOUBLE,
        level VARCHAR NOT NULL, n_requested INTEGER NOT NULL, n_frames INTEGER NOT NULL, model_gap_ev DOUBLE,
        dft_gap_ev DOUBLE, dft_error_ev DOUBLE, difference_ev DOUBLE, difference_error_ev DOUBLE,
        tolerance_ev DOUBLE NOT NULL, verdict VARCHAR NOT NULL, note VARCHAR, created_at TIMESTAMP NOT NULL,
        PRIMARY KEY (md_id, ensemble_id))""",
    """CREATE TABLE gap_estimates (
        ensemble_id VARCHAR NOT NULL, structure_hash VARCHAR NOT NULL, composition_x DOUBLE,
        temperature_k DOUBLE NOT NULL, method VARCHAR NOT NULL, imaginary_treatment VARCHAR NOT NULL,
        n_configurations INTEGER, gap_ev DOUBLE, error_ev DOUBLE, static_gap_ev DOUBLE, relative_change DOUBLE,
        dft_gap_ev DOUBLE, n_imaginary INTEGER, n_excluded INTEGER, min_frequency_thz DOUBLE,
        rms_displacement_a DOUBLE, note VARCHAR, run_id VARCHAR, created_at TIMESTAMP NOT NULL,
        PRIMARY KEY (ensemble_id, structure_hash, temperature_k, method, imaginary_treatment))""",
    """CREATE TABLE gap_mode_groups (
        structure_hash VARCHAR NOT NULL, ensemble_id VARCHAR NOT NULL, temperature_k DOUBLE NOT NULL,
        source VARCHAR NOT NULL, kind VARCHAR NOT NULL, group_index INTEGER NOT NULL, composition_x DOUBLE,
        modes_json VARCHAR, n_modes INTEGER, frequency_lo_thz DOUBLE, frequency_hi_thz DOUBLE, status VARCHAR NOT NULL,
        dominant VARCHAR, shares_json VARCHAR, rms_displacement_a DOUBLE, max_displacement_a DOUBLE, gap0_ev DOUBLE,
        delta_ev DOUBLE, delta_std_ev DOUBLE, relative_change DOUBLE, sum_of_modes_ev DOUBLE, resolvable BOOLEAN,
        beyond_harmonic BOOLEAN, reference_level VARCHAR, reference_delta_ev DOUBLE, settings_key VARCHAR,
        run_id VARCHAR, created_at TIMESTAMP NOT NULL,
        PRIMARY KEY (structure_hash, ensemble_id, temperature_k, source, kind, group_index))""",
    """CREATE TABLE heldout_errors (
        model VARCHAR NOT NULL, level VARCHAR NOT NULL, quantity VARCHAR NOT NULL, set_name VARCHAR NOT NULL,
        unit VARCHAR, n INTEGER NOT NULL, mae DOUBLE, mean_error DOUBLE, rmse DOUBLE, max_error DOUBLE,
        created_at TIMESTAMP NOT NULL, PRIMARY KEY (model, level, quantity, set_name))""",
]


#: MIGRATIONS[v] turns a store of version v - 1 into version v (v = 1: create from nothing).
MIGRATIONS: dict[int, list[str]] = {
    1: _SCHEMA_V1,
    2: _SCHEMA_V2,
    3: _SCHEMA_V3,
    4: _SCHEMA_V4,
    5: _SCHEMA_V5,
    6: _SCHEMA_V6,
    7: _SCHEMA_V7,
    8: _SCHEMA_V8,
    9: _SCHEMA_V9,
    10: _SCHEMA_V10,
    11: _SCHEMA_V11,
    12: _SCHEMA_V12,
    13: _SCHEMA_V13,
    14: _SCHEMA_V14,
    15: _SCHEMA_V15,
    16: _SCHEMA_V16,
}


#: Tables :meth:`StoreWriter.add_rows` writes to (rows keyed by their primary key, written once).
RESULT_TABLES = (
    "gnn_trials",
    "gnn_learning_curve",
    "mlip_models",
    "mlip_metrics",
    "mlip_predictions",
    "mlip_phonons",
    "disorder_scans",
    "disorder_compositions",
    "disorder_arrangements",
    "disorder_relaxations",
    "disorder_probabilities",
    "md_runs",
    "phonon_harmonic",
    "phonon_anharmonic",
    "gap_static",
    "gap_thermal",
    "gap_snapshots",
    "gap_published",
    "gap_modes",
    "active_learning_frames",
    "md_frames",
    "md_uncertainty",
    "active_learning_rounds",
    "static_minima",
    "gap_dft_frames",
    "gap_dft_checks",
    "gap_estimates",
    "gap_mode_groups",
    "heldout_errors",
)
