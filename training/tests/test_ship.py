"""``ship``'s choice of the pseudo-labelling threshold from ``ichseg ablate --json`` (no torch)."""
import json
import math
import pathlib

import pytest

from ichseg_training import ship


def _ablation(final_mious):
    """An ``ichseg ablate --json`` document: one run per (TH, final-row mIoU)."""
    rows = lambda m: [{"row": "+ BLA", "scores": {"miou": 0.99}}, {"row": "+ dCRF", "scores": {"miou": m}}]  # noqa: E731
    return {"runs": [{"setting": {"threshold": th}, "rows": rows(m)} for th, m in final_mious]}


def test_best_threshold_reads_the_final_row():
    # f32 thresholds as ablate prints them; the earlier row's 0.99 must not count
    doc = _ablation([(0.15000000596046448, 0.50), (0.3499999940395355, 0.53), (0.4000000059604645, 0.52)])
    assert ship.best_threshold(doc) == 0.35


def test_best_threshold_ties_and_undefined_scores_go_low():
    assert ship.best_threshold(_ablation([(0.3, 0.52), (0.2, 0.52), (0.25, 0.51)])) == 0.2
    assert ship.best_threshold(_ablation([(0.3, math.nan), (0.2, None), (0.25, 0.4)])) == 0.25
    assert ship.best_threshold(_ablation([(0.3, math.nan), (0.2, math.nan)])) == 0.2


def test_best_threshold_needs_runs():
    with pytest.raises(ValueError):
        ship.best_threshold({"runs": []})


def _crf_grid(final_mious):
    """An ``ichseg ablate --json`` document over the dCRF grid: one run per ((c, w), final mIoU)."""
    rows = lambda m: [{"row": "+ dCRF", "scores": {"miou": m}}]  # noqa: E731
    return {"runs": [{"setting": {"threshold": 0.2, "crf": {"label_confidence": c, "bilateral_compat": w}},
                      "rows": rows(m)} for (c, w), m in final_mious]}


def test_best_crf_reads_the_final_row_and_keeps_the_first_of_a_tie():
    doc = _crf_grid([((0.699999988079071, 10.0), 0.62), ((0.8999999761581421, 3.0), 0.69), ((0.9, 5.0), 0.68)])
    assert ship.best_crf(doc) == {"label_confidence": 0.9, "bilateral_compat": 3.0}
    tie = _crf_grid([((0.7, 10.0), 0.6), ((0.9, 3.0), 0.6), ((0.9, 5.0), math.nan)])
    assert ship.best_crf(tie) == {"label_confidence": 0.7, "bilateral_compat": 10.0}, "METHOD.md's, listed first"
    assert ship.crf_flags(ship.best_crf(doc)) == ["--crf-confidence", "0.9", "--crf-bilateral-compat", "3"]
    with pytest.raises(ValueError):
        ship.best_crf({"runs": []})


def _volume(root, stem, mask_voxels, hu_in_mask):
    """A 16x16x4 CT of 30 HU with ``mask_voxels`` voxels of ``hu_in_mask`` HU, and its mask."""
    import nibabel as nib
    import numpy as np

    ct = np.full((16, 16, 4), 30, np.int16)
    mask = np.zeros((16, 16, 4), np.uint8)
    mask.reshape(-1)[:mask_voxels] = 1
    ct[mask > 0] = hu_in_mask
    for sub, arr in (("ct_scans", ct), ("masks", mask)):
        (root / sub).mkdir(exist_ok=True)
        nib.save(nib.Nifti1Image(arr, np.eye(4)), str(root / sub / f"{stem}.nii.gz"))
    return {"gt": str(root / "masks" / f"{stem}.nii.gz")}


