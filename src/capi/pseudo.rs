//! `ichseg_pseudo_label`: a caller's voxel buffer and optional slice labels in, a pseudo mask
//! and optional CAM maps out (METHOD.md sections 3 and 4), with classifiers loaded once.

use super::boundary::{boundary, field, handle_out, init_sized, struct_size, FfiError, FfiResult};
use super::engine::IchsegEngine;
use super::segment::{check_len, check_optional_len, progress_adapter, read_desc, IchsegProgressFn, IchsegVolumeDesc};
use super::status::IchsegStatus;
use crate::cam::CamMethod;
use crate::crf::CrfParams;
use crate::pipeline::pseudo::{PseudoLabeler, PseudoOptions};
use crate::pipeline::tuned::{Preset, Tuned};
use crate::sca::{Aggregate, ScfParams};
use std::ffi::{c_char, c_void, CStr};
use std::ptr::addr_of;

/// Classifiers prepared for pseudo-labelling (their gradient graphs planned on an engine).
/// Create with ichseg_pseudo_labeler_create(), free with ichseg_pseudo_labeler_free().
/// A classifier whose ichseg.skull_strip_mm metadata says it was trained on skull-stripped CTs
/// gets its inputs stripped the same way (docs/INTRACRANIAL.md).
pub struct IchsegPseudoLabeler {
    pub(crate) labeler: PseudoLabeler,
}

/// Which class-activation map each tap layer gives.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IchsegCamMethod {
    /// SF-CAM: LayerCAM and its first principal component, layer 1 amplified (the method's).
    Sf = 0,
    /// LayerCAM alone, max-normalised.
    Layer = 1,
    /// Grad-CAM on the deep tap (ichseg.deep_tap), the ablation baseline.
    Grad = 2,
}

/// How the tap layers' fused maps combine into the mask (bi-layer aggregation).
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IchsegAggregate {
    /// Foreground where any layer's map exceeds the threshold (the default).
    Or = 0,
    /// Foreground where every layer's map exceeds it.
    And = 1,
}

const _: () = assert!(std::mem::size_of::<IchsegCamMethod>() == std::mem::size_of::<u32>());
const _: () = assert!(std::mem::size_of::<IchsegAggregate>() == std::mem::size_of::<u32>());

