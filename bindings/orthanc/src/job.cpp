#include "job.hpp"

#include <chrono>
#include <new>

namespace ichseg_orthanc {
namespace {

using Clock = std::chrono::steady_clock;

double seconds_since(Clock::time_point t0) {
    return std::chrono::duration<double>(Clock::now() - t0).count();
}

ichseg::Device parse_device(const std::string& d) {
    if (d == "cpu") return ichseg::Device::Cpu;
    if (d == "cuda") return ichseg::Device::Cuda;
    return ichseg::Device::Auto;
}

ichseg::Engine make_engine(const Config& c) {
    ichseg::EngineOptions o;
    o.threads = c.threads;
    o.device = parse_device(c.device);
    o.memory_limit_mb = c.memory_limit_mb;
    try {
        return ichseg::Engine(o);
    } catch (const ichseg::Error& e) {
        throw Failure("device", std::string("cannot create the ") + c.device + " engine: " + e.status_name() + ": " + e.what());
    }
}

ichseg::Model load_model(const ichseg::Engine& engine, const Config& c) {
    ichseg::SegmentOptions o;
    o.threshold = c.threshold;
    o.min_lesion_ml = c.min_lesion_ml;
    try {
        return ichseg::Model::load(engine, c.model, o);
    } catch (const ichseg::Error& e) {
        throw Failure("model", "cannot load the model \"" + c.model + "\": " + e.status_name() + ": " + e.what());
    }
}

std::string stem(const std::string& path) {
    std::string name = path.substr(path.find_last_of('/') == std::string::npos ? 0 : path.find_last_of('/') + 1);
    const auto dot = name.find_last_of('.');
    return dot == std::string::npos || dot == 0 ? name : name.substr(0, dot);
}

Json::Value triple(const double* v) {
    Json::Value a(Json::arrayValue);
    for (int i = 0; i < 3; i++) a.append(v[i]);
    return a;
}

Json::Value triple(const uint64_t* v) {
    Json::Value a(Json::arrayValue);
    for (int i = 0; i < 3; i++) a.append(Json::UInt64(v[i]));
    return a;
}

}  // namespace

std::string failure_kind(IchsegStatus status) {
    switch (status) {
        case ICHSEG_STATUS_INVALID_IMAGE: return "invalid-image";
        case ICHSEG_STATUS_UNSUPPORTED: return "unsupported";
        case ICHSEG_STATUS_OUT_OF_MEMORY: return "out-of-memory";
        case ICHSEG_STATUS_INFERENCE: return "model";
        case ICHSEG_STATUS_INVALID_MODEL: return "model";
        case ICHSEG_STATUS_NON_FINITE: return "invalid-image";
        case ICHSEG_STATUS_IO: return "io";
        case ICHSEG_STATUS_INVALID_ARGUMENT: return "invalid-series";
        case ICHSEG_STATUS_CANCELLED: return "cancelled";
        default: return "internal";
    }
}

Segmenter::Segmenter(const Config& config)
    : config_(config), engine_(make_engine(config)), model_(load_model(engine_, config)) {
    try {
        device_ = engine_.device_name();
        device_note_ = engine_.device_note();
        threads_ = engine_.threads();
    } catch (const ichseg::Error& e) {
        throw Failure("device", std::string("cannot query the engine: ") + e.what());
    }
    model_path_ = config.model;
    model_name_ = stem(config.model);
}

Segmentation Segmenter::run(const std::string& folder, const std::string& series_uid,
                            const std::function<bool()>& keep_going) const {
    Segmentation out;
    Json::Value& r = out.report;
    Json::Value timings(Json::objectValue);
    const char* stage = "read";
    try {
        auto t = Clock::now();
        ichseg::SeriesReadOptions ro;
        ro.series_uid = series_uid;
        ro.memory_limit_mb = config_.memory_limit_mb;
        const ichseg::Series series = ichseg::Series::read({folder}, ro);
        const ichseg::SeriesInfo info = series.info();
        const ichseg::VolumeView volume = series.volume();
        timings["read_s"] = seconds_since(t);

        stage = "segment";
        t = Clock::now();
        const auto& d = volume.dims();
        std::vector<uint8_t> mask;
        try {
            mask.resize(d[0] * d[1] * d[2]);
        } catch (const std::bad_alloc&) {
            throw Failure("out-of-memory", "cannot allocate the mask of " + std::to_string(d[0] * d[1] * d[2]) + " voxels");
        }
        const ichseg::Result result = model_.segment(volume, ichseg::Span<uint8_t>(mask.data(), mask.size()), {},
                                                      [&](uint32_t, uint32_t) { return keep_going(); });
        timings["segment_s"] = seconds_since(t);

        stage = "encode";
        t = Clock::now();
        ichseg::SegOptions so;
        so.algorithm_name = model_name_;
        out.seg = series.encode_seg(ichseg::Span<const uint8_t>(mask.data(), mask.size()), so);
        timings["encode_s"] = seconds_since(t);

        r["series_instance_uid"] = info.uid;
        r["series_description"] = info.description;
        r["modality"] = info.modality;
        Json::Value dims(Json::arrayValue);
        for (auto v : d) dims.append(Json::UInt64(v));
        r["dims"] = dims;
        r["spacing_mm"] = triple(volume.spacing().data());
        uint64_t voxels = 0;
        for (uint8_t v : mask) voxels += v != 0;
        r["mask_voxels"] = Json::UInt64(voxels);
        r["total_volume_ml"] = result.total_volume_ml();
        Json::Value lesions(Json::arrayValue);
        for (const IchsegLesion& l : result.lesions()) {
            Json::Value j;
            j["voxels"] = Json::UInt64(l.voxels);
            j["volume_ml"] = l.volume_ml;
            j["bbox_min"] = triple(l.bbox_min);
            j["bbox_max"] = triple(l.bbox_max);
            j["centroid_voxel"] = triple(l.centroid_voxel);
            j["centroid_world_mm"] = triple(l.centroid_world_mm);
            j["first_slice"] = l.first_slice;
            j["last_slice"] = l.last_slice;
            lesions.append(j);
        }
        r["lesion_count"] = lesions.size();
        r["lesions"] = lesions;
    } catch (const ichseg::Error& e) {
        throw Failure(failure_kind(e.status()), std::string(stage) + ": " + e.status_name() + ": " + e.what());
    } catch (const std::bad_alloc&) {
        throw Failure("out-of-memory", std::string(stage) + ": out of memory");
    }
    r["model"] = config_.model_report(model_name_, model_path_);
    r["device"] = device_;
    r["device_note"] = device_note_;
    r["threads"] = threads_;
    r["ichseg_version"] = ichseg::version();
    r["timings"] = timings;
    return out;
}

}  // namespace ichseg_orthanc
