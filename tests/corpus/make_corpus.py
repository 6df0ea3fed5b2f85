#!/usr/bin/env python3
"""Writes the malformed-input corpus under tests/corpus/cases/ (standard library only).

Every case is a directory holding the bad input; tests/corpus/cases.toml says which `distill`
command is run on it (from inside the case directory) and what the error must say.
tests/corpus.rs runs them all.

The checkpoint and logit-cache cases start from two real checkpoints of tiny models, made with
the release binary (the weights are burn's burnpack format, which this script does not write):

    distill train --model tests/corpus/tiny-a.toml --epochs 1 --out tests/corpus/tiny-a-checkpoint
    distill train --model tests/corpus/tiny-b.toml --epochs 1 --out tests/corpus/tiny-b-checkpoint

(then only spec.toml, model.bpk, meta.json and manifest.json are kept). The augmented-view
logit cache of `views-cache-other-settings` is written by running that binary (build it first with
`cargo build --release`, or point $DISTILL_BIN at one) on a ten-image folder dataset:

    distill distill --teacher ../../tiny-a-checkpoint --student ../../tiny-b.toml --data folder:data \
        --augment --views 2 --teacher-logits views-2.bin --epochs 1 --batch-size 10 --out TMP --quiet

Re-run this script after changing it: `python3 tests/corpus/make_corpus.py`.
"""

import gzip
import hashlib
import json
import os
import shutil
import struct
import subprocess
import tempfile
import zlib

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
CASES = os.path.join(HERE, "cases")
CIFAR_RECORD = 1 + 3 * 32 * 32
CLASSES = "airplane\nautomobile\nbird\ncat\ndeer\ndog\nfrog\nhorse\nship\ntruck\n"


def write(case, name, data):
    path = os.path.join(CASES, case, name)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "wb") as f:
        f.write(data if isinstance(data, bytes) else data.encode())


def cifar_records(labels):
    out = b""
    for i, label in enumerate(labels):
        out += bytes([label]) + bytes((i * 7 + j) % 256 for j in range(CIFAR_RECORD - 1))
    return out


def cifar_case(case, **override):
    """A valid two-records-per-file CIFAR-10 directory, with some files replaced."""
    files = {"batches.meta.txt": CLASSES, "test_batch.bin": cifar_records([3, 4])}
    for i in range(1, 6):
        files[f"data_batch_{i}.bin"] = cifar_records([i, (i + 1) % 10])
    files.update(override)
    for name, data in files.items():
        if data is not None:
            write(case, name, data)


CIFAR100_RECORD = 2 + 3 * 32 * 32
CIFAR100_FINE = "".join(f"fine_{i:02}\n" for i in range(100))
CIFAR100_COARSE = "".join(f"coarse_{i:02}\n" for i in range(20))


def cifar100_records(labels):
    """CIFAR-100 records, one per (coarse, fine) label pair."""
    out = b""
    for i, (coarse, fine) in enumerate(labels):
        out += bytes([coarse, fine]) + bytes((i * 7 + j) % 256 for j in range(CIFAR100_RECORD - 2))
    return out


def cifar100_case(case, **override):
    """A valid two-records-per-file CIFAR-100 directory, with some files replaced."""
    files = {
        "train.bin": cifar100_records([(3, 5), (19, 99)]),
        "test.bin": cifar100_records([(0, 0), (7, 42)]),
        "fine_label_names.txt": CIFAR100_FINE,
        "coarse_label_names.txt": CIFAR100_COARSE,
    }
    files.update(override)
    for name, data in files.items():
        if data is not None:
            write(case, name, data)


def cifar100_cases():
    """The CIFAR-100 binary layout (`distill data info cifar100:.` / `cifar100-coarse:.`)."""
    cifar100_case("cifar100-fine-label-out-of-range", **{"train.bin": cifar100_records([(3, 5), (4, 100)])})
    cifar100_case("cifar100-coarse-label-out-of-range", **{"test.bin": cifar100_records([(20, 7), (1, 1)])})
    cifar100_case("cifar100-truncated-record", **{"test.bin": cifar100_records([(1, 2)]) + b"\x05" * 1000})
    cifar100_case("cifar100-wrong-name-count", **{"fine_label_names.txt": CIFAR100_FINE.replace("fine_42\n", "")})
    cifar100_case("cifar100-missing-train", **{"train.bin": None})
    cifar_case("cifar100-given-cifar10-files")


