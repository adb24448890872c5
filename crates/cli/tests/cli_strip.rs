//! `ichseg skull-strip`: one volume and a BCIHM-layout dataset (resumed), and its refusals.

mod common;
use common::{ichseg, p, root, stderr, stdout};

use ichseg::io::nifti;
use std::path::{Path, PathBuf};

fn sample() -> PathBuf {
    root().join("models/samples/sample.nii.gz")
}

fn strip(args: &[&str]) -> std::process::Output {
    let mut all = vec!["skull-strip"];
    all.extend(args);
    ichseg(&all)
}

/// Every voxel of `stripped` is the original's or air, and both kinds are plentiful.
fn check_stripped(original: &Path, stripped: &Path) {
    let (a, b) = (nifti::read(original).unwrap().volume, nifti::read(stripped).unwrap().volume);
    assert_eq!((a.dims(), a.spacing(), a.affine()), (b.dims(), b.spacing(), b.affine()));
    let (mut kept, mut air) = (0usize, 0usize);
    for (&x, &y) in a.data().iter().zip(b.data().iter()) {
        if x == y {
            kept += 1;
        } else {
            assert_eq!(y, -1000.0, "a changed voxel becomes air");
            air += 1;
        }
    }
    let n = a.data().len();
    assert!(kept > n / 10 && air > n / 10, "kept {kept}, air {air} of {n}");
    // the skull (bone, >= 300 HU) is gone
    assert!(b.data().iter().all(|&v| v < 300.0) && a.data().iter().any(|&v| v >= 300.0));
}

#[test]
fn one_volume_gets_air_outside_the_skull() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("stripped.nii.gz");
    let run = strip(&[p(&sample()), "-o", p(&out), "--margin-mm", "0"]);
    assert!(run.status.success(), "{}", stderr(&run));
    assert!(stdout(&run).contains("% of the voxels kept (margin 0 mm)"), "{}", stdout(&run));
    check_stripped(&sample(), &out);
}

#[test]
fn a_dataset_is_stripped_with_its_tables_and_masks_and_resumes() {
    let dir = tempfile::tempdir().unwrap();
    let ds = dir.path().join("bcihm");
    for sub in ["ct_scans", "masks"] {
        std::fs::create_dir_all(ds.join(sub)).unwrap();
    }
    for n in ["049.nii.gz", "050.nii.gz"] {
        std::fs::copy(sample(), ds.join("ct_scans").join(n)).unwrap();
        std::fs::copy(root().join("models/samples/sample_mask.nii.gz"), ds.join("masks").join(n)).unwrap();
    }
    std::fs::write(ds.join("hemorrhage_diagnosis_raw_ct.csv"), "PatientNumber,SliceNumber,No_Hemorrhage\n").unwrap();
    let out = dir.path().join("stripped");
    let run = || strip(&["--dataset", p(&ds), "-o", p(&out), "-q"]);
    let first = run();
    assert!(first.status.success(), "{}", stderr(&first));
    check_stripped(&ds.join("ct_scans/050.nii.gz"), &out.join("ct_scans/050.nii.gz"));
    for copied in ["hemorrhage_diagnosis_raw_ct.csv", "masks/049.nii.gz", "masks/050.nii.gz"] {
        assert_eq!(std::fs::read(ds.join(copied)).unwrap(), std::fs::read(out.join(copied)).unwrap(), "{copied}");
    }
    std::fs::remove_file(out.join("ct_scans/049.nii.gz")).unwrap();
    let again = strip(&["--dataset", p(&ds), "-o", p(&out)]);
    assert!(stdout(&again).contains("1 volume(s) stripped, 1 already there"), "{}", stdout(&again));
    assert_eq!(std::fs::read_dir(out.join("ct_scans")).unwrap().count(), 2, "no temporary files left");
}

#[test]
fn bad_requests_are_refused_and_write_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("s.nii.gz");
    for (args, says) in [
        (vec![p(&sample()), "-o", p(&out), "--margin-mm=-1"], "intracranial margin"),
        (vec![p(&sample()), "-o", p(&out), "--margin-mm", "NaN"], "intracranial margin"),
        (vec![p(&sample()), "-o", "seg.dcm"], "the output is a NIfTI volume"),
    ] {
        let run = strip(&args);
        assert!(!run.status.success());
        assert!(stderr(&run).contains(says), "{args:?}: {}", stderr(&run));
    }
    // a truncated scan: a clear error and no output
    let bytes = std::fs::read(sample()).unwrap();
    let truncated = dir.path().join("cut.nii.gz");
    std::fs::write(&truncated, &bytes[..bytes.len() / 2]).unwrap();
    let run = strip(&[p(&truncated), "-o", p(&out)]);
    assert!(!run.status.success() && stderr(&run).contains("ichseg: error:"), "{}", stderr(&run));
    assert!(!out.exists());
    // a dataset stripped into itself
    let ds = dir.path().join("ds");
    std::fs::create_dir_all(ds.join("ct_scans")).unwrap();
    std::fs::copy(sample(), ds.join("ct_scans/001.nii.gz")).unwrap();
    let run = strip(&["--dataset", p(&ds), "-o", p(&ds)]);
    assert!(stderr(&run).contains("must not be the dataset itself"), "{}", stderr(&run));
}
