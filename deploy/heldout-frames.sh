#!/usr/bin/env bash
# The held-out MD-frame yardstick (data/datasets/capml-md-heldout-*.extxyz), made and resumed with capml itself.
#   deploy/heldout-frames.sh label    frames: restore the committed pool file, or (first time) train the recipe's
#                                     MACE, run its MD and draw the frames at random; restore the labels already
#                                     exported to data/ (resume); then label both levels (one worker each)
#   deploy/heldout-frames.sh export   write what is labelled so far to data/datasets/ (commit it)
# The store lives in runs/ag3sbri-heldout-md/ (not in git); the pool file and the exported files are the durable copy.
set -euo pipefail
cd "$(dirname "$0")/.."
CAPML=.venv/bin/capml
RECIPE=data/configs/ag3sbri-heldout-md.toml
POOL=data/datasets/capml-md-heldout-pool.extxyz
SET=md-heldout
LEVELS=(gpaw-pbesol gpaw-gllbsc)
SEED=22
export OMP_NUM_THREADS=1

case "${1:-}" in
  label)
    if [ -f "$POOL" ]; then
      "$CAPML" data restore-frames "$POOL" -c "$RECIPE" --set "$SET"
    else
      "$CAPML" run "$RECIPE" --stage dataset-import --stage mlip --stage disorder --stage dynamics
      "$CAPML" data sample-frames "$POOL" -c "$RECIPE" --set "$SET" --per-run 1 --seed "$SEED"
    fi
    for level in "${LEVELS[@]}"; do
      file="data/datasets/capml-md-heldout-$level.extxyz"
      if [ -f "$file" ]; then
        labels=$([ "$level" = gpaw-gllbsc ] && echo gap || echo energy,forces,stress,gap)
        "$CAPML" data import "$file" --level "$level" -c "$RECIPE" --prefix REF --labels "$labels"
      fi
    done
    for level in "${LEVELS[@]}"; do
      "$CAPML" label -c "$RECIPE" --level "$level" --set "$SET@$level" --workers 1 > "runs/heldout-$level.log" 2>&1 &
    done
    echo "labelling in the background; logs in runs/heldout-*.log; export with: $0 export"
    wait
    ;;
  export)
    for level in "${LEVELS[@]}"; do
      "$CAPML" data export "data/datasets/capml-md-heldout-$level.extxyz" -c "$RECIPE" --level "$level" \
        --set "$SET@$level" || true
    done
    "$CAPML" sql -c "$RECIPE" "SELECT m.set_name, l.status, count(*) AS n, round(avg(l.wall_time_s)) AS mean_s,
      round(sum(l.wall_time_s) / 3600, 2) AS cpu_h FROM structure_sets m JOIN labels l
      ON l.structure_hash = m.structure_hash AND l.level = m.level GROUP BY ALL ORDER BY ALL"
    ;;
  *)
    echo "usage: $0 label|export" >&2
    exit 2
    ;;
esac
