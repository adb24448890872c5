"""A small pydicom reader for a CT series folder, the Python side's reference for geometry.

Used by scripts/make_dicom_fixtures.py (to check what it wrote reads back as intended) and by
tests/dicom/validate_seg.py (to place SEG frames on the source grid). Conventions are those of
docs/DICOM.md: voxel (i, j, k) = (column, row, slice sorted ascending along
n = cross(row_cosine, col_cosine)); the NIfTI affine is diag(-1, -1, 1, 1) @ LPS affine.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pydicom
from pydicom.errors import InvalidDicomError

LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])


@dataclass
class CtSeries:
    datasets: list  # pydicom datasets, sorted ascending along the normal
    lps_affine: np.ndarray  # 4x4, voxel (i, j, k) -> LPS mm
    shape: tuple  # (nx, ny, nz) = (Columns, Rows, slices)

    @property
    def ras_affine(self) -> np.ndarray:
        return LPS_TO_RAS @ self.lps_affine

    @property
    def sop_instance_uids(self) -> list:
        return [str(ds.SOPInstanceUID) for ds in self.datasets]

    def hu(self) -> np.ndarray:
        """HU volume (nx, ny, nz): the Modality LUT (rescale) on stored values. MONOCHROME1
        only changes display (PS3.3 C.7.6.3.1.2), so it is not inverted here."""
        out = np.empty(self.shape, np.float64)
        for k, ds in enumerate(self.datasets):
            stored = ds.pixel_array.astype(np.float64)
            out[:, :, k] = (stored * float(ds.get("RescaleSlope", 1))
                            + float(ds.get("RescaleIntercept", 0))).T
        return out


def dicom_files(folder: Path, stop_before_pixels: bool):
    """Every DICOM file under folder (recursively), skipping what is not DICOM."""
    for p in sorted(Path(folder).rglob("*")):
        if not p.is_file():
            continue
        try:
            yield p, pydicom.dcmread(p, stop_before_pixels=stop_before_pixels)
        except (InvalidDicomError, EOFError):
            continue


def read_ct_series(folder, pixels: bool = False) -> CtSeries:
    """The CT image series with the most slices under folder; headers only unless pixels."""
    groups: dict = {}
    for _, ds in dicom_files(Path(folder), stop_before_pixels=not pixels):
        # Objects without an image (SR, KOS) have no Rows; other modalities are not ours.
        if ds.get("Modality") != "CT" or "Rows" not in ds:
            continue
        groups.setdefault(str(ds.SeriesInstanceUID), []).append(ds)
    if not groups:
        raise ValueError(f"no CT image series under {folder}")
    slices = max(groups.values(), key=len)
    iop = np.array(slices[0].ImageOrientationPatient, float)
    row, col = iop[:3], iop[3:]
    normal = np.cross(row, col)
    slices.sort(key=lambda ds: float(np.dot(np.array(ds.ImagePositionPatient, float), normal)))
    first = np.array(slices[0].ImagePositionPatient, float)
    last = np.array(slices[-1].ImagePositionPatient, float)
    row_spacing, col_spacing = (float(v) for v in slices[0].PixelSpacing)
    if len(slices) > 1:
        step = (last - first) / (len(slices) - 1)
    else:
        step = normal * float(slices[0].get("SliceThickness", 1) or 1)
    aff = np.eye(4)
    # Column index i moves along the row cosine by the column spacing (PixelSpacing[1]).
    aff[:3, 0] = row * col_spacing
    aff[:3, 1] = col * row_spacing
    aff[:3, 2] = step
    aff[:3, 3] = first
    shape = (int(slices[0].Columns), int(slices[0].Rows), len(slices))
    return CtSeries(slices, aff, shape)
