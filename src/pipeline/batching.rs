//! Walking a volume's slices in network batches, with a smaller batch when the GPU runs out of
//! memory.
//!
//! Device memory grows with the slice batch, not with the number of slices. When a batch does
//! not fit ([`Error::DeviceMemory`]), the same slices are retried with half the batch, down to
//! one slice; a model whose file fixes its batch size cannot shrink and reports the error.

use crate::{Error, Result};

/// Calls `run(first, count)` for consecutive batches of at most `batch` slices covering
/// `0..total`, halving the batch (when `can_shrink`) on [`Error::DeviceMemory`] and retrying
/// the same slices. Returns the batch size in use at the end. Any other error ends the walk.
pub(crate) fn for_each_batch(
    total: usize,
    batch: usize,
    can_shrink: bool,
    mut run: impl FnMut(usize, usize) -> Result<()>,
) -> Result<usize> {
    let mut batch = batch.max(1);
    let mut first = 0;
    while first < total {
        let count = batch.min(total - first);
        match run(first, count) {
            Ok(()) => first += count,
            Err(Error::DeviceMemory(_)) if can_shrink && count > 1 => batch = count / 2,
            Err(e) => return Err(e),
        }
    }
    Ok(batch)
}

/// `plan(batch)`, halving `batch` (when `can_shrink`) on [`Error::DeviceMemory`] as
/// [`for_each_batch`] does: a GPU plan can be refused for its size before anything runs.
pub(crate) fn plan_shrinking<T>(batch: usize, can_shrink: bool, mut plan: impl FnMut(usize) -> Result<T>) -> Result<T> {
    let mut batch = batch.max(1);
    loop {
        match plan(batch) {
            Err(Error::DeviceMemory(_)) if can_shrink && batch > 1 => batch /= 2,
            result => return result,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_plan_too_large_for_the_device_is_made_for_a_smaller_batch() {
        let refuse_over =
            |limit: usize| move |b: usize| if b > limit { Err(Error::DeviceMemory(format!("{b}"))) } else { Ok(b) };
        assert_eq!(plan_shrinking(256, true, refuse_over(100)).ok(), Some(64));
        assert_eq!(plan_shrinking(8, true, refuse_over(100)).ok(), Some(8));
        assert!(matches!(plan_shrinking(256, false, refuse_over(100)), Err(Error::DeviceMemory(_))));
        assert!(matches!(plan_shrinking(4, true, refuse_over(0)), Err(Error::DeviceMemory(_))));
        let other = plan_shrinking(4, true, |_| -> Result<usize> { Err(Error::Inference("x".into())) });
        assert!(matches!(other, Err(Error::Inference(_))), "other errors are not retried");
    }

    #[test]
    fn covers_every_slice_once_in_order() {
        let mut seen = vec![];
        let used = for_each_batch(10, 4, true, |first, count| {
            seen.push((first, count));
            Ok(())
        })
        .unwrap();
        assert_eq!(seen, [(0, 4), (4, 4), (8, 2)]);
        assert_eq!(used, 4);
    }

    #[test]
    fn halves_the_batch_when_device_memory_runs_out() {
        // Batches over 3 slices "do not fit".
        let mut done = vec![];
        let used = for_each_batch(11, 8, true, |first, count| {
            if count > 3 {
                return Err(Error::DeviceMemory(format!("{count} slices")));
            }
            done.extend(first..first + count);
            Ok(())
        })
        .unwrap();
        assert_eq!(done, (0..11).collect::<Vec<_>>());
        assert_eq!(used, 2);
    }

    #[test]
    fn gives_up_at_one_slice_or_when_it_cannot_shrink() {
        let oom = |_: usize, _: usize| Err(Error::DeviceMemory("no room".into()));
        assert!(matches!(for_each_batch(5, 4, true, oom), Err(Error::DeviceMemory(_))));
        let mut calls = 0;
        let fixed = for_each_batch(5, 4, false, |_, _| {
            calls += 1;
            Err(Error::DeviceMemory("no room".into()))
        });
        assert!(matches!(fixed, Err(Error::DeviceMemory(_))));
        assert_eq!(calls, 1, "a fixed batch is not retried");
        let other = for_each_batch(5, 4, true, |_, _| Err(Error::Inference("bad".into())));
        assert!(matches!(other, Err(Error::Inference(_))));
    }
}
