// The segmentation of one series folder with libichseg, independent of Orthanc: read the DICOM
// series, segment it, encode the DICOM-SEG and describe the result as JSON.
#pragma once

#include <ichseg.hpp>
#include <json/json.h>

#include <cstdint>
#include <functional>
#include <stdexcept>
#include <string>
#include <vector>

#include "config.hpp"

namespace ichseg_orthanc {

// A failure to record on the series: a short kind ("invalid-image", "not-ct", "model",
// "out-of-memory", ...) and the full reason (libichseg's status and message).
class Failure : public std::runtime_error {
public:
    Failure(std::string kind, const std::string& reason) : std::runtime_error(reason), kind_(std::move(kind)) {}
    const std::string& kind() const noexcept { return kind_; }

private:
    std::string kind_;
};

struct Segmentation {
    std::vector<uint8_t> seg;  // the DICOM-SEG file
    Json::Value report;        // series, volume, lesions, model, timings (seconds)
};

// The engine and the U-Net, loaded once at start-up and shared by every job.
class Segmenter {
public:
    // Throws Failure (kind "model" or "device") when the engine or the model cannot be made.
    explicit Segmenter(const Config& config);

    // Segments the series `series_uid` among the DICOM files under `folder`. Throws Failure
    // (kind "cancelled" once `keep_going` returns false, asked after every slice).
    Segmentation run(const std::string& folder, const std::string& series_uid,
                     const std::function<bool()>& keep_going) const;

    const std::string& device() const noexcept { return device_; }
    const std::string& device_note() const noexcept { return device_note_; }
    uint32_t threads() const noexcept { return threads_; }
    const std::string& model_path() const noexcept { return model_path_; }
    const std::string& model_name() const noexcept { return model_name_; }

private:
    Config config_;
    ichseg::Engine engine_;
    ichseg::Model model_;
    std::string device_, device_note_, model_path_, model_name_;
    uint32_t threads_ = 0;
};

// The failure kind of a libichseg status.
std::string failure_kind(IchsegStatus status);

}  // namespace ichseg_orthanc
