"""Bad input raises the right ichseg exception (status and message), never a crash."""

from __future__ import annotations

import numpy as np
import pytest

import ichseg
from ichseg import errors

from conftest import CT_SMALL, FIXTURES, MODELS, TINY, TINY_TAPS

UNET = MODELS / "unet.onnx"
SPACING = (0.9, 0.9, 5.0)


@pytest.fixture(scope="module")
def segmenter(engine):
    return ichseg.Segmenter(engine, UNET)


def volume(shape=(3, 32, 32), value=40.0):
    return np.full(shape, value, dtype=np.float32)


@pytest.mark.parametrize("bad, fragment", [
    (np.zeros((3, 8, 8), dtype=np.complex64), "dtype complex64"),
    (np.array([[["a"]]]), "dtype <U1"),
    (np.empty((2, 2, 2), dtype=object), "dtype object"),
])
def test_bad_dtype(segmenter, bad, fragment):
    with pytest.raises(ichseg.InvalidArgumentError, match=fragment) as e:
        segmenter.segment(bad, SPACING)
    assert e.value.status == "INVALID_ARGUMENT" and isinstance(e.value, ValueError)
    assert isinstance(e.value, ichseg.Error)


@pytest.mark.parametrize("shape", [(32, 32), (1, 3, 32, 32), (0, 32, 32), (3, 0, 32)])
def test_bad_shape(segmenter, shape):
    with pytest.raises(ichseg.InvalidArgumentError) as e:
        segmenter.segment(np.zeros(shape, dtype=np.float32), SPACING)
    assert e.value.status == "INVALID_ARGUMENT"


@pytest.mark.parametrize("value", [np.nan, np.inf, -np.inf])
def test_non_finite_voxels(segmenter, value):
    v = volume()
    v[1, 5, 7] = value
    with pytest.raises(ichseg.NonFiniteError, match=r"first at voxel \(x=7, y=5, z=1\)") as e:
        segmenter.segment(v, SPACING)
    assert e.value.status == "NON_FINITE"


@pytest.mark.parametrize("spacing", [(0.0, 1.0, 5.0), (-1.0, 1.0, 5.0), (1.0, float("nan"), 5.0),
                                     (1.0, 1.0, 1e6), (1.0, 5.0)])
def test_wrong_spacing(segmenter, spacing):
    with pytest.raises(ichseg.InvalidArgumentError, match="spacing"):
        segmenter.segment(volume(), spacing)


def test_missing_spacing_and_bad_affine(segmenter):
    with pytest.raises(ichseg.InvalidArgumentError, match="spacing"):
        segmenter.segment(volume())
    with pytest.raises(ichseg.InvalidArgumentError, match="affine"):
        segmenter.segment(volume(), SPACING, np.eye(3))
    bad = np.eye(4)
    bad[0, 3] = np.nan
    with pytest.raises(ichseg.InvalidArgumentError, match="affine"):
        segmenter.segment(volume(), SPACING, bad)


def test_missing_model_file(engine, tmp_path):
    with pytest.raises(ichseg.IoError) as e:
        ichseg.Segmenter(engine, tmp_path / "nope.onnx")
    assert e.value.status == "IO" and "nope.onnx" in e.value.message and isinstance(e.value, OSError)
    with pytest.raises(ichseg.IoError):
        ichseg.PseudoLabeler(engine, [tmp_path / "nope.onnx"])


def test_corrupt_model_file(engine, tmp_path):
    with pytest.raises(ichseg.InvalidModelError) as e:
        ichseg.Segmenter(engine, FIXTURES / "unet" / "not_a_model.onnx")
    assert e.value.status == "INVALID_MODEL"
    truncated = tmp_path / "truncated.onnx"
    truncated.write_bytes(UNET.read_bytes()[:5000])
    with pytest.raises(ichseg.InvalidModelError):
        ichseg.Segmenter(engine, truncated)
    with pytest.raises(ichseg.InvalidModelError):
        ichseg.PseudoLabeler(engine, [truncated])


def test_wrong_kind_of_model(engine):
    # A classifier is not a segmenter, and a U-Net is not a classifier.
    with pytest.raises(ichseg.InvalidModelError):
        ichseg.Segmenter(engine, MODELS / "classifier_slim34.onnx")
    with pytest.raises(ichseg.InvalidModelError):
        ichseg.PseudoLabeler(engine, [UNET])


@pytest.mark.parametrize("options", [dict(threshold=1.5), dict(batch=0), dict(channels=2),
                                     dict(window=(50, 0)), dict(window=(50,))])
def test_bad_segmenter_options(engine, options):
    with pytest.raises(ichseg.InvalidArgumentError):
        ichseg.Segmenter(engine, UNET, **options)


@pytest.mark.parametrize("options", [dict(cam="gradcam"), dict(aggregate="xor"), dict(threshold=-1),
                                     dict(scf=(1.5, 0.5)), dict(taps=[TINY_TAPS, TINY_TAPS])])
def test_bad_pseudo_options(engine, options):
    with pytest.raises(ichseg.InvalidArgumentError):
        ichseg.PseudoLabeler(engine, [TINY], **{"taps": [TINY_TAPS], **options})


