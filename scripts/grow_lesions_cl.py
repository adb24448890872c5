#!/usr/bin/env python3
"""Whether growing the U-Net's lesions finds the small sites it misses: hysteresis thresholding
(keep each 3D component, 26-connected, of probability >= LOW that holds a voxel >= HIGH) against
a plain threshold, each scored by `ichseg eval` (METHOD.md section 6: mIoU, CL, FPL) with a set of
small-lesion filters, on one split of a BCIHM-layout dataset.

    python scripts/grow_lesions_cl.py --model models/unet.onnx --data $DATA/phantoms \\
        --split $DATA/split.json --subset val --work $DATA/grow/val --ichseg target/release/ichseg

Writes each volume's probability once (`ichseg segment --prob`, reused on a rerun), the masks of
every variant under --work, and one line per variant and filter.
"""
import argparse
import json
import pathlib
import subprocess
import sys

import nibabel as nib
import numpy as np
from scipy import ndimage as ndi

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1] / "training"))
from ichseg_training.evaluate import score_pairs  # noqa: E402

# (HIGH, LOW): LOW None is a plain threshold at HIGH.
VARIANTS = [(0.5, None), (0.3, None), (0.5, 0.3), (0.5, 0.2), (0.5, 0.1), (0.5, 0.05)]


def grown(prob: np.ndarray, high: float, low) -> np.ndarray:
    """The mask of one variant: plain threshold, or the 3D components of prob >= low that hold
    a voxel >= high."""
    if low is None:
        return prob >= high
    labels, n = ndi.label(prob >= low, structure=np.ones((3, 3, 3), bool))
    keep = np.zeros(n + 1, bool)
    keep[np.unique(labels[prob >= high])] = True
    keep[0] = False
    return keep[labels]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", required=True)
    p.add_argument("--data", required=True)
    p.add_argument("--split", required=True)
    p.add_argument("--subset", default="val", choices=("train", "val", "test"))
    p.add_argument("--work", required=True)
    p.add_argument("--ichseg", default="target/release/ichseg")
    p.add_argument("--filters", default="0,0.1,0.15,0.2", help="comma-separated small-lesion filters (mL)")
    a = p.parse_args()
    data, work = pathlib.Path(a.data), pathlib.Path(a.work)
    work.mkdir(parents=True, exist_ok=True)
    stems = [f"{int(x):03d}" for x in json.loads(pathlib.Path(a.split).read_text())["splits"][a.subset]]
    names = [f"t{hi}" if lo is None else f"h{hi}-{lo}" for hi, lo in VARIANTS]
    for stem in stems:
        prob_path = work / f"{stem}.prob.nii.gz"
        if not prob_path.exists():
            subprocess.run([a.ichseg, "segment", "-m", a.model, str(data / "ct_scans" / f"{stem}.nii.gz"),
                            "-o", str(work / f"{stem}.mask.nii.gz"), "--prob", str(prob_path),
                            "--min-lesion-ml", "0", "--threads", "1", "-q"], check=True)
        img = nib.load(prob_path)
        prob = np.asarray(img.dataobj, dtype=np.float32)
        for name, (hi, lo) in zip(names, VARIANTS):
            out = work / name / f"{stem}.nii.gz"
            out.parent.mkdir(exist_ok=True)
            nib.save(nib.Nifti1Image(grown(prob, hi, lo).astype(np.uint8), img.affine, img.header), out)
    for name in names:
        pairs = [(work / name / f"{stem}.nii.gz", data / "masks" / f"{stem}.nii.gz") for stem in stems]
        for ml in a.filters.split(","):
            o = score_pairs(a.ichseg, pairs, min_lesion_ml=ml, table=False)["overall"]
            print(f"{a.subset:5s} {name:9s} filter {ml:>4} mL: mIoU {100 * o['miou']:.2f}  CL {100 * o['cl']:.1f}  "
                  f"FPL {100 * o['fpl']:.1f}", flush=True)


if __name__ == "__main__":
    main()
