#!/usr/bin/env bash
# Writes every JSON file of reports/benchmarks/ (README.md there says what each holds).
# Run from the repository root with the package importable (`pip install -e .`, or PYTHONPATH=.):
#   bash reports/benchmarks/run.sh [PART ...]      # parts: kernel family epochs load load-mnist malloc pack (default: all)
#   RUNS=3 bash reports/benchmarks/run.sh kernel   # repeat the repeatable parts (files -run1 .. -runN; default 1)
# About 25 minutes on 2 busy cores with RUNS=1. Timings are medians of interleaved rounds; every file
# starts with the machine's record (CPU model and features, threads, torch, wait policy, allocator
# settings, load average when it was written); loads.txt gets `uptime` before and after each file.
set -euo pipefail
cd "$(dirname "$0")/../.."
out=reports/benchmarks
py=${PYTHON:-python}
runs=$(seq 1 "${RUNS:-1}")
# tb FILE ARGS...: run `tmafbench ARGS` into $out/FILE, with the machine's load before and after in loads.txt
tb() {
  local file=$1; shift
  echo "$file before: $(uptime)" >> $out/loads.txt
  "$py" -m tmafbench "$@" > "$out/$file"
  echo "$file after:  $(uptime)" >> $out/loads.txt
}
parts=${*:-kernel family epochs load load-mnist malloc pack}
export TMAFBENCH_DATA=${TMAFBENCH_DATA:-../shared/data}
shapes=(--shape 20000x20 --shape 256x512 --shape 128x64x32x32)

for part in $parts; do case $part in
kernel)  # the issue's table: TMAF, tri-diagonal and trainable breakpoints against ReLU and PReLU, 1 thread
  for run in $runs; do
    tb activations-kernel-run$run.json bench activations relu prelu tmaf tmaf-tridiag tmaf:train_breakpoints=true tmaf-tridiag:train_breakpoints=true \
      --intervals 10 --intervals 100 "${shapes[@]}" --threads 1 --repeats 30 --json
  done ;;
family)  # PAU, APL and the KAN spline against PReLU: eager, TMAFBENCH_COMPILE=auto (cold then warm cache), on
  cache=$(mktemp -d)
  for run in $runs; do
    TMAFBENCH_COMPILE=off tb activations-family-eager-run$run.json bench activations prelu pau apl kan-spline \
      "${shapes[@]}" --threads 1 --repeats 15 --json
  done
  # run 1 starts from an empty inductor cache (its first_ms holds the compile time), run 2 reuses it
  for run in 1 2; do
    TORCHINDUCTOR_CACHE_DIR=$cache TMAFBENCH_COMPILE=auto tb activations-family-compiled-run$run.json bench activations \
      prelu pau apl kan-spline "${shapes[@]}" --threads 1 --repeats 15 --json
  done
  TORCHINDUCTOR_CACHE_DIR=$cache TMAFBENCH_COMPILE=on tb activations-family-spline-compiled.json bench activations \
    prelu kan-spline "${shapes[@]}" --threads 1 --repeats 15 --json
  rm -rf "$cache" ;;
epochs)  # trainable breakpoints against the same fixed grid and ReLU, per epoch, 1 thread (issue 16's networks)
  for run in $runs; do
    tb epoch-oscillatory-run$run.json bench epoch --task oscillatory --task-param train_size=20000 \
      --task-param test_size=5000 --depth 2 --width 50 --batch-size 256 -a relu -a tmaf:intervals=10 \
      -a tmaf:intervals=10,train_breakpoints=true -a tmaf:intervals=100 -a tmaf:intervals=100,train_breakpoints=true \
      --threads 1 --repeats 5 --json
    tb epoch-sine-sum-run$run.json bench epoch --task sine-sum --task-param n=3 --task-param train_size=20000 --task-param test_size=5000 --depth 1 \
      --width 20 --batch-size 256 -a relu -a tmaf:intervals=10 -a tmaf:intervals=10,train_breakpoints=true \
      -a tmaf:intervals=100 -a tmaf:intervals=100,train_breakpoints=true --threads 1 --repeats 5 --json
  done ;;
load)  # a busy machine: 2 threads beside busy processes, with spinning (ACTIVE) and sleeping (PASSIVE) waits
  for policy in ACTIVE PASSIVE; do
    p=${policy,,}
    OMP_WAIT_POLICY=$policy tb under-load-activations-$p.json bench activations relu prelu tmaf tmaf-tridiag --intervals 10 \
      --shape 20000x20 --shape 256x512 --threads 2 --repeats 15 --under-load 4 --json
    OMP_WAIT_POLICY=$policy tb under-load-epoch-sine-sum-$p.json bench epoch --task sine-sum --task-param train_size=20000 \
      --width 20 -a relu -a tmaf -a tmaf-tridiag --threads 1 --threads 2 --repeats 3 --under-load 2 --json
  done ;;
load-mnist)  # the same for an MNIST MLP epoch on 10,000 images (needs the data)
  for policy in ACTIVE PASSIVE; do
    OMP_WAIT_POLICY=$policy tb under-load-epoch-mnist-${policy,,}.json bench epoch --task mnist \
      --task-param train_size=10000 --depth 1 --width 10 -a relu -a tmaf --threads 1 --threads 2 --repeats 3 \
      --under-load 2 --json
  done ;;
malloc)  # TMAF / ReLU on [20000, 20] when every call maps fresh pages, and when the allocator reuses them
  for run in $runs; do
    MALLOC_MMAP_THRESHOLD_=131072 tb malloc-fresh-pages-run$run.json bench activations relu tmaf tmaf-tridiag \
      --intervals 10 --shape 20000x20 --threads 1 --repeats 30 --json
    MALLOC_MMAP_THRESHOLD_=1073741824 MALLOC_TRIM_THRESHOLD_=1073741824 tb malloc-reused-pages-run$run.json bench activations \
      relu tmaf tmaf-tridiag --intervals 10 --shape 20000x20 --threads 1 --repeats 30 --json
  done ;;
pack)  # packed cells against one at a time and against a torch.func (vmap) ensemble: 2 processes x 1 thread
  tb pack.json bench pack --setting table-3-2 --setting sine-sum -a relu -a tmaf --json ;;
*) echo "unknown part $part (kernel family epochs load load-mnist malloc pack)" >&2; exit 2 ;;
esac; done
