//! The two jobs of METHOD.md on top of the stages: segmentation (a U-Net: [`segment`]) and
//! pseudo-labelling (classifiers, CAMs, SCA, CRF: [`pseudo`], whose steps after the CAMs are one
//! function, [`tail`], that the ablation reuses, and whose tuned settings a classifier's metadata
//! may carry, [`tuned`]), the skull-stripped inputs some classifiers want, the options they
//! share, validated once ([`options`]), slice batching, and their JSON reports ([`report`]).

mod batching;
pub mod options;
pub mod pseudo;
pub mod report;
pub mod segment;
mod stripped;
pub mod tail;
pub mod tuned;
