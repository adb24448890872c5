"""A standard 2D U-Net (Ronneberger et al. 2015) and its ONNX export for ichseg.

Architecture, for ``depth`` poolings and base width ``b``:

* encoder level i (0..depth): ConvBlock with ``b * 2**i`` output channels, where a ConvBlock is
  (Conv3x3 pad 1, no bias -> BatchNorm2d -> ReLU) x 2; levels are separated by MaxPool2d(2);
  the last level is the bottleneck;
* decoder level i (depth-1..0): upsample x2 to ``b * 2**i`` channels, concatenate
  ``[skip, upsampled]`` on the channel axis, ConvBlock to ``b * 2**i`` channels;
  upsampling is either ``"transpose"`` (ConvTranspose2d kernel 2 stride 2) or ``"resize"``
  (nn.Upsample scale 2, bilinear, align_corners=False, followed by Conv3x3 pad 1);
* head: Conv1x1 to ``n_classes`` logits (2 = softmax, bleed index 1; 1 = sigmoid).

Height and width must be divisible by ``2**depth``.

The ONNX export (:func:`export_onnx`) follows METHOD.md section 8: input ``image``
[N, C, H, W] float32 (dynamic N), output ``logits`` [N, n_classes, H, W], and ``ichseg.*``
keys in ``metadata_props``.
"""
from __future__ import annotations

import io
import pathlib
import warnings
from typing import Mapping, Optional, Sequence, Tuple, Union

import torch
from torch import nn

UPSAMPLING_MODES = ("transpose", "resize")


