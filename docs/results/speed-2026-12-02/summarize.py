"""Medians per workload from raw.jsonl (part 1 of run.sh), as the Markdown table in README.md."""
import json
import statistics as st
import sys
from collections import defaultdict

runs = defaultdict(list)
for line in open(sys.argv[1] if len(sys.argv) > 1 else "raw.jsonl"):
    r = json.loads(line)
    res, key = r["result"], (r["engine"], r["what"], r["threads"])
    if r["engine"] == "onnxruntime":
        runs[key + ("infer",)].append(256e3 / res["throughput_ips"])
    elif r["engine"] == "keras":
        if r["what"] == "infer":
            runs[("keras", "teacher-v3", r["threads"], "infer")].append(256e3 / res["img_per_s_median"])
        else:
            model = "teacher-v3" if r["what"] == "teacher" else "student"
            runs[("keras", model, r["threads"], "train")].append(1e3 * res["steady_median_step_s"])
    else:
        runs[key + ("train",)].append(res["train_ms"])
        runs[key + ("infer",)].append(256e3 / res["infer_ips"])

med = {k: st.median(v) for k, v in runs.items()}
print("| workload | threads | before (7b73e26) | **now** | now vs before | Keras | ONNX Runtime | now / peer |")
print("|---|---|---|---|---|---|---|---|")
for model in ["teacher-v3", "student"]:
    for kind in ["train", "infer"]:
        for t in [1, 2]:
            b, n = (med.get((e, model, t, kind)) for e in ["before", "new"])
            if b is None:
                continue
            k = med.get(("keras", model, t, kind))
            o = med.get(("onnxruntime", model, t, kind))
            if kind == "train":
                fmt = lambda v: f"{v:.1f} ms" if v is not None else ""
                label = f"{model} train step (batch 64)"
                peer = f"{n / k:.2f}x Keras' time" if k else ""
            else:
                fmt = lambda v: f"{256e3 / v:,.0f} img/s" if v is not None else ""
                label = f"{model} inference (batch 256)"
                parts = []
                if o:
                    parts.append(f"{o / n:.2f}x ONNX Runtime's speed")
                if k:
                    parts.append(f"{k / n:.2f}x Keras'")
                peer = ", ".join(parts)
            print(f"| {label} | {t} | {fmt(b)} | **{fmt(n)}** | {b / n:.2f}x | {fmt(k)} | {fmt(o)} | {peer} |")
print()
print("runs per cell:", sorted({len(v) for v in runs.values()}))
print()
print("per round (teacher-v3 train ms, 1 thread): before", runs[("before", "teacher-v3", 1, "train")],
      "new", runs[("new", "teacher-v3", 1, "train")], "keras", runs[("keras", "teacher-v3", 1, "train")])
print("per round (student train ms, 1 thread): before", runs[("before", "student", 1, "train")],
      "new", runs[("new", "student", 1, "train")], "keras", runs[("keras", "student", 1, "train")])
