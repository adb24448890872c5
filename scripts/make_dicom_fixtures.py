#!/usr/bin/env python3
"""Writes the DICOM test fixtures in tests/fixtures/dicom/ (docs/DICOM.md).

    python scripts/make_dicom_fixtures.py      # from the repository root or anywhere

Deterministic: fixed seeds, UIDs derived from fixed strings, fixed dates, so a rerun with the
same package versions rewrites the same bytes. Source pixels: 8 slices through the bleed of
models/samples/sample.nii.gz, 2x2 block means, cropped to 128 rows x 112 columns (not square,
so a row/column swap shows). Needs pydicom, numpy, nibabel, Pillow (JPEG baseline, JPEG 2000)
and DCMTK's dcmcjpeg/dcmdjpeg (JPEG lossless), dcmdump and, for the checks, dicom3tools'
dciodvfy.
"""
from __future__ import annotations

import io
import json
import math
import re
import shutil
import subprocess
import sys
import tempfile
import uuid
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
from PIL import Image
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.encaps import encapsulate
from pydicom.sequence import Sequence
from pydicom.uid import (JPEG2000Lossless, JPEGBaseline8Bit, JPEGLosslessSV1,
                         DeflatedExplicitVRLittleEndian, ExplicitVRLittleEndian,
                         ImplicitVRLittleEndian, RLELossless)

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests" / "dicom"))
from ctseries import LPS_TO_RAS, read_ct_series  # noqa: E402

OUT = ROOT / "tests" / "fixtures" / "dicom"
SEED = 20240611
CT_STORAGE = "1.2.840.10008.5.1.4.1.1.2"
MR_STORAGE = "1.2.840.10008.5.1.4.1.1.4"
BASIC_TEXT_SR = "1.2.840.10008.5.1.4.1.1.88.11"
DATE, TIME = "20240101", "120000"
NSLICES = 8
AXIAL = ((1.0, 0.0, 0.0), (0.0, 1.0, 0.0))
# PixelSpacing = [between rows, between columns]; unequal so that a swap shows.
PIXEL_SPACING = (1.7, 1.6)
ORIGIN = (-93.25, -108.5, 17.5)  # ImagePositionPatient of the lowest slice
SLICE_SPACING = 5.0


UID_NAMESPACE = uuid.UUID("6f1c3a52-8e0b-4d7e-9a51-2b7c0e4d9f10")  # fixed, made up once


def uid(*parts) -> str:
    """A fixed 2.25 UID (a name-based UUID): the same parts give the same UID on every run.
    (pydicom's generate_uid(prefix=None) ignores entropy_srcs and is random.)"""
    return f"2.25.{uuid.uuid5(UID_NAMESPACE, '/'.join(map(str, parts))).int}"


STUDY = uid("study")
FRAME_OF_REFERENCE = uid("frame-of-reference")
IMPLEMENTATION_UID = uid("implementation")


def source():
    """(hu, mask): int16 HU and uint8 mask, shape (nx=112, ny=128, 8), index (column, row, slice)."""
    vol = np.asarray(nib.load(ROOT / "models/samples/sample.nii.gz").dataobj, np.float64)
    msk = np.asarray(nib.load(ROOT / "models/samples/sample_mask.nii.gz").dataobj) > 0
    # The 8 consecutive slices with the most bleed.
    per_slice = msk.sum(axis=(0, 1))
    windows = np.convolve(per_slice, np.ones(NSLICES), mode="valid")
    k0 = int(np.argmax(windows))
    vol, msk = vol[16:240, :, k0:k0 + NSLICES], msk[16:240, :, k0:k0 + NSLICES]
    nx, ny = vol.shape[0] // 2, vol.shape[1] // 2

    def block_mean(a):
        return a.reshape(nx, 2, ny, 2, NSLICES).mean(axis=(1, 3))

    # The sample's i runs to patient left and j to posterior (its RAS affine is diag(-s, -s, 5)),
    # so its array already is DICOM storage order for an axial IOP.
    hu = np.round(block_mean(vol)).astype(np.int16)
    mask = (block_mean(msk.astype(np.float64)) >= 0.5).astype(np.uint8)
    assert mask.sum(axis=(0, 1)).min() > 0, "every slice should show bleed"
    return hu, mask


