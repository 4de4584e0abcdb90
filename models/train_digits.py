"""Train four small CNNs on the digits data and export them as fixtures (needs torch).

``python -m onnxopt.models.train_digits [--only NAME]`` trains, on ``digits.load("train")`` with
fixed seeds and random shifts of up to 2 px, and writes ``models/fixtures/digits_<NAME>.onnx``:

- ``resnet``: ResNet-style BasicBlocks (identity and 1x1-stride-2 shortcuts), widths 16/32/64;
- ``mobilenetv2``: inverted residuals (1x1 expand x4, depthwise 3x3, 1x1 project), ReLU6;
- ``repvgg``: RepVGG in its train-time form, BN(3x3) + BN(1x1) [+ BN identity] per block;
- ``mobilenet``: MobileNet-v1 depthwise-separable blocks (depthwise 3x3, pointwise 1x1, BN after
  each) with plain ReLU, widths 16/32/64/128: Conv -> Relu -> Conv chains that cross-layer
  equalization can rescale exactly once fold-bn has put each BN into its conv.

Each export keeps its BatchNormalization nodes and branches (TorchScript exporter, eval mode,
torch's own constant folding off: that is where torch would fuse Conv+BN) so that fold-bn and
reparam have real work. Input ``input`` [N, 1, 32, 32], output ``logits`` [N, 10], opset 17;
metadata ``test_accuracy`` is measured in onnxruntime on the whole test split.
"""
from __future__ import annotations

import argparse
import io
import time
import warnings

import numpy as np
import onnx

try:
    import torch
    from torch import nn
except ImportError as exc:  # torch is the optional `export` extra
    raise ImportError("train_digits needs torch: pip install 'onnxopt[export]'") from exc

from onnxopt import __version__
from onnxopt.runtime.sessions import run_model

from . import FIXTURES, digits

OPSET = 17
SEED = 0
BATCH = 64
MAX_SHIFT = 2  # px at 32x32, half an 8x8 pixel: the digits' own position varies about this much


