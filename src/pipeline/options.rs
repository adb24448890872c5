//! What the segmenter and the pseudo-labeller share about their options: the limits, the
//! defaults and one check per value. The C ABI reads the same constants and calls the same
//! checks, so the library and the header cannot disagree about what is accepted.

use crate::error::{Error, Result};
use crate::volume::Window;

/// Input size used when neither the model's shape, its metadata nor the caller fixes one
/// (the paper's 384x384).
pub const DEFAULT_INPUT_SIZE: (usize, usize) = (384, 384);
/// Largest slice batch accepted; bigger batches only cost memory on the CPU.
pub const MAX_BATCH: usize = 256;
/// Largest model input side (rows or columns) a caller may ask for.
pub const MAX_INPUT_SIDE: usize = 8192;

/// Progress of a long call: `done` of `total` slices finished.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Progress {
    pub done: usize,
    pub total: usize,
}

/// What a caller may set in place of a model's `ichseg.*` metadata (METHOD.md section 8), the
/// same for segmentation and pseudo-labelling. `None` falls back to the model (its fixed input
/// shape, then its metadata), then to the default listed.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct ModelOverrides {
    /// Default: level 50 / width 130 HU.
    pub window: Option<Window>,
    /// `(rows, cols)`; default 384x384 ([`DEFAULT_INPUT_SIZE`]).
    pub input_size: Option<(usize, usize)>,
    /// 1 or 3; default 1.
    pub channels: Option<usize>,
    /// `(mean, std)` after windowing; default: none.
    pub normalize: Option<(f32, f32)>,
    /// Logit index of the bleed class: for a segmenter's softmax output, and the gradient target
    /// of pseudo-labelling; default 1.
    pub bleed_index: Option<usize>,
}

impl ModelOverrides {
    /// Checks every value that is set.
    pub(crate) fn check(&self) -> Result<()> {
        check_channels(self.channels)?;
        check_input_size(self.input_size)?;
        if let Some(w) = self.window {
            check_window(w)?;
        }
        check_normalize(self.normalize)
    }
}

/// A probability or map threshold: in [0, 1].
pub(crate) fn check_threshold(threshold: f32) -> Result<()> {
    if threshold.is_finite() && (0.0..=1.0).contains(&threshold) {
        Ok(())
    } else {
        Err(Error::arg(format!("threshold must lie in [0, 1], got {threshold}")))
    }
}

/// Slices per network run: 1..=[`MAX_BATCH`].
pub(crate) fn check_batch(batch: usize) -> Result<()> {
    if (1..=MAX_BATCH).contains(&batch) {
        Ok(())
    } else {
        Err(Error::arg(format!("batch must be 1..={MAX_BATCH}, got {batch}")))
    }
}

/// A requested channel count (None: from the model): 1 or 3.
pub(crate) fn check_channels(channels: Option<usize>) -> Result<()> {
    match channels {
        None | Some(1) | Some(3) => Ok(()),
        Some(c) => Err(Error::arg(format!("channels must be 1 or 3, got {c}"))),
    }
}

/// A requested model input size (None: from the model): each side 1..=[`MAX_INPUT_SIDE`].
pub(crate) fn check_input_size(size: Option<(usize, usize)>) -> Result<()> {
    match size {
        Some((r, c)) if !(1..=MAX_INPUT_SIDE).contains(&r) || !(1..=MAX_INPUT_SIDE).contains(&c) => {
            Err(Error::arg(format!("input size {r}x{c} must be 1..={MAX_INPUT_SIDE} per side")))
        }
        _ => Ok(()),
    }
}

/// A CT window: finite level, positive finite width.
pub(crate) fn check_window(window: Window) -> Result<()> {
    if window.width > 0.0 && window.width.is_finite() && window.level.is_finite() {
        Ok(())
    } else {
        Err(Error::arg(format!("window width must be positive, got {}", window.width)))
    }
}

/// Normalisation after windowing: a finite mean and a positive std.
pub(crate) fn check_normalize(normalize: Option<(f32, f32)>) -> Result<()> {
    match normalize {
        Some((m, sd)) if !(m.is_finite() && sd.is_finite() && sd > 0.0) => {
            Err(Error::arg(format!("normalisation needs a finite mean and a positive std, got {m}, {sd}")))
        }
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_check_accepts_its_range_and_refuses_the_rest() {
        assert!(check_threshold(0.0).is_ok() && check_threshold(1.0).is_ok());
        assert!(check_threshold(-0.01).is_err() && check_threshold(f32::NAN).is_err());
        assert!(check_batch(1).is_ok() && check_batch(MAX_BATCH).is_ok());
        assert!(check_batch(0).is_err() && check_batch(MAX_BATCH + 1).is_err());
        assert!(check_channels(None).is_ok() && check_channels(Some(3)).is_ok());
        let e = check_channels(Some(2)).unwrap_err();
        assert!(matches!(e, Error::InvalidArgument(_)) && e.to_string().contains("got 2"), "{e}");
        assert!(check_input_size(Some((MAX_INPUT_SIDE, 1))).is_ok());
        assert!(check_input_size(Some((MAX_INPUT_SIDE + 1, 8))).is_err() && check_input_size(Some((0, 8))).is_err());
        assert!(check_window(Window { level: 50.0, width: 130.0 }).is_ok());
        assert!(check_window(Window { level: 50.0, width: 0.0 }).is_err());
        assert!(check_normalize(Some((0.5, 0.0))).is_err() && check_normalize(None).is_ok());
    }

    #[test]
    fn model_overrides_check_every_value_set() {
        let none = ModelOverrides::default();
        assert!(none.check().is_ok());
        let set = ModelOverrides {
            window: Some(Window { level: 40.0, width: 80.0 }),
            input_size: Some((256, 256)),
            channels: Some(3),
            normalize: Some((0.5, 0.25)),
            bleed_index: Some(0),
        };
        assert!(set.check().is_ok());
        for bad in [
            ModelOverrides { window: Some(Window { level: 40.0, width: -1.0 }), ..set },
            ModelOverrides { input_size: Some((0, 256)), ..set },
            ModelOverrides { channels: Some(2), ..set },
            ModelOverrides { normalize: Some((f32::NAN, 1.0)), ..set },
        ] {
            assert!(matches!(bad.check(), Err(Error::InvalidArgument(_))), "{bad:?}");
        }
    }
}
