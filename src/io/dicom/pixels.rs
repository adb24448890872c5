//! One slice's pixels to Hounsfield units: decoding (pure-Rust decoders only), the stored
//! bits, the sign, and the modality rescale.

use super::series::{numbers, text};
use crate::error::{Error, Result};
use dicom_dictionary_std::tags;
use dicom_object::OpenFileOptions;
use dicom_pixeldata::{PixelDecoder, PixelRepresentation};
use std::path::Path;

/// The transfer syntaxes whose pixel data we decode, with their names.
pub const SUPPORTED_TRANSFER_SYNTAXES: [(&str, &str); 7] = [
    ("1.2.840.10008.1.2", "Implicit VR Little Endian"),
    ("1.2.840.10008.1.2.1", "Explicit VR Little Endian"),
    ("1.2.840.10008.1.2.1.99", "Deflated Explicit VR Little Endian"),
    ("1.2.840.10008.1.2.5", "RLE Lossless"),
    ("1.2.840.10008.1.2.4.50", "JPEG Baseline (Process 1)"),
    ("1.2.840.10008.1.2.4.57", "JPEG Lossless, Non-Hierarchical (Process 14)"),
    ("1.2.840.10008.1.2.4.70", "JPEG Lossless, Non-Hierarchical, First-Order Prediction (Process 14, SV1)"),
];

/// Names of transfer syntaxes we refuse, so the message says what the file uses.
const REFUSED_TRANSFER_SYNTAXES: [(&str, &str); 9] = [
    ("1.2.840.10008.1.2.2", "Explicit VR Big Endian (retired)"),
    ("1.2.840.10008.1.2.4.51", "JPEG Extended (Process 2 & 4)"),
    ("1.2.840.10008.1.2.4.80", "JPEG-LS Lossless"),
    ("1.2.840.10008.1.2.4.81", "JPEG-LS Near-Lossless"),
    ("1.2.840.10008.1.2.4.90", "JPEG 2000 Lossless"),
    ("1.2.840.10008.1.2.4.91", "JPEG 2000"),
    ("1.2.840.10008.1.2.4.201", "High-Throughput JPEG 2000 Lossless"),
    ("1.2.840.10008.1.2.4.202", "High-Throughput JPEG 2000 with RPCL Lossless"),
    ("1.2.840.10008.1.2.4.203", "High-Throughput JPEG 2000"),
];

/// Refuses a transfer syntax we cannot decode, naming it.
pub fn check_transfer_syntax(path: &Path, uid: &str) -> Result<()> {
    if SUPPORTED_TRANSFER_SYNTAXES.iter().any(|(u, _)| *u == uid) {
        return Ok(());
    }
    let name = REFUSED_TRANSFER_SYNTAXES.iter().find(|(u, _)| *u == uid).map_or("unknown", |(_, n)| n);
    let supported: Vec<&str> = SUPPORTED_TRANSFER_SYNTAXES.iter().map(|(_, n)| *n).collect();
    Err(Error::Unsupported(format!(
        "{}: transfer syntax {uid} ({name}) is not decoded by ichseg; supported: {}",
        path.display(),
        supported.join(", ")
    )))
}

/// Decodes the single frame of `path` into `out` (rows x columns, row-major) as HU.
pub(crate) fn decode_slice(path: &Path, rows: usize, columns: usize, out: &mut [f32]) -> Result<()> {
    let obj = OpenFileOptions::new()
        .open_file(path)
        .map_err(|e| Error::image(path, format!("unreadable DICOM file (truncated?): {e}")))?;
    check_transfer_syntax(path, obj.meta().transfer_syntax().trim_end_matches(['\0', ' ']))?;
    let decoded = obj.decode_pixel_data().map_err(|e| Error::image(path, format!("pixel data: {e}")))?;
    if decoded.rows() as usize != rows || decoded.columns() as usize != columns {
        return Err(Error::image(
            path,
            format!("pixel data is {}x{}, the header says {columns}x{rows}", decoded.columns(), decoded.rows()),
        ));
    }
    if decoded.samples_per_pixel() != 1 {
        return Err(Error::image(
            path,
            format!("{} samples per pixel: a CT slice has one", decoded.samples_per_pixel()),
        ));
    }
    // The photometric interpretation is how to display values, not what they are: the modality
    // rescale gives HU for MONOCHROME1 as for MONOCHROME2 (PS3.3 C.7.6.3.1.2).
    let photometric = text(&obj, tags::PHOTOMETRIC_INTERPRETATION).unwrap_or_default();
    if photometric != "MONOCHROME2" && photometric != "MONOCHROME1" {
        return Err(Error::image(
            path,
            format!("photometric interpretation {photometric:?}: a CT slice is MONOCHROME1/2"),
        ));
    }
    let bytes_per_sample = match decoded.bits_allocated() {
        8 => 1,
        16 => 2,
        32 => 4,
        b => return Err(Error::image(path, format!("{b} bits allocated per pixel: 8, 16 or 32 are read"))),
    };
    let stored = u32::from(decoded.bits_stored());
    if stored == 0 || stored > 8 * bytes_per_sample as u32 {
        return Err(Error::image(path, format!("{stored} bits stored in {}-bit samples", 8 * bytes_per_sample)));
    }
    let n = rows * columns;
    let data = decoded.data();
    if data.len() < n * bytes_per_sample {
        return Err(Error::image(
            path,
            format!(
                "pixel data holds {} bytes, a {columns}x{rows} slice needs {} (truncated?)",
                data.len(),
                n * bytes_per_sample
            ),
        ));
    }
    let slope = numbers::<1>(&obj, tags::RESCALE_SLOPE, path, "RescaleSlope")?.map_or(1.0, |[v]| v);
    let intercept = numbers::<1>(&obj, tags::RESCALE_INTERCEPT, path, "RescaleIntercept")?.map_or(0.0, |[v]| v);
    if slope == 0.0 {
        return Err(Error::image(path, "RescaleSlope is 0"));
    }
    let signed = decoded.pixel_representation() == PixelRepresentation::Signed;
    let mask = if stored == 32 { u32::MAX } else { (1u32 << stored) - 1 };
    for (o, sample) in out.iter_mut().zip(data.chunks_exact(bytes_per_sample)) {
        let mut raw = [0u8; 4];
        raw[..bytes_per_sample].copy_from_slice(sample);
        let bits = u32::from_le_bytes(raw) & mask;
        // Sign-extend from the stored bits: a 12-bit signed value keeps its sign in 16-bit words.
        let value = if signed { ((bits << (32 - stored)) as i32 >> (32 - stored)) as f64 } else { bits as f64 };
        *o = (value * slope + intercept) as f32;
    }
    Ok(())
}
