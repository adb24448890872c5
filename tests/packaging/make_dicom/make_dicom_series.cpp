// make_dicom_series IN.nii[.gz] OUTDIR: writes a CT volume as a DICOM series (one file per axial
// slice, int16 stored as HU + 1024 with RescaleIntercept -1024, as scanners do), so that the
// packaging test exercises itk_segment's DICOM path without a committed DICOM fixture. It then
// reads the series back as ITK (and itk_segment) does and checks that every HU value survived
// exactly and the geometry within 1e-4 mm; any difference fails here, before itk_segment runs.
#include <itkGDCMImageIO.h>
#include <itkGDCMSeriesFileNames.h>
#include <itkImage.h>
#include <itkImageFileReader.h>
#include <itkImageSeriesReader.h>
#include <itkImageSeriesWriter.h>
#include <itkMetaDataObject.h>

#include <cmath>
#include <cstdio>
#include <filesystem>
#include <sstream>
#include <string>

using Ct = itk::Image<float, 3>;
using Stored = itk::Image<short, 3>;
using Slice = itk::Image<short, 2>;

static std::string join(const double* v, int n) {
    std::ostringstream s;
    s.precision(10);  // DICOM decimal strings hold at most 16 characters
    for (int i = 0; i < n; i++) s << (i ? "\\" : "") << v[i];
    return s.str();
}

int main(int argc, char** argv) {
    if (argc != 3) {
        std::fprintf(stderr, "usage: make_dicom_series IN.nii[.gz] OUTDIR\n");
        return 2;
    }
    try {
        auto reader = itk::ImageFileReader<Ct>::New();
        reader->SetFileName(argv[1]);
        reader->Update();
        Ct::Pointer ct = reader->GetOutput();

        // HU as int16: the writer stores (HU - intercept) / slope, i.e. HU + 1024.
        auto hu = Stored::New();
        hu->CopyInformation(ct);
        hu->SetRegions(ct->GetLargestPossibleRegion());
        hu->Allocate();
        const std::size_t n = ct->GetLargestPossibleRegion().GetNumberOfPixels();
        for (std::size_t i = 0; i < n; i++) {
            const float v = ct->GetBufferPointer()[i];
            if (v != std::round(v) || v < -1024 || v > 31743) {
                throw std::runtime_error("voxel " + std::to_string(i) + " = " + std::to_string(v) +
                                         " is not a whole HU in [-1024, 31743]");
            }
            hu->GetBufferPointer()[i] = static_cast<short>(v);
        }

        // One dictionary per slice: GDCMImageIO takes each file's position and orientation from
        // these tags (the 2D slice it is given has no z).
        const auto size = ct->GetLargestPossibleRegion().GetSize();
        const auto& dir = ct->GetDirection();
        const double iop[6] = {dir[0][0], dir[1][0], dir[2][0], dir[0][1], dir[1][1], dir[2][1]};
        std::vector<itk::MetaDataDictionary> dicts(size[2]);
        itk::ImageSeriesWriter<Stored, Slice>::DictionaryArrayType dict_ptrs;
        for (unsigned z = 0; z < size[2]; z++) {
            Ct::PointType p;
            ct->TransformIndexToPhysicalPoint({{0, 0, static_cast<long>(z)}}, p);
            const double ipp[3] = {p[0], p[1], p[2]};
            auto& d = dicts[z];
            itk::EncapsulateMetaData<std::string>(d, "0008|0060", "CT");
            itk::EncapsulateMetaData<std::string>(d, "0028|0004", "MONOCHROME2");
            itk::EncapsulateMetaData<std::string>(d, "0020|0013", std::to_string(z + 1));
            itk::EncapsulateMetaData<std::string>(d, "0020|0032", join(ipp, 3));
            itk::EncapsulateMetaData<std::string>(d, "0020|0037", join(iop, 6));
            itk::EncapsulateMetaData<std::string>(d, "0018|0050", join(&ct->GetSpacing()[2], 1));
            itk::EncapsulateMetaData<std::string>(d, "0028|1052", "-1024");  // RescaleIntercept
            itk::EncapsulateMetaData<std::string>(d, "0028|1053", "1");      // RescaleSlope
            dict_ptrs.push_back(&d);
        }
        const std::string out_dir = argv[2];
        std::filesystem::create_directories(out_dir);
        std::vector<std::string> files;
        for (unsigned z = 0; z < size[2]; z++) files.push_back(out_dir + "/slice" + std::to_string(1000 + z) + ".dcm");
        auto writer = itk::ImageSeriesWriter<Stored, Slice>::New();
        writer->SetInput(hu);
        writer->SetImageIO(itk::GDCMImageIO::New());
        writer->SetFileNames(files);
        writer->SetMetaDataDictionaryArray(&dict_ptrs);
        writer->Update();

        // Read back the way itk_segment reads a folder.
        auto names = itk::GDCMSeriesFileNames::New();
        names->SetDirectory(out_dir);
        auto back_reader = itk::ImageSeriesReader<Ct>::New();
        back_reader->SetImageIO(itk::GDCMImageIO::New());
        back_reader->SetFileNames(names->GetFileNames(names->GetSeriesUIDs().at(0)));
        back_reader->Update();
        Ct::Pointer back = back_reader->GetOutput();
        if (back->GetLargestPossibleRegion() != ct->GetLargestPossibleRegion()) {
            throw std::runtime_error("the series read back has another size");
        }
        double geometry = 0.0;
        for (unsigned r = 0; r < 3; r++) {
            geometry = std::max(geometry, std::abs(back->GetOrigin()[r] - ct->GetOrigin()[r]));
            geometry = std::max(geometry, std::abs(back->GetSpacing()[r] - ct->GetSpacing()[r]));
            for (unsigned c = 0; c < 3; c++) {
                geometry = std::max(geometry, std::abs(back->GetDirection()[r][c] - ct->GetDirection()[r][c]));
            }
        }
        std::size_t differ = 0;
        for (std::size_t i = 0; i < n; i++) differ += back->GetBufferPointer()[i] != ct->GetBufferPointer()[i];
        if (differ != 0 || geometry > 1e-4) {
            throw std::runtime_error(std::to_string(differ) + " voxel(s) differ, geometry differs by " +
                                     std::to_string(geometry) + " read back from " + out_dir);
        }
        std::printf("wrote %u DICOM slices (int16, rescale intercept -1024) to %s; read back: HU identical, "
                    "geometry within %.1e\n",
                    static_cast<unsigned>(size[2]), out_dir.c_str(), geometry);
    } catch (const std::exception& e) {
        std::fprintf(stderr, "make_dicom_series: %s\n", e.what());
        return 1;
    }
    return 0;
}
