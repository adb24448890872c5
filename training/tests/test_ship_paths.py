"""``ship`` writes MODELS.md and the run records with no folder of the machine: the work folder as
``$DATA``, the ichseg binary relative to the repository (no torch)."""
import json
import shlex

from ichseg_training import common as C
from ichseg_training import ship

WORK = "/srv/runs/ship800"
EXE = "/opt/bin/ichseg8"
REPO = "/srv/src/libichseg"


def test_an_absolute_work_folder_is_shown_as_data():
    cmd = (f"python -m ichseg_training.evaluate unet --data {WORK}/phantoms --split {WORK}/split.json "
           f"--ichseg {EXE} --pred-dir {WORK}/pred/test")
    assert ship.portable(cmd, WORK, EXE, repo=REPO) == (
        "python -m ichseg_training.evaluate unet --data $DATA/phantoms --split $DATA/split.json "
        "--ichseg target/release/ichseg --pred-dir $DATA/pred/test")
    assert ship.portable(f"ship --work {WORK} --models models", [WORK + "/"], repo=REPO) == \
        "ship --work $DATA --models models"
    # whole path components only, and the output of `ichseg demo`
    assert ship.portable(f"{WORK}0/x {WORK}.old", WORK, repo=REPO) == f"{WORK}0/x {WORK}.old"
    assert ship.portable(f"wrote {WORK}/demo-out/mask.nii.gz, {WORK}/demo-out/prob.nii.gz", WORK, repo=REPO) == \
        "wrote $DATA/demo-out/mask.nii.gz, $DATA/demo-out/prob.nii.gz"


def test_quoted_paths_still_expand_and_repo_paths_become_relative():
    work = "/srv/my runs/ship"
    line = shlex.join(["--data", f"{work}/phantoms", "--out", f"{REPO}/models/unet.onnx", "--cwd", REPO])
    shown = ship.portable(line, work, f"{REPO}/target/release/ichseg", repo=REPO)
    assert shown == "--data \"$DATA\"'/phantoms' --out models/unet.onnx --cwd ."
    assert shlex.split(shown)[1] == "$DATA/phantoms"  # one word, which a shell expands
    assert ship.portable(f"{REPO}/target/release/ichseg demo", (), f"{REPO}/target/release/ichseg",
                         repo=REPO) == "target/release/ichseg demo"


def test_work_argv_makes_a_relative_work_folder_absolute(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    absolute = str((tmp_path / "w").resolve())
    assert ship.work_argv(["--work", "w", "--models", "w"], "w") == ["--work", absolute, "--models", "w"]
    assert ship.work_argv(["--work=w", "--report-only"], "w") == [f"--work={absolute}", "--report-only"]


def test_run_records_are_rewritten(tmp_path):
    rec = {"command": f"python -m ichseg_training.train_unet --data {WORK}/phantoms --ckpt-dir {WORK}/ckpt/unet",
           "args": {"data": f"{WORK}/phantoms", "ckpt_dir": f"{WORK}/ckpt/unet", "epochs": 15, "masks": None},
           "split": f"{WORK}/split.json", "history": [{"epoch": 0, "loss": 0.5}]}
    C.write_json(C.record_path(tmp_path / ship.UNET_FILE), rec)
    ship.portable_records(tmp_path, WORK, EXE)
    got = json.loads(C.record_path(tmp_path / ship.UNET_FILE).read_text())
    assert got["command"] == "python -m ichseg_training.train_unet --data $DATA/phantoms --ckpt-dir $DATA/ckpt/unet"
    assert got["args"] == {"data": "$DATA/phantoms", "ckpt_dir": "$DATA/ckpt/unet", "epochs": 15, "masks": None}
    assert got["split"] == "$DATA/split.json" and got["history"] == rec["history"]
    assert WORK not in C.record_path(tmp_path / ship.UNET_FILE).read_text()