/// Options of ichseg_pseudo_labeler_create(). Fill with ichseg_pseudo_options_init() first.
/// Model settings (window, input size, channels, bleed index, taps) come from each
/// classifier's ichseg.* metadata, else the defaults of `ichseg pseudo-label`.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct IchsegPseudoOptions {
    /// sizeof(IchsegPseudoOptions) as the caller was compiled; set by the init function.
    pub struct_size: usize,
    /// Default ICHSEG_CAM_METHOD_SF.
    pub cam: IchsegCamMethod,
    /// BLA threshold TH in [0, 1]. NaN (the default): the classifiers' tuned
    /// ichseg.pseudo.threshold (see `preset`), else 0.2.
    pub threshold: f32,
    /// Nonzero (default): spatial context fusion over neighbouring positive slices.
    pub use_scf: i32,
    /// SCF reach c in slices (default 2) and neighbour weight w (default 0.5).
    pub scf_c: u32,
    pub scf_w: f32,
    /// Default ICHSEG_AGGREGATE_OR.
    pub aggregate: IchsegAggregate,
    /// Nonzero (default): dense CRF refinement of each slice's mask.
    pub use_crf: i32,
    /// Slices per network run, 1..=256 (as for IchsegSegmentOptions); default 1.
    pub batch: u32,
    /// (v2) The bone cut, not in the paper: voxels above max_hu HU are dropped from the final
    /// mask (blood is 50-90 HU; without it the CRF spreads over the skull on the shipped
    /// phantom models). 1: on, 0: off, -1 (the default; also for v1 structs): the classifiers'
    /// ichseg.pseudo.max_hu (see `preset`), else off.
    pub use_max_hu: i32,
    /// (v2) The bone cut's CT value in HU when use_max_hu is 1, finite; default 100.
    pub max_hu: f32,
    /// (v3) The small-lesion filter, not in the paper: lesions (3D components) smaller than this
    /// many millilitres leave the final mask, after the bone cut. Finite and >= 0 (0 keeps every
    /// lesion); NaN (the default; also for v1 and v2 structs): the classifiers'
    /// ichseg.pseudo.min_lesion_ml (see `preset`), else 0.
    pub min_lesion_ml: f64,
    /// (v4) The intracranial mask, not in the paper (docs/INTRACRANIAL.md): the fused maps are
    /// zeroed outside the skull's inside, eroded by intracranial_margin_mm, before the threshold
    /// and the CRF. 1: on, 0: off, -1 (the default; also for older structs): the classifiers'
    /// ichseg.pseudo.intracranial_margin_mm (see `preset`), else off.
    pub use_intracranial_mask: i32,
    /// (v4) The intracranial mask's margin in mm when use_intracranial_mask is 1, finite and
    /// >= 0; default 2.
    pub intracranial_margin_mm: f64,
    /// (v4) What the settings left to the classifiers (threshold NaN, use_max_hu -1,
    /// use_min_hu -1, min_lesion_ml NaN, use_intracranial_mask -1, crf_confidence and crf_bilateral_compat NaN)
    /// follow: ICHSEG_PRESET_MODEL (the default:
    /// the classifiers' tuned ichseg.pseudo.* metadata where they have it, else METHOD.md's
    /// defaults) or ICHSEG_PRESET_PAPER (METHOD.md exactly).
    pub preset: IchsegPreset,
    /// (v5) The dense CRF unary's label confidence, in (0, 1). NaN (the default; also for older
    /// structs): the classifiers' tuned ichseg.pseudo.crf_confidence (see `preset`), else 0.7.
    pub crf_confidence: f32,
    /// (v5) The dense CRF's bilateral (appearance) Potts weight, finite and > 0. NaN (the
    /// default; also for older structs): the classifiers' ichseg.pseudo.crf_bilateral_compat
    /// (see `preset`), else 10.
    pub crf_bilateral_compat: f32,
    /// (v6) The blood-density cut, not in the paper: voxels below min_hu HU are dropped from the
    /// final mask, after the bone cut (acute blood is denser than the brain the maps and the CRF
    /// spread over). 1: on, 0: off, -1 (the default; also for older structs): the classifiers'
    /// ichseg.pseudo.min_hu (see `preset`), else off.
    pub use_min_hu: i32,
    /// (v6) The blood-density cut's CT value in HU when use_min_hu is 1, finite; default 42.
    pub min_hu: f32,
}

/// What pseudo-labelling settings left to the classifiers follow.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IchsegPreset {
    /// The classifiers' tuned settings (ichseg.pseudo.* metadata), else METHOD.md's defaults.
    Model = 0,
    /// METHOD.md exactly: threshold 0.2, no intracranial mask, bone cut or small-lesion filter.
    Paper = 1,
}

const _: () = assert!(std::mem::size_of::<IchsegPreset>() == std::mem::size_of::<u32>());

/// The struct before `use_max_hu` and `max_hu`: callers compiled against it still work.
const PSEUDO_OPTIONS_V1: usize = std::mem::offset_of!(IchsegPseudoOptions, use_max_hu);
const PSEUDO_OPTIONS_V6: usize = std::mem::size_of::<IchsegPseudoOptions>();

impl Default for IchsegPseudoOptions {
    fn default() -> Self {
        let d = PseudoOptions::default();
        let scf = ScfParams::default();
        IchsegPseudoOptions {
            struct_size: PSEUDO_OPTIONS_V6,
            cam: IchsegCamMethod::Sf,
            threshold: f32::NAN,
            use_scf: 1,
            scf_c: scf.c as u32,
            scf_w: scf.w,
            aggregate: IchsegAggregate::Or,
            use_crf: 1,
            batch: 1,
            use_max_hu: -1,
            max_hu: crate::pipeline::pseudo::DEFAULT_MAX_HU,
            min_lesion_ml: f64::NAN,
            use_intracranial_mask: -1,
            intracranial_margin_mm: crate::skull::intracranial::DEFAULT_MARGIN_MM,
            preset: match d.preset {
                Preset::Model => IchsegPreset::Model,
                Preset::Paper => IchsegPreset::Paper,
            },
            crf_confidence: f32::NAN,
            crf_bilateral_compat: f32::NAN,
            use_min_hu: -1,
            min_hu: crate::pipeline::pseudo::SUGGESTED_MIN_HU,
        }
    }
}

