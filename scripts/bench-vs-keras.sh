#!/usr/bin/env bash
# Side-by-side speed run behind the README's performance table: `distill bench` (local kernels and
# burn's layers, one and two threads) and the Keras/TensorFlow reference harness, back to back on
# one machine, one thread pinned to core 0. Raw outputs go to $OUT (default bench-out/).
#
# Needs the Keras harness set up as in ../shared/keras-reference/README.md (venv in ~/.cache/kref,
# CIFAR10_NPZ pointing at cifar10.npz). Run on an otherwise idle machine; takes about 10 minutes.
# BASE=path/to/an/older/distill also times that binary (the "before" column of a speed change).
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-bench-out}
KREF=${KREF:-../shared/keras-reference}
PY=${PY:-$HOME/.cache/kref/bin/python}
export CIFAR10_NPZ=${CIFAR10_NPZ:-$HOME/.cache/cifar10-bin/cifar10.npz}
mkdir -p "$OUT"
cargo build --release --quiet
DISTILL=target/release/distill

taskset -c 0 "$DISTILL" bench --threads 1 --steps 20 --compare-burn | tee "$OUT/distill-1thread.txt"
taskset -c 0 "$DISTILL" bench --threads 1 --steps 20 --json > "$OUT/distill-1thread.json"
"$DISTILL" bench --threads 2 --steps 20 | tee "$OUT/distill-2threads.txt"

if [ -n "${BASE:-}" ]; then
    taskset -c 0 "$BASE" bench --threads 1 --steps 20 | tee "$OUT/base-1thread.txt"
    "$BASE" bench --threads 2 --steps 20 | tee "$OUT/base-2threads.txt"
fi

for job in "teacher 30" "student 200" "distill 60" "infer 0"; do
    set -- $job
    KR_THREADS=1 OMP_NUM_THREADS=1 taskset -c 0 "$PY" "$KREF/bench.py" "$1" "$2" 2>&1 \
        | grep RESULT | tee "$OUT/keras-$1.txt"
done
