"""The architectures, one function each; full, tiny and deploy variants differ only in arguments.

Module and parameter names follow the reference PyTorch code, so the graphs read like
``torch.onnx.export`` output of:

* ResNet, MobileNetV2, VGG-BN: torchvision (``torchvision/models/{resnet,mobilenetv2,vgg}.py``);
* RepVGG: ``DingXiaoH/RepVGG:repvgg.py`` (Ding et al. 2021), ``RepVGGBlock``;
* MobileOne: ``apple/ml-mobileone:mobileone.py`` (Vasu et al. 2023), ``MobileOneBlock``;
* SE-Concat, a made-up net mixing SE-ResNet, SE-Inception and DenseNet blocks for channel pruning:
  the SE module as ``Cadene/pretrained-models.pytorch:pretrainedmodels/models/senet.py``'s
  ``SEModule``, Inception branches named as torchvision's ``inception.py``.

Two simplifications against a real export: the classifier input is a ``Flatten`` where RepVGG and
MobileOne write ``x.view(n, -1)`` (a Reshape), and the ``+ 0`` of absent branches (``id_out = 0``)
is left out instead of becoming an ``Add`` with a zero constant.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

from .blocks import ROOT, GraphBuilder, Scope, Value

__all__ = ["Spec", "MODELS"]


# -- ResNet (He et al. 2016), torchvision v1.5: stride on the 3x3 of the bottleneck -------------
def _downsample(g: GraphBuilder, x: Value, s: Scope, cout: int, stride: int) -> Value:
    ds = s / "downsample"
    return g.conv_bn(x, ds / 0, ds / 1, cout, 1, stride=stride, pad=0)


def basic_block(g: GraphBuilder, x: Value, s: Scope, planes: int, stride: int) -> Value:
    cin = x.shape[0]
    y = g.relu(g.conv_bn(x, s / "conv1", s / "bn1", planes, 3, stride=stride), s / "relu")
    y = g.conv_bn(y, s / "conv2", s / "bn2", planes, 3)
    shortcut = _downsample(g, x, s, planes, stride) if stride != 1 or cin != planes else x
    return g.relu(g.add(y, shortcut, s), (s / "relu").again(1))


def bottleneck(g: GraphBuilder, x: Value, s: Scope, planes: int, stride: int) -> Value:
    cin, cout = x.shape[0], 4 * planes
    y = g.relu(g.conv_bn(x, s / "conv1", s / "bn1", planes, 1, pad=0), s / "relu")
    y = g.relu(g.conv_bn(y, s / "conv2", s / "bn2", planes, 3, stride=stride),
               (s / "relu").again(1))
    y = g.conv_bn(y, s / "conv3", s / "bn3", cout, 1, pad=0)
    shortcut = _downsample(g, x, s, cout, stride) if stride != 1 or cin != cout else x
    return g.relu(g.add(y, shortcut, s), (s / "relu").again(2))


def resnet(g: GraphBuilder, *, block: str, layers, widths, stem: int, classes: int) -> Value:
    make_block = {"basic": basic_block, "bottleneck": bottleneck}[block]
    x = g.relu(g.conv_bn(g.input, ROOT / "conv1", ROOT / "bn1", stem, 7, stride=2, pad=3),
               ROOT / "relu")
    x = g.maxpool(x, ROOT / "maxpool", 3, 2, pad=1)
    for i, (n, planes) in enumerate(zip(layers, widths)):
        for j in range(n):
            x = make_block(g, x, ROOT / f"layer{i + 1}" / j, planes, 2 if i > 0 and j == 0 else 1)
    return g.gap_flatten_gemm(x, ROOT / "avgpool", ROOT / "fc", classes)


# -- MobileNetV2 (Sandler et al. 2018) ---------------------------------------------------------
MOBILENETV2_SETTINGS = ((1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2),
                        (6, 96, 3, 1), (6, 160, 3, 2), (6, 320, 1, 1))  # t, c, n, s


def _conv_bn_relu6(g: GraphBuilder, x: Value, s: Scope, cout: int, k: int, stride: int = 1,
                   group: int = 1) -> Value:
    """torchvision ``Conv2dNormActivation``: Sequential(Conv, BN, ReLU6) as s.0, s.1, s.2."""
    y = g.conv_bn(x, s / 0, s / 1, cout, k, stride=stride, group=group)
    return g.clip6(y, s / 2)


def inverted_residual(g: GraphBuilder, x: Value, s: Scope, cout: int, stride: int,
                      t: int) -> Value:
    cin = x.shape[0]
    hidden, seq, i = round(cin * t), s / "conv", 0
    y = x
    if t != 1:
        y, i = _conv_bn_relu6(g, y, seq / 0, hidden, 1), 1
    y = _conv_bn_relu6(g, y, seq / i, hidden, 3, stride=stride, group=hidden)
    y = g.conv_bn(y, seq / (i + 1), seq / (i + 2), cout, 1)
    return g.add(x, y, s) if stride == 1 and cin == cout else y


def mobilenetv2(g: GraphBuilder, *, settings=MOBILENETV2_SETTINGS, stem: int = 32,
                last: int = 1280, classes: int = 1000) -> Value:
    features = ROOT / "features"
    x = _conv_bn_relu6(g, g.input, features / 0, stem, 3, stride=2)
    idx = 1
    for t, c, n, s in settings:
        for j in range(n):
            x = inverted_residual(g, x, features / idx, c, s if j == 0 else 1, t)
            idx += 1
    x = _conv_bn_relu6(g, x, features / idx, last, 1)
    # forward() calls F.adaptive_avg_pool2d and torch.flatten: root-scope nodes
    return g.gemm(g.flatten(g.gap(x, ROOT)), ROOT / "classifier" / 1, classes, output="output")


# -- VGG-BN (Simonyan & Zisserman 2015), CIFAR head ---------------------------------------------
VGG16_CFG = (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M",
             512, 512, 512, "M")


def vgg_bn(g: GraphBuilder, *, cfg=VGG16_CFG, hidden: int = 512, classes: int = 10) -> Value:
    """torchvision's ``make_layers(cfg, batch_norm=True)``: its convs keep their bias."""
    features, i = ROOT / "features", 0
    x = g.input
    for v in cfg:
        if v == "M":
            x, i = g.maxpool(x, features / i, 2, 2), i + 1
        else:
            x = g.conv_bn(x, features / i, features / (i + 1), v, 3, bias="torch")
            x, i = g.relu(x, features / (i + 2)), i + 3
    classifier = ROOT / "classifier"  # Linear, ReLU, Dropout (gone in eval), Linear
    x = g.relu(g.gemm(g.flatten(x), classifier / 0, hidden), classifier / 1)
    return g.gemm(x, classifier / 3, classes, output="output")


