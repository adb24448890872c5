"""Slice classifiers (2 logits: no bleed, bleed) and their CAM taps (METHOD.md sections 3, 8).

Architectures (``build(arch)``):

* ``resnet34``, ``resnet50`` (the paper's pair), ``resnet18``, ``densenet121``,
  ``densenet169``, ``vgg16``, ``vgg19``: torchvision constructors with ``weights=None,
  num_classes=2`` (no pretrained weights: nothing can be downloaded here).  VGG's
  ``AdaptiveAvgPool2d((7, 7))`` is replaced by a global average pool (and the first classifier
  layer by ``Linear(512, 4096)``) so that any input size exports to ONNX (a 7x7 adaptive pool of
  a 12x12 map, 384 input, does not).
* ``slim34`` / ``slim50``: torchvision's ResNet with its own ``BasicBlock`` / ``Bottleneck``,
  the same layer counts as ResNet34 / ResNet50 ([3, 4, 6, 3]) and module names (``conv1``,
  ``layer1`` .. ``layer4``, ``fc``), but stage widths ``w, 2w, 4w, 8w`` instead of
  64 .. 512 (``width``, default 16).  The shipped demo pair uses these.

Taps (ONNX tensor names, found in the exported graph by module scope, see ``find_taps``):

* ResNet: ``layer1``/``layer2`` = the output of each stage (its last Relu, after the residual
  Add); the deep tap (Grad-CAM baseline) = ``layer4``'s output.
* DenseNet: ``layer1``/``layer2`` = the outputs of ``denseblock1``/``denseblock2`` (their final
  Concat); deep tap = the Relu after ``norm5``.
* VGG: ``layer1``/``layer2`` = the last Relu of convolution stages 2 and 3 (before their
  MaxPool); deep tap = the last Relu of stage 5.
"""
from __future__ import annotations

from typing import Dict, Optional, Tuple

import torch
from torch import nn

ARCHS = ("slim34", "slim50", "resnet18", "resnet34", "resnet50", "densenet121", "densenet169", "vgg16", "vgg19")


