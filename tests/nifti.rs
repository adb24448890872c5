//! NIfTI-1 reading and writing against nibabel's reading of the fixtures in tests/fixtures/nifti
//! (made by `python training/make_fixtures.py --only nifti`).
//!
//! Tolerances: voxel values within 1e-5 relative (of max(1, |value|)): the reader computes in f64
//! and returns f32 (6e-8 relative), and the JSON stores 9 significant digits. Affines within
//! 1e-5 relative for the same reason (float32 header fields, f64 arithmetic in both readers).

use ichseg::io::nifti::{self, NiftiHeader};
use ichseg::Error;
use ndarray::Array3;
use serde_json::Value;
use std::path::{Path, PathBuf};

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/nifti")
}

/// Every good case: (reference JSON, paths of the files it describes).
fn good_cases() -> Vec<(String, Value, Vec<PathBuf>)> {
    let dir = fixtures().join("good");
    let mut cases: Vec<_> = std::fs::read_dir(&dir)
        .expect("tests/fixtures/nifti/good exists (run training/make_fixtures.py --only nifti)")
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "json"))
        .map(|p| {
            let json: Value = serde_json::from_str(&std::fs::read_to_string(&p).unwrap()).unwrap();
            let files = json["files"].as_array().unwrap().iter().map(|f| dir.join(f.as_str().unwrap())).collect();
            (p.file_stem().unwrap().to_string_lossy().into_owned(), json, files)
        })
        .collect();
    cases.sort_by(|a, b| a.0.cmp(&b.0));
    assert!(cases.len() >= 20, "expected the full fixture set, found {} cases", cases.len());
    cases
}

fn f64s(v: &Value) -> Vec<f64> {
    v.as_array().unwrap().iter().map(|x| x.as_f64().unwrap()).collect()
}

fn matrix(v: &Value) -> [[f64; 4]; 4] {
    let rows: Vec<Vec<f64>> = v.as_array().unwrap().iter().map(f64s).collect();
    std::array::from_fn(|r| std::array::from_fn(|c| rows[r][c]))
}

fn close(a: f64, b: f64, rel: f64) -> bool {
    (a - b).abs() <= rel * b.abs().max(1.0)
}

fn assert_matrix_close(what: &str, got: [[f64; 4]; 4], want: [[f64; 4]; 4]) {
    for r in 0..4 {
        for c in 0..4 {
            assert!(close(got[r][c], want[r][c], 1e-5), "{what}: [{r}][{c}] {got:?} vs {want:?}");
        }
    }
}

#[test]
fn reads_every_fixture_like_nibabel() {
    for (name, json, files) in good_cases() {
        let shape: Vec<usize> =
            json["shape"].as_array().unwrap().iter().map(|v| v.as_u64().unwrap() as usize).collect();
        let want = f64s(&json["values"]);
        for path in &files {
            let what = format!("{name} ({})", path.file_name().unwrap().to_string_lossy());
            let img = nifti::read(path).unwrap_or_else(|e| panic!("{what}: {e}"));
            let h = &img.header;
            assert_eq!(img.volume.dims().to_vec(), shape, "{what}");
            assert_eq!(h.dims().to_vec(), shape, "{what}");
            assert_eq!(i64::from(h.datatype()), json["datatype"].as_i64().unwrap(), "{what}");
            assert_eq!(h.was_big_endian(), json["big_endian"].as_bool().unwrap(), "{what}");
            assert_eq!(i64::from(h.qform_code()), json["qform_code"].as_i64().unwrap(), "{what}");
            assert_eq!(i64::from(h.sform_code()), json["sform_code"].as_i64().unwrap(), "{what}");

            // Voxels: the array iterates z, y, x with x fastest, the order of the JSON.
            let got: Vec<f32> = img.volume.data().iter().copied().collect();
            assert_eq!(got.len(), want.len(), "{what}");
            for (i, (&g, &w)) in got.iter().zip(&want).enumerate() {
                assert!(close(f64::from(g), w, 1e-5), "{what}: voxel {i}: {g} vs nibabel {w}");
            }

            // Geometry: our affine and spacing (mm) against the expected ones, which are
            // nibabel's except where the JSON says why not (units, no transform at all).
            assert_matrix_close(&what, img.volume.affine(), matrix(&json["expected_affine"]));
            assert_matrix_close(&what, h.affine(), matrix(&json["expected_affine"]));
            for (g, w) in img.volume.spacing().iter().zip(f64s(&json["expected_spacing_mm"])) {
                assert!(close(*g, w, 1e-6), "{what}: spacing {:?} vs {w}", img.volume.spacing());
            }
            // Both transforms separately, in the file's units, whichever one wins.
            if h.qform_code() > 0 {
                assert_matrix_close(&format!("{what} qform"), h.qform(), matrix(&json["qform"]));
            }
            if h.sform_code() > 0 {
                assert_matrix_close(&format!("{what} sform"), h.sform(), matrix(&json["sform"]));
            }

            // From memory: identical result.
            let bytes = std::fs::read(path).unwrap();
            assert_eq!(nifti::read_bytes(&bytes, path).unwrap(), img, "{what}");

            // As a mask: non-zero (after scaling) is 1.
            let (mh, mask) = nifti::read_mask(path).unwrap();
            assert_eq!(&mh, h, "{what}");
            let want_mask: Vec<u8> = want.iter().map(|&v| u8::from(v != 0.0)).collect();
            assert_eq!(mask.iter().copied().collect::<Vec<_>>(), want_mask, "{what}");
        }
    }
}

