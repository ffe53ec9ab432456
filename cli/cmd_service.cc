// The API's clients: `submit`, `status`, `watch`, `cancel`, `workers` (docs/service.md). Torch-
// free, so they are also in the coordinator-only build. `serve` is cmd_serve.cc, `worker`
// cmd_worker.cc.
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <ctime>
#include <fstream>
#include <iostream>

#include "commands.h"
#include "flags.h"
#include "hyb/common/http.h"
#include "hyb/common/job_state.h"
#include "service_flags.h"

namespace hyb::cli {
namespace {

const FlagSpec kServerFlag = {"server", "URL", "the coordinator (environment: HYB_SERVER)",
                              "http://127.0.0.1:8080"};
const FlagSpec kTokenFlag = {"token-file", "FILE",
                             "file holding the API token (environment: HYB_TOKEN)", ""};
const FlagSpec kCaFlag = {"ca-file", "FILE", "https: the coordinator's certificate or CA", ""};
const FlagSpec kJsonFlag = {"json", "", "print the API's JSON instead of a table", ""};

StatusOr<http::Client> ApiClient(const ParsedFlags& flags, double timeout_s = 60) {
  std::string url = flags.GetOr("server", "");
  if (url.empty()) {
    const char* e = std::getenv("HYB_SERVER");
    url = e ? e : "http://127.0.0.1:8080";
  }
  http::ClientOptions o;
  HYB_ASSIGN_OR_RETURN(o.bearer_token, Token(flags, "token-file", "HYB_TOKEN", true));
  o.ca_file = flags.GetOr("ca-file", "");
  o.timeout_s = timeout_s;
  return http::Client::Create(url, o);
}

// The body of an error answer as one line: "HTTP 400 (field task.type): ...".
Status ApiError(const http::ClientResponse& r, const std::string& what) {
  Json j = Json::parse(r.body, nullptr, false);
  std::string msg = what + ": HTTP " + std::to_string(r.status);
  if (j.is_object() && j.contains("error")) {
    const Json& e = j["error"];
    if (e.value("field", "") != "") msg += " (field " + e.value("field", "") + ")";
    msg += ": " + e.value("message", "");
  } else {
    msg += ": " + r.body.substr(0, 300);
  }
  if (r.status == 400 || r.status == 404 || r.status == 409) return InvalidArgument(msg);
  return FailedPrecondition(msg);
}

StatusOr<Json> GetJson(http::Client& c, const std::string& target) {
  HYB_ASSIGN_OR_RETURN(auto r, c.Request("GET", target));
  if (r.status != 200) return ApiError(r, "GET " + target);
  Json j = Json::parse(r.body, nullptr, false);
  if (j.is_discarded()) return DataLoss("GET " + target + ": the answer is not JSON");
  return j;
}

std::string Age(int64_t ms) {
  const double now_ms = static_cast<double>(std::chrono::duration_cast<std::chrono::milliseconds>(
                                                std::chrono::system_clock::now().time_since_epoch())
                                                .count());
  const double s = (now_ms - static_cast<double>(ms)) / 1000;
  char buf[32];
  if (s < 120)
    std::snprintf(buf, sizeof(buf), "%.0fs ago", s);
  else if (s < 7200)
    std::snprintf(buf, sizeof(buf), "%.0fm ago", s / 60);
  else
    std::snprintf(buf, sizeof(buf), "%.1fh ago", s / 3600);
  return buf;
}

// One line per progress event, for `watch` and `submit --wait`.
std::string DescribeEvent(const Json& e) {
  const std::string type = e.value("event", "");
  if (type == "log") return e.value("message", "");
  if (type == "phase") {
    std::string s = "phase: " + e.value("phase", "");
    if (e.contains("error")) s += " (" + e.value("error", "") + ")";
    return s;
  }
  if (type == "cancel_requested") return "cancel requested";
  return "";
}

// Follows the job's events until it ends; prints them. Returns the final state.
StatusOr<JobState> Follow(http::Client& c, const std::string& id, bool json) {
  int64_t cursor = 0;
  while (true) {
    std::string buffer;
    auto status =
        c.Stream("GET", "/v1/jobs/" + id + "/events?after=" + std::to_string(cursor),
                 [&](std::string_view data) {
                   buffer.append(data);
                   size_t end;
                   while ((end = buffer.find("\n\n")) != std::string::npos) {
                     const std::string msg = buffer.substr(0, end);
                     buffer.erase(0, end + 2);
                     int64_t seq = -1;
                     std::string payload;
                     size_t pos = 0;
                     while (pos < msg.size()) {
                       size_t nl = msg.find('\n', pos);
                       if (nl == std::string::npos) nl = msg.size();
                       const std::string line = msg.substr(pos, nl - pos);
                       if (line.rfind("id: ", 0) == 0) seq = std::atoll(line.c_str() + 4);
                       if (line.rfind("data: ", 0) == 0) payload = line.substr(6);
                       pos = nl + 1;
                     }
                     if (seq >= 0) cursor = seq;
                     if (payload.empty()) continue;
                     const Json e = Json::parse(payload, nullptr, false);
                     if (json) {
                       std::cout << payload << "\n";
                     } else if (const std::string line = DescribeEvent(e); !line.empty()) {
                       std::cout << line << "\n";
                     }
                     std::cout.flush();
                   }
                   return true;
                 });
    if (!status.ok()) return status.status();
    if (*status != 200)
      return InvalidArgument("GET events of job '" + id + "': HTTP " + std::to_string(*status));
    HYB_ASSIGN_OR_RETURN(Json job, GetJson(c, "/v1/jobs/" + id));
    HYB_ASSIGN_OR_RETURN(JobState state, ParseJobState(job.value("state", "")));
    if (IsTerminal(state)) return state;
  }
}

std::vector<std::string> Positional(std::vector<std::string> args, const std::string& flag) {
  if (!args.empty() && !args[0].empty() && args[0][0] != '-') args[0] = "--" + flag + "=" + args[0];
  return args;
}

}  // namespace

int RunSubmit(const std::vector<std::string>& args) {
  static const std::vector<FlagSpec> flags = {
      {"job", "FILE.json", "the job spec (or give it as the first argument)", ""},
      {"wait", "", "follow the job's progress until it ends; exit 0 only if it succeeded", ""},
      {"validate-only", "", "only check the spec and its inputs on the coordinator", ""},
      kServerFlag,
      kTokenFlag,
      kCaFlag,
      kJsonFlag,
  };
  return RunCommand(
      {"submit",
       "hybridize submit JOB.json [--wait] [--validate-only] [--server URL]",
       "Submits a job spec to the coordinator (POST /v1/jobs). Paths in the spec are relative "
       "to the coordinator's storage root (or absolute paths every worker sees). Submitting "
       "the same spec again returns the existing job; another spec under an existing job_id "
       "is refused.",
       flags,
       {"job"}},
      Positional(args, "job"), [](const ParsedFlags& f) -> Status {
        HYB_ASSIGN_OR_RETURN(std::string text, ReadFileToString(*f.Get("job")));
        HYB_ASSIGN_OR_RETURN(http::Client c, ApiClient(f));
        const bool validate_only = f.Has("validate-only");
        HYB_ASSIGN_OR_RETURN(
            auto r,
            c.Request("POST", validate_only ? "/v1/jobs?validate_only=true" : "/v1/jobs", text));
        if (r.status != 200 && r.status != 201) return ApiError(r, "submitting " + *f.Get("job"));
        Json j = Json::parse(r.body, nullptr, false);
        if (f.Has("json")) {
          std::cout << j.dump(2) << "\n";
        } else if (validate_only) {
          std::cout << "job " << j.value("job_id", "") << ": valid (" << j.value("num_layers", 0)
                    << "-layer " << j.value("family", "") << " teacher, "
                    << j.value("validation_examples", 0) << " validation examples)\n";
        } else {
          std::cout << "job " << j.value("job_id", "") << ": " << j.value("state", "")
                    << (j.value("created", true) ? " (submitted)" : " (already submitted)") << "\n";
        }
        if (!f.Has("wait") || validate_only) return Status::Ok();
        HYB_ASSIGN_OR_RETURN(http::Client follow, ApiClient(f, 30));
        HYB_ASSIGN_OR_RETURN(JobState state, Follow(follow, j.value("job_id", ""), f.Has("json")));
        if (state != JobState::kSucceeded) {
          HYB_ASSIGN_OR_RETURN(Json job, GetJson(c, "/v1/jobs/" + j.value("job_id", "")));
          return FailedPrecondition(
              "job " + j.value("job_id", "") + " ended " + std::string(JobStateName(state)) +
              (job["error"].is_string() ? ": " + job.value("error", "") : ""));
        }
        std::cout << "job " << j.value("job_id", "") << ": SUCCEEDED; report: GET /v1/jobs/"
                  << j.value("job_id", "") << "/report.html\n";
        return Status::Ok();
      });
}

int RunStatus(const std::vector<std::string>& args) {
  static const std::vector<FlagSpec> flags = {
      {"id", "JOB_ID", "one job (or give it as the first argument); none: list every job", ""},
      kServerFlag,
      kTokenFlag,
      kCaFlag,
      kJsonFlag,
  };
  return RunCommand(
      {"status",
       "hybridize status [JOB_ID] [--json] [--server URL]",
       "Lists the coordinator's jobs, or shows one job: state, phase, distillation step and "
       "per-layer loss, search round and candidates scored, ETA, error.",
       flags,
       {}},
      Positional(args, "id"), [](const ParsedFlags& f) -> Status {
        HYB_ASSIGN_OR_RETURN(http::Client c, ApiClient(f));
        if (!f.Has("id")) {
          HYB_ASSIGN_OR_RETURN(Json j, GetJson(c, "/v1/jobs"));
          if (f.Has("json")) {
            std::cout << j.dump(2) << "\n";
            return Status::Ok();
          }
          std::printf("%-24s %-11s %-11s %s\n", "JOB", "STATE", "PHASE", "UPDATED");
          for (const auto& job : j["jobs"]) {
            std::printf("%-24s %-11s %-11s %s\n", job.value("job_id", "").c_str(),
                        job.value("state", "").c_str(), job.value("phase", "").c_str(),
                        Age(job.value("updated_ms", int64_t{0})).c_str());
          }
          return Status::Ok();
        }
        HYB_ASSIGN_OR_RETURN(Json j, GetJson(c, "/v1/jobs/" + *f.Get("id")));
        if (f.Has("json")) {
          std::cout << j.dump(2) << "\n";
          return Status::Ok();
        }
        std::cout << "job " << j.value("job_id", "") << ": " << j.value("state", "") << "\n";
        const Json& p = j["progress"];
        if (p.contains("distill")) {
          const Json& d = p["distill"];
          std::cout << "  distillation: step " << d.value("step", 0) << " of "
                    << d.value("steps", 0) << "; nmse";
          for (const auto& l : d.value("layers", Json::array())) {
            std::printf(" %lld:%.3f", static_cast<long long>(l.value("layer", -1)),
                        l.value("nmse", 0.0));
          }
          std::cout << "\n";
        }
        if (p.contains("search")) {
          const Json& s = p["search"];
          std::cout << "  search: round " << s.value("round", 0) << ", " << s.value("scored", 0)
                    << " of " << s.value("of", 0) << " candidates scored ("
                    << s.value("candidates_scored", 0) << " in all)\n";
        }
        if (p.contains("eta_seconds") && j.value("state", "") != "SUCCEEDED") {
          std::printf("  ETA: %.0f s\n", p.value("eta_seconds", 0.0));
        }
        const Json& t = j["tasks"];
        std::cout << "  tasks: " << t.value("done", 0) << " done, " << t.value("leased", 0)
                  << " running, " << t.value("queued", 0) << " queued, " << t.value("failed", 0)
                  << " failed; retries used " << j["retries"].value("used", 0) << " of "
                  << j["retries"].value("budget", 0) << "\n";
        if (j["error"].is_string()) std::cout << "  error: " << j.value("error", "") << "\n";
        return Status::Ok();
      });
}

int RunWatch(const std::vector<std::string>& args) {
  static const std::vector<FlagSpec> flags = {
      {"id", "JOB_ID", "the job (or give it as the first argument)", ""},
      kServerFlag,
      kTokenFlag,
      kCaFlag,
      {"json", "", "print every event as JSON", ""},
  };
  return RunCommand(
      {"watch",
       "hybridize watch JOB_ID [--json] [--server URL]",
       "Follows a job's progress live (GET /v1/jobs/{id}/events, server-sent events) from its "
       "first event until it ends. Exits 0 if the job succeeded, 1 otherwise.",
       flags,
       {"id"}},
      Positional(args, "id"), [](const ParsedFlags& f) -> Status {
        HYB_ASSIGN_OR_RETURN(http::Client c, ApiClient(f, 30));
        HYB_ASSIGN_OR_RETURN(JobState state, Follow(c, *f.Get("id"), f.Has("json")));
        if (state != JobState::kSucceeded) {
          return FailedPrecondition("job " + *f.Get("id") + " ended " +
                                    std::string(JobStateName(state)));
        }
        return Status::Ok();
      });
}

int RunCancel(const std::vector<std::string>& args) {
  static const std::vector<FlagSpec> flags = {
      {"id", "JOB_ID", "the job (or give it as the first argument)", ""},
      kServerFlag,
      kTokenFlag,
      kCaFlag,
  };
  return RunCommand(
      {"cancel",
       "hybridize cancel JOB_ID [--server URL]",
       "Cancels a job: queued work is dropped, running tasks stop at their next heartbeat "
       "(distillation checkpoints first), and the job ends CANCELLED.",
       flags,
       {"id"}},
      Positional(args, "id"), [](const ParsedFlags& f) -> Status {
        HYB_ASSIGN_OR_RETURN(http::Client c, ApiClient(f));
        HYB_ASSIGN_OR_RETURN(auto r, c.Request("POST", "/v1/jobs/" + *f.Get("id") + "/cancel"));
        if (r.status != 202) return ApiError(r, "cancelling " + *f.Get("id"));
        Json j = Json::parse(r.body, nullptr, false);
        std::cout << "job " << *f.Get("id") << ": " << j.value("state", "") << "\n";
        return Status::Ok();
      });
}

int RunWorkers(const std::vector<std::string>& args) {
  static const std::vector<FlagSpec> flags = {kServerFlag, kTokenFlag, kCaFlag, kJsonFlag};
  return RunCommand({"workers",
                     "hybridize workers [--json] [--server URL]",
                     "Lists the workers the coordinator knows: idle, busy (with the task) or lost.",
                     flags,
                     {}},
                    args, [](const ParsedFlags& f) -> Status {
                      HYB_ASSIGN_OR_RETURN(http::Client c, ApiClient(f));
                      HYB_ASSIGN_OR_RETURN(Json j, GetJson(c, "/v1/workers"));
                      if (f.Has("json")) {
                        std::cout << j.dump(2) << "\n";
                        return Status::Ok();
                      }
                      std::printf("%-28s %-6s %-14s %s\n", "WORKER", "STATE", "SEEN", "TASK");
                      for (const auto& w : j["workers"]) {
                        std::printf(
                            "%-28s %-6s %-14s %s\n", w.value("worker_id", "").c_str(),
                            w.value("state", "").c_str(),
                            Age(w.value("last_seen_ms", int64_t{0})).c_str(),
                            w["task_id"].is_string() ? w.value("task_id", "").c_str() : "-");
                      }
                      return Status::Ok();
                    });
}

}  // namespace hyb::cli
