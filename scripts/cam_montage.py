#!/usr/bin/env python3
"""A montage of pseudo-labelling on one volume, to see why a pseudo mask looks as it does: per
slice with ground truth, the windowed CT, the ground truth, each tap's fused map (`ichseg
pseudo-label --cam-out`) and the pseudo mask.

    ichseg pseudo-label --classifier A.onnx --classifier B.onnx CT -o pseudo.nii.gz \\
        --labels slices.csv --cam-out cams.nii
    python scripts/cam_montage.py CT GT_MASK cams.nii pseudo.nii.gz -o montage.png [--slices 3]
"""
import argparse

import matplotlib
import nibabel as nib
import numpy as np

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("ct")
    p.add_argument("gt")
    p.add_argument("cams", help="--cam-out of ichseg pseudo-label: one volume per tap layer")
    p.add_argument("pseudo")
    p.add_argument("-o", "--out", required=True)
    p.add_argument("--slices", type=int, default=3, help="how many slices with ground truth to show")
    p.add_argument("--window", default="50,130", help="level,width in HU")
    a = p.parse_args()
    level, width = (float(v) for v in a.window.split(","))
    load = lambda path: np.asarray(nib.load(path).dataobj, dtype=np.float32)  # noqa: E731
    ct, gt, cams, pseudo = load(a.ct), load(a.gt), load(a.cams), load(a.pseudo)
    cams = cams.reshape(*cams.shape[:3], -1)
    zs = [z for z in range(gt.shape[2]) if gt[:, :, z].any()][: a.slices]
    if not zs:
        raise SystemExit(f"{a.gt}: no slice with ground truth")
    cols = 3 + cams.shape[3]
    fig, ax = plt.subplots(len(zs), cols, figsize=(3 * cols, 3 * len(zs)), squeeze=False)
    for r, z in enumerate(zs):
        panels = [(np.clip((ct[:, :, z] - level + width / 2) / width, 0, 1), "gray", f"CT z={z}"),
                  (gt[:, :, z], None, "ground truth")]
        panels += [(cams[:, :, z, i], None, f"fused map, tap {i}") for i in range(cams.shape[3])]
        panels.append((pseudo[:, :, z], None, "pseudo mask"))
        for c, (img, cmap, title) in enumerate(panels):
            ax[r, c].imshow(img.T, cmap=cmap, vmin=0, vmax=1, origin="lower")
            ax[r, c].set_title(title)
            ax[r, c].axis("off")
    fig.tight_layout()
    fig.savefig(a.out, dpi=60)


if __name__ == "__main__":
    main()
