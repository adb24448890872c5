"""Minimal loaders for BCIHM- and BHSD-layout data, preprocessing and the patient split.

BCIHM (real PhysioNet ct-ich or the synthetic phantoms): ``ROOT/ct_scans/NNN.nii[.gz]``,
``ROOT/masks/NNN.nii[.gz]`` and ``ROOT/hemorrhage_diagnosis_raw_ct.csv`` (one row per slice,
SliceNumber 1-based).

BHSD (assumed layout, not verifiable here since the data cannot be downloaded):
``ROOT/images/NAME.nii[.gz]`` and ``ROOT/ground truths/NAME.nii[.gz]`` (or ``ROOT/labels/``)
with identical file names; label volumes hold 0 = background and 1..5 = hemorrhage subtypes,
merged to binary (label > 0).  Slice labels are derived (positive iff the slice's mask is
non-empty).

Only numpy and nibabel are needed (no torch).  Intensities are returned in HU: nibabel applies
``scl_slope``/``scl_inter`` (METHOD.md section 2).  The patient split (METHOD.md section 6)
is ``patient_split``; ``python datasets.py split ...`` writes it as JSON.
"""
from __future__ import annotations

import argparse
import csv
import dataclasses
import json
import pathlib
import sys

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

    def n_slices(self, patient) -> int:
        """The CT's number of slices, from its header."""
        import nibabel as nib

        return int(nib.load(str(_find(self.root / "ct_scans", patient))).shape[2])

    def positive(self) -> dict:
        """{patient: True iff any slice is labelled bleeding} (from the CSV, no volumes read)."""
        return {p: any(lab.bleeding for lab in self.labels[p]) for p in self.patients}

    def slices(self, windowed=True, patients=None):
        """Yields (patient, slice_number, image [rows, cols], mask [rows, cols], SliceLabel) in order
        (no shuffling: neighbouring slices stay adjacent, as SCF needs)."""
        return _slices(self, windowed, patients)


def _slices(ds, windowed=True, patients=None):
    for p in (ds.patients if patients is None else patients):
        hu, mask, labs = ds[p]
        for lab in labs:
            k = lab.slice_number - 1
            img = hu[:, :, k].T
            yield p, lab.slice_number, (window(img) if windowed else img), mask[:, :, k].T, lab


# --------------------------------------------------------------------------------------- BHSD

BHSD_LABEL_DIRS = ("ground truths", "labels")


def _nifti_stem(path: pathlib.Path):
    name = path.name
    for ext in (".nii.gz", ".nii"):
        if name.endswith(ext):
            return name[: -len(ext)]
    return None


