//! NIfTI-1 single-file volumes (`.nii`, `.nii.gz`): reading into a [`Volume`] or a binary mask,
//! writing float32 volumes and uint8 masks on the grid of an existing header.
//!
//! What is read:
//! - NIfTI-1 single files (magic `n+1\0`) in either byte order, plain or gzip-compressed (gzip is
//!   recognised by its magic bytes `1f 8b`, not by the file name);
//! - datatypes uint8, int8, int16, uint16, int32, uint32, int64, uint64, float32, float64;
//! - `scl_slope` / `scl_inter` scaling (a slope of 0 or a non-finite slope means "no scaling", as
//!   the standard says);
//! - 3D volumes, including ones declared with extra dimensions of size 1 (`dim[0]` = 4 with one
//!   time point, say).
//!
//! What is refused with a clear error: `.hdr`/`.img` pairs (magic `ni1\0`), NIfTI-2, real 4D
//! series, other datatypes, zero or absurd dimensions (checked before anything is allocated),
//! truncated files, and voxels that are NaN or infinite (our policy for CT input, see
//! [`Volume::from_array`]).
//!
//! Geometry follows the NIfTI-1 standard: the affine comes from the sform when `sform_code > 0`,
//! else from the qform (quaternion, `qfac` from `pixdim[0]`) when `qform_code > 0`, else it is a
//! plain scaling by `pixdim` ("method 1"; nibabel instead centres and flips x in that case).
//! Spacing is `|pixdim[1..=3]|`. Both are converted to millimetres when `xyzt_units` says metres
//! or microns; unknown units (0) are taken as millimetres, which is what CT files mean.
//!
//! Writing copies the header it is given byte for byte (so every field we do not touch survives),
//! changes only what describes the new voxel data (datatype, bitpix, scaling, display range,
//! offset, `dim[0]`), always writes little-endian, gzips when the path ends in `.gz`, and goes
//! through [`write_atomic`] so a failure leaves no file behind.
//!
//! ```
//! use ichseg::io::nifti;
//! use ichseg::Volume;
//! use ndarray::Array3;
//!
//! let dir = tempfile::tempdir().unwrap();
//! let volume = Volume::from_hu(vec![40.0; 4 * 3 * 2], [4, 3, 2], [0.5, 0.5, 5.0]).unwrap();
//! let header = nifti::header_for(&volume);
//! let path = dir.path().join("ct.nii.gz");
//! nifti::write_volume(&path, &header, &volume).unwrap();
//!
//! let image = nifti::read(&path).unwrap();
//! // A volume built without an affine has no orientation, and its file says so (codes 0).
//! assert_eq!(image.volume, volume);
//! assert!(!image.volume.oriented());
//! assert!(image.header.same_geometry(&header));
//!
//! let mask = Array3::<u8>::from_elem((2, 3, 4), 1); // [nz, ny, nx]
//! nifti::write_mask(&dir.path().join("mask.nii"), &image.header, &mask).unwrap();
//! let (_, back) = nifti::read_mask(&dir.path().join("mask.nii")).unwrap();
//! assert_eq!(back, mask);
//! ```

use crate::alloc::{try_with_capacity, MemoryLimit};
use crate::error::{Error, Result};
use crate::io::atomic::write_atomic;
use crate::volume::{checked_voxel_count, Volume};
use flate2::read::MultiGzDecoder;
use flate2::write::GzEncoder;
use flate2::Compression;
use ndarray::Array3;
use std::fmt;
use std::fs::File;
use std::io::{BufRead, BufReader, Read, Write};
use std::path::Path;

/// Size of the NIfTI-1 header in bytes.
pub const HEADER_SIZE: usize = 348;
/// Offset of the voxel data in the files we write: the header plus 4 extension bytes.
const DATA_OFFSET: usize = 352;
/// Largest `vox_offset` accepted. Extensions (DICOM tags, XML) can be large, but a header that
/// asks us to skip gigabytes is corrupt, and skipping costs time in a gzip stream.
const MAX_VOX_OFFSET: f64 = (256u64 << 20) as f64;

// Byte offsets of the header fields we use (NIfTI-1 standard, nifti1.h).
const SIZEOF_HDR: usize = 0;
const DIM: usize = 40;
const DATATYPE: usize = 70;
const BITPIX: usize = 72;
const PIXDIM: usize = 76;
const VOX_OFFSET: usize = 108;
const SCL_SLOPE: usize = 112;
const SCL_INTER: usize = 116;
const XYZT_UNITS: usize = 123;
const CAL_MAX: usize = 124;
const CAL_MIN: usize = 128;
const DESCRIP: usize = 148;
const QFORM_CODE: usize = 252;
const SFORM_CODE: usize = 254;
const QUATERN_B: usize = 256;
const QOFFSET_X: usize = 268;
const SROW_X: usize = 280;
const MAGIC: usize = 344;

/// Every multi-byte numeric field of the header as (offset, bytes per value, count): what must be
/// byte-swapped to turn a big-endian header into a little-endian one. Char fields are absent.
const NUMERIC_FIELDS: [(usize, usize, usize); 12] = [
    (0, 4, 1),    // sizeof_hdr
    (32, 4, 1),   // extents
    (36, 2, 1),   // session_error
    (40, 2, 8),   // dim
    (56, 4, 3),   // intent_p1..p3
    (68, 2, 4),   // intent_code, datatype, bitpix, slice_start
    (76, 4, 11),  // pixdim[8], vox_offset, scl_slope, scl_inter
    (120, 2, 1),  // slice_end
    (124, 4, 4),  // cal_max, cal_min, slice_duration, toffset
    (140, 4, 2),  // glmax, glmin
    (252, 2, 2),  // qform_code, sform_code
    (256, 4, 18), // quatern_b..d, qoffset_x..z, srow_x, srow_y, srow_z
];

/// NIfTI datatype codes.
const DT_UINT8: i16 = 2;
const DT_FLOAT32: i16 = 16;

/// The name and size in bytes of a datatype we read, or `None` for one we do not.
fn supported_datatype(code: i16) -> Option<(&'static str, usize)> {
    Some(match code {
        2 => ("uint8", 1),
        4 => ("int16", 2),
        8 => ("int32", 4),
        16 => ("float32", 4),
        64 => ("float64", 8),
        256 => ("int8", 1),
        512 => ("uint16", 2),
        768 => ("uint32", 4),
        1024 => ("int64", 8),
        1280 => ("uint64", 8),
        _ => return None,
    })
}

/// The standard's name for any datatype code, for error messages.
fn datatype_name(code: i16) -> &'static str {
    match supported_datatype(code) {
        Some((name, _)) => name,
        None => match code {
            0 => "unknown",
            1 => "binary",
            32 => "complex64",
            128 => "rgb24",
            1536 => "float128",
            1792 => "complex128",
            2048 => "complex256",
            2304 => "rgba32",
            _ => "not a NIfTI datatype",
        },
    }
}

/// A parsed NIfTI-1 header.
///
/// It keeps all 348 bytes (converted to little-endian when the file was big-endian), so that
/// writing an output "like" an input preserves every field we do not change: descriptions,
/// intent, slice timing, both orientation transforms. Accessors decode fields on demand.
#[derive(Clone, PartialEq, Eq)]
pub struct NiftiHeader {
    raw: [u8; HEADER_SIZE],
    big_endian: bool,
}

impl fmt::Debug for NiftiHeader {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("NiftiHeader")
            .field("dim", &self.dim())
            .field("datatype", &self.datatype())
            .field("pixdim", &self.pixdim())
            .field("xyzt_units", &self.xyzt_units())
            .field("qform_code", &self.qform_code())
            .field("sform_code", &self.sform_code())
            .field("scl", &(self.scl_slope(), self.scl_inter()))
            .field("big_endian", &self.big_endian)
            .finish()
    }
}

