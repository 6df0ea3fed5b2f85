"""PyTorch-exported CIFAR ResNet-8s, the fixtures of the native importer's residual graphs
(tests/onnx_residual.rs).

Made with PyTorch 2.15 (CPU) and onnx (the legacy TorchScript exporter needs the `onnx` package);
the exact versions are recorded in the JSON. Set-up and rerun, from the repository root:

    python3 -m venv ~/.cache/distill-torch/venv
    ~/.cache/distill-torch/venv/bin/pip install torch onnx numpy
    ~/.cache/distill-torch/venv/bin/python scripts/make_onnx_resnet_fixture.py

It takes a few seconds and writes, under tests/fixtures/onnx/:
  - resnet8-a.onnx: He et al.'s CIFAR ResNet-8 with option A shortcuts (a LambdaLayer doing
    F.pad(x[:, :, ::2, ::2], (0, 0, 0, 0, planes // 4, planes // 4))), exported the default way:
    the exporter folds every batch norm into the convolution before it (so the convolutions have
    biases and there is no BatchNormalization node), x[:, :, ::2, ::2] becomes two Slice nodes
    and F.pad a Pad whose pads a small constant subgraph computes;
  - resnet8-b.onnx: the same network with option B shortcuts (1x1 convolution + batch norm),
    exported with training=PRESERVE, which keeps the BatchNormalization nodes (inference mode);
  - resnet8.json: the versions, the ops of each graph, the probe input and PyTorch's logits for
    it (and, as a sanity check, ONNX Runtime's largest difference from them when it is installed).

The networks are seeded (torch.manual_seed(0) before each) and in eval mode; every batch norm gets
non-trivial statistics and affine terms (drawn from the same seeded generator), so a mistake in
any of the four shows in the logits. The probe input is deterministic and needs no file:
x[i] = float32(float64(2 * i - (n - 1)) / (n - 1)) for i in 0..n, n = 2 * 3 * 32 * 32, reshaped
to (2, 3, 32, 32) (values from -1 to 1).
"""
import json
import os

import numpy as np
import onnx
import torch
import torch.nn.functional as F
from torch import nn

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
OUT = os.path.join(ROOT, "tests", "fixtures", "onnx")
SHAPE = (2, 3, 32, 32)


class LambdaLayer(nn.Module):
    def __init__(self, fn):
        super().__init__()
        self.fn = fn

    def forward(self, x):
        return self.fn(x)


class BasicBlock(nn.Module):
    def __init__(self, in_planes, planes, stride, option):
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.shortcut = nn.Sequential()
        if stride != 1 or in_planes != planes:
            if option == "A":
                pad = planes // 4
                self.shortcut = LambdaLayer(
                    lambda x: F.pad(x[:, :, ::2, ::2], (0, 0, 0, 0, pad, pad), "constant", 0)
                )
            else:
                self.shortcut = nn.Sequential(
                    nn.Conv2d(in_planes, planes, 1, stride=stride, bias=False),
                    nn.BatchNorm2d(planes),
                )

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class ResNet8(nn.Module):
    def __init__(self, option, classes=10):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 16, 3, stride=1, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(16)
        self.layer1 = BasicBlock(16, 16, 1, option)
        self.layer2 = BasicBlock(16, 32, 2, option)
        self.layer3 = BasicBlock(32, 64, 2, option)
        self.linear = nn.Linear(64, classes)

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.layer3(self.layer2(self.layer1(out)))
        out = F.avg_pool2d(out, out.size()[3])
        return self.linear(out.view(out.size(0), -1))


def probe():
    n = int(np.prod(SHAPE))
    i = np.arange(n, dtype=np.float64)
    return ((2 * i - (n - 1)) / (n - 1)).astype(np.float32).reshape(SHAPE)


def model(option):
    torch.manual_seed(0)
    net = ResNet8(option)
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, nn.BatchNorm2d):
                c = m.num_features
                m.weight.copy_(torch.empty(c).uniform_(0.6, 1.4))
                m.bias.copy_(torch.empty(c).uniform_(-0.3, 0.3))
                m.running_mean.copy_(torch.empty(c).uniform_(-0.4, 0.4))
                m.running_var.copy_(torch.empty(c).uniform_(0.5, 2.0))
    return net.eval()


def export(net, path, **kwargs):
    torch.onnx.export(
        net,
        (torch.zeros(*SHAPE),),
        path,
        dynamo=False,
        opset_version=13,
        input_names=["input"],
        output_names=["logits"],
        dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}},
        **kwargs,
    )


def onnxruntime_diff(path, x, logits):
    try:
        import onnxruntime as ort
    except ImportError:
        return None
    session = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    [out] = session.run(None, {"input": x})
    return float(np.abs(out - logits).max())


def main():
    torch.set_num_threads(1)
    os.makedirs(OUT, exist_ok=True)
    x = probe()
    record = {
        "versions": {"torch": torch.__version__, "onnx": onnx.__version__, "numpy": np.__version__},
        "input": {
            "shape": list(SHAPE),
            "formula": "x[i] = float32(float64(2 * i - (n - 1)) / (n - 1)), n = 6144, NCHW row-major",
        },
        "models": {},
    }
    cases = [
        ("resnet8-a.onnx", "A", {}),
        ("resnet8-b.onnx", "B", {"training": torch.onnx.TrainingMode.PRESERVE}),
    ]
    for file, option, kwargs in cases:
        net = model(option)
        with torch.no_grad():
            logits = net(torch.from_numpy(x)).numpy()
        path = os.path.join(OUT, file)
        export(net, path, **kwargs)
        graph = onnx.load(path).graph
        record["models"][file] = {
            "option": option,
            "ops": sorted({node.op_type for node in graph.node}),
            "params": int(sum(np.prod(t.dims) for t in graph.initializer)),
            "onnxruntime_max_abs_diff": onnxruntime_diff(path, x, logits),
            "logits": logits.tolist(),
        }
        print(f"{file}: {os.path.getsize(path)} bytes, ops {record['models'][file]['ops']}")
    with open(os.path.join(OUT, "resnet8.json"), "w") as f:
        json.dump(record, f, indent=1)
        f.write("\n")


if __name__ == "__main__":
    main()
