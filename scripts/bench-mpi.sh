#!/usr/bin/env bash
# Data-parallel scaling on one machine (issue 34): the training step of teacher-v3 and resnet20
# at global batch 64 as 1 process x 1 thread, 1 process x 2 threads, and 2 MPI ranks x 1 thread
# (shared memory, then TCP over loopback), plus every zoo model's gradient all-reduce, all in one
# run so the ratios compare. Needs `cargo build --release --features mpi` and Open MPI.
# Usage: scripts/bench-mpi.sh OUT_DIR [STEPS]
set -euo pipefail
out="${1:?usage: scripts/bench-mpi.sh OUT_DIR [STEPS]}"
steps="${2:-20}"
bin="$(dirname "$0")/../target/release/distill"
mkdir -p "$out"
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
mpi=(mpirun -np 2 --bind-to none -q --mca mpi_yield_when_idle 1 -x RAYON_NUM_THREADS=1)
{
  echo "# $(date -u +%FT%TZ) $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs), $(nproc) cores"
  echo "## 1 process x 1 thread"
  RAYON_NUM_THREADS=1 "$bin" bench --data-parallel --steps "$steps" --json | tee "$out/one-rank-1-thread.json"
  echo "## 1 process x 2 threads"
  RAYON_NUM_THREADS=2 "$bin" bench --data-parallel --steps "$steps" --json | tee "$out/one-rank-2-threads.json"
  echo "## 2 ranks x 1 thread, shared memory (vader)"
  "${mpi[@]}" --mca btl self,vader "$bin" bench --data-parallel --steps "$steps" --json | tee "$out/two-ranks-vader.json"
  echo "## 2 ranks x 1 thread, TCP over loopback"
  "${mpi[@]}" --mca btl self,tcp --mca btl_tcp_if_include lo --mca oob_tcp_if_include lo \
    "$bin" bench --data-parallel --steps "$steps" --json | tee "$out/two-ranks-tcp.json"
} 2>&1 | tee "$out/raw.log"
