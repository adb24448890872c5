"""tests/dicom/validate_seg.py against SEGs written by highdicom (until our writer exists):
it must accept a right SEG and reject a wrong one, so that it can fail.

    .venv-test/bin/python -m pytest tests/dicom -q

dciodvfy (Debian dicom3tools) and dcmqi's segimage2itkimage are needed; without them the tests
skip, unless ICHSEG_REQUIRE_DICOM_TOOLS=1 (scripts/test.sh sets it), where they fail.
"""
from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

import highdicom as hd
import nibabel as nib
import numpy as np
import pydicom
import pytest
from highdicom.sr.coding import CodedConcept

HERE = Path(__file__).resolve().parent
FIXTURES = HERE.parent / "fixtures" / "dicom"
sys.path.insert(0, str(HERE))
import validate_seg  # noqa: E402
from ctseries import read_ct_series  # noqa: E402

missing = [name for name, found in [("dciodvfy", shutil.which("dciodvfy")),
                                    ("segimage2itkimage", validate_seg.find_segimage2itkimage())]
           if not found]
if missing and os.environ.get("ICHSEG_REQUIRE_DICOM_TOOLS") != "1":
    pytest.skip(f"{', '.join(missing)} not installed (scripts/test-deps.sh installs them)",
                allow_module_level=True)


def test_dicom_tools_present():
    """Under ICHSEG_REQUIRE_DICOM_TOOLS=1 a missing tool fails here, by name."""
    assert not missing, f"not installed: {', '.join(missing)} (scripts/test-deps.sh installs them)"


def write_seg(path, series, mask, label="Hemorrhage", fractional=None):
    """A highdicom SEG of mask (i, j, k) on the fixture series; FRACTIONAL when fractional
    (probabilities, same layout) is given. Empty frames are omitted (highdicom's default)."""
    source = read_ct_series(FIXTURES / "series" / series)
    datasets = [pydicom.dcmread(ds.filename) for ds in source.datasets]
    values = mask if fractional is None else fractional
    pixels = np.transpose(values, (2, 1, 0))  # (i, j, k) -> (frame, row, column)
    description = hd.seg.SegmentDescription(
        segment_number=1, segment_label=label,
        segmented_property_category=CodedConcept("49755003", "SCT", "Morphologically abnormal structure"),
        segmented_property_type=CodedConcept("50960005", "SCT", "Hemorrhage"),
        algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
        algorithm_identification=hd.AlgorithmIdentificationSequence(
            name="test", version="1", family=CodedConcept("123109", "DCM", "Manual Processing")))
    seg = hd.seg.Segmentation(
        source_images=datasets,
        pixel_array=pixels.astype(bool) if fractional is None else pixels.astype(np.float32),
        segmentation_type="BINARY" if fractional is None else "FRACTIONAL",
        segment_descriptions=[description], series_instance_uid=hd.UID(), series_number=100,
        sop_instance_uid=hd.UID(), instance_number=1, manufacturer="test",
        manufacturer_model_name="test", software_versions="1", device_serial_number="1")
    seg.save_as(path)
    return path


def reference_mask(grid="axial"):
    img = nib.load(FIXTURES / "reference" / f"{grid}_mask.nii.gz")
    return np.asarray(img.dataobj).astype(np.uint8), img.affine


def save_nifti(path, data, affine):
    nib.save(nib.Nifti1Image(data, affine), path)
    return path


def validate(seg, series, expected, *extra):
    return validate_seg.main(["--seg", str(seg), "--source", str(FIXTURES / "series" / series),
                              "--expected", str(expected), *map(str, extra)])


def test_accepts_the_right_mask(tmp_path):
    mask, _ = reference_mask()
    seg = write_seg(tmp_path / "seg.dcm", "explicit_le", mask)
    assert validate(seg, "explicit_le", FIXTURES / "reference/axial_mask.nii.gz") == 0