def ds_str(v: float) -> str:
    """A DS value: at most 16 characters, trailing zeros dropped."""
    s = f"{v:.10f}".rstrip("0").rstrip(".")
    s = "0" if s in ("-0", "") else s
    assert len(s) <= 16, s
    return s


def file_meta(sop_class: str, sop_instance: str, ts: str) -> FileMetaDataset:
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = sop_class
    meta.MediaStorageSOPInstanceUID = sop_instance
    meta.TransferSyntaxUID = ts
    meta.ImplementationClassUID = IMPLEMENTATION_UID
    meta.ImplementationVersionName = "ICHSEG_FIXT_1"
    return meta


def base_dataset(sop_class, sop_instance, study=STUDY, ts=ExplicitVRLittleEndian) -> Dataset:
    """Patient, study, equipment and SOP common attributes shared by every object."""
    ds = Dataset()
    ds.file_meta = file_meta(sop_class, sop_instance, ts)
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.SOPClassUID = sop_class
    ds.SOPInstanceUID = sop_instance
    ds.StudyDate = ds.SeriesDate = ds.ContentDate = DATE
    ds.StudyTime = ds.SeriesTime = ds.ContentTime = TIME
    ds.AccessionNumber = ""
    ds.Manufacturer = "libichseg test fixtures"
    ds.ReferringPhysicianName = ""
    ds.PatientName = "ICHSEG^PHANTOM"
    ds.PatientID = "ICHSEG-PHANTOM-001"
    ds.PatientBirthDate = ""
    ds.PatientSex = "O"
    ds.StudyInstanceUID = study
    ds.StudyID = "1"
    return ds


def image_dataset(series: dict, k: int, frame: np.ndarray, ipp, iop) -> Dataset:
    """A CT (or MR) Image Storage object for slice k of a series description `series`.

    frame: stored values, shape (Rows, Columns), dtype int16 / uint16 / uint8."""
    modality = series.get("modality", "CT")
    sop_class = CT_STORAGE if modality == "CT" else MR_STORAGE
    ds = base_dataset(sop_class, uid(series["key"], "instance", k), series.get("study", STUDY))
    ds.Modality = modality
    ds.SeriesInstanceUID = series["uid"]
    ds.SeriesNumber = series["number"]
    ds.SeriesDescription = series["description"]
    ds.BodyPartExamined = "HEAD"  # not a paired part: no Laterality needed
    ds.PatientPosition = "HFS"
    ds.FrameOfReferenceUID = series.get("frame_of_reference", FRAME_OF_REFERENCE)
    ds.PositionReferenceIndicator = ""
    ds.InstanceNumber = series["instance_numbers"][k]
    ds.PatientOrientation = ""
    ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
    ds.AcquisitionNumber = 1
    if ipp is not None:
        ds.ImagePositionPatient = [ds_str(v) for v in ipp]
    ds.ImageOrientationPatient = [ds_str(v) for v in iop]
    ds.PixelSpacing = [ds_str(v) for v in series.get("pixel_spacing", PIXEL_SPACING)]
    ds.SliceThickness = ds_str(series.get("slice_thickness", SLICE_SPACING))
    if "tilt" in series:
        ds.GantryDetectorTilt = ds_str(series["tilt"])
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = series.get("photometric", "MONOCHROME2")
    ds.Rows, ds.Columns = frame.shape
    bits = frame.dtype.itemsize * 8
    ds.BitsAllocated = bits
    ds.BitsStored = series.get("bits_stored", bits)
    ds.HighBit = ds.BitsStored - 1
    ds.PixelRepresentation = 1 if frame.dtype.kind == "i" else 0
    if modality == "CT":
        ds.KVP = "120"
        ds.RescaleIntercept = ds_str(series.get("intercept", 0))
        ds.RescaleSlope = ds_str(series.get("slope", 1))
        ds.RescaleType = "HU"
        ds.WindowCenter, ds.WindowWidth = "40", "80"
    else:  # the MR Image module's type 1 and 2 attributes
        ds.ImageType = ["ORIGINAL", "PRIMARY", "OTHER"]
        ds.ScanningSequence, ds.SequenceVariant = "SE", "NONE"
        ds.ScanOptions, ds.MRAcquisitionType = "", "2D"
        ds.RepetitionTime, ds.EchoTime, ds.EchoTrainLength = "500", "15", "1"
        ds.MagneticFieldStrength = "1.5"
    ds.PixelData = frame.astype(frame.dtype.newbyteorder("<")).tobytes()
    return ds