class BHSD:
    """BHSD-layout data: ``ROOT/images/NAME.nii[.gz]`` with ``ROOT/ground truths/NAME.nii[.gz]``
    (or ``ROOT/labels/NAME.nii[.gz]``), same file names.  Labels 0..5 are merged to binary.

    Patients are integers: ``int(NAME)`` when every name is a number, else 1..N in sorted-name
    order; ``names[patient]`` gives the file name stem.  ``ds[p]`` -> (hu [x,y,z] float32,
    mask [x,y,z] uint8, [SliceLabel, ...]) like ``BCIHM``; the SliceLabel's ``subtypes`` holds the
    presence of label codes 1..5 in BHSD's code order (not ``SUBTYPES`` order), ``fracture`` 0.
    """

    LABEL_CODES = (1, 2, 3, 4, 5)

    def __init__(self, root):
        self.root = pathlib.Path(root)
        self.image_dir = self.root / "images"
        dirs = [self.root / d for d in BHSD_LABEL_DIRS if (self.root / d).is_dir()]
        if not self.image_dir.is_dir() or not dirs:
            raise FileNotFoundError(f"{root}: expected images/ and one of {BHSD_LABEL_DIRS}")
        self.label_dir = dirs[0]
        images = {_nifti_stem(f): f for f in self.image_dir.iterdir() if _nifti_stem(f)}
        labels = {_nifti_stem(f): f for f in self.label_dir.iterdir() if _nifti_stem(f)}
        missing = sorted(set(images) ^ set(labels))
        if missing:
            raise FileNotFoundError(f"{root}: images and labels differ for {missing[:5]}")
        stems = sorted(images)
        if stems and all(s.isdigit() for s in stems):
            ids = [int(s) for s in stems]
        else:
            ids = list(range(1, len(stems) + 1))
        self.names = dict(zip(ids, stems))
        self.patients = sorted(self.names)
        self._files = {p: (images[self.names[p]], labels[self.names[p]]) for p in self.patients}

    def __len__(self):
        return len(self.patients)

    def label_volume(self, patient):
        """The raw integer label volume (0..5) of a patient."""
        import nibabel as nib

        return np.rint(np.asarray(nib.load(str(self._files[patient][1])).dataobj)).astype(np.int16)

    def slice_labels(self, patient, lab_vol=None):
        lab_vol = self.label_volume(patient) if lab_vol is None else lab_vol
        out = []
        for k in range(lab_vol.shape[2]):
            sl = lab_vol[:, :, k]
            sub = tuple(int((sl == c).any()) for c in self.LABEL_CODES)
            out.append(SliceLabel(patient, k + 1, sub, int(not (sl > 0).any()), 0))
        return out

    def __getitem__(self, patient):
        import nibabel as nib

        hu = np.asarray(nib.load(str(self._files[patient][0])).get_fdata(dtype=np.float32))
        lab_vol = self.label_volume(patient)
        if lab_vol.shape != hu.shape:
            raise ValueError(f"patient {patient}: image {hu.shape} vs label {lab_vol.shape}")
        return hu, (lab_vol > 0).astype(np.uint8), self.slice_labels(patient, lab_vol)

    def spacing(self, patient):
        import nibabel as nib

        return tuple(float(z) for z in nib.load(str(self._files[patient][0])).header.get_zooms()[:3])

    def n_slices(self, patient) -> int:
        """As ``BCIHM.n_slices``."""
        import nibabel as nib

        return int(nib.load(str(self._files[patient][0])).shape[2])

    def positive(self) -> dict:
        """{patient: True iff any voxel label > 0} (reads the label volumes only)."""
        return {p: bool((self.label_volume(p) > 0).any()) for p in self.patients}

    def slices(self, windowed=True, patients=None):
        """As ``BCIHM.slices``."""
        return _slices(self, windowed, patients)


def open_dataset(layout, root):
    """``layout`` is "bcihm" or "bhsd"."""
    return {"bcihm": BCIHM, "bhsd": BHSD}[layout](root)


# ------------------------------------------------------------------------------ preprocessing

def _resize_axis(a, n_out, axis):
    """Half-pixel linear resampling along one axis, as torch F.interpolate(mode="bilinear",
    align_corners=False) without scale_factor: src = max((dst + 0.5) * in / out - 0.5, 0)."""
    n_in = a.shape[axis]
    scale = np.float32(n_in / n_out)  # torch computes the source index in float32
    half = np.float32(0.5)
    src = np.maximum((np.arange(n_out, dtype=np.float32) + half) * scale - half, np.float32(0.0))
    i0 = np.minimum(np.floor(src).astype(np.int64), n_in - 1)
    i1 = np.minimum(i0 + 1, n_in - 1)
    lam = (src - i0).astype(np.float32)
    shape = [1] * a.ndim
    shape[axis] = n_out
    lam = lam.reshape(shape)
    return np.take(a, i0, axis=axis) * (1.0 - lam) + np.take(a, i1, axis=axis) * lam


def resize_bilinear(img, size):
    """Resizes a 2D slice to ``size`` (int or (rows, cols)) bilinearly, matching torch's
    ``F.interpolate(x, size, mode="bilinear", align_corners=False)``.  Returns float32."""
    rows, cols = (size, size) if np.isscalar(size) else tuple(size)
    a = np.asarray(img, np.float32)
    if a.ndim != 2:
        raise ValueError("resize_bilinear expects a 2D slice")
    return _resize_axis(_resize_axis(a, int(rows), 0), int(cols), 1).astype(np.float32)


def classifier_samples(ds, size=384, patients=None):
    """Yields (image [size, size] float32 in [0, 1], label 0/1) per slice, windowed 50/130 and
    resized bilinearly, in patient then slice order (no shuffling)."""
    for _p, _sn, img, _m, lab in ds.slices(windowed=True, patients=patients):
        yield (img if size is None else resize_bilinear(img, size)), int(lab.bleeding)


# ---------------------------------------------------------------------------------- the split

SPLIT_NAMES = ("train", "val", "test")


def _largest_remainder(n, fractions):
    exact = [n * f for f in fractions]
    counts = [int(np.floor(e)) for e in exact]
    order = sorted(range(len(fractions)), key=lambda k: (-(exact[k] - counts[k]), k))
    for k in order[: n - sum(counts)]:
        counts[k] += 1
    return counts