/// Fills `opts` with the defaults (SF-CAM, SCF on with c 2 and w 0.5, OR aggregation, CRF on,
/// batch 1; threshold, bone cut, blood-density cut, small-lesion filter, intracranial mask and the CRF's label
/// confidence and bilateral weight left to the classifiers' tuned metadata, preset ICHSEG_PRESET_MODEL). Call it through the
/// macro ichseg_pseudo_options_init(opts), which passes `size` = sizeof(IchsegPseudoOptions) of
/// the caller's header; see ichseg_engine_options_init_sized(). Does nothing when `opts` is
/// NULL.
///
/// # Safety
/// A non-NULL `opts` must point to `size` writable bytes.
#[no_mangle]
pub unsafe extern "C" fn ichseg_pseudo_options_init_sized(opts: *mut IchsegPseudoOptions, size: usize) {
    // SAFETY: caller's promise.
    boundary("ichseg_pseudo_options_init", || unsafe {
        init_sized(opts, size, PSEUDO_OPTIONS_V1, IchsegPseudoOptions::default())
    })
}

/// A tuned step's switch: 1 on (with `value`), 0 off, -1 the classifiers' metadata.
fn tristate<T>(switch: i32, value: T, name: &str) -> FfiResult<Tuned<T>> {
    match switch {
        -1 => Ok(Tuned::Auto),
        0 => Ok(Tuned::Off),
        1 => Ok(Tuned::Set(value)),
        other => Err(FfiError::invalid(format!("IchsegPseudoOptions.{name} is {other}, not -1, 0 or 1"))),
    }
}

/// A tuned value whose NaN leaves it to the classifiers.
#[allow(clippy::eq_op)] // only NaN differs from itself
fn nan_auto<T: PartialEq>(v: T) -> Tuned<T> {
    if v != v {
        Tuned::Auto
    } else {
        Tuned::Set(v)
    }
}