impl NiftiHeader {
    fn i16_at(&self, off: usize) -> i16 {
        i16::from_le_bytes([self.raw[off], self.raw[off + 1]])
    }
    fn f32_at(&self, off: usize) -> f32 {
        f32::from_le_bytes([self.raw[off], self.raw[off + 1], self.raw[off + 2], self.raw[off + 3]])
    }
    fn set_i16(&mut self, off: usize, v: i16) {
        self.raw[off..off + 2].copy_from_slice(&v.to_le_bytes());
    }
    fn set_i32(&mut self, off: usize, v: i32) {
        self.raw[off..off + 4].copy_from_slice(&v.to_le_bytes());
    }
    fn set_f32(&mut self, off: usize, v: f32) {
        self.raw[off..off + 4].copy_from_slice(&v.to_le_bytes());
    }

    /// The 348 header bytes, little-endian whatever the byte order of the file they came from.
    pub fn raw(&self) -> &[u8; HEADER_SIZE] {
        &self.raw
    }
    /// Whether the file this header was read from was big-endian (its voxels too).
    pub fn was_big_endian(&self) -> bool {
        self.big_endian
    }
    /// The raw `dim` field: `dim[0]` is the number of dimensions, `dim[1..=3]` the sizes.
    pub fn dim(&self) -> [i16; 8] {
        std::array::from_fn(|i| self.i16_at(DIM + 2 * i))
    }
    /// The raw `pixdim` field: `pixdim[0]` is `qfac`, `pixdim[1..=3]` the voxel sizes in the
    /// file's units.
    pub fn pixdim(&self) -> [f32; 8] {
        std::array::from_fn(|i| self.f32_at(PIXDIM + 4 * i))
    }
    /// `[nx, ny, nz]` (`dim[1..=3]`; a negative value, which a parsed header never has, reads 0).
    pub fn dims(&self) -> [usize; 3] {
        let d = self.dim();
        [d[1], d[2], d[3]].map(|v| usize::try_from(v).unwrap_or(0))
    }
    /// Voxel size in mm: `|pixdim[1..=3]|` converted from the units in `xyzt_units`.
    pub fn spacing(&self) -> [f64; 3] {
        let p = self.pixdim();
        let k = self.mm_per_unit();
        [p[1], p[2], p[3]].map(|v| f64::from(v).abs() * k)
    }
    /// Millimetres per spatial unit of `xyzt_units`: metres 1000, microns 0.001, millimetres and
    /// unknown (0, or a reserved code) 1.
    pub fn mm_per_unit(&self) -> f64 {
        match self.xyzt_units() & 0x07 {
            1 => 1000.0,
            3 => 0.001,
            _ => 1.0,
        }
    }
    /// Voxel index (i, j, k, 1) to world millimetres, by the NIfTI-1 rules: the sform when
    /// `sform_code > 0`, else the qform when `qform_code > 0`, else a scaling by `pixdim`.
    pub fn affine(&self) -> [[f64; 4]; 4] {
        let mut a = if self.sform_code() > 0 {
            self.sform()
        } else if self.qform_code() > 0 {
            self.qform()
        } else {
            let p = self.pixdim().map(f64::from);
            [[p[1], 0.0, 0.0, 0.0], [0.0, p[2], 0.0, 0.0], [0.0, 0.0, p[3], 0.0], [0.0, 0.0, 0.0, 1.0]]
        };
        let k = self.mm_per_unit();
        for row in a.iter_mut().take(3) {
            for v in row.iter_mut() {
                *v *= k;
            }
        }
        a
    }
    /// The sform matrix (`srow_x`, `srow_y`, `srow_z`, then `0 0 0 1`) in the file's units,
    /// whatever `sform_code` says.
    pub fn sform(&self) -> [[f64; 4]; 4] {
        let mut a = [[0.0, 0.0, 0.0, 0.0], [0.0; 4], [0.0; 4], [0.0, 0.0, 0.0, 1.0]];
        for (r, row) in a.iter_mut().take(3).enumerate() {
            for (c, v) in row.iter_mut().enumerate() {
                *v = f64::from(self.f32_at(SROW_X + 16 * r + 4 * c));
            }
        }
        a
    }
    /// The qform matrix built from the quaternion, `qoffset` and `pixdim` (with `qfac` =
    /// `pixdim[0]`, negative meaning -1 and anything else 1), in the file's units, whatever
    /// `qform_code` says. Same arithmetic as `nifti_quatern_to_mat44` in nifti1_io.c.
    pub fn qform(&self) -> [[f64; 4]; 4] {
        let q = self.quatern();
        let (mut b, mut c, mut d) = (q[0], q[1], q[2]);
        let s = b * b + c * c + d * d;
        let a = if 1.0 - s < 1e-7 {
            // Rounding pushed |(b, c, d)| to 1 or past it: a 180-degree rotation, a = 0.
            let n = s.sqrt();
            if n > 0.0 {
                (b, c, d) = (b / n, c / n, d / n);
            }
            0.0
        } else {
            (1.0 - s).sqrt()
        };
        let p = self.pixdim().map(|v| f64::from(v).abs());
        let qfac = if self.pixdim()[0] < 0.0 { -1.0 } else { 1.0 };
        let (x, y, z) = (p[1], p[2], p[3] * qfac);
        let r = [
            [a * a + b * b - c * c - d * d, 2.0 * (b * c - a * d), 2.0 * (b * d + a * c)],
            [2.0 * (b * c + a * d), a * a + c * c - b * b - d * d, 2.0 * (c * d - a * b)],
            [2.0 * (b * d - a * c), 2.0 * (c * d + a * b), a * a + d * d - c * c - b * b],
        ];
        let o = self.qoffset();
        let mut m = [[0.0; 4], [0.0; 4], [0.0; 4], [0.0, 0.0, 0.0, 1.0]];
        for i in 0..3 {
            m[i] = [r[i][0] * x, r[i][1] * y, r[i][2] * z, o[i]];
        }
        m
    }
    /// `quatern_b`, `quatern_c`, `quatern_d`.
    pub fn quatern(&self) -> [f64; 3] {
        std::array::from_fn(|i| f64::from(self.f32_at(QUATERN_B + 4 * i)))
    }
    /// `qoffset_x`, `qoffset_y`, `qoffset_z` in the file's units.
    pub fn qoffset(&self) -> [f64; 3] {
        std::array::from_fn(|i| f64::from(self.f32_at(QOFFSET_X + 4 * i)))
    }
    /// NIfTI datatype code (2 uint8, 4 int16, 16 float32, ...).
    pub fn datatype(&self) -> i16 {
        self.i16_at(DATATYPE)
    }
    /// Bits per voxel as declared (we trust `datatype` when the two disagree).
    pub fn bitpix(&self) -> i16 {
        self.i16_at(BITPIX)
    }
    /// `qform_code`: 0 none, 1 scanner, 2 aligned, 3 Talairach, 4 MNI.
    pub fn qform_code(&self) -> i16 {
        self.i16_at(QFORM_CODE)
    }
    /// `sform_code`, with the same meanings as `qform_code`.
    pub fn sform_code(&self) -> i16 {
        self.i16_at(SFORM_CODE)
    }
    /// `scl_slope` as stored (0 or non-finite means no scaling).
    pub fn scl_slope(&self) -> f32 {
        self.f32_at(SCL_SLOPE)
    }
    /// `scl_inter` as stored.
    pub fn scl_inter(&self) -> f32 {
        self.f32_at(SCL_INTER)
    }
    /// `xyzt_units`: bits 0-2 the spatial unit (1 m, 2 mm, 3 um), bits 3-5 the time unit.
    pub fn xyzt_units(&self) -> u8 {
        self.raw[XYZT_UNITS]
    }
    /// `vox_offset`: where the voxel data starts in the file.
    pub fn vox_offset(&self) -> f32 {
        self.f32_at(VOX_OFFSET)
    }

