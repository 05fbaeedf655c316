#!/usr/bin/env bash
# Runs one libFuzzer target for a long time, from the kept corpus, and
# merges what it reached back into that corpus (minimized), for use before
# releases:
#
#   tests/fuzz/run_long.sh TARGET SECONDS [JOBS]
#   KVATTN_FUZZ_RUNS=10000000 tests/fuzz/run_long.sh TARGET 1800   # whichever ends first
#
# TARGET: checkpoint, tokenizer, cache_load, state_load, attention or gguf.
# Inputs: tests/fuzz/corpus/TARGET (the kept corpus), the seeds make_seeds
# writes, tests/fuzz/regressions/TARGET (every input that ever found a bug).
# A crash is written to tests/fuzz/regressions/TARGET/crash-* and the script
# exits non-zero: keep it there, fix the bug, and the ctest replay of that
# folder guards it from then on. Needs clang (libFuzzer).
set -euo pipefail
cd "$(dirname "$0")/../.."
target=${1:?usage: run_long.sh TARGET SECONDS [JOBS]}
seconds=${2:?usage: run_long.sh TARGET SECONDS [JOBS]}
jobs=${3:-1}
case $target in
  checkpoint) seeds=checkpoint ;;
  tokenizer) seeds=tokenizer ;;
  cache_load) seeds=cache ;;
  state_load) seeds=state ;;
  attention) seeds=attention ;;
  gguf) seeds=gguf ;;
  *) echo "unknown target $target" >&2; exit 2 ;;
esac
build=${KVATTN_FUZZ_BUILD:-build-fuzz}
if [ ! -x "$build/tests/fuzz/fuzz_$target" ]; then
  cmake -S . -B "$build" -DCMAKE_CXX_COMPILER=clang++ -DCMAKE_BUILD_TYPE=RelWithDebInfo \
    -DKVATTN_BUILD_FUZZERS=ON -DKVATTN_BUILD_TESTS=OFF -DKVATTN_BUILD_EXAMPLES=OFF \
    -DKVATTN_BUILD_BENCHMARKS=OFF -DKVATTN_INSTALL=OFF -DKVATTN_OPENMP=OFF >/dev/null
  cmake --build "$build" -j2 --target "fuzz_$target" make_seeds >/dev/null
fi
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
"$build/tests/fuzz/make_seeds" "$work/seeds" ../shared/models
[ "$target" = checkpoint ] && cp ../shared/models/*.bin "$work/seeds/checkpoint/" 2>/dev/null || true
[ "$target" = gguf ] && cp ../shared/models/gguf/*q8_0.gguf ../shared/models/gguf/*q4_0.gguf "$work/seeds/gguf/" 2>/dev/null || true
max_len=8192
[ "$target" = gguf ] && max_len=400000  # the shared files are 240-380 KB
corpus=tests/fuzz/corpus/$target
regressions=tests/fuzz/regressions/$target
mkdir -p "$corpus" "$regressions" "$work/run"
cp "$corpus"/* "$work/run/" 2>/dev/null || true
status=0
parallel=()
[ "$jobs" -gt 1 ] && parallel=(-jobs="$jobs" -workers="$jobs")  # logs in fuzz-N.log
"$build/tests/fuzz/fuzz_$target" "$work/run" "$work/seeds/$seeds" "$regressions" \
  -max_total_time="$seconds" -runs="${KVATTN_FUZZ_RUNS:--1}" -max_len=$max_len "${parallel[@]}" \
  -print_final_stats=1 -artifact_prefix="$regressions/" || status=$?
# Keep a minimized corpus: the smallest set of inputs that covers what this run reached.
mkdir -p "$work/merged"
# Edges only (-use_counters=0) and inputs cut to 8 KB keep it small (the whole
# shared models come back as seeds each run).
"$build/tests/fuzz/fuzz_$target" -merge=1 -use_counters=0 "$work/merged" "$corpus" "$work/run" \
  -max_len=8192 >/dev/null 2>&1
rm -f "$corpus"/*
cp "$work/merged"/* "$corpus/" 2>/dev/null || true
echo "corpus $corpus: $(ls "$corpus" | wc -l) inputs, $(cat "$corpus"/* 2>/dev/null | wc -c) bytes"
exit $status
