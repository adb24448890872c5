#include "config.hpp"

#include <algorithm>
#include <cctype>
#include <cmath>
#include <stdexcept>

namespace ichseg_orthanc {
namespace {

std::string lower(std::string s) {
    std::transform(s.begin(), s.end(), s.begin(), [](unsigned char c) { return static_cast<char>(std::tolower(c)); });
    return s;
}

[[noreturn]] void bad(const std::string& key, const std::string& why) {
    throw std::runtime_error("configuration \"Ichseg\".\"" + key + "\": " + why);
}

bool matches(const std::string& pattern, const std::string& value) {
    if (pattern.empty()) {
        return true;
    }
    return std::regex_search(value, std::regex(pattern, std::regex::ECMAScript | std::regex::icase));
}

uint64_t unsigned_value(const Json::Value& v, const std::string& key, uint64_t lo, uint64_t hi) {
    if (!v.isIntegral() || v.asLargestInt() < static_cast<Json::LargestInt>(lo) ||
        v.asLargestUInt() > hi) {
        bad(key, "must be an integer in " + std::to_string(lo) + ".." + std::to_string(hi));
    }
    return v.asLargestUInt();
}

std::string string_value(const Json::Value& v, const std::string& key) {
    if (!v.isString()) {
        bad(key, "must be a string");
    }
    return v.asString();
}

void check_pattern(const std::string& pattern, const std::string& key) {
    try {
        std::regex r(pattern, std::regex::ECMAScript | std::regex::icase);
    } catch (const std::regex_error& e) {
        bad(key, "is not a valid regular expression (" + std::string(e.what()) + ")");
    }
}

}  // namespace

std::string SeriesFilter::rejects(const std::string& mod, const std::string& part, const std::string& desc,
                                  std::size_t instances) const {
    if (!modality.empty() && lower(mod) != lower(modality)) {
        return "Modality \"" + mod + "\" is not " + modality;
    }
    if (!matches(body_part, part)) {
        return "BodyPartExamined \"" + part + "\" does not match BodyPartPattern \"" + body_part + "\"";
    }
    if (!matches(description, desc)) {
        return "SeriesDescription \"" + desc + "\" does not match DescriptionPattern \"" + description + "\"";
    }
    if (instances < min_instances) {
        return std::to_string(instances) + " instance(s), fewer than MinInstances " + std::to_string(min_instances);
    }
    return "";
}

Config parse_config(const Json::Value& root) {
    if (!root.isObject() || !root.isMember("Ichseg")) {
        throw std::runtime_error("no \"Ichseg\" section in the configuration (its \"Model\" is required)");
    }
    const Json::Value& s = root["Ichseg"];
    if (!s.isObject()) {
        throw std::runtime_error("configuration \"Ichseg\" must be an object");
    }
    Config c;
    static const char* known[] = {"Model",  "AutoSegment",   "Threshold",     "MinLesionMl",        "Device",
                                  "Threads", "QueueSize", "MemoryLimitMb", "TemporaryDirectory", "SeriesFilter"};
    for (const std::string& key : s.getMemberNames()) {
        if (std::find(std::begin(known), std::end(known), key) == std::end(known)) {
            bad(key, "unknown setting (see docs/ORTHANC.md)");
        }
    }
    if (!s.isMember("Model") || !s["Model"].isString() || s["Model"].asString().empty()) {
        bad("Model", "required: the path of the U-Net ONNX file");
    }
    c.model = s["Model"].asString();
    if (s.isMember("AutoSegment")) {
        if (!s["AutoSegment"].isBool()) {
            bad("AutoSegment", "must be true or false");
        }
        c.auto_segment = s["AutoSegment"].asBool();
    }
    if (s.isMember("Threshold")) {
        const Json::Value& v = s["Threshold"];
        if (!v.isNumeric() || !(v.asDouble() >= 0.0 && v.asDouble() <= 1.0)) {
            bad("Threshold", "must be a number in [0, 1]");
        }
        c.threshold = static_cast<float>(v.asDouble());
    }
    if (s.isMember("MinLesionMl")) {
        const Json::Value& v = s["MinLesionMl"];
        if (!v.isNumeric() || !std::isfinite(v.asDouble()) || v.asDouble() < 0.0) {
            bad("MinLesionMl", "must be a finite number >= 0");
        }
        c.min_lesion_ml = v.asDouble();
    }
    if (s.isMember("Device")) {
        c.device = lower(string_value(s["Device"], "Device"));
        if (c.device != "auto" && c.device != "cpu" && c.device != "cuda") {
            bad("Device", "must be \"auto\", \"cpu\" or \"cuda\"");
        }
    }
    if (s.isMember("Threads")) {
        c.threads = static_cast<uint32_t>(unsigned_value(s["Threads"], "Threads", 0, 1024));
    }
    if (s.isMember("QueueSize")) {
        c.queue_size = static_cast<uint32_t>(unsigned_value(s["QueueSize"], "QueueSize", 1, 10000));
    }
    if (s.isMember("MemoryLimitMb")) {
        c.memory_limit_mb = unsigned_value(s["MemoryLimitMb"], "MemoryLimitMb", 0, UINT64_MAX / 2);
    }
    if (s.isMember("TemporaryDirectory")) {
        c.temporary_directory = string_value(s["TemporaryDirectory"], "TemporaryDirectory");
    }
    if (s.isMember("SeriesFilter")) {
        const Json::Value& f = s["SeriesFilter"];
        if (!f.isObject()) {
            bad("SeriesFilter", "must be an object");
        }
        for (const std::string& key : f.getMemberNames()) {
            const std::string k = "SeriesFilter." + key;
            if (key == "Modality") {
                c.filter.modality = string_value(f[key], k);
            } else if (key == "BodyPartPattern") {
                c.filter.body_part = string_value(f[key], k);
                check_pattern(c.filter.body_part, k);
            } else if (key == "DescriptionPattern") {
                c.filter.description = string_value(f[key], k);
                check_pattern(c.filter.description, k);
            } else if (key == "MinInstances") {
                c.filter.min_instances = static_cast<uint32_t>(unsigned_value(f[key], k, 0, 100000));
            } else {
                bad(k, "unknown setting (Modality, DescriptionPattern, BodyPartPattern, MinInstances)");
            }
        }
    }
    // The state lives in user-defined series metadata, which Orthanc only accepts when declared.
    const Json::Value& user = root["UserMetadata"];
    for (const char* name : {kStateMetadata, kReportMetadata}) {
        if (!user.isObject() || !user.isMember(name)) {
            throw std::runtime_error(std::string("Orthanc's \"UserMetadata\" does not declare \"") + name +
                                     "\": add \"UserMetadata\": { \"IchsegReport\": 4600, \"IchsegState\": 4601 } "
                                     "(any free numbers in 1024..65535) to the configuration");
        }
    }
    return c;
}

Json::Value Config::model_report(const std::string& name, const std::string& path) const {
    Json::Value m;
    m["name"] = name;
    m["path"] = path;
    m["threshold"] = threshold;
    m["min_lesion_ml"] = min_lesion_ml ? Json::Value(*min_lesion_ml) : Json::Value();
    return m;
}

}  // namespace ichseg_orthanc
