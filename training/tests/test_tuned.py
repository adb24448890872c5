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
    meta = C.write_tuned(path, threshold=0.25, max_hu="off", min_lesion_ml=0.1, intracranial_margin_mm=None)
    after = onnx.load(str(path))
    props = {p.key: p.value for p in after.metadata_props}
    assert props == meta == {"ichseg.kind": "classifier", "ichseg.pseudo.threshold": "0.25",
                             "ichseg.pseudo.max_hu": "off", "ichseg.pseudo.min_lesion_ml": "0.1"}
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
