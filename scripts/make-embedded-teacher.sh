#!/usr/bin/env bash
# Rebuilds the pretrained teacher compiled into the binary (assets/teacher/, `teacher = "embedded"`
# in configs/quick.toml): teacher-small trained on all 60,000 Fashion-MNIST training images.
#
#   scripts/make-embedded-teacher.sh [FASHION_MNIST_DIR]   (default /usr/share/datasets/fashion-mnist)
#
# Needs the Fashion-MNIST IDX files (`apt-get install dataset-fashion-mnist`). About 10 minutes on
# 2 cores. Training is seeded (seed 42), so the weights are reproducible on the same machine and
# thread count; elsewhere they may differ in the last bits, the accuracy by a few tenths.
set -euo pipefail
cd "$(dirname "$0")/.."
DATA=${1:-/usr/share/datasets/fashion-mnist}
RUN=$(mktemp -d)
trap 'rm -rf "$RUN"' EXIT
cargo run --release -- train --model teacher-small --data "fashion-mnist:$DATA" --epochs 10 \
    --cosine --seed 42 --quiet --out "$RUN/teacher"
for f in spec.toml model.bpk meta.json manifest.json history.csv; do
    cp "$RUN/teacher/$f" assets/teacher/
done
cargo run --release -- eval --model assets/teacher --data embedded
