//! New DICOM UIDs and timestamps for the objects we write.

use std::hash::{BuildHasher, Hasher};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

/// A new UID under the "2.25" root (PS3.5 B.2: a UUID as one decimal number), from the
/// process's randomly seeded hasher, the time, the process and a counter.
pub fn new_uid() -> String {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let nanos = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_nanos());
    let count = COUNTER.fetch_add(1, Ordering::Relaxed);
    let half = |salt: u64| {
        let mut h = std::collections::hash_map::RandomState::new().build_hasher();
        h.write_u128(nanos);
        h.write_u32(std::process::id());
        h.write_u64(count);
        h.write_u64(salt);
        h.finish()
    };
    // Version-4 UUID bits, as a UUID-derived UID should carry.
    let mut value = (u128::from(half(1)) << 64) | u128::from(half(2));
    value = (value & !(0xF000u128 << 64)) | (0x4000u128 << 64);
    value = (value & !(0xC000_0000_0000_0000u128)) | 0x8000_0000_0000_0000u128;
    format!("2.25.{value}")
}

/// The current UTC date and time as DICOM DA ("YYYYMMDD") and TM ("HHMMSS").
pub fn now_date_time() -> (String, String) {
    let secs = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
    let (days, rest) = ((secs / 86_400) as i64, secs % 86_400);
    // Days since 1970-01-01 to a civil date (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    (format!("{year:04}{month:02}{day:02}"), format!("{:02}{:02}{:02}", rest / 3600, rest / 60 % 60, rest % 60))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uids_are_valid_and_distinct() {
        let a = new_uid();
        let b = new_uid();
        assert_ne!(a, b);
        for u in [&a, &b] {
            assert!(u.len() <= 64 && u.starts_with("2.25."), "{u}");
            let tail = &u[5..];
            assert!(tail.chars().all(|c| c.is_ascii_digit()) && !tail.starts_with('0'), "{u}");
        }
    }

    #[test]
    fn date_and_time_have_dicom_form() {
        let (d, t) = now_date_time();
        assert_eq!((d.len(), t.len()), (8, 6));
        assert!(d.as_str() >= "20240101" && d.as_str() < "21000101", "{d}");
        assert!(t.as_str() < "240000", "{t}");
    }
}
