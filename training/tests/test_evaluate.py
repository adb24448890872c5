"""`evaluate misses` (the ground-truth sites CL counts, found or missed, by area) and `evaluate unet`'s flags."""
import json

import nibabel as nib
import numpy as np
import pytest

from ichseg_training import evaluate as EV


def _save(path, a):
    nib.save(nib.Nifti1Image(a.astype(np.uint8), np.eye(4)), str(path))
    return str(path)


def test_sites_are_counted_per_slice_by_area_and_fragments_of_found_sites(tmp_path, capsys):
    gt = np.zeros((40, 40, 3), np.uint8)
    pred = np.zeros_like(gt)
    gt[2:22, 2:22, 0] = 1  # 400 px, found by one pixel
    pred[10, 10, 0] = 1
    gt[24, 2:4, 0] = 1  # 2 px, 3 px below the found site (rows 21 -> 24): a missed fragment of it
    gt[35:37, 35:37, 0] = 1  # 4 px, far from anything: missed
    gt[5:12, 30:37, 1] = 1  # 49 px on another slice, missed
    pred[30:40, 0:10, 1] = 1  # a false positive: not a site, counts nowhere
    gt[0:10, 0:10, 2] = 1  # 100 px and 4 px, both found
    gt[20:22, 20:22, 2] = 1
    pred[0:40, 0:40, 2] = 1
    (tmp_path / "masks").mkdir()
    (tmp_path / "hemorrhage_diagnosis_raw_ct.csv").write_text(
        "PatientNumber,SliceNumber,Intraventricular,Intraparenchymal,Subarachnoid,Epidural,Subdural,No_Hemorrhage\n"
        "1,1,0,0,1,0,0,0\n1,2,0,0,0,0,1,0\n1,3,0,1,0,0,1,0\n")
    pairs = [(_save(tmp_path / "p.nii.gz", pred), _save(tmp_path / "masks" / "001.nii.gz", gt))]
    sc = EV.miss_analysis(pairs, near_px=3)
    assert sc["by_slice_subtypes"] == {"Subarachnoid": {"n_gt_sites": 3, "n_found": 1},
                                       "Intraparenchymal+Subdural": {"n_gt_sites": 2, "n_found": 2},
                                       "Subdural": {"n_gt_sites": 1, "n_found": 0}}
    assert (sc["n_gt_sites"], sc["n_found"], sc["n_missed_near_found"]) == (6, 3, 1)
    by = {r["min_px"]: (r["n_found"], r["n_gt_sites"]) for r in sc["by_area"]}
    assert by == {0: (1, 3), 5: (0, 0), 20: (0, 1), 50: (0, 0), 100: (1, 1), 300: (1, 1)}
    assert EV.miss_analysis(pairs, near_px=2)["n_missed_near_found"] == 0
    assert [r["cl"] for r in sc["by_area"]][1] is None

    scores = tmp_path / "s.json"
    scores.write_text(json.dumps({"pairs": pairs}))
    assert EV.main(["misses", "--scores", str(scores), "--json", str(tmp_path / "m.json")]) == 0
    out = capsys.readouterr().out
    assert "sites of 300+ px: 1 of 1 found" in out and "1 of the 3 missed lie within 3 px" in out
    assert "sites on slices labelled Subdural: 0 of 1 found" in out
    assert json.loads((tmp_path / "m.json").read_text())["n_found"] == 3


def test_pairs_of_different_shapes_are_refused(tmp_path):
    pairs = [(_save(tmp_path / "p.nii.gz", np.zeros((4, 4, 2))), _save(tmp_path / "g.nii.gz", np.zeros((4, 4, 3))))]
    with pytest.raises(SystemExit, match="differ in shape"):
        EV.miss_analysis(pairs)
    # outside a BCIHM layout there are no slice labels to group by
    same = [(pairs[0][0], pairs[0][0])]
    assert EV.miss_analysis(same)["by_slice_subtypes"] == {}


