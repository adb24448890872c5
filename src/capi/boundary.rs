//! The panic boundary, the thread-local last-error message, and argument checking.
//!
//! Every exported function is written as
//! `boundary("ichseg_x", || -> FfiResult { ... })`: the body runs inside `catch_unwind`, an
//! `Err` sets the last-error message and returns its status, and a panic sets the message and
//! returns what [`PanicValue`] says for the function's return type. So the rule for what a
//! failing or panicking call yields lives here and nowhere else (the rustls-ffi pattern).

use super::status::IchsegStatus;
use std::cell::RefCell;
use std::ffi::{c_char, CString};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::ptr::NonNull;

/// A failure on its way to the C caller: a status code and the message to show.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct FfiError {
    pub status: IchsegStatus,
    pub message: String,
}

/// What the bodies of status-returning exported functions return.
pub(crate) type FfiResult<T = ()> = Result<T, FfiError>;

impl FfiError {
    pub(crate) fn new(status: IchsegStatus, message: impl Into<String>) -> Self {
        FfiError { status, message: message.into() }
    }
    /// `argument `name` is NULL`.
    pub(crate) fn null(name: &str) -> Self {
        Self::new(IchsegStatus::NullPointer, format!("argument `{name}` is NULL"))
    }
    pub(crate) fn invalid(message: impl Into<String>) -> Self {
        Self::new(IchsegStatus::InvalidArgument, message)
    }
}

impl From<crate::Error> for FfiError {
    fn from(e: crate::Error) -> Self {
        FfiError { status: IchsegStatus::from(&e), message: e.to_string() }
    }
}

thread_local! {
    /// The message of the last failure on this thread; `None` until the first one.
    static LAST_ERROR: RefCell<Option<CString>> = const { RefCell::new(None) };
}

/// Replaces this thread's last-error message.
pub(crate) fn set_last_error(message: &str) {
    // A message cannot carry NUL bytes into C; show them instead of cutting the message short.
    let message = CString::new(message.replace('\0', "\\0")).unwrap_or_default();
    // try_with: during thread teardown the slot may be gone; the status code still reports.
    let _ = LAST_ERROR.try_with(|slot| {
        if let Ok(mut slot) = slot.try_borrow_mut() {
            *slot = Some(message);
        }
    });
}

/// A human-readable reason for the last failing ichseg_* call on the calling thread, as a
/// NUL-terminated UTF-8 string; "" when no call on this thread has failed yet.
///
/// Ownership: the string belongs to the library; do not free it. It stays valid until the
/// next failing ichseg_* call on the same thread (successful calls leave it alone), so copy
/// it if you need it longer. Threading: each thread has its own message.
#[no_mangle]
pub extern "C" fn ichseg_last_error_message() -> *const c_char {
    boundary("ichseg_last_error_message", || {
        LAST_ERROR
            .try_with(|slot| slot.try_borrow().ok().and_then(|m| m.as_ref().map(|m| m.as_ptr())))
            .ok()
            .flatten()
            .unwrap_or(c"".as_ptr())
    })
}

/// What an exported function returns when its body panicked. The message is in
/// `ichseg_last_error_message()`.
pub(crate) trait PanicValue {
    fn on_panic() -> Self;
}

impl PanicValue for IchsegStatus {
    fn on_panic() -> Self {
        IchsegStatus::Panic
    }
}
impl PanicValue for () {
    fn on_panic() {}
}
impl PanicValue for u32 {
    fn on_panic() -> Self {
        0
    }
}
impl PanicValue for *const c_char {
    fn on_panic() -> Self {
        c"".as_ptr()
    }
}

/// How the outcome of a body becomes the C return value.
pub(crate) trait IntoFfi {
    type Ret: PanicValue;
    fn into_ffi(self) -> Self::Ret;
}

impl IntoFfi for FfiResult {
    type Ret = IchsegStatus;
    fn into_ffi(self) -> IchsegStatus {
        match self {
            Ok(()) => IchsegStatus::Ok,
            Err(e) => {
                set_last_error(&e.message);
                e.status
            }
        }
    }
}

/// Plain values (infallible functions) pass through.
macro_rules! plain_into_ffi {
    ($($t:ty),*) => {$(
        impl IntoFfi for $t {
            type Ret = $t;
            fn into_ffi(self) -> $t {
                self
            }
        }
    )*};
}
plain_into_ffi!((), u32, *const c_char);