def test_pick_sample_takes_the_median_blood_dense_bleed(tmp_path):
    rows = [_volume(tmp_path, "001", 0, 0),      # no bleeding: never the sample
            _volume(tmp_path, "002", 10, 70),
            _volume(tmp_path, "003", 40, 65),
            _volume(tmp_path, "004", 30, 400),   # mask in bone partial volume: skipped
            _volume(tmp_path, "005", 60, 80)]
    assert ship.pick_sample(tmp_path, {"per_volume": rows}) == "003"
    # 10 and 40 voxels left: the lower median (counting 004's 30 voxels would make it the sample)
    assert ship.pick_sample(tmp_path, {"per_volume": rows[:4]}) == "002"


def test_pick_sample_needs_a_blood_dense_bleed(tmp_path):
    rows = [_volume(tmp_path, "001", 0, 0), _volume(tmp_path, "002", 30, 400)]
    with pytest.raises(SystemExit):
        ship.pick_sample(tmp_path, {"per_volume": rows})


def test_paper_columns_leave_the_bone_cut_row_blank():
    rows = ["Grad-CAM", "+ SCF", "a alone", "b alone", "BME", "+ SCF", "+ BLA", "+ dCRF"]
    assert ship.paper_columns(rows) == ship.PAPER_TABLE4
    with_cut = ship.paper_columns(rows + ["+ bone cut (> 100 HU)"])
    assert with_cut[:8] == ship.PAPER_TABLE4 and with_cut[7] == (65.1, 64.4) and with_cut[8] == (None, None)
    with_both = ship.paper_columns(rows + ["  + bone cut (> 100 HU)", "  + small-lesion filter (< 0.1 mL)"])
    assert with_both[:8] == ship.PAPER_TABLE4 and with_both[8:] == ((None, None),) * 2
    ours = ["  + bone cut (> 100 HU)", "  + blood-density cut (< 42 HU)", "  + small-lesion filter (< 0.1 mL)"]
    with_all = ship.paper_columns(rows + ours)
    assert with_all[:8] == ship.PAPER_TABLE4 and with_all[8:] == ((None, None),) * 3
    # three classifiers: one more row, not the paper's layout
    assert ship.paper_columns(rows[:3] + ["c alone"] + rows[3:]) == ((None, None),) * 9


def test_an_earlier_runs_training_steps_are_carried():
    earlier = {"started": "2026-12-05T10:00:00+00:00", "finished": "2026-12-05T11:00:00+00:00",
               "wall_seconds": 600.0, "training_wall_seconds": 300.0,
               "git_commit": "abc", "steps": [{"step": "phantoms"}, {"step": "train slim34"},
                                              {"step": "train unet"}, {"step": "train unet_weak"}]}
    during = {"started": "2026-12-05T10:30:00+00:00"}
    records = {"classifier_slim34.onnx": during, "unet.onnx": during, "unet_weak.onnx": during}
    doc = {"steps": [{"step": "ablate val"}, {"step": "train unet_weak"}]}
    ship.carry_earlier_run(doc, earlier, records)
    assert [s["step"] for s in doc["steps"]] == ["train slim34", "train unet", "ablate val", "train unet_weak"]
    assert doc["steps"][0]["carried"] and "carried" not in doc["steps"][3]
    assert doc["earlier_run"] == {"started": earlier["started"], "finished": earlier["finished"],
                                  "wall_seconds": 600.0, "training_wall_seconds": 300.0, "git_commit": "abc"}
    # a run of its own (nothing skipped) carries nothing
    fresh = {"steps": [{"step": "train slim34"}, {"step": "train unet"}, {"step": "train unet_weak"}]}
    ship.carry_earlier_run(fresh, earlier, records)
    assert "earlier_run" not in fresh and len(fresh["steps"]) == 3
    # a model trained outside the earlier run and copied in is not that run's: not carried
    outside = {**records, "unet_weak.onnx": {"started": "2026-12-06T00:00:00+00:00"}}
    kept = {"steps": [{"step": "ablate val"}]}
    ship.carry_earlier_run(kept, earlier, outside)
    assert [s["step"] for s in kept["steps"]] == ["train slim34", "train unet", "ablate val"]


