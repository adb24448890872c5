#!/usr/bin/env python3
"""What a CT-value cut does to a set of pseudo masks after the fact (no CRF rerun): their IoU
against the ground truth on one split of a BCIHM-layout dataset as they are, with the voxels
above each upper cut removed (how much of them is bone: the bone cut, `--max-hu`), and with the
voxels below each lower cut removed and then the lesions under --min-lesion-ml dropped again, as
`ichseg pseudo-label` runs its blood-density cut (`--min-hu`) before its small-lesion filter.
Pooled over all voxels of the split as METHOD.md section 6 pools IoU.

    python scripts/pseudo_mask_hu_cut.py --data PHANTOMS --split split.json --subset val \\
        --pseudo PSEUDO_DIR --cut 100,115,150 --min-cut 25,30,35,40,42,45,50

PSEUDO_DIR holds NNN.nii.gz masks (`ichseg pseudo-label --dataset`, with `--no-min-hu` when the
lower cuts are the question); a volume without one counts as an empty mask when its ground truth
is empty too (no bleeding slice, so no pseudo mask to make). The CT values are HU after the
NIfTI scaling.
"""
import argparse
import json
import pathlib

import nibabel as nib
import numpy as np
from scipy import ndimage as ndi


def drop_small(mask: np.ndarray, voxel_ml: float, min_ml: float) -> np.ndarray:
    """`mask` without its 3D components (26-connected) smaller than `min_ml` mL."""
    labels, n = ndi.label(mask, structure=np.ones((3, 3, 3), bool))
    if n == 0 or min_ml <= 0:
        return mask
    keep = np.bincount(labels.ravel()) * voxel_ml >= min_ml
    keep[0] = False
    return keep[labels]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", required=True)
    p.add_argument("--split", required=True)
    p.add_argument("--subset", default="val", choices=("train", "val", "test"))
    p.add_argument("--pseudo", required=True)
    p.add_argument("--cut", default="", help="comma-separated upper HU cuts (voxels above leave)")
    p.add_argument("--min-cut", default="", help="comma-separated lower HU cuts (voxels below leave)")
    p.add_argument("--min-lesion-ml", type=float, default=0.1, help="the filter after a lower cut (0: none)")
    a = p.parse_args()
    data, pseudo = pathlib.Path(a.data), pathlib.Path(a.pseudo)
    values = lambda s: [float(c) for c in s.split(",") if c.strip()]  # noqa: E731
    cuts = [("none", None)] + [(f"> {c:g}", ("max", c)) for c in values(a.cut)]
    cuts += [(f"< {c:g}", ("min", c)) for c in values(a.min_cut)]
    counts = {name: np.zeros(4, np.int64) for name, _ in cuts}  # tp, fp, fn, tn
    patients = json.loads(pathlib.Path(a.split).read_text())["splits"][a.subset]
    for pt in patients:
        gt = np.asarray(nib.load(str(data / "masks" / f"{pt:03d}.nii.gz")).dataobj) > 0
        path = pseudo / f"{pt:03d}.nii.gz"
        if not path.exists() and not gt.any():
            counts = {name: c + [0, 0, 0, gt.size] for name, c in counts.items()}
            continue
        mask = np.asarray(nib.load(str(path)).dataobj) > 0
        ct = nib.load(str(data / "ct_scans" / f"{pt:03d}.nii.gz"))
        hu = np.asarray(ct.get_fdata(dtype=np.float32))
        voxel_ml = float(np.prod(ct.header.get_zooms()[:3])) / 1000
        if not gt.shape == mask.shape == hu.shape:
            raise SystemExit(f"patient {pt}: shapes differ (mask {gt.shape}, pseudo {mask.shape}, CT {hu.shape})")
        for name, cut in cuts:
            if cut is None:
                q = mask
            elif cut[0] == "max":
                q = mask & (hu <= cut[1])
            else:
                q = drop_small(mask & (hu >= cut[1]), voxel_ml, a.min_lesion_ml)
            counts[name] += [(q & gt).sum(), (q & ~gt).sum(), (~q & gt).sum(), (~q & ~gt).sum()]
    print(f"{a.subset}: {len(patients)} volumes")
    print("cut (HU)   mIoU   IoU_h   Dice   mask voxels")
    for name, (tp, fp, fn, tn) in counts.items():
        ih, ib = tp / max(tp + fp + fn, 1), tn / max(tn + fp + fn, 1)
        dice = 2 * tp / max(2 * tp + fp + fn, 1)
        print(f"{name:>8} {50 * (ih + ib):6.2f} {100 * ih:7.2f} {100 * dice:6.2f} {tp + fp:13d}")


if __name__ == "__main__":
    main()
