#include "hyb/coordinator/service.h"

#include <algorithm>
#include <cctype>
#include <chrono>
#include <cstdio>
#include <sstream>

#include "hyb/coordinator/job_runner.h"
#include "hyb/coordinator/job_validation.h"
#include "hyb/coordinator/remote_executor.h"
#include "hyb/storage/job_layout.h"

namespace hyb::coordinator {
namespace {

using http::JsonError;
using http::JsonResponse;
using http::Request;
using http::Response;

std::string ToLower(std::string s) {
  for (char& c : s) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
  return s;
}

std::vector<std::string> SplitPath(const std::string& path) {
  std::vector<std::string> parts;
  std::string cur;
  for (char c : path) {
    if (c == '/') {
      if (!cur.empty()) parts.push_back(std::move(cur));
      cur.clear();
    } else {
      cur += c;
    }
  }
  if (!cur.empty()) parts.push_back(std::move(cur));
  return parts;
}

// FNV-1a, 64 bits, as hex: the spec's identity for idempotent submission.
std::string Hash(const std::string& s) {
  uint64_t h = 1469598103934665603ULL;
  for (unsigned char c : s) {
    h ^= c;
    h *= 1099511628211ULL;
  }
  char buf[17];
  std::snprintf(buf, sizeof(buf), "%016llx", static_cast<unsigned long long>(h));
  return buf;
}

// The spec field an error message names: "request body: search.tolerance: ..." ->
// "search.tolerance"; "" when it names none.
std::string FieldOf(std::string message, const std::string& source) {
  if (message.rfind(source + ": ", 0) == 0) message = message.substr(source.size() + 2);
  const size_t colon = message.find(": ");
  if (colon == std::string::npos) return "";
  std::string field = message.substr(0, colon);
  if (field.find(' ') != std::string::npos) return "";
  if (field.rfind("field '", 0) == 0) return "";
  return field;
}

Response StatusError(const Status& s, const std::string& field = "") {
  switch (s.code()) {
    case StatusCode::kInvalidArgument:
      return JsonError(400, "invalid_argument", s.message(), field);
    case StatusCode::kNotFound:
      return JsonError(404, "not_found", s.message(), field);
    case StatusCode::kAlreadyExists:
      return JsonError(409, "conflict", s.message(), field);
    case StatusCode::kFailedPrecondition:
      return JsonError(409, "failed_precondition", s.message(), field);
    case StatusCode::kUnavailable:
      return JsonError(503, "unavailable", s.message(), field);
    default:
      return JsonError(500, "internal", s.ToString(), field);
  }
}

StatusOr<Json> ParseBody(const Request& r) {
  if (r.body.empty()) return InvalidArgument("request body: empty (a JSON object is required)");
  Json j = Json::parse(r.body, nullptr, /*allow_exceptions=*/false);
  if (j.is_discarded()) return InvalidArgument("request body: not valid JSON");
  if (!j.is_object()) return InvalidArgument("request body: must be a JSON object");
  return j;
}

std::string WorkerState(const storage::WorkerRow& w, int64_t now_ms, double lease_seconds) {
  if (static_cast<double>(now_ms - w.last_seen_ms) > lease_seconds * 1000) return "lost";
  return w.task_id.empty() ? "idle" : "busy";
}

}  // namespace

int64_t NowMs() {
  return std::chrono::duration_cast<std::chrono::milliseconds>(
             std::chrono::system_clock::now().time_since_epoch())
      .count();
}

StatusOr<std::unique_ptr<Service>> Service::Create(ServiceOptions options) {
  if (options.storage_root.empty()) return InvalidArgument("storage: a directory is required");
  if (options.api_token.empty()) return InvalidArgument("api token: empty");
  if (options.worker_token.empty()) return InvalidArgument("worker token: empty");
  if (options.lease_seconds <= 0) return InvalidArgument("lease seconds: must be positive");
  HYB_RETURN_IF_ERROR(storage::MakeDirectories(options.storage_root));
  options.database = DatabasePath(options);
  std::unique_ptr<Service> s(new Service(std::move(options)));
  HYB_ASSIGN_OR_RETURN(s->store_, storage::JobStore::Open(s->options_.database));
  return s;
}

Service::~Service() { Stop(); }

double Service::HeartbeatSeconds() const { return std::min(options_.lease_seconds / 3, 5.0); }

Status Service::Start() {
  // Workers that held leases while the coordinator was down get one lease period to report.
  HYB_RETURN_IF_ERROR(
      store_->RenewLeases(NowMs() + static_cast<int64_t>(options_.lease_seconds * 1000)));
  HYB_ASSIGN_OR_RETURN(auto jobs, store_->ListJobs());
  started_ = true;
  for (const auto& j : jobs) {
    if (!IsTerminal(j.state)) StartDriver(j.id);
  }
  reaper_ = std::thread([this] { ReapLoop(); });
  return Status::Ok();
}

void Service::Stop() {
  if (stopping_.exchange(true)) {
    if (reaper_.joinable()) reaper_.join();
    return;
  }
  NotifyTaskChange();
  reaper_cv_.notify_all();
  if (reaper_.joinable()) reaper_.join();
  std::map<std::string, Driver> drivers;
  {
    std::lock_guard<std::mutex> lock(drivers_mu_);
    drivers.swap(drivers_);
  }
  for (auto& [id, d] : drivers) {
    if (d.thread.joinable()) d.thread.join();
  }
}

void Service::WaitForTaskChange(int64_t timeout_ms) {
  std::unique_lock<std::mutex> lock(task_mu_);
  const uint64_t seen = task_version_;
  task_cv_.wait_for(lock, std::chrono::milliseconds(timeout_ms),
                    [&] { return task_version_ != seen || stopping_; });
}

void Service::NotifyTaskChange() {
  {
    std::lock_guard<std::mutex> lock(task_mu_);
    ++task_version_;
  }
  task_cv_.notify_all();
}

void Service::StartDriver(const std::string& job_id) {
  std::lock_guard<std::mutex> lock(drivers_mu_);
  if (stopping_ || drivers_.count(job_id)) return;
  auto done = std::make_shared<std::atomic<bool>>(false);
  Driver d;
  d.done = done;
  d.thread = std::thread([this, job_id, done] {
    DriveJob(job_id);
    *done = true;
  });
  drivers_[job_id] = std::move(d);
}

void Service::ReapFinishedDrivers() {
  std::vector<std::thread> finished;
  {
    std::lock_guard<std::mutex> lock(drivers_mu_);
    for (auto it = drivers_.begin(); it != drivers_.end();) {
      if (*it->second.done) {
        finished.push_back(std::move(it->second.thread));
        it = drivers_.erase(it);
      } else {
        ++it;
      }
    }
  }
  for (auto& t : finished) t.join();
}

void Service::ReapLoop() {
  while (!stopping_) {
    auto expired = store_->ExpireLeases(NowMs());
    if (!expired.ok()) {
      std::fprintf(stderr, "coordinator: expiring leases: %s\n",
                   expired.status().ToString().c_str());
    } else if (!expired->empty()) {
      for (const auto& id : *expired) {
        std::fprintf(stderr, "coordinator: lease of task %s expired; re-queued\n", id.c_str());
      }
      NotifyTaskChange();
    }
    ReapFinishedDrivers();
    std::unique_lock<std::mutex> lock(reaper_mu_);
    reaper_cv_.wait_for(
        lock,
        std::chrono::milliseconds(static_cast<int64_t>(options_.reaper_interval_seconds * 1000)),
        [this] { return stopping_.load(); });
  }
}

void Service::RecordEvent(const std::string& job_id, const Json& event, Json* progress) {
  const int64_t now = NowMs();
  if (auto seq = store_->AppendEvent(job_id, event, now); !seq.ok()) {
    std::fprintf(stderr, "coordinator: job %s: recording an event: %s\n", job_id.c_str(),
                 seq.status().ToString().c_str());
  }
  const std::string type = event.value("event", "");
  if (type == "log") {
    std::fprintf(stderr, "[%s] %s\n", job_id.c_str(), event.value("message", "").c_str());
    return;
  }
  bool changed = true;
  if (type == "phase") {
    const std::string phase = event.value("phase", "");
    (*progress)["phase"] = phase;
    JobState to = JobState::kQueued;
    if (phase == "distilling") to = JobState::kDistilling;
    if (phase == "searching") to = JobState::kSearching;
    if (phase == "exporting") to = JobState::kExporting;
    if (to != JobState::kQueued) {
      auto job = store_->GetJob(job_id);
      // Phases only move forward: a resumed job replays the ones it had passed.
      if (job.ok() && job->has_value() && CheckTransition((*job)->state, to).ok() &&
          (*job)->state != to) {
        (void)store_->SetJobState(job_id, to, "", now);
      }
    }
  } else if (type == "distill_step") {
    Json d = {{"step", event.value("step", 0)},
              {"steps", event.value("steps", 0)},
              {"layers", event.value("layers", Json::array())}};
    if (event.contains("eta_seconds")) d["eta_seconds"] = event["eta_seconds"];
    (*progress)["distill"] = d;
    if (event.contains("eta_seconds")) (*progress)["eta_seconds"] = event["eta_seconds"];
  } else if (type == "task_finished" && event.value("task", "") == "distill" &&
             progress->contains("distill")) {
    // Heartbeats sample the progress; the finished task reached its last step.
    (*progress)["distill"]["step"] = (*progress)["distill"].value("steps", 0);
    (*progress)["distill"].erase("eta_seconds");
  } else if (type == "candidate") {
    Json& s = (*progress)["search"];
    s["round"] = event["round"];
    s["scored"] = event["scored"];
    s["of"] = event["of"];
    if (!s.contains("scores")) s["scores"] = Json::array();
    s["scores"].push_back({{"round", event["round"]},
                           {"layer", event["layer"]},
                           {"linear_layers", event["linear_layers"]},
                           {"score", event["score"]}});
    s["candidates_scored"] = s["scores"].size();
    (*progress)["eta_seconds"] = event.value("eta_seconds", 0.0);
  } else if (type == "round") {
    Json& s = (*progress)["search"];
    if (!s.contains("decisions")) s["decisions"] = Json::array();
    s["decisions"].push_back({{"round", event["round"]},
                              {"best_layer", event["best_layer"]},
                              {"committed", event["committed"]}});
  } else {
    changed = false;
  }
  if (changed) (void)store_->SetJobProgress(job_id, *progress, now);
}

void Service::DriveJob(const std::string& job_id) {
  auto row = store_->GetJob(job_id);
  if (!row.ok() || !row->has_value()) return;
  storage::JobRow job = **row;
  Json progress = job.progress.is_object() ? job.progress : Json::object();
  auto finish = [&](JobState state, const std::string& error) {
    progress["phase"] = std::string(JobStateName(state));
    const int64_t now = NowMs();
    (void)store_->SetJobProgress(job_id, progress, now);
    if (Status s = store_->SetJobState(job_id, state, error, now); !s.ok()) {
      std::fprintf(stderr, "coordinator: job %s: %s\n", job_id.c_str(), s.ToString().c_str());
    }
    if (state != JobState::kSucceeded) {  // the runner announced success itself
      Json e = {{"event", "phase"}, {"phase", ToLower(std::string(JobStateName(state)))}};
      if (!error.empty()) e["error"] = error;
      (void)store_->AppendEvent(job_id, e, now);
    }
  };
  if (job.state == JobState::kStopping) {
    finish(JobState::kCancelled, "");
    return;
  }
  auto spec = ParseJobSpec(job.spec.dump(), "job " + job_id, "");
  if (!spec.ok()) {
    finish(JobState::kFailed, spec.status().ToString());
    return;
  }
  if (job.state == JobState::kQueued) {
    (void)store_->SetJobState(job_id, JobState::kValidating, "", NowMs());
    (void)store_->AppendEvent(job_id, {{"event", "phase"}, {"phase", "validating"}}, NowMs());
  }
  RemoteExecutor executor(this, job_id);
  RunOptions ro;
  ro.storage_root = options_.storage_root;
  ro.progress_interval_s = 1.0;
  ro.print = [&](const std::string& line) {
    RecordEvent(job_id, {{"event", "log"}, {"message", line}}, &progress);
  };
  ro.on_event = [&](const Json& e) { RecordEvent(job_id, e, &progress); };
  JobRunner runner(ResolvePaths(*spec, options_.storage_root), &executor, ro);
  auto out = runner.Run();
  if (out.ok()) {
    finish(JobState::kSucceeded, "");
    return;
  }
  if (stopping_) return;  // the job resumes when a coordinator starts on this database again
  auto now_row = store_->GetJob(job_id);
  if (now_row.ok() && now_row->has_value() && (*now_row)->cancel_requested) {
    // Give leased tasks one lease period to see the cancel (a heartbeat) and stop.
    const int64_t deadline = NowMs() + static_cast<int64_t>(options_.lease_seconds * 2000);
    while (NowMs() < deadline && !stopping_) {
      auto leased = store_->CountTasks(job_id, storage::TaskState::kLeased);
      if (!leased.ok() || *leased == 0) break;
      WaitForTaskChange(500);
    }
    if (stopping_) return;
    finish(JobState::kCancelled, "");
    return;
  }
  finish(JobState::kFailed, out.status().ToString());
}

// --- HTTP ---------------------------------------------------------------------------------

http::Response Service::Handle(const Request& r) {
  const std::vector<std::string> p = SplitPath(r.path);
  if (r.path == "/healthz") {
    if (r.method != "GET") return JsonError(405, "method_not_allowed", "use GET");
    return JsonResponse(200, {{"status", "ok"}});
  }
  if (r.path == "/readyz") {
    if (r.method != "GET") return JsonError(405, "method_not_allowed", "use GET");
    if (!ready()) return JsonError(503, "unavailable", "not ready (starting or draining)");
    return JsonResponse(200, {{"status", "ready"}});
  }
  if (p.empty() || p[0] != "v1") return JsonError(404, "not_found", "no route " + r.path);

  // Authentication: workers and users hold different tokens.
  const bool worker_route = p.size() >= 2 && p[1] == "worker";
  const std::string& token = worker_route ? options_.worker_token : options_.api_token;
  const std::string auth = r.Header("authorization");
  if (auth.empty()) {
    return JsonError(401, "unauthenticated", "missing Authorization: Bearer <token> header",
                     "Authorization");
  }
  if (auth.rfind("Bearer ", 0) != 0 ||
      !http::ConstantTimeEquals(std::string_view(auth).substr(7), token)) {
    return JsonError(401, "unauthenticated",
                     std::string("wrong ") + (worker_route ? "worker" : "API") + " token",
                     "Authorization");
  }
  auto method = [&](const char* m) { return r.method == m; };
  auto not_allowed = [&](const char* allowed) {
    Response resp = JsonError(405, "method_not_allowed",
                              r.method + " is not allowed on " + r.path + "; use " + allowed);
    resp.headers.push_back({"Allow", allowed});
    return resp;
  };
  if (worker_route) {
    if (!method("POST")) return not_allowed("POST");
    if (p.size() == 3 && p[2] == "register") return WorkerRegister(r);
    if (p.size() == 3 && p[2] == "lease") return WorkerLease(r);
    if (p.size() == 5 && p[2] == "tasks") return WorkerTaskReport(r, p[3], p[4]);
    if (p.size() == 4 && p[2] == "kv" && (p[3] == "set" || p[3] == "get")) return WorkerKv(r, p[3]);
    return JsonError(404, "not_found", "no route " + r.path);
  }
  if (p.size() == 2 && p[1] == "jobs") {
    if (method("POST")) return SubmitJob(r);
    if (method("GET")) return ListJobs(r);
    return not_allowed("GET, POST");
  }
  if (p.size() == 2 && p[1] == "workers") {
    if (!method("GET")) return not_allowed("GET");
    return ListWorkers();
  }
  if (p.size() >= 3 && p[1] == "jobs") {
    const std::string& id = p[2];
    if (p.size() == 3) {
      if (!method("GET")) return not_allowed("GET");
      return GetJob(id);
    }
    if (p.size() == 4 && p[3] == "cancel") {
      if (!method("POST")) return not_allowed("POST");
      return CancelJob(id);
    }
    if (p.size() == 4 && p[3] == "events") {
      if (!method("GET")) return not_allowed("GET");
      return JobEvents(r, id);
    }
    if (p.size() == 4 && (p[3] == "report" || p[3] == "report.html" || p[3] == "report.json")) {
      if (!method("GET")) return not_allowed("GET");
      return JobReport(id, p[3] == "report.html");
    }
  }
  return JsonError(404, "not_found", "no route " + r.path);
}

namespace {

Json JobJson(const storage::JobRow& j, storage::JobStore& store) {
  Json tasks = Json::object();
  auto counts = store.CountTasksByState(j.id);
  if (counts.ok()) {
    for (const auto& [state, n] : *counts) {
      tasks[ToLower(std::string(storage::TaskStateName(state)))] = n;
    }
  }
  Json out = {{"job_id", j.id},
              {"state", std::string(JobStateName(j.state))},
              {"cancel_requested", j.cancel_requested},
              {"progress", j.progress},
              {"error", j.error.empty() ? Json(nullptr) : Json(j.error)},
              {"retries", {{"used", j.retries_used}, {"budget", j.retry_budget}}},
              {"tasks", tasks},
              {"created_ms", j.created_ms},
              {"updated_ms", j.updated_ms}};
  return out;
}

}  // namespace

http::Response Service::SubmitJob(const Request& r) {
  if (stopping_) return JsonError(503, "unavailable", "the coordinator is shutting down");
  const std::string source = "request body";
  auto spec = ParseJobSpec(r.body, source, "");
  if (!spec.ok()) {
    return JsonError(400, "invalid_spec", spec.status().message(),
                     FieldOf(spec.status().message(), source));
  }
  for (const auto& [key, value] : r.query) {
    if (key != "validate_only") {
      return JsonError(400, "invalid_argument", "unknown query parameter '" + key + "'", key);
    }
    if (value != "true" && value != "false") {
      return JsonError(400, "invalid_argument", "validate_only must be true or false",
                       "validate_only");
    }
  }
  const bool validate_only =
      r.query.count("validate_only") && r.query.at("validate_only") == "true";
  auto existing = store_->GetJob(spec->job_id);
  if (!existing.ok()) return StatusError(existing.status());
  if (existing->has_value() && !validate_only) {
    if ((*existing)->spec != spec->resolved) {
      return JsonError(
          409, "conflict",
          "job '" + spec->job_id + "' exists with a different spec; use another job_id", "job_id");
    }
    Json body = JobJson(**existing, *store_);
    body["created"] = false;
    return JsonResponse(200, body);
  }
  auto validated = ValidateJob(ResolvePaths(*spec, options_.storage_root));
  if (!validated.ok()) {
    const Status& s = validated.status();
    const std::string field = FieldOf(s.message(), source);
    if (s.code() == StatusCode::kInvalidArgument || s.code() == StatusCode::kNotFound ||
        s.code() == StatusCode::kDataLoss) {
      return JsonError(400, "invalid_spec", s.message(), field);
    }
    return StatusError(s, field);
  }
  if (validate_only) {
    return JsonResponse(200, {{"valid", true},
                              {"job_id", spec->job_id},
                              {"num_layers", validated->num_layers},
                              {"family", validated->family},
                              {"validation_examples", validated->validation_examples}});
  }
  storage::JobRow row;
  row.id = spec->job_id;
  row.spec = spec->resolved;
  row.spec_hash = Hash(spec->resolved.dump());
  row.retry_budget = options_.retry_budget;
  row.created_ms = row.updated_ms = NowMs();
  if (Status s = store_->InsertJob(row); !s.ok()) {
    if (s.code() == StatusCode::kAlreadyExists) {
      return JsonError(409, "conflict", "job '" + row.id + "' was submitted concurrently",
                       "job_id");
    }
    return StatusError(s);
  }
  (void)store_->AppendEvent(row.id, {{"event", "phase"}, {"phase", "queued"}}, NowMs());
  StartDriver(row.id);
  auto stored = store_->GetJob(row.id);
  if (!stored.ok() || !stored->has_value()) return StatusError(stored.status());
  Json body = JobJson(**stored, *store_);
  body["created"] = true;
  Response resp = JsonResponse(201, body);
  resp.headers.push_back({"Location", "/v1/jobs/" + row.id});
  return resp;
}

http::Response Service::ListJobs(const Request& r) {
  (void)r;
  auto jobs = store_->ListJobs();
  if (!jobs.ok()) return StatusError(jobs.status());
  Json out = Json::array();
  for (const auto& j : *jobs) {
    out.push_back({{"job_id", j.id},
                   {"state", std::string(JobStateName(j.state))},
                   {"phase", j.progress.value("phase", "")},
                   {"error", j.error.empty() ? Json(nullptr) : Json(j.error)},
                   {"created_ms", j.created_ms},
                   {"updated_ms", j.updated_ms}});
  }
  return JsonResponse(200, {{"jobs", out}});
}

http::Response Service::GetJob(const std::string& id) {
  auto job = store_->GetJob(id);
  if (!job.ok()) return StatusError(job.status());
  if (!job->has_value()) return JsonError(404, "not_found", "no job '" + id + "'", "job_id");
  return JsonResponse(200, JobJson(**job, *store_));
}

http::Response Service::CancelJob(const std::string& id) {
  auto state = store_->RequestCancel(id, NowMs());
  if (!state.ok()) {
    if (state.status().code() == StatusCode::kNotFound) {
      return JsonError(404, "not_found", "no job '" + id + "'", "job_id");
    }
    return StatusError(state.status());
  }
  (void)store_->AppendEvent(id, {{"event", "cancel_requested"}}, NowMs());
  NotifyTaskChange();
  return JsonResponse(202, {{"job_id", id}, {"state", std::string(JobStateName(*state))}});
}

http::Response Service::JobEvents(const Request& r, const std::string& id) {
  auto job = store_->GetJob(id);
  if (!job.ok()) return StatusError(job.status());
  if (!job->has_value()) return JsonError(404, "not_found", "no job '" + id + "'", "job_id");
  int64_t after = 0;
  std::string cursor = r.Header("last-event-id");
  if (r.query.count("after")) cursor = r.query.at("after");
  if (!cursor.empty()) {
    try {
      size_t used = 0;
      after = std::stoll(cursor, &used);
      if (used != cursor.size() || after < 0) throw std::invalid_argument(cursor);
    } catch (const std::exception&) {
      return JsonError(400, "invalid_argument", "after: not a non-negative event number", "after");
    }
  }
  if (r.query.count("stream") && r.query.at("stream") == "false") {
    auto events = store_->Events(id, after, 10000);
    if (!events.ok()) return StatusError(events.status());
    Json out = Json::array();
    for (const auto& e : *events) {
      Json ev = e.event;
      ev["seq"] = e.seq;
      ev["time_ms"] = e.time_ms;
      out.push_back(ev);
    }
    return JsonResponse(200, {{"events", out}});
  }
  Response resp;
  resp.content_type = "text/event-stream";
  resp.headers.push_back({"Cache-Control", "no-cache"});
  resp.stream = [this, id, after](const std::function<bool(std::string_view)>& write) {
    int64_t cursor = after;
    auto last_event = std::chrono::steady_clock::now();
    auto last_write = last_event;
    while (!stopping_) {
      auto events = store_->Events(id, cursor, 500);
      if (!events.ok()) return;
      for (const auto& e : *events) {
        Json data = e.event;
        data["time_ms"] = e.time_ms;  // when the coordinator recorded it
        std::ostringstream msg;
        msg << "id: " << e.seq << "\nevent: " << e.event.value("event", "message")
            << "\ndata: " << data.dump() << "\n\n";
        if (!write(msg.str())) return;
        cursor = e.seq;
      }
      const auto now = std::chrono::steady_clock::now();
      if (!events->empty()) {
        last_event = last_write = now;
        continue;
      }
      auto job = store_->GetJob(id);
      if (!job.ok() || !job->has_value() || IsTerminal((*job)->state)) {
        // Terminal: the last events are written; one more read closes the race.
        auto rest = store_->Events(id, cursor, 500);
        if (rest.ok() && !rest->empty()) continue;
        return;
      }
      if (std::chrono::duration<double>(now - last_event).count() > options_.event_stream_seconds) {
        return;
      }
      if (std::chrono::duration<double>(now - last_write).count() > 5) {
        if (!write(": ping\n\n")) return;
        last_write = now;
      }
      std::this_thread::sleep_for(std::chrono::milliseconds(200));
    }
  };
  return resp;
}

http::Response Service::JobReport(const std::string& id, bool html) {
  auto job = store_->GetJob(id);
  if (!job.ok()) return StatusError(job.status());
  if (!job->has_value()) return JsonError(404, "not_found", "no job '" + id + "'", "job_id");
  storage::JobLayout layout(options_.storage_root, id);
  auto text = ReadFileToString(html ? layout.ReportHtml() : layout.ReportJson());
  if (!text.ok()) {
    return JsonError(404, "not_found",
                     "job '" + id + "' has no report yet (state " +
                         std::string(JobStateName((*job)->state)) + ")",
                     "job_id");
  }
  Response resp;
  resp.status = 200;
  resp.content_type = html ? "text/html; charset=utf-8" : "application/json";
  resp.body = std::move(text).value();
  return resp;
}

http::Response Service::ListWorkers() {
  auto workers = store_->ListWorkers();
  if (!workers.ok()) return StatusError(workers.status());
  const int64_t now = NowMs();
  Json out = Json::array();
  for (const auto& w : *workers) {
    out.push_back({{"worker_id", w.id},
                   {"state", WorkerState(w, now, options_.lease_seconds)},
                   {"task_id", w.task_id.empty() ? Json(nullptr) : Json(w.task_id)},
                   {"info", w.info},
                   {"registered_ms", w.registered_ms},
                   {"last_seen_ms", w.last_seen_ms}});
  }
  return JsonResponse(200, {{"workers", out}});
}

http::Response Service::WorkerRegister(const Request& r) {
  auto body = ParseBody(r);
  if (!body.ok()) return JsonError(400, "invalid_argument", body.status().message());
  const std::string id = body->value("worker_id", "");
  if (id.empty() || id.size() > 128) {
    return JsonError(400, "invalid_argument", "worker_id: a non-empty string is required",
                     "worker_id");
  }
  if (Status s = store_->RegisterWorker(id, *body, NowMs()); !s.ok()) return StatusError(s);
  return JsonResponse(200, {{"worker_id", id},
                            {"lease_seconds", options_.lease_seconds},
                            {"heartbeat_seconds", HeartbeatSeconds()}});
}

http::Response Service::WorkerLease(const Request& r) {
  auto body = ParseBody(r);
  if (!body.ok()) return JsonError(400, "invalid_argument", body.status().message());
  const std::string worker = body->value("worker_id", "");
  double wait = options_.long_poll_seconds;
  if (body->contains("wait_seconds") && (*body)["wait_seconds"].is_number()) {
    wait = std::clamp((*body)["wait_seconds"].get<double>(), 0.0, options_.long_poll_seconds);
  }
  if (Status s = store_->TouchWorker(worker, "", NowMs()); !s.ok()) {
    if (s.code() == StatusCode::kNotFound) {
      return JsonError(404, "not_found", s.message() + "; POST /v1/worker/register first",
                       "worker_id");
    }
    return StatusError(s);
  }
  const auto deadline = std::chrono::steady_clock::now() +
                        std::chrono::milliseconds(static_cast<int64_t>(wait * 1000));
  while (true) {
    if (stopping_) {
      LeaveGangWaitingRoom(worker);
      return JsonError(503, "unavailable", "the coordinator is shutting down");
    }
    auto task =
        store_->LeaseTask(worker, NowMs(), static_cast<int64_t>(options_.lease_seconds * 1000));
    if (!task.ok()) return StatusError(task.status());
    if (!task->has_value()) {
      // No single task: wait here for a gang to form (leased to every member at once).
      *task = JoinGangWaitingRoom(worker);
    }
    if (task->has_value()) {
      LeaveGangWaitingRoom(worker);
      const storage::TaskRow& t = **task;
      NotifyTaskChange();
      return JsonResponse(200, {{"task",
                                 {{"id", t.id},
                                  {"kind", t.kind},
                                  {"job_id", t.job_id},
                                  {"attempt", t.attempts},
                                  {"payload", t.payload}}},
                                {"lease_seconds", options_.lease_seconds},
                                {"heartbeat_seconds", HeartbeatSeconds()}});
    }
    const auto now = std::chrono::steady_clock::now();
    if (now >= deadline) {
      LeaveGangWaitingRoom(worker);
      Response resp;
      resp.status = 204;
      resp.content_type = "";
      return resp;
    }
    WaitForTaskChange(std::min<int64_t>(
        500, std::chrono::duration_cast<std::chrono::milliseconds>(deadline - now).count() + 1));
  }
}

http::Response Service::WorkerTaskReport(const Request& r, const std::string& task_id,
                                         const std::string& action) {
  auto body = ParseBody(r);
  if (!body.ok()) return JsonError(400, "invalid_argument", body.status().message());
  const std::string worker = body->value("worker_id", "");
  if (worker.empty()) {
    return JsonError(400, "invalid_argument", "worker_id: required", "worker_id");
  }
  auto task = store_->GetTask(task_id);
  if (!task.ok()) return StatusError(task.status());
  if (!task->has_value()) return JsonError(404, "not_found", "no task '" + task_id + "'");
  const int64_t now = NowMs();
  if (action == "heartbeat") {
    auto row = store_->Heartbeat(task_id, worker, body->value("progress", Json()), now,
                                 static_cast<int64_t>(options_.lease_seconds * 1000));
    if (!row.ok()) return StatusError(row.status());
    NotifyTaskChange();
    const bool mine = row->state == storage::TaskState::kLeased && row->worker_id == worker;
    auto job = store_->GetJob(row->job_id);
    const bool cancelled = job.ok() && job->has_value() && (*job)->cancel_requested;
    return JsonResponse(200, {{"state", std::string(storage::TaskStateName(row->state))},
                              {"continue", mine && !cancelled && !stopping_},
                              {"cancel", cancelled}});
  }
  if (action == "complete") {
    if (!body->contains("result")) {
      return JsonError(400, "invalid_argument", "result: required", "result");
    }
    const Json& result = (*body)["result"];
    // Refuse results that the driver could not read back.
    Status valid = Status::Ok();
    if ((*task)->kind == "evaluate") {
      valid = EvaluateResult::FromJson(result, "result").status();
    } else if ((*task)->kind == "distill") {
      valid = DistillResult::FromJson(result, "result").status();
    }
    if (!valid.ok()) return JsonError(400, "invalid_argument", valid.message(), "result");
    if (Status s = store_->CompleteTask(task_id, worker, result, now); !s.ok()) {
      return StatusError(s);
    }
    NotifyTaskChange();
    return JsonResponse(200, {{"state", "DONE"}});
  }
  if (action == "fail") {
    const std::string error = body->value("error", "unspecified failure");
    const bool cancelled = body->value("cancelled", false);
    auto state = store_->FailTask(task_id, worker, error, cancelled, now);
    if (!state.ok()) return StatusError(state.status());
    std::fprintf(stderr, "coordinator: task %s %s on worker %s: %s\n", task_id.c_str(),
                 cancelled ? "stopped" : "failed", worker.c_str(), error.c_str());
    NotifyTaskChange();
    return JsonResponse(200, {{"state", std::string(storage::TaskStateName(*state))}});
  }
  return JsonError(404, "not_found", "no route " + r.path);
}

std::optional<storage::TaskRow> Service::JoinGangWaitingRoom(const std::string& worker) {
  std::lock_guard<std::mutex> lock(gang_mu_);
  if (auto it = assigned_.find(worker); it != assigned_.end()) {
    storage::TaskRow t = std::move(it->second);
    assigned_.erase(it);
    // Handed out while this worker was between requests: still its, unless the gang broke.
    auto now = store_->GetTask(t.id);
    if (now.ok() && now->has_value() && (*now)->state == storage::TaskState::kLeased &&
        (*now)->worker_id == worker) {
      (void)store_->TouchWorker(worker, t.id, NowMs());  // this request's touch cleared it
      return t;
    }
  }
  if (std::find(waiting_.begin(), waiting_.end(), worker) == waiting_.end()) {
    waiting_.push_back(worker);
  }
  // The oldest gang that the waiting workers can fill, all members at once.
  auto leased = store_->LeaseGang(waiting_, NowMs(),
                                  static_cast<int64_t>(options_.lease_seconds * 1000));
  if (!leased.ok()) {
    std::fprintf(stderr, "coordinator: forming a gang: %s\n", leased.status().ToString().c_str());
    return std::nullopt;
  }
  if (leased->empty()) return std::nullopt;
  std::optional<storage::TaskRow> mine;
  for (storage::TaskRow& t : *leased) {
    waiting_.erase(std::remove(waiting_.begin(), waiting_.end(), t.worker_id), waiting_.end());
    if (t.worker_id == worker) {
      mine = std::move(t);
    } else {
      assigned_[t.worker_id] = std::move(t);
    }
  }
  NotifyTaskChange();  // wakes the other members' lease requests
  return mine;
}

void Service::LeaveGangWaitingRoom(const std::string& worker) {
  std::lock_guard<std::mutex> lock(gang_mu_);
  waiting_.erase(std::remove(waiting_.begin(), waiting_.end(), worker), waiting_.end());
}

http::Response Service::WorkerKv(const Request& r, const std::string& action) {
  auto body = ParseBody(r);
  if (!body.ok()) return JsonError(400, "invalid_argument", body.status().message());
  const Json& key_json = body->value("key", Json());
  if (!key_json.is_string() || key_json.get<std::string>().empty() ||
      key_json.get<std::string>().size() > 512) {
    return JsonError(400, "invalid_argument", "key: a non-empty string of at most 512 bytes",
                     "key");
  }
  const std::string key = key_json.get<std::string>();
  if (action == "set") {
    const Json& value = body->value("value", Json());
    if (!value.is_string() || value.get<std::string>().size() > 65536) {
      return JsonError(400, "invalid_argument", "value: a string of at most 64 KiB", "value");
    }
    std::lock_guard<std::mutex> lock(kv_mu_);
    kv_[key] = value.get<std::string>();
    kv_cv_.notify_all();
    return JsonResponse(200, {{"key", key}});
  }
  double wait = 0;
  if (body->contains("wait_seconds") && (*body)["wait_seconds"].is_number()) {
    wait = std::clamp((*body)["wait_seconds"].get<double>(), 0.0, options_.long_poll_seconds);
  }
  std::unique_lock<std::mutex> lock(kv_mu_);
  const bool found =
      kv_cv_.wait_for(lock, std::chrono::milliseconds(static_cast<int64_t>(wait * 1000)),
                      [&] { return kv_.count(key) > 0 || stopping_; });
  if (!found || !kv_.count(key)) {
    return JsonError(404, "not_found", "key '" + key + "' is not set", "key");
  }
  return JsonResponse(200, {{"key", key}, {"value", kv_[key]}});
}

}  // namespace hyb::coordinator
