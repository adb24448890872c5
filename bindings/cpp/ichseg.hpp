// ichseg.hpp: a header-only C++17 wrapper over the libichseg C ABI (include/ichseg.h).
//
//     #include "ichseg.hpp"   // with include/ and bindings/cpp/ on the include path; link -lichseg
//
//     ichseg::Engine engine({/*threads*/ 4, ichseg::Device::Cpu});
//     ichseg::Model model = ichseg::Model::load(engine, "unet.onnx");
//     std::vector<uint8_t> mask(nx * ny * nz);
//     ichseg::Result r = model.segment(ichseg::VolumeView(voxels, {nx, ny, nz}, {sx, sy, sz}), mask);
//     for (const IchsegLesion& l : r.lesions()) { ... }
//
// - Handles (Engine, Model, Result) are move-only RAII owners of the C handles; a moved-from
//   handle is empty (`!handle`), and calling a method on it throws Error(NULL_POINTER).
// - Every failing call throws ichseg::Error, carrying the IchsegStatus and the library's
//   message (ichseg_last_error_message(), copied at once).
// - Threading is that of the C ABI: Engine and Model may be used from any number of threads at
//   once (Model::segment is const and runs concurrently); a Result may be read concurrently.
// - Exceptions thrown by a progress callback never cross the C ABI: the trampoline catches
//   them, cancels the call, and Model::segment rethrows the original exception afterwards.
#ifndef ICHSEG_HPP
#define ICHSEG_HPP

#include "ichseg.h"

#include <array>
#include <cstddef>
#include <cstdint>
#include <exception>
#include <functional>
#include <limits>
#include <memory>
#include <optional>
#include <stdexcept>
#include <string>
#include <type_traits>
#include <utility>
#include <vector>

namespace ichseg {

// ---------------------------------------------------------------------------------------------
// Errors

/// Thrown by every failing call: the C status and the library's message.
class Error : public std::runtime_error {
public:
    Error(IchsegStatus status, const std::string& message)
        : std::runtime_error(message), status_(status) {}

    /// The C status code (never ICHSEG_STATUS_OK).
    IchsegStatus status() const noexcept { return status_; }
    /// "ICHSEG_STATUS_BUFFER_SIZE" and so on.
    const char* status_name() const noexcept { return ichseg_status_name(static_cast<int32_t>(status_)); }

private:
    IchsegStatus status_;
};

namespace detail {

/// Throws Error for a failing status, with this thread's last-error message.
inline void check(IchsegStatus status) {
    if (status != ICHSEG_STATUS_OK) {
        const char* msg = ichseg_last_error_message();
        throw Error(status, msg != nullptr ? std::string(msg) : std::string());
    }
}

struct EngineFree {
    void operator()(IchsegEngine* p) const noexcept { ichseg_engine_free(p); }
};
struct ModelFree {
    void operator()(IchsegModel* p) const noexcept { ichseg_model_free(p); }
};
struct SeriesFree {
    void operator()(IchsegSeries* s) const noexcept { ichseg_series_free(s); }
};
struct ResultFree {
    void operator()(IchsegResult* p) const noexcept { ichseg_result_free(p); }
};

/// The C library's defaults for an options struct, read once from its `*_options_init_sized`
/// (what the C `*_options_init` macros call), so that the wrapper's option structs never
/// repeat (and never drift from) them.
template <class T, void (*Init)(T*, std::size_t)>
inline const T& c_defaults() noexcept {
    static const T defaults = [] {
        T o;
        Init(&o, sizeof(T));
        return o;
    }();
    return defaults;
}
inline const IchsegEngineOptions& engine_defaults() noexcept {
    return c_defaults<IchsegEngineOptions, ichseg_engine_options_init_sized>();
}
inline const IchsegSegmentOptions& segment_defaults() noexcept {
    return c_defaults<IchsegSegmentOptions, ichseg_segment_options_init_sized>();
}
inline const IchsegPseudoOptions& pseudo_defaults() noexcept {
    return c_defaults<IchsegPseudoOptions, ichseg_pseudo_options_init_sized>();
}

template <class T> struct voxel_type_of;  // undefined: unsupported voxel types do not compile
template <> struct voxel_type_of<uint8_t> : std::integral_constant<IchsegVoxelType, ICHSEG_VOXEL_TYPE_U8> {};
template <> struct voxel_type_of<int16_t> : std::integral_constant<IchsegVoxelType, ICHSEG_VOXEL_TYPE_I16> {};
template <> struct voxel_type_of<uint16_t> : std::integral_constant<IchsegVoxelType, ICHSEG_VOXEL_TYPE_U16> {};
template <> struct voxel_type_of<int32_t> : std::integral_constant<IchsegVoxelType, ICHSEG_VOXEL_TYPE_I32> {};
template <> struct voxel_type_of<float> : std::integral_constant<IchsegVoxelType, ICHSEG_VOXEL_TYPE_F32> {};
template <> struct voxel_type_of<double> : std::integral_constant<IchsegVoxelType, ICHSEG_VOXEL_TYPE_F64> {};

}  // namespace detail

// ---------------------------------------------------------------------------------------------
// Versions

/// The C ABI version of the loaded library; compare with ICHSEG_ABI_VERSION (this header's).
inline uint32_t abi_version() noexcept { return ichseg_abi_version(); }
/// The library version, e.g. "0.1.0".
inline std::string version() { return ichseg_version_string(); }

// ---------------------------------------------------------------------------------------------
// Span: a non-owning pointer + size (C++17 has no std::span)

template <class T>
class Span {
public:
    using element_type = T;
    using value_type = std::remove_cv_t<T>;
    using size_type = std::size_t;
    using pointer = T*;
    using iterator = T*;