def test_bad_engine_options():
    with pytest.raises(ichseg.InvalidArgumentError, match="unknown device"):
        ichseg.Engine(device="tpu")
    with pytest.raises(ichseg.InvalidArgumentError, match="threads"):
        ichseg.Engine(threads=5000)
    with pytest.raises(OverflowError):
        ichseg.Engine(threads=-1)


def test_wrong_length_slice_labels(engine):
    labeler = ichseg.PseudoLabeler(engine, [TINY], taps=[TINY_TAPS], crf=False)
    image = ichseg.read_volume(CT_SMALL)
    nz = image.shape[0]
    for labels in ([1] * (nz - 1), [1] * (nz + 1), []):
        with pytest.raises(ichseg.InvalidArgumentError, match="slice label"):
            labeler.label(image, slice_labels=labels)
    with pytest.raises(ichseg.InvalidArgumentError, match="0/1"):
        labeler.label(image, slice_labels=[2] * nz)
    with pytest.raises(ichseg.InvalidArgumentError):
        labeler.label(image, slice_labels=np.ones((nz, 2)))


def test_memory_limit(tmp_path):
    small = ichseg.Engine(device="cpu", threads=1, memory_limit_mb=1)
    seg = ichseg.Segmenter(small, UNET)
    with pytest.raises(ichseg.OutOfMemoryError) as e:
        seg.segment(volume((30, 256, 256)), SPACING)
    assert e.value.status == "OUT_OF_MEMORY" and isinstance(e.value, MemoryError)
    with pytest.raises(ichseg.OutOfMemoryError):
        ichseg.read_volume(MODELS / "samples" / "sample.nii.gz", memory_limit_mb=1)


def test_bad_files(tmp_path):
    with pytest.raises(ichseg.IoError):
        ichseg.read_volume(tmp_path / "missing.nii.gz")
    junk = tmp_path / "junk.nii"
    junk.write_bytes(b"\0" * 400)
    with pytest.raises(ichseg.InvalidImageError) as e:
        ichseg.read_volume(junk)
    assert e.value.status == "INVALID_IMAGE"
    truncated = tmp_path / "truncated.nii.gz"
    truncated.write_bytes(CT_SMALL.read_bytes()[:300])
    with pytest.raises(ichseg.Error):
        ichseg.read_volume(truncated)


@pytest.mark.parametrize("case, error", [
    ("mixed_size", ichseg.InvalidImageError), ("gap", ichseg.Error), ("empty", ichseg.Error),
    ("mr", ichseg.Error), ("unsupported_ts", ichseg.UnsupportedError), ("truncated", ichseg.Error),
])
def test_bad_dicom_series(case, error):
    with pytest.raises(error):
        ichseg.read_volume(FIXTURES / "dicom" / "bad" / case)


@pytest.mark.parametrize("kind, cls, status", [
    ("cancelled", errors.CancelledError, "CANCELLED"),
    ("out_of_memory", errors.OutOfMemoryError, "OUT_OF_MEMORY"),
    ("unsupported", errors.UnsupportedError, "UNSUPPORTED"),
    ("inference", errors.InferenceError, "INFERENCE"),
    ("device_memory", errors.InferenceError, "INFERENCE"),
    ("panic", errors.PanicError, "PANIC"),
])
def test_every_library_error_maps(kind, cls, status):
    # Errors that good input cannot provoke, raised through the same conversion as the others.
    with pytest.raises(cls) as e:
        ichseg._native._raise_library_error(kind)
    assert type(e.value) is cls and e.value.status == status and str(e.value).startswith(f"[{status}]")


def test_write_errors(tmp_path):
    image = ichseg.read_volume(CT_SMALL)
    mask = np.zeros(image.shape, dtype=np.uint8)
    with pytest.raises(ichseg.InvalidArgumentError, match="DICOM-SEG"):
        ichseg.write_mask(tmp_path / "seg.dcm", mask, like=image)
    with pytest.raises(ichseg.InvalidArgumentError, match="shape"):
        ichseg.write_mask(tmp_path / "m.nii.gz", mask[:-1], like=image)
    with pytest.raises(ichseg.InvalidArgumentError):
        ichseg.write_mask(tmp_path / "m.nii.gz", mask)  # neither like nor spacing
    with pytest.raises(ichseg.InvalidArgumentError, match="NaN"):
        ichseg.write_mask(tmp_path / "m.nii.gz", np.full(image.shape, np.nan), like=image)
    with pytest.raises(ichseg.InvalidArgumentError, match="outside"):
        ichseg.write_probability(tmp_path / "p.nii.gz", np.full(image.shape, 1.5), like=image)
    with pytest.raises(ichseg.IoError):
        ichseg.write_mask(tmp_path / "no" / "such" / "dir" / "m.nii.gz", mask, like=image)
    assert not list(tmp_path.iterdir()), "a failed write leaves no file"


def test_eval_errors():
    a = np.zeros((2, 4, 4), dtype=np.uint8)
    with pytest.raises(ichseg.InvalidArgumentError):
        ichseg.eval(a, a[:, :3])
    with pytest.raises(ichseg.InvalidArgumentError, match="pairs"):
        ichseg.eval([a, a], [a])
    with pytest.raises(ichseg.InvalidArgumentError):
        ichseg.eval([a], a)
