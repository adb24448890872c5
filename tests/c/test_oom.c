/* Run under a small address-space limit (tests/c_abi.rs: `ulimit -v 3500000`): a 32768x32768x1
 * uint8 volume needs 4 GiB as HU floats, more than the process may map. ichseg_segment() must
 * return ICHSEG_STATUS_OUT_OF_MEMORY, write nothing and leave the process and its handles
 * usable: a small volume segments afterwards. An engine memory limit refuses the same volume
 * before anything is allocated.
 *
 * Usage: test_oom FIXTURE_DIR (tests/fixtures/unet). */
#include "ichseg.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static int failures = 0;

#define CHECK(cond, ...)                                                                          \
    do {                                                                                          \
        if (!(cond)) {                                                                            \
            failures++;                                                                           \
            fprintf(stderr, "FAIL line %d: ", __LINE__);                                          \
            fprintf(stderr, __VA_ARGS__);                                                         \
            fprintf(stderr, "\n");                                                                \
        }                                                                                         \
    } while (0)

static IchsegStatus segment_u8(const IchsegModel *model, const uint8_t *voxels, size_t nx, size_t ny,
                               uint8_t *mask)
{
    IchsegVolumeDesc d;
    ichseg_volume_desc_init(&d);
    d.voxel_type = ICHSEG_VOXEL_TYPE_U8;
    d.data = voxels;
    d.dims[0] = nx;
    d.dims[1] = ny;
    d.dims[2] = 1;
    d.spacing[0] = d.spacing[1] = 0.5;
    d.spacing[2] = 5.0;
    return ichseg_segment(model, &d, mask, nx * ny, NULL, 0, NULL, NULL, NULL);
}

int main(int argc, char **argv)
{
    const size_t side = 32768, n = side * side;
    char path[4096];
    IchsegEngineOptions eo;
    IchsegEngine *engine = NULL, *capped = NULL;
    IchsegModel *model = NULL, *capped_model = NULL;
    uint8_t *volume, *mask, small[64 * 64], small_mask[64 * 64];
    IchsegStatus st;

    if (argc < 2) {
        fprintf(stderr, "usage: %s FIXTURE_DIR\n", argv[0]);
        return 2;
    }
    snprintf(path, sizeof path, "%s/unet_transpose.onnx", argv[1]);
    ichseg_engine_options_init(&eo);
    eo.threads = 1;
    eo.device = ICHSEG_DEVICE_CPU;
    if (ichseg_engine_create(&eo, &engine) != ICHSEG_STATUS_OK ||
        ichseg_model_load(engine, path, NULL, &model) != ICHSEG_STATUS_OK) {
        fprintf(stderr, "setup failed: %s\n", ichseg_last_error_message());
        return 1;
    }
    volume = calloc(n, 1);
    mask = calloc(n, 1);
    if (!volume || !mask) {
        fprintf(stderr, "the test itself could not allocate 2 GiB: raise the ulimit\n");
        return 1;
    }
    mask[0] = mask[n - 1] = 0xAB;

    st = segment_u8(model, volume, side, side, mask);
    CHECK(st == ICHSEG_STATUS_OUT_OF_MEMORY, "status %s: %s", ichseg_status_name(st), ichseg_last_error_message());
    CHECK(strstr(ichseg_last_error_message(), "out of memory") != NULL, "message: %s", ichseg_last_error_message());
    CHECK(mask[0] == 0xAB && mask[n - 1] == 0xAB, "mask written by a failed call");
    printf("32768x32768x1 under the address-space limit: %s (%s)\n", ichseg_status_name(st),
           ichseg_last_error_message());

    /* The same volume with a 256 MiB engine limit: refused before any allocation. */
    eo.memory_limit_mb = 256;
    if (ichseg_engine_create(&eo, &capped) != ICHSEG_STATUS_OK ||
        ichseg_model_load(capped, path, NULL, &capped_model) != ICHSEG_STATUS_OK) {
        fprintf(stderr, "capped setup failed: %s\n", ichseg_last_error_message());
        return 1;
    }
    st = segment_u8(capped_model, volume, side, side, mask);
    CHECK(st == ICHSEG_STATUS_OUT_OF_MEMORY && strstr(ichseg_last_error_message(), "memory limit is 256.0 MiB"),
          "status %s: %s", ichseg_status_name(st), ichseg_last_error_message());

    {
        /* pseudo-labelling under the same limit: refused before anything is allocated */
        char cls[4096];
        const char *paths[1];
        const char *taps[1] = {"/layer1/relu_1/Relu_output_0,/layer2/relu_1/Relu_output_0"};
        IchsegPseudoLabeler *pl = NULL;
        IchsegVolumeDesc d;
        snprintf(cls, sizeof cls, "%s/../classifier/tiny_classifier.onnx", argv[1]);
        paths[0] = cls;
        if (ichseg_pseudo_labeler_create(capped, paths, 1, taps, NULL, &pl) != ICHSEG_STATUS_OK) {
            fprintf(stderr, "labeler setup failed: %s\n", ichseg_last_error_message());
            return 1;
        }
        ichseg_volume_desc_init(&d);
        d.voxel_type = ICHSEG_VOXEL_TYPE_U8;
        d.data = volume;
        d.dims[0] = d.dims[1] = side;
        d.dims[2] = 1;
        d.spacing[0] = d.spacing[1] = 0.5;
        d.spacing[2] = 5.0;
        st = ichseg_pseudo_label(pl, &d, NULL, 0, mask, n, NULL, 0, NULL, NULL);
        CHECK(st == ICHSEG_STATUS_OUT_OF_MEMORY && strstr(ichseg_last_error_message(), "pseudo-labelling"),
              "pseudo status %s: %s", ichseg_status_name(st), ichseg_last_error_message());
        CHECK(mask[0] == 0xAB && mask[n - 1] == 0xAB, "mask written by a failed pseudo call");
        ichseg_pseudo_labeler_free(pl);
    }

    /* The process and the handles live on. */
    memset(small, 40, sizeof small);
    st = segment_u8(model, small, 64, 64, small_mask);
    CHECK(st == ICHSEG_STATUS_OK, "small volume after the failure: %s", ichseg_last_error_message());
    st = segment_u8(capped_model, small, 64, 64, small_mask);
    CHECK(st == ICHSEG_STATUS_OK, "small volume under the limit: %s", ichseg_last_error_message());

    ichseg_model_free(model);
    ichseg_model_free(capped_model);
    ichseg_engine_free(engine);
    ichseg_engine_free(capped);
    free(volume);
    free(mask);
    if (failures) {
        fprintf(stderr, "%d check(s) failed\n", failures);
        return 1;
    }
    printf("all out-of-memory checks passed\n");
    return 0;
}
