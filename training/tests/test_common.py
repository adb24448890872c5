"""``common.load_slices`` (no torch: the numpy resize)."""
import numpy as np

from ichseg_training import common as C
from ichseg_training import datasets as D
from ichseg_training import phantom as P


def test_load_slices_fills_each_volume_in_patient_then_slice_order(tmp_path):
    P.write_dataset(tmp_path / "data", count=3, seed=5, size=64, slices_min=8, slices_max=10)
    ds = D.BCIHM(tmp_path / "data")
    patients = [3, 1]
    sl = C.load_slices(ds, patients, 48)
    images, masks, index = [], [], []
    for p in patients:
        hu, gt, labs = ds[p]
        assert ds.n_slices(p) == hu.shape[2] == len(labs)
        images.append(C._resize_stack(D.window(np.transpose(hu, (2, 1, 0))), (48, 48)))
        masks.append(C._resize_stack(np.transpose(gt, (2, 1, 0)).astype(np.float32), (48, 48)) >= 0.5)
        index += [(p, lab.slice_number) for lab in labs]
    assert sl.images.dtype == np.float32 and sl.masks.dtype == np.uint8
    assert np.array_equal(sl.images, np.concatenate(images))
    assert np.array_equal(sl.masks, np.concatenate(masks).astype(np.uint8))
    assert sl.index.tolist() == [list(i) for i in index]
    assert C.load_slices(ds, [2], 48, with_masks=False).masks is None
