#!/usr/bin/env python3
"""Side by side, the SF-CAM maps of several classifiers on the same slices: what each model's
pseudo-labelling sees (`ichseg pseudo-label --classifier ONE --cam-out`: one model's SF-CAM of
each tap after SCF, the maps BLA thresholds), so that two training runs can be compared by eye.

    python scripts/cam_compare.py --data PHANTOMS --ichseg target/release/ichseg \\
        --slice 21:18 --slice 67:18 \\
        --model "360 vols=models/classifier_slim34.onnx" --model "520 vols=other/slim34.onnx" \\
        -o compare.png

`--data` is a BCIHM-layout folder (ct_scans/, masks/, hemorrhage_diagnosis_raw_ct.csv); a slice
is PATIENT:SLICE with SLICE 1-based as in the CSV. Pick slices that no compared model trained on.
"""
import argparse
import pathlib
import subprocess
import tempfile

import matplotlib
import nibabel as nib
import numpy as np

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def parse_pair(text, sep, what):
    a, found, b = text.partition(sep)
    if not found or not a or not b:
        raise SystemExit(f"{what} {text!r}: expected A{sep}B")
    return a, b


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", required=True, help="BCIHM-layout folder")
    p.add_argument("--ichseg", default="target/release/ichseg")
    p.add_argument("--slice", action="append", required=True, metavar="PATIENT:SLICE")
    p.add_argument("--model", action="append", required=True, metavar="LABEL=ONNX")
    p.add_argument("--window", default="50,130", help="level,width in HU")
    p.add_argument("-o", "--out", required=True)
    a = p.parse_args()
    data = pathlib.Path(a.data)
    slices = [tuple(int(v) for v in parse_pair(s, ":", "--slice")) for s in a.slice]
    models = [parse_pair(m, "=", "--model") for m in a.model]
    level, width = (float(v) for v in a.window.split(","))
    load = lambda path: np.asarray(nib.load(str(path)).dataobj, dtype=np.float32)  # noqa: E731

    maps = {}  # (patient, model label) -> [x, y, z, tap]
    with tempfile.TemporaryDirectory() as tmp:
        for patient in sorted({pt for pt, _ in slices}):
            ct = data / "ct_scans" / f"{patient:03d}.nii.gz"
            for label, onnx in models:
                cams = pathlib.Path(tmp) / "cams.nii"
                subprocess.run([a.ichseg, "pseudo-label", str(ct), "--classifier", onnx, "-o",
                                str(pathlib.Path(tmp) / "pseudo.nii.gz"), "--labels",
                                str(data / "hemorrhage_diagnosis_raw_ct.csv"), "--cam-out", str(cams),
                                "--quiet"], check=True)
                c = load(cams)
                maps[patient, label] = c.reshape(*c.shape[:3], -1)

    taps = max(m.shape[3] for m in maps.values())
    cols = 2 + taps * len(models)
    fig, ax = plt.subplots(len(slices), cols, figsize=(2.6 * cols, 2.6 * len(slices)), squeeze=False)
    for r, (patient, sl) in enumerate(slices):
        z = sl - 1
        ct = load(data / "ct_scans" / f"{patient:03d}.nii.gz")[:, :, z]
        gt = load(data / "masks" / f"{patient:03d}.nii.gz")[:, :, z]
        panels = [(np.clip((ct - level + width / 2) / width, 0, 1), "gray", f"{patient:03d} slice {sl}"),
                  (gt > 0, None, "ground truth")]
        for label, _ in models:
            m = maps[patient, label]
            panels += [(m[:, :, z, t], None, f"{label}, tap {t}") for t in range(m.shape[3])]
        for c, (img, cmap, title) in enumerate(panels):
            ax[r, c].imshow(img.T, cmap=cmap, vmin=0, vmax=1, origin="lower")
            ax[r, c].set_title(title, fontsize=9)
        for c in range(cols):
            ax[r, c].axis("off")
    fig.tight_layout()
    fig.savefig(a.out, dpi=60)


if __name__ == "__main__":
    main()
