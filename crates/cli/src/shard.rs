//! `--shard I/N`: splits a dataset's volumes among N independent jobs (a SLURM array, any
//! scheduler) so that together they process every volume exactly once, with no coordination.
//!
//! A volume belongs to shard `FNV-1a(file name) mod N`: it depends on the name alone, not on
//! which other files a job sees, so a volume added or removed between the jobs' starts moves
//! no other volume to another shard.

use ichseg::{Error, Result};
use std::path::Path;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Shard {
    pub index: u64,
    pub count: u64,
}

impl Shard {
    /// Parses `I/N` with `0 <= I < N`.
    pub fn parse(text: &str) -> Result<Shard> {
        let bad = || Error::arg(format!("--shard {text:?}: expected I/N with 0 <= I < N, e.g. 0/8"));
        let (i, n) = text.split_once('/').ok_or_else(bad)?;
        let index: u64 = i.trim().parse().map_err(|_| bad())?;
        let count: u64 = n.trim().parse().map_err(|_| bad())?;
        if count == 0 || index >= count {
            return Err(bad());
        }
        Ok(Shard { index, count })
    }

    pub fn holds(&self, volume: &Path) -> bool {
        let name = volume.file_name().map(|n| n.to_string_lossy()).unwrap_or_default();
        fnv1a(name.as_bytes()) % self.count == self.index
    }
}

/// 64-bit FNV-1a: fixed by its specification, so every machine and version agrees.
fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, &b| (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;

    #[test]
    fn parses_and_refuses() {
        assert_eq!(Shard::parse("3/8").unwrap(), Shard { index: 3, count: 8 });
        assert_eq!(Shard::parse("0/1").unwrap(), Shard { index: 0, count: 1 });
        for bad in ["8/8", "1/0", "-1/4", "1", "a/4", "1/b", "", "1/2/3"] {
            let e = Shard::parse(bad).unwrap_err().to_string();
            assert!(e.contains("expected I/N"), "{bad}: {e}");
        }
    }

    #[test]
    fn shards_cover_every_volume_exactly_once() {
        let volumes: Vec<PathBuf> = (0..500).map(|k| PathBuf::from(format!("ct_scans/{k:03}.nii.gz"))).collect();
        for n in [1u64, 2, 3, 8] {
            let mut sizes = vec![0usize; n as usize];
            for v in &volumes {
                let owners: Vec<u64> = (0..n).filter(|&i| Shard { index: i, count: n }.holds(v)).collect();
                assert_eq!(owners.len(), 1, "{v:?} in shards {owners:?} of {n}");
                sizes[owners[0] as usize] += 1;
            }
            // The hash spreads names evenly enough that no shard is idle or doubled.
            assert!(sizes.iter().all(|&s| s * n as usize >= 500 / 2 && s * n as usize <= 500 * 2), "{n}: {sizes:?}");
        }
    }

    #[test]
    fn the_hash_is_fnv1a() {
        // Reference values of the FNV specification's test suite.
        assert_eq!(fnv1a(b""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(fnv1a(b"a"), 0xaf63_dc4c_8601_ec8c);
        assert_eq!(fnv1a(b"foobar"), 0x8594_4171_f739_67e8);
    }
}
