//! Files in and out: NIfTI volumes, JSON reports, atomic writes.

pub mod atomic;
pub mod nifti;
pub mod report;
