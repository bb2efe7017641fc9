#!/usr/bin/env bash
# Active learning of MACE and the GNN on MD frames, round by round, with capml itself (recipe below).
#   deploy/active-learning.sh models        the current models: MACE (with its committee), the GNN ensemble
#   deploy/active-learning.sh select K      disagreement along every MD run of the current MACE, round K's frames
#                                           (and their pool file data/datasets/capml-md-al-roundK-pool.extxyz)
#   deploy/active-learning.sh label K       label round K's frames at both levels (one worker per level; resumable)
#   deploy/active-learning.sh export K      write round K's labels to data/datasets/ (commit them)
#   deploy/active-learning.sh restore K     put exported round-K frames and labels (and the rounds file) into a new store
#   deploy/active-learning.sh advance K     after round K's labels: retrain both models, new MD, measure (rounds table)
#   deploy/active-learning.sh record K      measure the current models on the held-out frames as round K
#   deploy/active-learning.sh static        the static reference: MD frames quenched with MACE, the end members'
#                                           cubic cell and lowest minimum relaxed with GPAW PBEsol, GLLB-SC gaps
# The store lives in runs/ag3sbri-al/ (not in git); the exported files are the durable copy.
set -euo pipefail
cd "$(dirname "$0")/.."
CAPML=.venv/bin/capml
RECIPE=data/configs/ag3sbri-active-learning.toml
LEVELS=(gpaw-pbesol gpaw-gllbsc)
ROUNDS=data/datasets/active-learning-rounds.csv   # the rounds so far: the durable copy of the rounds table
export OMP_NUM_THREADS=1

round="${2:-}"
need_round() {
  if ! [[ "$round" =~ ^[0-9]+$ ]]; then
    echo "usage: $0 $1 ROUND (a number)" >&2
    exit 2
  fi
}
file_for() { echo "data/datasets/capml-md-al-round$1-$2.extxyz"; }

case "${1:-}" in
  models)
    "$CAPML" mlip train -c "$RECIPE"
    "$CAPML" gnn train -c "$RECIPE"
    ;;
  select)
    need_round select
    "$CAPML" al uncertainty -c "$RECIPE"
    "$CAPML" al select -c "$RECIPE" --round "$round" --pool "data/datasets/capml-md-al-round$round-pool.extxyz"
    ;;
  label)
    need_round label
    for level in "${LEVELS[@]}"; do
      "$CAPML" label -c "$RECIPE" --level "$level" --set "al-round$round@$level" --workers 1 \
        > "runs/al-round$round-$level.log" 2>&1 &
    done
    echo "labelling round $round in the background; logs in runs/al-round$round-*.log; then: $0 export $round"
    wait
    ;;
  export)
    need_round export
    for level in "${LEVELS[@]}"; do
      "$CAPML" data export "$(file_for "$round" "$level")" -c "$RECIPE" --level "$level" \
        --set "al-round$round@$level" || true
    done
    ;;
  restore)
    need_round restore
    [ -f "$ROUNDS" ] && "$CAPML" al rounds -c "$RECIPE" --import "$ROUNDS"
    for level in "${LEVELS[@]}"; do
      file="$(file_for "$round" "$level")"
      labels=$([ "$level" = gpaw-gllbsc ] && echo gap || echo energy,forces,stress,gap)
      [ -f "$file" ] && "$CAPML" data import "$file" --level "$level" -c "$RECIPE" --prefix REF --labels "$labels"
    done
    ;;
  advance)
    need_round advance
    "$CAPML" mlip train -c "$RECIPE"
    "$CAPML" gnn train -c "$RECIPE"
    "$CAPML" run "$RECIPE" --stage disorder --stage dynamics
    "$CAPML" al record -c "$RECIPE" --round "$round"
    "$CAPML" al rounds -c "$RECIPE" --export "$ROUNDS"
    ;;
  record)
    need_round record
    "$CAPML" al record -c "$RECIPE" --round "$round"
    "$CAPML" al rounds -c "$RECIPE" --export "$ROUNDS"
    ;;
  static)
    "$CAPML" static quench -c "$RECIPE" --stored-frames
    for x in 1.0 0.0; do
      "$CAPML" static dft-relax -c "$RECIPE" --composition "$x" --fmax 0.05 > "runs/static-dft-relax-$x.log" 2>&1
    done
    "$CAPML" label -c "$RECIPE" --level gpaw-gllbsc --set static-reference@gpaw-gllbsc --workers 1
    "$CAPML" static show -c "$RECIPE"
    ;;
  *)
    echo "usage: $0 models|select|label|export|restore|advance|record [ROUND] | static" >&2
    exit 2
    ;;
esac