    constexpr Span() noexcept = default;
    constexpr Span(T* data, std::size_t size) noexcept : data_(data), size_(size) {}
    template <class A>
    Span(std::vector<value_type, A>& v) noexcept : data_(v.data()), size_(v.size()) {}
    template <class A, class U = T, std::enable_if_t<std::is_const<U>::value, int> = 0>
    Span(const std::vector<value_type, A>& v) noexcept : data_(v.data()), size_(v.size()) {}
    template <std::size_t N>
    constexpr Span(T (&a)[N]) noexcept : data_(a), size_(N) {}
    template <std::size_t N>
    constexpr Span(std::array<value_type, N>& a) noexcept : data_(a.data()), size_(N) {}
    template <std::size_t N, class U = T, std::enable_if_t<std::is_const<U>::value, int> = 0>
    constexpr Span(const std::array<value_type, N>& a) noexcept : data_(a.data()), size_(N) {}
    /// Span<T> -> Span<const T>.
    template <class U, std::enable_if_t<std::is_convertible<U (*)[], T (*)[]>::value, int> = 0>
    constexpr Span(const Span<U>& other) noexcept : data_(other.data()), size_(other.size()) {}

    constexpr T* data() const noexcept { return data_; }
    constexpr std::size_t size() const noexcept { return size_; }
    constexpr std::size_t size_bytes() const noexcept { return size_ * sizeof(T); }
    constexpr bool empty() const noexcept { return size_ == 0; }
    constexpr T& operator[](std::size_t i) const noexcept { return data_[i]; }
    constexpr T* begin() const noexcept { return data_; }
    constexpr T* end() const noexcept { return data_ + size_; }

private:
    T* data_ = nullptr;
    std::size_t size_ = 0;
};

// ---------------------------------------------------------------------------------------------
// Options

enum class Device : int {
    Auto = ICHSEG_DEVICE_AUTO,  ///< CUDA when available, else the CPU
    Cpu = ICHSEG_DEVICE_CPU,
    Cuda = ICHSEG_DEVICE_CUDA,  ///< Error(UNSUPPORTED) when this build or machine lacks it
};

/// Engine settings (see IchsegEngineOptions), defaults read from ichseg_engine_options_init.
struct EngineOptions {
    uint32_t threads = detail::engine_defaults().threads;  ///< worker threads; 0 = one per core
    Device device = static_cast<Device>(detail::engine_defaults().device);
    int32_t cuda_device = detail::engine_defaults().cuda_device;  ///< with Device::Cuda
    /// Cap in MiB on the buffers one call allocates for its volume; 0 = none. Work over it
    /// throws Error(OUT_OF_MEMORY) before anything is allocated.
    uint64_t memory_limit_mb = detail::engine_defaults().memory_limit_mb;
    /// Trade speed for memory: on the CPU, 3x3 convolutions keep their weights as they are
    /// instead of Winograd's copies, 4x their size.
    bool low_memory = detail::engine_defaults().low_memory != 0;