    /// Whether `other` puts its voxels at the same places in the world, so that a mask written
    /// with one header lines up with an image read with the other. See
    /// [`geometry_mismatch`](Self::geometry_mismatch) for what is compared.
    pub fn same_geometry(&self, other: &NiftiHeader) -> bool {
        self.geometry_mismatch(other).is_none()
    }

    /// The first geometry field that differs between two headers, described for an error
    /// message, or `None` when they agree. Compared: the sizes `dim[1..=3]` (extra singleton
    /// dimensions do not count), `pixdim[1..=3]` and the sign of `qfac`, the spatial unit of
    /// `xyzt_units`, `qform_code` and, when it is set, the quaternion and `qoffset`,
    /// `sform_code` and, when it is set, the three `srow`s. Floats are equal when they differ by
    /// at most 1e-5 relative (of the larger magnitude, and at least of 1), which absorbs float32
    /// round trips through other tools but not any real shift of the grid.
    pub fn geometry_mismatch(&self, other: &NiftiHeader) -> Option<String> {
        fn close(a: f64, b: f64) -> bool {
            (a - b).abs() <= 1e-5 * a.abs().max(b.abs()).max(1.0)
        }
        fn all_close(a: &[f64], b: &[f64]) -> bool {
            a.iter().zip(b).all(|(&x, &y)| close(x, y))
        }
        let (d1, d2) = (self.dims(), other.dims());
        if d1 != d2 {
            return Some(format!("dimensions differ: {} vs {}", fmt_dims(d1), fmt_dims(d2)));
        }
        let (p1, p2) = (self.pixdim().map(f64::from), other.pixdim().map(f64::from));
        if !all_close(&p1[1..4], &p2[1..4]) {
            return Some(format!("voxel sizes (pixdim[1..=3]) differ: {:?} vs {:?}", &p1[1..4], &p2[1..4]));
        }
        let (u1, u2) = (self.xyzt_units() & 0x07, other.xyzt_units() & 0x07);
        if u1 != u2 {
            return Some(format!("spatial units (xyzt_units) differ: {u1} vs {u2}"));
        }
        let (c1, c2) = (self.qform_code(), other.qform_code());
        if c1 != c2 {
            return Some(format!("qform_code differs: {c1} vs {c2}"));
        }
        if c1 > 0 {
            if (p1[0] < 0.0) != (p2[0] < 0.0) {
                return Some(format!("qfac (pixdim[0]) differs: {} vs {}", p1[0], p2[0]));
            }
            if !all_close(&self.quatern(), &other.quatern()) {
                return Some(format!("qform quaternion differs: {:?} vs {:?}", self.quatern(), other.quatern()));
            }
            if !all_close(&self.qoffset(), &other.qoffset()) {
                return Some(format!("qform offset differs: {:?} vs {:?}", self.qoffset(), other.qoffset()));
            }
        }
        let (c1, c2) = (self.sform_code(), other.sform_code());
        if c1 != c2 {
            return Some(format!("sform_code differs: {c1} vs {c2}"));
        }
        if c1 > 0 {
            let (s1, s2) = (self.sform(), other.sform());
            for (r, name) in ["srow_x", "srow_y", "srow_z"].iter().enumerate() {
                if !all_close(&s1[r], &s2[r]) {
                    return Some(format!("sform {name} differs: {:?} vs {:?}", s1[r], s2[r]));
                }
            }
        }
        None
    }

    /// Parses and validates a header. `bytes` holds the first (up to) 348 bytes of the file.
    fn parse(bytes: &[u8], name: &Path) -> Result<Self> {
        let bad = |reason: String| Error::image(name, reason);
        let size_le = bytes.get(..4).map(|b| i32::from_le_bytes([b[0], b[1], b[2], b[3]]));
        let size_be = bytes.get(..4).map(|b| i32::from_be_bytes([b[0], b[1], b[2], b[3]]));
        if size_le == Some(540) || size_be == Some(540) {
            return Err(bad("this is a NIfTI-2 file (header size 540); only NIfTI-1 is supported".into()));
        }
        if bytes.len() < HEADER_SIZE {
            return Err(bad(format!(
                "file is too short for a NIfTI-1 header: {} bytes, need {HEADER_SIZE}",
                bytes.len()
            )));
        }
        let magic = &bytes[MAGIC..MAGIC + 4];
        let big_endian = match (size_le, size_be) {
            (Some(348), _) => false,
            (_, Some(348)) => true,
            _ => {
                return Err(bad(format!(
                    "not a NIfTI-1 file: header size field is {} (expected 348) and magic is {}",
                    size_le.unwrap_or(0),
                    show_magic(magic)
                )))
            }
        };
        match magic {
            b"n+1\0" => {}
            b"ni1\0" => {
                return Err(bad("this is the header of a .hdr/.img pair (magic \"ni1\"); .hdr/.img pairs are not \
                     supported, convert to a single .nii or .nii.gz file"
                    .into()))
            }
            _ => {
                return Err(bad(format!(
                    "bad magic {} (expected \"n+1\"); not a NIfTI-1 file (an Analyze 7.5 header?)",
                    show_magic(magic)
                )))
            }
        }
        let mut raw = [0u8; HEADER_SIZE];
        raw.copy_from_slice(&bytes[..HEADER_SIZE]);
        if big_endian {
            for (off, width, count) in NUMERIC_FIELDS {
                for chunk in raw[off..off + width * count].chunks_exact_mut(width) {
                    chunk.reverse();
                }
            }
        }
        let header = NiftiHeader { raw, big_endian };
        header.validate(name)?;
        Ok(header)
    }

    /// Checks what must hold before any voxel is read: dimensions, datatype, data offset.
    fn validate(&self, name: &Path) -> Result<()> {
        let bad = |reason: String| Error::image(name, reason);
        let dim = self.dim();
        let ndim = dim[0];
        if !(1..=7).contains(&ndim) {
            return Err(bad(format!("dim[0] = {ndim} is not a number of dimensions between 1 and 7")));
        }
        if ndim < 3 {
            return Err(bad(format!("{ndim}D images are not supported; pass a 3D volume")));
        }
        for (i, &d) in dim.iter().enumerate().take(4).skip(1) {
            if d < 1 {
                return Err(bad(format!("dim[{i}] = {d}: every dimension must be at least 1")));
            }
        }
        if ndim >= 4 && dim[4] > 1 {
            return Err(bad(format!("4D volumes ({} time points) are not supported; pass one 3D volume", dim[4])));
        }
        for (i, &d) in dim.iter().enumerate().take(ndim as usize + 1).skip(4) {
            if d != 1 {
                return Err(bad(format!(
                    "dim[{i}] = {d}: volumes with more than 3 dimensions are not supported; pass one 3D volume"
                )));
            }
        }
        checked_voxel_count(self.dims()).map_err(|e| bad(e.to_string()))?;
        let dt = self.datatype();
        if supported_datatype(dt).is_none() {
            return Err(bad(format!(
                "datatype {dt} ({}) is not supported; use uint8, int8, int16, uint16, int32, uint32, \
                 int64, uint64, float32 or float64",
                datatype_name(dt)
            )));
        }
        let off = f64::from(self.vox_offset());
        if !(off.is_finite() && off >= DATA_OFFSET as f64 && off <= MAX_VOX_OFFSET && off.fract() == 0.0) {
            return Err(bad(format!(
                "vox_offset = {off} is invalid: a single-file NIfTI-1 needs a whole number of at least \
                 {DATA_OFFSET} (and at most {MAX_VOX_OFFSET})"
            )));
        }
        Ok(())
    }

