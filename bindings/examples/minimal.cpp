// docs/C-API.md: the minimal C++ program. Built against an installed libichseg three ways by
// tests/packaging/run.sh:
// CMake find_package (shared and static) and pkg-config. Segments a small synthetic volume
// with the fixture U-Net given as argv[1] through the C++ wrapper.
#include "ichseg.hpp"

#include <cstdio>
#include <vector>

int main(int argc, char** argv) {
    if (argc != 2) {
        std::fprintf(stderr, "usage: minimal unet.onnx\n");
        return 2;
    }
    try {
        ichseg::Engine engine({1, ichseg::Device::Cpu});
        ichseg::Model model = ichseg::Model::load(engine, argv[1]);
        const size_t nx = 48, ny = 40, nz = 3;
        std::vector<float> hu(nx * ny * nz, 35.0f);
        for (size_t i = 0; i < hu.size(); i += 7) hu[i] = 70.0f;
        std::vector<uint8_t> mask(hu.size());
        ichseg::Result r = model.segment(ichseg::VolumeView(hu, {nx, ny, nz}, {0.5, 0.5, 5.0}), mask);
        std::printf("ichseg %s: %zu lesion(s), %.3f mL\n", ichseg::version().c_str(), r.lesions().size(),
                    r.total_volume_ml());
    } catch (const ichseg::Error& e) {
        std::fprintf(stderr, "ichseg error %d: %s\n", static_cast<int>(e.status()), e.what());
        return 1;
    }
    std::printf("minimal done\n");
    return 0;
}