class SlimResNet(nn.Module):
    """torchvision's ResNet layout with stage widths ``width * (1, 2, 4, 8)``."""

    def __init__(self, block, layers, width: int = 16, num_classes: int = 2, in_channels: int = 3):
        super().__init__()
        from torchvision.models.resnet import conv1x1

        self.inplanes = width
        self.conv1 = nn.Conv2d(in_channels, width, kernel_size=7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        self._conv1x1 = conv1x1
        self.layer1 = self._make_layer(block, width, layers[0])
        self.layer2 = self._make_layer(block, 2 * width, layers[1], stride=2)
        self.layer3 = self._make_layer(block, 4 * width, layers[2], stride=2)
        self.layer4 = self._make_layer(block, 8 * width, layers[3], stride=2)
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.fc = nn.Linear(8 * width * block.expansion, num_classes)
        for m in self.modules():  # torchvision's initialisation
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.constant_(m.weight, 1)
                nn.init.constant_(m.bias, 0)
        del self._conv1x1

    def _make_layer(self, block, planes, blocks, stride=1):
        downsample = None
        if stride != 1 or self.inplanes != planes * block.expansion:
            downsample = nn.Sequential(self._conv1x1(self.inplanes, planes * block.expansion, stride),
                                       nn.BatchNorm2d(planes * block.expansion))
        layers = [block(self.inplanes, planes, stride, downsample)]
        self.inplanes = planes * block.expansion
        layers += [block(self.inplanes, planes) for _ in range(1, blocks)]
        return nn.Sequential(*layers)

    def forward(self, x):
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.fc(torch.flatten(self.avgpool(x), 1))


def build(arch: str, width: int = 16, num_classes: int = 2) -> nn.Module:
    """A freshly initialised classifier (3 input channels, ``num_classes`` logits)."""
    import torchvision.models as tvm
    from torchvision.models.resnet import BasicBlock, Bottleneck

    if arch == "slim34":
        return SlimResNet(BasicBlock, [3, 4, 6, 3], width, num_classes)
    if arch == "slim50":
        return SlimResNet(Bottleneck, [3, 4, 6, 3], width, num_classes)
    if arch in ("resnet18", "resnet34", "resnet50", "densenet121", "densenet169"):
        return getattr(tvm, arch)(weights=None, num_classes=num_classes)
    if arch in ("vgg16", "vgg19"):
        m = getattr(tvm, arch)(weights=None, num_classes=num_classes)
        m.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        m.classifier[0] = nn.Linear(512, 4096)
        return m
    raise ValueError(f"unknown architecture {arch!r}; expected one of {ARCHS}")


def family(arch: str) -> str:
    if arch.startswith(("slim", "resnet")):
        return "resnet"
    if arch.startswith("densenet"):
        return "densenet"
    if arch.startswith("vgg"):
        return "vgg"
    raise ValueError(arch)


def _vgg_stage_relus(model) -> list:
    """Index (in ``model.features``) of the last ReLU of each convolution stage."""
    out, last = [], None
    for i, m in enumerate(model.features):
        if isinstance(m, nn.ReLU):
            last = i
        elif isinstance(m, nn.MaxPool2d):
            out.append(last)
    return out


def tap_scopes(arch: str, model: nn.Module) -> Tuple[Dict[str, str], str]:
    """Module paths of the taps: ({"layer1": path, "layer2": path}, deep path)."""
    fam = family(arch)
    if fam == "resnet":
        return {"layer1": "layer1", "layer2": "layer2"}, "layer4"
    if fam == "densenet":
        return {"layer1": "features.denseblock1", "layer2": "features.denseblock2"}, ""
    stages = _vgg_stage_relus(model)
    return ({"layer1": f"features.{stages[1]}", "layer2": f"features.{stages[2]}"}, f"features.{stages[4]}")


def _onnx_scope(path: str) -> str:
    """Module path -> the node-name prefix of the TorchScript exporter, one segment per module:
    the attribute name, or ``parent.index`` for a Sequential child ("layer1.2" ->
    "/layer1/layer1.2", "features.denseblock1" -> "/features/denseblock1", "features.8" ->
    "/features/features.8")."""
    parts = path.split(".")
    segs = [f"{parts[i - 1]}.{p}" if p.isdigit() and i > 0 else p for i, p in enumerate(parts)]
    return "".join("/" + s for s in segs)


def _last_output(proto, prefix: str, op: Optional[str] = None) -> str:
    """The first output of the last node (graph order) whose name lies under ``prefix``."""
    hits = [n for n in proto.graph.node if (n.name == prefix or n.name.startswith(prefix + "/"))
            and (op is None or n.op_type == op)]
    if not hits:
        raise ValueError(f"no ONNX node under {prefix!r}" + (f" with op {op}" if op else ""))
    return hits[-1].output[0]


def find_taps(arch: str, model: nn.Module, proto) -> Tuple[Dict[str, str], str]:
    """ONNX tensor names of the taps and the deep tap in an exported graph (``proto``)."""
    scopes, deep = tap_scopes(arch, model)
    taps = {k: _last_output(proto, _onnx_scope(v)) for k, v in scopes.items()}
    if family(arch) == "densenet":  # F.relu(features) in DenseNet.forward: the last Relu of the graph
        deep_name = [n for n in proto.graph.node if n.op_type == "Relu"][-1].output[0]
    else:
        deep_name = _last_output(proto, _onnx_scope(deep))
    return taps, deep_name


def classifier_metadata(input_size, taps: Dict[str, str], deep_tap: str, window=(50, 130),
                        bleed_index: int = 1, trained_on: Optional[str] = None, arch: Optional[str] = None,
                        skull_strip_mm: Optional[float] = None) -> dict:
    """The METHOD.md section 8 ``ichseg.*`` keys for a classifier (3 channels). ``skull_strip_mm``:
    the model was trained on CTs with air outside the intracranial mask at this margin
    (``ichseg skull-strip --margin-mm``), which the library then applies to its inputs."""
    from .unet import _num

    meta = {
        "ichseg.kind": "classifier",
        "ichseg.input_size": f"{input_size[0]}x{input_size[1]}",
        "ichseg.channels": "3",
        "ichseg.window": f"{_num(window[0])},{_num(window[1])}",
        "ichseg.bleed_index": str(bleed_index),
        "ichseg.taps": ",".join(f"{k}={v}" for k, v in taps.items()),
        "ichseg.deep_tap": deep_tap,
    }
    if trained_on:
        meta["ichseg.trained_on"] = trained_on
    if arch:
        meta["ichseg.arch"] = arch
    if skull_strip_mm is not None:
        from .common import check_skull_strip_mm

        check_skull_strip_mm(skull_strip_mm)
        meta["ichseg.skull_strip_mm"] = _num(skull_strip_mm)
    return meta


def export(model: nn.Module, arch: str, path, input_size, window=(50, 130), trained_on=None, skull_strip_mm=None):
    """Exports to ONNX with the classifier metadata and taps; returns (proto, metadata)."""
    import onnx

    from .unet import export_onnx

    tmp = export_onnx(model, path, input_size, 3, {})  # first pass: find the tap tensor names
    taps, deep = find_taps(arch, model, tmp)
    meta = classifier_metadata(input_size, taps, deep, window, 1, trained_on, arch, skull_strip_mm)
    del tmp.metadata_props[:]
    for key in sorted(meta):
        e = tmp.metadata_props.add()
        e.key, e.value = key, meta[key]
    onnx.checker.check_model(tmp, full_check=True)
    import pathlib

    pathlib.Path(path).write_bytes(tmp.SerializeToString(deterministic=True))
    return tmp, meta


def count_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