# -- RepVGG (Ding et al. 2021) --------------------------------------------------------------------
def repvgg_block(g: GraphBuilder, x: Value, s: Scope, cout: int, stride: int,
                 deploy: bool) -> Value:
    if deploy:
        return g.relu(g.conv(x, s / "rbr_reparam", cout, 3, stride=stride, bias="normal"),
                      s / "nonlinearity")
    cin = x.shape[0]
    # forward(): id_out first, then rbr_dense(x) + rbr_1x1(x) + id_out
    identity = [g.bn(x, s / "rbr_identity")] if stride == 1 and cin == cout else []
    dense = g.conv_bn(x, s / "rbr_dense" / "conv", s / "rbr_dense" / "bn", cout, 3,
                      stride=stride)
    one = g.conv_bn(x, s / "rbr_1x1" / "conv", s / "rbr_1x1" / "bn", cout, 1, stride=stride,
                    pad=0)
    return g.relu(g.add_all([dense, one, *identity], s), s / "nonlinearity")


def repvgg(g: GraphBuilder, *, layers, widths, stem: int, classes: int,
           deploy: bool = False) -> Value:
    x = repvgg_block(g, g.input, ROOT / "stage0", stem, 2, deploy)
    for i, (n, width) in enumerate(zip(layers, widths)):
        for j in range(n):
            x = repvgg_block(g, x, ROOT / f"stage{i + 1}" / j, width, 2 if j == 0 else 1, deploy)
    return g.gap_flatten_gemm(x, ROOT / "gap", ROOT / "linear", classes)


