// The Orthanc plugin: segments stable CT series off Orthanc's threads, stores the DICOM-SEG in
// the same study and the report as series metadata; REST endpoints under /ichseg/.
// docs/ORTHANC.md describes the configuration, the REST API and the failure handling.
//
// Threads: Orthanc's change thread only enqueues (never blocks, never calls the REST API); one
// worker thread owns every segmentation, so on-demand requests (POST) are queued behind the
// automatic ones and one series is never segmented twice at once. No exception leaves a
// callback: each catches everything and answers or logs.
#include <OrthancCPlugin.h>

#include <algorithm>
#include <cctype>
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdlib>
#include <cstring>
#include <ctime>
#include <deque>
#include <filesystem>
#include <fstream>
#include <future>
#include <memory>
#include <mutex>
#include <optional>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "config.hpp"
#include "job.hpp"

namespace ichseg_orthanc {
namespace {

OrthancPluginContext* g_context = nullptr;

// ---------------------------------------------------------------------------------------------
// Logging (Orthanc's log; every line names the plugin)

void log_error(const std::string& m) { OrthancPluginLogError(g_context, ("ichseg: " + m).c_str()); }
void log_warning(const std::string& m) { OrthancPluginLogWarning(g_context, ("ichseg: " + m).c_str()); }
void log_info(const std::string& m) { OrthancPluginLogInfo(g_context, ("ichseg: " + m).c_str()); }

// ---------------------------------------------------------------------------------------------
// JSON

std::string to_string(const Json::Value& v) {
    Json::StreamWriterBuilder b;
    b["indentation"] = "";
    return Json::writeString(b, v);
}

Json::Value parse_json(const std::string& text, const std::string& what) {
    Json::CharReaderBuilder b;
    Json::Value v;
    std::string errors;
    std::istringstream in(text);
    if (!Json::parseFromStream(b, in, &v, &errors)) {
        throw std::runtime_error(what + " is not JSON: " + errors);
    }
    return v;
}

std::string utc_now() {
    const std::time_t t = std::time(nullptr);
    std::tm tm{};
    gmtime_r(&t, &tm);
    char buf[32];
    std::strftime(buf, sizeof buf, "%Y-%m-%dT%H:%M:%SZ", &tm);
    return buf;
}

// ---------------------------------------------------------------------------------------------
// Orthanc's REST API, called from inside the plugin

class RestError : public std::runtime_error {
public:
    RestError(const std::string& what, OrthancPluginErrorCode code)
        : std::runtime_error(what + ": " + OrthancPluginGetErrorDescription(g_context, code)), code_(code) {}
    OrthancPluginErrorCode code() const noexcept { return code_; }

private:
    OrthancPluginErrorCode code_;
};

struct Buffer {
    OrthancPluginMemoryBuffer b{};
    Buffer() = default;
    Buffer(const Buffer&) = delete;
    Buffer& operator=(const Buffer&) = delete;
    ~Buffer() {
        if (b.data != nullptr) OrthancPluginFreeMemoryBuffer(g_context, &b);
    }
    std::string str() const { return b.data ? std::string(static_cast<const char*>(b.data), b.size) : std::string(); }
};

std::string rest_get(const std::string& uri) {
    Buffer out;
    const OrthancPluginErrorCode c = OrthancPluginRestApiGet(g_context, &out.b, uri.c_str());
    if (c != OrthancPluginErrorCode_Success) throw RestError("GET " + uri, c);
    return out.str();
}

Json::Value rest_get_json(const std::string& uri) { return parse_json(rest_get(uri), "GET " + uri); }

Json::Value rest_post_json(const std::string& uri, const void* body, std::size_t size) {
    Buffer out;
    const OrthancPluginErrorCode c =
        OrthancPluginRestApiPost(g_context, &out.b, uri.c_str(), body, static_cast<uint32_t>(size));
    if (c != OrthancPluginErrorCode_Success) throw RestError("POST " + uri, c);
    return parse_json(out.str(), "POST " + uri);
}

void rest_put(const std::string& uri, const std::string& body) {
    Buffer out;
    const OrthancPluginErrorCode c =
        OrthancPluginRestApiPut(g_context, &out.b, uri.c_str(), body.data(), static_cast<uint32_t>(body.size()));
    if (c != OrthancPluginErrorCode_Success) throw RestError("PUT " + uri, c);
}

bool rest_delete(const std::string& uri) {
    const OrthancPluginErrorCode c = OrthancPluginRestApiDelete(g_context, uri.c_str());
    if (c != OrthancPluginErrorCode_Success) {
        log_error("DELETE " + uri + " failed: " + OrthancPluginGetErrorDescription(g_context, c));
        return false;
    }
    return true;
}

// Series metadata: listed first, so that a missing entry is not an error in Orthanc's log.
std::optional<std::string> get_metadata(const std::string& series, const char* name) {
    const Json::Value names = rest_get_json("/series/" + series + "/metadata");
    for (const Json::Value& n : names) {
        if (n.isString() && n.asString() == name) {
            return rest_get("/series/" + series + "/metadata/" + name);
        }
    }
    return std::nullopt;
}

void set_metadata(const std::string& series, const char* name, const std::string& value) {
    rest_put("/series/" + series + "/metadata/" + name, value);
}

std::string tag(const Json::Value& series, const char* name) {
    const Json::Value& v = series["MainDicomTags"][name];
    return v.isString() ? v.asString() : std::string();
}

std::string upper(std::string s) {
    for (char& c : s) c = static_cast<char>(std::toupper(static_cast<unsigned char>(c)));
    return s;
}

// ---------------------------------------------------------------------------------------------
// A private temporary folder for one series' files, removed with everything in it

class TempDir {
public:
    explicit TempDir(const std::string& base_setting) {
        std::string base = base_setting;
        if (base.empty()) {
            const char* env = std::getenv("TMPDIR");
            base = env != nullptr && *env != '\0' ? env : "/tmp";
        }
        std::string templ = base + "/ichseg-orthanc-XXXXXX";
        std::vector<char> buf(templ.begin(), templ.end());
        buf.push_back('\0');
        if (mkdtemp(buf.data()) == nullptr) {
            throw Failure("io", "cannot create a temporary folder in " + base + ": " + std::strerror(errno));
        }
        path_ = buf.data();
    }
    TempDir(const TempDir&) = delete;
    TempDir& operator=(const TempDir&) = delete;
    ~TempDir() { remove(); }
    void remove() noexcept {
        if (path_.empty()) return;
        std::error_code ec;
        std::filesystem::remove_all(path_, ec);
        if (ec) log_error("cannot remove the temporary folder " + path_ + ": " + ec.message());
        path_.clear();
    }
    const std::string& path() const noexcept { return path_; }

private:
    std::string path_;
};

// ---------------------------------------------------------------------------------------------
// The worker: a bounded queue of series and one thread

using Clock = std::chrono::steady_clock;

struct Outcome {
    uint16_t http = 200;  // 200 done, 404 unknown series, 422 failed, 503 not accepted
    Json::Value body;
};

struct Job {
    std::string series;
    std::shared_ptr<std::promise<Outcome>> reply;  // set for on-demand requests (POST)
    Clock::time_point queued = Clock::now();
};

double seconds_since(Clock::time_point t0) { return std::chrono::duration<double>(Clock::now() - t0).count(); }

Json::Value error_body(const std::string& message) {
    Json::Value v;
    v["error"] = message;
    return v;
}

class Plugin {
public:
    Plugin(Config config, std::unique_ptr<Segmenter> segmenter)
        : config_(std::move(config)), segmenter_(std::move(segmenter)), thread_([this] { loop(); }) {}
    ~Plugin() { shutdown(); }

