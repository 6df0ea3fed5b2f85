#!/usr/bin/env bash
# Issue 15, end to end: the same small study in `distill run` and in the Keras harness, back to
# back on one machine, each timed whole (wall clock, every core): teacher-v3 2 epochs, the student
# from scratch 2 epochs, two distilled students 2 epochs, CIFAR-10, each epoch validated on the
# test split. distill runs `configs/bench-e2e.toml` as one command (teacher, students, the teacher
# logit cache, test evaluation, inference timing, report and plots); Keras runs
# `../shared/keras-reference/train.py` four times (teacher, student, distill, distill: its
# Distiller runs the teacher live on every step, as the notebook does). Each Keras process pays
# TensorFlow's start-up once; the script also prints the sum of the epochs' own times.
#
#   scripts/bench-e2e-vs-keras.sh            (raw outputs in $OUT, default bench-out/e2e)
#
# Needs the Keras harness set up as in ../shared/keras-reference/README.md (venv in ~/.cache/kref)
# and CIFAR-10 prepared by its prepare_cifar10.py into $CIFAR10_DIR (the binary layout distill
# reads and cifar10.npz Keras reads). Run on an otherwise idle machine: about 20 minutes on 2
# cores.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
OUT=${OUT:-bench-out/e2e}
KREF=$(cd "${KREF:-../shared/keras-reference}" && pwd)
PY=${PY:-$HOME/.cache/kref/bin/python}
CIFAR10_DIR=${CIFAR10_DIR:-$HOME/.cache/cifar10-bin}
export CIFAR10_NPZ=${CIFAR10_NPZ:-$CIFAR10_DIR/cifar10.npz}
THREADS=${THREADS:-$(nproc)}
DISTILL=${DISTILL:-target/release/distill}
[ -x "$DISTILL" ] || cargo build --release --quiet
DISTILL=$(realpath "$DISTILL")
rm -rf "$OUT/distill-run" "$OUT/keras" && mkdir -p "$OUT/keras"
OUT=$(realpath "$OUT")

now() { date +%s.%N; }
elapsed() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.1f", b - a }'; }

start=$(now)
RAYON_NUM_THREADS=$THREADS "$DISTILL" run --config "$ROOT/configs/bench-e2e.toml" \
    --data "cifar10:$CIFAR10_DIR" --out "$OUT/distill-run" --quiet >"$OUT/distill.log" 2>&1
distill_s=$(elapsed "$start" "$(now)")
echo "distill run: $distill_s s"

start=$(now)
(
    cd "$OUT/keras"
    export KR_THREADS=$THREADS
    "$PY" "$KREF/train.py" teacher 2 >teacher.log 2>&1
    "$PY" "$KREF/train.py" student 2 >student.log 2>&1
    "$PY" "$KREF/train.py" distill 2 --teacher teacher.keras >distill-a.log 2>&1
    "$PY" "$KREF/train.py" distill 2 --teacher teacher.keras --tag=-b >distill-b.log 2>&1
)
keras_s=$(elapsed "$start" "$(now)")
keras_epochs_s=$(cat "$OUT"/keras/logs/*.csv | awk -F, 'NR == 1 { for (i = 1; i <= NF; i++) { if ($i == "train_s") t = i; if ($i == "val_s") v = i } next }
    $1 != "epoch" { s += $t + $v } END { printf "%.1f", s }')
echo "Keras, 4 processes: $keras_s s (their epochs alone: $keras_epochs_s s)"
ratio=$(awk -v a="$distill_s" -v b="$keras_s" 'BEGIN { printf "%.2f", a / b }')
echo "distill / Keras wall time: ${ratio}x ($THREADS threads)"
printf '{"threads": %s, "distill_s": %s, "keras_s": %s, "keras_epochs_s": %s, "ratio": %s}\n' \
    "$THREADS" "$distill_s" "$keras_s" "$keras_epochs_s" "$ratio" >"$OUT/e2e.json"