/// Reads and checks the caller's options (NULL: the defaults).
///
/// # Safety
/// `p` must be NULL or readable for `p->struct_size` bytes.
unsafe fn read_options(p: *const IchsegPseudoOptions) -> FfiResult<PseudoOptions> {
    let d = IchsegPseudoOptions::default();
    let o = if p.is_null() {
        d
    } else {
        // SAFETY: caller's promise; struct_size() checks the struct covers v1, field() each field.
        unsafe {
            let size = struct_size(p, PSEUDO_OPTIONS_V1, "IchsegPseudoOptions", "ichseg_pseudo_options_init")?;
            let cam = field(p, size, addr_of!((*p).cam).cast::<u32>()).unwrap_or(d.cam as u32);
            let aggregate = field(p, size, addr_of!((*p).aggregate).cast::<u32>()).unwrap_or(d.aggregate as u32);
            IchsegPseudoOptions {
                struct_size: size,
                cam: match cam {
                    0 => IchsegCamMethod::Sf,
                    1 => IchsegCamMethod::Layer,
                    2 => IchsegCamMethod::Grad,
                    other => {
                        return Err(FfiError::invalid(format!("IchsegPseudoOptions.cam is {other}, not 0, 1 or 2")))
                    }
                },
                threshold: field(p, size, addr_of!((*p).threshold)).unwrap_or(d.threshold),
                use_scf: field(p, size, addr_of!((*p).use_scf)).unwrap_or(d.use_scf),
                scf_c: field(p, size, addr_of!((*p).scf_c)).unwrap_or(d.scf_c),
                scf_w: field(p, size, addr_of!((*p).scf_w)).unwrap_or(d.scf_w),
                aggregate: match aggregate {
                    0 => IchsegAggregate::Or,
                    1 => IchsegAggregate::And,
                    other => {
                        return Err(FfiError::invalid(format!("IchsegPseudoOptions.aggregate is {other}, not 0 or 1")))
                    }
                },
                use_crf: field(p, size, addr_of!((*p).use_crf)).unwrap_or(d.use_crf),
                batch: field(p, size, addr_of!((*p).batch)).unwrap_or(d.batch),
                use_max_hu: field(p, size, addr_of!((*p).use_max_hu)).unwrap_or(d.use_max_hu),
                max_hu: field(p, size, addr_of!((*p).max_hu)).unwrap_or(d.max_hu),
                min_lesion_ml: field(p, size, addr_of!((*p).min_lesion_ml)).unwrap_or(d.min_lesion_ml),
                use_intracranial_mask: field(p, size, addr_of!((*p).use_intracranial_mask))
                    .unwrap_or(d.use_intracranial_mask),
                intracranial_margin_mm: field(p, size, addr_of!((*p).intracranial_margin_mm))
                    .unwrap_or(d.intracranial_margin_mm),
                preset: match field(p, size, addr_of!((*p).preset).cast::<u32>()).unwrap_or(d.preset as u32) {
                    0 => IchsegPreset::Model,
                    1 => IchsegPreset::Paper,
                    other => {
                        return Err(FfiError::invalid(format!("IchsegPseudoOptions.preset is {other}, not 0 or 1")))
                    }
                },
                crf_confidence: field(p, size, addr_of!((*p).crf_confidence)).unwrap_or(d.crf_confidence),
                crf_bilateral_compat: field(p, size, addr_of!((*p).crf_bilateral_compat))
                    .unwrap_or(d.crf_bilateral_compat),
                use_min_hu: field(p, size, addr_of!((*p).use_min_hu)).unwrap_or(d.use_min_hu),
                min_hu: field(p, size, addr_of!((*p).min_hu)).unwrap_or(d.min_hu),
            }
        }
    };
    // Value ranges are the library's own checks (crate::pipeline::options), made when the labeler is built.
    Ok(PseudoOptions {
        cam: match o.cam {
            IchsegCamMethod::Sf => CamMethod::Sf,
            IchsegCamMethod::Layer => CamMethod::Layer,
            IchsegCamMethod::Grad => CamMethod::Grad,
        },
        threshold: nan_auto(o.threshold),
        scf: (o.use_scf != 0).then_some(ScfParams { c: o.scf_c as usize, w: o.scf_w }),
        aggregate: match o.aggregate {
            IchsegAggregate::Or => Aggregate::Or,
            IchsegAggregate::And => Aggregate::And,
        },
        crf: (o.use_crf != 0).then(CrfParams::default),
        crf_confidence: nan_auto(o.crf_confidence),
        crf_bilateral_compat: nan_auto(o.crf_bilateral_compat),
        max_hu: tristate(o.use_max_hu, o.max_hu, "use_max_hu")?,
        min_hu: tristate(o.use_min_hu, o.min_hu, "use_min_hu")?,
        min_lesion_ml: nan_auto(o.min_lesion_ml),
        intracranial_margin_mm: tristate(o.use_intracranial_mask, o.intracranial_margin_mm, "use_intracranial_mask")?,
        preset: match o.preset {
            IchsegPreset::Model => Preset::Model,
            IchsegPreset::Paper => Preset::Paper,
        },
        batch: o.batch as usize,
        ..PseudoOptions::default()
    })
}

/// Reads `count` NUL-terminated strings (`what[i]`); a NULL entry is `None` when `nullable`.
///
/// # Safety
/// `list` must be readable for `count` pointers, each NULL or a NUL-terminated string.
unsafe fn read_strings(list: *const *const c_char, count: usize, what: &str) -> FfiResult<Vec<Option<String>>> {
    (0..count)
        .map(|i| {
            // SAFETY: caller's promise.
            let s = unsafe { list.add(i).read_unaligned() };
            if s.is_null() {
                return Ok(None);
            }
            // SAFETY: caller's promise.
            let text = unsafe { CStr::from_ptr(s) }
                .to_str()
                .map_err(|_| FfiError::invalid(format!("{what}[{i}] is not UTF-8")))?;
            Ok(Some(text.to_string()))
        })
        .collect()
}

