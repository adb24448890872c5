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
