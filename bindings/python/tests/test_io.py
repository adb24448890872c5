"""read_volume / write_mask / write_probability: NIfTI and DICOM against nibabel and the CLI."""

from __future__ import annotations

import json

import nibabel as nib
import numpy as np
import pytest

import ichseg

from conftest import CT_SMALL, FIXTURES, MODELS, SAMPLE

DICOM = FIXTURES / "dicom"
MANIFEST = json.loads((DICOM / "manifest.json").read_text())


@pytest.mark.parametrize("path", [SAMPLE, CT_SMALL], ids=["sample", "ct_small"])
def test_read_nifti_equals_nibabel(path):
    image = ichseg.read_volume(path)
    ref = nib.load(path)
    np.testing.assert_allclose(image.array, ref.get_fdata(dtype=np.float32).T, rtol=0, atol=0)
    np.testing.assert_allclose(image.spacing, ref.header.get_zooms()[:3], rtol=1e-6)
    np.testing.assert_allclose(np.asarray(image.affine), ref.affine, atol=1e-4)
    assert image.kind == "nifti" and image.series_uid is None and image.shape == image.array.shape
    assert image.array is not image.array  # a new array each time: the Image stays unchanged


@pytest.mark.parametrize("name", [n for n, s in MANIFEST["series"].items() if s["expected"] == "ok"])
def test_read_dicom_series_equals_reference(name):
    s = MANIFEST["series"][name]
    image = ichseg.read_volume(DICOM / s["path"])
    assert image.kind == "dicom" and image.series_uid == s["series_instance_uid"]
    nx, ny, nz = s["dims"]
    assert image.shape == (nz, ny, nx)
    np.testing.assert_allclose(image.spacing, s["spacing"], rtol=1e-6)
    np.testing.assert_allclose(np.asarray(image.affine), s["affine"], atol=1e-4)
    ref = nib.load(DICOM / s["reference"]).get_fdata(dtype=np.float32).T
    np.testing.assert_allclose(image.array, ref, atol=s["tolerance_hu"])


def test_two_series_choose_by_uid():
    folder = DICOM / "two_series"
    default = ichseg.read_volume(folder)
    uids = {default.series_uid}
    # The other series in the folder is reachable by its UID.
    import pydicom

    for f in folder.iterdir():
        if f.is_file():
            try:
                uids.add(pydicom.dcmread(f, stop_before_pixels=True).SeriesInstanceUID)
            except Exception:
                pass
    other = (uids - {default.series_uid}).pop()
    chosen = ichseg.read_volume(folder, series=other, allow_non_ct=True)
    assert chosen.series_uid == other
    with pytest.raises(ichseg.Error, match="1.2.3.4"):
        ichseg.read_volume(folder, series="1.2.3.4")


def test_write_mask_nifti_keeps_the_geometry(tmp_path):
    image = ichseg.read_volume(SAMPLE)
    rng = np.random.default_rng(0)
    mask = (rng.random(image.shape) > 0.7).astype(np.uint8)
    ichseg.write_mask(tmp_path / "m.nii.gz", mask, like=image)
    out = nib.load(tmp_path / "m.nii.gz")
    ref = nib.load(SAMPLE)
    assert out.get_data_dtype() == np.uint8
    np.testing.assert_array_equal(np.asarray(out.dataobj).T, mask)
    np.testing.assert_array_equal(out.affine, ref.affine)
    np.testing.assert_array_equal(out.header.get_zooms(), ref.header.get_zooms())
    # Nonzero of any dtype is written as 1.
    ichseg.write_mask(tmp_path / "b.nii.gz", mask.astype(np.float64) * 3, like=image)
    np.testing.assert_array_equal(np.asarray(nib.load(tmp_path / "b.nii.gz").dataobj).T, mask)


def test_write_probability_and_mask_from_spacing(tmp_path):
    p = np.linspace(0, 1, 2 * 3 * 4, dtype=np.float32).reshape(2, 3, 4)
    affine = np.diag([-0.5, 0.5, 5.0, 1.0])
    ichseg.write_probability(tmp_path / "p.nii.gz", p, spacing=(0.5, 0.5, 5.0), affine=affine)
    out = nib.load(tmp_path / "p.nii.gz")
    np.testing.assert_array_equal(np.asarray(out.dataobj).T, p)
    np.testing.assert_allclose(out.affine, affine)
    ichseg.write_mask(tmp_path / "m.nii", p > 0.5, spacing=(0.5, 0.5, 5.0))
    back = ichseg.read_volume(tmp_path / "m.nii")
    np.testing.assert_array_equal(back.array, (p > 0.5).astype(np.float32))
    assert back.spacing == (0.5, 0.5, 5.0)


