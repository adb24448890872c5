"""Any real numeric dtype and memory order gives the same result as float32 C order."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest

import ichseg

from conftest import CT_SMALL, MODELS


@pytest.fixture(scope="module")
def case(engine):
    image = ichseg.read_volume(CT_SMALL)
    hu = image.array
    assert hu.dtype == np.float32 and hu.flags.c_contiguous
    # ct_small holds whole HU values: every integer dtype below represents them exactly.
    assert np.array_equal(hu, np.round(hu)) and np.abs(hu).max() < 32767
    # every lesion kept (not the model's tuned filter): the mask is the thresholded probability
    seg = ichseg.Segmenter(engine, MODELS / "unet.onnx", min_lesion_ml=0)
    ref = seg.segment(hu, image.spacing, image.affine)
    return seg, image, hu, ref


def variants(hu):
    f_order = np.asfortranarray(hu)
    yield "float64", hu.astype(np.float64)
    yield "int16", hu.astype(np.int16)
    yield "int32", hu.astype(np.int32)
    yield "int64", hu.astype(np.int64)
    yield "float16 (converted first)", hu.astype(np.float16)
    yield "big-endian int16", hu.astype(">i2")
    yield "fortran order", f_order
    assert not f_order.flags.c_contiguous
    yield "transposed twice (F-order view)", np.ascontiguousarray(hu.T).T
    yield "reversed strides", hu[::-1].copy()[::-1]
    padded = np.zeros((hu.shape[0], hu.shape[1], hu.shape[2] * 2), dtype=np.float32)
    padded[:, :, ::2] = hu
    yield "strided view", padded[:, :, ::2]
    yield "nested list", hu.tolist()


def test_dtypes_and_orders_give_the_same_result(case):
    seg, image, hu, ref = case
    for name, arr in variants(hu):
        if name == "float16 (converted first)":
            # float16 rounds HU above 2048 to even numbers: compare against the rounded volume.
            expect = seg.segment(hu.astype(np.float16).astype(np.float32), image.spacing, image.affine)
        else:
            expect = ref
        got = seg.segment(arr, image.spacing, image.affine)
        np.testing.assert_array_equal(got.mask, expect.mask, err_msg=name)
        np.testing.assert_array_equal(got.probability, expect.probability, err_msg=name)


def test_input_is_not_modified(case):
    seg, image, hu, _ = case
    arr = np.asfortranarray(hu.astype(np.int16))
    before = arr.copy()
    seg.segment(arr, image.spacing, image.affine)
    np.testing.assert_array_equal(arr, before)


def test_unsigned_and_bool_masks_in_eval():
    gt = np.zeros((2, 8, 8), dtype=np.uint8)
    gt[0, 2:6, 2:6] = 1
    ref = ichseg.eval(gt, gt)
    for arr in (gt.astype(bool), gt.astype(np.uint16), gt.astype(np.float32) * 7, np.asfortranarray(gt)):
        assert ichseg.eval(arr, gt) == ref


def test_outputs_are_owned_numpy_arrays(case):
    seg, image, hu, ref = case
    assert ref.mask.dtype == np.uint8 and ref.probability.dtype == np.float32
    assert ref.mask.shape == hu.shape and ref.mask.flags.c_contiguous and ref.mask.flags.writeable
    assert ref.probability.min() >= 0 and ref.probability.max() <= 1
    assert np.array_equal(ref.mask, ref.probability >= 0.5)


def test_gil_is_released_during_work(engine):
    image = ichseg.read_volume(MODELS / "samples" / "sample.nii.gz")
    seg = ichseg.Segmenter(engine, MODELS / "unet.onnx")
    count, stop = [0], threading.Event()

    def spin():
        while not stop.is_set():
            count[0] += 1

    t = threading.Thread(target=spin)
    t.start()
    try:
        time.sleep(0.05)
        before = count[0]
        t0 = time.perf_counter()
        seg.segment(image)
        elapsed = time.perf_counter() - t0
        during = count[0] - before
    finally:
        stop.set()
        t.join()
    # With the GIL held for the whole call the other thread could not count at all meanwhile.
    assert elapsed > 0.05 and during > 1000, (elapsed, during)


def test_a_low_memory_engine_gives_the_same_mask(case):
    seg, image, hu, ref = case
    low = ichseg.Engine(device="cpu", threads=2, low_memory=True)
    assert low.low_memory and not ichseg.Engine(device="cpu", threads=1).low_memory
    out = ichseg.Segmenter(low, MODELS / "unet.onnx", min_lesion_ml=0).segment(hu, image.spacing, image.affine)
    assert np.array_equal(out.mask, ref.mask)
    assert np.abs(out.probability - ref.probability).max() < 1e-5
