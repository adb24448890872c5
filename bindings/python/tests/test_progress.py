"""Progress callbacks, cancellation by the callback, and Ctrl-C (KeyboardInterrupt)."""

from __future__ import annotations

import os
import signal
import threading

import numpy as np
import pytest

import ichseg

from conftest import CT_SMALL, MODELS, SAMPLE, TINY, TINY_TAPS


@pytest.fixture(scope="module")
def sample():
    return ichseg.read_volume(SAMPLE)


@pytest.fixture(scope="module")
def segmenter(engine):
    return ichseg.Segmenter(engine, MODELS / "unet.onnx")


def test_progress_reaches_total(segmenter, sample):
    calls = []
    r = segmenter.segment(sample, progress=lambda done, total: calls.append((done, total)))
    nz = sample.shape[0]
    assert calls and calls[-1] == (nz, nz)
    assert [d for d, _ in calls] == sorted(d for d, _ in calls) and all(t == nz for _, t in calls)
    np.testing.assert_array_equal(r.mask, segmenter.segment(sample).mask)


def test_pseudo_progress_reaches_total(engine):
    image = ichseg.read_volume(CT_SMALL)
    calls = []
    ichseg.PseudoLabeler(engine, [TINY], taps=[TINY_TAPS]).label(image, progress=lambda d, t: calls.append((d, t)))
    nz = image.shape[0]
    assert calls[-1] == (2 * nz, 2 * nz)  # one classifier's slices, then the CRF's


def test_returning_false_cancels(segmenter, sample):
    calls = []

    def stop_after_two(done, total):
        calls.append(done)
        return len(calls) < 2

    with pytest.raises(ichseg.CancelledError) as e:
        segmenter.segment(sample, progress=stop_after_two)
    assert e.value.status == "CANCELLED" and len(calls) == 2
    # Truthy values and None continue.
    segmenter.segment(sample, progress=lambda d, t: 1)


def test_keyboard_interrupt_from_the_callback_cancels(segmenter, sample):
    calls = []

    def interrupt(done, total):
        calls.append(done)
        if len(calls) == 3:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        segmenter.segment(sample, progress=interrupt)
    assert len(calls) == 3 < sample.shape[0]


def test_keyboard_interrupt_cancels_pseudo_labelling(engine):
    labeler = ichseg.PseudoLabeler(engine, [TINY], taps=[TINY_TAPS])
    calls = []

    def interrupt(done, total):
        calls.append(done)
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        labeler.label(ichseg.read_volume(CT_SMALL), progress=interrupt)
    assert calls == [1]


def test_other_exceptions_from_the_callback_propagate(segmenter, sample):
    def bad(done, total):
        raise ValueError("from the callback")

    with pytest.raises(ValueError, match="from the callback"):
        segmenter.segment(sample, progress=bad)


@pytest.mark.skipif(threading.current_thread() is not threading.main_thread(), reason="signals need the main thread")
def test_ctrl_c_while_the_library_works_cancels(segmenter, sample):
    # SIGINT arrives while the GIL is released; the next progress step raises KeyboardInterrupt.
    calls = []
    first = threading.Event()

    def note(done, total):
        calls.append(done)
        first.set()

    def send():
        first.wait(30)
        os.kill(os.getpid(), signal.SIGINT)

    t = threading.Thread(target=send)
    t.start()
    try:
        with pytest.raises(KeyboardInterrupt):
            segmenter.segment(sample, progress=note)
    finally:
        t.join()
    assert calls and calls[-1] < sample.shape[0], calls
