//! Any bytes as the files of a DICOM series: the input is cut into up to four files at each
//! "\xFF\xFEFILE" marker and read as one folder. A volume or an error, never a panic or an
//! allocation past the memory limit an embedding host would set (64 MiB).
#![no_main]
use ichseg::alloc::MemoryLimit;
use ichseg::io::dicom::{read_series, ReadOptions};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    ichseg_fuzz::silence_caught_panics();
    let dir = std::env::temp_dir().join(format!("ichseg-fuzz-dicom-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    if std::fs::create_dir_all(&dir).is_err() {
        return;
    }
    let marker: &[u8] = b"\xFF\xFEFILE";
    let mut rest = data;
    for i in 0..4 {
        let end = rest.windows(marker.len()).position(|w| w == marker).filter(|_| i < 3).unwrap_or(rest.len());
        let _ = std::fs::write(dir.join(format!("{i}.dcm")), &rest[..end]);
        if end == rest.len() {
            break;
        }
        rest = &rest[end + marker.len()..];
    }
    let options = ReadOptions { memory_limit: MemoryLimit(64 << 20), allow_non_ct: true, ..Default::default() };
    let _ = read_series(&[dir.clone()], &options);
    let _ = std::fs::remove_dir_all(&dir);
});
