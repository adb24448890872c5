//! `IchsegEngine`: the device and the worker threads networks run on.

use super::boundary::{boundary, field, get, handle_out, init_sized, struct_size, FfiError, FfiResult};
use super::status::IchsegStatus;
use crate::alloc::MemoryLimit;
use crate::model::runtime::{Device, Engine, EngineOptions};
use std::ffi::{c_char, CString};
use std::ptr::addr_of;

/// An execution context: the compute device and a private pool of worker threads.
///
/// Create with ichseg_engine_create(), free with ichseg_engine_free(). Thread-safe: one engine
/// may serve any number of threads and models at once. Models keep what they need of their
/// engine alive, so an engine may be freed while models made with it are still in use.
pub struct IchsegEngine {
    pub(crate) engine: Engine,
    device_name: CString,
    device_note: CString,
}

/// The compute device an engine should use.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IchsegDevice {
    /// CUDA when this build and machine support it, else the CPU
    /// (ichseg_engine_device_note() says which and why).
    Auto = 0,
    /// The CPU (tract's engine).
    Cpu = 1,
    /// The CUDA GPU numbered IchsegEngineOptions.cuda_device. Fails with
    /// ICHSEG_STATUS_UNSUPPORTED in a build without CUDA support or when it is not usable.
    Cuda = 2,
}

/// Options for ichseg_engine_create(). Fill with ichseg_engine_options_init() first, then
/// change what you need; struct_size lets later versions add fields without breaking callers.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct IchsegEngineOptions {
    /// sizeof(IchsegEngineOptions) as the caller was compiled; set by
    /// ichseg_engine_options_init(). Smaller than the v1 struct: ICHSEG_STATUS_INVALID_ARGUMENT.
    pub struct_size: usize,
    /// Worker threads for the networks; 0 (the default) means one per available core.
    /// At most 1024.
    pub threads: u32,
    /// Default ICHSEG_DEVICE_AUTO.
    pub device: IchsegDevice,
    /// CUDA device ordinal, used only with ICHSEG_DEVICE_CUDA; default 0, must not be negative.
    pub cuda_device: i32,
    /// (v3) Cap in MiB on the buffers one ichseg_segment() or ichseg_pseudo_label() call
    /// allocates for its volume (outputs, maps, per-slice buffers; not the model's weights and
    /// activations). Work over it fails with ICHSEG_STATUS_OUT_OF_MEMORY before anything is
    /// allocated. 0 (the default) = no cap beyond what the system grants; allocations the
    /// system refuses are ICHSEG_STATUS_OUT_OF_MEMORY either way.
    pub memory_limit_mb: u64,
    /// (v4) 1: trade speed for memory: on the CPU, every 3x3 convolution keeps its weights as
    /// they are instead of Winograd's transformed copies, 4x their size, as by default only the
    /// widest layers do (peak memory and speed: docs/BENCHMARKS.md, Memory). No effect on a GPU. 0 (the default): off. Other values:
    /// ICHSEG_STATUS_INVALID_ARGUMENT.
    pub low_memory: u32,
}

/// The struct before `memory_limit_mb`: callers compiled against it still work.
const ENGINE_OPTIONS_V1: usize = std::mem::offset_of!(IchsegEngineOptions, memory_limit_mb);
const _: () = assert!(std::mem::size_of::<IchsegDevice>() == std::mem::size_of::<u32>());

impl Default for IchsegEngineOptions {
    fn default() -> Self {
        IchsegEngineOptions {
            struct_size: std::mem::size_of::<IchsegEngineOptions>(),
            threads: 0,
            device: IchsegDevice::Auto,
            cuda_device: 0,
            memory_limit_mb: 0,
            low_memory: 0,
        }
    }
}

/// Reads the caller's options (NULL = defaults) into the library's.
///
/// # Safety
/// A non-NULL `opts` must point to at least `opts->struct_size` readable bytes.
unsafe fn engine_options(opts: *const IchsegEngineOptions) -> FfiResult<EngineOptions> {
    if opts.is_null() {
        return Ok(EngineOptions::default());
    }
    let d = IchsegEngineOptions::default();
    // SAFETY: non-NULL; the caller promises struct_size readable bytes, which struct_size()
    // checks covers v1 and field() checks for every field.
    let (threads, device, cuda_device, limit_mb, low_memory) = unsafe {
        let size = struct_size(opts, ENGINE_OPTIONS_V1, "IchsegEngineOptions", "ichseg_engine_options_init")?;
        (
            field(opts, size, addr_of!((*opts).threads)).unwrap_or(d.threads),
            // Read as an integer: a C caller may store any value in an enum field.
            field(opts, size, addr_of!((*opts).device).cast::<u32>()).unwrap_or(d.device as u32),
            field(opts, size, addr_of!((*opts).cuda_device)).unwrap_or(d.cuda_device),
            field(opts, size, addr_of!((*opts).memory_limit_mb)).unwrap_or(d.memory_limit_mb),
            field(opts, size, addr_of!((*opts).low_memory)).unwrap_or(d.low_memory),
        )
    };
    let low_memory = match low_memory {
        0 => false,
        1 => true,
        other => return Err(FfiError::invalid(format!("IchsegEngineOptions.low_memory must be 0 or 1, got {other}"))),
    };
    let device = match device {
        0 => Device::Auto,
        1 => Device::Cpu,
        2 => Device::Cuda(usize::try_from(cuda_device).map_err(|_| {
            FfiError::invalid(format!("IchsegEngineOptions.cuda_device must not be negative, got {cuda_device}"))
        })?),
        other => {
            return Err(FfiError::invalid(format!(
                "IchsegEngineOptions.device is {other}, not one of ICHSEG_DEVICE_AUTO (0), ICHSEG_DEVICE_CPU (1), \
                 ICHSEG_DEVICE_CUDA (2)"
            )))
        }
    };
    let memory_limit = MemoryLimit::from_mib(limit_mb)
        .ok_or_else(|| FfiError::invalid(format!("IchsegEngineOptions.memory_limit_mb {limit_mb} is too large")))?;
    Ok(EngineOptions { threads: threads as usize, device, memory_limit, low_memory })
}

