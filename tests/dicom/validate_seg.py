#!/usr/bin/env python3
"""Validates a DICOM-SEG of a hemorrhage mask with three independent readers (docs/DICOM.md).

    python tests/dicom/validate_seg.py --seg SEG.dcm --source SERIES_DIR --expected MASK.nii.gz \
        [--fractional-expected PROB.nii.gz --tolerance 0.01]

MASK.nii.gz (and PROB.nii.gz) are on the source series' grid in the convention of
tests/fixtures/dicom: voxel (i, j, k) = (column, row, slice sorted along the normal), RAS affine.
For a FRACTIONAL SEG, MASK gives the grid only and the values are checked against PROB.

  1. dciodvfy (dicom3tools): no line starting with "Error" (warnings are printed, not failed).
  2. highdicom: one segment "Hemorrhage", SNOMED category 49755003, type 50960005, AUTOMATIC,
     same study / frame of reference / series as the source; the mask rebuilt on the source
     grid twice, from the per-frame source-instance references (highdicom) and from the plane
     positions, each equal to MASK voxel for voxel (or within tolerance of PROB).
  3. dcmqi (segimage2itkimage): its NIfTI output mapped into MASK's grid through the two affines
     (world mm; it must land on whole voxels) equals MASK.

Exit status 0 when every check passes, 1 otherwise (a missing tool is a failure), 2 on bad usage.
"""
from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom

sys.path.insert(0, str(Path(__file__).resolve().parent))
from ctseries import read_ct_series  # noqa: E402

SEG_STORAGE = "1.2.840.10008.5.1.4.1.1.66.4"
CATEGORY = ("49755003", "SCT")  # Morphologically abnormal structure
TYPE = ("50960005", "SCT")  # Hemorrhage
LABEL = "Hemorrhage"
POSITION_TOL_MM = 0.01


class Checks:
    """Collects failures per reader and prints what each reader said."""

    def __init__(self):
        self.failures = []

    def section(self, name):
        self.current = name
        print(f"== {name}")

    def say(self, line):
        print(f"   {line}")

    def fail(self, message):
        self.failures.append(f"{self.current}: {message}")
        print(f"   FAIL: {message}")


def find_segimage2itkimage():
    """dcmqi's converter: on PATH, next to this interpreter (a venv not activated), or in the
    dcmqi wheel's own bin directory."""
    found = shutil.which("segimage2itkimage")
    if found:
        return found
    here = Path(sys.executable).parent / "segimage2itkimage"
    if here.exists():
        return str(here)
    try:
        import dcmqi
        wheel_bin = Path(dcmqi.__file__).parent / "bin" / "segimage2itkimage"
        return str(wheel_bin) if wheel_bin.exists() else None
    except ImportError:
        return None


def compare(checks, what, got, expected_mask, prob, tolerance):
    """got: (nx, ny, nz) fractions in [0, 1] (binary: 0/1) on the expected grid."""
    if prob is None:
        diff = (got > 0) != expected_mask
        if diff.any():
            where = np.argwhere(diff)[:5].tolist()
            checks.fail(f"{what}: {int(diff.sum())} voxels differ from the expected mask "
                        f"(expected {int(expected_mask.sum())} set, got {int((got > 0).sum())}); "
                        f"first (i, j, k): {where}")
        else:
            checks.say(f"{what}: equal to the expected mask ({int(expected_mask.sum())} voxels set)")
    else:
        err = np.abs(got - prob)
        if err.max() > tolerance:
            where = np.argwhere(err > tolerance)[:5].tolist()
            checks.fail(f"{what}: {int((err > tolerance).sum())} voxels off by more than "
                        f"{tolerance} (max {err.max():.4f}); first (i, j, k): {where}")
        else:
            checks.say(f"{what}: within {tolerance} of the expected probabilities (max {err.max():.4f})")


def check_dciodvfy(checks, seg_path):
    checks.section("dciodvfy (dicom3tools)")
    exe = shutil.which("dciodvfy")
    if not exe:
        checks.fail("dciodvfy not found (Debian package dicom3tools; scripts/test-deps.sh installs it)")
        return
    r = subprocess.run([exe, str(seg_path)], capture_output=True, text=True)
    lines = [ln for ln in (r.stdout + r.stderr).splitlines() if ln.strip()]
    for ln in lines:
        checks.say(ln)
    errors = [ln for ln in lines if ln.startswith("Error")]
    if errors:
        checks.fail(f"{len(errors)} error line(s), first: {errors[0]}")
    elif not any(ln.strip() == "Segmentation" for ln in lines):
        checks.fail("dciodvfy did not recognise the object as a Segmentation")


