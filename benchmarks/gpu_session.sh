#!/usr/bin/env bash
# The next GPU session's one command, after the two setup commands of ../shared/gpu/README.md
# (the second sourced .gpu/run/gpu_setup.sh in the same shell):
#   source .gpu/run/gpu_setup.sh && bash benchmarks/gpu_session.sh
# 1. the gpu recipe's chain (teacher, student, distill at the recipe's buckets + compile, then a
#    short CPU speed test and the report) -> experiments/results/gpu.{csv,md}   (about 6 minutes)
#    The distilled student now has the hidden-state term (the cpu recipe's ablation), the teacher
#    running beside it: check it against >= 78.3 F1 (logits only at 8 epochs gave 76.68).
# 2. benchmarks/gpu_train.py: the settings side by side in one run (today's, buckets, compiled on
#    buckets, windows as tensors, the bare loop over the same batches, batch 128/256/512) and the
#    teacher-logits pass -> experiments/results/gpu-train-bench.{csv,md}   (about 3 minutes)
# Logs go to experiments/results/gpu-session-*.log; the whole is meant to fit a 10-minute call.
# What to read after: the distilled F1 (>= 78.3), the teacher's train_windows_per_second
# (>= 12,000) and F1 (>= 81 at 2 epochs), the best bench row's mfu_pct (aim >= 20), the
# teacher-logits row (>= 20,000 windows/s); if one misses, experiments/gpu.yaml's
# batch/lr/workers/compile comments say what to change.
set -uo pipefail
cd "$(dirname "$0")/.."
export QA_DISTILL_COMPILE=0  # the predictor's CPU compile at model logging is not what is measured
RESULTS=experiments/results
mkdir -p "$RESULTS"
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader

# The chain; nvidia-smi samples the GPU's utilisation beside it.
nvidia-smi --query-gpu=utilization.gpu,memory.used --format=csv,noheader -l 5 > "$RESULTS/gpu-session-smi.log" 2>&1 &
SMI=$!
timeout 400 qa-distill main --recipe gpu --speed-questions 200 --backends fp32 \
  > "$RESULTS/gpu-session-chain.log" 2>&1
echo "chain: exit $? (log $RESULTS/gpu-session-chain.log)"
kill "$SMI" 2>/dev/null
grep -E "windows/s|train_windows_per_second|eval_f1|exact_match|Error|error" "$RESULTS/gpu-session-chain.log" | tail -n 30

# Compiled rows warm up on 40 steps (compiling each bucket met there is not timed) and time 40.
timeout 170 python3 benchmarks/gpu_train.py --questions 8000 --warmup 40 --steps 40 --teacher-batch 1024 \
  --settings today,batch-256-workers,batch-256-buckets,batch-256-tensors,batch-256-buckets-compile,batch-256-tensors-buckets-compile,batch-256-tensors-buckets-compile-workers,batch-256-tensors-buckets-compile-bare,batch-128-tensors-buckets-compile,batch-512-tensors-buckets-compile \
  > "$RESULTS/gpu-session-bench.log" 2>&1
echo "benchmark: exit $? (log $RESULTS/gpu-session-bench.log)"
tail -n 20 "$RESULTS/gpu-session-bench.log"

ls -l "$RESULTS"/gpu-train-bench.* "$RESULTS"/gpu.* 2>/dev/null
