"""`train_unet --site-weight`: the CE weights of per-slice mask components (no torch)."""
import numpy as np
import pytest

from ichseg_training import train_unet


def test_a_pixel_weighs_by_the_area_of_its_site():
    m = np.zeros((2, 12, 12), np.uint8)
    m[0, 0:10, 0:10] = 1  # 100 px
    m[0, 11, 11] = 1  # 1 px, diagonal to nothing: its own site
    m[1, 2:4, 2:4] = 1  # 4 px, and its diagonal neighbour joins it (8-connected): 5 px
    m[1, 4, 4] = 1
    w = train_unet.site_weights(m, 2.0)
    assert w.shape == m.shape and w.dtype == np.float32
    assert np.allclose(w[0, 0:10, 0:10], 1 + 2 / 10) and np.isclose(w[0, 11, 11], 3.0)
    assert np.allclose(w[1, 2:4, 2:4], 1 + 2 / np.sqrt(5)) and np.isclose(w[1, 4, 4], 1 + 2 / np.sqrt(5))
    assert np.all(w[m == 0] == 1.0)
    assert np.all(train_unet.site_weights(np.zeros((1, 4, 4), np.uint8), 2.0) == 1.0)


@pytest.mark.parametrize("bad", ["-1", "nan", "inf"])
def test_the_weight_must_be_finite_and_not_negative(bad, tmp_path, capsys):
    with pytest.raises(SystemExit):
        train_unet.parse_args(["--data", str(tmp_path), "--out", str(tmp_path / "u.onnx"), "--site-weight", bad])
    assert "--site-weight" in capsys.readouterr().err
    assert train_unet.parse_args(["--data", "d", "--out", "u.onnx", "--site-weight", "4"]).site_weight == 4.0
