"""docs/PYTHON.md's examples run as written, in order, sharing one namespace."""

from __future__ import annotations

import os
import re

from conftest import ROOT


def test_python_md_examples_run(tmp_path, monkeypatch):
    text = (ROOT / "docs" / "PYTHON.md").read_text()
    blocks = re.findall(r"```python\n(.*?)```", text, flags=re.S)
    assert len(blocks) >= 5, "the examples were not found"
    os.symlink(ROOT / "models", tmp_path / "models")
    monkeypatch.chdir(tmp_path)
    namespace: dict = {}
    for i, block in enumerate(blocks):
        try:
            exec(compile(block, f"docs/PYTHON.md block {i + 1}", "exec"), namespace)
        except Exception as e:  # name the block that failed
            raise AssertionError(f"docs/PYTHON.md block {i + 1} failed: {e!r}\n{block}") from e
    assert (tmp_path / "mask.nii.gz").is_file()
