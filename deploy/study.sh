#!/usr/bin/env bash
# The study (data/configs/ag3sbri-study.toml: 9 compositions x 100-600 K, 10 ps MD, DFT checks) in parts that each
# fit one machine session, its project checkpointed after each part so that the next part continues on a fresh machine.
#   deploy/study.sh resume            on a fresh machine: the project from data/checkpoints/ag3sbri-study (when
#                                     runs/ has none); a no-op when runs/ag3sbri-study exists
#   deploy/study.sh models            dataset, MACE, gap model (both measured on the held-out MD frames), disorder
#                                     scan of every composition
#   deploy/study.sh part X [X ...]    MD of these compositions at every temperature, then everything that reads the
#                                     trajectories: phonon verdicts (DynaPhoPy), quenched minima, band gaps with
#                                     their DFT checks (GLLB-SC on the MD's own frames) and the estimates; before
#                                     them one frame per run held out (set study-heldout-<MACE model id>),
#                                     labelled at both levels, and both models measured on them
#   deploy/study.sh round K [X ...]  active-learning round K of the gap model on the study's own MD (MACE kept:
#                                     mlip.max_md_frame_round): PER_RUN frames per run drawn at random (once) from the runs
#                                     whose Eg(T) is not DFT-checked (of compositions X only, when given), 2 ps from
#                                     their held-out frame, labelled at both levels, exported to
#                                     data/datasets/capml-md-al-roundK-*.extxyz (commit them and add them to the
#                                     recipe's imports), then: deploy/study.sh refit K
#   deploy/study.sh refit K           the gap model retrained with round K's frames, measured on every held-out set
#                                     (recorded as round K), Eg(T) of every analysed run again with its DFT checks
#   deploy/study.sh finish            what needs every composition: the band-gap stage once more, the mode stage
#   deploy/study.sh checkpoint        the project (store, arrays, model files, trajectories thinned to the band-gap
#                                     series' frames) to
#                                     data/checkpoints/ag3sbri-study, replacing the previous one (commit it)
#   deploy/study.sh ship              the finished study's results to data/results/ag3sbri-study (no model files)
#   deploy/study.sh status            MD runs per composition, DFT checks, CPU time so far
# The whole study in one go on a machine that keeps runs/: capml run data/configs/ag3sbri-study.toml.
# Environment: PROJECT (default runs/ag3sbri-study), WORKERS (MD runs and labels in parallel, default 2),
# PER_RUN (frames per run of an active-learning round, default 4).
set -euo pipefail
cd "$(dirname "$0")/.."
CAPML=${CAPML:-.venv/bin/capml}
RECIPE=data/configs/ag3sbri-study.toml
PROJECT=${PROJECT:-runs/ag3sbri-study}
CHECKPOINT=data/checkpoints/ag3sbri-study
RESULTS=data/results/ag3sbri-study
WORKERS=${WORKERS:-2}
PER_RUN=${PER_RUN:-4}
# one MD frame per run of the study, drawn at random, labelled at both levels, never trained on: one set per MACE
# model (study-heldout-<model id>), since a restart with new models has new runs to measure them on
heldout_set() {
  local model
  model=$("$CAPML" sql --project "$PROJECT" --output csv \
    "SELECT model_id FROM mlip_models WHERE kind <> 'foundation' AND committee_of IS NULL ORDER BY created_at DESC LIMIT 1" | tail -1)
  echo "study-heldout-$model"
}
export OMP_NUM_THREADS=1

run() { "$CAPML" run "$RECIPE" --project "$PROJECT" "$@"; }