def save(ds: Dataset, path: Path, ts: str = ExplicitVRLittleEndian):
    """Writes ds with transfer syntax ts; pydicom encodes native, deflate and RLE itself."""
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian if ts == RLELossless else ts
    if ts == RLELossless:
        # Lossless: the SOP Instance UID stays (pydicom would make a new one by default).
        ds.compress(RLELossless, generate_instance_uid=False)
    ds.save_as(path, enforce_file_format=True,
               implicit_vr=(ts == ImplicitVRLittleEndian), little_endian=True)


def dcmcjpeg_lossless(src: Path, dst: Path):
    """JPEG Lossless SV1 by DCMTK (pydicom cannot encode it); +un keeps our UIDs."""
    dst.parent.mkdir(parents=True, exist_ok=True)
    subprocess.run(["dcmcjpeg", "+e1", "+un", str(src), str(dst)], check=True)


def jpeg_baseline(ds: Dataset, frame: np.ndarray):
    """Encapsulates a Pillow JPEG baseline (quality 90) of an 8-bit frame in ds."""
    buf = io.BytesIO()
    Image.fromarray(frame, mode="L").save(buf, "JPEG", quality=90)
    data = buf.getvalue()
    ds.PixelData = encapsulate([data])
    ds["PixelData"].VR = "OB"
    ds.LossyImageCompression = "01"
    ds.LossyImageCompressionRatio = ds_str(round(frame.size / len(data), 2))
    ds.LossyImageCompressionMethod = "ISO_10918_1"
    ds.file_meta.TransferSyntaxUID = JPEGBaseline8Bit


def jpeg2000(ds: Dataset, frame: np.ndarray):
    """Encapsulates a Pillow lossless JPEG 2000 codestream of a uint16 frame in ds."""
    buf = io.BytesIO()
    Image.fromarray(frame).save(buf, "JPEG2000", irreversible=False, no_jp2=True)
    ds.PixelData = encapsulate([buf.getvalue()])
    ds["PixelData"].VR = "OB"
    ds.file_meta.TransferSyntaxUID = JPEG2000Lossless


def rotation(axis, degrees):
    a = math.radians(degrees)
    x, y, z = np.asarray(axis, float) / np.linalg.norm(axis)
    c, s, t = math.cos(a), math.sin(a), 1 - math.cos(a)
    return np.array([[t * x * x + c, t * x * y - s * z, t * x * z + s * y],
                     [t * x * y + s * z, t * y * y + c, t * y * z - s * x],
                     [t * x * z - s * y, t * y * z + s * x, t * z * z + c]])


def geometry(iop=AXIAL, spacing=SLICE_SPACING, n=NSLICES, origin=ORIGIN):
    """(IOP, positions): positions along the normal of iop, spacing mm apart."""
    row, col = np.array(iop[0]), np.array(iop[1])
    normal = np.cross(row, col)
    return list(row) + list(col), [np.array(origin) + k * spacing * normal for k in range(n)]


def names(rng, n):
    """Random file names, some with .dcm and some without (a reader must not rely on it)."""
    return [f"{rng.integers(16**8):08x}" + (".dcm" if rng.random() < 0.5 else "")
            for _ in range(n)]