    IchsegEngineOptions to_c() const noexcept {
        IchsegEngineOptions o;
        ichseg_engine_options_init(&o);
        o.threads = threads;
        o.device = static_cast<IchsegDevice>(device);
        o.cuda_device = cuda_device;
        o.memory_limit_mb = memory_limit_mb;
        o.low_memory = low_memory ? 1 : 0;
        return o;
    }
};

/// Model settings (see IchsegSegmentOptions), defaults read from ichseg_segment_options_init; the
/// NaN / 0 defaults mean "from the model".
struct SegmentOptions {
    float threshold = detail::segment_defaults().threshold;
    uint32_t batch = detail::segment_defaults().batch;
    float window_level = detail::segment_defaults().window_level;
    float window_width = detail::segment_defaults().window_width;
    uint32_t input_rows = detail::segment_defaults().input_rows;
    uint32_t input_cols = detail::segment_defaults().input_cols;
    uint32_t channels = detail::segment_defaults().channels;
    /// Lesions smaller than this (mL) leave the mask before the lesion list; 0 keeps all (not
    /// in the paper). Unset: the model's tuned ichseg.segment.min_lesion_ml, else 0.
    std::optional<double> min_lesion_ml;
    /// The intracranial mask (not in the paper, docs/INTRACRANIAL.md): probability and mask
    /// zeroed outside the skull's inside, eroded by the margin.
    bool intracranial_mask = detail::segment_defaults().use_intracranial_mask != 0;
    double intracranial_margin_mm = detail::segment_defaults().intracranial_margin_mm;

    IchsegSegmentOptions to_c() const noexcept {
        IchsegSegmentOptions o;
        ichseg_segment_options_init(&o);
        o.threshold = threshold;
        o.batch = batch;
        o.window_level = window_level;
        o.window_width = window_width;
        o.input_rows = input_rows;
        o.input_cols = input_cols;
        o.channels = channels;
        if (min_lesion_ml) o.min_lesion_ml = *min_lesion_ml;
        o.use_intracranial_mask = intracranial_mask ? 1 : 0;
        o.intracranial_margin_mm = intracranial_margin_mm;
        return o;
    }
};

// ---------------------------------------------------------------------------------------------
// VolumeView: a CT volume in the caller's memory (x fastest, then y, then slice z)

class VolumeView {
public:
    using Dims = std::array<std::size_t, 3>;
    using Spacing = std::array<double, 3>;
    using Affine = std::array<double, 16>;  ///< row-major 4x4, voxel (x, y, z, 1) -> world mm

    /// `data` holds dims[0] * dims[1] * dims[2] voxels (unchecked: the caller vouches for it).
    template <class T>
    VolumeView(const T* data, Dims dims, Spacing spacing = {1.0, 1.0, 1.0}) noexcept
        : type_(detail::voxel_type_of<std::remove_cv_t<T>>::value), data_(data), dims_(dims),
          spacing_(spacing) {}
    /// The span's length is checked against the dims by Model::segment (Error BUFFER_SIZE).
    template <class T>
    VolumeView(Span<T> data, Dims dims, Spacing spacing = {1.0, 1.0, 1.0}) noexcept
        : type_(detail::voxel_type_of<std::remove_cv_t<T>>::value), data_(data.data()),
          len_(data.size()), dims_(dims), spacing_(spacing) {}
    template <class T, class A>
    VolumeView(const std::vector<T, A>& data, Dims dims, Spacing spacing = {1.0, 1.0, 1.0}) noexcept
        : VolumeView(Span<const T>(data.data(), data.size()), dims, spacing) {}

    /// Sets the voxel-to-world matrix (default: a scaling by the spacing).
    VolumeView& affine(const Affine& a) {
        affine_ = a;
        return *this;
    }
    /// HU = value * slope + intercept (default 1, 0).
    VolumeView& rescale(double slope, double intercept) noexcept {
        slope_ = slope;
        intercept_ = intercept;
        return *this;
    }

    IchsegVoxelType voxel_type() const noexcept { return type_; }
    const void* data() const noexcept { return data_; }
    const Dims& dims() const noexcept { return dims_; }
    const Spacing& spacing() const noexcept { return spacing_; }
    const std::optional<Affine>& affine() const noexcept { return affine_; }
    double rescale_slope() const noexcept { return slope_; }
    double rescale_intercept() const noexcept { return intercept_; }
    /// The buffer length when known (constructed from a Span or vector).
    std::optional<std::size_t> length() const noexcept { return len_; }

