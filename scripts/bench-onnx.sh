#!/usr/bin/env bash
# The ONNX teacher check and throughput table behind README's "Bring your own teacher": a
# teacher-v3 trained in Keras and exported by tf2onnx (scripts/keras_teacher_onnx.py), then
#   1. its Keras test accuracy against `distill eval` through the native import and through tract;
#   2. inference throughput at batch 256 and single-image latency, side by side in one run on 1 and
#      2 threads: our native teacher-v3 checkpoint (the same architecture, trained by distill),
#      the ONNX file imported natively, the ONNX file on tract, and ONNX Runtime (Python).
# Raw outputs go to $OUT (default bench-out/onnx). Needs the Keras harness venv with tf2onnx, onnx
# and onnxruntime (~/.cache/kref, see ../shared/keras-reference/README.md) and CIFAR-10 in the
# binary layout (CIFAR10_DIR, default ~/.cache/cifar10-bin, with cifar10.npz for Keras).
# EPOCHS (default 1) trains the Keras teacher; the file is reused when it is already in $OUT.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-bench-out/onnx}
PY=${PY:-$HOME/.cache/kref/bin/python}
CIFAR10_DIR=${CIFAR10_DIR:-$HOME/.cache/cifar10-bin}
export CIFAR10_NPZ=${CIFAR10_NPZ:-$CIFAR10_DIR/cifar10.npz}
NATIVE=${NATIVE:-docs/results/cifar10-recipe/teacher}
mkdir -p "$OUT"
cargo build --release --quiet
DISTILL=target/release/distill
MODEL="$OUT/teacher-v3-keras.onnx"

if [ ! -f "$MODEL" ]; then
    KR_THREADS=2 "$PY" scripts/keras_teacher_onnx.py "$OUT" "${EPOCHS:-1}" 2>&1 | tail -3
fi
echo "Keras: $(cat "$OUT/keras.json" | tr -d '\n ')"

for threads in 1 2; do
    pin=""
    [ "$threads" = 1 ] && pin="taskset -c 0"
    $pin "$DISTILL" eval --model "$NATIVE" --data "cifar10:$CIFAR10_DIR" --speed --json --threads "$threads" \
        > "$OUT/native-checkpoint-$threads.json"
    for engine in native tract; do
        $pin "$DISTILL" eval --model "$MODEL" --onnx-engine "$engine" --data "cifar10:$CIFAR10_DIR" \
            --speed --json --threads "$threads" > "$OUT/onnx-$engine-$threads.json"
    done
    OMP_NUM_THREADS=$threads $pin "$PY" scripts/onnxruntime_throughput.py "$MODEL" "$threads" \
        > "$OUT/onnxruntime-$threads.json"
done

"$PY" - "$OUT" <<'PY'
import json, os, sys
out = sys.argv[1]
keras = json.load(open(os.path.join(out, "keras.json")))
rows = [("teacher-v3 checkpoint (distill-trained), native", "native-checkpoint"),
        ("teacher-v3-keras.onnx, native import", "onnx-native"),
        ("teacher-v3-keras.onnx, tract", "onnx-tract"),
        ("teacher-v3-keras.onnx, ONNX Runtime", "onnxruntime")]
print(f"Keras test accuracy {100 * keras['test_accuracy']:.2f}% ({keras['epochs']} epoch(s))")
print("| engine | test accuracy | 1 thread img/s | 2 threads img/s | latency 1 thread (ms) |")
print("|---|---|---|---|---|")
for label, stem in rows:
    one = json.load(open(os.path.join(out, f"{stem}-1.json")))
    two = json.load(open(os.path.join(out, f"{stem}-2.json")))
    acc = f"{100 * one['accuracy']:.2f}%" if "accuracy" in one else ""
    print(f"| {label} | {acc} | {one['throughput_ips']:.0f} | {two['throughput_ips']:.0f} | {one['latency_ms']:.2f} |")
PY
