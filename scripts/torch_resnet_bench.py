"""PyTorch and ONNX Runtime timings of a zoo ResNet, for scripts/bench-resnet-vs-torch.sh.

    python scripts/torch_resnet_bench.py MODEL THREADS

MODEL is a zoo name that scripts/torch_reference.py defines (resnet20, resnet56, ...). Prints one
JSON object: the median PyTorch training step at batch 64 (SGD, momentum 0.9, cross-entropy;
random images and labels), the median PyTorch inference throughput at batch 256 in eval mode,
and ONNX Runtime's inference throughput at batch 256 on the same model exported to ONNX (opset
13), every engine on THREADS threads.
"""
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
from torch_reference import zoo  # noqa: E402


def median(times):
    return sorted(times)[len(times) // 2]


def timed(work, runs, warmup):
    times = []
    for i in range(warmup + runs):
        start = time.perf_counter()
        work()
        if i >= warmup:
            times.append(time.perf_counter() - start)
    return median(times)


def main():
    name, threads = sys.argv[1], int(sys.argv[2])
    torch.set_num_threads(threads)
    torch.manual_seed(0)
    model = zoo()[name](10)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    loss_fn = nn.CrossEntropyLoss()
    x = torch.rand(64, 3, 32, 32)
    y = torch.randint(0, 10, (64,))

    def step():
        optimizer.zero_grad(set_to_none=True)
        loss_fn(model(x), y).backward()
        optimizer.step()

    model.train()
    train_ms = timed(step, 10, 3) * 1e3
    model.eval()
    images = torch.rand(256, 3, 32, 32)
    with torch.no_grad():
        infer_s = timed(lambda: model(images), 5, 1)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "model.onnx"
        torch.onnx.export(model, images[:1], str(path), opset_version=13,
                          input_names=["input"], output_names=["logits"],
                          dynamic_axes={"input": {0: "batch"}}, dynamo=False)
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        batch = images.numpy().astype(np.float32)
        ort_s = timed(lambda: session.run(None, {"input": batch}), 5, 1)
    print(json.dumps({
        "model": name, "threads": threads,
        "torch": torch.__version__, "onnxruntime": ort.__version__,
        "torch_train_step_ms": train_ms,
        "torch_infer_ips": 256 / infer_s,
        "ort_infer_ips": 256 / ort_s,
    }))


if __name__ == "__main__":
    main()