/// Fills `opts` with the defaults (threads 0 = one per core, ICHSEG_DEVICE_AUTO, cuda_device
/// 0, memory_limit_mb 0 = none, low_memory 0). Call it through the macro ichseg_engine_options_init(opts), which passes `size` =
/// sizeof(IchsegEngineOptions) of the caller's header: the library writes exactly that many
/// bytes (no more than its own struct) and sets struct_size to them, so callers built against
/// older headers stay safe. Does nothing when `opts` is NULL or `size` is below the first
/// header's struct.
///
/// # Safety
/// A non-NULL `opts` must point to `size` writable bytes.
#[no_mangle]
pub unsafe extern "C" fn ichseg_engine_options_init_sized(opts: *mut IchsegEngineOptions, size: usize) {
    // SAFETY: caller's promise.
    boundary("ichseg_engine_options_init", || unsafe {
        init_sized(opts, size, ENGINE_OPTIONS_V1, IchsegEngineOptions::default())
    })
}

/// Creates an engine. `opts` may be NULL for the defaults. On success `*out` receives a new
/// engine that the caller owns and frees with ichseg_engine_free(); on failure `*out` is set
/// to NULL.
///
/// Errors: ICHSEG_STATUS_NULL_POINTER (`out` NULL), ICHSEG_STATUS_INVALID_ARGUMENT (bad
/// struct_size, device, cuda_device or threads), ICHSEG_STATUS_UNSUPPORTED (CUDA requested but
/// not available in this build or machine; ICHSEG_DEVICE_AUTO falls back to the CPU instead).
///
/// # Safety
/// `out` must be NULL or writable; a non-NULL `opts` must point to at least
/// `opts->struct_size` readable bytes.
#[no_mangle]
pub unsafe extern "C" fn ichseg_engine_create(
    opts: *const IchsegEngineOptions,
    out: *mut *mut IchsegEngine,
) -> IchsegStatus {
    boundary("ichseg_engine_create", || -> FfiResult {
        // SAFETY: `out` is NULL or writable (caller's promise).
        let out = unsafe { handle_out(out, "out") }?;
        // SAFETY: caller's promise about `opts`.
        let options = unsafe { engine_options(opts) }?;
        let engine = Engine::new(&options)?;
        let handle = IchsegEngine {
            device_name: c_string(engine.device_name()),
            device_note: c_string(engine.device_note()),
            engine,
        };
        // SAFETY: `out` is non-NULL and writable (caller's promise).
        unsafe { out.write(Box::into_raw(Box::new(handle))) };
        Ok(())
    })
}

/// Frees an engine made by ichseg_engine_create(). NULL is a no-op. Models made with the
/// engine stay usable. Do not free an engine while another thread is in a call that takes it.
///
/// # Safety
/// `engine` must be NULL or a pointer from ichseg_engine_create() not yet freed.
#[no_mangle]
pub unsafe extern "C" fn ichseg_engine_free(engine: *mut IchsegEngine) {
    boundary("ichseg_engine_free", || {
        if !engine.is_null() {
            // SAFETY: from Box::into_raw in ichseg_engine_create, freed once (caller's promise).
            drop(unsafe { Box::from_raw(engine) });
        }
    })
}

/// The device the engine actually uses, "cpu" or "cuda:N", in `*out`. The string belongs to
/// the engine: valid until ichseg_engine_free(); do not free it. Thread-safe.
///
/// # Safety
/// `engine` must be NULL or a live engine; `out` NULL or writable.
#[no_mangle]
pub unsafe extern "C" fn ichseg_engine_device_name(
    engine: *const IchsegEngine,
    out: *mut *const c_char,
) -> IchsegStatus {
    // SAFETY: the caller's promises above.
    unsafe { get("ichseg_engine_device_name", engine, "engine", out, |engine| engine.device_name.as_ptr()) }
}

/// Why the engine uses its device (e.g. that this build has no CUDA support), in `*out`.
/// Ownership and lifetime as for ichseg_engine_device_name(). Thread-safe.
///
/// # Safety
/// `engine` must be NULL or a live engine; `out` NULL or writable.
#[no_mangle]
pub unsafe extern "C" fn ichseg_engine_device_note(
    engine: *const IchsegEngine,
    out: *mut *const c_char,
) -> IchsegStatus {
    // SAFETY: the caller's promises above.
    unsafe { get("ichseg_engine_device_note", engine, "engine", out, |engine| engine.device_note.as_ptr()) }
}

/// The number of worker threads the engine runs networks on, in `*out`. Thread-safe.
///
/// # Safety
/// `engine` must be NULL or a live engine; `out` NULL or writable.
#[no_mangle]
pub unsafe extern "C" fn ichseg_engine_threads(engine: *const IchsegEngine, out: *mut u32) -> IchsegStatus {
    // SAFETY: the caller's promises above.
    unsafe {
        get("ichseg_engine_threads", engine, "engine", out, |engine| {
            u32::try_from(engine.engine.threads()).unwrap_or(u32::MAX)
        })
    }
}

/// Text for C; library strings hold no NUL, and one would only be shown escaped.
pub(crate) fn c_string(s: &str) -> CString {
    CString::new(s.replace('\0', "\\0")).unwrap_or_default()
}
