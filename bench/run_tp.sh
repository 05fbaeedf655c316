#!/usr/bin/env bash
# bench_tp's three configurations, interleaved for ROUNDS rounds (default 3)
# so that the machine's drift hits each alike: 2 ranks of 1 thread, one
# process of 1 thread, one process of 2 threads. Quote the medians.
#
#   bench/run_tp.sh [BUILD_DIR] [ROUNDS]
set -euo pipefail
build=${1:-build}
rounds=${2:-3}
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
for round in $(seq "$rounds"); do
  echo "== round $round: mpirun -np 2, OMP_NUM_THREADS=1"
  mpirun --oversubscribe -np 2 -x OMP_NUM_THREADS=1 "$build/bench/bench_tp"
  echo "== round $round: one process, OMP_NUM_THREADS=1"
  OMP_NUM_THREADS=1 "$build/bench/bench_tp"
  echo "== round $round: one process, OMP_NUM_THREADS=2"
  OMP_NUM_THREADS=2 "$build/bench/bench_tp"
done