def write_series(folder: Path, series: dict, frames, iop, positions, ts, rng, subdir_count=0):
    """Writes one file per slice under folder in random order and names; the last
    subdir_count slices (in file-name order) go to folder/sub/."""
    files = []
    fnames = names(rng, len(frames))
    for k in rng.permutation(len(frames)):
        files.append((int(k), fnames[len(files)]))
    paths = []
    for idx, (k, fname) in enumerate(files):
        target = folder / "sub" / fname if idx >= len(files) - subdir_count else folder / fname
        ds = image_dataset(series, k, frames[k], positions[k], iop)
        if ts == JPEGLosslessSV1:
            with tempfile.TemporaryDirectory() as tmp:
                save(ds, Path(tmp) / "in.dcm")
                dcmcjpeg_lossless(Path(tmp) / "in.dcm", target)
        elif ts == JPEGBaseline8Bit:
            jpeg_baseline(ds, frames[k])
            save(ds, target, JPEGBaseline8Bit)
        elif ts == JPEG2000Lossless:
            jpeg2000(ds, frames[k])
            save(ds, target, JPEG2000Lossless)
        else:
            save(ds, target, ts)
        paths.append(target)
    return paths


def new_series(key, number, description, n=NSLICES, rng=None, **kw):
    """A series description; InstanceNumbers deliberately not in position order."""
    numbers = list(range(1, n + 1))
    if rng is not None:
        numbers = [int(v) for v in rng.permutation(numbers)]
    else:
        numbers.reverse()
    return {"key": key, "uid": uid(key, "series"), "number": number,
            "description": description, "instance_numbers": numbers, **kw}


def write_sr(path: Path):
    """A Basic Text SR (no pixel data) in the CT's study: a reader must skip it."""
    ds = base_dataset(BASIC_TEXT_SR, uid("sr", "instance"))
    ds.Modality = "SR"
    ds.SeriesInstanceUID = uid("sr", "series")
    ds.SeriesNumber = 99
    ds.InstanceNumber = 1
    ds.ValueType = "CONTAINER"
    code = Dataset()
    code.CodeValue, code.CodingSchemeDesignator, code.CodeMeaning = "11528-7", "LN", "Radiology Report"
    ds.ConceptNameCodeSequence = Sequence([code])
    ds.ContinuityOfContent = "SEPARATE"
    ds.CompletionFlag, ds.VerificationFlag = "COMPLETE", "UNVERIFIED"
    ds.ReferencedPerformedProcedureStepSequence = Sequence()
    ds.PerformedProcedureCodeSequence = Sequence()
    item = Dataset()
    item.RelationshipType, item.ValueType = "CONTAINS", "TEXT"
    finding = Dataset()
    finding.CodeValue, finding.CodingSchemeDesignator, finding.CodeMeaning = "121071", "DCM", "Finding"
    item.ConceptNameCodeSequence = Sequence([finding])
    item.TextValue = "Test fixture: a DICOM object without pixel data."
    ds.ContentSequence = Sequence([item])
    save(ds, path)


def write_nifti(path: Path, data: np.ndarray, lps_affine: np.ndarray):
    """NIfTI in the reference convention: RAS affine = diag(-1,-1,1,1) @ LPS affine, sform and
    qform both set (code 1, scanner)."""
    img = nib.Nifti1Image(data, LPS_TO_RAS @ lps_affine)
    img.set_sform(LPS_TO_RAS @ lps_affine, code=1)
    img.set_qform(LPS_TO_RAS @ lps_affine, code=1)
    img.header.set_xyzt_units("mm", "sec")
    path.parent.mkdir(parents=True, exist_ok=True)
    # nibabel writes the gzip header with mtime 0: the bytes depend on the data only.
    nib.save(img, path)


def decoded_hu(folder: Path, compressed: bool) -> tuple:
    """Reads a written series back with pydicom (after dcmdjpeg for JPEG lossless, which
    pydicom cannot decode without extra plugins): (CtSeries, HU volume)."""
    if not compressed:
        s = read_ct_series(folder, pixels=True)
        return s, s.hu()
    with tempfile.TemporaryDirectory() as tmp:
        for p in folder.rglob("*"):
            if p.is_file() and p.name != "README.txt":
                dst = Path(tmp) / p.relative_to(folder)
                dst.parent.mkdir(parents=True, exist_ok=True)
                subprocess.run(["dcmdjpeg", str(p), str(dst)], check=True)
        s = read_ct_series(tmp, pixels=True)
        return s, s.hu()