    const Config& config() const noexcept { return config_; }

    // Queues a series; false when the queue is full or the plugin stops. Never blocks long.
    bool push(Job job) {
        {
            std::lock_guard<std::mutex> lock(mutex_);
            if (stopping_ || queue_.size() >= config_.queue_size) return false;
            queue_.push_back(std::move(job));
        }
        cv_.notify_one();
        return true;
    }

    // A stable series the full queue turned away: recorded on the series by the worker.
    void note_dropped(const std::string& series) {
        {
            std::lock_guard<std::mutex> lock(mutex_);
            if (dropped_.size() < 10000) dropped_.push_back(series);
            dropped_count_++;
        }
        cv_.notify_one();
    }

    // Stops taking work, cancels the running segmentation, answers waiting requests, joins.
    void shutdown() {
        std::deque<Job> left;
        {
            std::lock_guard<std::mutex> lock(mutex_);
            stopping_ = true;
            cancel_ = true;
            left.swap(queue_);
        }
        cv_.notify_all();
        for (Job& j : left) {
            if (j.reply) j.reply->set_value(Outcome{503, error_body("Orthanc is stopping")});
        }
        if (thread_.joinable()) thread_.join();
    }

    Json::Value status() const {
        Json::Value s;
        {
            std::lock_guard<std::mutex> lock(mutex_);
            s["queue_length"] = Json::UInt64(queue_.size());
            s["processing"] = current_.empty() ? Json::Value() : Json::Value(current_);
            s["done"] = Json::UInt64(done_count_);
            s["failed"] = Json::UInt64(failed_count_);
            s["dropped"] = Json::UInt64(dropped_count_);
        }
        s["queue_size"] = config_.queue_size;
        s["auto_segment"] = config_.auto_segment;
        s["device"] = segmenter_->device();
        s["device_note"] = segmenter_->device_note();
        s["threads"] = segmenter_->threads();
        s["model"] = config_.model_report(segmenter_->model_name(), segmenter_->model_path());
        s["ichseg_version"] = ichseg::version();
        return s;
    }