def plane_position_volume(checks, ds, source, shape):
    """The SEG's frames placed on the source grid by their ImagePositionPatient (pydicom
    decodes the frames): fractions in [0, 1]."""
    src0 = source.datasets[0]
    out = np.zeros(shape, np.float64)
    shared = ds.SharedFunctionalGroupsSequence[0]
    frames = ds.pixel_array.reshape(int(ds.NumberOfFrames), int(ds.Rows), int(ds.Columns))
    maximum = float(ds.get("MaximumFractionalValue", 1)) if ds.SegmentationType == "FRACTIONAL" else 1.0
    if (int(ds.Rows), int(ds.Columns)) != (int(src0.Rows), int(src0.Columns)):
        checks.fail(f"frame size {ds.Rows}x{ds.Columns} is not the source's {src0.Rows}x{src0.Columns}")
        return None
    normal = source.lps_affine[:3, 2] / np.linalg.norm(source.lps_affine[:3, 2])
    positions = [np.array(s.ImagePositionPatient, float) for s in source.datasets]
    seen = set()
    for f, item in enumerate(ds.PerFrameFunctionalGroupsSequence):
        def group(name):
            return item.get(name) or shared.get(name)
        iop = np.array(group("PlaneOrientationSequence")[0].ImageOrientationPatient, float)
        spacing = np.array(group("PixelMeasuresSequence")[0].PixelSpacing, float)
        ipp = np.array(group("PlanePositionSequence")[0].ImagePositionPatient, float)
        segment = int(group("SegmentIdentificationSequence")[0].ReferencedSegmentNumber)
        if not np.allclose(iop, np.array(src0.ImageOrientationPatient, float), atol=1e-4):
            checks.fail(f"frame {f + 1}: orientation {iop.tolist()} is not the source's")
            return None
        if not np.allclose(spacing, np.array(src0.PixelSpacing, float), atol=1e-4):
            checks.fail(f"frame {f + 1}: pixel spacing {spacing.tolist()} is not the source's")
            return None
        dist = [np.linalg.norm(ipp - p) for p in positions]
        k = int(np.argmin(dist))
        if dist[k] > POSITION_TOL_MM:
            along = float(np.dot(ipp - positions[0], normal))
            checks.fail(f"frame {f + 1}: position {ipp.tolist()} is no source slice's "
                        f"({along:.3f} mm along the normal from the first)")
            return None
        if segment != 1:
            checks.fail(f"frame {f + 1}: segment number {segment}, expected 1")
            return None
        if k in seen:
            checks.fail(f"frame {f + 1}: a second frame for source slice {k}")
            return None
        seen.add(k)
        out[:, :, k] = frames[f].T / maximum
    checks.say(f"{len(seen)} frame(s) placed on source slices {sorted(seen)} by position")
    return out


