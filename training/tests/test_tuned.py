"""common.write_tuned: the ichseg.pseudo.* keys ship writes into the classifiers it ships."""

from __future__ import annotations

import json

import onnx
import pytest
from onnx import TensorProto, helper

from ichseg_training import common as C


def _model(path):
    node = helper.make_node("Relu", ["x"], ["y"])
    graph = helper.make_graph([node], "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 2])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 2])])
    m = helper.make_model(graph)
    helper.set_model_props(m, {"ichseg.kind": "classifier", "ichseg.pseudo.max_hu": "120"})
    onnx.save(m, str(path))
    return m


def test_write_tuned_sets_replaces_and_removes_keys(tmp_path):
    path = tmp_path / "c.onnx"
    before = _model(path)
    meta = C.write_tuned(path, threshold=0.25, max_hu="off", min_hu=42, min_lesion_ml=0.1, intracranial_margin_mm=None)
    after = onnx.load(str(path))
    props = {p.key: p.value for p in after.metadata_props}
    assert props == meta == {"ichseg.kind": "classifier", "ichseg.pseudo.threshold": "0.25",
                             "ichseg.pseudo.max_hu": "off", "ichseg.pseudo.min_hu": "42",
                             "ichseg.pseudo.min_lesion_ml": "0.1"}
    assert after.graph == before.graph, "only the metadata changes"
    record = tmp_path / "c.train.json"
    record.write_text('{"metadata": {}, "onnx": {"bytes": 1, "sha256": "x"}}')
    C.write_tuned(path, max_hu=None)
    rec = json.loads(record.read_text())
    assert rec["onnx"] == {"bytes": path.stat().st_size, "sha256": C.sha256(path)}, "the record follows the file"
    assert "ichseg.pseudo.max_hu" not in rec["metadata"] and rec["metadata"]["ichseg.pseudo.threshold"] == "0.25"
    assert "ichseg.pseudo.max_hu" not in {p.key for p in onnx.load(str(path)).metadata_props}
    with pytest.raises(ValueError, match="unknown"):
        C.write_tuned(path, thresh=0.2)
    meta = C.write_tuned(path, crf_confidence=0.9, crf_bilateral_compat=3.0)
    assert (meta["ichseg.pseudo.crf_confidence"], meta["ichseg.pseudo.crf_bilateral_compat"]) == ("0.9", "3")


def test_write_segment_filter_sets_the_key_and_keeps_the_choice(tmp_path):
    path = tmp_path / "u.onnx"
    _model(path)
    (tmp_path / "u.train.json").write_text('{"metadata": {}}')
    choice = {"rows": [], "chosen": 0.5}
    meta = C.write_segment_filter(path, 0.5, choice)
    assert meta["ichseg.segment.min_lesion_ml"] == "0.5" and meta["ichseg.pseudo.max_hu"] == "120"
    rec = json.loads((tmp_path / "u.train.json").read_text())
    assert rec["segment_filter"] == choice and rec["metadata"] == meta
    for bad in (-1.0, float("nan"), float("inf")):
        with pytest.raises(ValueError, match="min_lesion_ml"):
            C.write_segment_filter(path, bad, choice)


def test_best_filter_takes_the_best_val_miou_and_the_smaller_of_a_tie():
    from ichseg_training import evaluate as EV

    row = lambda ml, val, test: {"min_lesion_ml": ml, "val": {"miou": val}, "test": {"miou": test}}  # noqa: E731
    assert EV.best_filter([row(0.0, 0.70, 0.9), row(0.5, 0.72, 0.1), row(1.0, 0.71, 0.99)]) == 0.5, "val decides"
    assert EV.best_filter([row(0.0, 0.7, 0), row(0.1, 0.72, 0), row(1.0, 0.72, 0)]) == 0.1
    assert EV.best_filter([row(0.0, float("nan"), 0), row(0.2, 0.5, 0)]) == 0.2


def test_choose_filter_reuses_unfiltered_predictions_and_refuses_others(tmp_path):
    """`evaluate filter --val-scores --test-scores`: the 0 mL row is the unfiltered runs' own
    score (nothing segmented again), and scores of another model, subset or filter, or whose
    predictions are gone, are refused."""
    from ichseg_training import evaluate as EV

    model, exe = tmp_path / "u.onnx", tmp_path / "ichseg"
    model.write_bytes(b"model")
    exe.write_text("never run: the 0 mL row needs no ichseg eval")

    def scored(name, miou, **kw):
        pred = tmp_path / f"{name}.nii.gz"
        pred.write_bytes(b"mask")
        return {"subset": name, "model": str(model), "min_lesion_ml": 0.0, "pairs": [[str(pred), "gt"]],
                "overall": {"miou": miou}, **kw}

    unfiltered = {"val": scored("val", 0.8), "test": scored("test", 0.9)}
    sc = EV.choose_filter(model, "data", "split.json", None, (0.0,), ichseg=str(exe), unfiltered=unfiltered)
    assert sc["rows"] == [{"min_lesion_ml": 0.0, "val": {"miou": 0.8}, "test": {"miou": 0.9}}] and sc["chosen"] == 0.0
    for bad, why in ((scored("val", 0.8, subset="test"), "subset"), (scored("val", 0.8, min_lesion_ml=0.5), "0.5"),
                     (scored("val", 0.8, model=str(tmp_path / "other.onnx")), "other.onnx")):
        with pytest.raises(SystemExit, match=why):
            EV.choose_filter(model, "data", "split.json", None, (0.0,), ichseg=str(exe), unfiltered={"val": bad})
    (tmp_path / "test.nii.gz").unlink()
    with pytest.raises(SystemExit, match="is gone"):
        EV.choose_filter(model, "data", "split.json", None, (0.0,), ichseg=str(exe), unfiltered=unfiltered)
    with pytest.raises(SystemExit, match="pred-dir"):
        EV.choose_filter(model, "data", "split.json", None, (0.0,), ichseg=str(exe))


def test_graph_hash_sees_the_graph_and_not_the_metadata(tmp_path):
    """What lets `ship --resume` keep a scoring run after the tuned settings were written."""
    path = tmp_path / "m.onnx"
    _model(path)
    graph, file = C.graph_sha256(path), C.sha256(path)
    C.write_tuned(path, threshold=0.25)
    assert C.sha256(path) != file and C.graph_sha256(path) == graph
    m = onnx.load(str(path))
    m.graph.node[0].op_type = "Sigmoid"
    onnx.save(m, str(path))
    assert C.graph_sha256(path) != graph