def idx_images(n, h, w, magic=0x00000803, count=None):
    header = struct.pack(">IIII", magic, n if count is None else count, h, w)
    return header + bytes((i * 13) % 256 for i in range(n * h * w))


def idx_labels(labels, count=None):
    return struct.pack(">II", 0x00000801, len(labels) if count is None else count) + bytes(labels)


def gz(data):
    return gzip.compress(data, mtime=0)


def idx_case(case, **override):
    """A valid small Fashion-MNIST directory (3 train, 2 test images), some files replaced."""
    files = {
        "train-images-idx3-ubyte.gz": gz(idx_images(3, 28, 28)),
        "train-labels-idx1-ubyte.gz": gz(idx_labels([0, 1, 2])),
        "t10k-images-idx3-ubyte.gz": gz(idx_images(2, 28, 28)),
        "t10k-labels-idx1-ubyte.gz": gz(idx_labels([3, 4])),
    }
    files.update(override)
    for name, data in files.items():
        write(case, name, data)


def png(width, height, gray=128):
    def chunk(kind, data):
        body = kind + data
        return struct.pack(">I", len(data)) + body + struct.pack(">I", zlib.crc32(body))

    rows = b"".join(b"\x00" + bytes([gray] * width) for _ in range(height))
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0))
        + chunk(b"IDAT", zlib.compress(rows))
        + chunk(b"IEND", b"")
    )


def folder_case(case, files):
    for name, data in files.items():
        if data is None:
            os.makedirs(os.path.join(CASES, case, name), exist_ok=True)
        else:
            write(case, name, data)


VALID_EXPERIMENT = """data = "embedded"
[teacher]
model = "teacher-small"
epochs = 1
[student]
model = "student"
epochs = 1
[sweep]
alpha = [0.5]
temperature = [4.0]
t2_scaling = [false]
"""


def sha256(data):
    return hashlib.sha256(data).hexdigest()


def read(path):
    with open(path, "rb") as f:
        return f.read()


def checkpoint_case(case, source, replace=None, drop=(), manifest="recompute"):
    """A copy of a real checkpoint with some files replaced or removed. `manifest`: "keep" the
    original (so replaced files no longer match it), "recompute" it, or "drop" it."""
    files = {}
    for name in ["spec.toml", "model.bpk", "meta.json", "manifest.json"]:
        files[name] = read(os.path.join(HERE, source, name))
    files.update(replace or {})
    for name in drop:
        files.pop(name)
    if manifest == "recompute":
        entries = {n: sha256(d) for n, d in files.items() if n != "manifest.json"}
        entries.update({n: json.loads(files["manifest.json"])[n] for n in drop})
        files["manifest.json"] = json.dumps(dict(sorted(entries.items())), indent=2).encode()
    elif manifest == "drop":
        files.pop("manifest.json")
    for name, data in files.items():
        write(case, name, data)


def flags_only_case(case):
    """A case whose bad input is on the command line: the directory holds only a note."""
    write(case, "README.txt", "No input files: the malformed input is in the command (tests/corpus/cases.toml).\n")


def experiment_with_student(extra):
    """VALID_EXPERIMENT with `extra` lines added to its [student] table."""
    student = 'model = "student"\nepochs = 1\n'
    assert student in VALID_EXPERIMENT
    return VALID_EXPERIMENT.replace(student, student + extra)


