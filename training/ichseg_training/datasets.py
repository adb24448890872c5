"""Minimal loader for BCIHM-layout data (real PhysioNet ct-ich or the synthetic phantoms).

Layout: ``ROOT/ct_scans/NNN.nii[.gz]``, ``ROOT/masks/NNN.nii[.gz]`` and
``ROOT/hemorrhage_diagnosis_raw_ct.csv`` (one row per slice, SliceNumber 1-based).
Only numpy and nibabel are needed.  Intensities are returned in HU: nibabel applies
``scl_slope``/``scl_inter`` (METHOD.md section 2).
"""
from __future__ import annotations

import csv
import dataclasses
import pathlib

import numpy as np

SUBTYPES = ("Intraventricular", "Intraparenchymal", "Subarachnoid", "Epidural", "Subdural")


def window(hu, level=50.0, width=130.0):
    """Clips HU to [level - width/2, level + width/2] and maps to [0, 1] (float32)."""
    lo = level - width / 2.0
    return np.clip((np.asarray(hu, np.float32) - lo) / width, 0.0, 1.0)


@dataclasses.dataclass
class SliceLabel:
    patient: int
    slice_number: int  # 1-based
    subtypes: tuple  # 0/1 per SUBTYPES
    no_hemorrhage: int
    fracture: int

    @property
    def bleeding(self) -> bool:
        return not self.no_hemorrhage


def read_labels(root) -> dict:
    """Returns {patient: [SliceLabel, ...] sorted by slice number}."""
    out: dict = {}
    with open(pathlib.Path(root) / "hemorrhage_diagnosis_raw_ct.csv", newline="") as fh:
        for row in csv.DictReader(fh):
            lab = SliceLabel(int(row["PatientNumber"]), int(row["SliceNumber"]),
                             tuple(int(row[s]) for s in SUBTYPES), int(row["No_Hemorrhage"]),
                             int(row.get("Fracture_Yes_No") or 0))
            out.setdefault(lab.patient, []).append(lab)
    for v in out.values():
        v.sort(key=lambda x: x.slice_number)
    return out


def _find(folder: pathlib.Path, patient: int) -> pathlib.Path:
    for name in (f"{patient:03d}.nii", f"{patient:03d}.nii.gz", f"{patient}.nii", f"{patient}.nii.gz"):
        if (folder / name).exists():
            return folder / name
    raise FileNotFoundError(f"no NIfTI for patient {patient} in {folder}")


class BCIHM:
    """Indexable by patient number: ``ds[p]`` -> (hu [x,y,z] float32, mask [x,y,z] uint8, labels)."""

    def __init__(self, root):
        self.root = pathlib.Path(root)
        self.labels = read_labels(self.root)
        self.patients = sorted(self.labels)

    def __len__(self):
        return len(self.patients)

    def __getitem__(self, patient):
        import nibabel as nib

        ct = nib.load(str(_find(self.root / "ct_scans", patient)))
        hu = np.asarray(ct.get_fdata(dtype=np.float32))
        mask = (np.asarray(nib.load(str(_find(self.root / "masks", patient))).dataobj) > 0).astype(np.uint8)
        return hu, mask, self.labels[patient]

    def spacing(self, patient):
        import nibabel as nib

        return tuple(float(z) for z in nib.load(str(_find(self.root / "ct_scans", patient))).header.get_zooms()[:3])

    def slices(self, windowed=True):
        """Yields (patient, slice_number, image [rows, cols], mask [rows, cols], SliceLabel) in order
        (no shuffling: neighbouring slices stay adjacent, as SCF needs)."""
        for p in self.patients:
            hu, mask, labs = self[p]
            for lab in labs:
                k = lab.slice_number - 1
                img = hu[:, :, k].T
                yield p, lab.slice_number, (window(img) if windowed else img), mask[:, :, k].T, lab