/// Runs the body of the exported function `function`, turning a panic into
/// [`PanicValue::on_panic`] plus a last-error message, so that no panic crosses the ABI.
pub(crate) fn boundary<R: IntoFfi>(function: &'static str, body: impl FnOnce() -> R) -> R::Ret {
    // AssertUnwindSafe: after a panic the caller only gets a status; the handles involved keep
    // no half-updated state that a later call could observe (the segmenter's plan cache
    // tolerates a poisoned lock, results are immutable).
    match catch_unwind(AssertUnwindSafe(body)) {
        Ok(outcome) => outcome.into_ffi(),
        Err(payload) => {
            let what = payload
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| payload.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "unknown panic payload".into());
            set_last_error(&format!("internal error in {function} (a bug in libichseg, please report it): {what}"));
            R::Ret::on_panic()
        }
    }
}

/// The body of every exported getter: inside [`boundary`], checks `handle` and `out` for NULL
/// and writes `read(handle)` to `*out`.
///
/// # Safety
/// A non-NULL `handle` must point to a live `H`; a non-NULL `out` must be writable.
pub(crate) unsafe fn get<H, T>(
    function: &'static str,
    handle: *const H,
    handle_name: &str,
    out: *mut T,
    read: impl FnOnce(&H) -> T,
) -> IchsegStatus {
    boundary(function, || -> FfiResult {
        let out = out_param(out, "out")?;
        // SAFETY (both blocks): the caller's promises above.
        let handle = unsafe { arg(handle, handle_name) }?;
        unsafe { out.write(read(handle)) };
        Ok(())
    })
}

/// A shared reference to the pointee of a pointer argument that must not be NULL.
///
/// # Safety
/// A non-NULL `ptr` must point to a live, initialised `T` for the chosen lifetime.
pub(crate) unsafe fn arg<'a, T>(ptr: *const T, name: &str) -> FfiResult<&'a T> {
    // SAFETY: the caller promises validity when non-NULL.
    unsafe { ptr.as_ref() }.ok_or_else(|| FfiError::null(name))
}

/// A pointer out-parameter that must not be NULL; written with `NonNull::write`, never read,
/// so it may point at uninitialised memory.
pub(crate) fn out_param<T>(ptr: *mut T, name: &str) -> FfiResult<NonNull<T>> {
    NonNull::new(ptr).ok_or_else(|| FfiError::null(name))
}

/// A handle out-parameter (`T**`): checked for NULL, then set to NULL at once, so that it
/// holds NULL after every failure and the new handle only after success.
///
/// # Safety
/// A non-NULL `ptr` must be writable.
pub(crate) unsafe fn handle_out<T>(ptr: *mut *mut T, name: &str) -> FfiResult<NonNull<*mut T>> {
    let p = out_param(ptr, name)?;
    // SAFETY: non-NULL and writable (caller's promise).
    unsafe { p.write(std::ptr::null_mut()) };
    Ok(p)
}

/// Caller structs larger than this are refused as probably uninitialised (no version of any
/// ichseg struct will come near it).
pub(crate) const MAX_STRUCT_SIZE: usize = 4096;

/// The `struct_size` that a versioned caller struct starts with, checked against the v1 size
/// `v1` of `what`.
///
/// # Safety
/// `ptr` must be non-NULL and point to at least a readable `size_t`.
pub(crate) unsafe fn struct_size<S>(ptr: *const S, v1: usize, what: &str, init: &str) -> FfiResult<usize> {
    // SAFETY: every versioned struct starts with `size_t struct_size` (caller's promise).
    let size = unsafe { ptr.cast::<usize>().read_unaligned() };
    if size < v1 || size > MAX_STRUCT_SIZE {
        return Err(FfiError::invalid(format!(
            "{what}.struct_size is {size}, but this library needs at least {v1} (sizeof({what}) in its \
             first header){}; call {init}() to fill it",
            if size > MAX_STRUCT_SIZE { " and at most 4096" } else { "" }
        )));
    }
    Ok(size)
}

/// Fills a caller's versioned struct of `size` bytes (its sizeof, as its header has it) from
/// `value`: the first `min(size, sizeof(S))` bytes, with `struct_size` set to that count. A caller
/// built against an older header gets exactly the fields it knows, never a write past its
/// struct; a newer caller's extra fields are left as they were (this library does not know
/// them, and reads no further than its own struct). Sizes below `v1` write nothing.
///
/// # Safety
/// `dst` must be NULL or point to at least `size` writable bytes; `S` starts with a `usize`
/// struct_size (checked by the callers' `const` assertions).
pub(crate) unsafe fn init_sized<S: Copy>(dst: *mut S, size: usize, v1: usize, value: S) {
    if dst.is_null() || size < v1 {
        return;
    }
    let n = size.min(std::mem::size_of::<S>());
    // SAFETY: `n` bytes fit both the caller's struct and `value`; a byte copy accepts any
    // caller alignment, and struct_size is the first field.
    unsafe {
        std::ptr::copy_nonoverlapping((&value as *const S).cast::<u8>(), dst.cast::<u8>(), n);
        dst.cast::<usize>().write_unaligned(n);
    }
}

