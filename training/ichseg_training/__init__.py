"""Python tooling for ichseg: model definitions and ONNX export used by training and fixtures."""

from .unet import UNet, export_onnx, segmenter_metadata

__all__ = ["UNet", "export_onnx", "segmenter_metadata"]
