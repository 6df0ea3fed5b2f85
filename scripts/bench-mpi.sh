#!/usr/bin/env bash
# Data-parallel scaling on one machine (issue 34): the training step of teacher-v3 and resnet20
# at global batch 64 as 1 process x 1 thread, 1 process x 2 threads, and 2 MPI ranks x 1 thread
# (shared memory, then TCP over loopback), plus every zoo model's gradient all-reduce. The four
# run back to back, REPS times over: a shared machine's speed drifts by tens of percent within
# minutes, so each speed-up is computed within one repetition, and the summary gives their median.
# Needs `cargo build --release --features mpi` and Open MPI; the summary needs jq.
# Usage: scripts/bench-mpi.sh OUT_DIR [STEPS] [REPS]
set -euo pipefail
out="${1:?usage: scripts/bench-mpi.sh OUT_DIR [STEPS] [REPS]}"
steps="${2:-20}"
reps="${3:-1}"
bin="$(dirname "$0")/../target/release/distill"
mkdir -p "$out"
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
mpi=(mpirun -np 2 --bind-to none -q --mca mpi_yield_when_idle 1 -x RAYON_NUM_THREADS=1)
configs=(one-rank-1-thread one-rank-2-threads two-ranks-vader two-ranks-tcp)
run_config() {
  case "$1" in
    one-rank-1-thread) RAYON_NUM_THREADS=1 "$bin" bench --data-parallel --steps "$steps" --json ;;
    one-rank-2-threads) RAYON_NUM_THREADS=2 "$bin" bench --data-parallel --steps "$steps" --json ;;
    two-ranks-vader) "${mpi[@]}" --mca btl self,vader "$bin" bench --data-parallel --steps "$steps" --json ;;
    two-ranks-tcp)
      "${mpi[@]}" --mca btl self,tcp --mca btl_tcp_if_include lo --mca oob_tcp_if_include lo \
        "$bin" bench --data-parallel --steps "$steps" --json ;;
  esac
}
{
  echo "# $(date -u +%FT%TZ) $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs), $(nproc) cores"
  for rep in $(seq 1 "$reps"); do
    dir="$out"
    [ "$reps" -gt 1 ] && dir="$out/rep-$rep" && mkdir -p "$dir"
    for config in "${configs[@]}"; do
      echo "## repetition $rep: $config"
      run_config "$config" | tee "$dir/$config.json"
    done
  done
} 2>&1 | tee "$out/raw.log"

command -v jq > /dev/null || { echo "(jq not found: no summary)"; exit 0; }
# One line per repetition, configuration and model: the step's median, the sync time and the
# speed-up over 1 process x 1 thread of the same repetition.
for dir in "$out" "$out"/rep-*; do
  [ -f "$dir/one-rank-1-thread.json" ] || continue
  for config in "${configs[@]:1}"; do
    jq -r --arg rep "$(basename "$dir")" --arg config "$config" \
      --slurpfile base "$dir/one-rank-1-thread.json" '
      ($base[0].train | map({(.model): .step_ms}) | add) as $one
      | .train[] | [$rep, .model, $config, (.step_ms * 10 | round / 10),
        (.sync_ms * 10 | round / 10), ($one[.model] / .step_ms * 100 | round / 100)] | @tsv' \
      "$dir/$config.json"
  done
done > "$out/speedups.tsv"
echo
echo "speed-up over 1 process x 1 thread, within each repetition: median (min - max)"
for model in teacher-v3 resnet20; do
  for config in "${configs[@]:1}"; do
    awk -F'\t' -v m="$model" -v c="$config" '$2 == m && $3 == c {print $6}' "$out/speedups.tsv" |
      sort -n | awk -v m="$model" -v c="$config" '
        {v[NR] = $1}
        END {
          if (NR == 0) exit
          med = NR % 2 ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2
          printf "%-12s %-20s %5.2fx  (%.2f - %.2f, %d repetitions)\n", m, c, med, v[1], v[NR], NR
        }'
  done
done | tee -a "$out/raw.log"
