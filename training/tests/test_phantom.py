"""Tests of the synthetic head-CT phantom generator (numpy, scipy, nibabel only)."""
import csv
import gzip
import hashlib
import pathlib
import subprocess
import sys

import nibabel as nib
import numpy as np
import pytest
from scipy import ndimage

from ichseg_training import phantom as P
from ichseg_training import variation as V

BCIHM_COLUMNS = ["PatientNumber", "SliceNumber", "Intraventricular", "Intraparenchymal",
                 "Subarachnoid", "Epidural", "Subdural", "No_Hemorrhage", "Fracture_Yes_No"]


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    out = tmp_path_factory.mktemp("phantoms")
    P.write_dataset(out, count=3, seed=11, size=96)
    return out


@pytest.fixture(scope="module")
def bleeding_volume():
    """A 256^2 volume with hemorrhage (first bleeding index of seed 0)."""
    for i in range(20):
        rng = np.random.default_rng([0, i, 0x1C45E6])
        nz = int(rng.integers(24, 37))
        if P._draw_params(rng, 256, nz)["sites"]:
            ph = P.generate(i, 0, size=256)
            if ph.mask.any():
                return ph
    pytest.fail("no bleeding volume among the first 20")


def test_deterministic_bytes(tmp_path):
    a = P.generate(5, 3, size=64)
    b = P.generate(5, 3, size=64)
    assert a.hu.tobytes() == b.hu.tobytes()
    assert a.mask.tobytes() == b.mask.tobytes()
    assert np.array_equal(a.labels, b.labels)
    c = P.generate(5, 4, size=64)
    assert a.hu.shape != c.hu.shape or a.hu.tobytes() != c.hu.tobytes()
    # the files on disk too
    digests = []
    for run in ("r1", "r2"):
        P.write_dataset(tmp_path / run, count=1, seed=3, size=64, first=5)
        digests.append([hashlib.sha256(f.read_bytes()).hexdigest()
                        for f in sorted((tmp_path / run).rglob("*")) if f.is_file()])
    assert digests[0] == digests[1]


def test_csv_columns_and_rows(dataset):
    with open(dataset / "hemorrhage_diagnosis_raw_ct.csv", newline="") as fh:
        rows = list(csv.reader(fh))
    assert rows[0] == BCIHM_COLUMNS
    body = [[int(x) for x in r] for r in rows[1:]]
    for pid in (1, 2, 3):
        mine = [r for r in body if r[0] == pid]
        img = nib.load(dataset / "ct_scans" / f"{pid:03d}.nii.gz")
        assert [r[1] for r in mine] == list(range(1, img.shape[2] + 1))  # 1-based, one per slice
        mask = np.asarray(nib.load(dataset / "masks" / f"{pid:03d}.nii.gz").dataobj)
        for r in mine:
            assert all(v in (0, 1) for v in r[2:])
            bleeding = any(r[2:7])
            assert r[7] == int(not bleeding)
            assert bleeding == bool(mask[:, :, r[1] - 1].any())


def test_nifti_geometry(dataset):
    for pid in (1, 2, 3):
        ct = nib.load(dataset / "ct_scans" / f"{pid:03d}.nii.gz")
        m = nib.load(dataset / "masks" / f"{pid:03d}.nii.gz")
        h = ct.header
        assert h.get_data_dtype() == np.int16
        raw_hdr = nib.Nifti1Header.from_fileobj(gzip.open(dataset / "ct_scans" / f"{pid:03d}.nii.gz"))
        assert float(raw_hdr["scl_slope"]) == 1.0 and float(raw_hdr["scl_inter"]) == -1024.0
        assert ct.dataobj.slope == 1.0 and ct.dataobj.inter == -1024.0
        zooms = h.get_zooms()
        assert zooms[0] == pytest.approx(zooms[1])
        assert zooms[2] == pytest.approx(5.0)
        assert 0.40 * 512 / 96 - 1e-4 <= zooms[0] <= 0.50 * 512 / 96 + 1e-4
        assert 24 <= ct.shape[2] <= 36 and ct.shape[:2] == (96, 96)
        assert int(h["sform_code"]) == 1 and int(h["qform_code"]) == 1
        assert np.allclose(ct.affine, ct.get_qform(), atol=1e-4)
        assert np.allclose(np.abs(np.diag(ct.affine)[:3]), zooms[:3], atol=1e-5)
        assert m.shape == ct.shape and np.allclose(m.affine, ct.affine)
        assert m.get_data_dtype() == np.uint8
        raw = np.asarray(ct.dataobj.get_unscaled())
        hu = ct.get_fdata()
        assert np.array_equal(hu, raw.astype(np.float64) - 1024.0)
        assert hu.min() >= -1024 and hu.max() <= 3071
        assert set(np.unique(np.asarray(m.dataobj))) <= {0, 1}