    IchsegVolumeDesc to_c() const noexcept {
        IchsegVolumeDesc d;
        ichseg_volume_desc_init(&d);
        d.voxel_type = type_;
        d.data = data_;
        for (int i = 0; i < 3; i++) {
            d.dims[i] = dims_[static_cast<std::size_t>(i)];
            d.spacing[i] = spacing_[static_cast<std::size_t>(i)];
        }
        d.affine = affine_ ? affine_->data() : nullptr;
        d.rescale_slope = slope_;
        d.rescale_intercept = intercept_;
        return d;
    }

private:
    IchsegVoxelType type_;
    const void* data_;
    std::optional<std::size_t> len_;
    Dims dims_;
    Spacing spacing_;
    std::optional<Affine> affine_;
    double slope_ = 1.0;
    double intercept_ = 0.0;
};

// ---------------------------------------------------------------------------------------------
// Handles

/// An execution context: device and worker threads. Thread-safe; move-only.
class Engine {
public:
    explicit Engine(const EngineOptions& options = {}) {
        const IchsegEngineOptions o = options.to_c();
        IchsegEngine* raw = nullptr;
        const IchsegStatus s = ichseg_engine_create(&o, &raw);
        handle_.reset(raw);  // owned before anything can throw
        detail::check(s);
    }

    /// "cpu" or "cuda:N".
    std::string device_name() const {
        const char* out = nullptr;
        detail::check(ichseg_engine_device_name(handle_.get(), &out));
        return out;
    }
    /// Why the engine uses its device.
    std::string device_note() const {
        const char* out = nullptr;
        detail::check(ichseg_engine_device_note(handle_.get(), &out));
        return out;
    }
    uint32_t threads() const {
        uint32_t out = 0;
        detail::check(ichseg_engine_threads(handle_.get(), &out));
        return out;
    }

    const IchsegEngine* get() const noexcept { return handle_.get(); }
    /// False once moved from.
    explicit operator bool() const noexcept { return handle_ != nullptr; }

private:
    std::unique_ptr<IchsegEngine, detail::EngineFree> handle_;
};

/// The lesions of one segmentation. Immutable, readable from several threads; move-only.
class Result {
public:
    /// Takes ownership of a C result (may be NULL: an empty Result).
    explicit Result(IchsegResult* raw) noexcept : handle_(raw) {}

    std::size_t lesion_count() const {
        std::size_t out = 0;
        detail::check(ichseg_result_lesion_count(handle_.get(), &out));
        return out;
    }
    double total_volume_ml() const {
        double out = 0.0;
        detail::check(ichseg_result_total_volume_ml(handle_.get(), &out));
        return out;
    }
    /// Lesion `index` (largest first); Error(INVALID_ARGUMENT) when out of range.
    IchsegLesion lesion(std::size_t index) const {
        IchsegLesion out{};
        detail::check(ichseg_result_lesion(handle_.get(), index, &out));
        return out;
    }
    std::vector<IchsegLesion> lesions() const {
        const std::size_t n = lesion_count();
        std::vector<IchsegLesion> out;
        out.reserve(n);
        for (std::size_t i = 0; i < n; i++) {
            out.push_back(lesion(i));
        }
        return out;
    }

    /// Clinical findings of lesion `index` (ABC/2, HU density, side, flags);
    /// Error(INVALID_ARGUMENT) when out of range.
    IchsegLesionFindings findings(std::size_t index) const {
        IchsegLesionFindings out{};
        out.struct_size = sizeof out;
        detail::check(ichseg_result_lesion_findings(handle_.get(), index, &out));
        return out;
    }
    /// The midsagittal plane the sides refer to (found == 0 and a reason when none was found;
    /// the reason points into this Result).
    IchsegMidline midline() const {
        IchsegMidline out{};
        out.struct_size = sizeof out;
        detail::check(ichseg_result_midline(handle_.get(), &out));
        return out;
    }
    /// Sum of the lesions' ABC/2 estimates, mL.
    double total_abc2_ml() const {
        double out = 0.0;
        detail::check(ichseg_result_total_abc2_ml(handle_.get(), &out));
        return out;
    }
    /// One line, e.g. "2 lesions, 34.2 mL total (ABC/2 31.0 mL), largest 30.1 mL left, >= 30 mL".
    std::string summary() const {
        const char* out = nullptr;
        detail::check(ichseg_result_summary(handle_.get(), &out));
        return out ? std::string(out) : std::string();
    }