def main():
    if OUT.exists():
        shutil.rmtree(OUT)
    OUT.mkdir(parents=True)
    # DICOM files here have no extension: keep git from touching their line ends.
    (OUT / ".gitattributes").write_text("* -text\n")
    rng = np.random.default_rng(SEED)
    hu, mask = source()
    nx, ny, nz = hu.shape
    frames_i16 = [hu[:, :, k].T.copy() for k in range(nz)]  # (Rows, Columns)
    manifest = {"about": "tests/fixtures/dicom, written by scripts/make_dicom_fixtures.py; "
                         "see docs/DICOM.md for the conventions",
                "conventions": {
                    "voxel": "(i, j, k) = (column, row, slice sorted ascending by dot(IPP, n)), "
                             "n = cross(row_cosine, col_cosine)",
                    "affine": "RAS = diag(-1,-1,1,1) @ LPS; LPS columns: row_cosine*PixelSpacing[1], "
                              "col_cosine*PixelSpacing[0], (IPP_last-IPP_first)/(N-1); origin IPP_first",
                    "hu": "stored * RescaleSlope + RescaleIntercept; MONOCHROME1 is a display "
                          "attribute and does not change HU"},
                "series": {}, "bad": {}}

    good = []  # (name, folder, series, ts, tolerance, note)
    axial_iop, axial_pos = geometry()

    # explicit_le: shuffled names and InstanceNumbers, a README, sub/, and an SR to skip.
    s = new_series("explicit_le", 1, "explicit VR LE int16", rng=rng)
    folder = OUT / "series/explicit_le"
    write_series(folder, s, frames_i16, axial_iop, axial_pos, ExplicitVRLittleEndian, rng, subdir_count=3)
    (folder / "README.txt").write_text("Not DICOM: a reader must skip this file.\n")
    write_sr(folder / "sub" / "report_sr.dcm")
    good.append(("explicit_le", s, ExplicitVRLittleEndian, 0,
                 "3 slices in sub/; README.txt and a Basic Text SR (no pixels) to skip"))

    for name, number, ts, desc in [("implicit_le", 2, ImplicitVRLittleEndian, "implicit VR LE"),
                                   ("deflate", 3, DeflatedExplicitVRLittleEndian, "deflated explicit VR LE"),
                                   ("rle", 4, RLELossless, "RLE lossless"),
                                   ("jpeg_lossless", 5, JPEGLosslessSV1, "JPEG lossless SV1")]:
        s = new_series(name, number, desc, rng=rng)
        write_series(OUT / "series" / name, s, frames_i16, axial_iop, axial_pos, ts, rng)
        good.append((name, s, ts, 0, "same HU as explicit_le"))

    s = new_series("unsigned", 6, "uint16 12 bits stored, intercept -1024", rng=rng,
                   intercept=-1024, bits_stored=12)
    frames_u16 = [(f.astype(np.int32) + 1024).astype(np.uint16) for f in frames_i16]
    assert min(f.min() for f in frames_u16) >= 0 and max(f.max() for f in frames_u16) < 4096
    write_series(OUT / "series/unsigned", s, frames_u16, axial_iop, axial_pos, ExplicitVRLittleEndian, rng)
    good.append(("unsigned", s, ExplicitVRLittleEndian, 0, "stored = HU + 1024; same HU as explicit_le"))

    s = new_series("jpeg_baseline", 7, "8-bit JPEG baseline, HU clipped to [-100, 155]", rng=rng,
                   intercept=-100)
    frames_u8 = [(np.clip(f.astype(np.int32), -100, 155) + 100).astype(np.uint8) for f in frames_i16]
    write_series(OUT / "series/jpeg_baseline", s, frames_u8, axial_iop, axial_pos, JPEGBaseline8Bit, rng)
    good.append(("jpeg_baseline", s, JPEGBaseline8Bit, 1,
                 "lossy: reference = pydicom+Pillow decode; other decoders may differ by 1 grey "
                 "level (= 1 HU); BitsAllocated 8 is outside the CT IOD (dciodvfy errors)"))

    # oblique: 15 degrees about an axis off the patient axes; positions along the normal.
    rot = rotation((1.0, 0.3, 0.2), 15.0)
    obl_row, obl_col = rot @ np.array(AXIAL[0]), rot @ np.array(AXIAL[1])
    obl_iop, obl_pos = geometry((tuple(obl_row), tuple(obl_col)), spacing=2.5)
    s = new_series("oblique", 8, "oblique, 2.5 mm", rng=rng, slice_thickness=2.5,
                   frame_of_reference=uid("oblique", "frame-of-reference"))
    write_series(OUT / "series/oblique", s, frames_i16, obl_iop, obl_pos, ExplicitVRLittleEndian, rng)
    good.append(("oblique", s, ExplicitVRLittleEndian, 0, "rotated IOP, spacing 2.5 mm along the normal"))

    s = new_series("monochrome1", 9, "MONOCHROME1, same stored values", rng=rng, photometric="MONOCHROME1")
    write_series(OUT / "series/monochrome1", s, frames_i16, axial_iop, axial_pos, ExplicitVRLittleEndian, rng)
    good.append(("monochrome1", s, ExplicitVRLittleEndian, 0,
                 "MONOCHROME1 with the same stored values and rescale as explicit_le: HU = "
                 "stored*slope+intercept, NOT inverted (the photometric interpretation applies "
                 "after the VOI LUT, to display only; PS3.3 C.7.6.3.1.2)"))

    # two_series: the reader picks the CT with the most slices.
    folder = OUT / "two_series"
    s = new_series("two_series_ct8", 10, "CT 8 slices (the one to pick)", rng=rng)
    write_series(folder, s, frames_i16, axial_iop, axial_pos, ExplicitVRLittleEndian, rng)
    s4 = new_series("two_series_ct4", 11, "CT 4 slices", n=4, rng=rng)
    write_series(folder, s4, frames_i16[2:6], axial_iop, axial_pos[2:6], ExplicitVRLittleEndian, rng)
    mr = new_series("two_series_mr", 12, "MR 3 slices", n=3, rng=rng, modality="MR")
    # MR at half resolution (64 x 56, twice the spacing): only its Modality matters here.
    mr["pixel_spacing"] = tuple(2 * v for v in PIXEL_SPACING)
    write_series(folder, mr, [f[::2, ::2].astype(np.int32).clip(0).astype(np.uint16) for f in frames_i16[:3]],
                 axial_iop, axial_pos[:3], ExplicitVRLittleEndian, rng)
    good.append(("two_series", s, ExplicitVRLittleEndian, 0,
                 "also a 4-slice CT series and a 3-slice MR series; expected: the 8-slice CT"))

    for name, s, ts, tol, note in good:
        folder = OUT / "two_series" if name == "two_series" else OUT / "series" / name
        series, read_hu = decoded_hu(folder, ts == JPEGLosslessSV1)
        assert str(series.datasets[0].SeriesInstanceUID) == s["uid"], name
        if tol == 0:
            assert np.array_equal(read_hu, hu), f"{name}: read-back HU differ from the source"
            ref = hu
        else:
            # Lossy: the reference is what pydicom (Pillow) decodes.
            ref = read_hu.astype(np.int16)
            clipped = np.clip(hu, -100, 155)
            print(f"  {name}: max |decoded - source| = {np.abs(ref - clipped).max()} HU (JPEG loss)")
        # Series with the same HU and grid share one reference (keeps the fixtures small).
        ref_name = name if name in ("oblique", "jpeg_baseline") else "axial"
        grid_name = "oblique" if name == "oblique" else "axial"
        write_nifti(OUT / "reference" / f"{ref_name}.nii.gz", ref.astype(np.int16), series.lps_affine)
        write_nifti(OUT / "reference" / f"{grid_name}_mask.nii.gz", mask, series.lps_affine)
        ras = series.ras_affine
        manifest["series"][name] = {
            "path": str(folder.relative_to(OUT)),
            "expected": "ok",
            "dims": list(series.shape),
            "spacing": [float(np.linalg.norm(ras[:3, c])) for c in range(3)],
            "affine": ras.round(10).tolist(),
            "series_instance_uid": s["uid"],
            "study_instance_uid": STUDY,
            "transfer_syntax": ts,
            "reference": f"reference/{ref_name}.nii.gz",
            "mask": f"reference/{grid_name}_mask.nii.gz",
            "tolerance_hu": tol,
            "note": note,
        }
    write_bad(manifest, rng)
    text = json.dumps(manifest, indent=2)
    # Lists of numbers on one line each (an affine row per line): easier to read and diff.
    text = re.sub(r"\[\s*([-0-9.e,\s]+?)\s*\]", lambda m: "[" + ", ".join(m.group(1).split()).replace(",,", ",") + "]", text)
    (OUT / "manifest.json").write_text(text + "\n")
    print(f"wrote {OUT.relative_to(ROOT)}")
    check_with_other_readers(manifest)


