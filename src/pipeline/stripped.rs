//! The CT as each classifier's input contract wants it (`ichseg.skull_strip_mm`): the volume
//! itself, or a copy with air outside the intracranial mask for classifiers trained on
//! skull-stripped CTs. Each margin's mask is computed once, on the original CT, and handed on to
//! the tail when its intracranial option uses the same margin.

use crate::error::Result;
use crate::skull::intracranial::{intracranial_mask, skull_strip, IntracranialMask};
use crate::volume::Volume;

/// The original volume and one stripped copy per margin in use.
pub(super) struct ClassifierInputs<'a> {
    original: &'a Volume,
    /// `(margin, its mask, the stripped copy)`; the mask is `None` once [`ClassifierInputs::take_mask`] took it.
    stripped: Vec<(f64, Option<IntracranialMask>, Volume)>,
}

impl<'a> ClassifierInputs<'a> {
    /// Strips `original` once per margin of `margins` (given distinct).
    pub(super) fn new(original: &'a Volume, margins: &[f64]) -> Result<Self> {
        let stripped = margins
            .iter()
            .map(|&margin| skull_strip(original, margin).map(|(mask, volume)| (margin, Some(mask), volume)))
            .collect::<Result<_>>()?;
        Ok(ClassifierInputs { original, stripped })
    }

    /// The CT itself.
    pub(super) fn original(&self) -> &'a Volume {
        self.original
    }

    /// The volume a classifier with this `ichseg.skull_strip_mm` sees.
    pub(super) fn for_margin(&self, margin: Option<f64>) -> &Volume {
        margin
            .and_then(|m| self.stripped.iter().find(|(s, _, _)| *s == m))
            .map_or(self.original, |(_, _, volume)| volume)
    }

    /// The intracranial mask of `margin` if a stripped copy was cut with it, else a new one.
    pub(super) fn take_mask(&mut self, margin: f64) -> Result<IntracranialMask> {
        match self.stripped.iter_mut().find(|(s, _, _)| *s == margin).and_then(|(_, mask, _)| mask.take()) {
            Some(mask) => Ok(mask),
            None => intracranial_mask(self.original, margin),
        }
    }
}