    const IchsegResult* get() const noexcept { return handle_.get(); }
    explicit operator bool() const noexcept { return handle_ != nullptr; }

private:
    std::unique_ptr<IchsegResult, detail::ResultFree> handle_;
};

/// Progress of Model::segment: `done` of `total` slices finished; return false to cancel.
using ProgressFn = std::function<bool(uint32_t done, uint32_t total)>;

namespace detail {
// A VolumeView built from a span or vector knows its length: check it against the dims here,
// with a clear message (zero or overflowing dims are left to the library: INVALID_ARGUMENT).
inline void check_volume_length(const VolumeView& volume) {
    if (!volume.length()) {
        return;
    }
    const auto& d = volume.dims();
    std::size_t n = 1;
    bool overflow = false;
    for (std::size_t dim : d) {
        if (dim != 0 && n > std::numeric_limits<std::size_t>::max() / dim) {
            overflow = true;
        }
        n *= dim;
    }
    if (!overflow && n != 0 && *volume.length() != n) {
        throw Error(ICHSEG_STATUS_BUFFER_SIZE, "the volume buffer holds " + std::to_string(*volume.length()) +
                                                   " voxels but the " + std::to_string(d[0]) + "x" +
                                                   std::to_string(d[1]) + "x" + std::to_string(d[2]) +
                                                   " volume has " + std::to_string(n));
    }
}

// The C progress callback that calls a ProgressFn; an exception it throws is kept (the C call is
// cancelled) and rethrown by the caller after the C call returns.
struct Trampoline {
    const ProgressFn* fn;
    std::exception_ptr error;

    static int32_t call(uint32_t done, uint32_t total, void* user_data) noexcept {
        auto* self = static_cast<Trampoline*>(user_data);
        try {
            return (*self->fn)(done, total) ? 1 : 0;
        } catch (...) {
            self->error = std::current_exception();
            return 0;
        }
    }
};

}  // namespace detail

/// A segmentation network bound to an engine. Thread-safe (segment is const); move-only.
class Model {
public:
    /// Loads an ONNX model file. Errors: IO, INVALID_MODEL, INVALID_ARGUMENT.
    static Model load(const Engine& engine, const std::string& path, const SegmentOptions& options = {}) {
        const IchsegSegmentOptions o = options.to_c();
        IchsegModel* raw = nullptr;
        const IchsegStatus s = ichseg_model_load(engine.get(), path.c_str(), &o, &raw);
        Model m(raw);
        detail::check(s);
        return m;
    }
    /// Loads an ONNX model from memory (copied: the buffer may go once this returns).
    static Model from_memory(const Engine& engine, const uint8_t* bytes, std::size_t len,
                             const SegmentOptions& options = {}) {
        const IchsegSegmentOptions o = options.to_c();
        IchsegModel* raw = nullptr;
        const IchsegStatus s = ichseg_model_load_from_memory(engine.get(), bytes, len, &o, &raw);
        Model m(raw);
        detail::check(s);
        return m;
    }
    static Model from_memory(const Engine& engine, Span<const uint8_t> bytes, const SegmentOptions& options = {}) {
        return from_memory(engine, bytes.data(), bytes.size(), options);
    }

    /// Segments `volume`. `mask` (required) and `probabilities` (optional, empty for none)
    /// must hold one element per voxel; they are written only on success. `progress` runs on
    /// this thread; returning false throws Error(CANCELLED), and an exception it throws is
    /// rethrown here (the C call is cancelled first). Nothing is written in either case.
    Result segment(const VolumeView& volume, Span<uint8_t> mask, Span<float> probabilities = {},
                   ProgressFn progress = {}) const {
        detail::check_volume_length(volume);
        const IchsegVolumeDesc desc = volume.to_c();
        detail::Trampoline ctx{&progress, nullptr};
        IchsegResult* raw = nullptr;
        const IchsegStatus s =
            ichseg_segment(handle_.get(), &desc, mask.data(), mask.size(), probabilities.data(),
                           probabilities.size(), progress ? &detail::Trampoline::call : nullptr, &ctx, &raw);
        Result result(raw);
        if (ctx.error) {
            std::rethrow_exception(ctx.error);
        }
        detail::check(s);
        return result;
    }

    const IchsegModel* get() const noexcept { return handle_.get(); }
    explicit operator bool() const noexcept { return handle_ != nullptr; }

private:
    explicit Model(IchsegModel* raw) noexcept : handle_(raw) {}

