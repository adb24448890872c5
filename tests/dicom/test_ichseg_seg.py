"""Our DICOM-SEGs (written by the `ichseg` CLI from the fixture series) through the independent
readers of validate_seg.py: dciodvfy, highdicom and dcmqi must all accept them and give back
the mask (and probabilities) that ichseg writes as NIfTI for the same run.

    ICHSEG_BIN=target/debug/ichseg .venv-test/bin/python -m pytest tests/dicom -q

ICHSEG_BIN defaults to target/debug/ichseg (what `cargo test` builds). Without it, or without
the tools, the tests skip, unless ICHSEG_REQUIRE_DICOM_TOOLS=1 (scripts/test.sh sets it).
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent.parent
FIXTURES = HERE.parent / "fixtures" / "dicom"
sys.path.insert(0, str(HERE))
import validate_seg  # noqa: E402

BIN = Path(os.environ.get("ICHSEG_BIN", ROOT / "target" / "debug" / "ichseg"))
REQUIRED = os.environ.get("ICHSEG_REQUIRE_DICOM_TOOLS") == "1"
missing = [name for name, found in [("dciodvfy", shutil.which("dciodvfy")),
                                    ("segimage2itkimage", validate_seg.find_segimage2itkimage()),
                                    (str(BIN), BIN.is_file())] if not found]
if missing and not REQUIRED:
    pytest.skip(f"{', '.join(missing)} missing", allow_module_level=True)

# A FRACTIONAL SEG stores probabilities in 1/255 steps: rounding is at most half a step.
FRACTION_TOLERANCE = 0.5 / 255 + 1e-6


def test_everything_needed_is_present():
    assert not missing, f"missing: {', '.join(missing)}"


def segment(series: Path, out: Path, *extra: str) -> dict[str, Path]:
    paths = {"seg": out / "seg.dcm", "prob_seg": out / "prob.dcm", "mask": out / "mask.nii.gz",
             "prob": out / "prob.nii.gz"}
    model = ROOT / "models" / "unet.onnx"
    for mask, prob in [(paths["seg"], paths["prob_seg"]), (paths["mask"], paths["prob"])]:
        subprocess.run([str(BIN), "segment", str(series), "-m", str(model), "-o", str(mask), "--prob", str(prob),
                        "-q", *extra], check=True)
    return paths


def validate(args: list[str]) -> int:
    return validate_seg.main([str(a) for a in args])


@pytest.mark.parametrize("name", ["explicit_le", "oblique", "jpeg_lossless"])
def test_our_binary_and_fractional_segs_pass_every_reader(tmp_path, name):
    series = FIXTURES / "series" / name
    p = segment(series, tmp_path)
    mask = np.asarray(nib.load(p["mask"]).dataobj)
    assert mask.sum() > 0, "the fixture holds a bleed the model finds"
    assert validate(["--seg", p["seg"], "--source", series, "--expected", p["mask"]]) == 0
    assert validate(["--seg", p["prob_seg"], "--source", series, "--expected", p["mask"],
                     "--fractional-expected", p["prob"], "--tolerance", FRACTION_TOLERANCE]) == 0


def test_an_empty_mask_is_a_valid_seg(tmp_path):
    series = FIXTURES / "series" / "explicit_le"
    p = segment(series, tmp_path, "--threshold", "1.0")
    assert np.asarray(nib.load(p["mask"]).dataobj).sum() == 0
    assert validate(["--seg", p["seg"], "--source", series, "--expected", p["mask"]]) == 0


def test_the_readers_catch_a_wrong_mask(tmp_path):
    """The same SEG against a mask with one voxel flipped must fail: the check can fail."""
    series = FIXTURES / "series" / "explicit_le"
    p = segment(series, tmp_path)
    img = nib.load(p["mask"])
    wrong = np.asarray(img.dataobj).copy()
    i, j, k = np.argwhere(wrong == 1)[0]
    wrong[i, j, k] = 0
    bad = tmp_path / "wrong.nii.gz"
    nib.save(nib.Nifti1Image(wrong, img.affine, img.header), bad)
    assert validate(["--seg", p["seg"], "--source", series, "--expected", bad]) != 0
