#!/usr/bin/env bash
# Issue 15, 2026-12-02: the 2x2 'same' pool over a whole run of planes in one vector loop and its
# backward routed a whole group at once, the input-gradient patches computed and folded back a
# block of input channels at a time (in cache), col2im compiled for AVX-512/AVX2 with short rows
# added as masked blocks, side by side in one run with the binary before them (BEFORE, commit
# 7b73e26, the engine behind the README's 2026-12-01 table), ONNX Runtime on the same teacher-v3
# exported by `distill export`, and the Keras harness. Part 1 alternates BEFORE, NEW, ONNX Runtime
# and Keras for ROUNDS rounds (`bench --model`); part 2 is the README's whole table once (`distill
# bench` on every workload, burn's layers alongside, one and two threads). One thread is pinned to
# core 0; two use both cores. NEW was commit ff7e0fc's binary.
#
#   BEFORE=path/to/old/distill NEW=target/release/distill docs/results/speed-2026-12-02/run.sh
set -euo pipefail
OUT=${OUT:-$(dirname "$0")}
ROUNDS=${ROUNDS:-3}
KREF=${KREF:-../shared/keras-reference}
PY=${PY:-$HOME/.cache/kref/bin/python}
ORT_PY=${ORT_PY:-$HOME/.cache/distill-onnxruntime/bin/python}
ONNX=${ONNX:-/tmp/teacher-v3.onnx}
export CIFAR10_NPZ=${CIFAR10_NPZ:-$HOME/.cache/cifar10-bin/cifar10.npz}
[ -f "$ONNX" ] || "$NEW" export --model docs/results/cifar10-recipe/teacher --format onnx --out "$ONNX"
raw="$OUT/raw.jsonl"
record() { echo "{\"round\":$1,\"engine\":\"$2\",\"what\":\"$3\",\"threads\":$4,\"result\":$5}" >> "$raw"; }
keras() { # WHAT STEPS THREADS PIN...
    local what=$1 steps=$2 threads=$3; shift 3
    KR_THREADS=$threads OMP_NUM_THREADS=$threads "$@" "$PY" "$KREF/bench.py" "$what" "$steps" 2>&1 \
        | grep RESULT | sed 's/^RESULT //'
}
for round in $(seq 1 "$ROUNDS"); do
    for threads in 1 2; do
        pin=""; [ "$threads" = 1 ] && pin="taskset -c 0"
        for model in teacher-v3 student; do
            for engine in before new; do
                bin=$BEFORE; [ $engine = new ] && bin=$NEW
                record "$round" "$engine" "$model" "$threads" "$($pin "$bin" bench --model "$model" --threads "$threads" --json)"
            done
        done
        record "$round" onnxruntime teacher-v3 "$threads" \
            "$(OMP_NUM_THREADS=$threads $pin "$ORT_PY" scripts/onnxruntime_throughput.py "$ONNX" "$threads")"
        for job in "teacher 30" "student 200" "infer 0"; do
            set -- $job
            record "$round" keras "$1" "$threads" "$(keras "$1" "$2" "$threads" $pin)"
        done
    done
done

# Part 2: every workload of `distill bench`, once.
full="$OUT/full"
mkdir -p "$full"
taskset -c 0 "$NEW" bench --threads 1 --steps 20 --compare-burn | tee "$full/new-1thread.txt"
taskset -c 0 "$NEW" bench --threads 1 --steps 20 --json > "$full/new-1thread.json"
taskset -c 0 "$BEFORE" bench --threads 1 --steps 20 --json > "$full/before-1thread.json"
"$NEW" bench --threads 2 --steps 20 --json > "$full/new-2threads.json"
"$BEFORE" bench --threads 2 --steps 20 --json > "$full/before-2threads.json"
keras distill 60 1 taskset -c 0 > "$full/keras-distill-1thread.json"