    std::unique_ptr<IchsegModel, detail::ModelFree> handle_;
};

namespace detail {
struct PseudoLabelerFree {
    void operator()(IchsegPseudoLabeler* p) const noexcept { ichseg_pseudo_labeler_free(p); }
};
}  // namespace detail

/// Options of PseudoLabeler; defaults read from ichseg_pseudo_options_init (SF-CAM, SCF c 2
/// w 0.5, OR, CRF on, batch 1).
///
/// The tuned settings (threshold, bone cut, blood-density cut, small-lesion filter, intracranial mask, the CRF's
/// label confidence and bilateral weight) left unset
/// follow `preset`: ICHSEG_PRESET_MODEL (the classifiers' tuned ichseg.pseudo.* metadata, else
/// METHOD.md's defaults) or ICHSEG_PRESET_PAPER (METHOD.md exactly). Set one to override it;
/// `bone_cut = false`, `min_hu_cut = false` or `intracranial_mask = false` turns a step off
/// whatever the metadata says.
struct PseudoOptions {
    IchsegCamMethod cam = detail::pseudo_defaults().cam;
    bool scf = detail::pseudo_defaults().use_scf != 0;
    uint32_t scf_c = detail::pseudo_defaults().scf_c;
    float scf_w = detail::pseudo_defaults().scf_w;
    IchsegAggregate aggregate = detail::pseudo_defaults().aggregate;
    bool crf = detail::pseudo_defaults().use_crf != 0;
    uint32_t batch = detail::pseudo_defaults().batch;
    IchsegPreset preset = detail::pseudo_defaults().preset;
    /// BLA threshold in [0, 1].
    std::optional<float> threshold;
    /// The bone cut (not in the paper): drop voxels above max_hu HU from the final mask.
    std::optional<bool> bone_cut;
    float max_hu = detail::pseudo_defaults().max_hu;
    /// The blood-density cut (not in the paper): drop voxels below min_hu HU from the final
    /// mask, after the bone cut.
    std::optional<bool> min_hu_cut;
    float min_hu = detail::pseudo_defaults().min_hu;
    /// The small-lesion filter (not in the paper): lesions smaller than this (mL) leave the
    /// final mask after the bone cut; 0 keeps all.
    std::optional<double> min_lesion_ml;
    /// The intracranial mask (not in the paper, docs/INTRACRANIAL.md), eroded by the margin.
    std::optional<bool> intracranial_mask;
    double intracranial_margin_mm = detail::pseudo_defaults().intracranial_margin_mm;
    /// The dense CRF unary's label confidence, in (0, 1).
    std::optional<float> crf_confidence;
    /// The dense CRF's bilateral (appearance) Potts weight, > 0.
    std::optional<float> crf_bilateral_compat;

    IchsegPseudoOptions to_c() const noexcept {
        IchsegPseudoOptions o;
        ichseg_pseudo_options_init(&o);
        o.cam = cam;
        o.use_scf = scf ? 1 : 0;
        o.scf_c = scf_c;
        o.scf_w = scf_w;
        o.aggregate = aggregate;
        o.use_crf = crf ? 1 : 0;
        o.batch = batch;
        o.preset = preset;
        if (threshold) o.threshold = *threshold;
        if (bone_cut) o.use_max_hu = *bone_cut ? 1 : 0;
        o.max_hu = max_hu;
        if (min_hu_cut) o.use_min_hu = *min_hu_cut ? 1 : 0;
        o.min_hu = min_hu;
        if (min_lesion_ml) o.min_lesion_ml = *min_lesion_ml;
        if (intracranial_mask) o.use_intracranial_mask = *intracranial_mask ? 1 : 0;
        o.intracranial_margin_mm = intracranial_margin_mm;
        if (crf_confidence) o.crf_confidence = *crf_confidence;
        if (crf_bilateral_compat) o.crf_bilateral_compat = *crf_bilateral_compat;
        return o;
    }
};

/// Classifiers prepared for pseudo-labelling on an engine (ichseg_pseudo_*). Thread-safe
/// (label is const); move-only.
class PseudoLabeler {
public:
    /// Loads the classifiers. `taps`: empty (every classifier's ichseg.taps metadata), or one
    /// entry per classifier, each empty (its metadata) or "T1,T2" (tap tensors, shallow first).
    static PseudoLabeler create(const Engine& engine, const std::vector<std::string>& classifiers,
                                const std::vector<std::string>& taps = {}, const PseudoOptions& options = {}) {
        if (!taps.empty() && taps.size() != classifiers.size()) {
            throw Error(ICHSEG_STATUS_INVALID_ARGUMENT, std::to_string(taps.size()) + " tap lists for " +
                                                            std::to_string(classifiers.size()) + " classifiers");
        }
        std::vector<const char*> paths, tap_ptrs;
        for (const auto& c : classifiers) paths.push_back(c.c_str());
        for (const auto& t : taps) tap_ptrs.push_back(t.empty() ? nullptr : t.c_str());
        const IchsegPseudoOptions o = options.to_c();
        IchsegPseudoLabeler* raw = nullptr;
        const IchsegStatus s = ichseg_pseudo_labeler_create(engine.get(), paths.data(), paths.size(),
                                                            taps.empty() ? nullptr : tap_ptrs.data(), &o, &raw);
        PseudoLabeler p(raw);
        detail::check(s);
        return p;
    }