    /// The scaling `(slope, inter)` to apply to stored values, `None` for none.
    fn scaling(&self, name: &Path) -> Result<Option<(f64, f64)>> {
        let (slope, inter) = (f64::from(self.scl_slope()), f64::from(self.scl_inter()));
        if slope == 0.0 || !slope.is_finite() {
            return Ok(None);
        }
        if !inter.is_finite() {
            return Err(Error::image(name, format!("scl_slope is {slope} but scl_inter is {inter}")));
        }
        Ok(if slope == 1.0 && inter == 0.0 { None } else { Some((slope, inter)) })
    }
}

fn fmt_dims(d: [usize; 3]) -> String {
    format!("{}x{}x{}", d[0], d[1], d[2])
}

/// Magic bytes shown as a quoted string with escapes, e.g. `"xyz\0"`.
fn show_magic(m: &[u8]) -> String {
    format!("\"{}\"", m.escape_ascii())
}

/// A NIfTI file read into memory: its header and its voxels as a CT volume.
#[derive(Debug, Clone, PartialEq)]
pub struct NiftiImage {
    pub header: NiftiHeader,
    pub volume: Volume,
}

/// Reads a `.nii` or `.nii.gz` file (gzip detected by content) into a [`Volume`] in HU:
/// stored values times `scl_slope` plus `scl_inter`, as float32, with the header's affine and
/// spacing in mm. Malformed files and NaN/Inf voxels give [`Error::InvalidImage`] naming the path.
pub fn read(path: &Path) -> Result<NiftiImage> {
    read_within(path, MemoryLimit::NONE)
}

/// [`read`], refusing with [`Error::OutOfMemory`] before allocating a file whose voxel bytes
/// and their float32 copy would exceed `limit`.
pub fn read_within(path: &Path, limit: MemoryLimit) -> Result<NiftiImage> {
    let (header, data) = load(path, limit)?;
    to_image(header, &data, path)
}

/// [`read`] from bytes already in memory (plain or gzipped); `name` is used only in messages.
pub fn read_bytes(bytes: &[u8], name: &Path) -> Result<NiftiImage> {
    read_bytes_within(bytes, name, MemoryLimit::NONE)
}

/// [`read_within`] from bytes already in memory.
pub fn read_bytes_within(bytes: &[u8], name: &Path, limit: MemoryLimit) -> Result<NiftiImage> {
    let (header, data) = decode(bytes, name, limit)?;
    to_image(header, &data, name)
}

/// Reads a label or mask volume of any supported datatype as a binary mask of shape
/// `[nz, ny, nx]`: 1 where the (scaled) value is non-zero, 0 elsewhere. NaN or infinite values
/// are an error. Spacing is not checked here: a mask is compared to an image by its header.
pub fn read_mask(path: &Path) -> Result<(NiftiHeader, Array3<u8>)> {
    let (header, data) = load(path, MemoryLimit::NONE)?;
    let values = convert(&header, &data, path, |v| v)?;
    if let Some(i) = values.iter().position(|v| !v.is_finite()) {
        let count = values.iter().filter(|v| !v.is_finite()).count();
        let [nx, ny, _] = header.dims();
        return Err(Error::image(
            path,
            format!(
                "mask has {count} non-finite value(s) (NaN or Inf), first at voxel (x={}, y={}, z={})",
                i % nx,
                i / nx % ny,
                i / (nx * ny)
            ),
        ));
    }
    let mask = to_array(&header, values.into_iter().map(|v| u8::from(v != 0.0)).collect(), path)?;
    Ok((header, mask))
}

/// Writes `mask` (shape `[nz, ny, nx]` = the header's dims) as uint8 (datatype 2, bitpix 8) on
/// the grid of `like`. Values are written as given (0/1 for a mask, or small labels);
/// `scl_slope` is set to 1 and `scl_inter` to 0, `cal_min`/`cal_max` to the value range.
pub fn write_mask(path: &Path, like: &NiftiHeader, mask: &Array3<u8>) -> Result<()> {
    check_shape(like, mask.dim())?;
    let (lo, hi) = mask.iter().fold((u8::MAX, u8::MIN), |(lo, hi), &v| (lo.min(v), hi.max(v)));
    let header = output_header(like, DT_UINT8, 8, f32::from(lo), f32::from(hi));
    write_file(path, &header, mask.iter().copied(), |v, out| out.push(v))
}

/// Writes `data` (shape `[nz, ny, nx]` = the header's dims) as float32 (datatype 16) on the grid
/// of `like`, with no scaling and `cal_min`/`cal_max` set to the value range. NaN and infinite
/// values are refused (our reader would refuse the file).
pub fn write_f32(path: &Path, like: &NiftiHeader, data: &Array3<f32>) -> Result<()> {
    check_shape(like, data.dim())?;
    if data.iter().any(|v| !v.is_finite()) {
        return Err(Error::arg(format!(
            "refusing to write {}: the data contains NaN or infinite values",
            path.display()
        )));
    }
    let (lo, hi) = data.iter().fold((f32::INFINITY, f32::NEG_INFINITY), |(lo, hi), &v| (lo.min(v), hi.max(v)));
    let header = output_header(like, DT_FLOAT32, 32, lo, hi);
    write_file(path, &header, data.iter().copied(), |v, out| out.extend_from_slice(&v.to_le_bytes()))
}

/// Writes several float32 maps on the grid of `like` as one 4D NIfTI file (`dim[0]` = 4,
/// `dim[4]` = the number of maps, one 3D volume per map in order), e.g. one class activation
/// map per tap layer. Each map has shape `[nz, ny, nx]` = the header's dims; no scaling,
/// `cal_min`/`cal_max` the overall value range; NaN and infinite values are refused. Our own
/// reader ([`read`]) takes 3D volumes only; nibabel, ITK-SNAP and 3D Slicer read these files.
pub fn write_f32_series(path: &Path, like: &NiftiHeader, maps: &[Array3<f32>]) -> Result<()> {
    if maps.is_empty() || maps.len() > i16::MAX as usize {
        return Err(Error::arg(format!("a 4D NIfTI holds 1..={} maps, got {}", i16::MAX, maps.len())));
    }
    for m in maps {
        check_shape(like, m.dim())?;
    }
    if maps.iter().flatten().any(|v| !v.is_finite()) {
        return Err(Error::arg(format!(
            "refusing to write {}: the data contains NaN or infinite values",
            path.display()
        )));
    }
    let (lo, hi) =
        maps.iter().flatten().fold((f32::INFINITY, f32::NEG_INFINITY), |(lo, hi), &v| (lo.min(v), hi.max(v)));
    let mut header = output_header(like, DT_FLOAT32, 32, lo, hi);
    header.set_i16(DIM, 4);
    header.set_i16(DIM + 2 * 4, maps.len() as i16);
    write_file(path, &header, maps.iter().flatten().copied(), |v, out| out.extend_from_slice(&v.to_le_bytes()))
}

/// Writes a volume's HU values as float32 with the geometry of `header` (which must have the
/// volume's dims); see [`write_f32`].
pub fn write_volume(path: &Path, header: &NiftiHeader, volume: &Volume) -> Result<()> {
    write_f32(path, header, volume.data())
}

/// A fresh float32 header for a volume that did not come from a file (generated data, a buffer
/// from the C ABI). `pixdim` is the spacing, units are millimetres, and the affine is stored as
/// the sform with `sform_code` 2 (aligned anatomical). The same affine is also stored as the
/// qform (`qform_code` 2) when it is a rotation (or reflection) times the spacing, as for any
/// scanner grid, so that readers which use only the qform agree; an affine with shear or with
/// column lengths other than the spacing leaves `qform_code` 0. A volume without orientation
/// ([`Volume::oriented`] false) gets codes 0 and 0 instead, so the file claims none either (its
/// affine is then pixdim's scaling, which is what such a volume holds).
pub fn header_for(volume: &Volume) -> NiftiHeader {
    header_with_code(volume, if volume.oriented() { 2 } else { 0 })
}

