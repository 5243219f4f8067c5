#!/usr/bin/env bash
# The full --compare benchmark in resumable pieces, one after another (never two at once: they
# would share the CPU and spoil each other's timings), then the report.
#
# A piece is one call for one (model, learning rate) run with --time_budget: it trains until the
# next epoch would end past the budget, saves the run's state and exits with status 75; the same
# call continues it from the last finished epoch. A finished run is stored in
# results/leave_one_out/runs/<dataset>/ and skipped, so this script can be stopped (kill PID)
# and restarted at any time and loses at most the epoch in progress.
#
# Usage: bench/compare_pieces.sh DATASET [--key=value ...]
#   mkdir -p /tmp/compare && nohup bench/compare_pieces.sh amazon-videogames \
#       --data_path=../shared/data > /tmp/compare/amazon-videogames.log 2>&1 &
# Environment: MODELS (default "MIND GRU4Rec SASRec SINE"), LR_GRID (default 0.001,0.003),
# BUDGET_H (hours per piece, default 1.75), THREADS (torch threads per run, default 1),
# LOG_DIR (default /tmp/compare/DATASET), PYTHON (default .venv/bin/python), REPORT (0: skip the
# report, for a part of the models run beside another part).
set -euo pipefail
cd "$(dirname "$0")/.."
DATASET=${1:?usage: bench/compare_pieces.sh DATASET [--key=value ...]}
shift
EXTRA=("$@")
MODELS=${MODELS:-"MIND GRU4Rec SASRec SINE"}
LR_GRID=${LR_GRID:-0.001,0.003}
BUDGET_H=${BUDGET_H:-1.75}
THREADS=${THREADS:-1}
PYTHON=${PYTHON:-.venv/bin/python}
LOG_DIR=${LOG_DIR:-/tmp/compare/$DATASET}
mkdir -p "$LOG_DIR"

for model in $MODELS; do
  for lr in ${LR_GRID//,/ }; do
    log="$LOG_DIR/${model}_lr$lr.log"
    while true; do
      echo "$(date '+%F %T') piece $model lr=$lr (log $log)"
      rc=0
      "$PYTHON" run_recbole_mind.py --compare "$model" --lr_grid "$lr" --no_report \
        --time_budget "$BUDGET_H" --torch_threads "$THREADS" --dataset "$DATASET" ${EXTRA[@]+"${EXTRA[@]}"} \
        >> "$log" 2>&1 || rc=$?
      [ "$rc" -eq 0 ] && break
      if [ "$rc" -ne 75 ]; then
        echo "$(date '+%F %T') piece $model lr=$lr failed (exit $rc): see $log"
        exit "$rc"
      fi
    done
  done
done
[ "${REPORT:-1}" = 0 ] && exit 0
echo "$(date '+%F %T') report"
# shellcheck disable=SC2086  # MODELS is a list of words
"$PYTHON" run_recbole_mind.py --compare $MODELS --lr_grid "$LR_GRID" --torch_threads "$THREADS" \
  --dataset "$DATASET" ${EXTRA[@]+"${EXTRA[@]}"}
