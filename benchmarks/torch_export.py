"""fold-bn on models exported by torch.onnx (needs the optional `export` extra: torch).

Builds small torch modules covering every fold-bn case (Conv/ConvTranspose/Linear/Conv1d + BN,
depthwise, residual, Conv -> squeeze -> BN1d, per-channel scale), exports each with both of
torch's exporters (TorchScript and dynamo, where available), runs fold-bn + cleanup through the
verifying pipeline and records BN left and the max relative output error vs the export.
Run: `python -m benchmarks.torch_export` (not part of `python -m benchmarks`: torch is optional).
"""
from __future__ import annotations

import io
import sys
import warnings

import onnx

from onnxopt.errors import first_line
from onnxopt.pipeline.run import Pipeline
from onnxopt.testing import count_ops

from .common import machine, what_it_did, write


def modules():
    import torch
    from torch import nn

    torch.manual_seed(0)  # the modules' own weights: the same table on every run

    class Res(nn.Module):
        def __init__(self):
            super().__init__()
            self.stem = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1, bias=False), nn.BatchNorm2d(16), nn.ReLU())
            self.a = nn.Sequential(nn.Conv2d(16, 16, 3, padding=1, bias=False), nn.BatchNorm2d(16), nn.ReLU(),
                                   nn.Conv2d(16, 16, 3, padding=1, bias=False), nn.BatchNorm2d(16))
            self.down = nn.Sequential(nn.Conv2d(16, 32, 1, stride=2, bias=False), nn.BatchNorm2d(32))
            self.b = nn.Sequential(nn.Conv2d(16, 32, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(32))
            self.fc = nn.Linear(32, 10)

        def forward(self, x):
            x = self.stem(x)
            x = torch.relu(self.a(x) + x)
            x = torch.relu(self.b(x) + self.down(x))
            return self.fc(torch.flatten(nn.functional.adaptive_avg_pool2d(x, 1), 1))

    class Mobile(nn.Module):
        def __init__(self):
            super().__init__()
            self.body = nn.Sequential(
                nn.Conv2d(3, 16, 1, bias=False), nn.BatchNorm2d(16), nn.ReLU6(),
                nn.Conv2d(16, 16, 3, padding=1, groups=16, bias=False), nn.BatchNorm2d(16), nn.ReLU6(),
                nn.Conv2d(16, 8, 1, bias=False), nn.BatchNorm2d(8))

        def forward(self, x):
            return self.body(x)

    class Deconv(nn.Module):
        def __init__(self):
            super().__init__()
            self.up = nn.Sequential(nn.ConvTranspose2d(8, 6, 3, stride=2, groups=2), nn.BatchNorm2d(6), nn.ReLU(),
                                    nn.ConvTranspose2d(6, 4, 2, stride=2, bias=False), nn.BatchNorm2d(4))

        def forward(self, x):
            return self.up(x)

    class Head(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(12, 20)
            self.bn = nn.BatchNorm1d(20)
            self.scale = nn.Parameter(torch.rand(1, 20) + 0.5)

        def forward(self, x):
            return self.bn(self.fc(x)) * self.scale

    class Seq1d(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv1d(4, 8, 3, padding=1)
            self.bn = nn.BatchNorm1d(8)
            self.conv2 = nn.Conv2d(8, 6, (1, 3), padding=(0, 1))
            self.bn2 = nn.BatchNorm1d(6)

        def forward(self, x):
            y = torch.relu(self.bn(self.conv(x)))
            return self.bn2(self.conv2(y.unsqueeze(2)).squeeze(2))

    return [("resnet-like", Res(), (1, 3, 32, 32)), ("mobilenet-like", Mobile(), (1, 3, 16, 16)),
            ("convtranspose", Deconv(), (1, 8, 5, 5)), ("linear-bn1d-scale", Head(), (4, 12)),
            ("conv1d-squeeze-bn1d", Seq1d(), (2, 4, 10))]


def export(module, shape, dynamo: bool, folding: bool = False) -> onnx.ModelProto:
    """Export in eval mode with random BN statistics. `folding` is the exporters' own Conv+BN
    folding (on by default in torch); off, BN reaches us as other export settings hand it over."""
    import torch

    torch.manual_seed(0)
    for m in module.modules():
        if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 1.5)
            m.weight.data.uniform_(0.5, 1.5)
            m.bias.data.uniform_(-0.5, 0.5)
    module.eval()
    buf = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        kwargs = {"dynamo": True, "optimize": folding} if dynamo else {"dynamo": False, "do_constant_folding": folding}
        torch.onnx.export(module, (torch.randn(*shape),), buf, opset_version=17, input_names=["input"],
                          output_names=["output"], **kwargs)
    return onnx.load_from_string(buf.getvalue())


def main(argv: list[str] | None = None) -> dict:
    import torch

    rows = []
    for name, module, shape in modules():
        for dynamo in (False, True):
            exporter = "dynamo" if dynamo else "torchscript"
            try:
                model = export(module, shape, dynamo)
            except Exception as exc:  # noqa: BLE001 - an exporter may be unavailable
                rows.append({"model": name, "exporter": exporter, "error": first_line(exc, 120)})
                continue
            run = Pipeline.parse("fold-bn,cleanup", rtol=1e-5).run(model)
            fold = run.report.passes[0]
            # exporters may compute a bias at run time (Expand of a zero): simplify folds it first
            with_simplify = Pipeline.parse("simplify,fold-bn,cleanup", rtol=1e-5).run(model)
            rows.append({"model": name, "exporter": exporter,
                         "bn_after_simplify_first": count_ops(with_simplify.model).get("BatchNormalization", 0),
                         "bn_before": count_ops(model).get("BatchNormalization", 0),
                         "bn_after": count_ops(run.model).get("BatchNormalization", 0),
                         "stats": fold.stats, "status": fold.status,
                         "skipped": [str(s) for s in fold.skipped],
                         "max_rel": run.report.fidelity.max_rel if run.report.fidelity else 0.0})
    data = {"machine": machine(), "torch": torch.__version__, "rows": rows}
    md = ["# fold-bn on torch.onnx exports", "", f"torch {torch.__version__}, opset 17, eval mode, the exporters' own BN "
          "folding off (`do_constant_folding=False` / `optimize=False`); fold-bn + cleanup, verified in onnxruntime "
          "with optimizations off.", "",
          "| model | exporter | BN before | BN after | what fold-bn did (declined) | max rel error | BN after simplify,fold-bn |",
          "|---|---|---:|---:|---|---:|---:|"]
    for r in rows:
        if "error" in r:
            md.append(f"| {r['model']} | {r['exporter']} | | | export failed: {r['error']} | |")
        else:
            did = what_it_did(r["stats"], r["skipped"])
            md.append(f"| {r['model']} | {r['exporter']} | {r['bn_before']} | {r['bn_after']} | {did} | "
                      f"{r['max_rel']:.2g} | {r['bn_after_simplify_first']} |")
    write("torch_export", data, "\n".join(md))
    return data


if __name__ == "__main__":
    main(sys.argv[1:])