def views_cache_case(case, views):
    """A ten-image folder dataset (1x28x28, ten classes, as tiny-a expects) and the augmented-view
    logit cache of tiny-a for it with `views` fixed views, made by the release binary."""
    for split, shade in (("train", 0), ("test", 5)):
        for c in range(10):
            write(case, f"data/{split}/class{c}/0.png", png(28, 28, gray=20 * c + shade))
    binary = os.environ.get("DISTILL_BIN") or os.path.join(ROOT, "target", "release", "distill")
    if not os.path.isfile(binary):
        raise SystemExit(f"{binary} not found: run `cargo build --release` first (or set DISTILL_BIN)")
    with tempfile.TemporaryDirectory() as tmp:
        subprocess.run(
            [binary, "distill", "--teacher", "../../tiny-a-checkpoint", "--student", "../../tiny-b.toml",
             "--data", "folder:data", "--augment", "--views", str(views),
             "--teacher-logits", f"views-{views}.bin", "--epochs", "1", "--batch-size", "10",
             "--out", os.path.join(tmp, "out"), "--quiet"],
            cwd=os.path.join(CASES, case), env=dict(os.environ, DISTILL_DATA=os.path.join(tmp, "cache")),
            check=True, stdout=subprocess.DEVNULL)


def logit_cache(teacher_hash, fingerprint, rows, classes, truncate=0):
    body = b"DLOGIT01"
    for key in (teacher_hash, fingerprint):
        body += struct.pack("<Q", len(key)) + key.encode()
    body += struct.pack("<QQ", rows, classes)
    body += b"".join(struct.pack("<f", (i % 17) / 4.0) for i in range(rows * classes))
    data = body + hashlib.sha256(body).digest()
    return data[: len(data) - truncate] if truncate else data


