#!/usr/bin/env bash
# Issue 15, 2026-12-01: the fused convolution + pool and the phase-split im2col, side by side in
# one run: the binary before (BEFORE), after the fusion alone (FUSED), after both (NEW), ONNX
# Runtime on the same teacher-v3 exported by `distill export`, and the Keras harness, alternating
# for ROUNDS rounds. One thread is pinned to core 0; two threads use both cores. Raw JSON lines go
# to $OUT/raw.jsonl.
set -euo pipefail
OUT=${OUT:-$(dirname "$0")}
ROUNDS=${ROUNDS:-3}
KREF=${KREF:-../shared/keras-reference}
PY=${PY:-$HOME/.cache/kref/bin/python}
ORT_PY=${ORT_PY:-$HOME/.cache/distill-onnxruntime/bin/python}
ONNX=${ONNX:-$OUT/teacher-v3.onnx}
export CIFAR10_NPZ=${CIFAR10_NPZ:-$HOME/.cache/cifar10-bin/cifar10.npz}
[ -f "$ONNX" ] || "$NEW" export --model docs/results/cifar10-recipe/teacher --format onnx --out "$ONNX"
raw="$OUT/raw.jsonl"
record() { echo "{\"round\":$1,\"engine\":\"$2\",\"what\":\"$3\",\"threads\":$4,\"result\":$5}" >> "$raw"; }
for round in $(seq 1 "$ROUNDS"); do
    for threads in 1 2; do
        pin=""; [ "$threads" = 1 ] && pin="taskset -c 0"
        for model in teacher-v3 student; do
            for engine in before fused new; do
                bin=$BEFORE; [ $engine = fused ] && bin=$FUSED; [ $engine = new ] && bin=$NEW
                record "$round" "$engine" "$model" "$threads" "$($pin "$bin" bench --model "$model" --threads "$threads" --json)"
            done
        done
        record "$round" onnxruntime teacher-v3 "$threads" \
            "$(OMP_NUM_THREADS=$threads $pin "$ORT_PY" scripts/onnxruntime_throughput.py "$ONNX" "$threads")"
        for job in "teacher 30" "student 200" "infer 0"; do
            set -- $job
            res=$(KR_THREADS=$threads OMP_NUM_THREADS=$threads $pin "$PY" "$KREF/bench.py" "$1" "$2" 2>&1 | grep RESULT | sed 's/^RESULT //')
            record "$round" keras "$1" "$threads" "$res"
        done
    done
done
