"""Shared fixtures: the repository's data, the CLI the results are compared with, an engine."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[3]
FIXTURES = ROOT / "tests" / "fixtures"
MODELS = ROOT / "models"
TINY = FIXTURES / "classifier" / "tiny_classifier.onnx"
TINY_TAPS = ["/layer1/relu_1/Relu_output_0", "/layer2/relu_1/Relu_output_0"]
RESNET = FIXTURES / "grad" / "resnet_basic_op17_fused.onnx"
RESNET_TAPS = ["/layer1/layer1.1/relu_1/Relu_output_0", "/layer2/layer2.1/relu_1/Relu_output_0"]
CT_SMALL = FIXTURES / "unet" / "ct_small.nii.gz"
SAMPLE = MODELS / "samples" / "sample.nii.gz"
SAMPLE_MASK = MODELS / "samples" / "sample_mask.nii.gz"
# The CLI runs with the same engine settings as the package in these tests.
THREADS = 2


def cli_path() -> Path:
    """The `ichseg` binary: $ICHSEG_BIN, else the debug build in the target folder."""
    if os.environ.get("ICHSEG_BIN"):
        return Path(os.environ["ICHSEG_BIN"])
    target = Path(os.environ.get("CARGO_TARGET_DIR", ROOT / "target"))
    return target / "debug" / "ichseg"


@pytest.fixture(scope="session")
def cli():
    """Runs the CLI and returns its completed process; a failure fails the test."""
    exe = cli_path()
    if not exe.is_file():
        pytest.fail(f"{exe} not found: build it (cargo build -p ichseg-cli) or set ICHSEG_BIN")

    def run(*args, check=True):
        p = subprocess.run([str(exe), *map(str, args)], capture_output=True, text=True)
        if check and p.returncode != 0:
            raise AssertionError(f"ichseg {' '.join(map(str, args))} failed:\n{p.stderr}")
        return p

    return run


@pytest.fixture(scope="session")
def engine():
    import ichseg

    return ichseg.Engine(device="cpu", threads=THREADS)


def strip_volatile(report: dict) -> dict:
    """A report without what differs between two runs of the same work: times and the input name."""
    r = json.loads(json.dumps(report))
    r.pop("timings", None)
    r.pop("input", None)
    return r