case "${1:-}" in
  resume)
    if [ -e "$PROJECT/capml.duckdb" ]; then
      echo "$PROJECT exists: continuing there"
    elif [ -f "$CHECKPOINT/capml.duckdb" ]; then
      mkdir -p "$(dirname "$PROJECT")"
      cp -r "$CHECKPOINT" "$PROJECT"
      echo "$PROJECT: restored from $CHECKPOINT ($(du -sh "$PROJECT" | cut -f1))"
    else
      echo "no checkpoint in $CHECKPOINT: start with $0 models" >&2
      exit 1
    fi
    ;;
  models)
    run --stage dataset-import --stage dataset-generate --stage label --stage dataset-summary --stage mlip \
      --stage gnn --stage disorder --set "disorder.workers=$WORKERS"
    ;;
  part)
    shift
    if [ $# -eq 0 ]; then
      echo "usage: $0 part X [X ...] (compositions of $RECIPE)" >&2
      exit 2
    fi
    compositions="[$(IFS=,; echo "$*")]"
    run --stage dynamics --stage phonons --set "md.compositions=$compositions" --set "md.workers=$WORKERS"
    # the study's own held-out frames: one per run at random, both levels (the models measured where they are used)
    HELDOUT=$(heldout_set)
    "$CAPML" data sample-frames "$PROJECT/$HELDOUT-pool.extxyz" -c "$RECIPE" -p "$PROJECT" --set "$HELDOUT" \
      --per-run 1 --seed 2026
    quench=()
    for x in "$@"; do quench+=(--composition "$x"); done
    "$CAPML" static quench -c "$RECIPE" -p "$PROJECT" "${quench[@]}"
    # the yardstick first: both models measured on the held-out frames, then Eg(T) with its DFT checks
    for level in gpaw-pbesol gpaw-gllbsc; do
      "$CAPML" label -c "$RECIPE" -p "$PROJECT" --level "$level" --set "$HELDOUT@$level" --workers "$WORKERS"
    done
    "$CAPML" evaluate -c "$RECIPE" -p "$PROJECT" --set "$HELDOUT"
    run --stage bandgaps --set "reference.workers=$WORKERS"
    ;;
  round)
    round="${2:?usage: $0 round K [X ...]}"
    shift 2
    only=()
    for x in "$@"; do only+=(--composition "$x"); done
    pool="data/datasets/capml-md-al-round$round-pool.extxyz"
    "$CAPML" data sample-frames "$pool" -c "$RECIPE" -p "$PROJECT" --set "al-round$round" --trainable \
      --round "$round" --per-run "$PER_RUN" --seed 2026 --separation-ps 2 "${only[@]}"
    for level in gpaw-pbesol gpaw-gllbsc; do  # one worker per level, both at once
      "$CAPML" label -c "$RECIPE" -p "$PROJECT" --level "$level" --set "al-round$round@$level" --workers 1 &
    done
    wait
    for level in gpaw-pbesol gpaw-gllbsc; do
      "$CAPML" data export "data/datasets/capml-md-al-round$round-$level.extxyz" -c "$RECIPE" -p "$PROJECT" \
        --level "$level" --set "al-round$round@$level"
    done
    ;;
  refit)
    round="${2:?usage: $0 refit K}"
    run --stage dataset-import --stage gnn
    "$CAPML" sql --project "$PROJECT" --output csv \
      "SELECT DISTINCT split FROM gnn_predictions WHERE split LIKE '%heldout%' ORDER BY 1" | tail -n +2 |
      while read -r heldout; do "$CAPML" evaluate -c "$RECIPE" -p "$PROJECT" --set "$heldout"; done
    rounds=data/datasets/active-learning-rounds.csv  # the earlier rounds beside this one, the durable copy after
    "$CAPML" al rounds -c "$RECIPE" -p "$PROJECT" --import "$rounds" > /dev/null
    "$CAPML" al record -c "$RECIPE" -p "$PROJECT" --round "$round"
    "$CAPML" al rounds -c "$RECIPE" -p "$PROJECT" --export "$rounds"
    run --stage bandgaps --set "reference.workers=$WORKERS"
    ;;
  finish)
    run --stage bandgaps --stage modes --set "reference.workers=$WORKERS"
    ;;
  checkpoint)
    # only between parts: an MD run whose analysis is not stored would be lost with its trajectory
    unanalysed=$("$CAPML" sql --project "$PROJECT" --output csv \
      "SELECT count(*) AS n FROM md_runs WHERE complete AND md_id NOT IN (SELECT md_id FROM gap_thermal)" | tail -1)
    if [ "$unanalysed" != "0" ]; then
      echo "$unanalysed MD runs have no band gaps yet: finish the part (or rerun it) before the checkpoint" >&2
      exit 1
    fi
    "$CAPML" data ship-results "$CHECKPOINT" --project "$PROJECT" --with-models --replace
    ;;
  ship)
    "$CAPML" data ship-results "$RESULTS" --project "$PROJECT" --replace
    ;;
  status)
    "$CAPML" sql --project "$PROJECT" "SELECT composition_x, count(*) AS md_runs, round(sum(wall_time_s) / 3600, 2) AS md_wall_h FROM md_runs WHERE complete GROUP BY 1 ORDER BY 1"
    "$CAPML" sql --project "$PROJECT" "SELECT composition_x, temperature_k, n_frames, verdict FROM gap_dft_checks ORDER BY 1, 2"
    "$CAPML" sql --project "$PROJECT" "SELECT level, count(*) AS labels, round(sum(wall_time_s) / 3600, 2) AS cpu_h FROM labels GROUP BY 1"
    ;;
  *)
    sed -n '2,27p' "$0"
    exit 2
    ;;
esac