def main():
    if os.path.isdir(CASES):
        shutil.rmtree(CASES)

    # CIFAR-10 binary layout
    cifar_case("cifar-truncated-record", **{"test_batch.bin": cifar_records([1, 2]) + b"\x05" * 1000})
    cifar_case("cifar-empty-batch", **{"data_batch_2.bin": b""})
    cifar_case("cifar-label-out-of-range", **{"data_batch_4.bin": cifar_records([2, 10])})
    cifar_case("cifar-missing-batch", **{"data_batch_3.bin": None})
    cifar_case("cifar-binary-class-names", **{"batches.meta.txt": b"\xff\xfe\x00\x01cat\n\x80"})
    cifar_case("cifar-blank-class-names", **{"batches.meta.txt": "\n  \n\n"})
    cifar100_cases()

    # IDX (MNIST / Fashion-MNIST)
    idx_case("idx-bad-magic", **{"train-images-idx3-ubyte.gz": gz(idx_images(3, 28, 28, magic=0x00000999))})
    idx_case("idx-count-mismatch", **{"train-labels-idx1-ubyte.gz": gz(idx_labels([0, 1]))})
    idx_case("idx-truncated-images", **{"t10k-images-idx3-ubyte.gz": gz(idx_images(2, 28, 28)[:-300])})
    idx_case("idx-broken-gzip", **{"train-images-idx3-ubyte.gz": gz(idx_images(3, 28, 28))[:200]})
    idx_case("idx-label-out-of-range", **{"t10k-labels-idx1-ubyte.gz": gz(idx_labels([3, 12]))})
    idx_case("idx-labels-file-as-images", **{"train-images-idx3-ubyte.gz": gz(idx_labels([0, 1, 2]))})
    idx_case("idx-test-size-differs", **{"t10k-images-idx3-ubyte.gz": gz(idx_images(2, 20, 20))})
    idx_case("idx-huge-count", **{"train-images-idx3-ubyte.gz": gz(idx_images(3, 28, 28, count=0xFFFFFFFF))})

    # image folders
    folder_case("folder-undecodable-jpeg", {
        "train/cat/0.jpg": b"\xff\xd8\xff\xe0 this is not really a JPEG",
        "train/dog/0.png": png(8, 8), "test/cat/0.png": png(8, 8), "test/dog/0.png": png(8, 8)})
    folder_case("folder-odd-size", {
        "train/cat/0.png": png(8, 8), "train/dog/0.png": png(9, 8),
        "test/cat/0.png": png(8, 8), "test/dog/0.png": png(8, 8)})
    folder_case("folder-empty-class", {
        "train/cat/0.png": png(8, 8), "train/dog/notes.txt": b"no images here\n",
        "test/cat/0.png": png(8, 8), "test/dog/0.png": png(8, 8)})
    folder_case("folder-truncated-png", {
        "train/cat/0.png": png(8, 8), "train/dog/0.png": png(8, 8)[:40],
        "test/cat/0.png": png(8, 8), "test/dog/0.png": png(8, 8)})
    folder_case("folder-class-mismatch", {
        "train/cat/0.png": png(8, 8), "train/dog/0.png": png(8, 8),
        "test/cat/0.png": png(8, 8), "test/bird/0.png": png(8, 8)})
    folder_case("folder-missing-test-split", {"train/cat/0.png": png(8, 8), "train/dog/0.png": png(8, 8)})

    # experiment configs (`distill run --config experiment.toml`)
    write("config-unknown-key", "experiment.toml", VALID_EXPERIMENT + "[training]\nbatchsize = 64\n")
    write("config-toml-syntax", "experiment.toml", 'data = "embedded\n[student]\nepochs = 1\n')
    write("config-alpha-out-of-range", "experiment.toml", VALID_EXPERIMENT.replace("[0.5]", "[0.5, 1.5]"))
    write("config-zero-temperature", "experiment.toml", VALID_EXPERIMENT.replace("[4.0]", "[0.0]"))
    write("config-zero-epochs", "experiment.toml", VALID_EXPERIMENT.replace("model = \"student\"\nepochs = 1", "model = \"student\"\nepochs = 0"))
    write("config-batch-larger-than-data", "experiment.toml", VALID_EXPERIMENT + "[training]\nbatch_size = 1000000\n")
    write("config-student-wrong-classes", "experiment.toml", VALID_EXPERIMENT.replace('model = "student"', 'model = "five-classes.toml"'))
    write("config-student-wrong-classes", "five-classes.toml",
          'name = "five-classes"\n[[layers]]\ntype = "flatten"\n[[layers]]\ntype = "dense"\nunits = 5\n')
    write("config-missing-teacher-dir", "experiment.toml", VALID_EXPERIMENT.replace(
        '[teacher]\nmodel = "teacher-small"\nepochs = 1\n', 'teacher = "no-such-teacher"\n'))
    write("config-init-from-missing-dir", "experiment.toml", experiment_with_student('init_from = "no-such-checkpoint"\n'))
    write("config-dropout-count", "experiment.toml", experiment_with_student("dropout = [0.1]\n"))
    write("config-dropout-rate-out-of-range", "experiment.toml", experiment_with_student("dropout = [0.2, 1.5]\n"))
    write("config-zero-views", "experiment.toml", VALID_EXPERIMENT + "[training.augmentation]\nviews = 0\n")
    write("config-text-keys-on-image-data", "experiment.toml", VALID_EXPERIMENT + "[text]\nmax_len = 64\n")
    write("config-text-negative-cosine-weight", "experiment.toml",
          VALID_EXPERIMENT.replace('data = "embedded"', 'data = "rotten-tomatoes"') + "[text]\ncosine_weight = -1.0\n")
    write("config-dkd-negative-beta", "experiment.toml", VALID_EXPERIMENT + "[sweep.dkd]\nbeta = [-1.0]\n")
    write("config-dkd-nan-temperature", "experiment.toml", VALID_EXPERIMENT + "[sweep.dkd]\ntemperature = [nan]\n")
    write("config-val-split-out-of-range", "experiment.toml", VALID_EXPERIMENT + "[training]\nval_split = 1.5\n")

    # model specs (`distill summary spec.toml`)
    write("spec-unknown-layer", "spec.toml", 'name = "x"\n[[layers]]\ntype = "conv3d"\nfilters = 4\n')
    write("spec-kernel-larger-than-input", "spec.toml",
          'name = "x"\n[[layers]]\ntype = "conv2d"\nfilters = 4\nkernel = 64\npadding = "valid"\n'
          '[[layers]]\ntype = "flatten"\n[[layers]]\ntype = "dense"\nunits = 10\n')

    # checkpoints (`distill eval --model .`)
    weights = read(os.path.join(HERE, "tiny-a-checkpoint", "model.bpk"))
    flipped = weights[:-100] + bytes(b ^ 0x5A for b in weights[-100:-96]) + weights[-96:]
    checkpoint_case("checkpoint-corrupt-weights", "tiny-a-checkpoint", {"model.bpk": flipped}, manifest="keep")
    checkpoint_case("checkpoint-garbage-weights", "tiny-a-checkpoint", {"model.bpk": b"not a burnpack file" * 20}, manifest="drop")
    checkpoint_case("checkpoint-from-another-model", "tiny-a-checkpoint",
                    {"model.bpk": read(os.path.join(HERE, "tiny-b-checkpoint", "model.bpk"))})
    checkpoint_case("checkpoint-missing-meta", "tiny-a-checkpoint", drop=["meta.json"])
    meta = json.loads(read(os.path.join(HERE, "tiny-a-checkpoint", "meta.json")))
    meta["input"] = [3, 32, 32]
    checkpoint_case("checkpoint-other-input-shape", "tiny-a-checkpoint",
                    {"meta.json": json.dumps(meta, indent=2).encode()})
    checkpoint_case("checkpoint-corrupt-manifest", "tiny-a-checkpoint", {"manifest.json": b"{ not json"}, manifest="keep")

    # warm starts (`--init-from DIR` on `distill train` / `distill distill`)
    flags_only_case("init-from-missing-dir")
    flags_only_case("init-from-missing-dir-distill")
    checkpoint_case("init-from-corrupt-weights", "tiny-a-checkpoint", {"model.bpk": flipped}, manifest="keep")
    checkpoint_case("init-from-another-model", "tiny-b-checkpoint", manifest="keep")

    # augmented fixed views and DKD on the command line
    flags_only_case("views-zero-train")
    flags_only_case("views-zero-distill")
    views_cache_case("views-cache-other-settings", views=2)
    flags_only_case("dkd-negative-beta")

    # teacher-logit files (`distill distill --teacher-logits logits.bin`): the teacher is
    # tiny-a, whose identity is the SHA-256 of its weights
    teacher = sha256(weights)
    write("logits-from-another-teacher", "logits.bin", logit_cache("0" * 64, "f" * 64, 50, 10))
    write("logits-for-another-dataset", "logits.bin", logit_cache(teacher, "f" * 64, 50, 10))
    write("logits-truncated", "logits.bin", logit_cache(teacher, "f" * 64, 50, 10, truncate=777))
    write("logits-not-a-cache", "logits.bin", b"PK\x03\x04 a zip file, not teacher logits" * 4)

    onnx_cases()
    safetensors_cases()
    text_cases()


