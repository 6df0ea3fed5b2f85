#!/usr/bin/env bash
# Side by side in one run: distill's ResNet training step (batch 64) and inference (batch 256)
# against PyTorch's (same model definition, SGD with momentum 0.9) and ONNX Runtime's (the PyTorch
# model exported to ONNX), at 1 and 2 threads, in alternating rounds so that drift on a shared
# machine hits every engine alike. Prints one JSON line per measurement, then a median table.
#
#   scripts/bench-resnet-vs-torch.sh [ROUNDS] [MODELS...]     (default: 3 rounds, resnet20 resnet56)
#
# Needs torch, onnx and onnxruntime in a venv: PY (default ~/.cache/distill-torch/venv/bin/python),
# made with `python3 -m venv ~/.cache/distill-torch/venv && ~/.cache/distill-torch/venv/bin/pip
# install torch onnx onnxruntime`. Uses target/release/distill (build it first). One thread is
# pinned to core 0 with taskset where available. Our training step uses Adam (distill bench's
# optimizer), PyTorch's SGD with momentum; either update is under 1% of a step at these sizes.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-$HOME/.cache/distill-torch/venv/bin/python}
DISTILL=${DISTILL:-target/release/distill}
ROUNDS=${1:-3}
shift || true
MODELS=("${@:-resnet20 resnet56}")
read -r -a MODELS <<< "${MODELS[*]}"
OUT=$(mktemp)
pin() { if [ "$1" = 1 ] && command -v taskset >/dev/null; then echo "taskset -c 0"; fi; }
echo "# $(lscpu | sed -n 's/^Model name: *//p') ($(nproc) cores; flags: $(grep -o -w -E 'avx512f|avx512_bf16|amx_tile' /proc/cpuinfo | sort -u | tr '\n' ' '))" >&2
for round in $(seq "$ROUNDS"); do
  for model in "${MODELS[@]}"; do
    for threads in 1 2; do
      ours=$($(pin "$threads") "$DISTILL" bench --model "$model" --threads "$threads" --steps 10 --json)
      echo "{\"round\": $round, \"engine\": \"distill\", \"result\": $ours}" | tee -a "$OUT"
      theirs=$(OMP_NUM_THREADS=$threads $(pin "$threads") "$PY" scripts/torch_resnet_bench.py "$model" "$threads")
      echo "{\"round\": $round, \"engine\": \"pytorch\", \"result\": $theirs}" | tee -a "$OUT"
    done
  done
done
"$PY" - "$OUT" <<'PYEOF'
import json, statistics, sys
rows = [json.loads(line) for line in open(sys.argv[1])]
def med(values): return statistics.median(values)
table = {}
for r in rows:
    res = r["result"]
    key = (res["model"], res["threads"])
    entry = table.setdefault(key, {"ours_step": [], "ours_ips": [], "torch_step": [], "torch_ips": [], "ort_ips": []})
    if r["engine"] == "distill":
        entry["ours_step"].append(res["train_ms"])
        entry["ours_ips"].append(res["infer_ips"])
    else:
        entry["torch_step"].append(res["torch_train_step_ms"])
        entry["torch_ips"].append(res["torch_infer_ips"])
        entry["ort_ips"].append(res["ort_infer_ips"])
print("| model | threads | distill step | PyTorch step | ratio | distill img/s | ONNX Runtime img/s | ratio | PyTorch img/s |")
print("|---|---|---|---|---|---|---|---|---|")
for (model, threads), e in sorted(table.items()):
    s, ts = med(e["ours_step"]), med(e["torch_step"])
    i, oi, ti = med(e["ours_ips"]), med(e["ort_ips"]), med(e["torch_ips"])
    print(f"| {model} | {threads} | {s:.1f} ms | {ts:.1f} ms | {s / ts:.2f}x | {i:,.0f} | {oi:,.0f} | {i / oi:.2f}x | {ti:,.0f} |")
PYEOF
