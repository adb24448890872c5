"""``ship``'s choice of the pseudo-labelling threshold from ``ichseg ablate --json`` (no torch)."""
import math

import pytest

from ichseg_training import ship


def _ablation(final_mious):
    """An ``ichseg ablate --json`` document: one run per (TH, final-row mIoU)."""
    rows = lambda m: [{"row": "+ BLA", "scores": {"miou": 0.99}}, {"row": "+ dCRF", "scores": {"miou": m}}]  # noqa: E731
    return {"runs": [{"setting": {"threshold": th}, "rows": rows(m)} for th, m in final_mious]}


def test_best_threshold_reads_the_final_row():
    # f32 thresholds as ablate prints them; the earlier row's 0.99 must not count
    doc = _ablation([(0.15000000596046448, 0.50), (0.3499999940395355, 0.53), (0.4000000059604645, 0.52)])
    assert ship.best_threshold(doc) == 0.35


def test_best_threshold_ties_and_undefined_scores_go_low():
    assert ship.best_threshold(_ablation([(0.3, 0.52), (0.2, 0.52), (0.25, 0.51)])) == 0.2
    assert ship.best_threshold(_ablation([(0.3, math.nan), (0.2, None), (0.25, 0.4)])) == 0.25
    assert ship.best_threshold(_ablation([(0.3, math.nan), (0.2, math.nan)])) == 0.2


def test_best_threshold_needs_runs():
    with pytest.raises(ValueError):
        ship.best_threshold({"runs": []})
