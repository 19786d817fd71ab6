#!/usr/bin/env bash
# The cpu recipe end to end, as MLflow project runs: the teacher, then the student alone and the
# distilled student from that teacher, the results table, and the CPU speed test of the three.
# Tables go to experiments/results/cpu.{csv,md} and cpu-speed.{csv,md}; logs to outputs/cpu/.
set -euo pipefail
cd "$(dirname "$0")/.."
mkdir -p outputs/cpu
run() {
  echo "== $1 $(date -u +%FT%TZ)"
  mlflow run . -e "$1" --env-manager local --experiment-name qa-distill -P recipe=cpu "${@:2}" \
    > "outputs/cpu/$1.log" 2>&1
}
run teacher
run student
run distill
run report
run speedtest
echo "== done $(date -u +%FT%TZ)"
