"""ichseg.eval: METHOD.md section 6, equal to `ichseg eval`."""

from __future__ import annotations

import dataclasses
import json

import nibabel as nib
import numpy as np
import pytest

import ichseg

from conftest import MODELS, SAMPLE, SAMPLE_MASK


def test_hand_computed_case():
    gt = np.zeros((2, 10, 10), dtype=np.uint8)
    gt[0, 0:4, 0:4] = 1          # site 1 (16 px), found
    gt[1, 6:8, 6:8] = 1          # site 2 (4 px), missed
    pred = np.zeros_like(gt)
    pred[0, 0:4, 0:2] = 1        # overlaps site 1 (8 px)
    pred[1, 0:2, 0:2] = 1        # a false site (4 px)
    s = ichseg.eval(pred, gt).overall
    inter, union = 8, 16 + 4 + 4
    assert s.iou_hemorrhage == pytest.approx(inter / union)
    bg_inter = 200 - union
    bg_union = 200 - inter
    assert s.iou_background == pytest.approx(bg_inter / bg_union)
    assert s.miou == pytest.approx((inter / union + bg_inter / bg_union) / 2)
    assert s.dice == pytest.approx(2 * inter / (12 + 20))
    assert (s.n_gt_sites, s.n_correct, s.n_pred_sites, s.n_fp) == (2, 1, 2, 1)
    assert s.cl == pytest.approx(0.5) and s.ml == pytest.approx(0.5) and s.fpl == pytest.approx(0.5)
    assert s.slices == 2
    empty = ichseg.eval(np.zeros_like(gt), np.zeros_like(gt)).overall
    assert empty.cl is None and empty.fpl is None


def test_equals_cli_on_the_sample(cli, engine, tmp_path):
    image = ichseg.read_volume(SAMPLE)
    preds = []
    for name in ("unet", "unet_weak"):
        r = ichseg.Segmenter(engine, MODELS / f"{name}.onnx").segment(image)
        ichseg.write_mask(tmp_path / f"{name}.nii.gz", r.mask, like=image)
        preds.append(r.mask)
    gt = np.asarray(nib.load(SAMPLE_MASK).dataobj).T
    ours = ichseg.eval(preds, [gt, gt], spacing=image.spacing)
    ref = json.loads(cli("eval", "--pred", tmp_path / "unet.nii.gz", "--gt", SAMPLE_MASK,
                         "--pred", tmp_path / "unet_weak.nii.gz", "--gt", SAMPLE_MASK, "--json").stdout)
    assert ours.overall == ichseg.Scores.from_dict(ref["overall"])
    assert ours.per_volume == [ichseg.Scores.from_dict(v["scores"]) for v in ref["per_volume"]]
    assert len(ours.overall.by_size) == 4 and ours.overall.by_size[1].min_ml == 0.1
    # Without the spacing there are no bins; the rest is the same.
    plain = ichseg.eval(preds, [gt, gt])
    assert plain.overall.by_size is None
    assert dataclasses.replace(ours.overall, by_size=None) == plain.overall
    with pytest.raises(ichseg.InvalidArgumentError, match="spacing must be"):
        ichseg.eval(preds, [gt, gt], spacing=[(1, 1, 1)])
    with pytest.raises(ichseg.InvalidArgumentError, match="finite and positive"):
        ichseg.eval(preds, [gt, gt], spacing=(0, 1, 1))
    # README: the shipped U-Net, with its tuned small-lesion filter, scores mIoU 66.8 % on the sample.
    assert ours.per_volume[0].miou == pytest.approx(0.668, abs=0.0005)
