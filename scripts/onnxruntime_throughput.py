"""Median ONNX Runtime throughput of an image classifier at batch 256, for scripts/bench-onnx.sh.

    python scripts/onnxruntime_throughput.py MODEL.onnx THREADS

Prints one JSON object {"engine", "threads", "throughput_ips", "latency_ms"}: images per second
at batch 256 (median of 5 runs after a warm-up) and milliseconds for one image (median of 21),
on zeros in the model's declared input layout (the batch dimension set to the batch).
"""
import json
import sys
import time

import numpy as np
import onnxruntime as ort


def median_seconds(session, name, shape, runs, warmup):
    x = np.zeros(shape, dtype=np.float32)
    times = []
    for i in range(warmup + runs):
        start = time.perf_counter()
        session.run(None, {name: x})
        if i >= warmup:
            times.append(time.perf_counter() - start)
    return sorted(times)[len(times) // 2]


def main():
    path, threads = sys.argv[1], int(sys.argv[2])
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    session = ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])
    declared = session.get_inputs()[0]
    dims = [d if isinstance(d, int) else 1 for d in declared.shape]
    batch = median_seconds(session, declared.name, [256] + dims[1:], 5, 1)
    single = median_seconds(session, declared.name, [1] + dims[1:], 21, 3)
    print(json.dumps({"engine": "onnxruntime " + ort.__version__, "threads": threads,
                      "throughput_ips": 256 / batch, "latency_ms": single * 1e3}))


if __name__ == "__main__":
    main()
