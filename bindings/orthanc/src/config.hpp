// The plugin's settings: the "Ichseg" section of Orthanc's configuration (docs/ORTHANC.md).
#pragma once

#include <json/json.h>

#include <cstdint>
#include <optional>
#include <regex>
#include <string>

namespace ichseg_orthanc {

// The user-defined series metadata the plugin keeps its state in; Orthanc's "UserMetadata"
// must declare both names (any free numbers in 1024..65535).
inline constexpr const char* kStateMetadata = "IchsegState";
inline constexpr const char* kReportMetadata = "IchsegReport";

// Which stable series are segmented automatically. Patterns are ECMAScript regular expressions,
// case-insensitive, searched anywhere in the tag's value; "" matches anything (even a missing tag).
struct SeriesFilter {
    std::string modality = "CT";  // exact (case-insensitive); "" = any
    std::string body_part;        // BodyPartPattern: on BodyPartExamined, e.g. "HEAD|BRAIN"
    std::string description;      // DescriptionPattern: on SeriesDescription
    uint32_t min_instances = 2;   // fewer instances: not a volume, skipped

    // Why a series with these tags does not pass ("" when it does).
    std::string rejects(const std::string& modality, const std::string& body_part,
                        const std::string& description, std::size_t instances) const;
};

struct Config {
    std::string model;          // U-Net ONNX path (required)
    bool auto_segment = true;   // segment every stable series that passes the filter
    float threshold = 0.5f;     // bleed probability threshold, [0, 1]
    std::optional<double> min_lesion_ml; // small-lesion filter, >= 0; unset: the model's
    std::string device = "auto";  // auto | cpu | cuda
    uint32_t threads = 0;       // 0 = one per core
    uint32_t queue_size = 16;   // series waiting for the worker, 1..10000
    uint64_t memory_limit_mb = 0;  // per series (decoded voxels and the segmentation's buffers)
    std::string temporary_directory;  // "" = $TMPDIR or /tmp
    SeriesFilter filter;

    // The "model" object of the status and of each series' report: the model's name and path
    // with the settings segmentation runs it at (min_lesion_ml null: the model's own).
    Json::Value model_report(const std::string& name, const std::string& path) const;
};

// Reads the "Ichseg" section of Orthanc's whole configuration and checks that "UserMetadata"
// declares the plugin's metadata. Throws std::runtime_error with the reason (the plugin then
// does not register).
Config parse_config(const Json::Value& orthanc_configuration);

}  // namespace ichseg_orthanc
