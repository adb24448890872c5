"""The trainers on tiny phantoms: one short epoch each, then the exported ONNX is checked
(onnxruntime loads and runs it, METHOD.md section 8 metadata, classifier taps are graph tensors
at the right strides), with the run record next to it.  Skipped without torch / onnx /
onnxruntime (CI installs only numpy, scipy, nibabel and pytest)."""
import json
import os
import pathlib

import numpy as np
import pytest

torch = pytest.importorskip("torch")
onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")
pytest.importorskip("torchvision")

from ichseg_training import classifiers as CL  # noqa: E402
from ichseg_training import common as C  # noqa: E402
from ichseg_training import datasets as D  # noqa: E402
from ichseg_training import evaluate as EV  # noqa: E402
from ichseg_training import phantom as P  # noqa: E402
from ichseg_training import train_classifier, train_unet  # noqa: E402

SIZE = 64


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """Six 64x64 phantoms (8-10 slices) and a split with bleeding in train and val."""
    root = tmp_path_factory.mktemp("tiny")
    P.write_dataset(root / "data", count=6, seed=5, size=SIZE, slices_min=8, slices_max=10)
    ds = D.BCIHM(root / "data")
    split = D.patient_split(ds.patients, ds.positive(), seed=0)
    D.write_split(root / "split.json", split, seed=0)
    pos = ds.positive()
    assert any(pos[p] for p in split["train"]) and any(pos[p] for p in split["val"])
    return root


def _meta(model):
    return {p.key: p.value for p in model.metadata_props}


def _tensor_shapes(path, names, feed):
    """Runs the model with ``names`` added as graph outputs; returns {name: shape}."""
    m = onnx.load(str(path))
    for n in names:
        m.graph.output.append(onnx.helper.make_tensor_value_info(n, onnx.TensorProto.FLOAT, None))
    sess = ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"])
    outs = sess.run(names, feed)
    return {n: o.shape for n, o in zip(names, outs)}


