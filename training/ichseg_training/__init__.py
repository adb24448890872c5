"""Python tooling for ichseg: phantoms, dataset loaders, model definitions and ONNX export.

The torch-based names are imported lazily, so the phantom generator and the loaders work on a
machine with only numpy, scipy and nibabel (as CI has).
"""

__all__ = ["UNet", "export_onnx", "segmenter_metadata"]


def __getattr__(name):
    if name in __all__:
        from . import unet

        return getattr(unet, name)
    raise AttributeError(f"module 'ichseg_training' has no attribute {name!r}")