    // Segments `series` now (on the worker thread) and records the outcome on it.
    Outcome process(const std::string& id, Clock::time_point queued);

private:
    void loop();
    void run_job(Job& job);
    void run_auto(const std::string& id, Clock::time_point queued);
    void record_dropped(const std::string& id);

    Config config_;
    std::unique_ptr<Segmenter> segmenter_;
    mutable std::mutex mutex_;
    std::condition_variable cv_;
    std::deque<Job> queue_;
    std::vector<std::string> dropped_;
    std::string current_;
    uint64_t done_count_ = 0, failed_count_ = 0, dropped_count_ = 0;
    bool stopping_ = false;
    std::atomic<bool> cancel_{false};
    std::thread thread_;  // last: started once everything above exists
};

void Plugin::loop() {
    for (;;) {
        Job job;
        std::vector<std::string> dropped;
        {
            std::unique_lock<std::mutex> lock(mutex_);
            cv_.wait(lock, [this] { return stopping_ || !queue_.empty() || !dropped_.empty(); });
            if (stopping_) return;
            dropped.swap(dropped_);
            if (!queue_.empty()) {
                job = std::move(queue_.front());
                queue_.pop_front();
                current_ = job.series;
            }
        }
        for (const std::string& d : dropped) record_dropped(d);
        if (!job.series.empty()) {
            run_job(job);
            std::lock_guard<std::mutex> lock(mutex_);
            current_.clear();
        }
    }
}

void Plugin::run_job(Job& job) {
    try {
        if (job.reply) {
            job.reply->set_value(process(job.series, job.queued));
        } else {
            run_auto(job.series, job.queued);
        }
    } catch (const std::exception& e) {
        log_error("series " + job.series + ": " + e.what());
        if (job.reply) job.reply->set_value(Outcome{500, error_body(e.what())});
    } catch (...) {
        log_error("series " + job.series + ": unknown error");
        if (job.reply) job.reply->set_value(Outcome{500, error_body("unknown error")});
    }
}

void Plugin::record_dropped(const std::string& id) {
    try {
        set_metadata(id, kStateMetadata, "skipped: the queue was full (POST /ichseg/series/" + id + "/segment runs it)");
    } catch (const std::exception& e) {
        log_error("series " + id + ": cannot record that it was dropped: " + e.what());
    }
}

// A stable series: segmented once, when it passes the filter and has no state yet.
void Plugin::run_auto(const std::string& id, Clock::time_point queued) {
    Json::Value series;
    try {
        series = rest_get_json("/series/" + id);
    } catch (const RestError&) {
        log_info("series " + id + " is gone, not segmented");
        return;
    }
    const std::optional<std::string> state = get_metadata(id, kStateMetadata);
    if (state && (state->rfind("done", 0) == 0 || state->rfind("failed", 0) == 0)) {
        log_info("series " + id + " already processed (" + state->substr(0, state->find(':')) + "), skipped");
        return;
    }
    // Our own output (and any other segmentation) is never an input, whatever the filter says.
    if (upper(tag(series, "Modality")) == "SEG") {
        log_info("series " + id + " is a SEG, not segmented");
        return;
    }
    // A filter mismatch is not recorded (a PACS holds many series that are none of our business);
    // a series the filter lets through is, whatever the outcome (a non-CT one as "not-ct").
    const std::string why = config_.filter.rejects(tag(series, "Modality"), tag(series, "BodyPartExamined"),
                                                   tag(series, "SeriesDescription"), series["Instances"].size());
    if (!why.empty()) {
        log_info("series " + id + " not segmented: " + why + " (SeriesFilter)");
        return;
    }
    process(id, queued);
}

Outcome Plugin::process(const std::string& id, Clock::time_point queued) {
    const auto t0 = Clock::now();
    Json::Value series;
    try {
        series = rest_get_json("/series/" + id);
    } catch (const RestError& e) {
        return Outcome{404, error_body("unknown series " + id)};
    }
    Json::Value report(Json::objectValue);
    report["series"] = id;
    report["study"] = series["ParentStudy"];
    report["started_at"] = utc_now();
    report["queued_s"] = std::chrono::duration<double>(t0 - queued).count();
    std::string previous_seg;
    try {
        if (const auto old = get_metadata(id, kReportMetadata)) {
            const Json::Value r = parse_json(*old, "the previous report");
            if (r["seg_instance"].isString()) previous_seg = r["seg_instance"].asString();
        }
    } catch (const std::exception& e) {
        log_warning("series " + id + ": previous report unreadable: " + e.what());
    }

    std::string stored;  // the SEG's Orthanc id once stored, deleted again on a later failure
    try {
        try {
            const std::string modality = tag(series, "Modality");
            if (upper(modality) != "CT") {
                throw Failure("not-ct", "Modality \"" + modality + "\" is not CT: ichseg segments CT series only");
            }
            auto t = Clock::now();
            TempDir dir(config_.temporary_directory);
            const Json::Value& instances = series["Instances"];
            for (Json::ArrayIndex i = 0; i < instances.size(); i++) {
                const std::string iid = instances[i].asString();
                const std::string bytes = rest_get("/instances/" + iid + "/file");
                std::ofstream f(dir.path() + "/" + iid + ".dcm", std::ios::binary);
                f.write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
                f.close();
                if (!f) throw Failure("io", "cannot write instance " + iid + " into " + dir.path());
            }
            const double fetch_s = seconds_since(t);
            Segmentation s = segmenter_->run(dir.path(), tag(series, "SeriesInstanceUID"), [this] { return !cancel_.load(); });
            dir.remove();
            s.report["timings"]["fetch_s"] = fetch_s;

            t = Clock::now();
            const Json::Value answer = rest_post_json("/instances", s.seg.data(), s.seg.size());
            if (!answer["ID"].isString()) throw Failure("store", "Orthanc did not store the SEG: " + to_string(answer));
            stored = answer["ID"].asString();
            if (answer["ParentStudy"] != series["ParentStudy"]) {
                throw Failure("store", "the SEG landed in study " + answer["ParentStudy"].asString() + ", not in " +
                                           series["ParentStudy"].asString());
            }
            s.report["timings"]["store_s"] = seconds_since(t);
            s.report["timings"]["total_s"] = seconds_since(t0);
            for (const std::string& k : s.report.getMemberNames()) report[k] = s.report[k];
            report["status"] = "done";
            report["seg_instance"] = stored;
            report["seg_series"] = answer["ParentSeries"];
            report["finished_at"] = utc_now();
            set_metadata(id, kReportMetadata, to_string(report));
            set_metadata(id, kStateMetadata, "done");
        } catch (const ichseg::Error& e) {
            throw Failure(failure_kind(e.status()), std::string(e.status_name()) + ": " + e.what());
        } catch (const RestError& e) {
            throw Failure("orthanc", e.what());
        } catch (const std::bad_alloc&) {
            throw Failure("out-of-memory", "out of memory");
        } catch (const Failure&) {
            throw;
        } catch (const std::exception& e) {
            throw Failure("internal", e.what());
        }
    } catch (const Failure& f) {
        if (!stored.empty()) rest_delete("/instances/" + stored);  // never a SEG without its report
        if (f.kind() == "cancelled") {  // Orthanc stops: nothing recorded, the series stays new
            log_warning("series " + id + " not segmented: Orthanc is stopping");
            return Outcome{503, error_body("Orthanc is stopping")};
        }
        Json::Value failed(Json::objectValue);
        for (const char* k : {"series", "study", "started_at", "queued_s"}) failed[k] = report[k];
        failed["status"] = "failed";
        failed["error"] = f.kind();
        failed["reason"] = f.what();
        failed["finished_at"] = utc_now();
        failed["model"]["name"] = segmenter_->model_name();
        failed["model"]["path"] = segmenter_->model_path();
        if (!previous_seg.empty()) failed["previous_seg_instance"] = previous_seg;
        log_error("series " + id + " failed (" + f.kind() + "): " + f.what());
        try {
            set_metadata(id, kReportMetadata, to_string(failed));
            set_metadata(id, kStateMetadata, "failed: " + f.kind() + ": " + f.what());
        } catch (const std::exception& e) {
            log_error("series " + id + ": cannot record the failure: " + e.what());
        }
        std::lock_guard<std::mutex> lock(mutex_);
        failed_count_++;
        return Outcome{422, failed};
    }
    if (!previous_seg.empty() && previous_seg != stored) {
        rest_delete("/instances/" + previous_seg);  // a new run replaces the series' SEG
    }
    log_warning("series " + id + " segmented: " + std::to_string(report["lesions"].size()) + " lesion(s), " +
                std::to_string(report["total_volume_ml"].asDouble()) + " mL, SEG " + stored + " (" +
                std::to_string(report["timings"]["total_s"].asDouble()) + " s)");
    std::lock_guard<std::mutex> lock(mutex_);
    done_count_++;
    return Outcome{200, report};
}

std::unique_ptr<Plugin> g_plugin;

// ---------------------------------------------------------------------------------------------
// Callbacks

void answer_json(OrthancPluginRestOutput* output, uint16_t http, const Json::Value& body) {
    const std::string text = to_string(body);
    if (http == 200) {
        OrthancPluginAnswerBuffer(g_context, output, text.data(), static_cast<uint32_t>(text.size()), "application/json");
    } else {
        OrthancPluginSendHttpStatus(g_context, output, http, text.data(), static_cast<uint32_t>(text.size()));
    }
}

template <class F>
OrthancPluginErrorCode guarded(OrthancPluginRestOutput* output, F&& f) {
    try {
        f();
        return OrthancPluginErrorCode_Success;
    } catch (const std::exception& e) {
        log_error(std::string("REST: ") + e.what());
    } catch (...) {
        log_error("REST: unknown error");
    }
    try {
        answer_json(output, 500, error_body("internal error (see Orthanc's log)"));
        return OrthancPluginErrorCode_Success;
    } catch (...) {
        return OrthancPluginErrorCode_InternalError;
    }
}

OrthancPluginErrorCode rest_status(OrthancPluginRestOutput* output, const char*, const OrthancPluginHttpRequest* request) {
    return guarded(output, [&] {
        if (request->method != OrthancPluginHttpMethod_Get) {
            OrthancPluginSendMethodNotAllowed(g_context, output, "GET");
            return;
        }
        answer_json(output, 200, g_plugin->status());
    });
}

OrthancPluginErrorCode rest_report(OrthancPluginRestOutput* output, const char*, const OrthancPluginHttpRequest* request) {
    return guarded(output, [&] {
        if (request->method != OrthancPluginHttpMethod_Get) {
            OrthancPluginSendMethodNotAllowed(g_context, output, "GET");
            return;
        }
        const std::string id = request->groups[0];
        try {
            rest_get("/series/" + id);
        } catch (const RestError&) {
            answer_json(output, 404, error_body("unknown series " + id));
            return;
        }
        const std::optional<std::string> report = get_metadata(id, kReportMetadata);
        if (!report) {
            answer_json(output, 404, error_body("series " + id + " has no ichseg report"));
            return;
        }
        OrthancPluginAnswerBuffer(g_context, output, report->data(), static_cast<uint32_t>(report->size()),
                                  "application/json");
    });
}

OrthancPluginErrorCode rest_segment(OrthancPluginRestOutput* output, const char*, const OrthancPluginHttpRequest* request) {
    return guarded(output, [&] {
        if (request->method != OrthancPluginHttpMethod_Post) {
            OrthancPluginSendMethodNotAllowed(g_context, output, "POST");
            return;
        }
        Job job;
        job.series = request->groups[0];
        job.reply = std::make_shared<std::promise<Outcome>>();
        std::future<Outcome> result = job.reply->get_future();
        if (!g_plugin->push(std::move(job))) {
            answer_json(output, 503, error_body("the ichseg queue is full (QueueSize " +
                                                std::to_string(g_plugin->config().queue_size) + ") or Orthanc is stopping"));
            return;
        }
        const Outcome o = result.get();
        answer_json(output, o.http, o.body);
    });
}

OrthancPluginErrorCode on_change(OrthancPluginChangeType type, OrthancPluginResourceType, const char* id) {
    try {
        if (type == OrthancPluginChangeType_OrthancStopped) {
            g_plugin->shutdown();
        } else if (type == OrthancPluginChangeType_StableSeries && g_plugin->config().auto_segment && id != nullptr) {
            Job job;
            job.series = id;
            if (!g_plugin->push(std::move(job))) {
                log_warning("queue full (QueueSize " + std::to_string(g_plugin->config().queue_size) + "): series " +
                            id + " not segmented");
                g_plugin->note_dropped(id);
            }
        }
    } catch (...) {
        // never into Orthanc
    }
    return OrthancPluginErrorCode_Success;
}

}  // namespace
}  // namespace ichseg_orthanc

