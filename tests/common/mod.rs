//! What several integration tests of the library need: the fixtures folder, a small engine and
//! the tiny classifier fixture.
// Each test file uses its own subset of these.
#![allow(dead_code)]

use ichseg::{Engine, EngineOptions, OnnxModel};
use std::path::{Path, PathBuf};

/// A file under tests/fixtures.
pub fn fixture(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures").join(rel)
}

/// A CPU engine with 2 threads (the CI machines' cores).
pub fn engine() -> Engine {
    Engine::new(&EngineOptions { threads: 2, ..Default::default() }).expect("a CPU engine")
}

/// tests/fixtures/classifier/tiny_classifier.onnx (taps must be named: it has no metadata).
pub fn tiny() -> OnnxModel {
    OnnxModel::load(&fixture("classifier/tiny_classifier.onnx")).expect("the tiny classifier fixture")
}
