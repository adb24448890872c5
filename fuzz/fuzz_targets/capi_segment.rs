//! ichseg_segment() as a C caller would call it, with fuzzed voxel type, dims, spacing, affine,
//! rescale and mask / probability lengths. The buffers really are as long as the lengths claim
//! and the voxel buffer as long as the dims say (the C contract; when the dims overflow or
//! exceed 2^18 voxels, 16 voxels are passed and the call must refuse the dims before reading),
//! so anything but a status is a bug: a crash, a panic (ICHSEG_STATUS_PANIC) or an
//! out-of-bounds access that ASan catches.
#![no_main]
use ichseg::capi::*;
use libfuzzer_sys::fuzz_target;
use std::sync::OnceLock;

const UNET: &[u8] = include_bytes!("../../tests/fixtures/unet/unet_transpose.onnx");

struct Model(*mut IchsegModel);
// SAFETY: the C ABI documents models as usable from any thread.
unsafe impl Send for Model {}
unsafe impl Sync for Model {}

fn model() -> &'static Model {
    static MODEL: OnceLock<Model> = OnceLock::new();
    MODEL.get_or_init(|| unsafe {
        let mut opts = std::mem::zeroed();
        ichseg_engine_options_init_sized(&mut opts, std::mem::size_of::<IchsegEngineOptions>());
        opts.threads = 1;
        opts.device = IchsegDevice::Cpu;
        let mut engine = std::ptr::null_mut();
        assert_eq!(ichseg_engine_create(&opts, &mut engine), IchsegStatus::Ok);
        let mut model = std::ptr::null_mut();
        let st = ichseg_model_load_from_memory(engine, UNET.as_ptr(), UNET.len(), std::ptr::null(), &mut model);
        assert_eq!(st, IchsegStatus::Ok);
        ichseg_engine_free(engine);
        Model(model)
    })
}

/// Reads fuzz input as a little stream of values.
struct Bytes<'a>(&'a [u8]);
impl Bytes<'_> {
    fn take<const N: usize>(&mut self) -> [u8; N] {
        let mut out = [0u8; N];
        let n = N.min(self.0.len());
        out[..n].copy_from_slice(&self.0[..n]);
        self.0 = &self.0[n..];
        out
    }
    fn u8(&mut self) -> u8 {
        self.take::<1>()[0]
    }
    fn f64(&mut self) -> f64 {
        f64::from_le_bytes(self.take())
    }
    /// A small count most of the time, any usize sometimes (overflow paths).
    fn dim(&mut self) -> usize {
        let [kind, a, b] = self.take::<3>();
        match kind % 8 {
            0 => usize::from_le_bytes(self.take()),
            1 => 0,
            _ => 1 + usize::from(u16::from_le_bytes([a, b]) % 40),
        }
    }
}

fuzz_target!(|data: &[u8]| {
    ichseg_fuzz::silence_caught_panics();
    let mut b = Bytes(data);
    let voxel_type = b.u8() % 8; // 0 and 7 are invalid types
    let dims = [b.dim(), b.dim(), b.dim()];
    let spacing = [b.f64(), b.f64(), b.f64()];
    let slope_intercept = [b.f64(), b.f64()];
    let flags = b.u8();
    let affine: Vec<f64> = (0..16).map(|_| b.f64()).collect();

    let voxel_size = [1usize, 1, 2, 2, 4, 4, 8, 1][voxel_type as usize];
    let product = dims.iter().try_fold(1usize, |a, d| a.checked_mul(*d));
    if product.is_some_and(|p| p > 1 << 18 && p <= 1 << 31) {
        return; // a valid size too big to allocate for every input: the contract cannot be kept
    }
    let n = product.filter(|n| *n <= 1 << 18);
    // The lengths the caller claims: right, off by some, or zero; buffers allocated to match.
    let claimed = |n: Option<usize>, k: u8| match (n, k % 4) {
        (Some(n), 0 | 1) => n,
        (Some(n), 2) => n.saturating_sub(1),
        (Some(n), _) => n + 3,
        (None, _) => 16,
    };
    let mask_len = claimed(n, flags);
    // The voxel buffer has no length argument: the C contract is dims product x element size,
    // so it is always that long (the first finding was this harness breaking that contract).
    let voxels_len = n.unwrap_or(16);
    let mut voxels = vec![0u8; voxels_len * voxel_size];
    for (i, v) in voxels.iter_mut().enumerate() {
        *v = data.get(i % data.len().max(1)).copied().unwrap_or(0);
    }
    let mut mask = vec![0u8; mask_len];
    let mut prob = vec![0f32; if flags & 0x10 != 0 { mask_len } else { 0 }];

    unsafe {
        // not mem::zeroed(): 0 is no IchsegVoxelType, the init function writes a valid struct
        let mut slot = std::mem::MaybeUninit::<IchsegVolumeDesc>::uninit();
        ichseg_volume_desc_init_sized(slot.as_mut_ptr(), std::mem::size_of::<IchsegVolumeDesc>());
        let mut desc = slot.assume_init();
        // voxel_type is an enum in C: write the raw number the way a C caller could
        std::ptr::write((&mut desc.voxel_type as *mut IchsegVoxelType).cast::<u32>(), u32::from(voxel_type));
        desc.data = voxels.as_ptr().cast();
        desc.dims = dims;
        desc.spacing = spacing;
        desc.rescale_slope = slope_intercept[0];
        desc.rescale_intercept = slope_intercept[1];
        desc.affine = if flags & 0x20 != 0 { affine.as_ptr() } else { std::ptr::null() };
        let mut result = std::ptr::null_mut();
        let (p, plen) = if prob.is_empty() { (std::ptr::null_mut(), 0) } else { (prob.as_mut_ptr(), prob.len()) };
        let status =
            ichseg_segment(model().0, &desc, mask.as_mut_ptr(), mask.len(), p, plen, None, std::ptr::null_mut(), &mut result);
        assert_ne!(status, IchsegStatus::Panic, "{:?}", std::ffi::CStr::from_ptr(ichseg_last_error_message()));
        ichseg_result_free(result);
    }
});