def check_with_other_readers(manifest):
    """The good series through readers other than ours: nibabel's DICOM wrapper (in-plane
    affine), DCMTK's dcmdump (parses) and dicom3tools' dciodvfy (IOD errors; the 8-bit
    jpeg_baseline's Bits Allocated/Stored/High Bit are the expected ones)."""
    import warnings
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # nibabel calls its DICOM readers experimental
        from nibabel.nicom import dicomwrappers
    failures = []
    for name, e in manifest["series"].items():
        series = read_ct_series(OUT / e["path"])
        w = dicomwrappers.wrapper_from_file(series.datasets[0].filename)
        # nibabel indexes (row, column): its first two affine columns are ours swapped.
        if not np.allclose(w.affine[:3, [1, 0, 3]], series.lps_affine[:3, [0, 1, 3]], atol=1e-6):
            failures.append(f"{name}: nibabel's affine differs")
        for ds in series.datasets:
            path = Path(ds.filename)
            if shutil.which("dcmdump"):
                r = subprocess.run(["dcmdump", "-q", str(path)], capture_output=True, text=True)
                if r.returncode != 0:
                    failures.append(f"{path}: dcmdump: {r.stderr.strip()}")
            if shutil.which("dciodvfy") and shutil.which("dcmconv"):
                with tempfile.TemporaryDirectory() as tmp:
                    if e["transfer_syntax"] == DeflatedExplicitVRLittleEndian:
                        # dciodvfy cannot read deflate: check the inflated copy.
                        subprocess.run(["dcmconv", "+te", str(path), f"{tmp}/x.dcm"], check=True)
                        path = Path(tmp) / "x.dcm"
                    r = subprocess.run(["dciodvfy", str(path)], capture_output=True, text=True)
                errors = [ln for ln in (r.stdout + r.stderr).splitlines()
                          if ln.startswith("Error") and not (
                              name == "jpeg_baseline" and ("Bits" in ln or "High Bit" in ln))]
                failures += [f"{ds.filename}: dciodvfy: {ln}" for ln in errors]
    if failures:
        sys.exit("check failed:\n  " + "\n  ".join(failures))
    print("checked: nibabel affines" + (", dcmdump" if shutil.which("dcmdump") else "")
          + (", dciodvfy" if shutil.which("dciodvfy") else "") + " agree")


