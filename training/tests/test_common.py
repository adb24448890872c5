"""``common``'s slice stacking (no torch)."""
import numpy as np

from ichseg_training import common as C


def test_concat_freeing_equals_concatenate_and_empties_the_list():
    rng = np.random.default_rng(0)
    pieces = [rng.random((n, 3, 4), dtype=np.float32) for n in (2, 0, 5, 1)]
    expected = np.concatenate(pieces)
    out = C._concat_freeing(pieces, (3, 4), np.float32)
    assert pieces == [] and out.dtype == np.float32 and np.array_equal(out, expected)
    assert C._concat_freeing([], (3, 4), np.uint8).shape == (0, 3, 4)
