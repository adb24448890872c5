"""Segmentation through the package equals the CLI's, on the shipped sample and a fixture."""

from __future__ import annotations

import json

import nibabel as nib
import numpy as np
import pytest

import ichseg

from conftest import CT_SMALL, FIXTURES, MODELS, SAMPLE, THREADS, strip_volatile


@pytest.mark.parametrize(
    "model, scan",
    [(MODELS / "unet.onnx", SAMPLE), (MODELS / "unet_weak.onnx", SAMPLE), (FIXTURES / "unet" / "unet_resize.onnx", CT_SMALL)],
    ids=["sample-unet", "sample-unet_weak", "fixture-unet_resize"],
)
def test_segment_equals_cli(cli, engine, tmp_path, model, scan):
    mask_path, prob_path = tmp_path / "mask.nii.gz", tmp_path / "prob.nii.gz"
    out = cli("segment", "--model", model, scan, "-o", mask_path, "--prob", prob_path, "--json",
              "--device", "cpu", "--threads", THREADS, "-q")
    cli_report = json.loads(out.stdout)

    image = ichseg.read_volume(scan)
    result = ichseg.Segmenter(engine, model).segment(image)

    cli_mask = np.asarray(nib.load(mask_path).dataobj).T  # nibabel (x, y, z) -> (z, y, x)
    cli_prob = np.asarray(nib.load(prob_path).dataobj).T
    assert result.mask.dtype == np.uint8 and result.mask.shape == image.shape
    np.testing.assert_array_equal(result.mask, cli_mask)
    np.testing.assert_array_equal(result.probability, cli_prob)
    assert strip_volatile(result.report) == strip_volatile(cli_report)
    # The dataclasses carry the report's findings.
    assert len(result.lesions) == cli_report["lesion_count"]
    assert result.summary == cli_report["summary"]
    assert result.total_volume_ml == cli_report["total_volume_ml"]
    assert result.total_abc2_ml == cli_report["total_abc2_ml"]
    for lesion, ref in zip(result.lesions, cli_report["lesions"]):
        assert lesion.voxels == ref["voxels"] and lesion.abc2_ml == ref["abc2_ml"]
        assert lesion.abc2.a_mm == ref["abc2"]["a_mm"] and lesion.density.mean_hu == ref["density"]["mean_hu"]
        assert lesion.side == ref["side"] and lesion.flags.ge_30_ml == ref["flags"]["ge_30_ml"]
        assert lesion.bbox_min == tuple(ref["bbox_min"])


def test_sample_has_lesions_with_findings(engine):
    # The shipped sample bleeds: the comparison above must not pass on empty results only.
    result = ichseg.Segmenter(engine, MODELS / "unet.onnx").segment(ichseg.read_volume(SAMPLE))
    assert result.lesions and result.total_volume_ml > 0
    big = result.lesions[0]
    assert big.volume_ml == max(lesion.volume_ml for lesion in result.lesions)
    assert big.side in {"left", "right", "crossing", "unknown"} and big.abc2.ml > 0
    assert result.summary.startswith(f"{len(result.lesions)} lesion")
    assert int(result.mask.sum()) == sum(lesion.voxels for lesion in result.lesions)


def test_array_input_equals_image_input(engine):
    image = ichseg.read_volume(SAMPLE)
    seg = ichseg.Segmenter(engine, MODELS / "unet.onnx")
    from_image = seg.segment(image)
    from_array = seg.segment(image.array, image.spacing, image.affine)
    np.testing.assert_array_equal(from_array.mask, from_image.mask)
    np.testing.assert_array_equal(from_array.probability, from_image.probability)
    assert from_array.report["input"] == "<array>"
    # Without an affine the orientation is unknown: no side can be given.
    no_affine = seg.segment(image.array, image.spacing)
    np.testing.assert_array_equal(no_affine.mask, from_image.mask)
    assert all(lesion.side == "unknown" for lesion in no_affine.lesions)


def test_options_match_cli_flags(cli, engine, tmp_path):
    model = MODELS / "unet.onnx"
    mask_path = tmp_path / "m.nii.gz"
    out = cli("segment", "--model", model, SAMPLE, "-o", mask_path, "--json", "--threshold", "0.8",
              "--min-lesion-ml", "0.05", "--batch", "4", "--device", "cpu", "--threads", THREADS, "-q")
    seg = ichseg.Segmenter(engine, model, threshold=0.8, min_lesion_ml=0.05, batch=4)
    assert seg.config["threshold"] == pytest.approx(0.8) and seg.config["batch"] == 4
    result = seg.segment(ichseg.read_volume(SAMPLE))
    np.testing.assert_array_equal(result.mask, np.asarray(nib.load(mask_path).dataobj).T)
    assert strip_volatile(result.report) == strip_volatile(json.loads(out.stdout))
    unfiltered = ichseg.Segmenter(engine, model, min_lesion_ml=0).segment(ichseg.read_volume(SAMPLE))
    assert result.mask.sum() < unfiltered.mask.sum()


def test_the_models_tuned_filter_applies_unless_given(engine):
    """The shipped weak U-Net carries the small-lesion filter chosen on val
    (ichseg.segment.min_lesion_ml): it applies by default, a given value wins, 0 keeps all."""
    image = ichseg.read_volume(SAMPLE)
    tuned = ichseg.Segmenter(engine, MODELS / "unet_weak.onnx")
    ml = tuned.config["min_lesion_ml"]
    assert tuned.config["min_lesion_ml_source"] == "model: unet_weak.onnx" and ml > 0
    given = ichseg.Segmenter(engine, MODELS / "unet_weak.onnx", min_lesion_ml=ml)
    assert given.config["min_lesion_ml_source"] == "option"
    kept = tuned.segment(image)
    np.testing.assert_array_equal(kept.mask, given.segment(image).mask)
    everything = ichseg.Segmenter(engine, MODELS / "unet_weak.onnx", min_lesion_ml=0).segment(image)
    assert everything.mask.sum() > kept.mask.sum(), "the sample has lesions under the filter"
    assert all(lesion.volume_ml >= ml for lesion in kept.lesions)


def test_engine_reports_device():
    e = ichseg.Engine(device="cpu", threads=1)
    assert e.device == "cpu" and e.threads == 1 and "CPU" in e.device_note


def test_intracranial_mask_option_equals_the_cli(cli, engine, tmp_path):
    """segment with intracranial_margin_mm gives the CLI's --intracranial-mask result, and never
    marks voxels the plain run's mask keeps outside it."""
    image = ichseg.read_volume(SAMPLE)
    ours = ichseg.Segmenter(engine, MODELS / "unet.onnx", intracranial_margin_mm=2.0).segment(image)
    out = tmp_path / "m.nii.gz"
    cli("segment", "-m", MODELS / "unet.onnx", SAMPLE, "-o", out, "--intracranial-mask",
        "--intracranial-margin-mm", "2", "-q")
    theirs = np.asarray(nib.load(out).dataobj).T
    np.testing.assert_array_equal(ours.mask, theirs)
    assert ours.report["intracranial_mask"]["applied"] is True
    plain = ichseg.Segmenter(engine, MODELS / "unet.onnx").segment(image)
    assert (ours.mask <= plain.mask).all()
    with pytest.raises(ichseg.InvalidArgumentError, match="intracranial margin"):
        ichseg.Segmenter(engine, MODELS / "unet.onnx", intracranial_margin_mm=-1.0)