#[test]
fn label_fixture_reads_as_binary_mask() {
    let (h, mask) = nifti::read_mask(&fixtures().join("good/labels.nii.gz")).unwrap();
    assert_eq!(mask.dim(), (5, 6, 7));
    assert!(mask.iter().all(|&v| v <= 1));
    let ones = mask.iter().filter(|&&v| v == 1).count();
    assert!(ones > 0 && ones < mask.len());
    assert_eq!(h.datatype(), 2);
}

/// Header bytes that writing may change: sizeof_hdr, dim, datatype+bitpix, vox_offset,
/// scl_slope+scl_inter, cal_max+cal_min, magic. Everything else must be copied.
fn changed_by_writing(offset: usize) -> bool {
    matches!(offset, 0..=3 | 40..=55 | 70..=73 | 108..=119 | 124..=131 | 344..=347)
}

/// Checks a written file without our reader: layout, header constants, data length.
fn check_written_bytes(path: &Path, like: &NiftiHeader, datatype: i16, bytes_per_voxel: usize) {
    let mut bytes = std::fs::read(path).unwrap();
    if path.to_string_lossy().ends_with(".gz") {
        assert_eq!(&bytes[..2], &[0x1f, 0x8b], "{} is gzipped", path.display());
        let mut out = Vec::new();
        std::io::Read::read_to_end(&mut flate2::read::GzDecoder::new(&bytes[..]), &mut out).unwrap();
        bytes = out;
    }
    let [nx, ny, nz] = like.dims();
    assert_eq!(bytes.len(), 352 + nx * ny * nz * bytes_per_voxel);
    let i16_at = |o: usize| i16::from_le_bytes([bytes[o], bytes[o + 1]]);
    let f32_at = |o: usize| f32::from_le_bytes(bytes[o..o + 4].try_into().unwrap());
    assert_eq!(i32::from_le_bytes(bytes[0..4].try_into().unwrap()), 348, "little-endian sizeof_hdr");
    assert_eq!(&bytes[344..352], b"n+1\0\0\0\0\0", "magic and empty extension");
    assert_eq!(i16_at(40), 3);
    assert_eq!([i16_at(42), i16_at(44), i16_at(46)], [nx as i16, ny as i16, nz as i16]);
    assert_eq!(i16_at(70), datatype);
    assert_eq!(i16_at(72) as usize, bytes_per_voxel * 8);
    assert_eq!(f32_at(108), 352.0);
    assert_eq!((f32_at(112), f32_at(116)), (1.0, 0.0));
    for (o, (&got, &want)) in bytes[..348].iter().zip(like.raw().iter()).enumerate() {
        if !changed_by_writing(o) {
            assert_eq!(got, want, "{}: header byte {o} not preserved", path.display());
        }
    }
}

