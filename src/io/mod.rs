//! Files in and out: NIfTI volumes, slice-label CSVs, atomic writes. io knows no job: the
//! reports of the jobs are in [`crate::pipeline::report`].

pub mod atomic;
#[cfg(feature = "dicom")]
pub mod dicom;
pub mod nifti;
pub mod slice_labels;