/// Like [`header_for`], for a volume whose affine is the scanner's own coordinates (a DICOM
/// series): `sform_code` and `qform_code` 1 (scanner anatomical), as dcm2niix writes them.
pub fn header_for_scanner(volume: &Volume) -> NiftiHeader {
    header_with_code(volume, 1)
}

fn header_with_code(volume: &Volume, code: i16) -> NiftiHeader {
    let mut h = NiftiHeader { raw: [0; HEADER_SIZE], big_endian: false };
    let [nx, ny, nz] = volume.dims();
    let spacing = volume.spacing();
    let affine = volume.affine();
    h.set_i32(SIZEOF_HDR, HEADER_SIZE as i32);
    // A Volume never exceeds MAX_VOXELS in total, but one side can still exceed i16::MAX, which
    // NIfTI-1 cannot store; saturate so that writing then fails the shape check, not silently.
    let side = |n: usize| i16::try_from(n).unwrap_or(i16::MAX);
    for (i, v) in [3, side(nx), side(ny), side(nz), 1, 1, 1, 1].into_iter().enumerate() {
        h.set_i16(DIM + 2 * i, v);
    }
    h.set_i16(DATATYPE, DT_FLOAT32);
    h.set_i16(BITPIX, 32);
    let mut pixdim = [1.0f32; 8];
    for (p, s) in pixdim[1..4].iter_mut().zip(spacing) {
        *p = s as f32;
    }
    if let Some((quatern, qfac)) = affine_to_quatern(&affine, spacing) {
        pixdim[0] = qfac;
        for (i, q) in quatern.into_iter().enumerate() {
            h.set_f32(QUATERN_B + 4 * i, q as f32);
        }
        for (i, row) in affine.iter().take(3).enumerate() {
            h.set_f32(QOFFSET_X + 4 * i, row[3] as f32);
        }
        // Code 0 (an unoriented volume) keeps the quaternion for readers that show it anyway.
        h.set_i16(QFORM_CODE, code);
    }
    for (i, p) in pixdim.into_iter().enumerate() {
        h.set_f32(PIXDIM + 4 * i, p);
    }
    h.set_f32(VOX_OFFSET, DATA_OFFSET as f32);
    h.set_f32(SCL_SLOPE, 1.0);
    h.raw[XYZT_UNITS] = 2 | 8; // millimetres, seconds
    h.set_i16(SFORM_CODE, code);
    for (r, row) in affine.iter().take(3).enumerate() {
        for (c, v) in row.iter().enumerate() {
            h.set_f32(SROW_X + 16 * r + 4 * c, *v as f32);
        }
    }
    let descrip = b"ichseg";
    h.raw[DESCRIP..DESCRIP + descrip.len()].copy_from_slice(descrip);
    h.raw[MAGIC..MAGIC + 4].copy_from_slice(b"n+1\0");
    h
}

/// The quaternion `(b, c, d)` and `qfac` of an affine whose 3x3 part is an orthogonal matrix
/// times `diag(spacing)`, or `None` when it is not (shear, or columns not as long as the
/// spacing). The rotation-to-quaternion step is `nifti_mat44_to_quatern` of nifti1_io.c.
fn affine_to_quatern(a: &[[f64; 4]; 4], spacing: [f64; 3]) -> Option<([f64; 3], f32)> {
    // Columns of the 3x3 part divided by the spacing: must be orthonormal.
    let mut r = [[0.0f64; 3]; 3];
    for c in 0..3 {
        for row in 0..3 {
            r[row][c] = a[row][c] / spacing[c];
        }
    }
    let col = |c: usize| [r[0][c], r[1][c], r[2][c]];
    let dot = |u: [f64; 3], v: [f64; 3]| u[0] * v[0] + u[1] * v[1] + u[2] * v[2];
    const TOL: f64 = 1e-4;
    for c in 0..3 {
        if (dot(col(c), col(c)) - 1.0).abs() > TOL {
            return None;
        }
        if dot(col(c), col((c + 1) % 3)).abs() > TOL {
            return None;
        }
    }
    let det = r[0][0] * (r[1][1] * r[2][2] - r[1][2] * r[2][1]) - r[0][1] * (r[1][0] * r[2][2] - r[1][2] * r[2][0])
        + r[0][2] * (r[1][0] * r[2][1] - r[1][1] * r[2][0]);
    // A reflection is stored as qfac = -1 with the third column negated.
    let qfac = if det < 0.0 {
        for row in r.iter_mut() {
            row[2] = -row[2];
        }
        -1.0
    } else {
        1.0
    };
    let trace = r[0][0] + r[1][1] + r[2][2] + 1.0;
    let (qa, b, c, d) = if trace > 0.5 {
        let qa = 0.5 * trace.sqrt();
        (qa, 0.25 * (r[2][1] - r[1][2]) / qa, 0.25 * (r[0][2] - r[2][0]) / qa, 0.25 * (r[1][0] - r[0][1]) / qa)
    } else {
        // Near-180-degree rotations: divide by the largest of b, c, d instead of by a.
        let xd = 1.0 + r[0][0] - (r[1][1] + r[2][2]);
        let yd = 1.0 + r[1][1] - (r[0][0] + r[2][2]);
        let zd = 1.0 + r[2][2] - (r[0][0] + r[1][1]);
        if xd > 1.0 {
            let b = 0.5 * xd.sqrt();
            (0.25 * (r[2][1] - r[1][2]) / b, b, 0.25 * (r[0][1] + r[1][0]) / b, 0.25 * (r[0][2] + r[2][0]) / b)
        } else if yd > 1.0 {
            let c = 0.5 * yd.sqrt();
            (0.25 * (r[0][2] - r[2][0]) / c, 0.25 * (r[0][1] + r[1][0]) / c, c, 0.25 * (r[1][2] + r[2][1]) / c)
        } else {
            let d = 0.5 * zd.sqrt();
            (0.25 * (r[1][0] - r[0][1]) / d, 0.25 * (r[0][2] + r[2][0]) / d, 0.25 * (r[1][2] + r[2][1]) / d, d)
        }
    };
    // (a, b, c, d) and its negation are the same rotation; NIfTI stores the one with a >= 0,
    // leaving a implied.
    let sign = if qa < 0.0 { -1.0 } else { 1.0 };
    Some(([sign * b, sign * c, sign * d], qfac))
}

/// Opens a file and reads its header and voxel bytes.
fn load(path: &Path, limit: MemoryLimit) -> Result<(NiftiHeader, Vec<u8>)> {
    let file = File::open(path).map_err(|e| Error::io(path, e))?;
    decode(BufReader::new(file), path, limit)
}