def check_highdicom(checks, seg_path, source, expected_mask, prob, tolerance):
    checks.section("highdicom")
    try:
        import highdicom as hd
        seg = hd.seg.segread(str(seg_path))
    except Exception as e:  # any reader error is the finding
        checks.fail(f"highdicom cannot read the SEG: {type(e).__name__}: {e}")
        return
    src0 = source.datasets[0]
    checks.say(f"SOP class {seg.SOPClassUID}, {seg.segmentation_type.value}, "
               f"{seg.number_of_frames} frame(s), {seg.number_of_segments} segment(s)")
    if seg.SOPClassUID != SEG_STORAGE:
        checks.fail(f"SOP Class UID {seg.SOPClassUID}, expected Segmentation Storage {SEG_STORAGE}")
    fractional = seg.segmentation_type.value == "FRACTIONAL"
    if fractional and prob is None:
        checks.fail("a FRACTIONAL SEG but no --fractional-expected to compare it with")
        return
    if not fractional and prob is not None:
        checks.fail(f"--fractional-expected given but the SEG is {seg.segmentation_type.value}")
        return
    for attr in ("StudyInstanceUID", "FrameOfReferenceUID"):
        if seg.get(attr) != src0.get(attr):
            checks.fail(f"{attr} {seg.get(attr)} is not the source's {src0.get(attr)}")
    referenced = [str(s.SeriesInstanceUID) for s in seg.get("ReferencedSeriesSequence", [])]
    if str(src0.SeriesInstanceUID) not in referenced:
        checks.fail(f"ReferencedSeriesSequence {referenced} lacks the source series {src0.SeriesInstanceUID}")
    if seg.number_of_segments != 1:
        checks.fail(f"{seg.number_of_segments} segments, expected 1")
        return
    d = seg.get_segment_description(1)
    category = d.segmented_property_category
    prop = d.segmented_property_type
    checks.say(f"segment 1: label {d.segment_label!r}, category {category.value} ({category.scheme_designator}) "
               f"{category.meaning!r}, type {prop.value} ({prop.scheme_designator}) {prop.meaning!r}, "
               f"algorithm {d.algorithm_type.value}")
    if d.segment_label != LABEL:
        checks.fail(f"segment label {d.segment_label!r}, expected {LABEL!r}")
    if (category.value, category.scheme_designator) != CATEGORY:
        checks.fail(f"category {category.value} ({category.scheme_designator}), expected {CATEGORY}")
    if (prop.value, prop.scheme_designator) != TYPE:
        checks.fail(f"type {prop.value} ({prop.scheme_designator}), expected {TYPE}")
    if d.algorithm_type.value != "AUTOMATIC":
        checks.fail(f"algorithm type {d.algorithm_type.value}, expected AUTOMATIC")

    # 1) highdicom maps frames to source instances by their per-frame references; slices that
    #    have no frame (empty frames omitted) must be empty.
    try:
        px = seg.get_pixels_by_source_instance(
            source_sop_instance_uids=source.sop_instance_uids, segment_numbers=[1],
            assert_missing_frames_are_empty=True, rescale_fractional=True, dtype=np.float64)
        by_ref = np.transpose(px[..., 0], (2, 1, 0))  # (slice, row, col) -> (i, j, k)
        compare(checks, "by source-instance reference", by_ref, expected_mask, prob, tolerance)
    except Exception as e:
        checks.fail(f"mapping frames to source instances failed: {type(e).__name__}: {e}")
    # 2) The same from the frames' plane positions alone.
    try:
        by_pos = plane_position_volume(checks, seg, source, expected_mask.shape)
    except Exception as e:  # a missing functional group, say
        checks.fail(f"placing frames by plane position failed: {type(e).__name__}: {e}")
        by_pos = None
    if by_pos is not None:
        compare(checks, "by plane position", by_pos, expected_mask, prob, tolerance)


