#!/usr/bin/env bash
# Side-by-side speed record: one or more distill binaries, ONNX Runtime on the same teacher-v3
# exported by `distill export`, and the Keras harness, in alternating rounds on one machine, so
# that drift on a shared host hits every engine alike. One thread is pinned to core 0 with
# taskset; two threads use both cores. This is the script behind docs/results/speed-*/.
#
#   scripts/bench-speed.sh OUT_DIR NAME=BINARY [NAME=BINARY ...]
#   e.g. scripts/bench-speed.sh docs/results/speed-$(date +%F) before=/tmp/distill-old new=target/release/distill
#
# List the binaries oldest first: the first is "before", the last is "now" (it exports the ONNX
# teacher and runs part 2). Then summarise part 1 as a Markdown table of medians:
#   python3 scripts/summarize_speed.py OUT_DIR/raw.jsonl --rounds
#
# Part 1, for ROUNDS rounds, at 1 then 2 threads: `distill bench --model M --threads N --json`
# (median training step at batch 64, inference at batch 256 on random CIFAR-shaped data) for
# M = teacher-v3 and student with every binary; ONNX Runtime's teacher-v3 inference
# (scripts/onnxruntime_throughput.py); the Keras harness' teacher step (30 steps), student step
# (200 steps) and teacher inference. One JSON line per measurement is appended to OUT_DIR/raw.jsonl:
#   {"round": R, "engine": NAME|"onnxruntime"|"keras", "what": ..., "threads": N, "result": {...}}
# Part 2 (FULL=1, the default; FULL=0 skips it): every workload of `distill bench` once, into
# OUT_DIR/full/: the last binary with --compare-burn (burn's layers alongside) at 1 thread, then
# every binary's --json at 1 and at 2 threads, and the Keras harness' distillation step (60 steps).
#
# Environment: ROUNDS (3), FULL (1), KREF (the Keras harness, ../shared/keras-reference; set it up
# as its README.md says), PY (its Python, ~/.cache/kref/bin/python), ORT_PY (a Python with
# onnxruntime and numpy, ~/.cache/distill-onnxruntime/bin/python), ONNX (the exported teacher,
# /tmp/teacher-v3.onnx; made from docs/results/cifar10-recipe/teacher if missing), CIFAR10_NPZ
# (~/.cache/cifar10-bin/cifar10.npz, for the Keras harness). Run it on an otherwise idle machine.
set -euo pipefail
if [ $# -lt 2 ]; then
    sed -n '7,8p' "$0" | sed 's/^# *//' >&2
    exit 2
fi
OUT_ARG=$1
shift
NAMES=()
BINS=()
for arg in "$@"; do
    case "$arg" in
        *=*) ;;
        *) echo "error: '$arg' is not NAME=BINARY" >&2; exit 2 ;;
    esac
    name=${arg%%=*}
    bin=${arg#*=}
    case "$name" in
        keras | onnxruntime | "") echo "error: '$name' cannot name a binary" >&2; exit 2 ;;
    esac
    [ -x "$bin" ] || { echo "error: $bin is not an executable (from '$arg')" >&2; exit 2; }
    NAMES+=("$name")
    BINS+=("$(cd "$(dirname "$bin")" && pwd)/$(basename "$bin")")
done
mkdir -p "$OUT_ARG"
OUT=$(cd "$OUT_ARG" && pwd)
last=$((${#BINS[@]} - 1))
NOW=${BINS[$last]}
cd "$(dirname "$0")/.."
ROUNDS=${ROUNDS:-3}
FULL=${FULL:-1}
KREF=${KREF:-../shared/keras-reference}
PY=${PY:-$HOME/.cache/kref/bin/python}
ORT_PY=${ORT_PY:-$HOME/.cache/distill-onnxruntime/bin/python}
ONNX=${ONNX:-/tmp/teacher-v3.onnx}
export CIFAR10_NPZ=${CIFAR10_NPZ:-$HOME/.cache/cifar10-bin/cifar10.npz}
[ -f "$ONNX" ] || "$NOW" export --model docs/results/cifar10-recipe/teacher --format onnx --out "$ONNX"

raw="$OUT/raw.jsonl"
record() { echo "{\"round\":$1,\"engine\":\"$2\",\"what\":\"$3\",\"threads\":$4,\"result\":$5}" >> "$raw"; }
keras() { # WHAT STEPS THREADS [PIN...]
    local what=$1 steps=$2 threads=$3; shift 3
    KR_THREADS=$threads OMP_NUM_THREADS=$threads "$@" "$PY" "$KREF/bench.py" "$what" "$steps" 2>&1 \
        | grep RESULT | sed 's/^RESULT //'
}

# Part 1: alternating rounds.
for round in $(seq 1 "$ROUNDS"); do
    for threads in 1 2; do
        pin=""; [ "$threads" = 1 ] && pin="taskset -c 0"
        for model in teacher-v3 student; do
            for i in "${!BINS[@]}"; do
                record "$round" "${NAMES[$i]}" "$model" "$threads" \
                    "$($pin "${BINS[$i]}" bench --model "$model" --threads "$threads" --json)"
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

# Part 2: every workload of `distill bench`, once; the last binary first.
[ "$FULL" = 1 ] || exit 0
full="$OUT/full"
mkdir -p "$full"
taskset -c 0 "$NOW" bench --threads 1 --steps 20 --compare-burn | tee "$full/${NAMES[$last]}-1thread.txt"
for i in $(seq "$last" -1 0); do
    taskset -c 0 "${BINS[$i]}" bench --threads 1 --steps 20 --json > "$full/${NAMES[$i]}-1thread.json"
done
for i in $(seq "$last" -1 0); do
    "${BINS[$i]}" bench --threads 2 --steps 20 --json > "$full/${NAMES[$i]}-2threads.json"
done
keras distill 60 1 taskset -c 0 > "$full/keras-distill-1thread.json"