/// Reads a header and its voxel bytes from a plain or gzipped stream, never reading (or
/// decompressing) more than `vox_offset` + the bytes the header's dimensions call for.
fn decode<R: BufRead>(mut reader: R, name: &Path, limit: MemoryLimit) -> Result<(NiftiHeader, Vec<u8>)> {
    let start = reader.fill_buf().map_err(|e| read_error(name, e))?;
    let gzipped = start.starts_with(&[0x1f, 0x8b]);
    let mut stream: Box<dyn Read + '_> = if gzipped { Box::new(MultiGzDecoder::new(reader)) } else { Box::new(reader) };

    let mut head = Vec::with_capacity(HEADER_SIZE);
    (&mut stream).take(HEADER_SIZE as u64).read_to_end(&mut head).map_err(|e| read_error(name, e))?;
    let header = NiftiHeader::parse(&head, name)?;

    let (_, bytes_per_voxel) = supported_datatype(header.datatype()).unwrap_or(("", 1));
    let voxels = checked_voxel_count(header.dims()).map_err(|e| Error::image(name, e.to_string()))?;
    // Both factors are bounded (MAX_VOXELS, 8 bytes, MAX_VOX_OFFSET), so this cannot overflow.
    let offset = header.vox_offset() as u64;
    let needed = (voxels * bytes_per_voxel) as u64;

    // Skip the extensions between the header and the data.
    let skip = offset - HEADER_SIZE as u64;
    let skipped =
        std::io::copy(&mut (&mut stream).take(skip), &mut std::io::sink()).map_err(|e| read_error(name, e))?;
    // The raw voxels and their float32 copy, refused before anything is allocated when over
    // the caller's limit.
    limit.check(
        usize::try_from(needed).ok().and_then(|b| b.checked_add(voxels.checked_mul(4)?)),
        &format!("reading {}", name.display()),
    )?;
    // Grow the buffer as data arrives rather than trusting the header with one big allocation;
    // each step is fallible, so a file that inflates beyond memory is an error, not an abort.
    let mut data: Vec<u8> = Vec::new();
    if skipped == skip {
        let mut stream = stream.take(needed);
        while (data.len() as u64) < needed {
            let step = (needed - data.len() as u64).min(64 << 20);
            data.try_reserve(step as usize).map_err(|_| {
                Error::OutOfMemory(format!("{}: no memory for its {needed} bytes of voxel data", name.display()))
            })?;
            if (&mut stream).take(step).read_to_end(&mut data).map_err(|e| read_error(name, e))? == 0 {
                break;
            }
        }
    }
    if (data.len() as u64) < needed {
        let [nx, ny, nz] = header.dims();
        return Err(Error::image(
            name,
            format!(
                "image data truncated: the header needs {} bytes (vox_offset {offset} + {nx}x{ny}x{nz} \
                 voxels x {bytes_per_voxel} bytes) but the file has {}{}",
                offset + needed,
                HEADER_SIZE as u64 + skipped + data.len() as u64,
                if gzipped { " (decompressed)" } else { "" }
            ),
        ));
    }
    Ok((header, data))
}

/// A read failure: a corrupt or cut-off gzip stream is a malformed image, anything else an OS
/// error (plain reads report a short file by returning fewer bytes, handled by the caller).
fn read_error(name: &Path, e: std::io::Error) -> Error {
    match e.kind() {
        std::io::ErrorKind::InvalidData | std::io::ErrorKind::InvalidInput | std::io::ErrorKind::UnexpectedEof => {
            Error::image(name, format!("truncated or corrupt compressed data: {e}"))
        }
        _ => Error::io(name, e),
    }
}

/// Decodes the voxel bytes (in the file's byte order) to numbers, applies the header's scaling in
/// f64, and maps each value through `map`.
fn convert<T>(header: &NiftiHeader, data: &[u8], name: &Path, map: impl Fn(f64) -> T) -> Result<Vec<T>> {
    let scale = header.scaling(name)?;
    let value = |v: f64| match scale {
        Some((slope, inter)) => map(v * slope + inter),
        None => map(v),
    };
    let be = header.big_endian;
    let mut out = try_with_capacity(checked_voxel_count(header.dims())?, "the decoded voxels")?;
    macro_rules! decode_as {
        ($t:ty) => {{
            const N: usize = std::mem::size_of::<$t>();
            out.extend(data.chunks_exact(N).map(|c| {
                let mut b = [0u8; N];
                b.copy_from_slice(c);
                let v = if be { <$t>::from_be_bytes(b) } else { <$t>::from_le_bytes(b) };
                value(v as f64)
            }))
        }};
    }
    match header.datatype() {
        2 => out.extend(data.iter().map(|&v| value(f64::from(v)))),
        256 => out.extend(data.iter().map(|&v| value(f64::from(v as i8)))),
        4 => decode_as!(i16),
        512 => decode_as!(u16),
        8 => decode_as!(i32),
        768 => decode_as!(u32),
        1024 => decode_as!(i64),
        1280 => decode_as!(u64),
        16 => decode_as!(f32),
        64 => decode_as!(f64),
        dt => return Err(Error::image(name, format!("datatype {dt} ({}) is not supported", datatype_name(dt)))),
    }
    Ok(out)
}

/// Values in file order (x fastest) to an array of shape `[nz, ny, nx]`.
fn to_array<T>(header: &NiftiHeader, values: Vec<T>, name: &Path) -> Result<Array3<T>> {
    let [nx, ny, nz] = header.dims();
    Array3::from_shape_vec((nz, ny, nx), values).map_err(|e| Error::image(name, e.to_string()))
}

fn to_image(header: NiftiHeader, data: &[u8], name: &Path) -> Result<NiftiImage> {
    let values = convert(&header, data, name, |v| v as f32)?;
    let array = to_array(&header, values, name)?;
    let spacing = header.spacing();
    for (i, s) in spacing.iter().enumerate() {
        if !(s.is_finite() && *s > 0.0) {
            return Err(Error::image(
                name,
                format!("pixdim[{}] = {} is not a usable voxel size", i + 1, header.pixdim()[i + 1]),
            ));
        }
    }
    // Volume checks for NaN/Inf voxels and a non-finite affine; both are defects of this file,
    // so report them as such, with its path.
    let volume = Volume::from_array(array, spacing, Some(header.affine()))
        .map_err(|e| match e {
            Error::NonFiniteVoxels { .. } | Error::InvalidArgument(_) => Error::image(name, e.to_string()),
            other => other,
        })?
        // Codes 0 and 0: the affine is only pixdim's scaling (NIfTI-1 "method 1"), no orientation.
        .with_oriented(header.sform_code() > 0 || header.qform_code() > 0);
    Ok(NiftiImage { header, volume })
}

fn check_shape(like: &NiftiHeader, shape: (usize, usize, usize)) -> Result<()> {
    let [nx, ny, nz] = like.dims();
    if shape != (nz, ny, nx) {
        return Err(Error::arg(format!(
            "array of shape [nz, ny, nx] = [{}, {}, {}] does not match the header's {nx}x{ny}x{nz} voxels",
            shape.0, shape.1, shape.2
        )));
    }
    Ok(())
}

/// `like` with the fields that describe the new voxel data replaced.
fn output_header(like: &NiftiHeader, datatype: i16, bitpix: i16, cal_min: f32, cal_max: f32) -> NiftiHeader {
    let mut h = like.clone();
    h.big_endian = false;
    h.set_i32(SIZEOF_HDR, HEADER_SIZE as i32);
    h.set_i16(DIM, 3);
    for i in 4..8 {
        h.set_i16(DIM + 2 * i, 1);
    }
    // intent_code and everything else not set below stay as they were in `like`.
    h.set_i16(DATATYPE, datatype);
    h.set_i16(BITPIX, bitpix);
    h.set_f32(VOX_OFFSET, DATA_OFFSET as f32);
    h.set_f32(SCL_SLOPE, 1.0);
    h.set_f32(SCL_INTER, 0.0);
    h.set_f32(CAL_MIN, cal_min);
    h.set_f32(CAL_MAX, cal_max);
    h.raw[MAGIC..MAGIC + 4].copy_from_slice(b"n+1\0");
    h
}

