/* docs/C-API.md: the minimal C program. Segments a small synthetic volume (float32 HU) with the
 * U-Net given as argv[1] and prints the lesions; every status is checked. Built against an
 * installed libichseg with pkg-config by tests/packaging/run.sh:
 *
 *     cc minimal.c $(pkg-config --cflags --libs ichseg) -o minimal
 */
#include "ichseg.h"

#include <stdio.h>
#include <stdlib.h>

static int fail(const char* what, IchsegStatus status) {
    fprintf(stderr, "%s failed (status %d): %s\n", what, (int)status, ichseg_last_error_message());
    return 1;
}

int main(int argc, char** argv) {
    if (argc != 2) {
        fprintf(stderr, "usage: minimal unet.onnx\n");
        return 2;
    }
    if (ichseg_abi_version() != ICHSEG_ABI_VERSION) {
        fprintf(stderr, "header ABI %d, library ABI %u\n", ICHSEG_ABI_VERSION, ichseg_abi_version());
        return 1;
    }
    IchsegEngineOptions eo;
    ichseg_engine_options_init(&eo);
    eo.threads = 1;
    eo.device = ICHSEG_DEVICE_CPU;
    IchsegEngine* engine = NULL;
    IchsegStatus s = ichseg_engine_create(&eo, &engine);
    if (s != ICHSEG_STATUS_OK) return fail("ichseg_engine_create", s);

    IchsegModel* model = NULL;
    s = ichseg_model_load(engine, argv[1], NULL, &model);
    ichseg_engine_free(engine); /* the model keeps what it needs */
    if (s != ICHSEG_STATUS_OK) return fail("ichseg_model_load", s);

    enum { NX = 48, NY = 40, NZ = 3, N = NX * NY * NZ };
    float* hu = malloc(sizeof(float) * N);
    unsigned char* mask = malloc(N);
    for (int i = 0; i < N; i++) hu[i] = (i % 7 == 0) ? 70.0f : 35.0f;

    IchsegVolumeDesc v;
    ichseg_volume_desc_init(&v);
    v.data = hu;
    v.voxel_type = ICHSEG_VOXEL_TYPE_F32;
    v.dims[0] = NX;
    v.dims[1] = NY;
    v.dims[2] = NZ;
    v.spacing[0] = 0.5;
    v.spacing[1] = 0.5;
    v.spacing[2] = 5.0;
    IchsegResult* result = NULL;
    s = ichseg_segment(model, &v, mask, N, NULL, 0, NULL, NULL, &result);
    if (s == ICHSEG_STATUS_OK) {
        size_t count = 0;
        double ml = 0;
        ichseg_result_lesion_count(result, &count);
        ichseg_result_total_volume_ml(result, &ml);
        printf("ichseg %s: %zu lesion(s), %.3f mL\n", ichseg_version_string(), count, ml);
    }
    ichseg_result_free(result);
    ichseg_model_free(model);
    free(hu);
    free(mask);
    if (s != ICHSEG_STATUS_OK) return fail("ichseg_segment", s);
    printf("minimal done\n");
    return 0;
}