def test_rejects_one_flipped_voxel_in_every_reader(tmp_path, capsys):
    mask, affine = reference_mask()
    seg = write_seg(tmp_path / "seg.dcm", "explicit_le", mask)
    wrong = mask.copy()
    wrong[60, 100, 3] ^= 1
    expected = save_nifti(tmp_path / "wrong.nii.gz", wrong, affine)
    assert validate(seg, "explicit_le", expected) == 1
    out = capsys.readouterr().out
    assert "highdicom: by source-instance reference: 1 voxels differ" in out
    assert "highdicom: by plane position: 1 voxels differ" in out
    assert "dcmqi (segimage2itkimage): in world coordinates: 1 voxels differ" in out


def test_oblique_series(tmp_path):
    mask, _ = reference_mask("oblique")
    seg = write_seg(tmp_path / "seg.dcm", "oblique", mask)
    assert validate(seg, "oblique", FIXTURES / "reference/oblique_mask.nii.gz") == 0


def test_mask_on_another_grid_is_rejected(tmp_path, capsys):
    mask, _ = reference_mask()
    seg = write_seg(tmp_path / "seg.dcm", "explicit_le", mask)
    assert validate(seg, "explicit_le", FIXTURES / "reference/oblique_mask.nii.gz") == 1
    assert "not on the source grid" in capsys.readouterr().out


def test_omitted_empty_frames(tmp_path):
    """Bleed on slices 2..4 only: the SEG has 3 frames and dcmqi's image covers only them;
    the other slices must read as empty, and a voxel set there must be missed."""
    mask, affine = reference_mask()
    mask[:, :, [0, 1, 5, 6, 7]] = 0
    seg = write_seg(tmp_path / "seg.dcm", "explicit_le", mask)
    assert int(pydicom.dcmread(seg, stop_before_pixels=True).NumberOfFrames) == 3
    assert validate(seg, "explicit_le", save_nifti(tmp_path / "m.nii.gz", mask, affine)) == 0
    wrong = mask.copy()
    wrong[60, 100, 6] = 1
    assert validate(seg, "explicit_le", save_nifti(tmp_path / "w.nii.gz", wrong, affine)) == 1


def test_empty_mask(tmp_path):
    mask, affine = reference_mask()
    empty = np.zeros_like(mask)
    seg = write_seg(tmp_path / "seg.dcm", "explicit_le", empty)
    assert validate(seg, "explicit_le", save_nifti(tmp_path / "e.nii.gz", empty, affine)) == 0
    assert validate(seg, "explicit_le", FIXTURES / "reference/axial_mask.nii.gz") == 1


def test_wrong_label_is_rejected(tmp_path, capsys):
    mask, _ = reference_mask()
    seg = write_seg(tmp_path / "seg.dcm", "explicit_le", mask, label="Blood")
    assert validate(seg, "explicit_le", FIXTURES / "reference/axial_mask.nii.gz") == 1
    assert "segment label 'Blood'" in capsys.readouterr().out


def test_fractional(tmp_path):
    mask, affine = reference_mask()
    rng = np.random.default_rng(0)
    prob = (mask * rng.uniform(0.5, 1.0, mask.shape)).astype(np.float32)
    seg = write_seg(tmp_path / "seg.dcm", "explicit_le", mask, fractional=prob)
    expected = FIXTURES / "reference/axial_mask.nii.gz"
    good = save_nifti(tmp_path / "p.nii.gz", prob, affine)
    assert validate(seg, "explicit_le", expected, "--fractional-expected", good, "--tolerance", 0.01) == 0
    off = prob.copy()
    off[tuple(np.argwhere(mask)[0])] -= 0.05  # one bleed voxel 0.05 off
    bad = save_nifti(tmp_path / "q.nii.gz", off, affine)
    assert validate(seg, "explicit_le", expected, "--fractional-expected", bad, "--tolerance", 0.01) == 1
    # A FRACTIONAL SEG checked as a binary one is an error, not a pass.
    assert validate(seg, "explicit_le", expected) == 1