/// Writes header, 4 zero extension bytes and the voxels (encoded by `encode` in chunks),
/// gzipped when the path ends in `.gz`, atomically.
fn write_file<T>(
    path: &Path,
    header: &NiftiHeader,
    values: impl Iterator<Item = T>,
    encode: impl Fn(T, &mut Vec<u8>),
) -> Result<()> {
    let gz = path.extension().is_some_and(|e| e.eq_ignore_ascii_case("gz"));
    write_atomic(path, |w| {
        let io = |e: std::io::Error| Error::io(path, e);
        let body = |out: &mut dyn Write| -> Result<()> {
            out.write_all(&header.raw).map_err(io)?;
            out.write_all(&[0u8; DATA_OFFSET - HEADER_SIZE]).map_err(io)?;
            let mut buf = Vec::with_capacity(1 << 16);
            for v in values {
                encode(v, &mut buf);
                if buf.len() >= 1 << 16 {
                    out.write_all(&buf).map_err(io)?;
                    buf.clear();
                }
            }
            out.write_all(&buf).map_err(io)
        };
        if gz {
            let mut enc = GzEncoder::new(w, Compression::default());
            body(&mut enc)?;
            enc.finish().map_err(io)?;
            Ok(())
        } else {
            body(w)
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn volume(dims: [usize; 3], spacing: [f64; 3], affine: Option<[[f64; 4]; 4]>) -> Volume {
        let n = dims.iter().product::<usize>();
        let data =
            Array3::from_shape_vec((dims[2], dims[1], dims[0]), (0..n).map(|i| i as f32 - 7.5).collect()).unwrap();
        Volume::from_array(data, spacing, affine).unwrap()
    }

    #[test]
    fn an_unoriented_volume_is_written_without_orientation_and_read_back_equal() {
        let v = volume([4, 3, 2], [0.5, 0.75, 5.0], None);
        let h = header_for(&v);
        assert_eq!((h.qform_code(), h.sform_code()), (0, 0));
        let data: Vec<u8> = v.data().iter().flat_map(|x| x.to_le_bytes()).collect();
        let img = read_bytes(&encode(&h, &data), Path::new("mem.nii")).unwrap();
        assert!(!img.volume.oriented());
        assert_eq!(img.volume, v);
    }

    #[test]
    fn series_is_4d_with_one_volume_per_map() {
        let dir = tempfile::tempdir().unwrap();
        let v = volume([3, 2, 2], [1.0, 1.0, 2.0], None);
        let header = header_for(&v);
        let maps = vec![
            Array3::from_elem((2, 2, 3), 0.25f32),
            Array3::from_shape_fn((2, 2, 3), |(z, y, x)| (z * 6 + y * 3 + x) as f32),
        ];
        let path = dir.path().join("cams.nii.gz");
        write_f32_series(&path, &header, &maps).unwrap();
        let mut raw = vec![];
        MultiGzDecoder::new(File::open(&path).unwrap()).read_to_end(&mut raw).unwrap();
        let i16_at = |o: usize| i16::from_le_bytes([raw[o], raw[o + 1]]);
        assert_eq!((0..5).map(|i| i16_at(DIM + 2 * i)).collect::<Vec<_>>(), [4, 3, 2, 2, 2]);
        assert_eq!(i16_at(DATATYPE), DT_FLOAT32);
        let values: Vec<f32> =
            raw[DATA_OFFSET..].chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect();
        let want: Vec<f32> = maps.iter().flatten().copied().collect();
        assert_eq!(values, want);
        let err = read(&path).unwrap_err().to_string();
        assert!(err.contains("4D volumes (2 time points)"), "{err}");
        assert!(write_f32_series(&path, &header, &[]).is_err());
        assert!(write_f32_series(&path, &header, &[Array3::zeros((2, 2, 2))]).is_err());
        assert!(write_f32_series(&path, &header, &[Array3::from_elem((2, 2, 3), f32::NAN)]).is_err());
    }

    fn encode(header: &NiftiHeader, data: &[u8]) -> Vec<u8> {
        let mut out = header.raw.to_vec();
        out.extend_from_slice(&[0; 4]);
        out.extend_from_slice(data);
        out
    }

    fn gzip(bytes: &[u8]) -> Vec<u8> {
        let mut enc = GzEncoder::new(Vec::new(), Compression::fast());
        enc.write_all(bytes).unwrap();
        enc.finish().unwrap()
    }

    fn err(bytes: &[u8]) -> String {
        read_bytes(bytes, Path::new("mem.nii")).unwrap_err().to_string()
    }

    #[test]
    fn header_for_round_trips_in_memory() {
        // An explicit affine: the file's codes 2 make the read volume oriented.
        let scaling = [[0.5, 0.0, 0.0, 0.0], [0.0, 0.75, 0.0, 0.0], [0.0, 0.0, 5.0, 0.0], [0.0, 0.0, 0.0, 1.0]];
        let v = volume([4, 3, 2], [0.5, 0.75, 5.0], Some(scaling));
        let h = header_for(&v);
        assert_eq!(h.dims(), [4, 3, 2]);
        assert_eq!(h.spacing(), [0.5, 0.75, 5.0]);
        assert_eq!((h.qform_code(), h.sform_code()), (2, 2));
        let data: Vec<u8> = v.data().iter().flat_map(|x| x.to_le_bytes()).collect();
        let img = read_bytes(&encode(&h, &data), Path::new("mem.nii")).unwrap();
        assert_eq!(img.volume, v);
        assert_eq!(h.qform(), h.sform());
    }

    #[test]
    fn orientation_is_known_only_with_a_qform_or_sform_code() {
        let v = volume([4, 3, 2], [0.5, 0.75, 5.0], None);
        let data: Vec<u8> = v.data().iter().flat_map(|x| x.to_le_bytes()).collect();
        for (qcode, scode, oriented) in [(0, 0, false), (1, 0, true), (0, 2, true), (1, 1, true)] {
            let mut h = header_for(&v);
            h.set_i16(QFORM_CODE, qcode);
            h.set_i16(SFORM_CODE, scode);
            let img = read_bytes(&encode(&h, &data), Path::new("mem.nii")).unwrap();
            assert_eq!(img.volume.oriented(), oriented, "qform_code {qcode} sform_code {scode}");
        }
    }

    #[test]
    fn quaternion_round_trip_for_rotations_and_reflections() {
        // Rotations about each axis by angles that exercise every branch of mat44_to_quatern,
        // each with and without a flipped third axis (qfac -1).
        let spacing = [0.4, 0.6, 2.5];
        for axis in 0..3 {
            for deg in [0.0f64, 30.0, 90.0, 150.0, 180.0, 250.0] {
                for flip in [1.0, -1.0] {
                    let (s, c) = deg.to_radians().sin_cos();
                    let mut rot = [[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]];
                    let (i, j) = ((axis + 1) % 3, (axis + 2) % 3);
                    rot[i][i] = c;
                    rot[i][j] = -s;
                    rot[j][i] = s;
                    rot[j][j] = c;
                    let mut a = [[0.0; 4], [0.0; 4], [0.0; 4], [0.0, 0.0, 0.0, 1.0]];
                    for r in 0..3 {
                        for k in 0..3 {
                            a[r][k] = rot[r][k] * spacing[k] * if k == 2 { flip } else { 1.0 };
                        }
                        a[r][3] = [-90.0, 12.5, 40.0][r];
                    }
                    let h = header_for(&volume([2, 2, 2], spacing, Some(a)));
                    assert_eq!(h.qform_code(), 2, "axis {axis} deg {deg} flip {flip}");
                    let q = h.qform();
                    for r in 0..3 {
                        for k in 0..4 {
                            assert!(
                                (q[r][k] - a[r][k]).abs() < 1e-5,
                                "axis {axis} deg {deg} flip {flip}: {q:?} vs {a:?}"
                            );
                        }
                    }
                }
            }
        }
    }

    #[test]
    fn sheared_affine_gets_no_qform() {
        let a = [[1.0, 0.25, 0.0, 0.0], [0.0, 1.0, 0.0, 0.0], [0.0, 0.0, 2.0, 0.0], [0.0, 0.0, 0.0, 1.0]];
        let h = header_for(&volume([2, 2, 2], [1.0, 1.0, 2.0], Some(a)));
        assert_eq!((h.qform_code(), h.sform_code()), (0, 2));
        assert_eq!(h.affine(), a);
    }

    #[test]
    fn big_endian_header_and_data_are_swapped() {
        let v = volume([3, 2, 2], [1.0, 2.0, 3.0], None);
        let le = header_for(&v);
        let mut raw = le.raw;
        for (off, width, count) in NUMERIC_FIELDS {
            for chunk in raw[off..off + width * count].chunks_exact_mut(width) {
                chunk.reverse();
            }
        }
        let be = NiftiHeader { raw, big_endian: true };
        let data: Vec<u8> = v.data().iter().flat_map(|x| x.to_be_bytes()).collect();
        let img = read_bytes(&encode(&be, &data), Path::new("be.nii")).unwrap();
        assert!(img.header.was_big_endian());
        assert_eq!(img.header.raw(), le.raw());
        assert_eq!(img.volume, v);
    }

    #[test]
    fn units_are_converted_to_mm() {
        let v = volume([2, 2, 2], [0.001, 0.001, 0.005], None);
        let mut h = header_for(&v);
        h.raw[XYZT_UNITS] = 1; // metres
        let close = |a: f64, b: f64| (a - b).abs() < 1e-6 * b.abs();
        assert!(h.spacing().iter().zip([1.0, 1.0, 5.0]).all(|(&a, b)| close(a, b)), "{:?}", h.spacing());
        assert!(close(h.affine()[2][2], 5.0) && close(h.affine()[0][0], 1.0));
        h.raw[XYZT_UNITS] = 3; // microns
        assert!((h.spacing()[0] - 1e-6).abs() < 1e-12);
    }

    #[test]
    fn a_file_over_the_memory_limit_is_refused_before_its_voxels_are_read() {
        // 64x64x64 int16: 512 KiB of voxels plus 1 MiB as float32, over a 1 MiB limit.
        let v = volume([64, 64, 64], [1.0; 3], None);
        let mut h = header_for(&v);
        h.set_i16(DATATYPE, 4);
        h.set_i16(BITPIX, 16);
        let bytes = encode(&h, &vec![0u8; 64 * 64 * 64 * 2]);
        let e = read_bytes_within(&bytes, Path::new("big.nii"), MemoryLimit(1 << 20)).unwrap_err();
        assert!(matches!(e, Error::OutOfMemory(_)), "{e}");
        assert!(e.to_string().contains("big.nii needs 1.5 MiB but the memory limit is 1.0 MiB"), "{e}");
        assert!(read_bytes_within(&bytes, Path::new("big.nii"), MemoryLimit(2 << 20)).is_ok());
    }

    #[test]
    fn gzip_bomb_is_not_expanded_past_what_the_header_needs() {
        // Header for 2x2x2 uint8, then 128 MiB of zeros: decompression must stop after 8 bytes.
        let v = volume([2, 2, 2], [1.0; 3], None);
        let mut h = header_for(&v);
        h.set_i16(DATATYPE, DT_UINT8);
        let mut enc = GzEncoder::new(Vec::new(), Compression::best());
        enc.write_all(&encode(&h, &[])).unwrap();
        let zeros = vec![0u8; 1 << 20];
        for _ in 0..128 {
            enc.write_all(&zeros).unwrap();
        }
        let bomb = enc.finish().unwrap();
        assert!(bomb.len() < 1 << 20);
        let t = std::time::Instant::now();
        let img = read_bytes(&bomb, Path::new("bomb.nii.gz")).unwrap();
        assert!(img.volume.data().iter().all(|&x| x == 0.0));
        assert!(t.elapsed().as_secs_f64() < 5.0);
    }

    #[test]
    fn huge_declared_size_with_tiny_body_is_truncated_not_allocated() {
        // 1290^3 int8 is just under MAX_VOXELS: allowed, so the reader must not reserve it up front.
        let v = volume([2, 2, 2], [1.0; 3], None);
        let mut h = header_for(&v);
        for i in 1..4 {
            h.set_i16(DIM + 2 * i, 1290);
        }
        h.set_i16(DATATYPE, 256);
        let e = err(&gzip(&encode(&h, &[1, 2, 3])));
        assert!(e.contains("truncated") && e.contains("(decompressed)"), "{e}");
    }

    #[test]
    fn header_edge_cases() {
        // Oriented: the sform and qform codes are 2, so their contents are checked.
        let v = volume([2, 2, 2], [1.0; 3], None).with_oriented(true);
        let base = header_for(&v);
        let body = vec![0u8; 32];
        let with = |f: &dyn Fn(&mut NiftiHeader)| {
            let mut h = base.clone();
            f(&mut h);
            err(&encode(&h, &body))
        };
        assert!(with(&|h| h.set_f32(VOX_OFFSET, 0.0)).contains("vox_offset = 0"));
        assert!(with(&|h| h.set_f32(VOX_OFFSET, 352.5)).contains("vox_offset"));
        assert!(with(&|h| h.set_i16(DIM, 2)).contains("2D images are not supported"));
        assert!(with(&|h| h.set_i16(DIM, 9)).contains("dim[0] = 9"));
        assert!(with(&|h| h.set_i16(DIM + 4, -3)).contains("dim[2] = -3"));
        assert!(with(&|h| h.set_i16(DATATYPE, 32)).contains("datatype 32 (complex64)"));
        assert!(with(&|h| h.set_f32(PIXDIM + 8, 0.0)).contains("pixdim[2] = 0"));
        assert!(with(&|h| {
            h.set_i16(DIM, 5);
            h.set_i16(DIM + 10, 4);
        })
        .contains("dim[5] = 4"));
        assert!(with(&|h| {
            h.set_f32(SCL_SLOPE, 2.0);
            h.set_f32(SCL_INTER, f32::NAN);
        })
        .contains("scl_inter is NaN"));
        assert!(with(&|h| h.set_f32(SROW_X + 4, f32::INFINITY)).contains("affine"));
        // NIfTI-2 is recognised by its header size in either byte order, even from 4 bytes.
        assert!(err(&540i32.to_be_bytes()).contains("NIfTI-2"));
        assert!(err(&[0x1f, 0x8b, 0x08]).contains("corrupt"));
        assert!(err(&[]).contains("too short"));
        // Extra bytes after the data are ignored.
        let data: Vec<u8> = v.data().iter().flat_map(|x| x.to_le_bytes()).chain([9; 10]).collect();
        assert_eq!(read_bytes(&encode(&base, &data), Path::new("m.nii")).unwrap().volume, v);
    }

    #[test]
    fn geometry_mismatch_names_the_field() {
        let v = volume([2, 2, 2], [1.0; 3], None).with_oriented(true);
        let a = header_for(&v);
        let mut b = a.clone();
        assert!(a.same_geometry(&b));
        b.set_f32(SROW_X + 16 + 12, 3.0);
        assert!(a.geometry_mismatch(&b).unwrap().contains("srow_y"));
        let mut c = a.clone();
        c.set_f32(PIXDIM + 4, 1.0 + 1e-7); // float noise is tolerated
        c.set_f32(SCL_SLOPE, 5.0); // not geometry
        assert!(a.same_geometry(&c));
        c.set_i16(DIM + 6, 3);
        assert!(a.geometry_mismatch(&c).unwrap().contains("dimensions differ: 2x2x2 vs 2x2x3"));
        let mut d = a.clone();
        d.set_i16(QFORM_CODE, 1);
        assert!(a.geometry_mismatch(&d).unwrap().contains("qform_code"));
    }

    #[test]
    fn writers_validate_before_touching_disk() {
        let dir = tempfile::tempdir().unwrap();
        let h = header_for(&volume([3, 2, 2], [1.0; 3], None));
        let p = dir.path().join("x.nii");
        let e = write_mask(&p, &h, &Array3::zeros((2, 2, 2))).unwrap_err().to_string();
        assert!(e.contains("does not match"), "{e}");
        let mut nan = Array3::<f32>::zeros((2, 2, 3));
        nan[[1, 1, 1]] = f32::NAN;
        assert!(write_f32(&p, &h, &nan).unwrap_err().to_string().contains("NaN"));
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
    }
}