def _split_counts(n_pos, n_neg, fractions):
    """Per-split counts of positives and negatives: each class by largest remainder, the
    negatives' rounding chosen so that the split totals are as close as possible to the targets."""
    import itertools

    pos = _largest_remainder(n_pos, fractions)
    exact = [n_neg * f for f in fractions]
    floor = [int(np.floor(e)) for e in exact]
    extra = n_neg - sum(floor)
    target = [(n_pos + n_neg) * f for f in fractions]
    best = None
    for pick in itertools.combinations(range(len(fractions)), extra):
        neg = [floor[k] + (k in pick) for k in range(len(fractions))]
        cost = (sum(abs(pos[k] + neg[k] - target[k]) for k in range(len(fractions))),
                sum(abs(neg[k] - exact[k]) for k in range(len(fractions))))
        if best is None or cost < best[0]:
            best = (cost, neg)
    return pos, best[1]


def patient_split(patients, positive, seed, fractions=(0.6, 0.2, 0.2)):
    """Patient-level, class-balanced split (METHOD.md section 6): patients with and without any
    bleeding slice are shuffled (numpy default_rng(seed)) and split separately with the same
    fractions, then merged.  Deterministic for a seed; every patient in exactly one split.
    Returns {"train": [...], "val": [...], "test": [...]} with sorted patient numbers."""
    fr = [float(f) for f in fractions]
    if len(fr) != len(SPLIT_NAMES) or min(fr) < 0 or sum(fr) <= 0:
        raise ValueError(f"need {len(SPLIT_NAMES)} non-negative fractions, got {fractions}")
    fr = [f / sum(fr) for f in fr]
    pats = sorted(set(int(p) for p in patients))
    if len(pats) != len(list(patients)):
        raise ValueError("duplicate patients")
    pos = [p for p in pats if positive[p]]
    neg = [p for p in pats if not positive[p]]
    rng = np.random.default_rng(seed)
    pos = [pos[i] for i in rng.permutation(len(pos))]
    neg = [neg[i] for i in rng.permutation(len(neg))]
    npos, nneg = _split_counts(len(pos), len(neg), fr)
    out = {}
    a = b = 0
    for name, cp, cn in zip(SPLIT_NAMES, npos, nneg):
        out[name] = sorted(pos[a:a + cp] + neg[b:b + cn])
        a += cp
        b += cn
    return out


def write_split(path, split, seed, fractions=(0.6, 0.2, 0.2), **meta):
    """Writes the split as JSON: {"seed", "fractions", "splits": {name: [patients]}, **meta}."""
    doc = {"seed": seed, "fractions": [float(f) for f in fractions],
           "splits": {k: [int(p) for p in v] for k, v in split.items()}}
    doc.update(meta)
    pathlib.Path(path).write_text(json.dumps(doc, indent=1) + "\n")


def read_split(path, with_meta=False):
    """Reads a split file; returns {name: [patients]}, or (split, doc) with ``with_meta``.
    Raises ValueError if a patient appears in two splits."""
    doc = json.loads(pathlib.Path(path).read_text())
    split = {k: [int(p) for p in v] for k, v in doc["splits"].items()}
    seen: set = set()
    for v in split.values():
        if seen & set(v) or len(set(v)) != len(v):
            raise ValueError(f"{path}: a patient appears more than once")
        seen |= set(v)
    return (split, doc) if with_meta else split


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    sp = sub.add_parser("split", help="write a patient-level class-balanced split as JSON")
    sp.add_argument("--layout", choices=("bcihm", "bhsd"), required=True)
    sp.add_argument("--root", required=True)
    sp.add_argument("--seed", type=int, default=0)
    sp.add_argument("--fractions", type=float, nargs=3, default=(0.6, 0.2, 0.2))
    sp.add_argument("--out", required=True)
    args = ap.parse_args(argv)
    ds = open_dataset(args.layout, args.root)
    positive = ds.positive()
    split = patient_split(ds.patients, positive, args.seed, args.fractions)
    meta = {"layout": args.layout, "positive": sorted(p for p in ds.patients if positive[p])}
    if isinstance(ds, BHSD):
        meta["names"] = {str(p): n for p, n in ds.names.items()}
    write_split(args.out, split, args.seed, args.fractions, **meta)
    for k, v in split.items():
        print(f"{k}: {len(v)} patients, {sum(positive[p] for p in v)} with bleeding")
    return 0


if __name__ == "__main__":
    sys.exit(main())
