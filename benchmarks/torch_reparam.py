"""reparam on blocks exported by torch.onnx (needs the optional `export` extra: torch).

Train-time blocks written as their reference repositories write them (RepVGGBlock, MobileOneBlock
with k=4 depthwise and pointwise, ACNet's ACBlock, a DBB-style block with 1x1 -> kxk and
average-pool branches), in eval mode with random BN statistics, exported with both of torch's
exporters and with the exporters' own Conv+BN folding on and off. Each export goes through
`reparam` (dynamo's unoptimized export computes conv biases at run time, so `simplify` runs first
there) in the verifying pipeline; recorded: Conv count before/after against one per block, and the
max relative output error vs the export.
Run: `python -m benchmarks.torch_reparam` (not part of `python -m benchmarks`: torch is optional).
"""
from __future__ import annotations

import sys

from onnxopt.errors import first_line
from onnxopt.pipeline.run import Pipeline
from onnxopt.testing import count_ops

from .common import machine, what_it_did, write
from .torch_export import export


def blocks():
    import torch
    from torch import nn

    torch.manual_seed(0)  # the modules' own weights: the same table on every run

    def conv_bn(cin, cout, k, stride=1, padding=0, groups=1):
        return nn.Sequential(nn.Conv2d(cin, cout, k, stride, padding, groups=groups, bias=False),
                             nn.BatchNorm2d(cout))

    class RepVGGBlock(nn.Module):  # DingXiaoH/RepVGG repvgg.py, train-time forward
        def __init__(self, cin, cout, stride=1):
            super().__init__()
            self.rbr_identity = nn.BatchNorm2d(cin) if cin == cout and stride == 1 else None
            self.rbr_dense = conv_bn(cin, cout, 3, stride, 1)
            self.rbr_1x1 = conv_bn(cin, cout, 1, stride, 0)

        def forward(self, x):
            id_out = 0 if self.rbr_identity is None else self.rbr_identity(x)
            return torch.relu(self.rbr_dense(x) + self.rbr_1x1(x) + id_out)

    class MobileOneBlock(nn.Module):  # apple/ml-mobileone mobileone.py, train-time forward
        def __init__(self, cin, cout, k, stride, groups, branches=4):
            super().__init__()
            self.rbr_skip = nn.BatchNorm2d(cin) if cin == cout and stride == 1 else None
            self.rbr_scale = conv_bn(cin, cout, 1, stride, 0, groups) if k > 1 else None
            self.rbr_conv = nn.ModuleList([conv_bn(cin, cout, k, stride, k // 2, groups) for _ in range(branches)])

        def forward(self, x):
            out = 0
            if self.rbr_skip is not None:
                out = self.rbr_skip(x)
            if self.rbr_scale is not None:
                out = out + self.rbr_scale(x)
            for conv in self.rbr_conv:
                out = out + conv(x)
            return torch.relu(out)

    class ACBlock(nn.Module):  # DingXiaoH/ACNet acb.py: kxk + 1xk + kx1, each with BN
        def __init__(self, c, k=3):
            super().__init__()
            self.square = conv_bn(c, c, k, 1, k // 2)
            self.hor = nn.Sequential(nn.Conv2d(c, c, (1, k), 1, (0, k // 2), bias=False), nn.BatchNorm2d(c))
            self.ver = nn.Sequential(nn.Conv2d(c, c, (k, 1), 1, (k // 2, 0), bias=False), nn.BatchNorm2d(c))

        def forward(self, x):
            return torch.relu(self.square(x) + self.hor(x) + self.ver(x))

    class DBBlock(nn.Module):  # DiverseBranchBlock-style: kxk, 1x1, 1x1 -> kxk, avg-pool branches
        def __init__(self, c, k=3):
            super().__init__()
            self.dbb_origin = conv_bn(c, c, k, 1, k // 2)
            self.dbb_1x1 = conv_bn(c, c, 1)
            # the 1x1 has no bias and no BN before the kxk: its zero-padded output is exact
            self.dbb_1x1_kxk = nn.Sequential(nn.Conv2d(c, c, 1, bias=False), conv_bn(c, c, k, 1, k // 2))
            self.dbb_avg = nn.Sequential(nn.AvgPool2d(k, 1, k // 2, count_include_pad=True), nn.BatchNorm2d(c))

        def forward(self, x):
            return torch.relu(self.dbb_origin(x) + self.dbb_1x1(x) + self.dbb_1x1_kxk(x) + self.dbb_avg(x))

    class Net(nn.Module):
        def __init__(self, *layers):
            super().__init__()
            self.body = nn.Sequential(*layers)

        def forward(self, x):
            return self.body(x)

    return [
        ("repvgg", Net(RepVGGBlock(3, 16, 2), RepVGGBlock(16, 16), RepVGGBlock(16, 32, 2), RepVGGBlock(32, 32)), 4),
        ("mobileone", Net(MobileOneBlock(3, 16, 3, 2, 1, 1), MobileOneBlock(16, 16, 3, 1, 16),
                          MobileOneBlock(16, 32, 1, 1, 1), MobileOneBlock(32, 32, 3, 2, 32),
                          MobileOneBlock(32, 32, 1, 1, 1)), 5),
        ("acnet", Net(nn.Conv2d(3, 16, 1), ACBlock(16), ACBlock(16, 5)), 2),
        ("dbb", Net(nn.Conv2d(3, 16, 1), DBBlock(16), DBBlock(16)), 2),
    ]


def main(argv: list[str] | None = None) -> dict:
    import torch

    rows = []
    for name, module, n_blocks in blocks():
        for dynamo in (False, True):
            for folding in (True, False):
                exporter = ("dynamo" if dynamo else "torchscript") + (" (folding on)" if folding else " (folding off)")
                row = {"model": name, "exporter": exporter, "blocks": n_blocks}
                try:
                    model = export(module, (1, 3, 32, 32), dynamo, folding)
                except Exception as exc:  # noqa: BLE001 - an exporter may be unavailable
                    rows.append(dict(row, error=first_line(exc, 120)))
                    continue
                spec = "simplify,reparam" if dynamo and not folding else "reparam"
                run = Pipeline.parse(spec, rtol=1e-5).run(model)
                rp = run.report.passes[-1]
                before, after = count_ops(model), count_ops(run.model)
                # the stems of acnet/dbb are plain convs outside any block
                stem = 1 if name in ("acnet", "dbb") else 0
                rows.append(dict(row, spec=spec, conv_before=before.get("Conv", 0), conv_after=after.get("Conv", 0),
                                 expected_after=n_blocks + stem, add_after=after.get("Add", 0),
                                 bn_after=after.get("BatchNormalization", 0), status=rp.status, stats=rp.stats,
                                 skipped=[str(s) for s in rp.skipped],
                                 max_rel=run.report.fidelity.max_rel if run.report.fidelity else 0.0))
    data = {"machine": machine(), "torch": torch.__version__, "rows": rows}
    md = ["# reparam on torch.onnx exports", "",
          f"torch {torch.__version__}, opset 17, eval mode, random BN statistics; input 1x3x32x32. Conv after = "
          "one per block (+1 stem conv for acnet/dbb) is the deploy structure. Verified in onnxruntime with "
          "optimizations off.", "",
          "| block | exporter | passes | Conv before | Conv after (deploy) | Add / BN after | what reparam did | max rel error |",
          "|---|---|---|---:|---:|---:|---|---:|"]
    for r in rows:
        if "error" in r:
            md.append(f"| {r['model']} | {r['exporter']} | | | | | export failed: {r['error']} | |")
            continue
        did = what_it_did(r["stats"], r["skipped"])
        md.append(f"| {r['model']} | {r['exporter']} | {r['spec']} | {r['conv_before']} | {r['conv_after']} "
                  f"({r['expected_after']}) | {r['add_after']} / {r['bn_after']} | {did} | {r['max_rel']:.2g} |")
    write("torch_reparam", data, "\n".join(md))
    return data


if __name__ == "__main__":
    main(sys.argv[1:])
