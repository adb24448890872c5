// The C++17 wrapper bindings/cpp/ichseg.hpp exercised as a C++ viewer would use it.
//
//     test_wrapper FIXTURE_DIR CT_SMALL_NII
//
// FIXTURE_DIR is tests/fixtures/unet (unet_transpose.onnx: 1 channel, 64x64, and the reference
// pipeline mask / probabilities for ct_small); CT_SMALL_NII is ct_small.nii.gz decompressed,
// whose int16 voxels are handed to the library as a caller buffer. Built and run by
// tests/cpp_wrapper.rs and tests/c/run_valgrind.sh. Exits 0 only when every check passed, after
// printing "all C++ wrapper checks passed".
#include "ichseg.hpp"

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <iterator>
#include <string>
#include <thread>
#include <type_traits>
#include <vector>

static int checks = 0;
static int failures = 0;

#define CHECK(cond, ...)                                                                   \
    do {                                                                                   \
        checks++;                                                                          \
        if (!(cond)) {                                                                     \
            failures++;                                                                    \
            std::fprintf(stderr, "%s:%d: check failed: %s: ", __FILE__, __LINE__, #cond);  \
            std::fprintf(stderr, __VA_ARGS__);                                             \
            std::fputc('\n', stderr);                                                      \
        }                                                                                  \
    } while (0)

#define REQUIRE(cond)                                                                      \
    do {                                                                                   \
        if (!(cond)) {                                                                     \
            std::fprintf(stderr, "%s:%d: required step failed: %s\n", __FILE__, __LINE__,  \
                         #cond);                                                           \
            std::exit(1);                                                                  \
        }                                                                                  \
    } while (0)

// Runs `f`, requires it to throw ichseg::Error with `want` and a message containing `needle`.
template <class F>
static void expect_error(const char* what, int line, F&& f, IchsegStatus want, const char* needle) {
    checks++;
    try {
        f();
    } catch (const ichseg::Error& e) {
        if (e.status() != want) {
            failures++;
            std::fprintf(stderr, "%s:%d: %s threw %s, expected %s (%s)\n", __FILE__, line, what,
                         e.status_name(), ichseg_status_name(want), e.what());
        } else if (e.what()[0] == '\0' || std::strstr(e.what(), needle) == nullptr) {
            failures++;
            std::fprintf(stderr, "%s:%d: %s: message \"%s\" should mention \"%s\"\n", __FILE__, line,
                         what, e.what(), needle);
        } else {
            std::printf("  %-31s %s\n", e.status_name(), e.what());
        }
        return;
    } catch (const std::exception& e) {
        failures++;
        std::fprintf(stderr, "%s:%d: %s threw a foreign exception: %s\n", __FILE__, line, what, e.what());
        return;
    }
    failures++;
    std::fprintf(stderr, "%s:%d: %s did not throw (expected %s)\n", __FILE__, line, what,
                 ichseg_status_name(want));
}
#define EXPECT_ERROR(stmt, want, needle) expect_error(#stmt, __LINE__, [&] { stmt; }, (want), (needle))

static std::vector<uint8_t> read_file(const std::string& path) {
    std::ifstream f(path, std::ios::binary);
    REQUIRE(f.good());
    return std::vector<uint8_t>(std::istreambuf_iterator<char>(f), std::istreambuf_iterator<char>());
}

static bool all_bytes(const void* p, std::size_t n, unsigned char value) {
    const auto* b = static_cast<const unsigned char*>(p);
    return std::all_of(b, b + n, [value](unsigned char c) { return c == value; });
}

static bool close_rel(double a, double b, double rel) {
    return std::fabs(a - b) <= rel * std::max(1.0, std::fabs(b));
}

// The handles are move-only, and moving never throws.
static_assert(!std::is_copy_constructible<ichseg::Engine>::value, "Engine is move-only");
static_assert(!std::is_copy_assignable<ichseg::Model>::value, "Model is move-only");
static_assert(!std::is_copy_constructible<ichseg::Result>::value, "Result is move-only");
static_assert(std::is_nothrow_move_constructible<ichseg::Engine>::value, "");
static_assert(std::is_nothrow_move_assignable<ichseg::Model>::value, "");
static_assert(std::is_nothrow_move_constructible<ichseg::Result>::value, "");
// Span conversions.
static_assert(std::is_convertible<std::vector<float>&, ichseg::Span<float>>::value, "");
static_assert(std::is_convertible<const std::vector<float>&, ichseg::Span<const float>>::value, "");
static_assert(!std::is_convertible<const std::vector<float>&, ichseg::Span<float>>::value, "");
static_assert(std::is_convertible<ichseg::Span<float>, ichseg::Span<const float>>::value, "");
static_assert(!std::is_convertible<ichseg::Span<const float>, ichseg::Span<float>>::value, "");

// ct_small.nii as a viewer holds it: int16 voxels plus geometry.
struct Ct {
    std::vector<uint8_t> file;
    std::vector<int16_t> voxels;
    ichseg::VolumeView::Dims dims{};
    ichseg::VolumeView::Spacing spacing{};
    std::optional<ichseg::VolumeView::Affine> affine;
    double slope = 1.0, intercept = 0.0;
    std::size_t n = 0;

    ichseg::VolumeView view() const {
        ichseg::VolumeView v(voxels, dims, spacing);
        v.rescale(slope, intercept);
        if (affine) {
            v.affine(*affine);
        }
        return v;
    }
};

static Ct load_ct(const std::string& path) {
    Ct ct;
    ct.file = read_file(path);
    REQUIRE(ct.file.size() > 352);
    int16_t dim[8], datatype, sform_code;
    float pixdim[8], vox_offset, slope, inter, srow[12];
    const uint8_t* h = ct.file.data();
    std::memcpy(dim, h + 40, sizeof dim);
    std::memcpy(&datatype, h + 70, 2);
    std::memcpy(pixdim, h + 76, sizeof pixdim);
    std::memcpy(&vox_offset, h + 108, 4);
    std::memcpy(&slope, h + 112, 4);
    std::memcpy(&inter, h + 116, 4);
    std::memcpy(&sform_code, h + 254, 2);
    std::memcpy(srow, h + 280, sizeof srow);
    REQUIRE(datatype == 4 && dim[0] == 3);
    for (std::size_t i = 0; i < 3; i++) {
        ct.dims[i] = static_cast<std::size_t>(dim[i + 1]);
        ct.spacing[i] = pixdim[i + 1];
    }
    ct.slope = slope;
    ct.intercept = inter;
    if (sform_code > 0) {
        ichseg::VolumeView::Affine a{};
        for (std::size_t i = 0; i < 12; i++) {
            a[i] = srow[i];
        }
        a[15] = 1.0;
        ct.affine = a;
    }
    ct.n = ct.dims[0] * ct.dims[1] * ct.dims[2];
    const auto off = static_cast<std::size_t>(vox_offset);
    REQUIRE(ct.file.size() >= off + 2 * ct.n);
    ct.voxels.resize(ct.n);
    std::memcpy(ct.voxels.data(), h + off, 2 * ct.n);
    return ct;
}

// ---------------------------------------------------------------------------------------------

static void test_versions() {
    std::printf("versions\n");
    CHECK(ichseg::abi_version() == ICHSEG_ABI_VERSION, "abi %u", ichseg::abi_version());
    const std::string v = ichseg::version();
    CHECK(v.size() >= 5 && v.find('.') != std::string::npos, "version \"%s\"", v.c_str());
    std::printf("  abi %u, version %s\n", ichseg::abi_version(), v.c_str());
}

static void test_engine() {
    std::printf("engine\n");
    ichseg::Engine e(ichseg::EngineOptions{2, ichseg::Device::Cpu, 0});
    CHECK(static_cast<bool>(e), "live engine");
    CHECK(e.device_name() == "cpu", "device %s", e.device_name().c_str());
    CHECK(!e.device_note().empty(), "device note");
    CHECK(e.threads() == 2, "threads %u", e.threads());
    ichseg::Engine d;  // defaults: one thread per core
    CHECK(d.threads() >= 1, "default threads %u", d.threads());
    std::printf("  device %s (%s), %u threads\n", e.device_name().c_str(), e.device_note().c_str(), e.threads());

    EXPECT_ERROR(ichseg::Engine(ichseg::EngineOptions{5000, ichseg::Device::Cpu, 0}),
                 ICHSEG_STATUS_INVALID_ARGUMENT, "5000 threads");
    EXPECT_ERROR(ichseg::Engine(ichseg::EngineOptions{1, ichseg::Device::Cuda, -1}),
                 ICHSEG_STATUS_INVALID_ARGUMENT, "cuda_device");
}

// An engine memory limit: work over it throws Error(OUT_OF_MEMORY) before anything is allocated,
// the mask is untouched, and work under it runs.
static void test_memory_limit(const std::string& dir, const Ct& ct) {
    std::printf("memory limit\n");
    CHECK(ichseg::EngineOptions{}.memory_limit_mb == 0, "default: no limit");
    ichseg::EngineOptions capped{1, ichseg::Device::Cpu, 0};
    capped.memory_limit_mb = 1;
    ichseg::Engine engine(capped);
    const ichseg::Model model = ichseg::Model::load(engine, dir + "/unet_transpose.onnx");
    const std::size_t side = 512;  // 512x512x4: far over 1 MiB of buffers
    std::vector<uint8_t> big(side * side * 4, 40), mask(big.size(), 0xAB);
    EXPECT_ERROR(model.segment(ichseg::VolumeView(big, {side, side, 4}), mask), ICHSEG_STATUS_OUT_OF_MEMORY,
                 "memory limit is 1.0 MiB");
    CHECK(std::all_of(mask.begin(), mask.end(), [](uint8_t v) { return v == 0xAB; }), "mask written");
    std::vector<uint8_t> small(ct.n);
    model.segment(ichseg::VolumeView(ct.voxels, ct.dims, ct.spacing).rescale(ct.slope, ct.intercept), small);
}

// A low-memory engine segments to the default engine's mask.
static void test_low_memory(const std::string& dir, const Ct& ct) {
    std::printf("low memory\n");
    CHECK(!ichseg::EngineOptions{}.low_memory, "default: off");
    const auto view = ichseg::VolumeView(ct.voxels, ct.dims, ct.spacing).rescale(ct.slope, ct.intercept);
    std::vector<uint8_t> masks[2];
    for (int low = 0; low < 2; low++) {
        ichseg::EngineOptions options{1, ichseg::Device::Cpu, 0};
        options.low_memory = low == 1;
        ichseg::Engine engine(options);
        const ichseg::Model model = ichseg::Model::load(engine, dir + "/unet_transpose.onnx");
        masks[low].assign(ct.n, 0);
        model.segment(view, masks[low]);
    }
    CHECK(masks[0] == masks[1], "low-memory mask differs");
}

static void test_model_errors(const ichseg::Engine& engine, const std::string& dir) {
    std::printf("model errors\n");
    EXPECT_ERROR(ichseg::Model::load(engine, "/nonexistent/dir/model.onnx"), ICHSEG_STATUS_IO,
                 "/nonexistent/dir/model.onnx");
    EXPECT_ERROR(ichseg::Model::load(engine, dir + "/not_a_model.onnx"), ICHSEG_STATUS_INVALID_MODEL,
                 "not_a_model.onnx");
    static const uint8_t garbage[] = "this is not an ONNX file";
    EXPECT_ERROR(ichseg::Model::from_memory(engine, garbage, sizeof garbage), ICHSEG_STATUS_INVALID_MODEL,
                 "not a valid ONNX file");
    EXPECT_ERROR(ichseg::Model::from_memory(engine, ichseg::Span<const uint8_t>(garbage)),
                 ICHSEG_STATUS_INVALID_MODEL, "not a valid ONNX file");
    EXPECT_ERROR(ichseg::Model::from_memory(engine, nullptr, 10), ICHSEG_STATUS_NULL_POINTER, "`bytes`");
    ichseg::SegmentOptions so;
    so.threshold = 1.5f;
    EXPECT_ERROR(ichseg::Model::load(engine, dir + "/unet_transpose.onnx", so), ICHSEG_STATUS_INVALID_ARGUMENT,
                 "threshold must lie in [0, 1], got 1.5");
    so = {};
    so.channels = 3;
    EXPECT_ERROR(ichseg::Model::load(engine, dir + "/unet_transpose.onnx", so), ICHSEG_STATUS_INVALID_MODEL,
                 "channels 3 was requested");
    so = {};
    CHECK(!so.min_lesion_ml && std::isnan(so.to_c().min_lesion_ml), "the model's small-lesion filter by default");
    so.min_lesion_ml = 0.0;
    CHECK(so.to_c().min_lesion_ml == 0.0, "a caller's 0 reaches the C struct");
    so.min_lesion_ml = -1.0;
    EXPECT_ERROR(ichseg::Model::load(engine, dir + "/unet_transpose.onnx", so), ICHSEG_STATUS_INVALID_ARGUMENT,
                 "min_lesion_ml must be finite and >= 0");
    so = {};
    CHECK(!so.intracranial_mask && so.intracranial_margin_mm == 2.0, "no intracranial mask by default, 2 mm");
    so.intracranial_mask = true;
    so.intracranial_margin_mm = -1.0;
    CHECK(so.to_c().use_intracranial_mask == 1, "the switch reaches the C struct");
    EXPECT_ERROR(ichseg::Model::load(engine, dir + "/unet_transpose.onnx", so), ICHSEG_STATUS_INVALID_ARGUMENT,
                 "intracranial margin");
}

// The lesions agree with the mask and with each other.
static void check_result(const ichseg::Result& r, const std::vector<uint8_t>& mask, const Ct& ct) {
    const std::vector<IchsegLesion> lesions = r.lesions();
    CHECK(lesions.size() == r.lesion_count(), "%zu vs %zu", lesions.size(), r.lesion_count());
    const uint64_t expect_voxels[3] = {408, 169, 33};
    CHECK(lesions.size() == 3, "%zu lesions, expected 3", lesions.size());
    uint64_t total_voxels = 0;
    double sum_ml = 0.0;
    const double voxel_ml = ct.spacing[0] * ct.spacing[1] * ct.spacing[2] / 1000.0;
    for (std::size_t i = 0; i < lesions.size(); i++) {
        const IchsegLesion one = r.lesion(i);
        CHECK(std::memcmp(&one, &lesions[i], sizeof one) == 0, "lesion(%zu) differs from lesions()[%zu]", i, i);
        CHECK(i >= 3 || lesions[i].voxels == expect_voxels[i], "lesion %zu has %llu voxels", i,
              static_cast<unsigned long long>(lesions[i].voxels));
        CHECK(close_rel(lesions[i].volume_ml, static_cast<double>(lesions[i].voxels) * voxel_ml, 1e-12),
              "lesion %zu volume", i);
        CHECK(lesions[i].first_slice == lesions[i].bbox_min[2] && lesions[i].last_slice == lesions[i].bbox_max[2],
              "lesion %zu slices", i);
        total_voxels += lesions[i].voxels;
        sum_ml += lesions[i].volume_ml;
    }
    const auto nonzero = static_cast<uint64_t>(std::count_if(mask.begin(), mask.end(), [](uint8_t v) { return v != 0; }));
    CHECK(total_voxels == nonzero && nonzero == 610, "lesions hold %llu voxels, the mask %llu",
          static_cast<unsigned long long>(total_voxels), static_cast<unsigned long long>(nonzero));
    CHECK(close_rel(r.total_volume_ml(), sum_ml, 1e-12), "total %g vs sum %g", r.total_volume_ml(), sum_ml);
    CHECK(close_rel(r.total_volume_ml(), 610 * voxel_ml, 1e-9), "total %g mL", r.total_volume_ml());
    EXPECT_ERROR(r.lesion(lesions.size()), ICHSEG_STATUS_INVALID_ARGUMENT, "");

    // Clinical findings: ABC/2 consistent with its diameters, HU ordered, totals and summary.
    double sum_abc2 = 0.0;
    const IchsegMidline m = r.midline();
    CHECK(m.struct_size == sizeof m && (m.found ? m.reason == nullptr : m.reason != nullptr), "midline");
    for (std::size_t i = 0; i < lesions.size(); i++) {
        const IchsegLesionFindings f = r.findings(i);
        CHECK(f.struct_size == sizeof f, "findings struct_size %zu", f.struct_size);
        CHECK(f.abc2_ml > 0.0 && close_rel(f.abc2_ml, f.abc2_a_mm * f.abc2_b_mm * f.abc2_c_mm / 2000.0, 1e-9),
              "lesion %zu ABC/2 %g", i, f.abc2_ml);
        CHECK(close_rel(f.abc2_c_mm, ct.spacing[2] * (lesions[i].last_slice - lesions[i].first_slice + 1), 1e-12),
              "lesion %zu C %g", i, f.abc2_c_mm);
        CHECK(f.median_hu <= f.max_hu && f.mean_hu <= f.max_hu, "lesion %zu HU", i);
        CHECK(m.found || f.side == ICHSEG_SIDE_UNKNOWN, "side %d without a midline", static_cast<int>(f.side));
        sum_abc2 += f.abc2_ml;
    }
    CHECK(close_rel(r.total_abc2_ml(), sum_abc2, 1e-12), "total ABC/2 %g vs %g", r.total_abc2_ml(), sum_abc2);
    const std::string summary = r.summary();
    CHECK(summary.rfind("3 lesions, ", 0) == 0, "summary \"%s\"", summary.c_str());
    EXPECT_ERROR(r.findings(lesions.size()), ICHSEG_STATUS_INVALID_ARGUMENT, "out of range");
    const ichseg::Result empty(nullptr);
    EXPECT_ERROR(empty.summary(), ICHSEG_STATUS_NULL_POINTER, "`result`");
    EXPECT_ERROR(empty.findings(0), ICHSEG_STATUS_NULL_POINTER, "`result`");
}

// Happy path: int16 caller buffer, mask, probabilities, progress; returns the mask.
static std::vector<uint8_t> test_happy(const ichseg::Model& model, const ichseg::Model& model_mem,
                                       const std::string& dir, const Ct& ct) {
    std::printf("segment int16 ct_small\n");
    const std::vector<uint8_t> ref = read_file(dir + "/unet_transpose.pipeline_mask.bin");
    const std::vector<uint8_t> ref_prob_bytes = read_file(dir + "/unet_transpose.pipeline_prob.bin");
    REQUIRE(ref.size() == ct.n && ref_prob_bytes.size() == 4 * ct.n);
    std::vector<float> ref_prob(ct.n);
    std::memcpy(ref_prob.data(), ref_prob_bytes.data(), 4 * ct.n);

    std::vector<uint8_t> mask(ct.n, 0xAB);
    std::vector<float> prob(ct.n, -1.0f);
    std::vector<std::pair<uint32_t, uint32_t>> calls;
    ichseg::Result r = model.segment(ct.view(), mask, prob, [&](uint32_t done, uint32_t total) {
        calls.emplace_back(done, total);
        return true;
    });
    CHECK(static_cast<bool>(r), "a result");
    CHECK(mask == ref, "the mask differs from the reference");
    double max_diff = 0.0;
    for (std::size_t i = 0; i < ct.n; i++) {
        max_diff = std::max(max_diff, std::fabs(static_cast<double>(prob[i]) - ref_prob[i]));
    }
    CHECK(max_diff <= 1e-3, "probabilities differ from the reference by %g", max_diff);
    CHECK(calls.size() == ct.dims[2], "progress called %zu times for %zu slices", calls.size(), ct.dims[2]);
    for (std::size_t i = 0; i < calls.size(); i++) {
        CHECK(calls[i].second == ct.dims[2], "total %u", calls[i].second);
        CHECK(i == 0 || calls[i].first > calls[i - 1].first, "done not increasing at %zu", i);
    }
    CHECK(!calls.empty() && calls.back().first == ct.dims[2], "last progress");
    check_result(r, mask, ct);
    std::printf("  %zux%zux%zu, %zu lesions, %.4f mL, %zu progress calls, max |p - p_ref| = %.3g\n",
                ct.dims[0], ct.dims[1], ct.dims[2], r.lesion_count(), r.total_volume_ml(), calls.size(), max_diff);

    // Without probabilities or progress; from a raw pointer (unchecked length); model from memory.
    std::vector<uint8_t> mask2(ct.n, 0xAB);
    ichseg::VolumeView raw(ct.voxels.data(), ct.dims, ct.spacing);
    raw.rescale(ct.slope, ct.intercept);
    ichseg::Result r2 = model_mem.segment(raw, ichseg::Span<uint8_t>(mask2.data(), mask2.size()));
    CHECK(mask2 == ref, "model_mem / pointer view: mask differs");
    CHECK(r2.lesion_count() == 3, "%zu lesions", r2.lesion_count());

    // The same volume as double HU (another voxel type) gives the same mask.
    std::vector<double> hu(ct.n);
    for (std::size_t i = 0; i < ct.n; i++) {
        hu[i] = ct.voxels[i] * (ct.slope == 0.0 ? 1.0 : ct.slope) + ct.intercept;
    }
    std::vector<uint8_t> mask3(ct.n, 0xAB);
    model.segment(ichseg::VolumeView(hu, ct.dims, ct.spacing), mask3);
    CHECK(mask3 == ref, "double HU: mask differs");
    return mask;
}

static void test_cancel(const ichseg::Model& model, const Ct& ct) {
    std::printf("cancel\n");
    std::vector<uint8_t> mask(ct.n, 0xAB);
    std::vector<float> prob(ct.n);
    std::fill(prob.begin(), prob.end(), -7.0f);
    int calls = 0;
    EXPECT_ERROR(model.segment(ct.view(), mask, prob,
                               [&](uint32_t, uint32_t) {
                                   calls++;
                                   return false;
                               }),
                 ICHSEG_STATUS_CANCELLED, "cancelled by the caller");
    CHECK(calls == 1, "progress called %d times after cancelling", calls);
    CHECK(all_bytes(mask.data(), mask.size(), 0xAB), "mask written although cancelled");
    CHECK(std::all_of(prob.begin(), prob.end(), [](float p) { return p == -7.0f; }), "probabilities written");
}

struct ViewerError : std::runtime_error {
    int code;
    explicit ViewerError(int c) : std::runtime_error("viewer closed"), code(c) {}
};

// A viewer's Cancel button: another thread asks the running call to stop. The worker's call is
// held at its first progress report until the request comes, so the test does not depend on
// timing; the call must then end promptly with CANCELLED, write nothing, and leave the model
// usable.
static void test_cancel_from_another_thread(const ichseg::Model& model, const Ct& ct,
                                            const std::vector<uint8_t>& expect) {
    std::printf("cancel from another thread\n");
    std::atomic<bool> started{false}, cancel{false};
    std::vector<uint8_t> mask(ct.n, 0xAB);
    IchsegStatus status = ICHSEG_STATUS_OK;
    std::chrono::steady_clock::time_point returned;
    std::thread worker([&] {
        try {
            model.segment(ct.view(), mask, {}, [&](uint32_t, uint32_t) {
                started = true;
                while (!cancel.load()) std::this_thread::sleep_for(std::chrono::milliseconds(1));
                return false;
            });
        } catch (const ichseg::Error& e) {
            status = e.status();
        }
        returned = std::chrono::steady_clock::now();
    });
    while (!started.load()) std::this_thread::sleep_for(std::chrono::milliseconds(1));
    const auto asked = std::chrono::steady_clock::now();
    cancel = true;
    worker.join();
    const double ms = std::chrono::duration<double, std::milli>(returned - asked).count();
    CHECK(status == ICHSEG_STATUS_CANCELLED, "status %d", static_cast<int>(status));
    CHECK(ms < 2000.0, "the call took %.0f ms to stop after the request", ms);
    CHECK(all_bytes(mask.data(), mask.size(), 0xAB), "mask written although cancelled");
    std::vector<uint8_t> again(ct.n);
    model.segment(ct.view(), again);
    CHECK(again == expect, "the model gives a different mask after a cancelled call");
    std::printf("  stopped %.1f ms after the request; the model still works\n", ms);
}

static void test_callback_exception(const ichseg::Model& model, const Ct& ct) {
    std::printf("exception in the progress callback\n");
    std::vector<uint8_t> mask(ct.n, 0xAB);
    int calls = 0;
    bool caught = false;
    try {
        model.segment(ct.view(), mask, {}, [&](uint32_t done, uint32_t) -> bool {
            calls++;
            if (done >= 2) {
                throw ViewerError(42);
            }
            return true;
        });
    } catch (const ViewerError& e) {
        caught = e.code == 42;
    } catch (const ichseg::Error& e) {
        std::fprintf(stderr, "  got ichseg::Error %s: %s instead\n", e.status_name(), e.what());
    }
    CHECK(caught, "the callback's ViewerError did not reach the caller");
    CHECK(calls == 2, "progress called %d times, expected 2 (cancelled at the throw)", calls);
    CHECK(all_bytes(mask.data(), mask.size(), 0xAB), "mask written although the callback threw");

    // A non-std exception type too.
    int thrown = 0;
    try {
        model.segment(ct.view(), mask, {}, [](uint32_t, uint32_t) -> bool { throw 7; });
    } catch (int v) {
        thrown = v;
    } catch (...) {
    }
    CHECK(thrown == 7, "int exception not propagated (%d)", thrown);
    // The model still works afterwards.
    std::vector<uint8_t> again(ct.n);
    CHECK(model.segment(ct.view(), again).lesion_count() == 3, "segment after a throwing callback");
    std::printf("  ViewerError and int propagated, mask untouched\n");
}

static void test_buffer_sizes(const ichseg::Model& model, const Ct& ct) {
    std::printf("buffer sizes\n");
    std::vector<uint8_t> mask(ct.n, 0xAB), short_mask(ct.n - 1, 0xAB);
    std::vector<float> prob(ct.n + 1, -7.0f);
    EXPECT_ERROR(model.segment(ct.view(), short_mask), ICHSEG_STATUS_BUFFER_SIZE, "mask_len");
    EXPECT_ERROR(model.segment(ct.view(), mask, prob), ICHSEG_STATUS_BUFFER_SIZE, "probabilities_len");
    const std::vector<int16_t> small(ct.voxels.begin(), ct.voxels.end() - 1);
    EXPECT_ERROR(model.segment(ichseg::VolumeView(small, ct.dims, ct.spacing), mask), ICHSEG_STATUS_BUFFER_SIZE,
                 "the volume buffer holds");
    EXPECT_ERROR(model.segment(ct.view(), ichseg::Span<uint8_t>()), ICHSEG_STATUS_NULL_POINTER, "`mask`");
    ichseg::VolumeView zero(ct.voxels.data(), {ct.dims[0], 0, ct.dims[2]}, ct.spacing);
    EXPECT_ERROR(model.segment(zero, mask), ICHSEG_STATUS_INVALID_ARGUMENT, "must be non-zero");
    CHECK(all_bytes(mask.data(), mask.size(), 0xAB) && all_bytes(short_mask.data(), short_mask.size(), 0xAB),
          "a failing call wrote the mask");
}

static void test_moves(const ichseg::Engine& engine, const std::string& dir, const Ct& ct) {
    std::printf("moved-from handles\n");
    ichseg::Engine e(ichseg::EngineOptions{1, ichseg::Device::Cpu, 0});
    ichseg::Engine e2 = std::move(e);
    CHECK(!e && e2, "engine moved");
    CHECK(e2.threads() == 1, "moved engine works");
    EXPECT_ERROR(e.threads(), ICHSEG_STATUS_NULL_POINTER, "`engine`");
    EXPECT_ERROR(ichseg::Model::load(e, dir + "/unet_transpose.onnx"), ICHSEG_STATUS_NULL_POINTER, "`engine`");
    e = ichseg::Engine(ichseg::EngineOptions{2, ichseg::Device::Cpu, 0});  // move-assign into an empty one
    CHECK(e.threads() == 2, "reassigned engine");
    e2 = std::move(e);  // move-assign over a live one: frees it
    CHECK(!e && e2.threads() == 2, "engine move-assigned");

    ichseg::Model m = ichseg::Model::load(e2, dir + "/unet_transpose.onnx");
    ichseg::Model m2 = std::move(m);
    std::vector<uint8_t> mask(ct.n);
    EXPECT_ERROR(m.segment(ct.view(), mask), ICHSEG_STATUS_NULL_POINTER, "`model`");
    ichseg::Result r = m2.segment(ct.view(), mask);
    ichseg::Result r2 = std::move(r);
    CHECK(!r && r2.lesion_count() == 3, "result moved");
    EXPECT_ERROR(r.lesion_count(), ICHSEG_STATUS_NULL_POINTER, "`result`");
    EXPECT_ERROR(r.total_volume_ml(), ICHSEG_STATUS_NULL_POINTER, "`result`");
    EXPECT_ERROR(r.lesions(), ICHSEG_STATUS_NULL_POINTER, "`result`");
    m = ichseg::Model::load(engine, dir + "/unet_transpose.onnx");
    m2 = std::move(m);  // frees the model m2 held
    CHECK(!m && m2, "model move-assigned");
    r = m2.segment(ct.view(), mask);
    r2 = std::move(r);  // frees the result r2 held
    CHECK(r2.lesion_count() == 3, "result move-assigned");
    // Models outlive their engine.
    ichseg::Model orphan = [&] {
        ichseg::Engine tmp(ichseg::EngineOptions{1, ichseg::Device::Cpu, 0});
        return ichseg::Model::load(tmp, dir + "/unet_transpose.onnx");
    }();
    CHECK(orphan.segment(ct.view(), mask).lesion_count() == 3, "model after its engine was freed");
}

static void test_threads(const ichseg::Model& model, const Ct& ct, const std::vector<uint8_t>& expect) {
    std::printf("threads\n");
    enum { THREADS = 4 };
    std::vector<std::vector<uint8_t>> masks(THREADS, std::vector<uint8_t>(ct.n, 0xAB));
    std::vector<std::string> errors(THREADS);
    std::vector<std::size_t> lesion_counts(THREADS, 0);
    std::vector<std::thread> threads;
    const ichseg::VolumeView view = ct.view();
    for (int i = 0; i < THREADS; i++) {
        threads.emplace_back([&, i] {
            try {
                lesion_counts[static_cast<std::size_t>(i)] =
                    model.segment(view, masks[static_cast<std::size_t>(i)]).lesion_count();
            } catch (const std::exception& e) {
                errors[static_cast<std::size_t>(i)] = e.what();
            }
        });
    }
    for (auto& t : threads) {
        t.join();
    }
    for (std::size_t i = 0; i < THREADS; i++) {
        CHECK(errors[i].empty(), "thread %zu: %s", i, errors[i].c_str());
        CHECK(masks[i] == expect, "thread %zu got a different mask", i);
        CHECK(lesion_counts[i] == 3, "thread %zu: %zu lesions", i, lesion_counts[i]);
    }
    std::printf("  %d threads, one model, identical masks\n", static_cast<int>(THREADS));
}

// PseudoLabeler: two copies of the tiny classifier (taps named), labels, maps, errors, exceptions.
static void test_pseudo(const ichseg::Engine& engine, const std::string& dir, const Ct& ct) {
    std::printf("pseudo-labelling\n");
    const std::string cls = dir + "/../classifier/tiny_classifier.onnx";
    const std::string taps = "/layer1/relu_1/Relu_output_0,/layer2/relu_1/Relu_output_0";
    ichseg::PseudoOptions o;
    // The wrapper's defaults are the C library's (read from ichseg_pseudo_options_init).
    IchsegPseudoOptions c;
    ichseg_pseudo_options_init(&c);
    CHECK(o.scf_c == c.scf_c && o.scf_w == c.scf_w && o.batch == c.batch && o.scf == (c.use_scf != 0) &&
              o.crf == (c.use_crf != 0) && o.cam == c.cam && o.aggregate == c.aggregate && o.max_hu == c.max_hu &&
              o.min_hu == c.min_hu && c.min_hu == 42.0f && o.preset == c.preset && o.intracranial_margin_mm == c.intracranial_margin_mm,
          "C++ pseudo defaults equal the C ones");
    CHECK(c.scf_c == 2 && c.use_crf == 1, "C defaults as documented");
    // unset tuned settings stay the C sentinels (left to the classifiers); set ones are passed on
    const IchsegPseudoOptions unset = o.to_c();
    CHECK(std::isnan(unset.threshold) && unset.use_max_hu == -1 && unset.use_min_hu == -1 &&
              std::isnan(unset.min_lesion_ml) &&
              unset.use_intracranial_mask == -1 && unset.preset == ICHSEG_PRESET_MODEL &&
              std::isnan(unset.crf_confidence) && std::isnan(unset.crf_bilateral_compat),
          "tuned settings left to the classifiers");
    ichseg::PseudoOptions set;
    set.threshold = 0.3f;
    set.bone_cut = false;
    set.min_hu_cut = true;
    set.min_hu = 38.0f;
    set.min_lesion_ml = 0.1;
    set.intracranial_mask = true;
    set.preset = ICHSEG_PRESET_PAPER;
    set.crf_confidence = 0.9f;
    set.crf_bilateral_compat = 3.0f;
    const IchsegPseudoOptions given = set.to_c();
    CHECK(given.threshold == 0.3f && given.use_max_hu == 0 && given.use_min_hu == 1 && given.min_hu == 38.0f &&
              given.min_lesion_ml == 0.1 &&
              given.use_intracranial_mask == 1 && given.preset == ICHSEG_PRESET_PAPER &&
              given.crf_confidence == 0.9f && given.crf_bilateral_compat == 3.0f,
          "tuned settings given");
    o.batch = 2;
    const ichseg::PseudoLabeler pl = ichseg::PseudoLabeler::create(engine, {cls, cls}, {taps, taps}, o);
    CHECK(pl.layer_count() == 2, "%zu layers", pl.layer_count());
    const std::size_t nz = ct.dims[2];
    std::vector<uint8_t> pos(nz, 1), neg(nz, 0), mask(ct.n, 0xAB), empty(ct.n, 0xAB);
    std::vector<float> cams(2 * ct.n, -1.0f);
    int calls = 0;
    pl.label(ct.view(), pos, mask, cams, [&](uint32_t, uint32_t) {
        calls++;
        return true;
    });
    CHECK(calls >= 1, "progress called");
    CHECK(std::all_of(mask.begin(), mask.end(), [](uint8_t v) { return v <= 1; }), "mask of 0/1");
    CHECK(std::all_of(cams.begin(), cams.end(), [](float v) { return v >= 0.0f && v <= 1.0f; }), "maps in [0, 1]");
    pl.label(ct.view(), neg, empty);
    CHECK(std::all_of(empty.begin(), empty.end(), [](uint8_t v) { return v == 0; }), "negative slices: empty mask");
    pl.label(ct.view(), {}, empty);  // the classifiers decide

    std::vector<uint8_t> short_labels(nz - 1, 1), untouched(ct.n, 0xCD);
    EXPECT_ERROR(pl.label(ct.view(), short_labels, untouched), ICHSEG_STATUS_BUFFER_SIZE, "labels_len");
    std::vector<float> short_cams(ct.n);
    EXPECT_ERROR(pl.label(ct.view(), pos, untouched, short_cams), ICHSEG_STATUS_BUFFER_SIZE, "cams_len");
    bool rethrown = false;
    try {
        pl.label(ct.view(), pos, untouched, {}, [](uint32_t, uint32_t) -> bool { throw std::runtime_error("boom"); });
    } catch (const std::runtime_error& e) {
        rethrown = std::strcmp(e.what(), "boom") == 0;
    }
    CHECK(rethrown, "the callback's exception is rethrown by label()");
    EXPECT_ERROR(pl.label(ct.view(), pos, untouched, {}, [](uint32_t, uint32_t) { return false; }),
                 ICHSEG_STATUS_CANCELLED, "cancelled");
    CHECK(all_bytes(untouched.data(), untouched.size(), 0xCD), "nothing written by failed calls");
    EXPECT_ERROR(ichseg::PseudoLabeler::create(engine, {cls}, {taps, taps}), ICHSEG_STATUS_INVALID_ARGUMENT,
                 "2 tap lists for 1 classifiers");
    EXPECT_ERROR(ichseg::PseudoLabeler::create(engine, {dir + "/nothing.onnx"}), ICHSEG_STATUS_IO, "nothing.onnx");
    ichseg::PseudoLabeler moved = std::move(const_cast<ichseg::PseudoLabeler&>(pl));
    CHECK(moved && !pl, "moved labeler");
    EXPECT_ERROR(pl.layer_count(), ICHSEG_STATUS_NULL_POINTER, "`labeler`");
}

static void test_dicom(const ichseg::Model& model, const std::string& dir) {
    std::printf("dicom\n");
    const std::string dicom = dir + "/../dicom";
    const ichseg::Series series = ichseg::Series::read({dicom + "/two_series"});
    const ichseg::SeriesInfo info = series.info();
    CHECK(info.modality == "CT" && info.slices == 8 && info.rows == 128 && info.columns == 112, "info %s %zu",
          info.modality.c_str(), info.slices);
    const std::vector<ichseg::SeriesInfo> found = series.found();
    CHECK(found.size() == 3, "%zu series found", found.size());
    const ichseg::VolumeView volume = series.volume();
    CHECK(volume.dims()[2] == 8 && volume.affine().has_value() && volume.length() == 112u * 128u * 8u,
          "volume %zu slices", volume.dims()[2]);
    std::vector<uint8_t> mask(*volume.length(), 0xAB);
    std::vector<float> prob(mask.size());
    model.segment(volume, mask, prob);
    const std::vector<uint8_t> seg = series.encode_seg(ichseg::Span<const uint8_t>(mask.data(), mask.size()));
    CHECK(seg.size() > 132 && std::memcmp(seg.data() + 128, "DICM", 4) == 0, "SEG bytes %zu", seg.size());
    const std::vector<uint8_t> fractional = series.encode_seg(ichseg::Span<const float>(prob.data(), prob.size()));
    CHECK(fractional.size() > seg.size(), "FRACTIONAL SEG %zu bytes", fractional.size());

    // Another series by UID; errors carry the library's status and message.
    ichseg::SeriesReadOptions options;
    for (const ichseg::SeriesInfo& s : found) {
        if (s.modality == "CT" && s.slices == 4) {
            options.series_uid = s.uid;
        }
    }
    CHECK(ichseg::Series::read({dicom + "/two_series"}, options).info().slices == 4, "series chosen by UID");
    options.series_uid = "1.2.3";
    EXPECT_ERROR(ichseg::Series::read({dicom + "/two_series"}, options), ICHSEG_STATUS_INVALID_ARGUMENT,
                 "no series 1.2.3");
    EXPECT_ERROR(ichseg::Series::read({dicom + "/bad/tilt"}), ICHSEG_STATUS_INVALID_IMAGE, "gantry tilt");
    EXPECT_ERROR(ichseg::Series::read({dicom + "/bad/unsupported_ts"}), ICHSEG_STATUS_UNSUPPORTED, "JPEG 2000");
    EXPECT_ERROR(ichseg::Series::read({}), ICHSEG_STATUS_INVALID_ARGUMENT, "n_paths");
    std::vector<uint8_t> short_mask(mask.size() - 1);
    EXPECT_ERROR(series.encode_seg(ichseg::Span<const uint8_t>(short_mask.data(), short_mask.size())),
                 ICHSEG_STATUS_BUFFER_SIZE, "one byte per voxel");
    EXPECT_ERROR(series.write_seg(dir + "/no/such/folder/seg.dcm", ichseg::Span<const uint8_t>(mask.data(), mask.size())),
                 ICHSEG_STATUS_IO, "seg.dcm");
}

int main(int argc, char** argv) {
    if (argc < 3) {
        std::fprintf(stderr, "usage: %s FIXTURE_DIR CT_SMALL_NII\n", argv[0]);
        return 2;
    }
    const std::string dir = argv[1];
    try {
        test_versions();
        test_engine();
        ichseg::Engine engine(ichseg::EngineOptions{2, ichseg::Device::Cpu, 0});
        test_model_errors(engine, dir);
        const Ct ct = load_ct(argv[2]);
        test_memory_limit(dir, ct);
        test_low_memory(dir, ct);
        const ichseg::Model model = ichseg::Model::load(engine, dir + "/unet_transpose.onnx");
        ichseg::SegmentOptions so;
        so.batch = 2;
        const ichseg::Model model_mem = ichseg::Model::from_memory(engine, read_file(dir + "/unet_transpose.onnx"), so);
        const std::vector<uint8_t> mask = test_happy(model, model_mem, dir, ct);
        test_cancel(model, ct);
        test_cancel_from_another_thread(model, ct, mask);
        test_callback_exception(model, ct);
        test_buffer_sizes(model, ct);
        test_moves(engine, dir, ct);
        test_threads(model, ct, mask);
        test_pseudo(engine, dir, ct);
        test_dicom(model, dir);
    } catch (const ichseg::Error& e) {
        std::fprintf(stderr, "unexpected ichseg::Error %s: %s\n", e.status_name(), e.what());
        return 1;
    } catch (const std::exception& e) {
        std::fprintf(stderr, "unexpected exception: %s\n", e.what());
        return 1;
    }
    std::printf("%d checks, %d failed\n", checks, failures);
    if (failures != 0) {
        return 1;
    }
    std::printf("all C++ wrapper checks passed\n");
    return 0;
}