def test_evaluate_unet_passes_the_threshold_and_the_filter_to_segment(tmp_path):
    """`evaluate unet --threshold T --min-lesion-ml ML` segments with both (a stand-in ichseg
    records its arguments), and without them leaves both to `ichseg segment`."""
    data = tmp_path / "data"
    for sub in ("ct_scans", "masks"):
        (data / sub).mkdir(parents=True)
        (data / sub / "001.nii.gz").write_bytes(b"")
    (data / "hemorrhage_diagnosis_raw_ct.csv").write_text(
        "PatientNumber,SliceNumber,Intraventricular,Intraparenchymal,Subarachnoid,Epidural,Subdural,No_Hemorrhage\n"
        "1,1,0,0,0,0,0,1\n")
    split = tmp_path / "split.json"
    split.write_text(json.dumps({"splits": {"train": [], "val": [], "test": [1]}}))
    exe, calls = tmp_path / "ichseg", tmp_path / "calls.txt"
    exe.write_text(f"""#!/bin/sh
echo "$@" >> {calls}
[ "$1" = eval ] && echo '{{"overall": {{"miou": 1.0}}, "per_volume": []}}'
exit 0
""")
    exe.chmod(0o755)
    EV.eval_unet("u.onnx", data, split, tmp_path / "pred", ichseg=str(exe), min_lesion_ml=0.0, threshold=0.3)
    segment = calls.read_text().splitlines()[0]
    assert "--min-lesion-ml 0.0" in segment and "--threshold 0.3" in segment
    calls.unlink()
    EV.eval_unet("u.onnx", data, split, tmp_path / "pred", ichseg=str(exe))
    segment = calls.read_text().splitlines()[0]
    assert segment.startswith("segment") and "--threshold" not in segment and "--min-lesion-ml" not in segment


def test_evaluate_masks_scores_each_mask_against_its_ground_truth(tmp_path, capsys):
    """`evaluate masks` pairs the subset's masks with the ground truth of the same volume and
    prints ichseg eval's table (a stand-in ichseg records its arguments); a missing mask stops it."""
    data = tmp_path / "data"
    for sub in ("ct_scans", "masks"):
        (data / sub).mkdir(parents=True)
        for n in (1, 2):
            (data / sub / f"00{n}.nii.gz").write_bytes(b"")
    (data / "hemorrhage_diagnosis_raw_ct.csv").write_text(
        "PatientNumber,SliceNumber,Intraventricular,Intraparenchymal,Subarachnoid,Epidural,Subdural,No_Hemorrhage\n"
        "1,1,0,0,0,0,0,1\n2,1,0,0,0,0,0,1\n")
    split = tmp_path / "split.json"
    split.write_text(json.dumps({"splits": {"train": [2], "val": [1], "test": []}}))
    pseudo = tmp_path / "pseudo"
    pseudo.mkdir()
    (pseudo / "002.nii.gz").write_bytes(b"")
    exe, calls = tmp_path / "ichseg", tmp_path / "calls.txt"
    exe.write_text(f"""#!/bin/sh
echo "$@" >> {calls}
case "$*" in *--json*) echo '{{"overall": {{"miou": 0.75}}, "per_volume": []}}';; *) echo "TABLE";; esac
exit 0
""")
    exe.chmod(0o755)
    out = tmp_path / "s.json"
    assert EV.main(["masks", "--masks", str(pseudo), "--data", str(data), "--split", str(split),
                    "--ichseg", str(exe), "--json", str(out)]) == 0
    assert "TABLE" in capsys.readouterr().out
    first = calls.read_text().splitlines()[0]
    assert first == f"eval --pred {pseudo / '002.nii.gz'} --gt {data / 'masks' / '002.nii.gz'} --json"
    doc = json.loads(out.read_text())
    assert doc["overall"]["miou"] == 0.75 and doc["subset"] == "train" and doc["patients"] == [2]
    with pytest.raises(FileNotFoundError, match="no mask 001"):  # val's volume 1 has none in the folder
        EV.main(["masks", "--masks", str(pseudo), "--data", str(data), "--split", str(split),
                 "--subset", "val", "--ichseg", str(exe)])