def test_nifti_round_trip(tmp_path):
    ph = P.generate(2, 9, size=64)
    P.save_nifti(ph, tmp_path / "c.nii.gz", tmp_path / "m.nii.gz")
    assert np.array_equal(nib.load(tmp_path / "c.nii.gz").get_fdata().astype(np.int16), ph.hu)
    assert np.array_equal(np.asarray(nib.load(tmp_path / "m.nii.gz").dataobj), ph.mask)


def test_mask_label_consistency(bleeding_volume):
    ph = bleeding_volume
    assert ph.mask.dtype == np.uint8 and ph.hu.dtype == np.int16
    assert np.array_equal(ph.mask, (ph.subtype_map > 0).astype(np.uint8))
    for k in range(ph.hu.shape[2]):
        present = set(np.unique(ph.subtype_map[:, :, k])) - {0}
        assert {i + 1 for i in range(5) if ph.labels[k, i]} == present
        assert ph.labels[k].any() == ph.mask[:, :, k].any()
    rows = ph.csv_rows(7)
    assert [r[1] for r in rows] == list(range(1, ph.hu.shape[2] + 1))
    for r, lab in zip(rows, ph.labels):
        assert r[2:7] == [int(x) for x in lab] and r[7] == int(not lab.any())
    # bleeding spans a realistic number of slices per site (1-8), tapering (not a cylinder)
    n_bleeding = int(ph.labels.any(axis=1).sum())
    assert 1 <= n_bleeding <= 8 * len(ph.params["sites"])


def _core(mask, it):
    return ndimage.binary_erosion(mask, iterations=it) if it else mask


