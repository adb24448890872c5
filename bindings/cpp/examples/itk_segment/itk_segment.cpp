// itk_segment: what a viewer plugin does with libichseg. ITK reads a head CT (a NIfTI file, or
// a folder holding one DICOM series), the voxels are handed to libichseg as they are in memory
// (HU as float, x fastest), the mask comes back into a buffer the plugin owns, and ITK writes
// it with the input's origin, spacing and direction.
//
//   segmentation (a U-Net; prints the lesions):
//     itk_segment unet.onnx INPUT OUTPUT [--device cpu|cuda|auto]
//   pseudo-labelling (slice classifiers -> SF-CAM -> SCA -> dense CRF; prints the mask volume):
//     itk_segment --classifier A.onnx [--classifier B.onnx ...] [--labels slices.csv | --use-predictions]
//                 [--no-crf] [--device cpu|cuda|auto] INPUT OUTPUT
//
// INPUT is a .nii[.gz] file or a DICOM series folder; OUTPUT (a uint8 mask, e.g. mask.nii.gz) may
// also be given as -o OUTPUT. The labels CSV has the header `slice,label`: 0-based axial slice,
// 1 = bleeding, 0 = not, every slice once (`ichseg pseudo-label --labels` reads the same file).
// Without labels the classifiers decide which slices bleed.
#include "ichseg.hpp"

#include <itkGDCMImageIO.h>
#include <itkGDCMSeriesFileNames.h>
#include <itkImage.h>
#include <itkImageFileReader.h>
#include <itkImageFileWriter.h>
#include <itkImageSeriesReader.h>

#include <algorithm>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <map>
#include <optional>
#include <sstream>
#include <string>
#include <vector>

using CtImage = itk::Image<float, 3>;
using MaskImage = itk::Image<unsigned char, 3>;

static const char* const kUsage =
    "usage: itk_segment unet.onnx INPUT OUTPUT [--device cpu|cuda|auto]\n"
    "       itk_segment --classifier A.onnx [--classifier B.onnx ...] [--labels slices.csv | --use-predictions]\n"
    "                   [--no-crf] [--device cpu|cuda|auto] INPUT OUTPUT\n"
    "INPUT: .nii[.gz] or a DICOM series folder; OUTPUT may also be given as -o OUTPUT\n";

// A mistake on the command line: the usage is printed and the exit status is 2.
struct UsageError : std::runtime_error {
    using std::runtime_error::runtime_error;
};

struct Args {
    std::string model, input, output;     // model: the U-Net (segmentation mode only)
    std::vector<std::string> classifiers; // non-empty: pseudo-labelling mode
    std::string labels;
    bool use_predictions = false;
    bool crf = true;
    ichseg::Device device = ichseg::Device::Auto;
};

static Args parse_args(int argc, char** argv) {
    Args a;
    std::vector<std::string> positional;
    for (int i = 1; i < argc; i++) {
        const std::string arg = argv[i];
        auto value = [&]() -> std::string {
            if (i + 1 >= argc) throw UsageError(arg + " needs a value");
            return argv[++i];
        };
        if (arg == "--device") {
            const std::string d = value();
            if (d == "cpu") a.device = ichseg::Device::Cpu;
            else if (d == "cuda") a.device = ichseg::Device::Cuda;
            else if (d == "auto") a.device = ichseg::Device::Auto;
            else throw UsageError("--device " + d + ": expected cpu, cuda or auto");
        } else if (arg == "--classifier") {
            a.classifiers.push_back(value());
        } else if (arg == "--labels") {
            a.labels = value();
        } else if (arg == "--use-predictions") {
            a.use_predictions = true;
        } else if (arg == "--no-crf") {
            a.crf = false;
        } else if (arg == "-o" || arg == "--output") {
            a.output = value();
        } else if (arg.size() > 1 && arg[0] == '-') {
            throw UsageError("unknown option " + arg);
        } else {
            positional.push_back(arg);
        }
    }
    const bool pseudo = !a.classifiers.empty();
    if (!pseudo && (!a.labels.empty() || a.use_predictions || !a.crf)) {
        throw UsageError("--labels, --use-predictions and --no-crf need --classifier (pseudo-labelling)");
    }
    if (!a.labels.empty() && a.use_predictions) throw UsageError("give --labels or --use-predictions, not both");
    // segmentation: MODEL INPUT [OUTPUT]; pseudo-labelling: INPUT [OUTPUT]; OUTPUT here or -o
    const std::size_t want = (pseudo ? 1 : 2) + (a.output.empty() ? 1 : 0);
    if (positional.size() != want) {
        throw UsageError(std::to_string(positional.size()) + " argument(s) where " + std::to_string(want) +
                         " were expected");
    }
    std::size_t k = 0;
    if (!pseudo) a.model = positional[k++];
    a.input = positional[k++];
    if (a.output.empty()) a.output = positional[k];
    return a;
}

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
    reader->SetFileNames(names->GetFileNames(series.front()));  // sorted along the slice normal
    reader->Update();
    return reader->GetOutput();
}