/// Loads `count` classifier ONNX models from `classifier_paths` and prepares them for
/// pseudo-labelling on `engine`: their gradient graphs are built and planned once. `taps` may
/// be NULL (every classifier's taps from its ichseg.taps metadata) or `count` entries, each NULL
/// (that classifier's metadata) or a comma-separated list of tap tensor names, shallow first.
/// `opts` may be NULL for the defaults. On success `*out` receives a new labeler the caller
/// frees with ichseg_pseudo_labeler_free(); on failure it is set to NULL.
///
/// Errors: ICHSEG_STATUS_NULL_POINTER, ICHSEG_STATUS_INVALID_ARGUMENT (count 0, bad options or
/// struct_size, unknown taps), ICHSEG_STATUS_IO, ICHSEG_STATUS_INVALID_MODEL (not a classifier,
/// an operator without a gradient rule between a tap and the logits: the message names it).
///
/// Thread-safe; slow (builds gradient graphs and plans): create once, label many volumes.
///
/// # Safety
/// `engine` NULL or live; `classifier_paths` NULL or `count` readable pointers to
/// NUL-terminated paths; `taps` NULL or `count` readable pointers, each NULL or a
/// NUL-terminated string; `opts` NULL or valid for `opts->struct_size` bytes; `out` NULL or
/// writable.
#[no_mangle]
pub unsafe extern "C" fn ichseg_pseudo_labeler_create(
    engine: *const IchsegEngine,
    classifier_paths: *const *const c_char,
    count: usize,
    taps: *const *const c_char,
    opts: *const IchsegPseudoOptions,
    out: *mut *mut IchsegPseudoLabeler,
) -> IchsegStatus {
    boundary("ichseg_pseudo_labeler_create", || -> FfiResult {
        // SAFETY (all blocks): the caller's promises above.
        let out = unsafe { handle_out(out, "out") }?;
        let engine = unsafe { engine.as_ref() }.ok_or_else(|| FfiError::null("engine"))?;
        if classifier_paths.is_null() {
            return Err(FfiError::null("classifier_paths"));
        }
        if count == 0 || count > 64 {
            return Err(FfiError::invalid(format!("count must be 1..64 classifiers, got {count}")));
        }
        let paths = unsafe { read_strings(classifier_paths, count, "classifier_paths") }?
            .into_iter()
            .enumerate()
            .map(|(i, p)| p.ok_or_else(|| FfiError::null(&format!("classifier_paths[{i}]"))))
            .collect::<FfiResult<Vec<String>>>()?;
        let mut options = unsafe { read_options(opts) }?;
        if !taps.is_null() {
            options.taps = unsafe { read_strings(taps, count, "taps") }?
                .into_iter()
                .map(|t| t.map(|t| t.split(',').map(|s| s.trim().to_string()).collect()).unwrap_or_default())
                .collect();
        }
        let labeler = PseudoLabeler::from_paths(&engine.engine, &paths, &options)?;
        unsafe { out.write(Box::into_raw(Box::new(IchsegPseudoLabeler { labeler }))) };
        Ok(())
    })
}

/// Frees a labeler. NULL is a no-op. Do not free it while another thread is labelling with it.
///
/// # Safety
/// `labeler` must be NULL or a pointer from ichseg_pseudo_labeler_create() not yet freed.
#[no_mangle]
pub unsafe extern "C" fn ichseg_pseudo_labeler_free(labeler: *mut IchsegPseudoLabeler) {
    boundary("ichseg_pseudo_labeler_free", || {
        if !labeler.is_null() {
            // SAFETY: caller's promise: a live labeler from Box::into_raw.
            drop(unsafe { Box::from_raw(labeler) });
        }
    })
}

/// The number of tap layers, in `*out`: the maps ichseg_pseudo_label() writes to `cams`.
///
/// # Safety
/// `labeler` NULL or live; `out` NULL or writable.
#[no_mangle]
pub unsafe extern "C" fn ichseg_pseudo_labeler_layer_count(
    labeler: *const IchsegPseudoLabeler,
    out: *mut usize,
) -> IchsegStatus {
    // SAFETY: the caller's promises, passed on.
    unsafe {
        super::boundary::get("ichseg_pseudo_labeler_layer_count", labeler, "labeler", out, |l: &IchsegPseudoLabeler| {
            l.labeler.layer_count()
        })
    }
}

