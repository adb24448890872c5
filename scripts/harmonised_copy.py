#!/usr/bin/env python3
"""A copy of a BCIHM-layout phantom set with its CT made to look more like the training data:
in-plane Gaussian smoothing, a running mean over slices to a thicker slab, and (phantoms of a
variation profile only, from their acquisition.csv) the generator's HU calibration undone.
Masks and label CSVs are shared with the source. What such input harmonisation does to the
pseudo masks of the shifted family is in docs/RESULTS.md ("The blood-density cut"):

    python scripts/harmonised_copy.py --src $DATA/shifted --dst $DATA/shifted_g10 --sigma-mm 1.0
    ichseg ablate --dataset $DATA/shifted_g10 --split $DATA/shifted_split.json --subset test ...
"""
import argparse
import csv
import pathlib
import shutil

import nibabel as nib
import numpy as np
from scipy.ndimage import gaussian_filter, uniform_filter1d


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--src", required=True)
    p.add_argument("--dst", required=True)
    p.add_argument("--sigma-mm", type=float, default=0.0, help="in-plane Gaussian sigma (0: none)")
    p.add_argument("--slab-mm", type=float, default=0.0, help="running mean over this many mm of slices (0: none)")
    p.add_argument("--undo-calibration", action="store_true",
                   help="(HU - hu_offset) / hu_slope from the source's acquisition.csv (an oracle: the generator's own values)")
    a = p.parse_args()
    src, dst = pathlib.Path(a.src), pathlib.Path(a.dst)
    (dst / "ct_scans").mkdir(parents=True, exist_ok=True)
    for f in src.glob("*.csv"):
        shutil.copyfile(f, dst / f.name)
    if not (dst / "masks").exists():
        (dst / "masks").symlink_to((src / "masks").resolve())
    calibration = {}
    if a.undo_calibration:
        for r in csv.DictReader(open(src / "acquisition.csv")):
            calibration[int(r["PatientNumber"])] = (float(r["hu_offset"]), float(r["hu_slope"]))
    for f in sorted((src / "ct_scans").glob("*.nii*")):
        img = nib.load(str(f))
        hu = img.get_fdata(dtype=np.float32)
        dx, dy, dz = img.header.get_zooms()[:3]
        if a.undo_calibration:
            offset, slope = calibration[int(f.name.split(".")[0])]
            hu = (hu - offset) / slope
        k = int(round(a.slab_mm / dz)) if a.slab_mm > 0 else 1
        if k > 1:
            hu = uniform_filter1d(hu, size=k, axis=2, mode="nearest")
        if a.sigma_mm > 0:
            hu = gaussian_filter(hu, sigma=(a.sigma_mm / dx, a.sigma_mm / dy, 0), mode="nearest")
        out = nib.Nifti1Image(np.round(hu + 1024).astype(np.int16), img.affine, img.header)
        out.header.set_data_dtype(np.int16)
        out.header.set_slope_inter(1, -1024)
        nib.save(out, str(dst / "ct_scans" / f.name))


if __name__ == "__main__":
    main()