// ITK's index-to-physical transform (direction * spacing, origin) as libichseg's row-major 4x4
// voxel-to-world matrix. ITK physical space is LPS (for NIfTI and DICOM alike); NIfTI world (and
// libichseg's report) is RAS: flip the first two rows.
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

// One byte per axial slice (1 = bleeding) from a `slice,label` CSV (columns in any order, extra
// columns, blank lines, spaces and double quotes tolerated), every slice of the volume once.
static std::vector<uint8_t> read_slice_labels(const std::string& path, std::size_t nz) {
    std::ifstream in(path);
    if (!in) throw std::runtime_error(path + ": cannot open the slice labels");
    auto split = [](const std::string& line) {
        std::vector<std::string> fields;
        std::stringstream ss(line);
        for (std::string f; std::getline(ss, f, ',');) {
            const char* strip = " \t\r\"";
            const auto b = f.find_first_not_of(strip);
            fields.push_back(b == std::string::npos ? "" : f.substr(b, f.find_last_not_of(strip) - b + 1));
        }
        return fields;
    };
    std::map<std::size_t, uint8_t> labels;
    long slice_col = -1, label_col = -1;
    std::vector<std::string> header;
    std::string line;
    for (std::size_t n = 1; std::getline(in, line); n++) {
        if (line.find_first_not_of(" \t\r") == std::string::npos) continue;
        const std::string where = path + " line " + std::to_string(n) + ": ";
        const auto fields = split(line);
        if (header.empty()) {
            header = fields;
            for (std::size_t i = 0; i < fields.size(); i++) {
                if (fields[i] == "slice") slice_col = static_cast<long>(i);
                if (fields[i] == "label") label_col = static_cast<long>(i);
            }
            if (slice_col < 0 || label_col < 0) {
                throw std::runtime_error(where + "expected the header `slice,label` (0-based slice, 0/1), got \"" +
                                         line + "\" (BCIHM's CSV: use `ichseg pseudo-label --labels`)");
            }
            continue;
        }
        auto number = [&](long col) {
            if (static_cast<std::size_t>(col) >= fields.size()) {
                throw std::runtime_error(where + std::to_string(fields.size()) + " field(s), the header has " +
                                         std::to_string(header.size()));
            }
            const std::string& v = fields[static_cast<std::size_t>(col)];
            if (v.empty() || v.size() > 9 || v.find_first_not_of("0123456789") != std::string::npos) {
                throw std::runtime_error(where + header[static_cast<std::size_t>(col)] + " = \"" + v +
                                         "\" is not a whole number >= 0");
            }
            return static_cast<std::size_t>(std::stoul(v));
        };
        const std::size_t z = number(slice_col), label = number(label_col);
        if (label > 1) throw std::runtime_error(where + "label = " + std::to_string(label) + ": expected 0 or 1");
        if (z >= nz) {
            throw std::runtime_error(where + "slice " + std::to_string(z) + " but the volume has " +
                                     std::to_string(nz) + " slice(s) (0-based)");
        }
        if (!labels.emplace(z, static_cast<uint8_t>(label)).second) {
            throw std::runtime_error(where + "slice " + std::to_string(z) + " is labelled twice");
        }
    }
    if (header.empty()) throw std::runtime_error(path + ": empty label file");
    std::vector<uint8_t> out(nz);
    for (std::size_t z = 0; z < nz; z++) {
        const auto it = labels.find(z);
        if (it == labels.end()) {
            throw std::runtime_error(path + " has no label for slice " + std::to_string(z) +
                                     " (0-based); every slice needs one");
        }
        out[z] = it->second;
    }
    return out;
}

// The slices (0-based) where `flags` (one per slice) is nonzero, as "3 4 5" ("none" if none).
static std::string slice_list(const std::vector<uint8_t>& flags) {
    std::string s;
    for (std::size_t z = 0; z < flags.size(); z++) {
        if (flags[z]) s += (s.empty() ? "" : " ") + std::to_string(z);
    }
    return s.empty() ? "none" : s;
}

