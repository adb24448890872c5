//! Any bytes as an ONNX model: a model or an error, never a panic.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    ichseg_fuzz::silence_caught_panics();
    let _ = ichseg::OnnxModel::from_bytes(data, "fuzz.onnx");
});
