//! Any bytes as a .nii or .nii.gz file: an image or an error, never a panic or a huge allocation,
//! with a memory limit set as an embedding host would (64 MiB: files over it are refused before
//! their voxels are read).
#![no_main]
use ichseg::alloc::MemoryLimit;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    ichseg_fuzz::silence_caught_panics();
    let _ = ichseg::io::nifti::read_bytes_within(data, std::path::Path::new("fuzz.nii"), MemoryLimit(64 << 20));
});
