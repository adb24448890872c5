// itk_segment: what a viewer plugin does with libichseg. ITK reads a head CT (a NIfTI file, or
// a folder holding one DICOM series), the voxels are handed to libichseg as they are in memory
// (HU as float, x fastest), the hemorrhage mask comes back into a buffer the plugin owns, and
// ITK writes it with the input's origin, spacing and direction; the lesions are printed.
//
//   itk_segment unet.onnx INPUT(.nii[.gz] | dicom-folder) mask.nii.gz [--device cpu|cuda|auto]
#include "ichseg.hpp"

#include <itkGDCMImageIO.h>
#include <itkGDCMSeriesFileNames.h>
#include <itkImage.h>
#include <itkImageFileReader.h>
#include <itkImageFileWriter.h>
#include <itkImageSeriesReader.h>

#include <cstdio>
#include <filesystem>
#include <string>
#include <vector>

using CtImage = itk::Image<float, 3>;
using MaskImage = itk::Image<unsigned char, 3>;

// A NIfTI (or any single file ITK reads), or the first DICOM series in a folder.
static CtImage::Pointer read_ct(const std::string& path) {
    if (!std::filesystem::is_directory(path)) {
        auto reader = itk::ImageFileReader<CtImage>::New();
        reader->SetFileName(path);
        reader->Update();
        return reader->GetOutput();
    }
    auto names = itk::GDCMSeriesFileNames::New();
    names->SetDirectory(path);
    const auto& series = names->GetSeriesUIDs();
    if (series.empty()) throw std::runtime_error("no DICOM series in " + path);
    auto reader = itk::ImageSeriesReader<CtImage>::New();
    reader->SetImageIO(itk::GDCMImageIO::New());  // applies RescaleSlope/Intercept: HU
    reader->SetFileNames(names->GetFileNames(series.front()));
    reader->Update();
    return reader->GetOutput();
}

// ITK's index-to-physical transform (direction * spacing, origin) as libichseg's row-major 4x4
// voxel-to-world matrix. ITK physical space is LPS; NIfTI world (and libichseg's report) is RAS:
// flip the first two rows.
static ichseg::VolumeView::Affine affine_of(const CtImage* image) {
    ichseg::VolumeView::Affine a{};
    const auto& d = image->GetDirection();
    const auto& s = image->GetSpacing();
    const auto& o = image->GetOrigin();
    for (unsigned r = 0; r < 3; r++) {
        const double sign = r < 2 ? -1.0 : 1.0;
        for (unsigned c = 0; c < 3; c++) a[4 * r + c] = sign * d[r][c] * s[c];
        a[4 * r + 3] = sign * o[r];
    }
    a[15] = 1.0;
    return a;
}

int main(int argc, char** argv) {
    if (argc != 4 && argc != 6) {
        std::fprintf(stderr, "usage: itk_segment unet.onnx INPUT mask.nii.gz [--device cpu|cuda|auto]\n");
        return 2;
    }
    ichseg::Device device = ichseg::Device::Auto;
    if (argc == 6) {
        const std::string d = argv[5];
        device = d == "cpu" ? ichseg::Device::Cpu : d == "cuda" ? ichseg::Device::Cuda : ichseg::Device::Auto;
    }
    try {
        CtImage::Pointer ct = read_ct(argv[2]);
        const auto size = ct->GetLargestPossibleRegion().GetSize();
        const auto spacing = ct->GetSpacing();
        const ichseg::VolumeView::Dims dims{size[0], size[1], size[2]};
        const std::size_t n = dims[0] * dims[1] * dims[2];

        ichseg::Engine engine({0, device});
        std::printf("device    %s (%s)\n", engine.device_name().c_str(), engine.device_note().c_str());
        ichseg::Model model = ichseg::Model::load(engine, argv[1]);

        // ITK's buffer is already x fastest: no copy of the CT.
        ichseg::VolumeView view(ichseg::Span<const float>(ct->GetBufferPointer(), n), dims,
                                {spacing[0], spacing[1], spacing[2]});
        view.affine(affine_of(ct));
        std::vector<uint8_t> mask(n);
        ichseg::Result result = model.segment(view, mask, {}, [&](uint32_t done, uint32_t total) {
            std::fprintf(stderr, "\rsegmenting %u/%u slices", done, total);
            return true;  // a viewer returns false here when its Cancel button was pressed
        });
        std::fprintf(stderr, "\n");

        auto out = MaskImage::New();
        out->CopyInformation(ct);  // origin, spacing, direction
        out->SetRegions(ct->GetLargestPossibleRegion());
        out->Allocate();
        std::copy(mask.begin(), mask.end(), out->GetBufferPointer());
        auto writer = itk::ImageFileWriter<MaskImage>::New();
        writer->SetFileName(argv[3]);
        writer->SetInput(out);
        writer->Update();

        const auto lesions = result.lesions();
        std::printf("lesions   %zu, total %.2f mL\n", lesions.size(), result.total_volume_ml());
        for (std::size_t i = 0; i < lesions.size(); i++) {
            const IchsegLesion& l = lesions[i];
            std::printf("  #%zu %8.2f mL, slices %u-%u, centroid (%.1f, %.1f, %.1f) mm\n", i + 1, l.volume_ml,
                        l.first_slice, l.last_slice, l.centroid_world_mm[0], l.centroid_world_mm[1],
                        l.centroid_world_mm[2]);
        }
    } catch (const ichseg::Error& e) {
        std::fprintf(stderr, "ichseg error (%s): %s\n", e.status_name(), e.what());
        return 1;
    } catch (const std::exception& e) {
        std::fprintf(stderr, "error: %s\n", e.what());
        return 1;
    }
    std::printf("itk_segment done\n");
    return 0;
}
