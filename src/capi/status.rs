//! `IchsegStatus`, and the one place where library errors become status codes.

use super::boundary::boundary;
use crate::Error;
use std::ffi::c_char;

/// What every fallible ichseg_* function returns. 0 (ICHSEG_STATUS_OK) is success; on any
/// other value `ichseg_last_error_message()` says what went wrong, on the calling thread.
///
/// The numeric values are part of the ABI and never change; new codes may be added.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IchsegStatus {
    /// Success.
    Ok = 0,
    /// A value is out of range or inconsistent: dimensions, options, struct_size, an index.
    InvalidArgument = 1,
    /// A pointer argument that must not be NULL was NULL.
    NullPointer = 2,
    /// A buffer length does not match what the call needs (the message gives both numbers).
    BufferSize = 3,
    /// A file could not be read (missing, permissions, ...).
    Io = 4,
    /// A medical image is malformed or uses a feature libichseg does not read.
    InvalidImage = 5,
    /// The volume holds NaN or infinite voxels (after rescaling); the message names the first.
    NonFinite = 6,
    /// The ONNX model cannot be parsed or is not a usable segmentation network.
    InvalidModel = 7,
    /// The network failed while running; also a GPU out of memory even at one slice per run
    /// (larger batches are halved and retried first).
    Inference = 8,
    /// The request needs something this build or machine lacks (for example CUDA).
    Unsupported = 9,
    /// The progress callback returned 0.
    Cancelled = 10,
    /// An internal error (a bug in libichseg) was caught at the ABI boundary. Handles stay
    /// valid and may be freed; please report the message.
    Panic = 11,
    /// (v3) A buffer sized by the input could not be allocated, or the work would exceed the
    /// engine's memory_limit_mb; nothing was written. The process is not affected.
    OutOfMemory = 12,
}

impl IchsegStatus {
    /// Every status, in numeric order.
    pub(crate) const ALL: [IchsegStatus; 13] = [
        IchsegStatus::Ok,
        IchsegStatus::InvalidArgument,
        IchsegStatus::NullPointer,
        IchsegStatus::BufferSize,
        IchsegStatus::Io,
        IchsegStatus::InvalidImage,
        IchsegStatus::NonFinite,
        IchsegStatus::InvalidModel,
        IchsegStatus::Inference,
        IchsegStatus::Unsupported,
        IchsegStatus::Cancelled,
        IchsegStatus::Panic,
        IchsegStatus::OutOfMemory,
    ];

    /// The C name of the code, e.g. `"ICHSEG_STATUS_BUFFER_SIZE"`, NUL-terminated.
    pub(crate) fn name(self) -> &'static std::ffi::CStr {
        match self {
            IchsegStatus::Ok => c"ICHSEG_STATUS_OK",
            IchsegStatus::InvalidArgument => c"ICHSEG_STATUS_INVALID_ARGUMENT",
            IchsegStatus::NullPointer => c"ICHSEG_STATUS_NULL_POINTER",
            IchsegStatus::BufferSize => c"ICHSEG_STATUS_BUFFER_SIZE",
            IchsegStatus::Io => c"ICHSEG_STATUS_IO",
            IchsegStatus::InvalidImage => c"ICHSEG_STATUS_INVALID_IMAGE",
            IchsegStatus::NonFinite => c"ICHSEG_STATUS_NON_FINITE",
            IchsegStatus::InvalidModel => c"ICHSEG_STATUS_INVALID_MODEL",
            IchsegStatus::Inference => c"ICHSEG_STATUS_INFERENCE",
            IchsegStatus::Unsupported => c"ICHSEG_STATUS_UNSUPPORTED",
            IchsegStatus::Cancelled => c"ICHSEG_STATUS_CANCELLED",
            IchsegStatus::Panic => c"ICHSEG_STATUS_PANIC",
            IchsegStatus::OutOfMemory => c"ICHSEG_STATUS_OUT_OF_MEMORY",
        }
    }
}

impl From<&Error> for IchsegStatus {
    /// The mapping of every library error to its status code.
    fn from(e: &Error) -> Self {
        match e {
            Error::InvalidArgument(_) => IchsegStatus::InvalidArgument,
            Error::Io { .. } => IchsegStatus::Io,
            Error::InvalidImage { .. } => IchsegStatus::InvalidImage,
            Error::NonFiniteVoxels { .. } => IchsegStatus::NonFinite,
            Error::InvalidModel(_) => IchsegStatus::InvalidModel,
            Error::Inference(_) | Error::DeviceMemory(_) => IchsegStatus::Inference,
            Error::Unsupported(_) => IchsegStatus::Unsupported,
            Error::Cancelled => IchsegStatus::Cancelled,
            Error::OutOfMemory(_) => IchsegStatus::OutOfMemory,
        }
    }
}

/// The name of a status code ("ICHSEG_STATUS_OK", ...), for logs; "ICHSEG_STATUS_UNKNOWN" for
/// a value this library does not define. Takes the code as a plain integer so that any value
/// is safe to pass.
///
/// The string is static: never free it. Thread-safe; never fails.
#[no_mangle]
pub extern "C" fn ichseg_status_name(status: i32) -> *const c_char {
    boundary("ichseg_status_name", || {
        IchsegStatus::ALL.iter().find(|s| **s as i32 == status).map_or(c"ICHSEG_STATUS_UNKNOWN", |s| s.name()).as_ptr()
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::ffi::CStr;

    #[test]
    fn values_and_names_are_stable() {
        for (i, s) in IchsegStatus::ALL.iter().enumerate() {
            assert_eq!(*s as i32, i as i32);
            // SAFETY: ichseg_status_name returns a static NUL-terminated string.
            let name = unsafe { CStr::from_ptr(ichseg_status_name(i as i32)) };
            assert_eq!(name, s.name());
        }
        // SAFETY: as above.
        let unknown = unsafe { CStr::from_ptr(ichseg_status_name(-3)) };
        assert_eq!(unknown, c"ICHSEG_STATUS_UNKNOWN");
    }

    #[test]
    fn every_error_maps() {
        let io = Error::Io { path: "x".into(), source: std::io::Error::from(std::io::ErrorKind::NotFound) };
        assert_eq!(IchsegStatus::from(&io), IchsegStatus::Io);
        assert_eq!(IchsegStatus::from(&Error::NonFiniteVoxels { count: 1, first: [0; 3] }), IchsegStatus::NonFinite);
        assert_eq!(IchsegStatus::from(&Error::Cancelled), IchsegStatus::Cancelled);
        assert_eq!(IchsegStatus::from(&Error::OutOfMemory("x".into())), IchsegStatus::OutOfMemory);
        assert_eq!(IchsegStatus::from(&Error::Unsupported("cuda".into())), IchsegStatus::Unsupported);
    }
}
