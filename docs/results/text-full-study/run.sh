#!/usr/bin/env bash
# Issue 14: the full text study, timed whole on 2 cores (teacher, Tang arm, DistilBERT arm, 3 seeds each).
set -euo pipefail
cd /work/main
B=/work/studies/text-full/distill
T=/work/studies/text-full/times.txt
start=$(date +%s); echo "start $(date -Is)" >> $T
$B run --config configs/text-tang.toml --out runs/text-full/tang --jobs 2 --quiet
mid=$(date +%s); echo "tang (teacher + cache + 6 students + report) $((mid-start)) s" >> $T
$B run --config /work/studies/text-full/distilbert.toml --out runs/text-full/distilbert --jobs 2 --quiet
end=$(date +%s); echo "distilbert (6 students + report) $((end-mid)) s" >> $T
echo "total $((end-start)) s, end $(date -Is)" >> $T
