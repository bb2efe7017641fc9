#!/usr/bin/env bash
# Grow capml's bundled reference dataset (data/datasets/capml-gpaw-*.extxyz) with capml itself.
#   deploy/reference-dataset.sh label    regenerate the recipe's structures, restore the labels already
#                                        exported to data/ (resume), then label both levels (one worker each)
#   deploy/reference-dataset.sh export   write what is labelled so far to data/datasets/ (commit it)
# The store lives in runs/reference-dataset/ (not in git); the exported files are the durable copy.
set -euo pipefail
cd "$(dirname "$0")/.."
CAPML=.venv/bin/capml
RECIPE=data/configs/ag3sbri-reference-dataset.toml
LEVELS=(gpaw-pbesol gpaw-gllbsc)
export OMP_NUM_THREADS=1

case "${1:-}" in
  label)
    "$CAPML" data generate -c "$RECIPE"
    for level in "${LEVELS[@]}"; do
      file="data/datasets/capml-$level.extxyz"
      if [ -f "$file" ]; then
        labels=$([ "$level" = gpaw-gllbsc ] && echo gap || echo energy,forces,stress,gap)
        "$CAPML" data import "$file" --level "$level" -c "$RECIPE" --prefix REF --labels "$labels"
      fi
    done
    for level in "${LEVELS[@]}"; do
      "$CAPML" label -c "$RECIPE" --level "$level" --workers "${WORKERS:-1}" > "runs/label-$level.log" 2>&1 &
    done
    echo "labelling in the background; logs in runs/label-*.log; export with: $0 export"
    wait
    ;;
  export)
    for level in "${LEVELS[@]}"; do
      "$CAPML" data export "data/datasets/capml-$level.extxyz" -c "$RECIPE" --level "$level" --set "$level"
    done
    "$CAPML" sql -c "$RECIPE" "SELECT level, status, count(*) AS n, round(avg(wall_time_s)) AS mean_s FROM labels GROUP BY ALL ORDER BY ALL"
    ;;
  *)
    echo "usage: $0 label|export" >&2
    exit 2
    ;;
esac