/// Reads one field of a caller struct whose `struct_size` is `size`: `Some` when the caller's
/// struct is large enough to hold it, `None` when the caller was built against an older header
/// without it. This is what lets option structs grow: fields after v1 are read only when the
/// caller's `struct_size` covers them.
///
/// # Safety
/// `base` must point to at least `size` readable bytes and `field` into that struct.
pub(crate) unsafe fn field<S, F: Copy>(base: *const S, size: usize, field: *const F) -> Option<F> {
    let offset = (field as usize).wrapping_sub(base as usize);
    if offset.checked_add(std::mem::size_of::<F>())? > size {
        return None;
    }
    // SAFETY: inside the caller's `size` bytes; unaligned reads accept any caller packing.
    Some(unsafe { field.read_unaligned() })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::ffi::CStr;

    fn last() -> String {
        // SAFETY: ichseg_last_error_message always returns a valid NUL-terminated string.
        unsafe { CStr::from_ptr(ichseg_last_error_message()) }.to_string_lossy().into_owned()
    }

    #[test]
    fn panics_become_status_and_message() {
        let status = boundary("ichseg_test", || -> FfiResult {
            if last().is_empty() || !last().is_empty() {
                panic!("boom {}", 42);
            }
            Ok(())
        });
        assert_eq!(status, IchsegStatus::Panic);
        assert!(last().contains("ichseg_test") && last().contains("boom 42"), "{}", last());
        // Non-status return types get their panic value.
        assert_eq!(boundary("ichseg_test_u32", || -> u32 { panic!("static str") }), 0);
        assert!(last().contains("static str"));
        let p = boundary("ichseg_test_str", || -> *const c_char { panic!("x") });
        // SAFETY: the panic value is a static empty string.
        assert_eq!(unsafe { CStr::from_ptr(p) }, c"");
    }

    #[test]
    fn errors_set_the_message_and_success_keeps_it() {
        std::thread::spawn(|| {
            assert_eq!(last(), "", "a fresh thread has no message");
            let s = boundary("f", || -> FfiResult { Err(FfiError::null("mask")) });
            assert_eq!(s, IchsegStatus::NullPointer);
            assert_eq!(last(), "argument `mask` is NULL");
            assert_eq!(boundary("f", || -> FfiResult { Ok(()) }), IchsegStatus::Ok);
            assert_eq!(last(), "argument `mask` is NULL");
            let s = boundary("f", || -> FfiResult { Err(crate::Error::Cancelled.into()) });
            assert_eq!((s, last()), (IchsegStatus::Cancelled, "cancelled by the caller".to_string()));
            set_last_error("a\0b");
            assert_eq!(last(), "a\\0b");
        })
        .join()
        .unwrap_or_else(|_| panic!("thread failed"));
    }

    #[test]
    fn fields_beyond_the_callers_size_are_not_read() {
        #[repr(C)]
        struct V2 {
            struct_size: usize,
            a: u32,
            b: u32,
        }
        let v = V2 { struct_size: 12, a: 7, b: 9 };
        let p = &v as *const V2;
        // SAFETY: p points to a live V2.
        unsafe {
            assert_eq!(field(p, v.struct_size, std::ptr::addr_of!((*p).a)), Some(7));
            assert_eq!(field(p, v.struct_size, std::ptr::addr_of!((*p).b)), None);
            assert_eq!(field(p, 16, std::ptr::addr_of!((*p).b)), Some(9));
            assert!(struct_size(p, 16, "V2", "v2_init").is_err());
            assert_eq!(struct_size(&V2 { struct_size: 16, a: 0, b: 0 }, 16, "V2", "v2_init"), Ok(16));
            let huge = V2 { struct_size: 1 << 40, a: 0, b: 0 };
            let err = struct_size(&huge, 16, "V2", "v2_init").err().map(|e| e.message).unwrap_or_default();
            assert!(err.contains("at most 4096"), "{err}");
        }
    }
}
