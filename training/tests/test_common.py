"""``common.load_slices`` (no torch: the numpy resize) and ``common.epoch_order``."""
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


def test_epoch_order_keeps_every_positive_and_a_fraction_of_the_negatives():
    pos, neg = np.array([1, 4, 7]), np.array([0, 2, 3, 5, 6, 8, 9, 10])
    order = C.epoch_order(11, pos, neg, 0.5, np.random.default_rng(3))
    assert len(order) == len(set(order.tolist())) == 3 + 4
    assert set(pos.tolist()) <= set(order.tolist())
    assert len(set(order.tolist()) & set(neg.tolist())) == 4
    again = C.epoch_order(11, pos, neg, 0.5, np.random.default_rng(3))
    assert np.array_equal(order, again)  # a seeded run repeats its epochs
    every = C.epoch_order(11, pos, neg, 1.0, np.random.default_rng(3))
    assert sorted(every.tolist()) == list(range(11))
    assert not np.array_equal(every, np.arange(11))  # shuffled