#[test]
fn round_trips_preserve_data_and_geometry() {
    let dir = tempfile::tempdir().unwrap();
    let inputs = [
        "int16_scaled.nii",
        "qform_only.nii.gz",
        "sform_oblique.nii",
        "big_endian_int16.nii.gz",
        "singleton_4d.nii",
        "with_extension.nii.gz",
        "units_metre.nii",
        "no_transform.nii",
    ];
    for input in inputs {
        let src = nifti::read(&fixtures().join("good").join(input)).unwrap();
        let threshold = src.volume.data().iter().copied().sum::<f32>() / src.volume.data().len() as f32;
        let mask = src.volume.data().mapv(|v| u8::from(v > threshold));
        for ext in ["nii", "nii.gz"] {
            let what = format!("{input} -> .{ext}");

            let f = dir.path().join(format!("{input}.f32.{ext}"));
            nifti::write_volume(&f, &src.header, &src.volume).unwrap();
            check_written_bytes(&f, &src.header, 16, 4);
            let back = nifti::read(&f).unwrap();
            assert_eq!(back.volume, src.volume, "{what}: float32 data, spacing and affine");
            assert!(back.header.same_geometry(&src.header), "{what}: {:?}", back.header.geometry_mismatch(&src.header));
            assert!(!back.header.was_big_endian());

            let m = dir.path().join(format!("{input}.mask.{ext}"));
            nifti::write_mask(&m, &src.header, &mask).unwrap();
            check_written_bytes(&m, &src.header, 2, 1);
            let (mh, back_mask) = nifti::read_mask(&m).unwrap();
            assert_eq!(back_mask, mask, "{what}: mask");
            assert!(mh.same_geometry(&src.header), "{what}");
            assert_eq!((mh.datatype(), mh.bitpix()), (2, 8));
            let as_volume = nifti::read(&m).unwrap();
            assert_eq!(as_volume.volume.affine(), src.volume.affine(), "{what}");
            assert_eq!(as_volume.volume.data(), &mask.mapv(f32::from), "{what}");

            // write_f32 with other data on the same grid.
            let probs = src.volume.data().mapv(|v| (v / 4096.0).tanh());
            let p = dir.path().join(format!("{input}.probs.{ext}"));
            nifti::write_f32(&p, &src.header, &probs).unwrap();
            assert_eq!(nifti::read(&p).unwrap().volume.data(), &probs, "{what}");
        }
    }
}

#[test]
fn header_for_generated_volume_round_trips() {
    let dir = tempfile::tempdir().unwrap();
    // An oblique, left-handed grid: rotation about z by 20 degrees, z axis flipped.
    let (s, c) = 20f64.to_radians().sin_cos();
    let sp = [0.45, 0.45, 5.0];
    let affine = [
        [c * sp[0], -s * sp[1], 0.0, -100.0],
        [s * sp[0], c * sp[1], 0.0, 20.0],
        [0.0, 0.0, -sp[2], 60.0],
        [0.0, 0.0, 0.0, 1.0],
    ];
    let data = Array3::from_shape_fn((4, 5, 6), |(z, y, x)| (x * 100 + y * 10 + z) as f32 - 500.0);
    let volume = ichseg::Volume::from_array(data, sp, Some(affine)).unwrap();
    let header = nifti::header_for(&volume);
    assert_eq!((header.qform_code(), header.sform_code()), (2, 2));
    assert_matrix_close("qform of header_for", header.qform(), affine);
    let path = dir.path().join("generated.nii.gz");
    nifti::write_volume(&path, &header, &volume).unwrap();
    let back = nifti::read(&path).unwrap();
    assert_eq!(back.volume.data(), volume.data());
    assert_matrix_close("affine after writing", back.volume.affine(), affine);
    assert!(back.header.same_geometry(&header));
}

#[test]
fn geometry_mismatch_between_fixtures_is_named() {
    let a = nifti::read(&fixtures().join("good/int16.nii")).unwrap().header;
    let b = nifti::read(&fixtures().join("good/qform_only.nii")).unwrap().header;
    let c = nifti::read(&fixtures().join("good/int16.nii.gz")).unwrap().header;
    assert!(a.same_geometry(&c));
    let why = a.geometry_mismatch(&b).expect("different grids");
    assert!(why.contains("qfac"), "{why}");
}