def text_cases():
    """Labelled text tables (`distill data info text:train.tsv,test.tsv`)."""
    good_test = "label\ttext\npos\tfine film\nneg\tdull film\n"
    cases = {
        "text-missing-label-column": ("train.tsv", b"sentiment\ttext\npos\tgood\nneg\tbad\n"),
        "text-empty-text": ("train.tsv", b"label\ttext\npos\tgood\nneg\t  \n"),
        "text-not-utf8": ("train.tsv", b"label\ttext\npos\tgood\nneg\tna\xefve\n"),
        "text-one-class": ("train.tsv", b"label\ttext\npos\tgood\npos\tfine\n"),
        "text-ragged-row": ("train.tsv", b"label\ttext\npos\tgood\nneg\tbad\textra\n"),
    }
    for case, (name, data) in cases.items():
        write(case, name, data)
        write(case, "test.tsv", good_test)
    write("text-unknown-test-label", "train.tsv", "label\ttext\npos\tgood\nneg\tbad\n")
    write("text-unknown-test-label", "test.tsv", "label\ttext\npos\tok\nmeh\tso-so\n")


def safetensors_cases():
    """Weights trained in PyTorch (tests/fixtures/pytorch-safetensors), read with or without the
    spec they follow (`--spec`), and as a warm start."""
    torch = read(os.path.join(ROOT, "tests", "fixtures", "pytorch-safetensors", "student-bn-torch.safetensors"))
    write("safetensors-without-spec", "model.safetensors", torch)
    write("safetensors-wrong-spec", "model.safetensors", torch)
    write("safetensors-truncated", "model.safetensors", torch[:100])
    write("init-from-safetensors-of-another-model", "model.safetensors", torch)


