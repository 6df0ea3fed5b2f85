#!/usr/bin/env bash
# Side-by-side inference speed of a BERT encoder (issue 14): `distill bench --text` and PyTorch
# (transformers' BertModel, scripts/torch_text_bench.py) on the same weights, the same batch shapes
# (random token ids, no padding) and the same thread count, alternating ROUNDS times so that drift
# in the machine's speed hits both alike; medians go into a Markdown table.
#
#   scripts/bench-text-vs-torch.sh [MODEL_DIR]     (default: the cached all-MiniLM-L6-v2)
#
# Needs PyTorch and transformers in a venv: PY (default ~/.cache/distill-torch/venv/bin/python),
# made with `python3 -m venv ~/.cache/distill-torch/venv && ~/.cache/distill-torch/venv/bin/pip
# install torch transformers` (the Linux torch wheel from PyPI pulls CUDA libraries it does not use
# on CPU; about 3 GB). Run on an otherwise idle machine. Raw JSON lines go to $OUT/raw.jsonl.
# DISTILL=path/to/distill times that binary instead of building this checkout.
set -euo pipefail
cd "$(dirname "$0")/.."
MODEL=${1:-${DISTILL_DATA:-$HOME/.cache/distill}/all-MiniLM-L6-v2}
PY=${PY:-$HOME/.cache/distill-torch/venv/bin/python}
OUT=${OUT:-bench-out/text}
ROUNDS=${ROUNDS:-3}
STEPS=${STEPS:-10}
SHAPES=${SHAPES:-"64x32 64x64"}
mkdir -p "$OUT"
if [ -z "${DISTILL:-}" ]; then
    cargo build --release --quiet
    DISTILL=target/release/distill
fi
: >"$OUT/raw.jsonl"

for round in $(seq "$ROUNDS"); do
    for threads in 1 2; do
        for shape in $SHAPES; do
            batch=${shape%x*}
            len=${shape#*x}
            args=(--threads "$threads" --batch-size "$batch" --seq-len "$len" --steps "$STEPS")
            "$DISTILL" bench --text "$MODEL" "${args[@]}" --json >>"$OUT/raw.jsonl"
            OMP_NUM_THREADS=$threads "$PY" scripts/torch_text_bench.py "$MODEL" "${args[@]}" \
                2>/dev/null >>"$OUT/raw.jsonl"
        done
    done
    echo "round $round of $ROUNDS done" >&2
done

python3 - "$OUT/raw.jsonl" <<'PY' | tee "$OUT/table.md"
import json, statistics, sys
rows = {}
for line in open(sys.argv[1]):
    r = json.loads(line)
    who = "pytorch" if r["backend"].startswith("pytorch") else "distill"
    key = (r["threads"], r["batch_size"], r["seq_len"])
    rows.setdefault(key, {}).setdefault(who, []).append(r)
backend = next(r["backend"] for runs in rows.values() for r in runs.get("pytorch", []))
print(f"| threads | batch × tokens | distill texts/s | PyTorch texts/s | ratio | distill latency (1 text) | PyTorch latency | ratio |")
print("|---|---|---|---|---|---|---|---|")
for (threads, batch, length), runs in sorted(rows.items()):
    med = lambda who, k: statistics.median(r[k] for r in runs[who])
    ours, theirs = med("distill", "infer_texts_per_s"), med("pytorch", "infer_texts_per_s")
    lat_ours, lat_theirs = med("distill", "latency_ms"), med("pytorch", "latency_ms")
    print(f"| {threads} | {batch} × {length} | {ours:.1f} | {theirs:.1f} | {ours / theirs:.2f}x "
          f"| {lat_ours:.2f} ms | {lat_theirs:.2f} ms | {lat_theirs / lat_ours:.2f}x |")
n = len(next(iter(rows.values()))["distill"])
print(f"\nMedians of {n} alternating rounds; ratio > 1 means distill is faster. PyTorch: {backend}.")
PY