def check_dcmqi(checks, seg_path, expected_img, expected_mask, prob, tolerance):
    checks.section("dcmqi (segimage2itkimage)")
    exe = find_segimage2itkimage()
    if not exe:
        checks.fail("segimage2itkimage not found (PyPI package dcmqi; scripts/test-deps.sh installs it)")
        return
    with tempfile.TemporaryDirectory() as tmp:
        r = subprocess.run([exe, "--inputDICOM", str(seg_path), "--outputDirectory", tmp,
                            "--outputType", "nifti"], capture_output=True, text=True)
        for ln in (r.stdout + r.stderr).splitlines()[-6:]:
            checks.say(ln)
        if r.returncode != 0:
            checks.fail(f"segimage2itkimage exited with {r.returncode}")
            return
        meta_path = Path(tmp) / "meta.json"
        if meta_path.exists():
            attrs = [a for group in json.loads(meta_path.read_text()).get("segmentAttributes", [])
                     for a in group]
            checks.say("meta.json segments: " + "; ".join(
                f"{a.get('labelID')}: {a.get('SegmentLabel')!r} "
                f"{a.get('SegmentedPropertyTypeCodeSequence', {}).get('CodeValue')}" for a in attrs))
            if [a.get("SegmentLabel") for a in attrs] != [LABEL]:
                checks.fail(f"dcmqi sees segments {[a.get('SegmentLabel') for a in attrs]}, expected [{LABEL!r}]")
        outputs = sorted(Path(tmp).glob("*.nii*"))
        if len(outputs) != 1:
            checks.fail(f"expected one NIfTI from dcmqi, got {[p.name for p in outputs]}")
            return
        img = nib.load(outputs[0])
        data = np.asarray(img.dataobj).astype(np.float64)
        affine = img.affine
    checks.say(f"{outputs[0].name}: shape {data.shape}, {int((data > 0).sum())} voxels set")
    # dcmqi's grid may cover only the frames' extent: map its voxel indices into the expected
    # grid through world mm. That map must be a signed axis permutation plus a whole-voxel shift.
    m = np.linalg.inv(expected_img.affine) @ affine
    if not (np.allclose(m[:3, :3], np.round(m[:3, :3]), atol=1e-3)
            and np.allclose(m[:3, 3], np.round(m[:3, 3]), atol=1e-2)
            and sorted(np.abs(np.round(m[:3, :3])).sum(axis=0).tolist()) == [1, 1, 1]):
        checks.fail(f"dcmqi's voxels do not land on the expected grid's voxels; index map:\n{m.round(4)}")
        return
    ijk = np.indices(data.shape[:3]).reshape(3, -1)
    target = np.round(m[:3, :3]) @ ijk + np.round(m[:3, 3])[:, None]
    target = target.astype(int)
    inside = np.all((target >= 0) & (target < np.array(expected_mask.shape)[:, None]), axis=0)
    if not inside.all():
        checks.fail(f"{int((~inside).sum())} of dcmqi's voxels lie outside the source grid")
        return
    got = np.zeros(expected_mask.shape, np.float64)
    values = data.reshape(-1) if data.ndim == 3 else data[..., 0].reshape(-1)
    # nibabel reshapes in C order like np.indices: index n is voxel ijk[:, n].
    got[tuple(target)] = values
    if prob is not None:
        maximum = float(pydicom.dcmread(seg_path, stop_before_pixels=True).get("MaximumFractionalValue", 255))
        got /= maximum  # dcmqi writes the stored fractional values
    compare(checks, "in world coordinates", got, expected_mask, prob, tolerance)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--seg", required=True, type=Path)
    ap.add_argument("--source", required=True, type=Path, help="the source CT series folder")
    ap.add_argument("--expected", required=True, type=Path, help="expected mask (NIfTI, source grid)")
    ap.add_argument("--fractional-expected", type=Path, help="expected probabilities for a FRACTIONAL SEG")
    ap.add_argument("--tolerance", type=float, default=0.01)
    args = ap.parse_args(argv)
    for p in (args.seg, args.source, args.expected, args.fractional_expected):
        if p is not None and not p.exists():
            ap.error(f"{p} does not exist")

    checks = Checks()
    checks.section("inputs")
    source = read_ct_series(args.source)
    expected_img = nib.load(args.expected)
    expected_mask = np.asarray(expected_img.dataobj) > 0
    checks.say(f"source {args.source}: {len(source.datasets)} slices, grid {source.shape}; "
               f"expected mask {expected_mask.shape}, {int(expected_mask.sum())} voxels set")
    prob = None
    if args.fractional_expected:
        prob = np.asarray(nib.load(args.fractional_expected).dataobj, np.float64)
        if prob.shape != expected_mask.shape:
            checks.fail(f"probabilities {prob.shape} and mask {expected_mask.shape} differ in shape")
    # The expected NIfTI must be on the source grid, or every comparison below is meaningless.
    if expected_mask.shape != source.shape or not np.allclose(expected_img.affine, source.ras_affine, atol=1e-3):
        checks.fail(f"the expected mask is not on the source grid: shape {expected_mask.shape} vs "
                    f"{source.shape}, affine\n{expected_img.affine.round(4)}\nvs\n{source.ras_affine.round(4)}")
    else:
        check_dciodvfy(checks, args.seg)
        check_highdicom(checks, args.seg, source, expected_mask, prob, args.tolerance)
        check_dcmqi(checks, args.seg, expected_img, expected_mask, prob, args.tolerance)

    print()
    if checks.failures:
        print(f"SEG INVALID: {len(checks.failures)} failure(s)")
        for f in checks.failures:
            print(f"  - {f}")
        return 1
    print("SEG OK: dciodvfy, highdicom and dcmqi agree with the expected mask")
    return 0


if __name__ == "__main__":
    sys.exit(main())
