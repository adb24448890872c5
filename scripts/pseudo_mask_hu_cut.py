#!/usr/bin/env python3
"""How much of a set of pseudo masks is bone: their IoU against the ground truth on one split of a
BCIHM-layout dataset as they are, and with the voxels above each HU cut removed (after the fact:
no CRF rerun), pooled over all voxels of the split as METHOD.md section 6 pools IoU.

    python scripts/pseudo_mask_hu_cut.py --data PHANTOMS --split split.json --subset val \\
        --pseudo PSEUDO_DIR --cut 100,115,150

PSEUDO_DIR holds NNN.nii.gz masks (`ichseg pseudo-label --dataset`); the CT values are HU after
the NIfTI scaling.
"""
import argparse
import json
import pathlib

import nibabel as nib
import numpy as np


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", required=True)
    p.add_argument("--split", required=True)
    p.add_argument("--subset", default="val", choices=("train", "val", "test"))
    p.add_argument("--pseudo", required=True)
    p.add_argument("--cut", default="100", help="comma-separated HU cuts")
    a = p.parse_args()
    data, pseudo = pathlib.Path(a.data), pathlib.Path(a.pseudo)
    cuts = [None] + [float(c) for c in a.cut.split(",")]
    counts = {c: np.zeros(4, np.int64) for c in cuts}  # tp, fp, fn, tn
    patients = json.loads(pathlib.Path(a.split).read_text())["splits"][a.subset]
    load = lambda path: np.asarray(nib.load(str(path)).dataobj) > 0  # noqa: E731
    for pt in patients:
        gt = load(data / "masks" / f"{pt:03d}.nii.gz")
        mask = load(pseudo / f"{pt:03d}.nii.gz")
        hu = np.asarray(nib.load(str(data / "ct_scans" / f"{pt:03d}.nii.gz")).get_fdata(dtype=np.float32))
        if not gt.shape == mask.shape == hu.shape:
            raise SystemExit(f"patient {pt}: shapes differ (mask {gt.shape}, pseudo {mask.shape}, CT {hu.shape})")
        for c in cuts:
            q = mask if c is None else mask & (hu <= c)
            counts[c] += [(q & gt).sum(), (q & ~gt).sum(), (~q & gt).sum(), (~q & ~gt).sum()]
    print(f"{a.subset}: {len(patients)} volumes")
    print("cut (HU)   mIoU   IoU_h   Dice   mask voxels")
    for c, (tp, fp, fn, tn) in counts.items():
        ih, ib = tp / max(tp + fp + fn, 1), tn / max(tn + fp + fn, 1)
        dice = 2 * tp / max(2 * tp + fp + fn, 1)
        print(f"{'none' if c is None else f'{c:g}':>8} {50 * (ih + ib):6.2f} {100 * ih:7.2f} {100 * dice:6.2f} {tp + fp:13d}")


if __name__ == "__main__":
    main()
