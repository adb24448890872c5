//! Shared by the fuzz targets.

/// libfuzzer-sys installs a panic hook that aborts on *every* panic, even one the library
/// catches and turns into an error (it does so around tract's graph translation). Put the
/// default hook back once: a panic that escapes the library still reaches libfuzzer-sys's
/// catch around the target, which reports it as a crash.
pub fn silence_caught_panics() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let _ = std::panic::take_hook();
    });
}