def test_hu_ranges_per_tissue(bleeding_volume):
    ph = bleeding_volume
    hu, tis = ph.hu.astype(np.float64), ph.tissue
    it = 2  # erode (in plane) past blur and partial volume
    core = lambda code: np.stack([_core(tis[:, :, k] == code, it) for k in range(tis.shape[2])], -1)

    def med(code):
        m = core(code)
        assert m.sum() > 50, P.__name__ + f": too few voxels of tissue {code}"
        return float(np.median(hu[m]))

    assert 20.0 <= med(P.WM) <= 32.0
    assert 32.0 <= med(P.GM) <= 48.0
    assert med(P.GM) > med(P.WM) + 4.0
    assert -3.0 <= med(P.CSF) <= 18.0
    assert med(P.BONE) >= 600.0
    assert med(P.AIR) <= -900.0
    bone = hu[core(P.BONE)]
    assert np.percentile(bone, 95) <= 2000.0
    blood = med(P.BLOOD)
    assert 40.0 <= blood <= 95.0 and blood > med(P.WM) + 15.0
    # noise: standard deviation inside large white-matter areas 3-8 HU (+ texture)
    nz = tis.shape[2]
    sds = []
    for k in range(nz // 3, 2 * nz // 3):
        wm = _core(tis[:, :, k] == P.WM, 4)
        if wm.sum() > 200:
            sds.append(float(np.std(hu[:, :, k][wm])))
    assert sds and 2.5 <= float(np.median(sds)) <= 10.0, sds
    # outside the head
    assert np.median(hu[0:3, 0:3, :]) <= -950.0


def test_calcifications_and_skull_base_present():
    found_calc = found_sinus = False
    for i in range(4):
        ph = P.generate(i, 1, size=128)
        found_calc |= bool((ph.tissue == P.CALC).any())
        low = ph.tissue[:, :, : ph.hu.shape[2] // 3]
        found_sinus |= bool(((low == P.AIR) & (ph.hu[:, :, : ph.hu.shape[2] // 3] < -500)).any())
    assert found_calc and found_sinus


def test_bleed_fraction_about_half():
    flags = []
    kinds = set()
    for i in range(20):
        ph = P.generate(i, 2024, size=64, slices_min=24, slices_max=28)
        flags.append(bool(ph.mask.any()))
        kinds |= {int(c) for c in np.unique(ph.subtype_map)} - {0}
    frac = float(np.mean(flags))
    assert 0.25 <= frac <= 0.75, frac
    assert len(kinds) >= 3  # several subtypes occur


def test_cli(tmp_path):
    script = pathlib.Path(P.__file__)
    out = tmp_path / "cli"
    subprocess.run([sys.executable, str(script), "--out", str(out), "--count", "2", "--seed", "5",
                    "--size", "48", "--slices-min", "24", "--slices-max", "25"], check=True,
                   capture_output=True)
    assert sorted(p.name for p in (out / "ct_scans").iterdir()) == ["001.nii.gz", "002.nii.gz"]
    assert sorted(p.name for p in (out / "masks").iterdir()) == ["001.nii.gz", "002.nii.gz"]
    assert (out / "hemorrhage_diagnosis_raw_ct.csv").exists()


def test_parallel_generation_writes_the_same_files(tmp_path):
    digests = []
    for jobs in (1, 2):
        out = tmp_path / f"j{jobs}"
        P.write_dataset(out, count=3, seed=4, size=32, slices_min=8, slices_max=9, jobs=jobs)
        digests.append([(f.relative_to(out).as_posix(), hashlib.sha256(f.read_bytes()).hexdigest())
                        for f in sorted(out.rglob("*")) if f.is_file()])
    assert digests[0] == digests[1] and len(digests[0]) == 7


def _tree_digest(out):
    h = hashlib.sha256()
    for f in sorted(out.rglob("*")):
        if f.is_file():
            h.update(f.relative_to(out).as_posix().encode())
            h.update(f.read_bytes())
    return h.hexdigest()


def test_standard_profile_files_are_unchanged(tmp_path):
    # The shipped models were trained on the standard phantoms: the variation profiles must not
    # change a byte of them (digest of the files before the profiles existed; a bleeding SDH
    # and IVH volume and two without bleeding).
    P.write_dataset(tmp_path, count=2, seed=7, size=64)
    assert _tree_digest(tmp_path) == "58a553e46ac1d058212d4fc4f0edafdba50776af7ef6410c6c46c9c681b840da"
    assert not (tmp_path / "acquisition.csv").exists()


def test_profile_draws_stay_in_their_ranges():
    std_lo, std_hi = 0.92 * 0.95, 1.06 * 1.05  # the standard head scale's extremes
    for i in range(40):
        w = V.draw("wide", 3, i, 30)
        assert w["slice_mm"] in (1.0, 1.25, 1.5, 2.0, 2.5, 3.0, 4.0, 5.0)
        assert w["nz"] == round(30 * 5.0 / w["slice_mm"])
        assert 0.82 <= w["head_scale"] <= 1.16 and 2.0 <= w["noise"] <= 14.0
        assert abs(w["hu_offset"]) <= 12.0 and w["kernel"] in V.KERNELS
        s = V.draw("shifted", 3, i, 30)
        assert s["slice_mm"] < 5.0 and s["kernel"] == "sharp" and s["noise"] >= 8.0
        assert not 0.92 <= s["head_scale"] <= 1.06 and 4.0 <= abs(s["hu_offset"]) <= 10.0
        assert 31.0 <= s["gm"] <= 37.0 and 21.0 <= s["wm"] <= 26.0 and s["bleed_hu_shift"] < 0
        if s["motion"]:
            assert 0 <= s["motion"]["start"] < s["motion"]["stop"] <= s["nz"]
    assert V.draw("standard", 3, 0, 30) is None
    with pytest.raises(ValueError, match="unknown phantom profile"):
        V.draw("noisy", 3, 0, 30)


def test_scan_effects():
    v = {"motion": None, "sharpen": 0.0, "cupping": 0.0, "hu_slope": 1.0, "hu_offset": 7.0}
    img = np.full((32, 32), 30.0, np.float32)
    uv = np.meshgrid(np.linspace(-1.5, 1.5, 32), np.linspace(-1.5, 1.5, 32), indexing="ij")
    assert np.allclose(V.scan(img, v, 0, 1.0, uv), 37.0)  # calibration offset
    v.update(sharpen=1.0)
    assert np.allclose(V.scan(img, v, 0, 1.0, uv), 37.0, atol=1e-4)  # a flat image stays flat
    v.update(sharpen=0.0, cupping=8.0, hu_offset=0.0)
    cupped = V.scan(img, v, 0, 1.0, uv)
    assert cupped[16, 16] < 30.0 - 7.0 and cupped[0, 0] == 30.0  # darker centre, edge untouched
    v.update(cupping=0.0, motion={"start": 2, "stop": 3, "angle": 3.0, "shift_mm": 3.0, "alpha": 0.5})
    edge = np.zeros((32, 32), np.float32)
    edge[:, 16:] = 100.0
    assert np.array_equal(V.scan(edge, v, 1, 1.0, uv), edge)  # slice outside the motion run
    assert not np.array_equal(V.scan(edge, v, 2, 1.0, uv), edge)  # ghosted inside it


@pytest.mark.parametrize("profile", ["wide", "shifted"])
def test_profile_volumes(tmp_path, profile):
    # the anatomy and bleeds come from the standard stream: same sites as the standard volume
    ref = P.generate(0, 7, size=64)
    ph = P.generate(0, 7, size=64, profile=profile)
    var = ph.params["variation"]
    assert [d["kind"] for d in ph.params["sites"]] == [d["kind"] for d in ref.params["sites"]]
    assert ph.spacing[2] == var["slice_mm"] == ph.affine[2, 2] and ph.hu.shape[2] == var["nz"]
    assert np.array_equal(ph.mask, (ph.subtype_map > 0).astype(np.uint8))
    assert ph.mask.any() and [bool(x) for x in ph.labels.any(axis=1)] == \
        [bool(ph.mask[:, :, k].any()) for k in range(ph.hu.shape[2])]
    # the written files: the NIfTI's slice thickness and the acquisition table agree
    P.write_dataset(tmp_path, count=2, seed=7, size=48, profile=profile)
    with open(tmp_path / "acquisition.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert [r["PatientNumber"] for r in rows] == ["1", "2"] and {r["profile"] for r in rows} == {profile}
    for r in rows:
        img = nib.load(tmp_path / "ct_scans" / f"{int(r['PatientNumber']):03d}.nii.gz")
        assert img.header.get_zooms()[2] == pytest.approx(float(r["slice_mm"]))
        assert img.shape[2] == int(r["slices"])


def test_unknown_profile_writes_nothing(tmp_path):
    with pytest.raises(ValueError, match="unknown phantom profile"):
        P.write_dataset(tmp_path / "out", count=1, seed=1, size=32, profile="noisy")
    assert not (tmp_path / "out").exists()
    script = pathlib.Path(P.__file__)
    done = subprocess.run([sys.executable, str(script), "--out", str(tmp_path / "cli"), "--count", "1",
                           "--size", "32", "--profile", "wide", "--slices-min", "8", "--slices-max", "8"],
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "cli" / "acquisition.csv").read_text().count("\n") == 2


def test_resume_keeps_finished_volumes_and_writes_the_same_files(tmp_path, monkeypatch):
    whole = tmp_path / "whole"
    P.write_dataset(whole, count=3, seed=7, size=48, profile="wide")
    assert not (whole / P.PARTS).exists()  # the records go once the CSV files are written

    generate, made = P.generate, []

    def stopped_at_third(i, *args, **kw):
        if i == 2:
            raise KeyboardInterrupt  # the run is stopped while making the third volume
        made.append(i)
        return generate(i, *args, **kw)

    out = tmp_path / "resumed"
    monkeypatch.setattr(P, "generate", stopped_at_third)
    with pytest.raises(KeyboardInterrupt):
        P.write_dataset(out, count=3, seed=7, size=48, profile="wide")
    assert made == [0, 1] and not (out / "hemorrhage_diagnosis_raw_ct.csv").exists()

    made.clear()
    monkeypatch.setattr(P, "generate", lambda i, *a, **kw: made.append(i) or generate(i, *a, **kw))
    P.write_dataset(out, count=3, seed=7, size=48, profile="wide", resume=True)
    assert made == [2]  # the two finished volumes were kept
    assert _tree_digest(out) == _tree_digest(whole)


def test_resume_refuses_other_settings_and_a_fresh_run_starts_over(tmp_path, monkeypatch):
    out = tmp_path / "out"
    generate = P.generate

    def stopped_at_second(i, *args, **kw):
        if i == 1:
            raise KeyboardInterrupt
        return generate(i, *args, **kw)

    monkeypatch.setattr(P, "generate", stopped_at_second)
    with pytest.raises(KeyboardInterrupt):
        P.write_dataset(out, count=2, seed=3, size=32, slices_min=8, slices_max=9)
    monkeypatch.setattr(P, "generate", generate)
    with pytest.raises(ValueError, match="other settings"):
        P.write_dataset(out, count=2, seed=4, size=32, slices_min=8, slices_max=9, resume=True)
    # the refused run changed nothing: the record of volume 1 is still the first run's
    assert sorted(f.name for f in (out / P.PARTS).iterdir()) == ["001.json", "run.json"]
    P.write_dataset(out, count=2, seed=4, size=32, slices_min=8, slices_max=9)  # no resume: afresh
    fresh = tmp_path / "fresh"
    P.write_dataset(fresh, count=2, seed=4, size=32, slices_min=8, slices_max=9)
    assert _tree_digest(out) == _tree_digest(fresh)


def test_cli_resume_with_other_settings_is_a_usage_error(tmp_path):
    out = tmp_path / "out"
    (out / P.PARTS).mkdir(parents=True)
    (out / P.PARTS / "run.json").write_text('{"seed": 1}')
    res = subprocess.run([sys.executable, str(pathlib.Path(P.__file__)), "--out", str(out), "--count", "1",
                          "--seed", "5", "--size", "32", "--resume"], capture_output=True, text=True)
    assert res.returncode == 2 and "other settings" in res.stderr and "Traceback" not in res.stderr
