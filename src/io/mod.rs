//! Files in and out: NIfTI volumes, JSON reports, slice-label CSVs, atomic writes.

pub mod atomic;
pub mod nifti;
pub mod report;
pub mod slice_labels;
