/*
 * The libichseg C ABI exercised from C99, as a viewer would use it.
 *
 *     test_capi FIXTURE_DIR [CT_SMALL_NII]
 *
 * FIXTURE_DIR is tests/fixtures/unet (the tiny U-Net unet_transpose.onnx: 1 channel, 64x64,
 * 2-class softmax, with its reference input and logits); CT_SMALL_NII, when given, is
 * ct_small.nii.gz decompressed, whose int16 voxels go through the whole pipeline and are
 * compared with the reference mask. FIXTURE_DIR/../dicom holds the DICOM series read through
 * ichseg_series_read() and written back as DICOM-SEG. Built and run by tests/c_abi.rs and
 * tests/c/run_valgrind.sh.
 * Prints one line per provoked error and exits 0 only when every check passed.
 */
#define _POSIX_C_SOURCE 200809L

#include "ichseg.h"

#include <stddef.h>
#include <math.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static int checks = 0;
static int failures = 0;

#define CHECK(cond, ...)                                                                   \
    do {                                                                                   \
        checks++;                                                                          \
        if (!(cond)) {                                                                     \
            failures++;                                                                    \
            fprintf(stderr, "%s:%d: check failed: %s: ", __FILE__, __LINE__, #cond);       \
            fprintf(stderr, __VA_ARGS__);                                                  \
            fputc('\n', stderr);                                                           \
        }                                                                                  \
    } while (0)

/* Checks that a call returned `want` and, when that is a failure, that the thread's last-error
 * message is non-empty and contains `needle` (the specific part of the message). */
static void expect_status(const char *call, int line, IchsegStatus got, IchsegStatus want,
                          const char *needle)
{
    const char *msg = ichseg_last_error_message();
    checks++;
    if (got != want) {
        failures++;
        fprintf(stderr, "%s:%d: %s returned %s, expected %s (last error: \"%s\")\n", __FILE__,
                line, call, ichseg_status_name(got), ichseg_status_name(want), msg);
        return;
    }
    if (want == ICHSEG_STATUS_OK) {
        return;
    }
    if (msg == NULL || msg[0] == '\0' || (needle != NULL && strstr(msg, needle) == NULL)) {
        failures++;
        fprintf(stderr, "%s:%d: %s: last error \"%s\" should mention \"%s\"\n", __FILE__, line,
                call, msg ? msg : "(NULL)", needle ? needle : "");
        return;
    }
    printf("  %-31s %s\n", ichseg_status_name(got), msg);
}

#define EXPECT(call, want, needle) expect_status(#call, __LINE__, (call), (want), (needle))
#define OK(call) expect_status(#call, __LINE__, (call), ICHSEG_STATUS_OK, NULL)
/* For steps everything after depends on. */
#define REQUIRE(cond)                                                                      \
    do {                                                                                   \
        if (!(cond)) {                                                                     \
            fprintf(stderr, "%s:%d: required step failed: %s (last error: \"%s\")\n",     \
                    __FILE__, __LINE__, #cond, ichseg_last_error_message());               \
            exit(1);                                                                       \
        }                                                                                  \
    } while (0)

/* ---------------------------------------------------------------------------------------- */
/* Small helpers                                                                             */

static unsigned char *read_file(const char *path, size_t *len)
{
    FILE *f = fopen(path, "rb");
    unsigned char *buf = NULL;
    long size;
    if (f == NULL) {
        return NULL;
    }
    if (fseek(f, 0, SEEK_END) == 0 && (size = ftell(f)) >= 0 && fseek(f, 0, SEEK_SET) == 0) {
        buf = malloc((size_t)size + 1);
        if (buf != NULL && fread(buf, 1, (size_t)size, f) != (size_t)size) {
            free(buf);
            buf = NULL;
        }
        *len = (size_t)size;
    }
    fclose(f);
    return buf;
}

static char *join(const char *dir, const char *name)
{
    size_t n = strlen(dir) + strlen(name) + 2;
    char *p = malloc(n);
    REQUIRE(p != NULL);
    snprintf(p, n, "%s/%s", dir, name);
    return p;
}

static size_t count_nonzero(const uint8_t *mask, size_t n)
{
    size_t c = 0;
    size_t i;
    for (i = 0; i < n; i++) {
        c += mask[i] != 0;
    }
    return c;
}

static int all_bytes(const void *buf, size_t n, unsigned char value)
{
    const unsigned char *b = buf;
    size_t i;
    for (i = 0; i < n; i++) {
        if (b[i] != value) {
            return 0;
        }
    }
    return 1;
}

static int close_rel(double a, double b, double rel)
{
    return fabs(a - b) <= rel * fmax(1.0, fabs(b));
}

/* Progress callback: records every call, cancels at call number `cancel_at` (0 = never). */
typedef struct {
    uint32_t done[64];
    uint32_t total[64];
    int calls;
    int cancel_at;
} Progress;

static int32_t on_progress(uint32_t done, uint32_t total, void *user_data)
{
    Progress *p = user_data;
    if (p->calls < 64) {
        p->done[p->calls] = done;
        p->total[p->calls] = total;
    }
    p->calls++;
    return p->cancel_at == 0 || p->calls < p->cancel_at;
}

/* done strictly increasing up to total, total constant. */
static void check_progress(const Progress *p, int expect_calls, uint32_t expect_total)
{
    int i;
    CHECK(p->calls == expect_calls, "progress called %d times, expected %d", p->calls,
          expect_calls);
    for (i = 0; i < p->calls && i < 64; i++) {
        CHECK(p->total[i] == expect_total, "call %d: total %u", i, (unsigned)p->total[i]);
        CHECK(i == 0 || p->done[i] > p->done[i - 1], "call %d: done %u not increasing", i,
              (unsigned)p->done[i]);
        CHECK(p->done[i] >= 1 && p->done[i] <= p->total[i], "call %d: done %u of %u", i,
              (unsigned)p->done[i], (unsigned)p->total[i]);
    }
    if (p->calls > 0 && p->calls <= 64) {
        CHECK(p->done[p->calls - 1] == expect_total, "last done %u, expected %u",
              (unsigned)p->done[p->calls - 1], (unsigned)expect_total);
    }
}

/* Lesions agree with the mask, the spacing and the affine (row-major, NULL = scaling). */
static void check_lesions(const IchsegResult *res, const uint8_t *mask, const size_t dims[3],
                          const double spacing[3], const double *affine)
{
    size_t count = 0, i, total_voxels = 0;
    double total_ml = -1.0, sum_ml = 0.0;
    double voxel_ml = spacing[0] * spacing[1] * spacing[2] / 1000.0;
    size_t n = dims[0] * dims[1] * dims[2];
    IchsegLesion l, prev;
    memset(&prev, 0, sizeof prev);
    OK(ichseg_result_lesion_count(res, &count));
    OK(ichseg_result_total_volume_ml(res, &total_ml));
    for (i = 0; i < count; i++) {
        int d;
        OK(ichseg_result_lesion(res, i, &l));
        total_voxels += (size_t)l.voxels;
        sum_ml += l.volume_ml;
        CHECK(close_rel(l.volume_ml, (double)l.voxels * voxel_ml, 1e-12), "lesion %zu volume %g",
              i, l.volume_ml);
        CHECK(i == 0 || l.voxels <= prev.voxels, "lesion %zu is larger than the one before", i);
        for (d = 0; d < 3; d++) {
            double world = 0.0;
            int c;
            CHECK(l.bbox_min[d] <= l.bbox_max[d] && l.bbox_max[d] < dims[d],
                  "lesion %zu bbox axis %d: %llu..%llu", i, d, (unsigned long long)l.bbox_min[d],
                  (unsigned long long)l.bbox_max[d]);
            CHECK(l.centroid_voxel[d] >= (double)l.bbox_min[d] &&
                      l.centroid_voxel[d] <= (double)l.bbox_max[d],
                  "lesion %zu centroid outside its box", i);
            for (c = 0; c < 3; c++) {
                double a = affine ? affine[4 * d + c] : (c == d ? spacing[d] : 0.0);
                world += a * l.centroid_voxel[c];
            }
            world += affine ? affine[4 * d + 3] : 0.0;
            CHECK(close_rel(l.centroid_world_mm[d], world, 1e-9),
                  "lesion %zu world centroid axis %d: %g vs %g", i, d, l.centroid_world_mm[d],
                  world);
        }
        CHECK(l.first_slice == l.bbox_min[2] && l.last_slice == l.bbox_max[2],
              "lesion %zu slices %u..%u", i, (unsigned)l.first_slice, (unsigned)l.last_slice);
        CHECK(mask[l.bbox_min[0] + dims[0] * (l.bbox_min[1] + dims[1] * l.bbox_min[2])] <= 1,
              "mask values are 0/1");
        prev = l;
    }
    CHECK(total_voxels == count_nonzero(mask, n), "lesions hold %zu voxels, the mask %zu",
          total_voxels, count_nonzero(mask, n));
    CHECK(close_rel(total_ml, sum_ml, 1e-12), "total %g vs sum %g", total_ml, sum_ml);
    CHECK(close_rel(total_ml, (double)total_voxels * voxel_ml, 1e-9), "total %g mL", total_ml);
}

/* ---------------------------------------------------------------------------------------- */
/* DICOM: a series in, DICOM-SEG out                                                         */

static IchsegSeries *read_series(const char *dicom_dir, const char *sub, const IchsegSeriesReadOptions *o,
                                 IchsegStatus want, const char *needle)
{
    char *path = join(dicom_dir, sub);
    const char *paths[1];
    IchsegSeries *s = (IchsegSeries *)0x1;
    paths[0] = path;
    EXPECT(ichseg_series_read(paths, 1, o, &s), want, needle);
    CHECK(want == ICHSEG_STATUS_OK || s == NULL, "*out is NULL after a failure");
    free(path);
    return s;
}

static void test_dicom(const IchsegModel *model, const char *dir)
{
    char *dicom_dir = join(dir, "../dicom");
    IchsegSeriesReadOptions ro;
    IchsegSeriesInfo info;
    IchsegVolumeDesc desc;
    IchsegSegOptions so;
    IchsegSeries *s;
    const char *null_path[1] = {NULL};
    uint8_t *mask, *bytes = (uint8_t *)0x1;
    float *prob;
    size_t found = 0, n, nbytes = 7;
    char *out_path, *bad_path;
    FILE *f;

    printf("dicom\n");
    ichseg_series_read_options_init(&ro);
    CHECK(ro.struct_size == sizeof ro && ro.series_uid == NULL && ro.allow_non_ct == 0 &&
              ro.memory_limit_mb == 0, "series read defaults");
    s = read_series(dicom_dir, "series/explicit_le", &ro, ICHSEG_STATUS_OK, NULL);
    REQUIRE(s != NULL);
    OK(ichseg_series_info(s, &info));
    CHECK(info.slices == 8 && info.rows == 128 && info.columns == 112 && strcmp(info.modality, "CT") == 0 &&
              strlen(info.uid) > 5, "series info %zu slices %zux%zu %s", info.slices, info.columns, info.rows,
          info.modality);
    OK(ichseg_series_found_count(s, &found));
    CHECK(found == 1, "found %zu series", found);
    EXPECT(ichseg_series_found(s, 1, &info), ICHSEG_STATUS_INVALID_ARGUMENT, "past the 1 series");

    ichseg_volume_desc_init(&desc);
    OK(ichseg_series_volume(s, &desc));
    CHECK(desc.voxel_type == ICHSEG_VOXEL_TYPE_F32 && desc.dims[0] == 112 && desc.dims[1] == 128 &&
              desc.dims[2] == 8 && desc.affine != NULL && close_rel(desc.spacing[2], 5.0, 1e-12) &&
              close_rel(desc.affine[0], -1.6, 1e-9),
          "series volume %zux%zux%zu", desc.dims[0], desc.dims[1], desc.dims[2]);
    n = desc.dims[0] * desc.dims[1] * desc.dims[2];
    mask = malloc(n);
    prob = malloc(n * sizeof *prob);
    REQUIRE(mask && prob);
    OK(ichseg_segment(model, &desc, mask, n, prob, n, NULL, NULL, NULL));

    ichseg_seg_options_init(&so);
    so.algorithm_name = "unet_transpose";
    so.trained_on = "test fixtures";
    OK(ichseg_seg_encode(s, mask, NULL, n, &so, &bytes, &nbytes));
    CHECK(bytes != NULL && nbytes > 132 && memcmp(bytes + 128, "DICM", 4) == 0, "SEG bytes (%zu)", nbytes);
    ichseg_bytes_free(bytes, nbytes);
    OK(ichseg_seg_encode(s, NULL, prob, n, NULL, &bytes, &nbytes));
    CHECK(bytes != NULL && nbytes > n, "a FRACTIONAL SEG holds a byte per voxel of its frames (%zu)", nbytes);
    ichseg_bytes_free(bytes, nbytes);
    ichseg_bytes_free(NULL, 0);

    out_path = join(dir, "../../../target/test_capi_seg.dcm");
    OK(ichseg_seg_write(s, mask, NULL, n, &so, out_path));
    f = fopen(out_path, "rb");
    CHECK(f != NULL, "%s written", out_path);
    if (f != NULL) {
        fclose(f);
    }
    remove(out_path);

    /* Errors: nothing written, out-parameters cleared. */
    EXPECT(ichseg_seg_encode(s, mask, prob, n, NULL, &bytes, &nbytes), ICHSEG_STATUS_INVALID_ARGUMENT, "not both");
    CHECK(bytes == NULL && nbytes == 0, "encode outputs cleared on failure");
    EXPECT(ichseg_seg_encode(s, NULL, NULL, n, NULL, &bytes, &nbytes), ICHSEG_STATUS_NULL_POINTER, "mask");
    EXPECT(ichseg_seg_encode(s, mask, NULL, n - 1, NULL, &bytes, &nbytes), ICHSEG_STATUS_BUFFER_SIZE,
           "one byte per voxel");
    prob[0] = NAN;
    EXPECT(ichseg_seg_encode(s, NULL, prob, n, NULL, &bytes, &nbytes), ICHSEG_STATUS_INVALID_ARGUMENT, "[0, 1]");
    bad_path = join(dir, "no/such/folder/seg.dcm");
    EXPECT(ichseg_seg_write(s, mask, NULL, n, NULL, bad_path), ICHSEG_STATUS_IO, "seg.dcm");
    EXPECT(ichseg_seg_write(NULL, mask, NULL, n, NULL, bad_path), ICHSEG_STATUS_NULL_POINTER, "series");
    EXPECT(ichseg_series_volume(s, NULL), ICHSEG_STATUS_NULL_POINTER, "desc");
    free(bad_path);
    ichseg_series_free(s);

    EXPECT(ichseg_series_read(NULL, 1, NULL, &s), ICHSEG_STATUS_NULL_POINTER, "paths");
    EXPECT(ichseg_series_read(null_path, 1, NULL, &s), ICHSEG_STATUS_NULL_POINTER, "paths[0]");
    EXPECT(ichseg_series_read(null_path, 0, NULL, &s), ICHSEG_STATUS_INVALID_ARGUMENT, "n_paths");
    read_series(dicom_dir, "bad/gap", NULL, ICHSEG_STATUS_INVALID_IMAGE, "missing slice");
    read_series(dicom_dir, "bad/tilt", NULL, ICHSEG_STATUS_INVALID_IMAGE, "gantry tilt");
    read_series(dicom_dir, "bad/unsupported_ts", NULL, ICHSEG_STATUS_UNSUPPORTED, "transfer syntax");
    read_series(dicom_dir, "bad/empty", NULL, ICHSEG_STATUS_INVALID_IMAGE, "no DICOM image");
    read_series(dicom_dir, "no_such_folder", NULL, ICHSEG_STATUS_IO, "no_such_folder");
    ro.series_uid = "1.2.3";
    read_series(dicom_dir, "two_series", &ro, ICHSEG_STATUS_INVALID_ARGUMENT, "no series 1.2.3");
    ro.series_uid = NULL;
    ro.struct_size = 3;
    read_series(dicom_dir, "two_series", &ro, ICHSEG_STATUS_INVALID_ARGUMENT, "struct_size");
    s = read_series(dicom_dir, "two_series", NULL, ICHSEG_STATUS_OK, NULL);
    REQUIRE(s != NULL);
    OK(ichseg_series_found_count(s, &found));
    OK(ichseg_series_info(s, &info));
    CHECK(found == 3 && info.slices == 8, "two_series: %zu found, %zu slices read", found, info.slices);
    ichseg_series_free(s);
    ichseg_series_free(NULL);

    free(out_path);
    free(mask);
    free(prob);
    free(dicom_dir);
}

/* ---------------------------------------------------------------------------------------- */

/* ---------------------------------------------------------------------------------------- */
/* The tests                                                                                 */

static void test_versions(void)
{
    const char *v = ichseg_version_string();
    printf("versions\n");
    CHECK(ichseg_abi_version() == ICHSEG_ABI_VERSION, "abi %u", (unsigned)ichseg_abi_version());
    CHECK(ICHSEG_ABI_VERSION == 9, "header ABI %d", ICHSEG_ABI_VERSION);
    CHECK(ICHSEG_STATUS_OUT_OF_MEMORY == 12 &&
              strcmp(ichseg_status_name(ICHSEG_STATUS_OUT_OF_MEMORY), "ICHSEG_STATUS_OUT_OF_MEMORY") == 0,
          "out-of-memory status");
    CHECK(v != NULL && strlen(v) >= 5 && strchr(v, '.') != NULL, "version \"%s\"", v);
    CHECK(strcmp(ichseg_status_name(ICHSEG_STATUS_BUFFER_SIZE), "ICHSEG_STATUS_BUFFER_SIZE") == 0,
          "%s", ichseg_status_name(ICHSEG_STATUS_BUFFER_SIZE));
    CHECK(strcmp(ichseg_status_name(1234), "ICHSEG_STATUS_UNKNOWN") == 0, "unknown status");
    CHECK(ICHSEG_STATUS_OK == 0 && ICHSEG_STATUS_PANIC == 11, "status values");
    printf("  abi %u, version %s\n", (unsigned)ichseg_abi_version(), v);
}

static IchsegEngine *test_engine(void)
{
    IchsegEngineOptions o, bad;
    IchsegEngine *engine = NULL, *e = NULL;
    const char *name = NULL, *note = NULL;
    uint32_t threads = 0;

    printf("engine\n");
    ichseg_engine_options_init(&o);
    ichseg_engine_options_init(NULL); /* a no-op */
    CHECK(o.struct_size == sizeof o && o.threads == 0 && o.device == ICHSEG_DEVICE_AUTO &&
              o.cuda_device == 0 && o.memory_limit_mb == 0 && o.low_memory == 0,
          "engine defaults");
    {
        /* a caller built before memory_limit_mb (v1/v2 headers): init writes no byte past its
           struct, and create reads no field past it (the limit reads as none) */
        size_t v1 = offsetof(IchsegEngineOptions, memory_limit_mb);
        IchsegEngineOptions old;
        memset(&old, 0x5A, sizeof old);
        ichseg_engine_options_init_sized(&old, v1);
        CHECK(old.struct_size == v1 && ((const unsigned char *)&old)[v1] == 0x5A, "v1 engine init");
        old.threads = 1;
        OK(ichseg_engine_create(&old, &e));
        ichseg_engine_free(e);
        e = NULL;
    }

    OK(ichseg_engine_create(NULL, &e)); /* NULL options = defaults */
    REQUIRE(e != NULL);
    OK(ichseg_engine_threads(e, &threads));
    CHECK(threads >= 1, "default threads %u", (unsigned)threads);
    ichseg_engine_free(e);

    o.threads = 2;
    o.device = ICHSEG_DEVICE_CPU;
    OK(ichseg_engine_create(&o, &engine));
    REQUIRE(engine != NULL);
    OK(ichseg_engine_device_name(engine, &name));
    OK(ichseg_engine_device_note(engine, &note));
    OK(ichseg_engine_threads(engine, &threads));
    CHECK(name != NULL && strcmp(name, "cpu") == 0, "device %s", name);
    CHECK(note != NULL && note[0] != '\0', "device note");
    CHECK(threads == 2, "threads %u", (unsigned)threads);
    printf("  device %s (%s), %u threads\n", name, note, (unsigned)threads);

    /* Errors. A failed create sets *out to NULL. */
    EXPECT(ichseg_engine_create(&o, NULL), ICHSEG_STATUS_NULL_POINTER, "argument `out` is NULL");
    bad = o;
    bad.struct_size = 4;
    e = (IchsegEngine *)&bad;
    EXPECT(ichseg_engine_create(&bad, &e), ICHSEG_STATUS_INVALID_ARGUMENT,
           "IchsegEngineOptions.struct_size is 4");
    CHECK(e == NULL, "*out is NULL after a failure");
    bad.struct_size = (size_t)1 << 20;
    EXPECT(ichseg_engine_create(&bad, &e), ICHSEG_STATUS_INVALID_ARGUMENT, "at most 4096");
    bad = o;
    bad.device = ICHSEG_DEVICE_CUDA;
    EXPECT(ichseg_engine_create(&bad, &e), ICHSEG_STATUS_UNSUPPORTED, "CUDA device 0 requested");
    bad.cuda_device = -1;
    EXPECT(ichseg_engine_create(&bad, &e), ICHSEG_STATUS_INVALID_ARGUMENT, "cuda_device");
    bad = o;
    bad.device = (IchsegDevice)7;
    EXPECT(ichseg_engine_create(&bad, &e), ICHSEG_STATUS_INVALID_ARGUMENT,
           "IchsegEngineOptions.device is 7");
    bad = o;
    bad.threads = 5000;
    EXPECT(ichseg_engine_create(&bad, &e), ICHSEG_STATUS_INVALID_ARGUMENT, "5000 threads");
    bad = o;
    bad.low_memory = 2;
    EXPECT(ichseg_engine_create(&bad, &e), ICHSEG_STATUS_INVALID_ARGUMENT, "low_memory must be 0 or 1, got 2");
    EXPECT(ichseg_engine_device_name(NULL, &name), ICHSEG_STATUS_NULL_POINTER, "`engine`");
    EXPECT(ichseg_engine_device_name(engine, NULL), ICHSEG_STATUS_NULL_POINTER, "`out`");
    EXPECT(ichseg_engine_device_note(NULL, &note), ICHSEG_STATUS_NULL_POINTER, "`engine`");
    EXPECT(ichseg_engine_threads(NULL, &threads), ICHSEG_STATUS_NULL_POINTER, "`engine`");
    EXPECT(ichseg_engine_threads(engine, NULL), ICHSEG_STATUS_NULL_POINTER, "`out`");
    ichseg_engine_free(NULL); /* a no-op */
    return engine;
}

static void test_model_errors(IchsegEngine *engine, const char *dir)
{
    char *path = join(dir, "unet_transpose.onnx");
    char *not_a_model = join(dir, "not_a_model.onnx");
    char *badrank = join(dir, "unet_badrank.onnx");
    static const unsigned char garbage[] = "this is not an ONNX file";
    IchsegSegmentOptions so;
    IchsegModel *m = NULL;
    const char *msg;

    printf("model errors\n");
    m = (IchsegModel *)&so;
    EXPECT(ichseg_model_load(NULL, path, NULL, &m), ICHSEG_STATUS_NULL_POINTER, "`engine`");
    CHECK(m == NULL, "*out is NULL after a failure");
    EXPECT(ichseg_model_load(engine, NULL, NULL, &m), ICHSEG_STATUS_NULL_POINTER, "`path`");
    EXPECT(ichseg_model_load(engine, path, NULL, NULL), ICHSEG_STATUS_NULL_POINTER, "`out`");
    EXPECT(ichseg_model_load(engine, "/nonexistent/dir/model.onnx", NULL, &m), ICHSEG_STATUS_IO,
           "/nonexistent/dir/model.onnx");
    EXPECT(ichseg_model_load(engine, not_a_model, NULL, &m), ICHSEG_STATUS_INVALID_MODEL,
           "not_a_model.onnx");
    EXPECT(ichseg_model_load(engine, badrank, NULL, &m), ICHSEG_STATUS_INVALID_MODEL,
           "unet_badrank.onnx");
    EXPECT(ichseg_model_load_from_memory(engine, garbage, sizeof garbage, NULL, &m),
           ICHSEG_STATUS_INVALID_MODEL, "not a valid ONNX file");
    EXPECT(ichseg_model_load_from_memory(engine, NULL, 10, NULL, &m), ICHSEG_STATUS_NULL_POINTER,
           "`bytes`");
    EXPECT(ichseg_model_load_from_memory(NULL, garbage, sizeof garbage, NULL, &m),
           ICHSEG_STATUS_NULL_POINTER, "`engine`");
    EXPECT(ichseg_model_load_from_memory(engine, garbage, sizeof garbage, NULL, NULL),
           ICHSEG_STATUS_NULL_POINTER, "`out`");

    ichseg_segment_options_init(&so);
    ichseg_segment_options_init(NULL); /* a no-op */
    CHECK(so.struct_size == sizeof so && so.threshold == 0.5f && so.batch == 1 &&
              isnan(so.window_level) && isnan(so.window_width) && so.input_rows == 0 &&
              so.input_cols == 0 && so.channels == 0 && isnan(so.min_lesion_ml),
          "segment option defaults");
    /* A caller built against the first header (no min_lesion_ml) passes its smaller size: the
       library writes exactly that many bytes, never past them, and reads no more. */
    {
        size_t v1 = offsetof(IchsegSegmentOptions, min_lesion_ml);
        IchsegSegmentOptions old;
        memset(&old, 0x5A, sizeof old);
        ichseg_segment_options_init_sized(&old, v1);
        CHECK(old.struct_size == v1 && old.threshold == 0.5f && old.channels == 0,
              "v1 init: struct_size %zu", old.struct_size);
        CHECK(((const unsigned char *)&old)[v1] == 0x5A &&
                  ((const unsigned char *)&old)[sizeof old - 1] == 0x5A,
              "v1 init wrote past the v1 struct");
        ichseg_segment_options_init_sized(&old, 4); /* smaller than any header's: a no-op */
        CHECK(old.struct_size == v1, "a too-small size writes nothing");
        OK(ichseg_model_load(engine, path, &old, &m)); /* the garbage past v1 is never read */
        ichseg_model_free(m);
        m = NULL;
    }
    ichseg_segment_options_init(&so);
    so.min_lesion_ml = INFINITY; /* NaN is "the model's" */
    EXPECT(ichseg_model_load(engine, path, &so, &m), ICHSEG_STATUS_INVALID_ARGUMENT, "min_lesion_ml");
    so.min_lesion_ml = -1.0;
    EXPECT(ichseg_model_load(engine, path, &so, &m), ICHSEG_STATUS_INVALID_ARGUMENT, "min_lesion_ml");
    ichseg_segment_options_init(&so);
    so.struct_size = offsetof(IchsegSegmentOptions, min_lesion_ml) - 4; /* below the first header's */
    EXPECT(ichseg_model_load(engine, path, &so, &m), ICHSEG_STATUS_INVALID_ARGUMENT,
           "IchsegSegmentOptions.struct_size");
    ichseg_segment_options_init(&so);
    so.input_rows = 32;
    EXPECT(ichseg_model_load(engine, path, &so, &m), ICHSEG_STATUS_INVALID_ARGUMENT,
           "set together");
    so.input_cols = 32;
    EXPECT(ichseg_model_load(engine, path, &so, &m), ICHSEG_STATUS_INVALID_MODEL,
           "input rows 32 was requested but the model input is fixed at 64");
    so.input_rows = so.input_cols = 100000;
    EXPECT(ichseg_model_load(engine, path, &so, &m), ICHSEG_STATUS_INVALID_ARGUMENT, "8192");
    ichseg_segment_options_init(&so);
    so.channels = 3;
    EXPECT(ichseg_model_load(engine, path, &so, &m), ICHSEG_STATUS_INVALID_MODEL,
           "channels 3 was requested");
    ichseg_segment_options_init(&so);
    so.channels = 2; /* not a channel count at all: a bad argument, whatever the model */
    EXPECT(ichseg_model_load(engine, path, &so, &m), ICHSEG_STATUS_INVALID_ARGUMENT,
           "channels must be 1 or 3, got 2");
    ichseg_segment_options_init(&so);
    so.batch = 257;
    EXPECT(ichseg_model_load(engine, path, &so, &m), ICHSEG_STATUS_INVALID_ARGUMENT,
           "batch must be 1..=256, got 257");
    ichseg_segment_options_init(&so);
    so.threshold = 1.5f;
    EXPECT(ichseg_model_load(engine, path, &so, &m), ICHSEG_STATUS_INVALID_ARGUMENT,
           "threshold must lie in [0, 1], got 1.5");
    ichseg_segment_options_init(&so);
    so.batch = 0;
    EXPECT(ichseg_model_load(engine, path, &so, &m), ICHSEG_STATUS_INVALID_ARGUMENT,
           "batch must be 1..=256, got 0");
    ichseg_segment_options_init(&so);
    so.window_width = -5.0f;
    EXPECT(ichseg_model_load(engine, path, &so, &m), ICHSEG_STATUS_INVALID_ARGUMENT,
           "window width");
    CHECK(m == NULL, "no model after failures");

    /* The message stays valid, and unchanged, across successful calls on this thread. */
    msg = ichseg_last_error_message();
    CHECK(ichseg_abi_version() == ICHSEG_ABI_VERSION && ichseg_last_error_message() == msg, "message pointer kept");
    ichseg_model_free(NULL); /* a no-op */
    free(path);
    free(not_a_model);
    free(badrank);
}

/* The reference input of the fixture as HU: windowed slices v in [0, 1] were made with level
 * 50 and width 130, so HU = -15 + 130 v; the library windows them back to v. */
typedef struct {
    size_t dims[3];
    size_t n;
    float *hu;         /* the reference input in HU */
    float *ref_prob;   /* softmax of the reference logits, bleed class 1 */
    int16_t *raw;      /* hu quantised to int16 with slope 0.5, intercept -1024 */
    float *raw_hu;     /* raw * 0.5 - 1024, exactly */
} Reference;

static int load_reference(const char *dir, Reference *r)
{
    char *in_path = join(dir, "unet_transpose.input.bin");
    char *lg_path = join(dir, "unet_transpose.logits.bin");
    size_t in_len = 0, lg_len = 0, i;
    unsigned char *in = read_file(in_path, &in_len);
    unsigned char *lg = read_file(lg_path, &lg_len);
    const size_t plane = 64 * 64;
    int ok = in != NULL && lg != NULL && in_len == 3 * plane * 4 && lg_len == 3 * 2 * plane * 4;
    CHECK(ok, "reference input %zu bytes, logits %zu bytes", in_len, lg_len);
    if (ok) {
        r->dims[0] = 64;
        r->dims[1] = 64;
        r->dims[2] = 3;
        r->n = 3 * plane;
        r->hu = malloc(r->n * sizeof(float));
        r->ref_prob = malloc(r->n * sizeof(float));
        r->raw = malloc(r->n * sizeof(int16_t));
        r->raw_hu = malloc(r->n * sizeof(float));
        REQUIRE(r->hu && r->ref_prob && r->raw && r->raw_hu);
        for (i = 0; i < r->n; i++) {
            float v, l0, l1;
            size_t z = i / plane, p = i % plane;
            memcpy(&v, in + 4 * i, 4);
            memcpy(&l0, lg + 4 * ((2 * z + 0) * plane + p), 4);
            memcpy(&l1, lg + 4 * ((2 * z + 1) * plane + p), 4);
            r->hu[i] = -15.0f + 130.0f * v;
            r->ref_prob[i] = (float)(1.0 / (1.0 + exp((double)l0 - (double)l1)));
            r->raw[i] = (int16_t)lrint(((double)r->hu[i] + 1024.0) * 2.0);
            r->raw_hu[i] = (float)r->raw[i] * 0.5f - 1024.0f;
        }
    }
    free(in);
    free(lg);
    free(in_path);
    free(lg_path);
    return ok;
}

static void free_reference(Reference *r)
{
    free(r->hu);
    free(r->ref_prob);
    free(r->raw);
    free(r->raw_hu);
}

static IchsegVolumeDesc describe(IchsegVoxelType type, const void *data, const size_t dims[3])
{
    IchsegVolumeDesc d;
    ichseg_volume_desc_init(&d);
    d.voxel_type = type;
    d.data = data;
    d.dims[0] = dims[0];
    d.dims[1] = dims[1];
    d.dims[2] = dims[2];
    d.spacing[0] = 0.45;
    d.spacing[1] = 0.45;
    d.spacing[2] = 5.0;
    return d;
}

/* Clinical findings: values consistent with the mask and the HU, the growable structs, every
 * error path. `oriented` says whether the volume had an affine. */
static void check_findings(const IchsegResult *res, const uint8_t *mask, const float *hu, size_t n,
                           int oriented)
{
    size_t i, count = 0;
    double sum_abc2 = 0.0, total_abc2 = -1.0, lo = 1e30, hi = -1e30;
    const char *summary = NULL;
    char want[32];
    IchsegLesionFindings f;
    IchsegMidline m;
    unsigned char big[sizeof(IchsegLesionFindings) + 16];

    for (i = 0; i < n; i++) {
        if (mask[i]) {
            lo = hu[i] < lo ? hu[i] : lo;
            hi = hu[i] > hi ? hu[i] : hi;
        }
    }
    OK(ichseg_result_lesion_count(res, &count));
    memset(&m, 0, sizeof m);
    m.struct_size = sizeof m;
    OK(ichseg_result_midline(res, &m));
    CHECK(m.struct_size == sizeof m, "midline struct_size %zu", m.struct_size);
    CHECK(m.found == 0 || m.found == 1, "found %u", (unsigned)m.found);
    CHECK(m.found ? m.reason == NULL : (m.reason != NULL && m.reason[0] != '\0'), "midline reason");
    if (!oriented) {
        CHECK(!m.found && strstr(m.reason, "orientation") != NULL, "no affine: \"%s\"", m.reason);
    }
    for (i = 0; i < count; i++) {
        IchsegLesion l;
        memset(&f, 0xA5, sizeof f);
        f.struct_size = sizeof f;
        OK(ichseg_result_lesion(res, i, &l));
        OK(ichseg_result_lesion_findings(res, i, &f));
        CHECK(f.struct_size == sizeof f, "findings struct_size %zu", f.struct_size);
        CHECK(f.abc2_ml > 0.0 && close_rel(f.abc2_ml, f.abc2_a_mm * f.abc2_b_mm * f.abc2_c_mm / 2000.0, 1e-9),
              "lesion %zu ABC/2 %g (A %g B %g C %g)", i, f.abc2_ml, f.abc2_a_mm, f.abc2_b_mm, f.abc2_c_mm);
        CHECK(close_rel(f.abc2_c_mm, 5.0 * (double)(l.last_slice - l.first_slice + 1), 1e-12),
              "C %g for slices %u-%u", f.abc2_c_mm, (unsigned)l.first_slice, (unsigned)l.last_slice);
        CHECK(f.mean_hu >= lo && f.mean_hu <= f.max_hu && f.median_hu >= lo && f.median_hu <= f.max_hu &&
                  f.max_hu <= hi,
              "lesion %zu HU mean %g median %g max %g (mask HU %g..%g)", i, f.mean_hu, f.median_hu, f.max_hu, lo,
              hi);
        CHECK((int)f.side >= (int)ICHSEG_SIDE_UNKNOWN && (int)f.side <= (int)ICHSEG_SIDE_CROSSING, "side %d", (int)f.side);
        CHECK(m.found || f.side == ICHSEG_SIDE_UNKNOWN, "no midline, yet side %d", (int)f.side);
        CHECK(((f.flags & ICHSEG_FINDING_GE_30_ML) != 0) == (l.volume_ml >= 30.0), "flags %u", (unsigned)f.flags);
        CHECK((f.flags & ~(uint32_t)(ICHSEG_FINDING_GE_30_ML | ICHSEG_FINDING_TOUCHES_INNER_TABLE)) == 0,
              "unknown flag bits %u", (unsigned)f.flags);
        sum_abc2 += f.abc2_ml;
    }
    OK(ichseg_result_total_abc2_ml(res, &total_abc2));
    CHECK(close_rel(total_abc2, sum_abc2, 1e-12) || (count == 0 && total_abc2 == 0.0), "total ABC/2 %g vs %g",
          total_abc2, sum_abc2);
    OK(ichseg_result_summary(res, &summary));
    snprintf(want, sizeof want, "%zu lesion", count);
    CHECK(summary != NULL && (count == 0 ? strcmp(summary, "no hemorrhage found") == 0
                                         : strncmp(summary, want, strlen(want)) == 0),
          "summary \"%s\"", summary ? summary : "(null)");
    printf("  %s\n", summary ? summary : "(null)");

    /* A newer caller's larger struct: this library fills its own size and leaves the rest. */
    if (count > 0) {
        IchsegLesionFindings *p = (IchsegLesionFindings *)big;
        memset(big, 0x5A, sizeof big);
        p->struct_size = sizeof big;
        OK(ichseg_result_lesion_findings(res, 0, p));
        CHECK(p->struct_size == sizeof(IchsegLesionFindings) && big[sizeof(IchsegLesionFindings)] == 0x5A &&
                  big[sizeof big - 1] == 0x5A,
              "a larger struct: struct_size %zu", p->struct_size);
    }
    /* Errors: NULLs, sizes too small or absurd, an index out of range; *out left untouched. */
    f.struct_size = sizeof f;
    EXPECT(ichseg_result_lesion_findings(NULL, 0, &f), ICHSEG_STATUS_NULL_POINTER, "`result`");
    EXPECT(ichseg_result_lesion_findings(res, 0, NULL), ICHSEG_STATUS_NULL_POINTER, "`out`");
    EXPECT(ichseg_result_lesion_findings(res, count, &f), ICHSEG_STATUS_INVALID_ARGUMENT, "out of range");
    f.struct_size = 0;
    EXPECT(ichseg_result_lesion_findings(res, 0, &f), ICHSEG_STATUS_INVALID_ARGUMENT, "struct_size is 0");
    CHECK(f.struct_size == 0, "a refused struct is left untouched");
    f.struct_size = sizeof f - 1;
    EXPECT(ichseg_result_lesion_findings(res, 0, &f), ICHSEG_STATUS_INVALID_ARGUMENT, "set it to sizeof");
    f.struct_size = 5000;
    EXPECT(ichseg_result_lesion_findings(res, 0, &f), ICHSEG_STATUS_INVALID_ARGUMENT, "at most 4096");
    m.struct_size = sizeof m;
    EXPECT(ichseg_result_midline(NULL, &m), ICHSEG_STATUS_NULL_POINTER, "`result`");
    EXPECT(ichseg_result_midline(res, NULL), ICHSEG_STATUS_NULL_POINTER, "`out`");
    m.struct_size = 8;
    EXPECT(ichseg_result_midline(res, &m), ICHSEG_STATUS_INVALID_ARGUMENT, "IchsegMidline.struct_size is 8");
    EXPECT(ichseg_result_total_abc2_ml(NULL, &total_abc2), ICHSEG_STATUS_NULL_POINTER, "`result`");
    EXPECT(ichseg_result_total_abc2_ml(res, NULL), ICHSEG_STATUS_NULL_POINTER, "`out`");
    EXPECT(ichseg_result_summary(NULL, &summary), ICHSEG_STATUS_NULL_POINTER, "`result`");
    EXPECT(ichseg_result_summary(res, NULL), ICHSEG_STATUS_NULL_POINTER, "`out`");
}

/* Network output against the fixture's reference logits (onnxruntime), through the ABI. */
static void test_reference_float(const IchsegModel *model, const Reference *r, uint8_t *mask_out,
                                 float *prob_out)
{
    IchsegVolumeDesc d = describe(ICHSEG_VOXEL_TYPE_F32, r->hu, r->dims);
    IchsegResult *res = NULL;
    double max_diff = 0.0;
    size_t i, mismatched = 0, near_half = 0;

    printf("float32 volume against the reference logits\n");
    OK(ichseg_segment(model, &d, mask_out, r->n, prob_out, r->n, NULL, NULL, &res));
    CHECK(res != NULL, "result");
    for (i = 0; i < r->n; i++) {
        double diff = fabs((double)prob_out[i] - (double)r->ref_prob[i]);
        max_diff = diff > max_diff ? diff : max_diff;
        /* Tolerance 1e-3 on probabilities: tract and onnxruntime agree on the logits to about
         * 1e-5 relative; dp/dlogit <= 1/4 and the logits stay below ~150, so ~4e-4 at worst. */
        if (fabs(r->ref_prob[i] - 0.5) > 1e-3) {
            mismatched += mask_out[i] != (r->ref_prob[i] >= 0.5f);
        } else {
            near_half++;
        }
    }
    CHECK(max_diff <= 1e-3, "probabilities differ from the reference by up to %g", max_diff);
    CHECK(mismatched == 0, "%zu mask voxels disagree with the reference", mismatched);
    CHECK(count_nonzero(mask_out, r->n) > 0, "the model finds the fixture's bleeds");
    printf("  max |p - p_ref| = %.3g over %zu voxels, %zu bleed voxels, %zu near 0.5\n", max_diff,
           r->n, count_nonzero(mask_out, r->n), near_half);
    check_findings(res, mask_out, r->hu, r->n, 0);
    ichseg_result_free(res);
}

/* (v3) The intracranial mask: probability and mask zeroed outside the skull's inside, so the
   mask is inside the plain one and smaller (this fixture has no skull to enclose its bleeds). */
static void test_intracranial(const char *dir, const Reference *r, const uint8_t *plain)
{
    IchsegEngineOptions eo;
    IchsegEngine *engine = NULL;
    IchsegSegmentOptions so;
    IchsegModel *model = NULL;
    IchsegVolumeDesc d = describe(ICHSEG_VOXEL_TYPE_F32, r->hu, r->dims);
    uint8_t *mask = malloc(r->n);
    float *prob = malloc(r->n * 4);
    char *path = join(dir, "unet_transpose.onnx");
    size_t i, outside = 0;

    printf("intracranial mask\n");
    REQUIRE(mask && prob && path);
    ichseg_engine_options_init(&eo);
    eo.device = ICHSEG_DEVICE_CPU;
    OK(ichseg_engine_create(&eo, &engine));
    ichseg_segment_options_init(&so);
    CHECK(so.use_intracranial_mask == 0 && so.intracranial_margin_mm == 2.0, "intracranial defaults: off, 2 mm");
    so.use_intracranial_mask = 1;
    so.intracranial_margin_mm = -1.0;
    EXPECT(ichseg_model_load(engine, path, &so, &model), ICHSEG_STATUS_INVALID_ARGUMENT, "margin");
    so.intracranial_margin_mm = 2.0;
    OK(ichseg_model_load(engine, path, &so, &model));
    OK(ichseg_segment(model, &d, mask, r->n, prob, r->n, NULL, NULL, NULL));
    for (i = 0; i < r->n; i++) {
        outside += mask[i] && !plain[i];
    }
    CHECK(outside == 0, "%zu voxels outside the plain mask", outside);
    CHECK(count_nonzero(mask, r->n) < count_nonzero(plain, r->n), "the mask removes voxels (%zu of %zu)",
          count_nonzero(mask, r->n), count_nonzero(plain, r->n));
    ichseg_model_free(model);
    ichseg_engine_free(engine);
    free(path);
    free(mask);
    free(prob);
}

/* (v4 engine options) A low-memory engine (3x3 convolutions without Winograd's copies of the
   weights) segments to the default engine's mask. */
static void test_low_memory(const char *dir, const Reference *r, const uint8_t *plain)
{
    IchsegEngineOptions eo;
    IchsegEngine *engine = NULL;
    IchsegSegmentOptions so;
    IchsegModel *model = NULL;
    IchsegVolumeDesc d = describe(ICHSEG_VOXEL_TYPE_F32, r->hu, r->dims);
    uint8_t *mask = malloc(r->n);
    char *path = join(dir, "unet_transpose.onnx");
    size_t i, differ = 0;

    printf("low memory\n");
    REQUIRE(mask && path);
    ichseg_engine_options_init(&eo);
    eo.device = ICHSEG_DEVICE_CPU;
    eo.low_memory = 1;
    OK(ichseg_engine_create(&eo, &engine));
    ichseg_segment_options_init(&so);
    OK(ichseg_model_load(engine, path, &so, &model));
    OK(ichseg_segment(model, &d, mask, r->n, NULL, 0, NULL, NULL, NULL));
    for (i = 0; i < r->n; i++) {
        differ += mask[i] != plain[i];
    }
    CHECK(differ == 0, "%zu voxels differ from the default engine's mask", differ);
    ichseg_model_free(model);
    ichseg_engine_free(engine);
    free(path);
    free(mask);
}

/* int16 with slope/intercept gives exactly what the same HU as float32 give; lesions; progress. */
static void test_int16(const IchsegModel *model_b1, const IchsegModel *model_b2,
                       const Reference *r)
{
    static const double affine[16] = {0.45, 0, 0, -10.0, 0, 0.45, 0, 20.0,
                                      0,    0, 5.0, 30.0, 0, 0, 0, 1};
    IchsegVolumeDesc d16 = describe(ICHSEG_VOXEL_TYPE_I16, r->raw, r->dims);
    IchsegVolumeDesc df = describe(ICHSEG_VOXEL_TYPE_F32, r->raw_hu, r->dims);
    uint8_t *m16 = malloc(r->n), *mf = malloc(r->n), *mb = malloc(r->n);
    float *p16 = malloc(r->n * 4), *pf = malloc(r->n * 4), *pb = malloc(r->n * 4);
    IchsegResult *res = NULL, *resb = NULL;
    Progress prog;
    size_t i, count = 0, mism = 0;
    double max_diff = 0.0;
    IchsegLesion l;

    printf("int16 volume with rescale slope/intercept\n");
    REQUIRE(m16 && mf && mb && p16 && pf && pb);
    d16.rescale_slope = 0.5;
    d16.rescale_intercept = -1024.0;
    d16.affine = affine;
    memset(&prog, 0, sizeof prog);
    OK(ichseg_segment(model_b1, &d16, m16, r->n, p16, r->n, on_progress, &prog, &res));
    REQUIRE(res != NULL);
    check_progress(&prog, 3, 3);
    OK(ichseg_segment(model_b1, &df, mf, r->n, pf, r->n, NULL, NULL, NULL));
    CHECK(memcmp(m16, mf, r->n) == 0, "int16 and float32 masks differ");
    CHECK(memcmp(p16, pf, r->n * 4) == 0, "int16 and float32 probabilities differ");
    {
        /* The voxel buffer may have any alignment (here int16 at an odd address). */
        unsigned char *shifted = malloc(r->n * 2 + 1);
        uint8_t *mu = malloc(r->n);
        IchsegVolumeDesc du = d16;
        REQUIRE(shifted && mu);
        memcpy(shifted + 1, r->raw, r->n * 2);
        du.data = shifted + 1;
        OK(ichseg_segment(model_b1, &du, mu, r->n, NULL, 0, NULL, NULL, NULL));
        CHECK(memcmp(mu, m16, r->n) == 0, "an unaligned int16 buffer gives another mask");
        free(shifted);
        free(mu);
    }
    check_lesions(res, m16, r->dims, d16.spacing, affine);
    check_findings(res, m16, r->raw_hu, r->n, 1);
    OK(ichseg_result_lesion_count(res, &count));
    CHECK(count >= 1, "lesions found: %zu", count);
    for (i = 0; i < count; i++) {
        OK(ichseg_result_lesion(res, i, &l));
        printf("  lesion %zu: %llu voxels, %.4f mL, slices %u-%u, centroid (%.1f, %.1f, %.1f) mm\n",
               i + 1, (unsigned long long)l.voxels, l.volume_ml, (unsigned)l.first_slice,
               (unsigned)l.last_slice, l.centroid_world_mm[0], l.centroid_world_mm[1],
               l.centroid_world_mm[2]);
    }
    EXPECT(ichseg_result_lesion(res, count, &l), ICHSEG_STATUS_INVALID_ARGUMENT, "out of range");
    EXPECT(ichseg_result_lesion(NULL, 0, &l), ICHSEG_STATUS_NULL_POINTER, "`result`");
    EXPECT(ichseg_result_lesion(res, 0, NULL), ICHSEG_STATUS_NULL_POINTER, "`out`");
    EXPECT(ichseg_result_lesion_count(NULL, &count), ICHSEG_STATUS_NULL_POINTER, "`result`");
    EXPECT(ichseg_result_lesion_count(res, NULL), ICHSEG_STATUS_NULL_POINTER, "`out`");
    EXPECT(ichseg_result_total_volume_ml(NULL, &max_diff), ICHSEG_STATUS_NULL_POINTER, "`result`");
    EXPECT(ichseg_result_total_volume_ml(res, NULL), ICHSEG_STATUS_NULL_POINTER, "`out`");

    /* The model loaded from memory with batch 2: progress after slices 2 and 3, same answer. */
    memset(&prog, 0, sizeof prog);
    OK(ichseg_segment(model_b2, &d16, mb, r->n, pb, r->n, on_progress, &prog, &resb));
    check_progress(&prog, 2, 3);
    CHECK(prog.done[0] == 2, "first progress at %u", (unsigned)prog.done[0]);
    for (i = 0; i < r->n; i++) {
        double diff = fabs((double)pb[i] - (double)p16[i]);
        max_diff = diff > max_diff ? diff : max_diff;
        mism += fabs(p16[i] - 0.5) > 1e-4 && mb[i] != m16[i];
    }
    CHECK(max_diff <= 1e-4 && mism == 0, "batch 2 vs batch 1: max diff %g, %zu mask voxels",
          max_diff, mism);
    check_lesions(resb, mb, r->dims, d16.spacing, affine);
    ichseg_result_free(resb);
    ichseg_result_free(res);
    free(m16);
    free(mf);
    free(mb);
    free(p16);
    free(pf);
    free(pb);
}

/* Cancelling from the progress callback: CANCELLED, nothing written, *result NULL. */
static void test_cancel(const IchsegModel *model, const Reference *r)
{
    IchsegVolumeDesc d = describe(ICHSEG_VOXEL_TYPE_F32, r->hu, r->dims);
    uint8_t *mask = malloc(r->n);
    float *prob = malloc(r->n * 4);
    IchsegResult *res;
    Progress prog;
    int at;

    printf("cancel\n");
    REQUIRE(mask && prob);
    for (at = 1; at <= 2; at++) { /* batch 2 over 3 slices: 2 reports; 2 is the final one */
        memset(mask, 0xAB, r->n);
        memset(prob, 0xCD, r->n * 4);
        memset(&prog, 0, sizeof prog);
        prog.cancel_at = at;
        res = (IchsegResult *)&prog;
        EXPECT(ichseg_segment(model, &d, mask, r->n, prob, r->n, on_progress, &prog, &res),
               ICHSEG_STATUS_CANCELLED, "cancelled by the caller");
        CHECK(prog.calls == at, "cancelled at call %d but called %d times", at, prog.calls);
        CHECK(res == NULL, "*result is NULL after cancelling");
        CHECK(all_bytes(mask, r->n, 0xAB), "mask written although cancelled at %d", at);
        CHECK(all_bytes(prob, r->n * 4, 0xCD), "probabilities written although cancelled");
    }
    free(mask);
    free(prob);
}

/* Every segment error the ABI can be made to return; the caller's buffers stay untouched. */
static void test_segment_errors(const IchsegModel *model, const Reference *r)
{
    const size_t n = r->n;
    IchsegVolumeDesc good = describe(ICHSEG_VOXEL_TYPE_F32, r->hu, r->dims), d;
    uint8_t *mask = malloc(n);
    float *prob = malloc(n * 4), *nan_hu = malloc(n * 4);
    double *f64 = malloc(n * 8);
    double affine[16] = {1, 0, 0, 0, 0, 1, 0, 0, 0, 0, 1, 0, 0, 0, 0, 1};
    IchsegResult *res;
    size_t i;

    printf("segment errors\n");
    REQUIRE(mask && prob && nan_hu && f64);
    memset(mask, 0xAB, n);
    memset(prob, 0xCD, n * 4);

    res = (IchsegResult *)&d;
    EXPECT(ichseg_segment(NULL, &good, mask, n, prob, n, NULL, NULL, &res),
           ICHSEG_STATUS_NULL_POINTER, "argument `model` is NULL");
    CHECK(res == NULL, "*result is NULL after a failure");
    EXPECT(ichseg_segment(model, NULL, mask, n, prob, n, NULL, NULL, &res),
           ICHSEG_STATUS_NULL_POINTER, "argument `volume` is NULL");
    EXPECT(ichseg_segment(model, &good, NULL, n, prob, n, NULL, NULL, &res),
           ICHSEG_STATUS_NULL_POINTER, "argument `mask` is NULL");
    d = good;
    d.data = NULL;
    EXPECT(ichseg_segment(model, &d, mask, n, prob, n, NULL, NULL, &res),
           ICHSEG_STATUS_NULL_POINTER, "argument `volume->data` is NULL");

    EXPECT(ichseg_segment(model, &good, mask, n - 1, prob, n, NULL, NULL, &res),
           ICHSEG_STATUS_BUFFER_SIZE, "mask_len is 12287 but the 64x64x3 volume has 12288 voxels");
    EXPECT(ichseg_segment(model, &good, mask, n, prob, n + 1, NULL, NULL, &res),
           ICHSEG_STATUS_BUFFER_SIZE, "probabilities_len is 12289 but the 64x64x3 volume has 12288");
    EXPECT(ichseg_segment(model, &good, mask, n, NULL, 5, NULL, NULL, &res),
           ICHSEG_STATUS_BUFFER_SIZE, "probabilities is NULL but probabilities_len is 5");

    d = good;
    d.dims[1] = 0;
    EXPECT(ichseg_segment(model, &d, mask, n, prob, n, NULL, NULL, &res),
           ICHSEG_STATUS_INVALID_ARGUMENT, "must be non-zero, got 64x0x3");
    d = good;
    d.dims[0] = SIZE_MAX;
    d.dims[1] = 2;
    EXPECT(ichseg_segment(model, &d, mask, n, prob, n, NULL, NULL, &res),
           ICHSEG_STATUS_INVALID_ARGUMENT, "exceed the limit");
    d.dims[0] = d.dims[1] = d.dims[2] = 100000;
    EXPECT(ichseg_segment(model, &d, mask, n, prob, n, NULL, NULL, &res),
           ICHSEG_STATUS_INVALID_ARGUMENT, "100000x100000x100000 exceed the limit");

    d = good;
    d.struct_size = 8;
    EXPECT(ichseg_segment(model, &d, mask, n, prob, n, NULL, NULL, &res),
           ICHSEG_STATUS_INVALID_ARGUMENT, "IchsegVolumeDesc.struct_size is 8");
    ichseg_volume_desc_init(&d); /* voxel_type left 0: refused */
    d.data = r->hu;
    d.dims[0] = 64;
    d.dims[1] = 64;
    d.dims[2] = 3;
    d.spacing[0] = d.spacing[1] = d.spacing[2] = 1.0;
    EXPECT(ichseg_segment(model, &d, mask, n, prob, n, NULL, NULL, &res),
           ICHSEG_STATUS_INVALID_ARGUMENT, "voxel_type is 0");
    d.voxel_type = (IchsegVoxelType)42;
    EXPECT(ichseg_segment(model, &d, mask, n, prob, n, NULL, NULL, &res),
           ICHSEG_STATUS_INVALID_ARGUMENT, "voxel_type is 42");

    d = good;
    d.spacing[1] = NAN;
    EXPECT(ichseg_segment(model, &d, mask, n, prob, n, NULL, NULL, &res),
           ICHSEG_STATUS_INVALID_ARGUMENT, "spacing along y");
    d.spacing[1] = -0.5;
    EXPECT(ichseg_segment(model, &d, mask, n, prob, n, NULL, NULL, &res),
           ICHSEG_STATUS_INVALID_ARGUMENT, "got -0.5");
    /* a spacing whose voxel volume would overflow to infinite mL, and one far below a micrometre */
    d.spacing[1] = 1e300;
    EXPECT(ichseg_segment(model, &d, mask, n, prob, n, NULL, NULL, &res),
           ICHSEG_STATUS_INVALID_ARGUMENT, "spacing along y must be 0.001..=1000 mm, got 1e300");
    d.spacing[1] = 1e-9;
    EXPECT(ichseg_segment(model, &d, mask, n, prob, n, NULL, NULL, &res),
           ICHSEG_STATUS_INVALID_ARGUMENT, "0.001..=1000 mm");
    d = good;
    affine[7] = INFINITY;
    d.affine = affine;
    EXPECT(ichseg_segment(model, &d, mask, n, prob, n, NULL, NULL, &res),
           ICHSEG_STATUS_INVALID_ARGUMENT, "affine[7] is inf");
    d = good;
    d.rescale_slope = NAN;
    EXPECT(ichseg_segment(model, &d, mask, n, prob, n, NULL, NULL, &res),
           ICHSEG_STATUS_INVALID_ARGUMENT, "rescale_slope");
    d = good;
    d.rescale_intercept = INFINITY;
    EXPECT(ichseg_segment(model, &d, mask, n, prob, n, NULL, NULL, &res),
           ICHSEG_STATUS_INVALID_ARGUMENT, "rescale_intercept");

    /* Non-finite voxels: a NaN in float32 at (x=5, y=2, z=1), and a double that overflows
     * float once in HU. */
    memcpy(nan_hu, r->hu, n * 4);
    nan_hu[5 + 64 * (2 + 64 * 1)] = NAN;
    d = good;
    d.data = nan_hu;
    EXPECT(ichseg_segment(model, &d, mask, n, prob, n, NULL, NULL, &res), ICHSEG_STATUS_NON_FINITE,
           "1 non-finite voxel(s) (NaN or Inf), first at voxel (x=5, y=2, z=1)");
    for (i = 0; i < n; i++) {
        f64[i] = r->hu[i];
    }
    f64[n - 1] = 1e300;
    d = good;
    d.voxel_type = ICHSEG_VOXEL_TYPE_F64;
    d.data = f64;
    EXPECT(ichseg_segment(model, &d, mask, n, prob, n, NULL, NULL, &res), ICHSEG_STATUS_NON_FINITE,
           "first at voxel (x=63, y=63, z=2)");
    CHECK(res == NULL, "no result after failures");

    CHECK(all_bytes(mask, n, 0xAB), "a failing call wrote the mask");
    CHECK(all_bytes(prob, n * 4, 0xCD), "a failing call wrote the probabilities");
    free(mask);
    free(prob);
    free(nan_hu);
    free(f64);
}

/* Several threads segmenting with one model at once; the last error is per thread. */
typedef struct {
    const IchsegModel *model;
    const Reference *r;
    const uint8_t *expect_mask;
    const float *expect_prob;
    int fresh_message_empty;
    int same_answer;
    int own_error;
} Job;

static void *segment_job(void *arg)
{
    Job *job = arg;
    const Reference *r = job->r;
    IchsegVolumeDesc d = describe(ICHSEG_VOXEL_TYPE_F32, r->hu, r->dims);
    uint8_t *mask = malloc(r->n);
    float *prob = malloc(r->n * 4);
    job->fresh_message_empty = ichseg_last_error_message()[0] == '\0';
    if (mask != NULL && prob != NULL &&
        ichseg_segment(job->model, &d, mask, r->n, prob, r->n, NULL, NULL, NULL) ==
            ICHSEG_STATUS_OK) {
        job->same_answer = memcmp(mask, job->expect_mask, r->n) == 0 &&
                           memcmp(prob, job->expect_prob, r->n * 4) == 0;
    }
    job->own_error =
        ichseg_segment(job->model, &d, NULL, 0, NULL, 0, NULL, NULL, NULL) ==
            ICHSEG_STATUS_NULL_POINTER &&
        strstr(ichseg_last_error_message(), "`mask`") != NULL;
    free(mask);
    free(prob);
    return NULL;
}

static void test_threads(const IchsegModel *model, const Reference *r, const uint8_t *mask,
                         const float *prob)
{
    enum { THREADS = 3 };
    pthread_t threads[THREADS];
    Job jobs[THREADS];
    const char *before;
    int i;

    printf("threads\n");
    /* Leave a distinctive message on this thread: the workers' errors must not replace it. */
    EXPECT(ichseg_engine_threads(NULL, NULL), ICHSEG_STATUS_NULL_POINTER, "`out`");
    before = ichseg_last_error_message();
    for (i = 0; i < THREADS; i++) {
        Job j = {model, r, mask, prob, 0, 0, 0};
        jobs[i] = j;
        REQUIRE(pthread_create(&threads[i], NULL, segment_job, &jobs[i]) == 0);
    }
    for (i = 0; i < THREADS; i++) {
        REQUIRE(pthread_join(threads[i], NULL) == 0);
        CHECK(jobs[i].fresh_message_empty, "thread %d started with a last error", i);
        CHECK(jobs[i].same_answer, "thread %d got a different segmentation", i);
        CHECK(jobs[i].own_error, "thread %d did not see its own error", i);
    }
    CHECK(ichseg_last_error_message() == before && strstr(before, "argument `out` is NULL"),
          "the main thread's message changed: %s", ichseg_last_error_message());
    printf("  %d threads, same answer, per-thread messages\n", THREADS);
}

/* ct_small.nii: the whole pipeline (resize 80x70 -> 64x64 and back) on int16 voxels. */
static void test_nifti(const IchsegModel *model, const char *dir, const char *nii_path)
{
    size_t len = 0, ref_len = 0, prob_len = 0, n, i, count = 0, mism = 0;
    unsigned char *nii = read_file(nii_path, &len);
    char *ref_path = join(dir, "unet_transpose.pipeline_mask.bin");
    char *prob_path = join(dir, "unet_transpose.pipeline_prob.bin");
    unsigned char *ref = read_file(ref_path, &ref_len);
    unsigned char *ref_prob = read_file(prob_path, &prob_len);
    int16_t dim[8], datatype, sform_code;
    float pixdim[8], vox_offset, slope, inter, srow[12];
    double affine[16];
    uint64_t expect_voxels[3] = {408, 169, 33};
    IchsegVolumeDesc d;
    IchsegResult *res = NULL;
    Progress prog;
    uint8_t *mask;
    float *prob;
    double max_diff = 0.0, total = 0.0;

    printf("ct_small.nii through the whole pipeline\n");
    REQUIRE(nii != NULL && len > 352 && ref != NULL && ref_prob != NULL);
    /* NIfTI-1 header fields (little-endian, as the fixture is). */
    memcpy(dim, nii + 40, sizeof dim);
    memcpy(&datatype, nii + 70, 2);
    memcpy(pixdim, nii + 76, sizeof pixdim);
    memcpy(&vox_offset, nii + 108, 4);
    memcpy(&slope, nii + 112, 4);
    memcpy(&inter, nii + 116, 4);
    memcpy(&sform_code, nii + 254, 2);
    memcpy(srow, nii + 280, sizeof srow);
    REQUIRE(datatype == 4 && dim[0] == 3); /* int16, 3D */

    ichseg_volume_desc_init(&d);
    d.voxel_type = ICHSEG_VOXEL_TYPE_I16;
    d.data = nii + (size_t)vox_offset;
    for (i = 0; i < 3; i++) {
        d.dims[i] = (size_t)dim[i + 1];
        d.spacing[i] = pixdim[i + 1];
    }
    d.rescale_slope = slope;
    d.rescale_intercept = inter;
    if (sform_code > 0) {
        for (i = 0; i < 12; i++) {
            affine[i] = srow[i];
        }
        affine[12] = affine[13] = affine[14] = 0.0;
        affine[15] = 1.0;
        d.affine = affine;
    }
    n = d.dims[0] * d.dims[1] * d.dims[2];
    REQUIRE(len >= (size_t)vox_offset + 2 * n && ref_len == n && prob_len == 4 * n);
    mask = malloc(n);
    prob = malloc(4 * n);
    REQUIRE(mask && prob);
    memset(&prog, 0, sizeof prog);
    OK(ichseg_segment(model, &d, mask, n, prob, n, on_progress, &prog, &res));
    REQUIRE(res != NULL);
    check_progress(&prog, (int)d.dims[2], (uint32_t)d.dims[2]);
    for (i = 0; i < n; i++) {
        float p;
        double diff;
        memcpy(&p, ref_prob + 4 * i, 4);
        diff = fabs((double)prob[i] - (double)p);
        max_diff = diff > max_diff ? diff : max_diff;
        mism += mask[i] != ref[i];
    }
    /* The reference mask has no probability within 2.6e-3 of 0.5, so the masks must agree
     * exactly; probabilities within 1e-3 (see test_reference_float). */
    CHECK(mism == 0, "%zu voxels differ from the reference mask", mism);
    CHECK(max_diff <= 1e-3, "probabilities differ from the reference by up to %g", max_diff);
    OK(ichseg_result_lesion_count(res, &count));
    CHECK(count == 3, "%zu lesions, expected 3", count);
    for (i = 0; i < count && i < 3; i++) {
        IchsegLesion l;
        OK(ichseg_result_lesion(res, i, &l));
        CHECK(l.voxels == expect_voxels[i], "lesion %zu has %llu voxels, expected %llu", i,
              (unsigned long long)l.voxels, (unsigned long long)expect_voxels[i]);
    }
    OK(ichseg_result_total_volume_ml(res, &total));
    CHECK(close_rel(total, 610 * (double)pixdim[1] * pixdim[2] * pixdim[3] / 1000.0, 1e-9),
          "total %g mL", total);
    check_lesions(res, mask, d.dims, d.spacing, d.affine);
    printf("  %zux%zux%zu, %zu bleed voxels (reference 610), %zu lesions, %.4f mL, "
           "max |p - p_ref| = %.3g\n",
           d.dims[0], d.dims[1], d.dims[2], count_nonzero(mask, n), count, total, max_diff);
    ichseg_result_free(res);
    free(mask);
    free(prob);
    free(nii);
    free(ref);
    free(ref_prob);
    free(ref_path);
    free(prob_path);
}

/* Pseudo-labelling (ichseg_pseudo_*): the tiny fixture classifier twice (an ensemble of two),
 * its taps named by the caller, on the reference volume. */
static void test_pseudo(const char *dir, const Reference *r)
{
    static const char *TAPS = "/layer1/relu_1/Relu_output_0,/layer2/relu_1/Relu_output_0";
    char *cls = join(dir, "../classifier/tiny_classifier.onnx");
    char *unet = join(dir, "unet_transpose.onnx");
    const char *paths[2] = {cls, cls};
    const char *taps[2] = {TAPS, TAPS};
    IchsegEngineOptions eo;
    IchsegEngine *engine = NULL;
    IchsegPseudoOptions po, bad;
    IchsegPseudoLabeler *pl = NULL, *none = (IchsegPseudoLabeler *)&po;
    IchsegVolumeDesc v = describe(ICHSEG_VOXEL_TYPE_F32, r->hu, r->dims);
    uint8_t pos[3] = {1, 1, 1}, neg[3] = {0, 0, 0};
    uint8_t *mask = malloc(r->n), *mask2 = malloc(r->n);
    float *cams = malloc(2 * r->n * sizeof(float));
    size_t layers = 0, i, fg;
    Progress pr;

    printf("pseudo-labelling\n");
    REQUIRE(mask && mask2 && cams);
    ichseg_engine_options_init(&eo);
    eo.threads = 2;
    eo.device = ICHSEG_DEVICE_CPU;
    OK(ichseg_engine_create(&eo, &engine));
    ichseg_pseudo_options_init(&po);
    /* the tuned settings are left to the classifiers: threshold and min_lesion_ml NaN, switches -1 */
    CHECK(po.struct_size == sizeof po && po.cam == ICHSEG_CAM_METHOD_SF && isnan(po.threshold) &&
              po.use_scf == 1 && po.scf_c == 2 && po.scf_w == 0.5f &&
              po.aggregate == ICHSEG_AGGREGATE_OR && po.use_crf == 1 && po.batch == 1 && po.use_max_hu == -1 &&
              po.max_hu == 100.0f && isnan(po.min_lesion_ml) && po.use_intracranial_mask == -1 &&
              po.intracranial_margin_mm == 2.0 && po.preset == ICHSEG_PRESET_MODEL && isnan(po.crf_confidence) &&
              isnan(po.crf_bilateral_compat) && po.use_min_hu == -1 && po.min_hu == 42.0f,
          "pseudo option defaults");
    {
        /* the struct of a caller built before the bone cut: init writes no byte past it */
        size_t v1 = offsetof(IchsegPseudoOptions, use_max_hu);
        IchsegPseudoOptions old;
        memset(&old, 0x5A, sizeof old);
        ichseg_pseudo_options_init_sized(&old, v1);
        CHECK(old.struct_size == v1 && old.batch == 1 && ((const unsigned char *)&old)[v1] == 0x5A,
              "v1 pseudo init: struct_size %zu", old.struct_size);
    }

    /* creation errors: *out is set to NULL each time */
    EXPECT(ichseg_pseudo_labeler_create(engine, paths, 0, NULL, NULL, &none),
           ICHSEG_STATUS_INVALID_ARGUMENT, "count must be 1..64");
    CHECK(none == NULL, "out set to NULL on failure");
    EXPECT(ichseg_pseudo_labeler_create(NULL, paths, 2, taps, NULL, &pl), ICHSEG_STATUS_NULL_POINTER,
           "`engine`");
    EXPECT(ichseg_pseudo_labeler_create(engine, NULL, 2, taps, NULL, &pl), ICHSEG_STATUS_NULL_POINTER,
           "classifier_paths");
    EXPECT(ichseg_pseudo_labeler_create(engine, paths, 2, taps, NULL, NULL), ICHSEG_STATUS_NULL_POINTER,
           "`out`");
    {
        const char *missing[1] = {"/nonexistent/classifier.onnx"};
        const char *null_entry[2] = {cls, NULL};
        const char *bad_taps[1] = {"/layer1/relu_1/Relu_output_0,/no/such/tensor"};
        const char *unets[1] = {unet};
        EXPECT(ichseg_pseudo_labeler_create(engine, missing, 1, NULL, NULL, &pl), ICHSEG_STATUS_IO,
               "/nonexistent/classifier.onnx");
        EXPECT(ichseg_pseudo_labeler_create(engine, null_entry, 2, NULL, NULL, &pl),
               ICHSEG_STATUS_NULL_POINTER, "classifier_paths[1]");
        EXPECT(ichseg_pseudo_labeler_create(engine, paths, 1, bad_taps, NULL, &pl),
               ICHSEG_STATUS_INVALID_ARGUMENT, "/no/such/tensor");
        EXPECT(ichseg_pseudo_labeler_create(engine, unets, 1, NULL, NULL, &pl), ICHSEG_STATUS_INVALID_MODEL,
               NULL);
    }
    {
        /* an operator without a gradient rule between the tap and the logits: the header lists
           INVALID_MODEL, naming the op */
        char *erf = join(dir, "../grad/unsupported_erf.onnx");
        const char *erfs[1] = {erf};
        const char *erf_taps[1] = {"/relu/Relu_output_0"};
        EXPECT(ichseg_pseudo_labeler_create(engine, erfs, 1, erf_taps, NULL, &pl), ICHSEG_STATUS_INVALID_MODEL,
               "op Erf");
        free(erf);
    }
    bad = po;
    bad.threshold = 1.5f;
    EXPECT(ichseg_pseudo_labeler_create(engine, paths, 2, taps, &bad, &pl), ICHSEG_STATUS_INVALID_ARGUMENT,
           "threshold");
    bad = po;
    bad.threshold = -0.1f;
    EXPECT(ichseg_pseudo_labeler_create(engine, paths, 2, taps, &bad, &pl), ICHSEG_STATUS_INVALID_ARGUMENT,
           "threshold must lie in [0, 1], got -0.1");
    /* the header's range is closed, as the library's: 0 and 1 are accepted */
    bad.threshold = 1.0f;
    OK(ichseg_pseudo_labeler_create(engine, paths, 2, taps, &bad, &pl));
    ichseg_pseudo_labeler_free(pl);
    pl = NULL;
    bad = po;
    bad.batch = 257; /* the library's limit, not a C-only one */
    EXPECT(ichseg_pseudo_labeler_create(engine, paths, 2, taps, &bad, &pl), ICHSEG_STATUS_INVALID_ARGUMENT,
           "batch must be 1..=256, got 257");
    bad = po;
    bad.struct_size = 4;
    EXPECT(ichseg_pseudo_labeler_create(engine, paths, 2, taps, &bad, &pl), ICHSEG_STATUS_INVALID_ARGUMENT,
           "struct_size");
    bad = po;
    bad.use_max_hu = 1;
    bad.max_hu = NAN;
    EXPECT(ichseg_pseudo_labeler_create(engine, paths, 2, taps, &bad, &pl), ICHSEG_STATUS_INVALID_ARGUMENT,
           "max_hu");
    bad = po;
    bad.use_min_hu = 1;
    bad.min_hu = -INFINITY;
    EXPECT(ichseg_pseudo_labeler_create(engine, paths, 2, taps, &bad, &pl), ICHSEG_STATUS_INVALID_ARGUMENT,
           "min_hu");
    bad = po;
    bad.use_min_hu = -2;
    EXPECT(ichseg_pseudo_labeler_create(engine, paths, 2, taps, &bad, &pl), ICHSEG_STATUS_INVALID_ARGUMENT,
           "use_min_hu is -2, not -1, 0 or 1");
    bad = po;
    bad.min_lesion_ml = -0.5;
    EXPECT(ichseg_pseudo_labeler_create(engine, paths, 2, taps, &bad, &pl), ICHSEG_STATUS_INVALID_ARGUMENT,
           "min_lesion_ml");
    bad = po;
    bad.use_max_hu = 2;
    EXPECT(ichseg_pseudo_labeler_create(engine, paths, 2, taps, &bad, &pl), ICHSEG_STATUS_INVALID_ARGUMENT,
           "use_max_hu is 2, not -1, 0 or 1");
    bad = po;
    bad.use_intracranial_mask = 5;
    EXPECT(ichseg_pseudo_labeler_create(engine, paths, 2, taps, &bad, &pl), ICHSEG_STATUS_INVALID_ARGUMENT,
           "use_intracranial_mask");
    bad = po;
    bad.use_intracranial_mask = 1;
    bad.intracranial_margin_mm = -1.0;
    EXPECT(ichseg_pseudo_labeler_create(engine, paths, 2, taps, &bad, &pl), ICHSEG_STATUS_INVALID_ARGUMENT,
           "margin");
    bad = po;
    bad.crf_confidence = 1.0f;
    EXPECT(ichseg_pseudo_labeler_create(engine, paths, 2, taps, &bad, &pl), ICHSEG_STATUS_INVALID_ARGUMENT,
           "label_confidence must be in (0, 1), got 1");
    bad = po;
    bad.crf_bilateral_compat = INFINITY;
    EXPECT(ichseg_pseudo_labeler_create(engine, paths, 2, taps, &bad, &pl), ICHSEG_STATUS_INVALID_ARGUMENT,
           "bilateral_compat must be finite");
    bad = po;
    bad.preset = (IchsegPreset)7;
    EXPECT(ichseg_pseudo_labeler_create(engine, paths, 2, taps, &bad, &pl), ICHSEG_STATUS_INVALID_ARGUMENT,
           "preset is 7");
    /* a caller compiled before the blood-density cut (v5): the garbage past its struct is not read */
    bad = po;
    bad.use_min_hu = 7;
    bad.struct_size = offsetof(IchsegPseudoOptions, use_min_hu);
    OK(ichseg_pseudo_labeler_create(engine, paths, 2, taps, &bad, &pl));
    ichseg_pseudo_labeler_free(pl);
    pl = NULL;
    /* a caller compiled before the CRF's settings (v4): the garbage past its struct is not read */
    bad = po;
    bad.crf_confidence = 5.0f;
    bad.struct_size = offsetof(IchsegPseudoOptions, crf_confidence);
    OK(ichseg_pseudo_labeler_create(engine, paths, 2, taps, &bad, &pl));
    ichseg_pseudo_labeler_free(pl);
    pl = NULL;
    /* a caller compiled before the intracranial mask and the preset (v3): accepted */
    bad = po;
    bad.struct_size = offsetof(IchsegPseudoOptions, use_intracranial_mask);
    OK(ichseg_pseudo_labeler_create(engine, paths, 2, taps, &bad, &pl));
    ichseg_pseudo_labeler_free(pl);
    pl = NULL;
    /* a caller compiled before the bone cut (struct ends at batch): its fields are not read */
    bad.struct_size = offsetof(IchsegPseudoOptions, use_max_hu);
    OK(ichseg_pseudo_labeler_create(engine, paths, 2, taps, &bad, &pl));
    ichseg_pseudo_labeler_free(pl);
    pl = NULL;

    OK(ichseg_pseudo_labeler_create(engine, paths, 2, taps, &po, &pl));
    REQUIRE(pl != NULL);
    ichseg_engine_free(engine); /* the labeler outlives its engine */
    OK(ichseg_pseudo_labeler_layer_count(pl, &layers));
    CHECK(layers == 2, "%zu tap layers", layers);

    /* every slice labelled positive: a mask of 0/1, maps in [0, 1], deterministic */
    memset(&pr, 0, sizeof pr);
    memset(mask, 0xAB, r->n);
    OK(ichseg_pseudo_label(pl, &v, pos, 3, mask, r->n, cams, 2 * r->n, on_progress, &pr));
    for (i = 0, fg = 0; i < r->n; i++) {
        CHECK(mask[i] <= 1, "mask[%zu] = %u", i, mask[i]);
        fg += mask[i];
    }
    for (i = 0; i < 2 * r->n; i++) {
        CHECK(cams[i] >= 0.0f && cams[i] <= 1.0f, "cams[%zu] = %g", i, cams[i]);
    }
    CHECK(pr.calls >= 1 && pr.done[pr.calls - 1] == pr.total[0], "progress ends at its total");
    OK(ichseg_pseudo_label(pl, &v, pos, 3, mask2, r->n, NULL, 0, NULL, NULL));
    CHECK(memcmp(mask, mask2, r->n) == 0, "same volume, same pseudo mask");
    printf("  %zu of %zu voxels pseudo-hemorrhage\n", fg, r->n);

    /* the bone cut below every voxel's value empties the mask */
    {
        IchsegPseudoOptions cut = po;
        IchsegPseudoLabeler *cutter = NULL;
        cut.use_max_hu = 1;
        cut.max_hu = -5000.0f;
        OK(ichseg_engine_create(&eo, &engine));
        OK(ichseg_pseudo_labeler_create(engine, paths, 2, taps, &cut, &cutter));
        ichseg_engine_free(engine);
        memset(mask2, 0xAB, r->n);
        OK(ichseg_pseudo_label(cutter, &v, pos, 3, mask2, r->n, NULL, 0, NULL, NULL));
        CHECK(fg > 0 && count_nonzero(mask2, r->n) == 0, "a cut at -5000 HU leaves no voxel (%zu without)", fg);
        ichseg_pseudo_labeler_free(cutter);
        /* the blood-density cut above every voxel's value empties it as well, one below none keeps it */
        for (i = 0; i < 2; i++) {
            cut = po;
            cut.use_min_hu = 1;
            cut.min_hu = i == 0 ? 5000.0f : -5000.0f;
            OK(ichseg_engine_create(&eo, &engine));
            OK(ichseg_pseudo_labeler_create(engine, paths, 2, taps, &cut, &cutter));
            ichseg_engine_free(engine);
            memset(mask2, 0xAB, r->n);
            OK(ichseg_pseudo_label(cutter, &v, pos, 3, mask2, r->n, NULL, 0, NULL, NULL));
            CHECK(i == 0 ? count_nonzero(mask2, r->n) == 0 : memcmp(mask, mask2, r->n) == 0,
                  "min_hu %g", (double)cut.min_hu);
            ichseg_pseudo_labeler_free(cutter);
        }
        /* a small-lesion filter larger than the whole volume empties the mask too */
        cut = po;
        cut.min_lesion_ml = 1e9;
        OK(ichseg_engine_create(&eo, &engine));
        OK(ichseg_pseudo_labeler_create(engine, paths, 2, taps, &cut, &cutter));
        ichseg_engine_free(engine);
        memset(mask2, 0xAB, r->n);
        OK(ichseg_pseudo_label(cutter, &v, pos, 3, mask2, r->n, NULL, 0, NULL, NULL));
        CHECK(count_nonzero(mask2, r->n) == 0, "min_lesion_ml 1e9 leaves no voxel");
        ichseg_pseudo_labeler_free(cutter);
        /* these classifiers carry no tuned settings: threshold 0.2 or the CRF's 0.7 / 10 given,
           or the paper preset, labels as the defaults do */
        for (i = 0; i < 3; i++) {
            cut = po;
            if (i == 0) {
                cut.threshold = 0.2f;
            } else if (i == 1) {
                cut.preset = ICHSEG_PRESET_PAPER;
            } else {
                cut.crf_confidence = 0.7f;
                cut.crf_bilateral_compat = 10.0f;
            }
            OK(ichseg_engine_create(&eo, &engine));
            OK(ichseg_pseudo_labeler_create(engine, paths, 2, taps, &cut, &cutter));
            ichseg_engine_free(engine);
            memset(mask2, 0xAB, r->n);
            OK(ichseg_pseudo_label(cutter, &v, pos, 3, mask2, r->n, NULL, 0, NULL, NULL));
            CHECK(memcmp(mask, mask2, r->n) == 0, "explicit TH 0.2 / paper preset / CRF 0.7, 10 = the defaults (%zu)", i);
            ichseg_pseudo_labeler_free(cutter);
        }
    }

    /* every slice labelled negative: an empty mask; predictions: runs */
    OK(ichseg_pseudo_label(pl, &v, neg, 3, mask2, r->n, NULL, 0, NULL, NULL));
    CHECK(count_nonzero(mask2, r->n) == 0, "negative slices give an empty mask");
    OK(ichseg_pseudo_label(pl, &v, NULL, 0, mask2, r->n, NULL, 0, NULL, NULL));

    /* errors: nothing written */
    memset(mask2, 0xCD, r->n);
    EXPECT(ichseg_pseudo_label(NULL, &v, pos, 3, mask2, r->n, NULL, 0, NULL, NULL), ICHSEG_STATUS_NULL_POINTER,
           "`labeler`");
    EXPECT(ichseg_pseudo_label(pl, &v, pos, 2, mask2, r->n, NULL, 0, NULL, NULL), ICHSEG_STATUS_BUFFER_SIZE,
           "labels_len is 2 but the volume has 3 axial slices");
    EXPECT(ichseg_pseudo_label(pl, &v, NULL, 3, mask2, r->n, NULL, 0, NULL, NULL), ICHSEG_STATUS_BUFFER_SIZE,
           "slice_labels is NULL but labels_len is 3");
    EXPECT(ichseg_pseudo_label(pl, &v, pos, 3, mask2, r->n - 1, NULL, 0, NULL, NULL), ICHSEG_STATUS_BUFFER_SIZE,
           "mask_len");
    EXPECT(ichseg_pseudo_label(pl, &v, pos, 3, mask2, r->n, cams, r->n, NULL, NULL), ICHSEG_STATUS_BUFFER_SIZE,
           "the cams needs 2 map(s) of one float per voxel, 24576 in all");
    EXPECT(ichseg_pseudo_label(pl, &v, pos, 3, mask2, r->n, NULL, 5, NULL, NULL), ICHSEG_STATUS_BUFFER_SIZE,
           "cams is NULL");
    EXPECT(ichseg_pseudo_label(pl, &v, pos, 3, NULL, r->n, NULL, 0, NULL, NULL), ICHSEG_STATUS_NULL_POINTER,
           "`mask`");
    memset(&pr, 0, sizeof pr);
    pr.cancel_at = 1;
    EXPECT(ichseg_pseudo_label(pl, &v, pos, 3, mask2, r->n, NULL, 0, on_progress, &pr), ICHSEG_STATUS_CANCELLED,
           NULL);
    CHECK(all_bytes(mask2, r->n, 0xCD), "nothing written by failed or cancelled calls");
    r->hu[5] = NAN;
    EXPECT(ichseg_pseudo_label(pl, &v, pos, 3, mask2, r->n, NULL, 0, NULL, NULL), ICHSEG_STATUS_NON_FINITE,
           NULL);
    r->hu[5] = 0.0f;

    ichseg_pseudo_labeler_free(pl);
    ichseg_pseudo_labeler_free(NULL);
    free(mask);
    free(mask2);
    free(cams);
    free(cls);
    free(unet);
}

int main(int argc, char **argv)
{
    const char *dir;
    char *path;
    unsigned char *bytes;
    size_t len = 0;
    IchsegEngine *engine;
    IchsegModel *model_path = NULL, *model_mem = NULL;
    IchsegSegmentOptions so;
    Reference r;
    uint8_t *mask;
    float *prob;

    if (argc < 2) {
        fprintf(stderr, "usage: %s FIXTURE_DIR [CT_SMALL_NII]\n", argv[0]);
        return 2;
    }
    dir = argv[1];
    CHECK(ichseg_last_error_message() != NULL && ichseg_last_error_message()[0] == '\0',
          "no error yet, so the message is empty");

    test_versions();
    engine = test_engine();
    test_model_errors(engine, dir);

    printf("models\n");
    path = join(dir, "unet_transpose.onnx");
    OK(ichseg_model_load(engine, path, NULL, &model_path));
    REQUIRE(model_path != NULL);
    bytes = read_file(path, &len);
    REQUIRE(bytes != NULL);
    ichseg_segment_options_init(&so);
    so.batch = 2;
    OK(ichseg_model_load_from_memory(engine, bytes, len, &so, &model_mem));
    REQUIRE(model_mem != NULL);
    free(bytes); /* the library keeps its own copy */
    /* Models outlive their engine. */
    ichseg_engine_free(engine);

    memset(&r, 0, sizeof r);
    REQUIRE(load_reference(dir, &r));
    mask = malloc(r.n);
    prob = malloc(r.n * 4);
    REQUIRE(mask && prob);
    test_reference_float(model_path, &r, mask, prob);
    test_intracranial(dir, &r, mask);
    test_low_memory(dir, &r, mask);
    test_int16(model_path, model_mem, &r);
    test_cancel(model_mem, &r);
    test_segment_errors(model_path, &r);
    test_threads(model_path, &r, mask, prob);
    test_pseudo(dir, &r);
    test_dicom(model_path, dir);
    if (argc > 2) {
        test_nifti(model_path, dir, argv[2]);
    } else {
        printf("(no CT_SMALL_NII given: whole-pipeline check skipped)\n");
    }

    ichseg_model_free(model_path);
    ichseg_model_free(model_mem);
    free(mask);
    free(prob);
    free(path);
    free_reference(&r);

    printf("%d checks, %d failed\n", checks, failures);
    if (failures != 0) {
        return 1;
    }
    printf("all C ABI checks passed\n");
    return 0;
}
