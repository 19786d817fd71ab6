#!/usr/bin/env bash
# The cpu recipe end to end, as MLflow project runs: teacher, then the student alone and the
# distilled student from that teacher, then the results table. Logs go to outputs/cpu/*.log.
set -euo pipefail
cd "$(dirname "$0")/.."
mkdir -p outputs/cpu
for entry in teacher student distill; do
  echo "== $entry $(date -u +%FT%TZ)"
  mlflow run . -e "$entry" --env-manager local --experiment-name qa-distill -P recipe=cpu \
    > "outputs/cpu/$entry.log" 2>&1
done
echo "== done $(date -u +%FT%TZ)"
