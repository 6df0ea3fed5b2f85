"""Trains the notebook's teacher-v3 in Keras on CIFAR-10, exports it to ONNX with tf2onnx and
records Keras' own test accuracy, for `scripts/bench-onnx.sh` (the accuracy check and the
engines' throughput table of README's "Bring your own teacher").

    KR_THREADS=2 CIFAR10_NPZ=~/.cache/cifar10-bin/cifar10.npz \
        ~/.cache/kref/bin/python scripts/keras_teacher_onnx.py OUT_DIR [EPOCHS]

Needs the Keras harness' venv (../shared/keras-reference/README.md) plus `pip install tf2onnx
onnx onnxruntime`. Writes OUT_DIR/teacher-v3-keras.onnx (NHWC input, logits out) and
OUT_DIR/keras.json: {"test_accuracy", "epochs", "versions"}; Keras' accuracy is the argmax of
model(x_test, training=False) over the 10,000 test images.
"""
import json
import os
import subprocess
import sys
import tempfile

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "..", "shared", "keras-reference"))
import common  # noqa: E402  (sets the thread counts before TensorFlow starts)

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402


def main():
    out = sys.argv[1]
    epochs = int(sys.argv[2]) if len(sys.argv) > 2 else 1
    os.makedirs(out, exist_ok=True)
    keras.utils.set_random_seed(0)
    (x_train, y_train), (x_test, y_test) = common.load_cifar10()
    model = common.compile_plain(common.make_teacher())
    model.fit(x_train, y_train, batch_size=64, epochs=epochs, verbose=2)
    logits = model.predict(x_test, batch_size=256, verbose=0)
    accuracy = float((logits.argmax(axis=1) == y_test).mean())
    with tempfile.TemporaryDirectory() as saved:
        model.export(saved)
        onnx_path = os.path.join(out, "teacher-v3-keras.onnx")
        subprocess.run(
            [sys.executable, "-m", "tf2onnx.convert", "--saved-model", saved,
             "--output", onnx_path, "--opset", "13"],
            check=True,
        )
    import tf2onnx

    record = {
        "test_accuracy": accuracy,
        "epochs": epochs,
        "test_images": int(len(x_test)),
        "versions": {"tensorflow": tf.__version__, "keras": keras.__version__,
                     "tf2onnx": tf2onnx.__version__, "numpy": np.__version__},
    }
    with open(os.path.join(out, "keras.json"), "w") as f:
        json.dump(record, f, indent=1)
    print(json.dumps(record))


if __name__ == "__main__":
    main()