    /// Tap layers: the maps `label` writes to `cams` (layer after layer).
    std::size_t layer_count() const {
        std::size_t n = 0;
        detail::check(ichseg_pseudo_labeler_layer_count(handle_.get(), &n));
        return n;
    }

    /// Pseudo-labels `volume`. `slice_labels`: empty (the classifiers decide) or one byte per
    /// axial slice, nonzero for bleeding. `mask`: one byte per voxel. `cams`: empty, or
    /// layer_count() maps of one float per voxel. Outputs are written only on success;
    /// cancelling and callback exceptions behave as in Model::segment.
    void label(const VolumeView& volume, Span<const uint8_t> slice_labels, Span<uint8_t> mask,
               Span<float> cams = {}, ProgressFn progress = {}) const {
        detail::check_volume_length(volume);
        const IchsegVolumeDesc desc = volume.to_c();
        detail::Trampoline ctx{&progress, nullptr};
        const IchsegStatus s = ichseg_pseudo_label(
            handle_.get(), &desc, slice_labels.empty() ? nullptr : slice_labels.data(), slice_labels.size(),
            mask.data(), mask.size(), cams.data(), cams.size(), progress ? &detail::Trampoline::call : nullptr, &ctx);
        if (ctx.error) {
            std::rethrow_exception(ctx.error);
        }
        detail::check(s);
    }

    const IchsegPseudoLabeler* get() const noexcept { return handle_.get(); }
    explicit operator bool() const noexcept { return handle_ != nullptr; }

private:
    explicit PseudoLabeler(IchsegPseudoLabeler* raw) noexcept : handle_(raw) {}
    std::unique_ptr<IchsegPseudoLabeler, detail::PseudoLabelerFree> handle_;
};

// ---------------------------------------------------------------------------------------------
// DICOM (libraries built with the `dicom` feature, as the default build is)

/// One DICOM series, as found among the inputs of Series::read.
struct SeriesInfo {
    std::string uid;
    std::string description;
    std::string modality;
    std::size_t slices = 0;
    std::size_t rows = 0;
    std::size_t columns = 0;
};

/// How Series::read chooses and bounds the series.
struct SeriesReadOptions {
    /// SeriesInstanceUID to read; empty: the CT series with the most slices.
    std::string series_uid;
    /// Read a series whose Modality is not CT (its values must be HU).
    bool allow_non_ct = false;
    /// Cap on the decoded voxels in MiB; 0 = none.
    uint64_t memory_limit_mb = 0;
};

/// Names the model in a DICOM-SEG.
struct SegOptions {
    std::string algorithm_name = "unet";
    std::string trained_on;  ///< empty: not recorded
};

/// A CT series read from DICOM files: its HU volume (volume(), for Model::segment and
/// PseudoLabeler::label), the series found beside it, and DICOM-SEG output on its grid.
/// Immutable, readable from several threads; move-only.
class Series {
public:
    /// Reads the series from folders (searched recursively) or files; Error on failure with
    /// the library's status (INVALID_IMAGE, UNSUPPORTED, IO, ...) and message.
    static Series read(const std::vector<std::string>& paths, const SeriesReadOptions& options = {}) {
        std::vector<const char*> raw_paths;
        raw_paths.reserve(paths.size());
        for (const std::string& p : paths) {
            raw_paths.push_back(p.c_str());
        }
        IchsegSeriesReadOptions o;
        ichseg_series_read_options_init(&o);
        o.series_uid = options.series_uid.empty() ? nullptr : options.series_uid.c_str();
        o.allow_non_ct = options.allow_non_ct ? 1 : 0;
        o.memory_limit_mb = options.memory_limit_mb;
        IchsegSeries* raw = nullptr;
        const IchsegStatus s = ichseg_series_read(raw_paths.data(), raw_paths.size(), &o, &raw);
        Series series(raw);  // owned before anything can throw
        detail::check(s);
        return series;
    }

