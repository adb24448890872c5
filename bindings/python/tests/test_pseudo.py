"""Pseudo-labelling through the package equals the CLI's `pseudo-label`."""

from __future__ import annotations

import json

import nibabel as nib
import numpy as np
import pytest

import ichseg

from conftest import CT_SMALL, MODELS, RESNET, RESNET_TAPS, SAMPLE, THREADS, TINY, TINY_TAPS, strip_volatile


def cli_pseudo(cli, tmp_path, classifiers, scan, *args):
    """Runs `ichseg pseudo-label`; returns (mask, fused maps (tap, z, y, x), report)."""
    out, cams, report = tmp_path / "pseudo.nii.gz", tmp_path / "cams.nii.gz", tmp_path / "report.json"
    cmd = ["pseudo-label"]
    for model, taps in classifiers:
        cmd += ["--classifier", model] + (["--taps", ",".join(taps)] if taps else [])
    cli(*cmd, scan, "-o", out, "--cam-out", cams, "--report", report, "--device", "cpu",
        "--threads", THREADS, "-q", *args)
    mask = np.asarray(nib.load(out).dataobj).T
    fused = np.asarray(nib.load(cams).dataobj).T  # (x, y, z, tap) -> (tap, z, y, x)
    return mask, fused, json.loads(report.read_text())


def test_fixture_classifiers_with_predictions_equal_cli(cli, engine, tmp_path):
    classifiers = [(TINY, TINY_TAPS), (RESNET, RESNET_TAPS)]
    mask, fused, report = cli_pseudo(cli, tmp_path, classifiers, CT_SMALL)
    labeler = ichseg.PseudoLabeler(engine, [TINY, RESNET], taps=[TINY_TAPS, RESNET_TAPS])
    r = labeler.label(ichseg.read_volume(CT_SMALL))
    np.testing.assert_array_equal(r.mask, mask)
    assert len(r.fused) == labeler.layer_count == fused.shape[0]
    for tap, m in enumerate(r.fused):
        np.testing.assert_array_equal(m, fused[tap])
    assert strip_volatile(r.report) == strip_volatile(report)
    assert r.positive_slices == report["positive_slices"]
    assert len(r.cams) == 2 and all(len(c) == 2 for c in r.cams)


def test_shipped_classifiers_with_slice_labels_equal_cli(cli, engine, tmp_path):
    # The shipped sample with its true slice labels (from its mask), the options of
    # docs/RESULTS.md's best pseudo masks: bone cut and small-lesion filter.
    gt = np.asarray(nib.load(MODELS / "samples" / "sample_mask.nii.gz").dataobj).T
    labels = gt.reshape(gt.shape[0], -1).any(axis=1)
    assert labels.any() and not labels.all()
    csv = tmp_path / "labels.csv"
    csv.write_text("slice,label\n" + "".join(f"{z},{int(v)}\n" for z, v in enumerate(labels)))
    classifiers = [(MODELS / "classifier_slim34.onnx", None), (MODELS / "classifier_slim50.onnx", None)]
    mask, fused, report = cli_pseudo(cli, tmp_path, classifiers, SAMPLE, "--labels", csv,
                                     "--max-hu", "100", "--min-lesion-ml", "0.1")
    labeler = ichseg.PseudoLabeler(engine, [c for c, _ in classifiers], max_hu=100, min_lesion_ml=0.1)
    r = labeler.label(ichseg.read_volume(SAMPLE), slice_labels=labels)
    np.testing.assert_array_equal(r.mask, mask)
    for tap, m in enumerate(r.fused):
        np.testing.assert_array_equal(m, fused[tap])
    assert strip_volatile(r.report) == strip_volatile(report)
    assert r.positive_slices == [int(z) for z in np.flatnonzero(labels)]
    assert r.mask.any(), "the sample's pseudo mask should not be empty"
    assert not r.mask[~labels].any(), "negative slices get an empty mask"


@pytest.mark.parametrize("options, flags", [
    (dict(scf=None, crf=False), ["--no-scf", "--no-crf"]),
    (dict(cam="layer", aggregate="and", threshold=0.3, crf=False), ["--cam", "layer", "--aggregate", "and", "--threshold", "0.3", "--no-crf"]),
    (dict(scf=(1, 0.25), crf=False), ["--scf-c", "1", "--scf-w", "0.25", "--no-crf"]),
], ids=["no-scf-no-crf", "layercam-and", "scf-1-0.25"])
def test_options_equal_cli_flags(cli, engine, tmp_path, options, flags):
    classifiers = [(TINY, TINY_TAPS)]
    mask, fused, report = cli_pseudo(cli, tmp_path, classifiers, CT_SMALL, *flags)
    r = ichseg.PseudoLabeler(engine, [TINY], taps=[TINY_TAPS], **options).label(ichseg.read_volume(CT_SMALL))
    np.testing.assert_array_equal(r.mask, mask)
    for tap, m in enumerate(r.fused):
        np.testing.assert_array_equal(m, fused[tap])
    assert strip_volatile(r.report) == strip_volatile(report)