def write_bad(manifest, rng):
    """Small (16x16) series a reader must reject, one folder each."""
    vol = np.asarray(nib.load(ROOT / "models/samples/sample.nii.gz").dataobj, np.float64)
    small = [np.round(vol[:, :, 12 + k].reshape(16, 16, 16, 16).mean(axis=(1, 3))).astype(np.int16).T
             for k in range(4)]
    spacing = (16 * 0.8, 16 * 0.8)
    bad_study = uid("bad", "study")

    def series(key, n=4, **kw):
        return new_series(f"bad_{key}", 100, f"bad: {key}", n=n, study=bad_study,
                          frame_of_reference=uid("bad", key, "frame-of-reference"),
                          pixel_spacing=spacing, **kw)

    def write(key, frames, iop, positions, ts=ExplicitVRLittleEndian, **kw):
        s = series(key, n=len(frames), **kw)
        return write_series(OUT / "bad" / key, s, frames, iop, positions, ts, rng)

    def entry(key, error, keyword, note):
        manifest["bad"][key] = {"path": f"bad/{key}", "expected": "error", "error": error,
                                "keyword": keyword, "note": note}

    iop, pos = geometry(spacing=5.0, n=4)
    tilt_iop = list(AXIAL[0]) + list(AXIAL[1])
    tan = math.tan(math.radians(15))
    write("tilt", small, tilt_iop, [p + np.array([0, k * 5 * tan, 0]) for k, p in enumerate(pos)], tilt=15)
    entry("tilt", "gantry_tilt", "tilt",
          "axial IOP but IPP move 1.34 mm in y per 5 mm slice; GantryDetectorTilt 15")

    write("gap", small[:3], iop, [pos[0], pos[1], pos[3]])
    entry("gap", "slice_gap", "gap", "slices at 0, 5, 15 mm along the normal: one missing")

    write("duplicate", small, iop, [pos[0], pos[1], pos[1], pos[2]])
    entry("duplicate", "duplicate_position", "duplicate", "two slices at the same position")

    frames = list(small)
    frames[2] = small[2][:, :12].copy()
    write("mixed_size", frames, iop, pos)
    entry("mixed_size", "inconsistent_size", "size", "one slice is 16 rows x 12 columns")

    s = series("mixed_orientation")
    rot = rotation((0, 0, 1), 10)
    for idx, k in enumerate(rng.permutation(4)):
        o = iop if k != 2 else list(rot @ np.array(AXIAL[0])) + list(rot @ np.array(AXIAL[1]))
        save(image_dataset(s, k, small[k], pos[k], o), OUT / "bad/mixed_orientation" / f"slice{idx}.dcm")
    entry("mixed_orientation", "inconsistent_orientation", "orientation",
          "one slice rotated 10 degrees about z")

    write("missing_ipp", small, iop, [pos[0], None, pos[2], pos[3]])
    entry("missing_ipp", "missing_position", "ImagePositionPatient",
          "one slice has no ImagePositionPatient")

    paths = write("truncated", small, iop, pos)
    p = paths[0]
    data = p.read_bytes()
    p.write_bytes(data[:-200])  # 200 of the 512 pixel bytes gone
    entry("truncated", "truncated_pixel_data", "truncated",
          f"{p.name}: the last 200 bytes of its 512-byte PixelData are cut off")

    write("one_slice", small[:1], iop, pos[:1])
    entry("one_slice", "too_few_slices", "slice", "a single slice: no slice spacing, not a volume")

    write("mr", [f.astype(np.int32).clip(0).astype(np.uint16) for f in small[:3]], iop, pos[:3],
          modality="MR")
    entry("mr", "no_ct_series", "CT", "an MR series only (Modality MR, MR Image Storage)")

    write("unsupported_ts", [(f.astype(np.int32) + 1024).astype(np.uint16) for f in small], iop, pos,
          JPEG2000Lossless, intercept=-1024)
    entry("unsupported_ts", "unsupported_transfer_syntax", "transfer syntax",
          "JPEG 2000 lossless (1.2.840.10008.1.2.4.90), a real Pillow/OpenJPEG codestream")

    (OUT / "bad/empty").mkdir(parents=True)
    (OUT / "bad/empty/README.txt").write_text("Not DICOM: this folder holds no DICOM file.\n")
    entry("empty", "no_dicom", "DICOM", "only a non-DICOM file")


if __name__ == "__main__":
    main()