def test_slice_labels_of_a_mask(tmp_path):
    import nibabel as nib
    import numpy as np

    mask = np.zeros((4, 3, 5), np.uint8)  # (x, y, z)
    mask[1, 2, 1] = 1
    mask[0, 0, 3] = 1
    nib.save(nib.Nifti1Image(mask, np.eye(4)), str(tmp_path / "m.nii.gz"))
    ship.write_slice_labels(tmp_path / "m.nii.gz", tmp_path / "s.csv")
    assert (tmp_path / "s.csv").read_text() == "slice,label\n0,0\n1,1\n2,0\n3,1\n4,0\n"


def test_the_shipped_sample_carries_its_mask_slice_labels(tmp_path):
    models = pathlib.Path(__file__).resolve().parents[2] / "models" / "samples"
    ship.write_slice_labels(models / "sample_mask.nii.gz", tmp_path / "s.csv")
    assert (models / "sample_slices.csv").read_text() == (tmp_path / "s.csv").read_text()


def test_models_trained_outside_the_run_are_listed_with_their_commands():
    rec = lambda cmd, **meta: {"command": cmd, "metadata": meta}  # noqa: E731
    records = {"classifier_slim34.onnx": rec("train_classifier --data $DATA/stripped", **{"ichseg.skull_strip_mm": "0"}),
               "classifier_slim50.onnx": rec("train_classifier --skull-strip-mm 0", **{"ichseg.skull_strip_mm": "0"}),
               "unet.onnx": rec("train_unet --out u"), "unet_weak.onnx": rec("train_unet --out w")}
    doc = {"steps": [{"step": "train slim50"}, {"step": "train unet_weak"}, {"step": "ablate val"}]}
    lines = []
    ship.write_outside_training(lines.append, doc, records)
    text = "\n".join(lines)
    assert "`classifier_slim34.onnx`: `train_classifier --data $DATA/stripped`" in text
    assert "`unet.onnx`: `train_unet --out u`" in text
    assert "slim50" not in text and "unet_weak" not in text, "trained by the run: its steps say how"
    assert text.count("added to its metadata afterwards") == 1, "only where the command did not write it"
    lines.clear()
    doc["steps"] += [{"step": "train slim34"}, {"step": "train unet"}]
    ship.write_outside_training(lines.append, doc, records)
    assert lines == []


def test_models_arg_reads_the_recorded_command():
    assert ship._models_arg("python -m ichseg_training.ship --work $DATA --models '$DATA/shipS' --skip-existing") \
        == "$DATA/shipS"
    assert ship._models_arg("python -m ichseg_training.ship --work $DATA") == "models"


def test_the_unets_input_size_of_a_run():
    assert ship.unet_input_size({"input_size": 160}) == 160, "runs before --unet-size: the classifiers'"
    assert ship.unet_input_size({"input_size": 160, "unet_input_size": 256}) == 256
    assert set(ship.UNET_INPUTS) == {160, 256} and ship.UNET_INPUTS[256][:2] == ["--crop", 128]


def test_time_scale_multiplies_only_the_time_caps():
    assert ship.time_scaled(["--batch", 32, "--max-minutes", 45, "--threads", 1], 2.5) == \
        ["--batch", 32, "--max-minutes", 112.5, "--threads", 1]
    assert ship.time_scaled(ship.UNET_INPUTS[256], 1.0) == ["--crop", 128, "--max-minutes", 100.0]
    assert ship.time_scaled(["--epochs", 3], 4.0) == ["--epochs", 3], "no cap: nothing to scale"
    for bad in ("0", "-1", "inf", "nan"):
        with pytest.raises(SystemExit):
            ship.main(["--work", "unused", "--time-scale", bad])