def test_slice_labels_replace_predictions(engine):
    image = ichseg.read_volume(CT_SMALL)
    labeler = ichseg.PseudoLabeler(engine, [TINY], taps=[TINY_TAPS], crf=False)
    nz = image.shape[0]
    none = labeler.label(image, slice_labels=[0] * nz)
    assert none.positive_slices == [] and not none.mask.any()
    one = labeler.label(image, slice_labels=np.eye(nz, dtype=bool)[nz // 2])
    assert one.positive_slices == [nz // 2]
    assert not np.delete(one.mask, nz // 2, axis=0).any()


def test_tuned_settings_follow_the_classifiers_or_the_paper_preset(cli, engine, tmp_path):
    """No options: the shipped classifiers' ichseg.pseudo.* metadata, as the CLI with no flags;
    preset="paper": METHOD.md, as --preset paper; "off" turns a step off."""
    classifiers = [(MODELS / "classifier_slim34.onnx", None), (MODELS / "classifier_slim50.onnx", None)]
    paths = [c for c, _ in classifiers]
    csv = MODELS / "samples" / "sample_slices.csv"
    image = ichseg.read_volume(SAMPLE)
    labels = ichseg.SliceLabelTable(csv).labels(image.shape[0])
    both = "model: classifier_slim34.onnx, classifier_slim50.onnx"
    for preset, flags in (("model", []), ("paper", ["--preset", "paper"])):
        (tmp_path / preset).mkdir()
        mask, _, report = cli_pseudo(cli, tmp_path / preset, classifiers, SAMPLE, "--labels", csv, *flags)
        labeler = ichseg.PseudoLabeler(engine, paths, preset=preset)
        r = labeler.label(image, slice_labels=labels)
        np.testing.assert_array_equal(r.mask, mask)
        assert labeler.settings == report["settings"] == r.report["settings"]
        s = labeler.settings
        if preset == "model":
            assert s["max_hu"] == {"value": 100.0, "source": both} and s["min_lesion_ml"]["value"] == 0.1
            assert s["crf_bilateral_compat"] == {"value": 3.0, "source": both}
            assert s["min_hu"] == {"value": 42.0, "source": both}
            tuned = r.mask
        else:
            assert s["max_hu"] == {"value": None, "source": "default"} and s["preset"] == "paper"
            # on the sample METHOD.md's CRF (0.7 / 10) votes the bleed away; the tuned one keeps it
            assert (tuned != 0).any() and (r.mask != tuned).any()
            # f32 values, widened: 0.7 reads 0.699999988
            assert s["crf_confidence"] == {"value": pytest.approx(0.7), "source": "default"}
    crf = ichseg.PseudoLabeler(engine, paths, crf_confidence=0.9, crf_bilateral_compat=3)
    assert crf.settings["crf_confidence"] == {"value": pytest.approx(0.9), "source": "option"}
    assert crf.settings["crf_bilateral_compat"] == {"value": 3.0, "source": "option"}
    with pytest.raises(ichseg.InvalidArgumentError, match="label_confidence"):
        ichseg.PseudoLabeler(engine, paths, crf_confidence=1.5)
    off = ichseg.PseudoLabeler(engine, paths, max_hu="off", min_hu="off", min_lesion_ml=0, crf_confidence=0.7,
                               crf_bilateral_compat=10)
    assert off.settings["max_hu"] == off.settings["min_hu"] == {"value": None, "source": "option"}
    np.testing.assert_array_equal(off.label(image, slice_labels=labels).mask, r.mask)  # = paper's
    with pytest.raises(ichseg.InvalidArgumentError, match="max_hu"):
        ichseg.PseudoLabeler(engine, paths, max_hu="none")
    with pytest.raises(ichseg.InvalidArgumentError, match="min_hu"):
        ichseg.PseudoLabeler(engine, paths, min_hu=float("nan"))
    with pytest.raises(ichseg.InvalidArgumentError, match="preset"):
        ichseg.PseudoLabeler(engine, paths, preset="best")
