"""Medians per workload from the raw.jsonl of scripts/bench-speed.sh (part 1), as a Markdown table.

    python3 scripts/summarize_speed.py RAW.jsonl [--label NAME=TEXT ...] [--ratio-digits N] [--rounds]

The binaries' columns come in the order they were recorded: the first is "before", the last
"now" (its cells in bold); `--label` renames a column's heading (default: the binary's name),
`--ratio-digits` sets the digits of the "now vs before" ratio (default 2), and `--rounds` adds the
per-round training steps of the first and last binary and Keras at one thread.
"""
import argparse
import json
import statistics as st
from collections import defaultdict

PEERS = ("keras", "onnxruntime")

parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
parser.add_argument("raw", nargs="?", default="raw.jsonl")
parser.add_argument("--label", action="append", default=[], metavar="NAME=TEXT")
parser.add_argument("--ratio-digits", type=int, default=2)
parser.add_argument("--rounds", action="store_true")
args = parser.parse_args()
labels = dict(item.split("=", 1) for item in args.label)

runs = defaultdict(list)
engines = []
for line in open(args.raw):
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
        if r["engine"] not in engines:
            engines.append(r["engine"])
        runs[key + ("train",)].append(res["train_ms"])
        runs[key + ("infer",)].append(256e3 / res["infer_ips"])

first, last = engines[0], engines[-1]
med = {k: st.median(v) for k, v in runs.items()}
heads = " | ".join(labels.get(e, e) for e in engines)
print(f"| workload | threads | {heads} | now vs before | Keras | ONNX Runtime | now / peer |")
print("|---|---|" + "---|" * len(engines) + "---|---|---|---|")
for model in ["teacher-v3", "student"]:
    for kind in ["train", "infer"]:
        for t in [1, 2]:
            values = [med.get((e, model, t, kind)) for e in engines]
            b, n = values[0], values[-1]
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
            cells = " | ".join([fmt(v) for v in values[:-1]] + [f"**{fmt(n)}**"])
            print(f"| {label} | {t} | {cells} | {b / n:.{args.ratio_digits}f}x | {fmt(k)} | {fmt(o)} | {peer} |")
print()
print("runs per cell:", sorted({len(v) for v in runs.values()}))
if args.rounds:
    print()
    for model, what in [("teacher-v3", "teacher-v3"), ("student", "student")]:
        print(f"per round ({what} train ms, 1 thread): {first}", runs[(first, model, 1, "train")],
              last, runs[(last, model, 1, "train")], "keras", runs[("keras", model, 1, "train")])