    /// The series read.
    SeriesInfo info() const {
        IchsegSeriesInfo out{};
        detail::check(ichseg_series_info(handle_.get(), &out));
        return convert(out);
    }
    /// Every series the inputs held.
    std::vector<SeriesInfo> found() const {
        std::size_t n = 0;
        detail::check(ichseg_series_found_count(handle_.get(), &n));
        std::vector<SeriesInfo> out;
        out.reserve(n);
        for (std::size_t i = 0; i < n; i++) {
            IchsegSeriesInfo info{};
            detail::check(ichseg_series_found(handle_.get(), i, &info));
            out.push_back(convert(info));
        }
        return out;
    }
    /// The HU volume (float, x fastest, slices in increasing position along the normal) with
    /// its spacing and voxel-to-RAS affine; it points into this Series, which must outlive it.
    VolumeView volume() const {
        IchsegVolumeDesc d;
        ichseg_volume_desc_init(&d);
        detail::check(ichseg_series_volume(handle_.get(), &d));
        const float* voxels = static_cast<const float*>(d.data);
        VolumeView view(Span<const float>(voxels, d.dims[0] * d.dims[1] * d.dims[2]), {d.dims[0], d.dims[1], d.dims[2]},
                        {d.spacing[0], d.spacing[1], d.spacing[2]});
        VolumeView::Affine affine{};
        for (std::size_t i = 0; i < 16; i++) {
            affine[i] = d.affine[i];
        }
        view.affine(affine);
        return view;
    }

    /// A BINARY DICOM-SEG of `mask` (one byte per voxel of volume()) as file bytes.
    std::vector<uint8_t> encode_seg(Span<const uint8_t> mask, const SegOptions& options = {}) const {
        return encode(mask.data(), nullptr, mask.size(), options);
    }
    /// A FRACTIONAL DICOM-SEG of bleed probabilities in [0, 1] as file bytes.
    std::vector<uint8_t> encode_seg(Span<const float> probabilities, const SegOptions& options = {}) const {
        return encode(nullptr, probabilities.data(), probabilities.size(), options);
    }
    /// Writes a BINARY DICOM-SEG of `mask` to `path` (whole or not at all).
    void write_seg(const std::string& path, Span<const uint8_t> mask, const SegOptions& options = {}) const {
        const IchsegSegOptions o = to_c(options);
        detail::check(ichseg_seg_write(handle_.get(), mask.data(), nullptr, mask.size(), &o, path.c_str()));
    }

    const IchsegSeries* get() const noexcept { return handle_.get(); }
    explicit operator bool() const noexcept { return handle_ != nullptr; }

private:
    explicit Series(IchsegSeries* raw) noexcept : handle_(raw) {}
    static SeriesInfo convert(const IchsegSeriesInfo& i) {
        return SeriesInfo{i.uid, i.description, i.modality, i.slices, i.rows, i.columns};
    }
    static IchsegSegOptions to_c(const SegOptions& options) noexcept {
        IchsegSegOptions o;
        ichseg_seg_options_init(&o);
        o.algorithm_name = options.algorithm_name.c_str();
        o.trained_on = options.trained_on.empty() ? nullptr : options.trained_on.c_str();
        return o;
    }
    std::vector<uint8_t> encode(const uint8_t* mask, const float* prob, std::size_t len, const SegOptions& options) const {
        const IchsegSegOptions o = to_c(options);
        uint8_t* bytes = nullptr;
        std::size_t n = 0;
        detail::check(ichseg_seg_encode(handle_.get(), mask, prob, len, &o, &bytes, &n));
        std::vector<uint8_t> out;
        try {
            out.assign(bytes, bytes + n);
        } catch (...) {
            ichseg_bytes_free(bytes, n);
            throw;
        }
        ichseg_bytes_free(bytes, n);
        return out;
    }
    std::unique_ptr<IchsegSeries, detail::SeriesFree> handle_;
};

}  // namespace ichseg

#endif  // ICHSEG_HPP