def release_binary():
    binary = os.environ.get("DISTILL_BIN") or os.path.join(ROOT, "target", "release", "distill")
    if not os.path.isfile(binary):
        raise SystemExit(f"{binary} not found: run `cargo build --release` first (or set DISTILL_BIN)")
    return binary


def onnx_cases():
    """ONNX teachers and `predict`: tiny-a exported by the release binary (`distill export`), and
    the Keras/tf2onnx fixture with its LeakyRelu renamed to an operator the importer lacks."""
    with tempfile.TemporaryDirectory() as tmp:
        out = os.path.join(tmp, "tiny-a.onnx")
        subprocess.run([release_binary(), "export", "--model", os.path.join(HERE, "tiny-a-checkpoint"),
                        "--out", out], check=True, stdout=subprocess.DEVNULL)
        tiny = read(out)
    write("onnx-not-a-model", "model.onnx", b"this is a text file, not an ONNX model\n")
    write("onnx-truncated", "model.onnx", tiny[: len(tiny) // 2])
    keras = read(os.path.join(ROOT, "tests", "fixtures", "onnx-keras", "keras-nhwc.onnx"))
    assert b"LeakyRelu" in keras
    # same length, so every protobuf length field stays right
    write("onnx-unsupported-op", "model.onnx", keras.replace(b"LeakyRelu", b"HardSwish"))
    # an operator no engine knows: the native importer declines and tract cannot run it either
    write("onnx-op-no-engine-runs", "model.onnx", keras.replace(b"LeakyRelu", b"MadeUpOpX"))
    write("onnx-fits-neither-layout", "model.onnx", tiny)
    for split in ("train", "test"):
        for c in range(2):
            write("onnx-fits-neither-layout", f"data/{split}/class{c}/0.png", png(8, 8, gray=60 * c))
    write("onnx-wrong-classes", "model.onnx", tiny)
    for split in ("train", "test"):
        for c in range(3):
            write("onnx-wrong-classes", f"data/{split}/class{c}/0.png", png(28, 28, gray=60 * c))
    write("onnx-bad-normalize", "model.onnx", tiny)
    write("predict-undecodable-image", "model.onnx", tiny)
    write("predict-undecodable-image", "image.jpg", b"\xff\xd8\xff\xe0 not really a JPEG" * 3)


METHOD_EXPERIMENT = """data = "embedded"
teacher = "../../tiny-a-checkpoint"
[student]
model = "{student}"
epochs = 1
[sweep]
alpha = [0.5]
temperature = [4.0]
t2_scaling = [false]
[[method]]
{method}
"""


def method_cases():
    """Feature methods ([[method]] arms) the student or teacher cannot serve. The teacher is
    tiny-a, whose only tap is `embedding` (its 98 flattened features)."""
    def case(name, method, student="student", teacher=None):
        text = METHOD_EXPERIMENT.format(student=student, method=method)
        if teacher is not None:
            text = text.replace('teacher = "../../tiny-a-checkpoint"', teacher)
        write(name, "experiment.toml", text)

    case("method-unknown-tap", 'features = { kind = "at", taps = ["stage1"] }')
    case("method-taps-no-regressor",
         'features = { kind = "fitnets", student_tap = "block1", teacher_tap = "embedding" }')
    case("method-crd-bank-larger-than-data", 'features = { kind = "crd", negatives = 10000 }',
         student="../../tiny-b.toml")
    case("method-negative-weight", 'features = { kind = "at", beta = -1.0 }')
    case("method-nan-weight", 'features = { kind = "rkd", weight = nan }')
    case("method-features-from-tract", 'features = { kind = "rkd" }',
         teacher='teacher = "model.onnx"\nteacher_engine = "tract"\nteacher_layout = "nhwc"')
    write("method-features-from-tract", "model.onnx",
          read(os.path.join(ROOT, "tests", "fixtures", "onnx-keras", "keras-nhwc.onnx")))


if __name__ == "__main__":
    main()
    method_cases()
