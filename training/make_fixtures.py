#!/usr/bin/env python3
"""Regenerates every committed test fixture under tests/fixtures/ from fixed seeds.

Usage: python training/make_fixtures.py [--only nifti,unet,metrics,classifier,crf,cam,grad]

Each part lives in training/fixtures/<part>.py and exposes main(out_dir: pathlib.Path).
The references come from nibabel, PyTorch and onnxruntime, so CI never needs them.
"""
import argparse
import importlib
import pathlib
import sys

PARTS = ["nifti", "unet", "metrics", "classifier", "crf", "cam", "grad"]


def run() -> None:
    root = pathlib.Path(__file__).resolve().parent.parent
    sys.path.insert(0, str(root / "training"))
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--only", default=",".join(PARTS), help="comma-separated parts")
    args = parser.parse_args()
    for part in args.only.split(","):
        out = root / "tests" / "fixtures" / part
        out.mkdir(parents=True, exist_ok=True)
        print(f"[make_fixtures] {part} -> {out.relative_to(root)}")
        importlib.import_module(f"fixtures.{part}").main(out)


if __name__ == "__main__":
    run()