using namespace ichseg_orthanc;

extern "C" {

__attribute__((visibility("default"))) int32_t OrthancPluginInitialize(OrthancPluginContext* context) {
    g_context = context;
    if (!OrthancPluginCheckVersion(context)) {
        log_error(std::string("not registered: this Orthanc (") + context->orthancVersion +
                  ") is older than the plugin SDK it was built with");
        return 0;  // Orthanc keeps running without the plugin
    }
    OrthancPluginSetDescription(context, "Intracerebral hemorrhage segmentation of CT series (libichseg)");
    try {
        if (ichseg::abi_version() != ICHSEG_ABI_VERSION) {
            throw std::runtime_error("libichseg has C ABI " + std::to_string(ichseg::abi_version()) + ", the plugin was built for " +
                                     std::to_string(ICHSEG_ABI_VERSION));
        }
        char* raw = OrthancPluginGetConfiguration(context);
        if (raw == nullptr) throw std::runtime_error("cannot read Orthanc's configuration");
        const std::string text(raw);
        OrthancPluginFreeString(context, raw);
        Config config = parse_config(parse_json(text, "Orthanc's configuration"));
        const auto t = Clock::now();
        auto segmenter = std::make_unique<Segmenter>(config);
        log_warning("model " + segmenter->model_path() + " loaded on " + segmenter->device() + " (" +
                    segmenter->device_note() + ", " + std::to_string(segmenter->threads()) + " threads) in " +
                    std::to_string(seconds_since(t)) + " s; AutoSegment " + (config.auto_segment ? "on" : "off") +
                    ", QueueSize " + std::to_string(config.queue_size));
        g_plugin = std::make_unique<Plugin>(std::move(config), std::move(segmenter));
    } catch (const std::exception& e) {
        log_error(std::string("not registered: ") + e.what());
        return 0;
    }
    OrthancPluginRegisterRestCallbackNoLock(context, "/ichseg/status", rest_status);
    OrthancPluginRegisterRestCallbackNoLock(context, "/ichseg/series/([^/]+)/segment", rest_segment);
    OrthancPluginRegisterRestCallbackNoLock(context, "/ichseg/series/([^/]+)", rest_report);
    OrthancPluginRegisterOnChangeCallback(context, on_change);
    return 0;
}

__attribute__((visibility("default"))) void OrthancPluginFinalize() {
    try {
        if (g_plugin) {
            g_plugin->shutdown();
            g_plugin.reset();
        }
    } catch (...) {
    }
}

__attribute__((visibility("default"))) const char* OrthancPluginGetName() { return "ichseg"; }

__attribute__((visibility("default"))) const char* OrthancPluginGetVersion() { return ichseg_version_string(); }

}  // extern "C"