static bool print_progress(const char* what, uint32_t done, uint32_t total) {
    std::fprintf(stderr, "\r%s %u/%u slices", what, done, total);
    return true;  // a viewer returns false here when its Cancel button was pressed
}

int main(int argc, char** argv) {
    Args args;
    try {
        args = parse_args(argc, argv);
    } catch (const UsageError& e) {
        std::fprintf(stderr, "itk_segment: %s\n%s", e.what(), kUsage);
        return 2;
    }
    try {
        CtImage::Pointer ct = read_ct(args.input);
        const auto size = ct->GetLargestPossibleRegion().GetSize();
        const auto spacing = ct->GetSpacing();
        const ichseg::VolumeView::Dims dims{size[0], size[1], size[2]};
        const std::size_t n = dims[0] * dims[1] * dims[2];
        const std::size_t plane = dims[0] * dims[1];
        // Read before any model is loaded: a bad CSV fails in milliseconds.
        const std::vector<uint8_t> slice_labels =
            args.labels.empty() ? std::vector<uint8_t>{} : read_slice_labels(args.labels, dims[2]);

        ichseg::Engine engine({0, args.device});
        std::printf("device    %s (%s)\n", engine.device_name().c_str(), engine.device_note().c_str());

        // ITK's buffer is already x fastest: no copy of the CT.
        ichseg::VolumeView view(ichseg::Span<const float>(ct->GetBufferPointer(), n), dims,
                                {spacing[0], spacing[1], spacing[2]});
        view.affine(affine_of(ct));
        std::vector<uint8_t> mask(n);
        std::optional<ichseg::Result> result;  // segmentation's lesions
        if (args.classifiers.empty()) {
            ichseg::Model model = ichseg::Model::load(engine, args.model);
            result = model.segment(view, mask, {}, [](uint32_t d, uint32_t t) { return print_progress("segmenting", d, t); });
        } else {
            ichseg::PseudoOptions options;
            options.crf = args.crf;
            // Taps from each classifier's ichseg.taps metadata, as `ichseg pseudo-label` does by default.
            const ichseg::PseudoLabeler labeler = ichseg::PseudoLabeler::create(engine, args.classifiers, {}, options);
            labeler.label(view, slice_labels, mask, {},
                          [](uint32_t d, uint32_t t) { return print_progress("pseudo-labelling", d, t); });
        }
        std::fprintf(stderr, "\n");

        auto out = MaskImage::New();
        out->CopyInformation(ct);  // origin, spacing, direction
        out->SetRegions(ct->GetLargestPossibleRegion());
        out->Allocate();
        std::copy(mask.begin(), mask.end(), out->GetBufferPointer());
        auto writer = itk::ImageFileWriter<MaskImage>::New();
        writer->SetFileName(args.output);
        writer->SetInput(out);
        writer->Update();

        if (result) {
            const auto lesions = result->lesions();
            std::printf("lesions   %zu, total %.2f mL\n", lesions.size(), result->total_volume_ml());
            for (std::size_t i = 0; i < lesions.size(); i++) {
                const IchsegLesion& l = lesions[i];
                std::printf("  #%zu %8.2f mL, slices %u-%u, centroid (%.1f, %.1f, %.1f) mm\n", i + 1, l.volume_ml,
                            l.first_slice, l.last_slice, l.centroid_world_mm[0], l.centroid_world_mm[1],
                            l.centroid_world_mm[2]);
            }
        } else {
            std::vector<uint8_t> marked(dims[2]);  // slices holding mask voxels
            std::size_t voxels = 0;
            for (std::size_t i = 0; i < n; i++) {
                if (mask[i]) {
                    voxels++;
                    marked[i / plane] = 1;
                }
            }
            const auto positive = static_cast<std::size_t>(std::count(slice_labels.begin(), slice_labels.end(), 1));
            if (slice_labels.empty()) {
                std::printf("slices    decided by %zu classifier(s)\n", args.classifiers.size());
            } else {
                std::printf("slices    %zu of %zu positive (labels): %s\n", positive, dims[2],
                            slice_list(slice_labels).c_str());
            }
            std::printf("mask      %zu voxels, %.2f mL, on slices %s\n", voxels,
                        voxels * spacing[0] * spacing[1] * spacing[2] / 1000.0, slice_list(marked).c_str());
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
