"""The BCIHM loader on generated phantoms (numpy, scipy, nibabel only)."""
import numpy as np

from ichseg_training import datasets as D
from ichseg_training import phantom as P


def test_loader_round_trip(tmp_path):
    P.write_dataset(tmp_path, count=2, seed=1, size=48, slices_min=24, slices_max=25)
    ds = D.BCIHM(tmp_path)
    assert ds.patients == [1, 2] and len(ds) == 2
    for pid in ds.patients:
        ph = P.generate(pid - 1, 1, size=48, slices_min=24, slices_max=25)
        hu, mask, labs = ds[pid]
        assert np.array_equal(hu, ph.hu.astype(np.float32))
        assert np.array_equal(mask, ph.mask)
        assert [lab.slice_number for lab in labs] == list(range(1, hu.shape[2] + 1))
        assert ds.spacing(pid)[2] == 5.0
    n = 0
    for pid, sn, img, m, lab in ds.slices():
        assert img.dtype == np.float32 and 0.0 <= img.min() and img.max() <= 1.0
        assert lab.bleeding == bool(m.any())
        n += 1
    assert n == sum(len(v) for v in ds.labels.values())


def test_window():
    w = D.window(np.array([-100.0, -15.0, 50.0, 115.0, 1000.0]))
    assert np.allclose(w, [0.0, 0.0, 0.5, 1.0, 1.0])


# ------------------------------------------------------------------------------------- BHSD

def _write_bhsd(root, label_dir, n=3, shape=(16, 16, 6), gz=True):
    """A tiny BHSD-layout folder: int16 images with slope 1 / intercept -1024, labels 0..5."""
    import nibabel as nib

    rng = np.random.default_rng(0)
    (root / "images").mkdir(parents=True)
    (root / label_dir).mkdir()
    vols = {}
    for i in range(n):
        hu = rng.integers(-1000, 1000, shape).astype(np.float32)
        lab = np.zeros(shape, np.uint8)
        if i != 1:  # patient 2 (sorted order) has no bleeding
            for code in range(1, 6):  # code c occupies slice c - 1 (slice 5 stays empty)
                lab[2 + i, 3:5, code - 1] = code
        name = f"ID_{i:04x}.nii" + (".gz" if gz else "")
        img = nib.Nifti1Image((hu + 1024).astype(np.int16), np.diag([0.5, 0.5, 5.0, 1.0]))
        img.header.set_slope_inter(1.0, -1024.0)
        nib.save(img, str(root / "images" / name))
        nib.save(nib.Nifti1Image(lab, np.diag([0.5, 0.5, 5.0, 1.0])), str(root / label_dir / name))
        vols[i + 1] = (hu, lab)
    return vols


def test_bhsd_loader_both_folder_names(tmp_path):
    for label_dir, gz in (("ground truths", True), ("labels", False)):
        root = tmp_path / label_dir.replace(" ", "_")
        vols = _write_bhsd(root, label_dir, gz=gz)
        ds = D.BHSD(root)
        assert ds.label_dir.name == label_dir
        assert ds.patients == [1, 2, 3] and len(ds) == 3
        assert ds.names[1] == "ID_0000"
        assert ds.positive() == {1: True, 2: False, 3: True}
        for p, (hu_ref, lab_ref) in vols.items():
            hu, mask, labs = ds[p]
            assert np.array_equal(hu, hu_ref)
            assert mask.dtype == np.uint8 and set(np.unique(mask)) <= {0, 1}
            assert np.array_equal(mask, (lab_ref > 0).astype(np.uint8))  # 1..5 merged
            assert [lab.slice_number for lab in labs] == list(range(1, 7))
            bleeding = [lab.bleeding for lab in labs]
            assert bleeding == ([True] * 5 + [False] if p != 2 else [False] * 6)
            if p != 2:
                assert [lab.subtypes for lab in labs[:5]] == [
                    tuple(int(c == k) for c in range(1, 6)) for k in range(1, 6)]
            assert ds.spacing(p) == (0.5, 0.5, 5.0) and ds.n_slices(p) == 6
        items = list(ds.slices())
        assert [(p, sn) for p, sn, *_ in items] == [(p, k) for p in (1, 2, 3) for k in range(1, 7)]
        for _p, _sn, img, m, lab in items:
            assert img.shape == (16, 16) and 0.0 <= img.min() and img.max() <= 1.0
            assert lab.bleeding == bool(m.any())
        samples = list(D.classifier_samples(ds, size=8))
        assert len(samples) == 18 and all(im.shape == (8, 8) for im, _ in samples)
        assert [y for _, y in samples] == [int(it[4].bleeding) for it in items]