/// Pseudo-labels a volume: SF-CAM (or the chosen CAM) of every classifier, model ensemble,
/// slice decision, spatial context fusion, bi-layer aggregation and dense CRF.
///
/// - `slice_labels`: NULL (then `labels_len` 0) to decide slices by the classifiers (mean bleed
///   probability >= 0.5), or `labels_len` (== `dims[2]`) bytes, nonzero for a slice that bleeds;
/// - `mask`: `mask_len` (== voxel count) bytes receiving 1 for pseudo-hemorrhage, else 0;
/// - `cams`: NULL (then `cams_len` 0), or layer_count * voxel count floats receiving each tap
///   layer's fused map in [0, 1] (the map the threshold sees), layer after layer, each x-fastest;
/// - `progress`: as for ichseg_segment(), over the slices of every classifier, then (with the
///   CRF on) the slices the CRF refines, reported a round of slices at a time.
///
/// Checks everything before any work and writes the caller's buffers only on success, as
/// ichseg_segment() does. Threading: any number of threads may label with one labeler at once.
///
/// # Safety
/// `labeler` a live labeler; `volume` as for ichseg_segment(); `slice_labels` NULL or readable
/// for `labels_len` bytes; `mask` writable for `mask_len` bytes; `cams` NULL or writable for
/// `cams_len` floats.
#[no_mangle]
pub unsafe extern "C" fn ichseg_pseudo_label(
    labeler: *const IchsegPseudoLabeler,
    volume: *const IchsegVolumeDesc,
    slice_labels: *const u8,
    labels_len: usize,
    mask: *mut u8,
    mask_len: usize,
    cams: *mut f32,
    cams_len: usize,
    progress: IchsegProgressFn,
    user_data: *mut c_void,
) -> IchsegStatus {
    boundary("ichseg_pseudo_label", || -> FfiResult {
        // SAFETY (all blocks): the caller's promises above.
        let labeler = &unsafe { labeler.as_ref() }.ok_or_else(|| FfiError::null("labeler"))?.labeler;
        if volume.is_null() {
            return Err(FfiError::null("volume"));
        }
        if mask.is_null() {
            return Err(FfiError::null("mask"));
        }
        let desc = unsafe { read_desc(volume) }?;
        let (n, dims) = (desc.voxels, desc.dims);
        check_len("mask", mask_len, n, dims, "one byte per voxel")?;
        let layers = labeler.layer_count();
        let per_layer = format!("{layers} map(s) of one float per voxel");
        check_optional_len("cams", cams.is_null(), cams_len, n * layers, dims, &per_layer)?;
        let labels = match (slice_labels.is_null(), labels_len) {
            (true, 0) => None,
            (true, len) => {
                return Err(FfiError::new(
                    IchsegStatus::BufferSize,
                    format!("slice_labels is NULL but labels_len is {len}: pass 0 to let the classifiers decide"),
                ))
            }
            (false, len) if len != dims[2] => {
                return Err(FfiError::new(
                    IchsegStatus::BufferSize,
                    format!(
                        "labels_len is {len} but the volume has {} axial slices: slice_labels needs one byte per axial slice",
                        dims[2]
                    ),
                ))
            }
            (false, len) => {
                let raw = unsafe { std::slice::from_raw_parts(slice_labels, len) };
                Some(raw.iter().map(|&b| b != 0).collect::<Vec<bool>>())
            }
        };
        let (limit, what) = (labeler.engine().memory_limit(), "pseudo-labelling this volume");
        let volume = unsafe { desc.volume_within(limit, labeler.buffer_bytes(dims), what) }?;
        let mut report = progress_adapter(progress, user_data);
        let label = labeler.label_with_progress(&volume, labels.as_deref(), &mut report)?;

        // Everything succeeded: only now write the caller's memory.
        let values = label.mask.as_standard_layout();
        let mask_values = values.as_slice().filter(|v| v.len() == n).ok_or_else(internal)?;
        let maps: Vec<_> = label.fused.iter().map(|m| m.as_standard_layout()).collect();
        if !cams.is_null() && (maps.len() != layers || maps.iter().any(|m| m.len() != n)) {
            return Err(internal());
        }
        unsafe {
            std::ptr::copy_nonoverlapping(mask_values.as_ptr(), mask, n);
            if !cams.is_null() {
                for (i, m) in maps.iter().enumerate() {
                    let m = m.as_slice().ok_or_else(internal)?;
                    // Byte copy: the caller's float buffer need not be aligned.
                    std::ptr::copy_nonoverlapping(m.as_ptr().cast::<u8>(), cams.add(i * n).cast::<u8>(), n * 4);
                }
            }
        }
        Ok(())
    })
}

fn internal() -> FfiError {
    FfiError::new(IchsegStatus::Panic, "internal error: pseudo label arrays have the wrong shape")
}