def conv_bn(cin: int, cout: int, k: int, stride: int = 1, groups: int = 1) -> nn.Sequential:
    # no conv bias: BN's shift makes it redundant (and torch models are written this way)
    return nn.Sequential(nn.Conv2d(cin, cout, k, stride, k // 2, groups=groups, bias=False), nn.BatchNorm2d(cout))


class BasicBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int):
        super().__init__()
        self.body = nn.Sequential(conv_bn(cin, cout, 3, stride), nn.ReLU(), conv_bn(cout, cout, 3))
        self.shortcut = nn.Identity() if stride == 1 and cin == cout else conv_bn(cin, cout, 1, stride)

    def forward(self, x):
        return torch.relu(self.body(x) + self.shortcut(x))


class InvertedResidual(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int, expand: int = 4):
        super().__init__()
        hidden = cin * expand
        self.body = nn.Sequential(conv_bn(cin, hidden, 1), nn.ReLU6(),
                                  conv_bn(hidden, hidden, 3, stride, groups=hidden), nn.ReLU6(),
                                  conv_bn(hidden, cout, 1))
        self.residual = stride == 1 and cin == cout

    def forward(self, x):
        y = self.body(x)
        return x + y if self.residual else y


class SeparableBlock(nn.Module):
    """MobileNet-v1: depthwise 3x3 + BN + ReLU, then pointwise 1x1 + BN + ReLU. Plain ReLU, not
    ReLU6, so that the Conv -> Relu -> Conv pairs are positively homogeneous."""

    def __init__(self, cin: int, cout: int, stride: int):
        super().__init__()
        self.body = nn.Sequential(conv_bn(cin, cin, 3, stride, groups=cin), nn.ReLU(),
                                  conv_bn(cin, cout, 1), nn.ReLU())

    def forward(self, x):
        return self.body(x)


class RepVGGBlock(nn.Module):
    """Train-time form: the branches and their BNs stay separate until reparam merges them."""

    def __init__(self, cin: int, cout: int, stride: int):
        super().__init__()
        self.dense = conv_bn(cin, cout, 3, stride)
        self.pointwise = conv_bn(cin, cout, 1, stride)
        self.identity = nn.BatchNorm2d(cin) if stride == 1 and cin == cout else None

    def forward(self, x):
        y = self.dense(x) + self.pointwise(x)
        if self.identity is not None:
            y = y + self.identity(x)
        return torch.relu(y)


def classifier(body: list[nn.Module], channels: int) -> nn.Sequential:
    return nn.Sequential(*body, nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(channels, 10))


def resnet() -> nn.Sequential:
    stem = [conv_bn(1, 16, 3), nn.ReLU()]
    stages = [BasicBlock(16, 16, 1), BasicBlock(16, 16, 1), BasicBlock(16, 32, 2), BasicBlock(32, 64, 2)]
    return classifier(stem + stages, 64)


def mobilenetv2() -> nn.Sequential:
    stem = [conv_bn(1, 16, 3), nn.ReLU6()]
    # (in, out, stride): 32x32 -> 16x16 -> 8x8, residual Adds where stride 1 and in == out
    blocks = [InvertedResidual(cin, cout, s) for cin, cout, s in
              [(16, 16, 1), (16, 24, 2), (24, 24, 1), (24, 32, 2), (32, 32, 1), (32, 64, 1)]]
    head = [conv_bn(64, 128, 1), nn.ReLU6()]
    return classifier(stem + blocks + head, 128)


def repvgg() -> nn.Sequential:
    widths, strides = [16, 32, 32, 64, 64], [1, 2, 1, 2, 1]
    blocks = [RepVGGBlock(cin, cout, s) for cin, cout, s in zip([1, *widths], widths, strides)]
    return classifier(blocks, 64)


def mobilenet() -> nn.Sequential:
    stem = [conv_bn(1, 16, 3), nn.ReLU()]
    # (in, out, stride): 32x32 -> 16x16 -> 8x8, no residuals
    blocks = [SeparableBlock(cin, cout, s) for cin, cout, s in
              [(16, 32, 1), (32, 64, 2), (64, 64, 1), (64, 128, 2), (128, 128, 1)]]
    return classifier(stem + blocks, 128)


# name -> (builder, epochs, learning rate)
MODELS = {"resnet": (resnet, 15, 3e-3), "mobilenetv2": (mobilenetv2, 15, 3e-3), "repvgg": (repvgg, 15, 3e-3),
          "mobilenet": (mobilenet, 15, 3e-3)}


def shifted(images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Each image moved by its own random (dy, dx) in [-MAX_SHIFT, MAX_SHIFT], zeros shifted in."""
    n, _, h, w = images.shape
    padded = nn.functional.pad(images, [MAX_SHIFT] * 4)
    offsets = torch.randint(0, 2 * MAX_SHIFT + 1, (n, 2), generator=generator).tolist()
    return torch.stack([padded[i, :, dy:dy + h, dx:dx + w] for i, (dy, dx) in enumerate(offsets)])


def train(model: nn.Module, epochs: int, lr: float) -> None:
    images, labels = (torch.from_numpy(a) for a in digits.load("train"))
    generator = torch.Generator().manual_seed(SEED)  # data order and shifts
    steps = epochs * -(-len(labels) // BATCH)
    optimizer = torch.optim.Adam(model.parameters(), lr=lr, weight_decay=1e-4)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=lr, total_steps=steps)
    model.train()
    for _ in range(epochs):
        for batch in torch.randperm(len(labels), generator=generator).split(BATCH):
            loss = nn.functional.cross_entropy(model(shifted(images[batch], generator)), labels[batch])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            schedule.step()
    model.eval()


def torch_accuracy(model: nn.Module, images: np.ndarray, labels: np.ndarray) -> float:
    with torch.no_grad():
        predicted = model(torch.from_numpy(images)).argmax(1).numpy()
    return float(np.mean(predicted == labels))


def ort_accuracy(model: onnx.ModelProto, images: np.ndarray, labels: np.ndarray) -> float:
    # onnxopt's own session settings (optimizations off): tests measure it the same way
    logits = run_model(model, [{"input": images}])[0]["logits"]
    return float(np.mean(logits.argmax(1) == labels))


def export(model: nn.Module) -> onnx.ModelProto:
    """As users export: initializers of equal value come out as one, read through Identity nodes.
    That happens here: the BN biases of branches summed by an Add get equal gradients from an
    equal start, so they stay bitwise equal (RepVGG branches, ResNet downsample shortcuts)."""
    buf = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the TorchScript exporter's deprecation notice
        torch.onnx.export(model, (torch.zeros(1, 1, digits.SIZE, digits.SIZE),), buf, opset_version=OPSET,
                          input_names=["input"], output_names=["logits"],
                          dynamic_axes={"input": {0: "N"}, "logits": {0: "N"}}, dynamo=False,
                          training=torch.onnx.TrainingMode.EVAL, do_constant_folding=False)
    return onnx.load_from_string(buf.getvalue())


def describe(model: onnx.ModelProto, name: str, accuracy: float) -> None:
    """Name the graph, say who made it, and record the accuracy the tests hold it to."""
    model.graph.name = f"digits_{name}"
    model.producer_name, model.producer_version = "onnxopt.models.train_digits", __version__
    model.doc_string = (f"{name} trained on scikit-learn's handwritten digits (8x8 upsampled to 32x32), "
                        f"exported with torch {torch.__version__} (TorchScript exporter, opset {OPSET}, "
                        "eval mode, Conv+BN left unfused). Regenerate: python -m onnxopt.models.train_digits")
    onnx.helper.set_model_props(model, {"source": "onnxopt.models.train_digits",
                                        "dataset": "sklearn digits, 8x8 upsampled to 32x32",
                                        "test_accuracy": repr(accuracy)})


def build_fixture(name: str) -> dict:
    builder, epochs, lr = MODELS[name]
    torch.manual_seed(SEED)
    module = builder()
    start = time.perf_counter()
    train(module, epochs, lr)
    seconds = time.perf_counter() - start
    images, labels = digits.load("test")
    model = export(module)
    bn = sum(n.op_type == "BatchNormalization" for n in model.graph.node)
    assert bn > 0, "the exporter fused Conv+BN: the fixture would give fold-bn nothing to do"
    accuracy = ort_accuracy(model, images, labels)
    describe(model, name, accuracy)
    onnx.checker.check_model(model, full_check=True)
    path = FIXTURES / f"digits_{name}.onnx"
    onnx.save(model, path)
    return {"model": name, "params": sum(p.numel() for p in module.parameters()), "bn": bn,
            "torch": torch_accuracy(module, images, labels), "ort": accuracy, "seconds": seconds,
            "bytes": path.stat().st_size}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m onnxopt.models.train_digits", description=__doc__.splitlines()[0])
    parser.add_argument("--only", choices=sorted(MODELS), help="train and export just this model")
    args = parser.parse_args(argv)
    torch.set_num_threads(2)  # a shared 2-core machine
    torch.use_deterministic_algorithms(True)
    rows = [build_fixture(name) for name in ([args.only] if args.only else MODELS)]
    print(f"{'model':<12} {'params':>7} {'BN':>3} {'torch acc':>9} {'ORT acc':>8} {'train s':>7} {'bytes':>8}")
    for r in rows:
        print(f"{r['model']:<12} {r['params']:>7,} {r['bn']:>3} {r['torch']:>9.4f} {r['ort']:>8.4f} "
              f"{r['seconds']:>7.1f} {r['bytes']:>8,}")


if __name__ == "__main__":
    main()