def test_bhsd_missing_label_dir(tmp_path):
    (tmp_path / "images").mkdir()
    try:
        D.BHSD(tmp_path)
    except FileNotFoundError:
        pass
    else:
        raise AssertionError("expected FileNotFoundError")


# ----------------------------------------------------------------------------- preprocessing

def test_window_formula():
    hu = np.linspace(-200, 300, 51)
    assert np.allclose(D.window(hu), np.clip((hu + 15) / 130, 0, 1))


def test_resize_bilinear_matches_torch():
    out = D.resize_bilinear(np.array([[1.0, 2.0], [3.0, 4.0]]), 4)
    ref = [[1, 1.25, 1.75, 2], [1.5, 1.75, 2.25, 2.5], [2.5, 2.75, 3.25, 3.5], [3, 3.25, 3.75, 4]]
    assert out.dtype == np.float32 and np.allclose(out, ref)
    # downsampling 4 -> 2 (half-pixel): samples at 0.5 and 2.5 -> means of neighbours
    a = np.arange(16, dtype=np.float32).reshape(4, 4)
    assert np.allclose(D.resize_bilinear(a, 2), [[2.5, 4.5], [10.5, 12.5]])
    # non-square target, identity when size matches
    assert D.resize_bilinear(a, (4, 4)).tolist() == a.tolist()
    assert D.resize_bilinear(a, (2, 8)).shape == (2, 8)


# ---------------------------------------------------------------------------------- the split

def _toy(n=82, n_pos=40):
    pats = list(range(1, n + 1))
    rng = np.random.default_rng(123)
    pos_set = set(rng.choice(pats, n_pos, replace=False).tolist())
    return pats, {p: p in pos_set for p in pats}


def test_split_disjoint_complete_deterministic_balanced():
    for n, n_pos in ((82, 40), (82, 75), (10, 3), (7, 0)):
        pats, positive = _toy(n, n_pos)
        s = D.patient_split(pats, positive, seed=0)
        assert set(s) == {"train", "val", "test"}
        allp = s["train"] + s["val"] + s["test"]
        assert sorted(allp) == pats and len(set(allp)) == n
        assert s == D.patient_split(list(reversed(pats)), positive, seed=0)
        frac_all = n_pos / n
        for v in s.values():
            npos = sum(positive[p] for p in v)
            assert abs(npos - frac_all * len(v)) <= 1.0
        for name, f in zip(("train", "val", "test"), (0.6, 0.2, 0.2)):
            assert abs(len(s[name]) - f * n) < 1.0
    pats, positive = _toy()
    s = D.patient_split(pats, positive, seed=0)
    assert [len(s[k]) for k in ("train", "val", "test")] in ([49, 17, 16], [49, 16, 17])
    assert D.patient_split(pats, positive, seed=1) != s


def test_split_json_round_trip(tmp_path):
    pats, positive = _toy()
    s = D.patient_split(pats, positive, seed=3)
    D.write_split(tmp_path / "s.json", s, seed=3, layout="bcihm")
    assert D.read_split(tmp_path / "s.json") == s
    back, doc = D.read_split(tmp_path / "s.json", with_meta=True)
    assert back == s and doc["seed"] == 3 and doc["fractions"] == [0.6, 0.2, 0.2]
    assert doc["layout"] == "bcihm"


def test_split_cli_on_phantoms(tmp_path):
    import subprocess
    import sys

    P.write_dataset(tmp_path / "bcihm", count=6, seed=0, size=32, slices_min=6, slices_max=7)
    script = D.__file__
    r = subprocess.run([sys.executable, script, "split", "--layout", "bcihm", "--root",
                        str(tmp_path / "bcihm"), "--seed", "0", "--out", str(tmp_path / "s.json")],
                       capture_output=True, text=True, cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    split, doc = D.read_split(tmp_path / "s.json", with_meta=True)
    ds = D.BCIHM(tmp_path / "bcihm")
    pos = ds.positive()
    assert sorted(sum(split.values(), [])) == ds.patients
    assert split == D.patient_split(ds.patients, pos, 0)
    assert doc["seed"] == 0 and doc["layout"] == "bcihm"
    assert doc["positive"] == sorted(p for p in ds.patients if pos[p])

    _write_bhsd(tmp_path / "bhsd", "labels")
    r = subprocess.run([sys.executable, script, "split", "--layout", "bhsd", "--root",
                        str(tmp_path / "bhsd"), "--out", str(tmp_path / "b.json")],
                       capture_output=True, text=True, cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    split, doc = D.read_split(tmp_path / "b.json", with_meta=True)
    assert sorted(sum(split.values(), [])) == [1, 2, 3] and doc["names"]["1"] == "ID_0000"
