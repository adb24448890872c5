//! ichseg.* metadata: the input is split at NUL bytes into alternating keys and values (valid
//! UTF-8 only, as ONNX strings are); parsing must give settings or an error, never a panic.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    ichseg_fuzz::silence_caught_panics();
    let parts: Vec<&str> = data.split(|b| *b == 0).filter_map(|p| std::str::from_utf8(p).ok()).collect();
    let props = parts.chunks(2).filter(|c| c.len() == 2).map(|c| (c[0], c[1]));
    let _ = ichseg::ModelMetadata::parse(props);
});
