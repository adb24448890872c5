//! Any bytes as a .nii or .nii.gz file: an image or an error, never a panic or a huge allocation.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    ichseg_fuzz::silence_caught_panics();
    let _ = ichseg::io::nifti::read_bytes(data, std::path::Path::new("fuzz.nii"));
});