class ConvBlock(nn.Sequential):
    """(Conv3x3 -> BatchNorm -> ReLU) x 2."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__(
            nn.Conv2d(in_channels, out_channels, kernel_size=3, padding=1, bias=False),
            nn.BatchNorm2d(out_channels),
            nn.ReLU(inplace=True),
            nn.Conv2d(out_channels, out_channels, kernel_size=3, padding=1, bias=False),
            nn.BatchNorm2d(out_channels),
            nn.ReLU(inplace=True),
        )


def _upsampler(in_channels: int, out_channels: int, mode: str) -> nn.Module:
    if mode == "transpose":
        return nn.ConvTranspose2d(in_channels, out_channels, kernel_size=2, stride=2)
    if mode == "resize":
        return nn.Sequential(
            nn.Upsample(scale_factor=2, mode="bilinear", align_corners=False),
            nn.Conv2d(in_channels, out_channels, kernel_size=3, padding=1),
        )
    raise ValueError(f"unknown upsampling mode {mode!r}; expected one of {UPSAMPLING_MODES}")


class UNet(nn.Module):
    """2D U-Net returning per-pixel logits [N, n_classes, H, W]."""

    def __init__(
        self,
        in_channels: int = 1,
        n_classes: int = 2,
        base_width: int = 64,
        depth: int = 4,
        upsampling: str = "transpose",
    ) -> None:
        super().__init__()
        if in_channels < 1 or n_classes < 1 or base_width < 1 or depth < 1:
            raise ValueError("in_channels, n_classes, base_width and depth must be >= 1")
        if upsampling not in UPSAMPLING_MODES:
            raise ValueError(f"unknown upsampling mode {upsampling!r}")
        self.in_channels = in_channels
        self.n_classes = n_classes
        self.base_width = base_width
        self.depth = depth
        self.upsampling = upsampling

        widths = [base_width * 2**i for i in range(depth + 1)]
        self.encoders = nn.ModuleList()
        prev = in_channels
        for w in widths:
            self.encoders.append(ConvBlock(prev, w))
            prev = w
        self.pool = nn.MaxPool2d(kernel_size=2, stride=2)
        self.ups = nn.ModuleList()
        self.decoders = nn.ModuleList()
        for i in reversed(range(depth)):
            self.ups.append(_upsampler(widths[i + 1], widths[i], upsampling))
            self.decoders.append(ConvBlock(2 * widths[i], widths[i]))
        self.head = nn.Conv2d(widths[0], n_classes, kernel_size=1)

    @property
    def divisor(self) -> int:
        """Height and width of the input must be multiples of this."""
        return 2**self.depth

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        skips = []
        for i, enc in enumerate(self.encoders):
            if i > 0:
                x = self.pool(x)
            x = enc(x)
            skips.append(x)
        skips.pop()  # the bottleneck output is x itself
        for up, dec in zip(self.ups, self.decoders):
            x = up(x)
            x = dec(torch.cat([skips.pop(), x], dim=1))
        return self.head(x)


def segmenter_metadata(
    input_size: Tuple[int, int],
    channels: int,
    window: Tuple[float, float] = (50, 130),
    normalize: Optional[Tuple[float, float]] = None,
    bleed_index: Optional[int] = 1,
    trained_on: Optional[str] = None,
) -> dict:
    """The METHOD.md section 8 ``ichseg.*`` keys for a segmenter, as strings."""
    meta = {
        "ichseg.kind": "segmenter",
        "ichseg.input_size": f"{input_size[0]}x{input_size[1]}",
        "ichseg.channels": str(channels),
        "ichseg.window": f"{_num(window[0])},{_num(window[1])}",
    }
    if normalize is not None:
        meta["ichseg.normalize"] = f"{_num(normalize[0])},{_num(normalize[1])}"
    if bleed_index is not None:
        meta["ichseg.bleed_index"] = str(bleed_index)
    if trained_on:
        meta["ichseg.trained_on"] = trained_on
    return meta


def _num(v: float) -> str:
    """Shortest text for a number: 50 not 50.0, 0.25 stays 0.25."""
    f = float(v)
    return str(int(f)) if f.is_integer() else repr(f)


def export_onnx(
    model: nn.Module,
    path: Union[str, pathlib.Path],
    input_size: Union[int, Sequence[int]],
    channels: int,
    metadata: Optional[Mapping[str, str]] = None,
    opset: int = 17,
    fold_batchnorm: bool = True,
) -> "onnx.ModelProto":  # noqa: F821
    """Exports ``model`` (put in eval mode) to ONNX at ``path`` and returns the ModelProto.

    Input ``image`` [N, channels, H, W] float32 with a dynamic batch axis ``N``; output
    ``logits`` [N, n_classes, H, W]. ``metadata`` entries (e.g. from
    :func:`segmenter_metadata`) replace ``metadata_props``, in sorted key order.

    Uses the TorchScript-based exporter (``dynamo=False``): its graphs are plain (Conv, Relu,
    MaxPool, Concat, ConvTranspose or Constant + Resize with mode ``linear`` and
    coordinate_transformation_mode ``half_pixel``), opset 17, IR version 8, and byte-for-byte
    reproducible. With ``fold_batchnorm`` (default) eval-mode BatchNorm is folded into the
    preceding Conv; without it the graph keeps ``BatchNormalization`` nodes
    (``training_mode=0``). The Identity nodes the exporter adds when it deduplicates equal
    initializers are removed. The result is verified with ``onnx.checker`` (full check,
    shape inference included) before it is written.
    """
    import onnx

    if isinstance(input_size, int):
        h = w = input_size
    else:
        h, w = (int(s) for s in input_size)
    model.eval()
    dummy = torch.zeros(1, channels, h, w, dtype=torch.float32)
    buf = io.BytesIO()
    mode = torch.onnx.TrainingMode.EVAL if fold_batchnorm else torch.onnx.TrainingMode.PRESERVE
    with torch.no_grad(), warnings.catch_warnings():
        # The legacy exporter announces its deprecation, and (PRESERVE) warns about constant
        # folding in training mode, which does not apply to a model in eval mode.
        warnings.filterwarnings("ignore", message=".*legacy TorchScript-based ONNX export.*")
        warnings.filterwarnings("ignore", message=".*constant folding be turned off.*")
        torch.onnx.export(
            model,
            (dummy,),
            buf,
            input_names=["image"],
            output_names=["logits"],
            dynamic_axes={"image": {0: "N"}, "logits": {0: "N"}},
            opset_version=opset,
            do_constant_folding=True,
            training=mode,
            dynamo=False,
        )
    proto = onnx.load_from_string(buf.getvalue())
    _remove_initializer_identities(proto.graph)
    del proto.metadata_props[:]
    for key in sorted(metadata or {}):
        entry = proto.metadata_props.add()
        entry.key = key
        entry.value = str(metadata[key])
    onnx.checker.check_model(proto, full_check=True)
    path = pathlib.Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(proto.SerializeToString(deterministic=True))
    return proto


def _remove_initializer_identities(graph) -> None:
    """Drops ``Identity`` nodes that merely alias an initializer, rewiring their consumers."""
    inits = {t.name for t in graph.initializer}
    outputs = {o.name for o in graph.output}
    alias = {}
    keep = []
    for node in graph.node:
        if (
            node.op_type == "Identity"
            and len(node.input) == 1
            and node.input[0] in inits
            and node.output[0] not in outputs
        ):
            alias[node.output[0]] = node.input[0]
        else:
            keep.append(node)
    if not alias:
        return
    for node in keep:
        for i, name in enumerate(node.input):
            if name in alias:
                node.input[i] = alias[name]
    del graph.node[:]
    graph.node.extend(keep)