# -- MobileOne (Vasu et al. 2023) -----------------------------------------------------------------
def mobileone_block(g: GraphBuilder, x: Value, s: Scope, cout: int, k: int, stride: int,
                    group: int, branches: int, deploy: bool) -> Value:
    """``MobileOneBlock``: ``branches`` kxk conv+BN, a 1x1 scale conv+BN when k > 1, and a skip
    BN when shapes allow, summed in torch's order ``(scale + skip) + conv0 + conv1 + ...``."""
    pad = k // 2
    if deploy:
        y = g.conv(x, s / "reparam_conv", cout, k, stride=stride, pad=pad, group=group,
                   bias="normal")
        return g.relu(y, s / "activation")
    cin = x.shape[0]
    skip = [g.bn(x, s / "rbr_skip")] if cin == cout and stride == 1 else []
    scale = [g.conv_bn(x, s / "rbr_scale" / "conv", s / "rbr_scale" / "bn", cout, 1,
                       stride=stride, pad=0, group=group)] if k > 1 else []
    terms = scale + skip
    out = g.add_all(terms, s) if terms else None
    for ix in range(branches):  # rbr_conv is a ModuleList: no scope of its own
        branch = s / f"rbr_conv.{ix}"
        y = g.conv_bn(x, branch / "conv", branch / "bn", cout, k, stride=stride, pad=pad,
                      group=group)
        out = y if out is None else g.add(out, y, s)
    return g.relu(out, s / "activation")


def mobileone(g: GraphBuilder, *, layers, widths, stem: int, classes: int, branches: int,
              deploy: bool = False) -> Value:
    # stage0 uses MobileOneBlock's default num_conv_branches=1 in the reference code
    x = mobileone_block(g, g.input, ROOT / "stage0", stem, 3, 2, 1, 1, deploy)
    for i, (n, planes) in enumerate(zip(layers, widths)):
        stage = ROOT / f"stage{i + 1}"
        for j in range(n):
            cin = x.shape[0]
            x = mobileone_block(g, x, stage / (2 * j), cin, 3, 2 if j == 0 else 1, cin,
                                branches, deploy)  # depthwise
            x = mobileone_block(g, x, stage / (2 * j + 1), planes, 1, 1, 1, branches,
                                deploy)  # pointwise
    return g.gap_flatten_gemm(x, ROOT / "gap", ROOT / "linear", classes)