def test_dicom_seg_round_trip_through_the_cli(cli, engine, tmp_path):
    series = DICOM / MANIFEST["series"]["explicit_le"]["path"]
    image = ichseg.read_volume(series)
    rng = np.random.default_rng(1)
    mask = (rng.random(image.shape) > 0.8).astype(np.uint8)
    ichseg.write_mask(tmp_path / "seg.dcm", mask, like=image, algorithm="test")
    ichseg.write_mask(tmp_path / "same.nii.gz", mask, like=image)
    other = mask.copy()
    other[0] = 1 - other[0]
    ichseg.write_mask(tmp_path / "other.nii.gz", other, like=image)
    # The CLI reads the SEG back onto the NIfTI's grid: identical to the mask written, not to another.
    same = json.loads(cli("eval", "--pred", tmp_path / "seg.dcm", "--gt", tmp_path / "same.nii.gz", "--json").stdout)
    assert same["overall"]["iou_hemorrhage"] == 1.0 and same["overall"]["dice"] == 1.0
    diff = json.loads(cli("eval", "--pred", tmp_path / "seg.dcm", "--gt", tmp_path / "other.nii.gz", "--json").stdout)
    assert diff["overall"]["iou_hemorrhage"] < 1.0
    # A fractional SEG of probabilities is written too and is a DICOM file.
    ichseg.write_probability(tmp_path / "prob.dcm", rng.random(image.shape), like=image)
    assert (tmp_path / "prob.dcm").read_bytes()[128:132] == b"DICM"


def test_segment_a_dicom_series_equals_cli(cli, engine, tmp_path):
    series = DICOM / MANIFEST["series"]["explicit_le"]["path"]
    cli_mask = tmp_path / "cli.nii.gz"
    out = cli("segment", "--model", MODELS / "unet.onnx", series, "-o", cli_mask, "--json",
              "--device", "cpu", "--threads", "2", "-q")
    result = ichseg.Segmenter(engine, MODELS / "unet.onnx").segment(ichseg.read_volume(series))
    np.testing.assert_array_equal(result.mask, np.asarray(nib.load(cli_mask).dataobj).T)
    assert result.summary == json.loads(out.stdout)["summary"]


def test_slice_label_table_reads_both_layouts(tmp_path):
    bcihm = tmp_path / "hemorrhage_diagnosis_raw_ct.csv"
    bcihm.write_text("PatientNumber,SliceNumber,No_Hemorrhage,Fracture_Yes_No\n49,1,1,0\n49,2,0,0\n50,1,0,0\n")
    t = ichseg.SliceLabelTable(bcihm)
    assert t.patients == [49, 50]
    assert t.labels(2, patient=49) == [False, True]
    assert t.labels(1, patient=50) == [True]
    with pytest.raises(ichseg.InvalidArgumentError, match="51"):
        t.labels(1, patient=51)
    with pytest.raises(ichseg.InvalidArgumentError):
        t.labels(3, patient=49)  # slice 3 has no label
    simple = tmp_path / "labels.csv"
    simple.write_text("slice,label\n0,0\n1,1\n")
    assert ichseg.SliceLabelTable(simple).labels(2) == [False, True]
    assert ichseg.SliceLabelTable(simple).patients == []
    bad = tmp_path / "bad.csv"
    bad.write_text("slice,label\n0,2\n")
    with pytest.raises(ichseg.InvalidArgumentError, match="bad.csv"):
        ichseg.SliceLabelTable(bad)
    with pytest.raises(ichseg.IoError):
        ichseg.SliceLabelTable(tmp_path / "missing.csv")


def test_slice_label_table_decides_like_the_cli(cli, engine, tmp_path):
    """The sample's shipped slice labels through SliceLabelTable give the CLI's --labels mask."""
    csv = MODELS / "samples" / "sample_slices.csv"
    image = ichseg.read_volume(SAMPLE)
    labels = ichseg.SliceLabelTable(csv).labels(image.shape[0])
    assert any(labels) and not all(labels)
    tiny = FIXTURES / "classifier" / "tiny_classifier.onnx"
    taps = ["/layer1/relu_1/Relu_output_0", "/layer2/relu_1/Relu_output_0"]
    ours = ichseg.PseudoLabeler(engine, [tiny], taps=[taps], crf=False).label(image, slice_labels=labels)
    out = tmp_path / "m.nii.gz"
    cli("pseudo-label", "--classifier", tiny, "--taps", ",".join(taps), "--no-crf", SAMPLE, "-o", out,
        "--labels", csv, "--threads", "2", "--device", "cpu")
    assert np.array_equal(ours.mask, np.asarray(nib.load(out).dataobj).T)