/// Each malformed or unsupported input with a phrase its error message must contain.
const BAD: &[(&str, &[&str])] = &[
    ("truncated.nii", &["image data truncated", "needs 772 bytes", "the file has 672"]),
    ("truncated.nii.gz", &["image data truncated", "needs 772 bytes", "the file has 672 (decompressed)"]),
    ("truncated_stream.nii.gz", &["truncated or corrupt compressed data"]),
    ("truncated_header.nii", &["too short for a NIfTI-1 header: 100 bytes, need 348"]),
    ("garbage.nii", &["not a NIfTI-1 file: header size field is", "magic is"]),
    ("wrong_magic.nii", &["bad magic \"xyz\\x00\""]),
    ("pair.hdr", &[".hdr/.img pairs are not supported"]),
    ("absurd_dims.nii", &["32767x32767x32767", "exceed the limit"]),
    ("zero_dim.nii", &["dim[3] = 0"]),
    ("true_4d.nii", &["4D volumes (3 time points) are not supported; pass one 3D volume"]),
    ("complex64.nii", &["datatype 32 (complex64) is not supported"]),
    ("small_vox_offset.nii", &["vox_offset = 0 is invalid"]),
    ("nan_voxel.nii", &["1 non-finite voxel(s)", "x=3, y=2, z=1"]),
    ("nifti2.nii", &["NIfTI-2"]),
];

#[test]
fn bad_inputs_give_clear_errors() {
    for (file, phrases) in BAD {
        let path = fixtures().join("bad").join(file);
        let err = nifti::read(&path).expect_err(file);
        let msg = err.to_string();
        assert!(matches!(err, Error::InvalidImage { .. }), "{file}: {err:?}");
        assert!(msg.contains(&*path.to_string_lossy()), "{file}: message lacks the path: {msg}");
        for phrase in *phrases {
            assert!(msg.contains(phrase), "{file}: {msg:?} lacks {phrase:?}");
        }
        // Same verdict from memory and through read_mask, except that masks do not need finite
        // spacing and report NaN in their own words.
        let bytes = std::fs::read(&path).unwrap();
        assert!(nifti::read_bytes(&bytes, &path).is_err(), "{file}");
        let mask_err = nifti::read_mask(&path).expect_err(file).to_string();
        if *file == "nan_voxel.nii" {
            assert!(mask_err.contains("non-finite"), "{mask_err}");
        } else {
            assert_eq!(mask_err, msg, "{file}");
        }
    }
}

#[test]
fn missing_file_is_an_io_error() {
    let err = nifti::read(Path::new("/nonexistent/ct.nii.gz")).unwrap_err();
    assert!(matches!(err, Error::Io { .. }), "{err:?}");
    assert!(err.to_string().contains("/nonexistent/ct.nii.gz"));
}

#[test]
fn failed_writes_leave_no_file() {
    let src = nifti::read(&fixtures().join("good/uint8.nii")).unwrap();
    let mask = src.volume.data().mapv(|v| u8::from(v > 100.0));

    for target in ["/nonexistent/dir/x.nii.gz", "/nonexistent/dir/x.nii"] {
        let target = Path::new(target);
        let err = nifti::write_mask(target, &src.header, &mask).unwrap_err();
        assert!(matches!(err, Error::Io { .. }), "{err:?}");
        assert!(err.to_string().contains(&*target.to_string_lossy()), "{err}");
        assert!(!target.exists());
        assert!(nifti::write_f32(target, &src.header, src.volume.data()).is_err());
        assert!(!target.exists());
    }

    let dir = tempfile::tempdir().unwrap();
    let wrong = Array3::<u8>::zeros((5, 7, 6)); // [nz, nx, ny]: axes swapped
    for name in ["mask.nii", "mask.nii.gz"] {
        let target = dir.path().join(name);
        let err = nifti::write_mask(&target, &src.header, &wrong).unwrap_err();
        assert!(matches!(err, Error::InvalidArgument(_)), "{err:?}");
        assert!(err.to_string().contains("does not match the header's 7x6x5 voxels"), "{err}");
        let err = nifti::write_f32(&target, &src.header, &wrong.mapv(f32::from)).unwrap_err();
        assert!(matches!(err, Error::InvalidArgument(_)), "{err:?}");
    }
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0, "nothing written, no temp files");

    // An existing file survives a failed overwrite untouched.
    let target = dir.path().join("keep.nii");
    nifti::write_mask(&target, &src.header, &mask).unwrap();
    let before = std::fs::read(&target).unwrap();
    assert!(nifti::write_mask(&target, &src.header, &wrong).is_err());
    assert_eq!(std::fs::read(&target).unwrap(), before);
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
}