# -- SE-Concat: squeeze-excitation around residuals and channel concatenations ------------------
def se_module(g: GraphBuilder, x: Value, s: Scope, reduction: int) -> Value:
    """``SEModule``: ``x * sigmoid(fc2(relu(fc1(avg_pool(x)))))``, fc1/fc2 1x1 convs with bias."""
    c = x.shape[0]
    y = g.gap(x, s / "avg_pool")
    y = g.relu(g.conv(y, s / "fc1", max(1, c // reduction), 1, pad=0, bias="torch"), s / "relu")
    y = g.sigmoid(g.conv(y, s / "fc2", c, 1, pad=0, bias="torch"), s / "sigmoid")
    return g.mul(x, y, s)  # module_input * x: Mul(trunk [N,C,H,W], gate [N,C,1,1])


def se_basic_block(g: GraphBuilder, x: Value, s: Scope, planes: int, stride: int,
                   reduction: int) -> Value:
    """SE-ResNet basic block: ``relu(shortcut + se_module(bn2(conv2(relu(bn1(conv1(x)))))))``."""
    cin = x.shape[0]
    y = g.relu(g.conv_bn(x, s / "conv1", s / "bn1", planes, 3, stride=stride), s / "relu")
    y = se_module(g, g.conv_bn(y, s / "conv2", s / "bn2", planes, 3), s / "se_module", reduction)
    shortcut = _downsample(g, x, s, planes, stride) if stride != 1 or cin != planes else x
    return g.relu(g.add(shortcut, y, s), (s / "relu").again(1))


def _basic_conv(g: GraphBuilder, x: Value, s: Scope, cout: int, k: int) -> Value:
    """torchvision's Inception ``BasicConv2d``: conv, bn, then ``F.relu`` in the module's scope."""
    return g.relu(g.conv_bn(x, s / "conv", s / "bn", cout, k), s)


def mixed_block(g: GraphBuilder, x: Value, s: Scope, widths, reduction: int | None) -> Value:
    """Inception module: ``torch.cat([branch1x1, branch3x3(, branch_pool)], 1)``, the pool branch
    (max_pool2d 3/1/1 then a 1x1) when ``widths`` has three entries; SE-Inception when
    ``reduction`` is given (the SE gate scales the concatenation)."""
    branches = [_basic_conv(g, x, s / "branch1x1", widths[0], 1),
                _basic_conv(g, x, s / "branch3x3", widths[1], 3)]
    if len(widths) > 2:
        pooled = g.maxpool(x, s, 3, 1, pad=1)
        branches.append(_basic_conv(g, pooled, s / "branch_pool", widths[2], 1))
    y = g.concat(branches, s)
    return y if reduction is None else se_module(g, y, s / "se_module", reduction)


def dense_layer(g: GraphBuilder, x: Value, s: Scope, growth: int) -> Value:
    """DenseNet-style growth: ``torch.cat([x, relu(bn(conv(x)))], 1)`` (post-activation, unlike
    DenseNet's BN-ReLU-Conv, so every BN follows a conv)."""
    new = g.relu(g.conv_bn(x, s / "conv", s / "bn", growth, 3), s / "relu")
    return g.concat([x, new], s)


def se_concat(g: GraphBuilder, *, stem: int, widths, mixed, growth, reduction: int,
              classes: int) -> Value:
    """SE blocks (Hu et al. 2018, SENet) on residual branches and on an Inception concatenation
    (Szegedy et al. 2015/2016), plus DenseNet concatenations (Huang et al. 2017).

    stem (7x7/2 + maxpool) -> layer1.0 SE block, identity shortcut -> mixed1: three-branch
    Inception + SE -> dense1 -> layer2.0 (stride 2, downsample reads the concat) -> layer2.1 ->
    mixed2: two-branch Inception, no SE -> layer3.0 (stride 2) -> layer4.0 (stride 2) ->
    dense2 -> avgpool -> fc, so the classifier reads a concatenation too."""
    x = g.relu(g.conv_bn(g.input, ROOT / "conv1", ROOT / "bn1", stem, 7, stride=2, pad=3),
               ROOT / "relu")
    x = g.maxpool(x, ROOT / "maxpool", 3, 2, pad=1)
    x = se_basic_block(g, x, ROOT / "layer1" / 0, widths[0], 1, reduction)
    x = mixed_block(g, x, ROOT / "mixed1", mixed[0], reduction)
    x = dense_layer(g, x, ROOT / "dense1", growth[0])
    x = se_basic_block(g, x, ROOT / "layer2" / 0, widths[1], 2, reduction)
    x = se_basic_block(g, x, ROOT / "layer2" / 1, widths[1], 1, reduction)
    x = mixed_block(g, x, ROOT / "mixed2", mixed[1], None)
    x = se_basic_block(g, x, ROOT / "layer3" / 0, widths[2], 2, reduction)
    x = se_basic_block(g, x, ROOT / "layer4" / 0, widths[3], 2, reduction)
    x = dense_layer(g, x, ROOT / "dense2", growth[1])
    return g.gap_flatten_gemm(x, ROOT / "avgpool", ROOT / "fc", classes)


# -- the registry ---------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class Spec:
    fn: Callable[..., Value]
    kwargs: dict
    size: int = 224  # input is 1 x 3 x size x size

    @property
    def probe_batch(self) -> int:
        """Images in the batch that sets BN statistics: enough samples per channel even where
        a 32x32 input has shrunk to 1x1."""
        return 1 if self.size >= 224 else 16

    def build(self, g: GraphBuilder) -> Value:
        return self.fn(g, **self.kwargs)


_TINY = 32
# A0 in DingXiaoH/RepVGG: width multipliers (0.75, 0.75, 0.75, 2.5) on (64, 128, 256, 512)
_REPVGG_A0 = dict(layers=(2, 4, 14, 1), widths=(48, 96, 192, 1280), stem=48, classes=1000)
_REPVGG_TINY = dict(layers=(2, 2, 2, 1), widths=(8, 16, 16, 32), stem=8, classes=10)
# S0 in apple/ml-mobileone: width multipliers (0.75, 1, 1, 2) on (64, 128, 256, 512), k=4; the
# paper's stages 4 and 5 (5 + 5 blocks, both 256 wide) are the code's stage3 of 10 blocks
_MOBILEONE_S0 = dict(layers=(2, 8, 10, 1), widths=(48, 128, 256, 1024), stem=48,
                     classes=1000, branches=4)
_SENET_CONCAT = dict(stem=64, widths=(64, 128, 256, 512), mixed=((64, 96, 32), (128, 128)),
                     growth=(32, 64), reduction=16, classes=1000)
_SENET_CONCAT_TINY = dict(stem=8, widths=(8, 16, 24, 32), mixed=((8, 8, 8), (16, 16)),
                          growth=(8, 8), reduction=4, classes=10)
_VGG16_TINY_CFG = tuple(v if v == "M" else v // 8 for v in VGG16_CFG)[:-1]


def _half(cfg):
    """Every conv width halved: a 50% filter pruning of each conv."""
    return tuple(v if v == "M" else v // 2 for v in cfg)


_MOBILEONE_TINY = dict(layers=(2, 2, 2, 1), widths=(8, 16, 16, 32), stem=8, classes=10,
                       branches=4)

MODELS: dict[str, Spec] = {
    "resnet18": Spec(resnet, dict(block="basic", layers=(2, 2, 2, 2),
                                  widths=(64, 128, 256, 512), stem=64, classes=1000)),
    "resnet18-tiny": Spec(resnet, dict(block="basic", layers=(2, 2, 2, 2),
                                       widths=(8, 8, 16, 16), stem=8, classes=10), _TINY),
    "resnet50": Spec(resnet, dict(block="bottleneck", layers=(3, 4, 6, 3),
                                  widths=(64, 128, 256, 512), stem=64, classes=1000)),
    "resnet50-tiny": Spec(resnet, dict(block="bottleneck", layers=(2, 2, 2, 2),
                                       widths=(4, 4, 8, 8), stem=8, classes=10), _TINY),
    "mobilenetv2": Spec(mobilenetv2, {}),
    "mobilenetv2-tiny": Spec(mobilenetv2, dict(
        settings=((1, 8, 1, 1), (6, 8, 2, 2), (6, 16, 2, 2), (6, 16, 2, 1), (6, 24, 2, 2)),
        stem=8, last=64, classes=10), _TINY),
    "vgg16_bn": Spec(vgg_bn, {}, _TINY),
    # widths / 8; the last MaxPool is dropped so the classifier flattens a 64 x 2 x 2 map
    "vgg16_bn-tiny": Spec(vgg_bn, dict(cfg=_VGG16_TINY_CFG, hidden=64, classes=10), _TINY),
    # what 50% filter pruning of every conv and of the hidden Linear leaves (classes unchanged)
    "vgg16_bn-half": Spec(vgg_bn, dict(cfg=_half(VGG16_CFG), hidden=256), _TINY),
    "vgg16_bn-half-tiny": Spec(vgg_bn, dict(cfg=_half(_VGG16_TINY_CFG), hidden=32, classes=10),
                               _TINY),
    "repvgg_a0": Spec(repvgg, _REPVGG_A0),
    "repvgg_a0-deploy": Spec(repvgg, dict(_REPVGG_A0, deploy=True)),
    "repvgg_a0-tiny": Spec(repvgg, _REPVGG_TINY, _TINY),
    "repvgg_a0-tiny-deploy": Spec(repvgg, dict(_REPVGG_TINY, deploy=True), _TINY),
    "mobileone_s0": Spec(mobileone, _MOBILEONE_S0),
    "mobileone_s0-deploy": Spec(mobileone, dict(_MOBILEONE_S0, deploy=True)),
    "mobileone_s0-tiny": Spec(mobileone, _MOBILEONE_TINY, _TINY),
    "mobileone_s0-tiny-deploy": Spec(mobileone, dict(_MOBILEONE_TINY, deploy=True), _TINY),
    "senet_concat": Spec(se_concat, _SENET_CONCAT),
    "senet_concat-tiny": Spec(se_concat, _SENET_CONCAT_TINY, _TINY),
}