def test_pseudo_masks_stay_only_when_resuming_with_the_same_settings(tmp_path):
    pseudo, settings_file = tmp_path / "pseudo", tmp_path / "pseudo_settings.json"
    settings = {"command": ["ichseg", "pseudo-label", "--threshold", "0.2"], "classifiers": {"a.onnx": "00"}}

    def made():
        pseudo.mkdir(exist_ok=True)
        (pseudo / "001.nii.gz").write_bytes(b"mask")

    made()
    assert not ship.keep_pseudo_masks(pseudo, settings_file, settings, resume=True)  # no settings recorded
    assert not pseudo.exists() and json.loads(settings_file.read_text()) == settings
    made()
    assert ship.keep_pseudo_masks(pseudo, settings_file, settings, resume=True)
    assert (pseudo / "001.nii.gz").exists()
    assert not ship.keep_pseudo_masks(pseudo, settings_file, settings, resume=False)  # not resuming
    assert not pseudo.exists()
    made()
    other = {**settings, "classifiers": {"a.onnx": "01"}}  # a classifier changed
    assert not ship.keep_pseudo_masks(pseudo, settings_file, other, resume=True)
    assert not pseudo.exists() and json.loads(settings_file.read_text()) == other


def test_unet_seeds_are_distinct_integers_and_default_to_the_seed():
    assert ship.parse_seeds(None, 2025) == [2025]
    assert ship.parse_seeds("7,3", 2025) == [7, 3]
    for bad in ("", "1,x", "1,1"):
        with pytest.raises(ValueError):
            ship.parse_seeds(bad, 2025)


def test_the_best_seed_is_the_best_val_miou_and_a_tie_keeps_the_first():
    assert ship.best_seed({2025: 0.73, 2026: 0.77}) == 2026
    assert ship.best_seed({2026: 0.77, 2025: 0.77}) == 2026
    assert ship.best_seed({1: float("nan"), 2: 0.5, 3: None}) == 2


def test_seeds_train_side_by_side_as_far_as_cores_and_memory_allow():
    gib = 2 ** 30
    # the standard 800 phantoms' training + validation slices at 256: 6.3 GB each
    slices, size = 19_200, 256
    each = slices * size * size * 5 * 1.1 + gib
    assert ship.side_by_side(2, slices, size, 2, 22 * gib) == 2
    assert ship.side_by_side(2, slices, size, 2, each * 2 - 1) == 1  # two would not fit
    assert ship.side_by_side(2, slices, size, 1, 64 * gib) == 1  # one core
    assert ship.side_by_side(3, slices, size, 16, 64 * gib) == 3  # never more than there are runs
    # thin-slice `wide` phantoms held 16.4 GB each: one at a time on 24 GB
    assert ship.side_by_side(2, 49_121, size, 2, 22 * gib) == 1
    assert ship.side_by_side(2, slices, size, None, 64 * gib) == 1  # unknown: as before
    assert ship.side_by_side(2, slices, size, 2, None) == 1


def test_deal_keeps_each_lanes_order_and_every_step():
    assert ship.deal([1, 2, 3], 2) == [[1, 3], [2]]
    assert ship.deal([1, 2], 1) == [[1, 2]]


def test_available_memory_is_bytes_or_none():
    mem = ship.available_memory()
    assert mem is None or mem > 2 ** 20


def test_the_classifiers_own_phantoms_must_split_the_patients_alike(tmp_path):
    def split_file(name, splits):
        path = tmp_path / name
        path.write_text(json.dumps({"seed": 1, "splits": splits}))
        return path

    standard = split_file("a.json", {"train": [1, 2], "val": [3], "test": [4]})
    ship.same_patients(standard, split_file("b.json", {"train": [2, 1], "val": [3], "test": [4]}))
    with pytest.raises(RuntimeError, match="test patients"):
        ship.same_patients(standard, split_file("c.json", {"train": [1, 4], "val": [3], "test": [2]}))