@pytest.mark.parametrize("arch", ["slim34", "slim50"])
def test_train_classifier_one_epoch(tiny, arch):
    out = tiny / f"{arch}.onnx"
    ckpt = tiny / f"{arch}.ckpt"
    train_classifier.main(["--data", str(tiny / "data"), "--split", str(tiny / "split.json"), "--arch", arch,
                           "--width", "4", "--size", str(SIZE), "--epochs", "1", "--batch", "16",
                           "--seed", "3", "--threads", "1", "--out", str(out), "--ckpt-dir", str(ckpt)]
                          + (["--skull-strip-mm", "1.5"] if arch == "slim50" else []))
    model = onnx.load(str(out))
    onnx.checker.check_model(model)
    meta = _meta(model)
    assert meta["ichseg.kind"] == "classifier"
    assert meta["ichseg.input_size"] == f"{SIZE}x{SIZE}"
    assert meta["ichseg.channels"] == "3" and meta["ichseg.window"] == "50,130"
    assert meta["ichseg.bleed_index"] == "1" and meta["ichseg.arch"] == arch
    # the input contract of classifiers trained on `ichseg skull-strip` data
    assert meta.get("ichseg.skull_strip_mm") == ("1.5" if arch == "slim50" else None)
    taps = dict(kv.split("=", 1) for kv in meta["ichseg.taps"].split(","))
    assert sorted(taps) == ["layer1", "layer2"]
    relu = "relu_1" if arch == "slim34" else "relu_2"  # last Relu of a BasicBlock / Bottleneck
    assert taps["layer1"] == f"/layer1/layer1.2/{relu}/Relu_output_0"
    assert taps["layer2"] == f"/layer2/layer2.3/{relu}/Relu_output_0"
    assert meta["ichseg.deep_tap"] == f"/layer4/layer4.2/{relu}/Relu_output_0"
    produced = {o for n in model.graph.node for o in n.output}
    assert set(taps.values()) | {meta["ichseg.deep_tap"]} <= produced

    x = np.random.default_rng(0).random((2, 3, SIZE, SIZE), dtype=np.float32)
    sess = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    assert [i.name for i in sess.get_inputs()] == ["image"]
    assert sess.run(None, {"image": x})[0].shape == (2, 2)
    shapes = _tensor_shapes(out, [taps["layer1"], taps["layer2"], meta["ichseg.deep_tap"]], {"image": x})
    assert shapes[taps["layer1"]][2:] == (SIZE // 4, SIZE // 4)  # stride 4
    assert shapes[taps["layer2"]][2:] == (SIZE // 8, SIZE // 8)  # stride 8
    assert shapes[meta["ichseg.deep_tap"]][2:] == (SIZE // 32, SIZE // 32)

    rec = json.loads(C.record_path(out).read_text())
    assert rec["seed"] == 3 and rec["epochs_run"] == 1 and rec["arch"] == arch
    assert rec["command"].startswith("python -m ichseg_training.train_classifier ")
    assert rec["onnx"]["sha256"] == C.sha256(out)
    assert (ckpt / "best.pt").exists() and (ckpt / "last.pt").exists() and (ckpt / "train.log").exists()
    # the evaluator (onnxruntime, preprocessing from the metadata) agrees with the trainer's
    # own validation pass on the exported weights
    ev = EV.eval_classifier(out, tiny / "data", tiny / "split.json", subset="val")
    assert ev["n"] == rec["slices"]["val"]
    assert ev["accuracy"] == pytest.approx(rec["val_scores"]["accuracy"])
    if not np.isnan(ev["auc"]):
        assert ev["auc"] == pytest.approx(rec["val_scores"]["auc"], abs=1e-6)


def test_a_skull_strip_margin_out_of_range_stops_before_training(tiny):
    with pytest.raises(SystemExit):
        train_classifier.main(["--data", str(tiny / "data"), "--arch", "slim34", "--skull-strip-mm", "-2",
                               "--out", str(tiny / "never.onnx")])
    assert not (tiny / "never.onnx").exists()
    with pytest.raises(ValueError, match="skull_strip_mm"):
        CL.classifier_metadata((64, 64), {"layer1": "a"}, "d", skull_strip_mm=51)


@pytest.mark.parametrize("arch", ["resnet34", "densenet121", "vgg16"])
def test_taps_of_torchvision_architectures(tmp_path, arch):
    """Untrained torchvision models: the taps are found in the graph and have strides 4 and 8
    (ResNet, DenseNet blocks 1-2; VGG stages 2-3 before pooling: strides 2 and 4)."""
    torch.manual_seed(0)
    model = CL.build(arch)
    out = tmp_path / f"{arch}.onnx"
    _, meta = CL.export(model, arch, out, (SIZE, SIZE))
    taps = dict(kv.split("=", 1) for kv in meta["ichseg.taps"].split(","))
    x = np.zeros((1, 3, SIZE, SIZE), np.float32)
    shapes = _tensor_shapes(out, [taps["layer1"], taps["layer2"], meta["ichseg.deep_tap"]], {"image": x})
    s1, s2 = {"resnet34": (4, 8), "densenet121": (4, 8), "vgg16": (2, 4)}[arch]
    assert shapes[taps["layer1"]][2:] == (SIZE // s1, SIZE // s1)
    assert shapes[taps["layer2"]][2:] == (SIZE // s2, SIZE // s2)
    assert shapes[meta["ichseg.deep_tap"]][2] in (SIZE // 16, SIZE // 32)


def test_train_unet_one_epoch_and_resume(tiny):
    out = tiny / "unet.onnx"
    ckpt = tiny / "unet.ckpt"
    common = ["--data", str(tiny / "data"), "--split", str(tiny / "split.json"),
              "--masks", str(tiny / "data" / "masks"), "--size", str(SIZE), "--base-width", "4",
              "--depth", "3", "--batch", "8", "--seed", "2", "--threads", "1", "--out", str(out), "--ckpt-dir", str(ckpt)]
    train_unet.main(common + ["--epochs", "1"])
    model = onnx.load(str(out))
    onnx.checker.check_model(model)
    meta = _meta(model)
    assert meta["ichseg.kind"] == "segmenter"
    assert meta["ichseg.input_size"] == f"{SIZE}x{SIZE}"
    assert meta["ichseg.channels"] == "1" and meta["ichseg.window"] == "50,130"
    assert meta["ichseg.bleed_index"] == "1"
    sess = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    y = sess.run(None, {"image": np.zeros((3, 1, SIZE, SIZE), np.float32)})[0]
    assert y.shape == (3, 2, SIZE, SIZE)
    rec = json.loads(C.record_path(out).read_text())
    assert rec["epochs_run"] == 1 and rec["seed"] == 2
    assert rec["masks"] == str(tiny / "data" / "masks")
    assert set(rec["val_scores_model_resolution"]) >= {"miou", "dice", "iou_hemorrhage"}
    # resume: one more epoch on top of the checkpoint
    train_unet.main(common + ["--epochs", "2", "--resume"])
    rec = json.loads(C.record_path(out).read_text())
    assert [h["epoch"] for h in rec["history"]] == [0, 1]
    # the time budget of a resumed run counts the epochs before it: with the first two recorded
    # as an hour each, a 90-minute budget ends the run after the next epoch, not at 4
    last = torch.load(ckpt / "last.pt", weights_only=False)
    for h in last["history"]:
        h["seconds"] = 3600.0
    torch.save(last, ckpt / "last.pt")
    train_unet.main(common + ["--epochs", "4", "--resume", "--max-minutes", "90"])
    rec = json.loads(C.record_path(out).read_text())
    assert [h["epoch"] for h in rec["history"]] == [0, 1, 2]


def test_train_unet_with_site_weights(tiny, tmp_path):
    """`--site-weight`: the weighted CE trains (finite loss) and the run record keeps the flag."""
    out = tmp_path / "unet.onnx"
    train_unet.main(["--data", str(tiny / "data"), "--split", str(tiny / "split.json"), "--size", str(SIZE),
                     "--base-width", "4", "--depth", "3", "--batch", "8", "--crop", "32", "--seed", "2",
                     "--threads", "1", "--epochs", "1", "--site-weight", "4", "--out", str(out)])
    rec = json.loads(C.record_path(out).read_text())
    assert np.isfinite(rec["history"][0]["train_ce"]) and "--site-weight 4" in rec["command"]


def test_train_unet_with_appearance_augmentation(tiny, tmp_path):
    """`--appearance` trains (finite loss), is recorded, and refuses `--no-augment`."""
    out = tmp_path / "unet.onnx"
    common = ["--data", str(tiny / "data"), "--split", str(tiny / "split.json"), "--size", str(SIZE),
              "--base-width", "4", "--depth", "3", "--batch", "8", "--crop", "32", "--seed", "2",
              "--threads", "1", "--epochs", "1", "--out", str(out)]
    train_unet.main(common + ["--appearance"])
    rec = json.loads(C.record_path(out).read_text())
    assert np.isfinite(rec["history"][0]["train_ce"]) and "--appearance" in rec["command"]
    with pytest.raises(SystemExit):
        train_unet.main(common + ["--appearance", "--no-augment"])


def test_appearance_varies_the_image_only_within_its_ranges():
    from ichseg_training import augment

    x = torch.rand((8, 1, 32, 32), generator=torch.Generator().manual_seed(0))
    a = augment.Appearance()
    y1, y2 = a(x, torch.Generator().manual_seed(5)), a(x, torch.Generator().manual_seed(5))
    assert torch.equal(y1, y2) and y1.shape == x.shape  # the seed decides everything
    assert float(y1.min()) >= 0.0 and float(y1.max()) <= 1.0
    changed = (y1 - x).abs().flatten(1).amax(1) > 0
    assert 0 < int(changed.sum()) <= 8
    assert torch.equal(augment.Appearance(p=0.0)(x, torch.Generator().manual_seed(5)), x)

    flat = torch.full((64, 1, 32, 32), 0.5)
    only = dict(p=1.0, contrast=(1.0, 1.0), p_blur=0.0, p_sharpen=0.0)
    noisy = augment.Appearance(brightness=0.0, noise=(0.05, 0.05), **only)(flat, torch.Generator().manual_seed(1))
    assert abs(float(noisy.std()) - 0.05) < 0.005 and abs(float(noisy.mean()) - 0.5) < 0.005
    shifted = augment.Appearance(brightness=0.1, noise=(0.0, 0.0), **only)(flat, torch.Generator().manual_seed(1))
    offsets = shifted.flatten(1).mean(1) - 0.5
    assert float(offsets.abs().max()) <= 0.1 + 1e-6 and float(offsets.std()) > 0.02

    # an edge: the soft kernel lowers its step, the sharp one overshoots it
    edge = torch.zeros((4, 1, 16, 16))
    edge[..., 8:] = 0.6
    plain = dict(p=1.0, brightness=0.0, contrast=(1.0, 1.0), noise=(0.0, 0.0))
    soft = augment.Appearance(p_blur=1.0, p_sharpen=0.0, **plain)(edge, torch.Generator().manual_seed(2))
    sharp = augment.Appearance(p_blur=0.0, p_sharpen=1.0, **plain)(edge, torch.Generator().manual_seed(2))
    step = lambda t: float((t[..., 8] - t[..., 7]).mean())  # noqa: E731
    assert step(soft) < 0.6 - 0.05 and float(sharp[..., 8].mean()) > 0.6 + 0.05 and float(sharp[..., 7].mean()) < 0.0 + 1e-6


def test_masks_must_match_the_ct(tiny, tmp_path):
    import nibabel as nib

    (tmp_path / "masks").mkdir()
    for p in range(1, 7):
        nib.save(nib.Nifti1Image(np.zeros((8, 8, 3), np.uint8), np.eye(4)), str(tmp_path / "masks" / f"{p:03d}.nii.gz"))
    with pytest.raises(ValueError, match="differs from the CT"):
        C.load_slices(D.BCIHM(tiny / "data"), [1], SIZE, masks_dir=tmp_path / "masks")


def test_auc_and_scores():
    assert C.auc([0.1, 0.4, 0.35, 0.8], [0, 0, 1, 1]) == pytest.approx(0.75)
    assert C.auc([0.5, 0.5], [0, 1]) == pytest.approx(0.5)
    assert np.isnan(C.auc([0.1, 0.2], [1, 1]))
    s = C.segmentation_scores(np.array([[1, 1, 0, 0]]), np.array([[1, 0, 0, 0]]))
    assert s["iou_hemorrhage"] == pytest.approx(0.5) and s["dice"] == pytest.approx(2 / 3)
    assert s["iou_background"] == pytest.approx(2 / 3) and s["miou"] == pytest.approx(7 / 12)


def test_same_seed_same_model(tiny, tmp_path):
    """With one thread, a seeded run repeats bit for bit (weights, so the ONNX file)."""
    digests = {}
    for name, module, extra in (
        ("c", train_classifier, ["--arch", "slim34", "--width", "4", "--batch", "16", "--neg-fraction", "0.5"]),
        ("u", train_unet, ["--base-width", "4", "--depth", "3", "--batch", "4", "--crop", "32"]),
    ):
        for run in (1, 2):
            out = tmp_path / f"{name}{run}.onnx"
            module.main(["--data", str(tiny / "data"), "--split", str(tiny / "split.json"), "--size", str(SIZE),
                         "--epochs", "2", "--seed", "7", "--threads", "1", "--out", str(out),
                         "--ckpt-dir", str(tmp_path / f"{name}{run}.ckpt"), *extra])
            digests.setdefault(name, []).append(C.sha256(out))
    assert digests["c"][0] == digests["c"][1]
    assert digests["u"][0] == digests["u"][1]



def test_a_resumed_run_is_the_run_that_never_stopped(tiny, tmp_path):
    """Both trainers, stopped after one epoch (by the time budget) and continued with --resume,
    end with the weights
    of a run that never stopped: ``last.pt`` holds the model, optimiser, scheduler and both
    random generators (common.save_state / resume_state)."""
    for name, module, extra in (
        ("c", train_classifier, ["--arch", "slim34", "--width", "4", "--batch", "16", "--neg-fraction", "0.5"]),
        ("u", train_unet, ["--base-width", "4", "--depth", "3", "--batch", "4", "--crop", "32"]),
    ):
        def run(tag, epochs, *more):
            out = tmp_path / f"{name}{tag}.onnx"
            module.main(["--data", str(tiny / "data"), "--split", str(tiny / "split.json"), "--size", str(SIZE),
                         "--epochs", str(epochs), "--seed", "7", "--threads", "1", "--out", str(out),
                         "--ckpt-dir", str(tmp_path / f"{name}{tag}.ckpt"), *extra, *more])
            return out

        straight = run("straight", 3)
        run("stopped", 3, "--max-minutes", "1e-9")  # stops after its first epoch, as if killed
        resumed = run("stopped", 3, "--resume")
        assert [h["epoch"] for h in json.loads(C.record_path(resumed).read_text())["history"]] == [0, 1, 2]
        assert C.sha256(resumed) == C.sha256(straight), name

def test_ship_smoke_makes_both_unets(tmp_path):
    """`ship --smoke`: every step, the weak one included, on six tiny phantoms (needs a built
    ichseg binary; about 20 s)."""
    exe = pathlib.Path(__file__).resolve().parents[2] / "target" / "release" / "ichseg"
    if not exe.is_file():
        pytest.skip("no ichseg binary in target/release (cargo build --release)")
    from ichseg_training import ship
    work, models = tmp_path / "work", tmp_path / "models"
    assert ship.main(["--work", str(work), "--models", str(models), "--smoke", "--ichseg", str(exe)]) == 0
    doc = json.loads((work / "ship.json").read_text())
    assert {"pseudo-label", "train unet_weak", "eval unet_weak test"} <= {s["step"] for s in doc["steps"]}
    assert (models / "unet_weak.onnx").exists() and "pseudo_train" in doc["scores"]
    # TH is chosen and Table 4 scored on the final masks, after the bone cut, the blood-density
    # cut and the small-lesion filter
    rows = [r["row"].strip() for r in doc["scores"]["ablation_test"]["runs"][0]["rows"]]
    assert rows[-3:] == [f"+ bone cut (> {ship.MAX_HU} HU)", f"+ blood-density cut (< {ship.MIN_HU} HU)",
                         f"+ small-lesion filter (< {ship.MIN_LESION_ML} mL)"]
    pseudo_cmd = next(s["command"] for s in doc["steps"] if s["step"] == "pseudo-label")
    assert f"--min-hu {ship.MIN_HU} --min-lesion-ml {ship.MIN_LESION_ML}" in pseudo_cmd
    # the dCRF's settings are chosen on val at the chosen TH, used everywhere after and shipped
    crf = doc["scores"]["pseudo_crf"]
    assert len(doc["scores"]["ablation_val_crf"]["runs"]) == 6
    assert " ".join(ship.crf_flags(crf)) in pseudo_cmd
    for f, *_ in ship.CLASSIFIERS:
        meta = _meta(onnx.load(str(models / f)))
        assert float(meta["ichseg.pseudo.crf_confidence"]) == crf["label_confidence"]
        assert float(meta["ichseg.pseudo.min_hu"]) == ship.MIN_HU
        assert float(meta["ichseg.pseudo.crf_bilateral_compat"]) == crf["bilateral_compat"]
    text = (models / "MODELS.md").read_text()
    assert "`ichseg.pseudo.crf_confidence`" in text
    # each U-Net carries the small-lesion filter chosen on val, and MODELS.md shows the choice
    for f in ("unet.onnx", "unet_weak.onnx"):
        rec = json.loads((models / f.replace(".onnx", ".train.json")).read_text())
        chosen = rec["segment_filter"]["chosen"]
        assert float(rec["metadata"]["ichseg.segment.min_lesion_ml"]) == chosen
        assert f"`{f}`, chosen **{chosen:g} mL**" in text
    assert "## Small-lesion filter of the U-Nets" in text
    assert "## Weakly supervised U-Net" in text and "`unet_weak.onnx`" in text
    # MODELS.md and the run records name the work folder $DATA, the binary relative to the repository
    def machine_free(text):
        return str(work.resolve()) not in text and "--work $DATA" in text and "--ichseg target/release/ichseg" in text
    assert machine_free(text)
    record = C.record_path(models / "unet.onnx").read_text()
    assert str(work.resolve()) not in record and "$DATA/phantoms" in record
    # the report can be rewritten from the records alone
    assert ship.main(["--work", str(work), "--models", str(models), "--report-only"]) == 0
    assert "## Weakly supervised U-Net" in (models / "MODELS.md").read_text()
    assert machine_free((models / "MODELS.md").read_text())
    # redoing the weak part keeps the provenance of the models it reuses, and makes its pseudo
    # masks again (an earlier run's masks, perhaps of other settings, are not resumed from)
    (models / "unet_weak.train.json").unlink()
    stale = work / "pseudo" / "stale.nii.gz"
    stale.write_bytes(b"")
    args = ["--work", str(work), "--models", str(models), "--smoke", "--ichseg", str(exe), "--skip-existing"]
    assert ship.main(args) == 0
    assert not stale.exists() and any((work / "pseudo").glob("*.nii.gz"))
    doc = json.loads((work / "ship.json").read_text())
    steps = [s["step"] for s in doc["steps"]]
    assert steps.count("train slim34") == 1 and steps.count("train unet_weak") == 1 and doc["earlier_run"]
    assert "This run reused (`--skip-existing`)" in (models / "MODELS.md").read_text()
    # `--resume` (an interrupted run) keeps the pseudo masks of the same settings, since
    # pseudo-label skips the masks there are, and lets the trainings go on from their checkpoints
    (models / "unet_weak.train.json").unlink()
    kept = work / "pseudo" / "kept.nii.gz"
    kept.write_bytes(b"")
    # ... and the phantom generator goes on too (its CSV is written last: as if it had been stopped)
    (work / "phantoms" / "hemorrhage_diagnosis_raw_ct.csv").unlink()
    assert ship.main(args[:-1] + ["--resume"]) == 0
    doc = json.loads((work / "ship.json").read_text())
    assert kept.exists() and "--resume" in next(s["command"] for s in doc["steps"] if s["step"] == "train unet_weak")
    assert "--resume" in next(s["command"] for s in doc["steps"] if s["step"] == "phantoms")
    assert (work / "phantoms" / "hemorrhage_diagnosis_raw_ct.csv").exists()
    # ... and keeps the scoring runs of the same command, classifier graphs, data and split (the
    # classifiers' tuned metadata was written since: only their graphs count)
    reused = {s["step"] for s in doc["steps"] if s.get("reused")}
    assert {"ablate val", "ablate val crf", "ablate test", "ablate shifted"} <= reused
    # with the classifiers trained before, the weak side's scoring and pseudo-labelling run on the
    # cores the fully supervised U-Net's training leaves idle, while it trains
    (models / "unet.train.json").unlink()
    (models / "unet_weak.train.json").unlink()
    assert ship.main(args) == 0
    doc = json.loads((work / "ship.json").read_text())
    cmd = {s["step"]: s["command"] for s in doc["steps"] if not s.get("carried")}
    assert not any(s.get("reused") for s in doc["steps"])  # without --resume every scoring runs
    assert "train unet" in cmd and "train slim34" not in cmd and (models / "unet.train.json").exists()
    spare = os.cpu_count() - 1
    if spare > 0:
        assert f"--threads {spare}" in cmd["ablate val"] and f"--threads {spare}" in cmd["pseudo-label"]
        assert "--threads" not in (work / "pseudo_settings.json").read_text()  # resuming ignores it


def test_ship_smoke_trains_the_classifiers_on_phantoms_of_their_own_profile(tmp_path):
    """`ship --smoke --classifier-profile wide --skull-strip-mm 0`: the classifiers train on
    skull-stripped `wide` phantoms of their own (same seed, count and split) and are scored, like
    the U-Nets, on the standard ones."""
    exe = pathlib.Path(__file__).resolve().parents[2] / "target" / "release" / "ichseg"
    if not exe.is_file():
        pytest.skip("no ichseg binary in target/release (cargo build --release)")
    from ichseg_training import ship
    work, models = tmp_path / "work", tmp_path / "models"
    assert ship.main(["--work", str(work), "--models", str(models), "--smoke", "--ichseg", str(exe),
                      "--classifier-profile", "wide", "--skull-strip-mm", "0", "--shifted-count", "0"]) == 0
    doc = json.loads((work / "ship.json").read_text())
    cmd = {s["step"]: s["command"] for s in doc["steps"]}
    assert {"phantoms wide", "split wide", "skull-strip wide", "skull-strip"} <= set(cmd)
    assert "--profile wide" in cmd["phantoms wide"] and "--profile standard" in cmd["phantoms"]
    wide = work.resolve() / "wide"
    for arch in ("slim34", "slim50"):
        assert f"--data {wide / 'stripped'} --split {wide / 'split.json'}" in cmd[f"train {arch}"]
        assert f"--data {work.resolve() / 'stripped'} --split {work.resolve() / 'split.json'}" in cmd[f"eval {arch}"]
    record = json.loads(C.record_path(models / "classifier_slim34.onnx").read_text())
    assert "profile wide" in json.dumps(record) and "margin 0 mm" in json.dumps(record)
    assert f"--data {work.resolve() / 'phantoms'} " in cmd["train unet"]


def test_ship_smoke_with_two_unet_seeds_ships_the_better_on_val(tmp_path):
    """`ship --smoke --unet-seeds 1,2`: each U-Net trains once per seed, each is scored on val,
    and the better one (a tie: the first) is shipped with its own run record."""
    exe = pathlib.Path(__file__).resolve().parents[2] / "target" / "release" / "ichseg"
    if not exe.is_file():
        pytest.skip("no ichseg binary in target/release (cargo build --release)")
    from ichseg_training import ship
    work, models = tmp_path / "work", tmp_path / "models"
    assert ship.main(["--work", str(work), "--models", str(models), "--smoke", "--ichseg", str(exe),
                      "--unet-seeds", "1,2", "--shifted-count", "0"]) == 0
    doc = json.loads((work / "ship.json").read_text())
    steps = [s["step"] for s in doc["steps"]]
    for stem in ("unet", "unet_weak"):
        assert {f"train {stem} seed 1", f"train {stem} seed 2", f"eval {stem}_s1 val", f"eval {stem}_s2 val"} <= set(steps)
        chosen = doc["scores"][f"{stem}_seeds"]
        val = {seed: doc["scores"][f"{stem}_s{seed}_val"]["overall"]["miou"] for seed in (1, 2)}
        assert chosen["chosen"] == ship.best_seed(val)
        record = json.loads(C.record_path(models / f"{stem}.onnx").read_text())
        assert record["seed"] == chosen["chosen"]
        trained = json.loads(C.record_path(work / "seeds" / f"{stem}_s{chosen['chosen']}.onnx").read_text())
        assert record["started"] == trained["started"] and record["seed"] == trained["seed"]


def test_ship_smoke_with_skull_stripped_classifiers(tmp_path):
    """`ship --smoke --skull-strip-mm 0`: the classifiers train and are scored on a stripped copy
    and carry the contract; pseudo-labelling and the ablation read the phantoms themselves."""
    exe = pathlib.Path(__file__).resolve().parents[2] / "target" / "release" / "ichseg"
    if not exe.is_file():
        pytest.skip("no ichseg binary in target/release (cargo build --release)")
    from ichseg_training import ship
    work, models = tmp_path / "work", tmp_path / "models"
    args = ["--work", str(work), "--models", str(models), "--smoke", "--ichseg", str(exe), "--skull-strip-mm", "0"]
    assert ship.main(args) == 0
    doc = json.loads((work / "ship.json").read_text())
    assert doc["skull_strip_mm"] == 0
    steps = {s["step"]: s["command"] for s in doc["steps"]}
    assert "skull-strip --dataset $DATA/phantoms -o $DATA/stripped" in steps["skull-strip"].replace(str(work), "$DATA")
    assert "skull-strip shifted" in steps
    train = steps["train slim34"].replace(str(work), "$DATA")
    assert "--data $DATA/stripped" in train and "--skull-strip-mm 0" in train
    assert "--dataset " + str(work / "phantoms") in steps["pseudo-label"]
    assert str(work / "shifted_stripped") in steps["eval slim50 shifted"]
    for f, *_ in ship.CLASSIFIERS:
        meta = _meta(onnx.load(str(models / f)))
        assert meta["ichseg.skull_strip_mm"] == "0" and "intracranial mask" in meta["ichseg.trained_on"]
    with pytest.raises(SystemExit):
        ship.main(["--work", str(work), "--models", str(models), "--smoke", "--skull-strip-mm", "-1"])


def test_memory_format_avoids_the_channels_last_crash():
    """slim34 width 8 has a stride-2 1x1 convolution on 8 channels (layer2's downsample): its
    channels-last CPU backward crashes PyTorch from 46x46 maps, so input 192 (48x48) trains in
    NCHW while the shipped 160 (40x40) and wider models keep channels-last. With fewer than 8
    channels it crashes on an AVX2-only CPU from 8x8 maps (`ship --smoke`'s width 4 at 64), so
    those train in NCHW at any size."""
    cpu, logs = torch.device("cpu"), []
    slim = CL.build("slim34", 8)
    assert C.memory_format(slim, cpu, False, (192, 192), logs.append) == torch.contiguous_format
    assert "layer2.0.downsample.0" in logs[0] and "48x48" in logs[0] and "with 8 input" in logs[0]
    assert C.memory_format(slim, cpu, False, (160, 160), logs.append) == torch.channels_last
    assert C.memory_format(CL.build("slim34", 16), cpu, False, (384, 384), logs.append) == torch.channels_last
    assert C.memory_format(slim, cpu, True, (160, 160), logs.append) == torch.contiguous_format
    assert len(logs) == 1
    assert C.memory_format(CL.build("slim34", 4), cpu, False, (64, 64), logs.append) == torch.contiguous_format
    assert "with 4 input" in logs[1] and "16x16" in logs[1]
    assert slim.training  # the dry forward pass leaves the mode as it was
    # the model the check passed trains a step at 192 without crashing (NCHW)
    x = torch.rand(4, 3, 192, 192)
    torch.nn.functional.cross_entropy(slim(x), torch.tensor([0, 1, 0, 1])).backward()
