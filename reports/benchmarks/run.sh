#!/usr/bin/env bash
# Writes every JSON file of reports/benchmarks/ (README.md there says what each holds).
# Run from the repository root with the package importable (`pip install -e .`, or PYTHONPATH=.):
#   bash reports/benchmarks/run.sh [PART ...]      # parts: kernel family epochs load malloc pack (default: all)
# About an hour on 2 busy cores. Timings are medians of interleaved rounds; every file starts with the
# machine's record (CPU model and features, threads, torch, wait policy, allocator settings).
set -euo pipefail
cd "$(dirname "$0")/../.."
out=reports/benchmarks
py=${PYTHON:-python}
tb() { "$py" -m tmafbench "$@"; }
parts=${*:-kernel family epochs load malloc pack}
export TMAFBENCH_DATA=${TMAFBENCH_DATA:-../shared/data}
shapes=(--shape 20000x20 --shape 256x512 --shape 128x64x32x32)

for part in $parts; do case $part in
kernel)  # the issue's table: TMAF, tri-diagonal and trainable breakpoints against ReLU and PReLU, 1 thread
  for run in 1 2 3; do
    tb bench activations relu prelu tmaf tmaf-tridiag tmaf:train_breakpoints=true tmaf-tridiag:train_breakpoints=true \
      --intervals 10 --intervals 100 "${shapes[@]}" --threads 1 --repeats 30 --json > $out/activations-kernel-run$run.json
  done ;;
family)  # PAU, APL and the KAN spline against PReLU: eager, TMAFBENCH_COMPILE=auto (cold then warm cache), on
  cache=$(mktemp -d)
  for run in 1 2; do
    TMAFBENCH_COMPILE=off tb bench activations prelu pau apl kan-spline "${shapes[@]}" --threads 1 --repeats 15 --json \
      > $out/activations-family-eager-run$run.json
    TORCHINDUCTOR_CACHE_DIR=$cache TMAFBENCH_COMPILE=auto tb bench activations prelu pau apl kan-spline "${shapes[@]}" \
      --threads 1 --repeats 15 --json > $out/activations-family-compiled-run$run.json
  done
  TORCHINDUCTOR_CACHE_DIR=$cache TMAFBENCH_COMPILE=on tb bench activations prelu kan-spline "${shapes[@]}" --threads 1 \
    --repeats 15 --json > $out/activations-family-spline-compiled.json
  rm -rf "$cache" ;;
epochs)  # trainable breakpoints against the same fixed grid and ReLU, per epoch, 1 thread (issue 16's networks)
  for run in 1 2; do
    tb bench epoch --task oscillatory --task-param train_size=20000 --task-param test_size=5000 --depth 2 --width 50 \
      --batch-size 256 -a relu -a tmaf:intervals=10 -a tmaf:intervals=10,train_breakpoints=true -a tmaf:intervals=100 \
      -a tmaf:intervals=100,train_breakpoints=true --threads 1 --repeats 5 --json > $out/epoch-oscillatory-run$run.json
    tb bench epoch --task sine-sum --task-param n=3 --task-param train_size=20000 --task-param test_size=5000 --depth 1 \
      --width 20 --batch-size 256 -a relu -a tmaf:intervals=10 -a tmaf:intervals=10,train_breakpoints=true \
      -a tmaf:intervals=100 -a tmaf:intervals=100,train_breakpoints=true --threads 1 --repeats 5 --json \
      > $out/epoch-sine-sum-run$run.json
  done ;;
load)  # a busy machine: 2 threads beside busy processes, with spinning (ACTIVE) and sleeping (PASSIVE) waits
  for policy in ACTIVE PASSIVE; do
    p=${policy,,}
    OMP_WAIT_POLICY=$policy tb bench activations relu prelu tmaf tmaf-tridiag --intervals 10 --shape 20000x20 \
      --shape 256x512 --threads 2 --repeats 15 --under-load 4 --json > $out/under-load-activations-$p.json
    OMP_WAIT_POLICY=$policy tb bench epoch --task sine-sum --task-param train_size=20000 --width 20 -a relu -a tmaf \
      -a tmaf-tridiag --threads 1 --threads 2 --repeats 3 --under-load 2 --json > $out/under-load-epoch-sine-sum-$p.json
    OMP_WAIT_POLICY=$policy tb bench epoch --task mnist --task-param train_size=10000 --depth 1 --width 10 -a relu -a tmaf --threads 1 --threads 2 \
      --repeats 3 --under-load 2 --json > $out/under-load-epoch-mnist-$p.json
    OMP_WAIT_POLICY=$policy tb bench epoch --task mnist --task-param train_size=4096 --model cnn --model-param width=8 \
      -a relu -a tmaf --threads 1 --threads 2 --repeats 3 --under-load 2 --json > $out/under-load-epoch-mnist-cnn-$p.json
  done ;;
malloc)  # TMAF / ReLU on [20000, 20] when every call maps fresh pages, and when the allocator reuses them
  for run in 1 2; do
    MALLOC_MMAP_THRESHOLD_=131072 tb bench activations relu tmaf tmaf-tridiag --intervals 10 --shape 20000x20 \
      --threads 1 --repeats 30 --json > $out/malloc-fresh-pages-run$run.json
    MALLOC_MMAP_THRESHOLD_=1073741824 MALLOC_TRIM_THRESHOLD_=1073741824 tb bench activations relu tmaf tmaf-tridiag \
      --intervals 10 --shape 20000x20 --threads 1 --repeats 30 --json > $out/malloc-reused-pages-run$run.json
  done ;;
pack)  # packed cells against one at a time and against a torch.func (vmap) ensemble: 2 processes x 1 thread
  tb bench pack --setting table-3-2 --setting sine-sum -a relu -a tmaf --json > $out/pack.json ;;
*) echo "unknown part $part (kernel family epochs load malloc pack)" >&2; exit 2 ;;
esac; done
