// The service with real processes on loopback (ctest label `integration`): `hybridize serve`
// and `hybridize worker` processes, the HTTP API, SQLite and the shared storage directory, on a
// tiny model. Each test compares the service's result with `hybridize run`'s on the same spec.
#include <gtest/gtest.h>
#include <signal.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <fstream>
#include <set>
#include <thread>
#include <tuple>

#include "hyb/common/http.h"
#include "hyb/storage/job_store.h"
#include "testing/temp_dir.h"
#include "worker/test_model.h"

namespace hyb {
namespace {

using hyb::testing::TempDir;
using Clock = std::chrono::steady_clock;

const char* Cli() { return std::getenv("HYB_CLI"); }

// A child process (fork + exec of the hybridize binary), killed and reaped on destruction.
class Process {
 public:
  Process(const std::vector<std::string>& args, const std::string& log) {
    pid_ = fork();
    if (pid_ == 0) {
      FILE* f = std::fopen(log.c_str(), "a");
      if (f) {
        dup2(fileno(f), 1);
        dup2(fileno(f), 2);
      }
      std::vector<char*> argv;
      std::string cli = Cli();
      argv.push_back(cli.data());
      std::vector<std::string> copy = args;
      for (auto& a : copy) argv.push_back(a.data());
      argv.push_back(nullptr);
      execv(cli.c_str(), argv.data());
      _exit(127);
    }
  }
  ~Process() { Kill(SIGKILL); }
  Process(const Process&) = delete;
  Process& operator=(const Process&) = delete;

  // Sends `sig` and waits for the process to end; returns its exit status (-1 if killed).
  int Kill(int sig) {
    if (pid_ <= 0) return exit_;
    ::kill(pid_, sig);
    int status = 0;
    waitpid(pid_, &status, 0);
    pid_ = -1;
    exit_ = WIFEXITED(status) ? WEXITSTATUS(status) : -1;
    return exit_;
  }
  bool Running() {
    if (pid_ <= 0) return false;
    int status = 0;
    if (waitpid(pid_, &status, WNOHANG) == pid_) {
      pid_ = -1;
      exit_ = WIFEXITED(status) ? WEXITSTATUS(status) : -1;
      return false;
    }
    return true;
  }

 private:
  pid_t pid_ = -1;
  int exit_ = -1;
};

std::string ReadAll(const std::string& path) {
  std::ifstream in(path);
  return std::string(std::istreambuf_iterator<char>(in), {});
}

// One coordinator (restartable on the same port, database and storage) and its workers.
class Cluster {
 public:
  explicit Cluster(const TempDir& dir, double lease_seconds = 5)
      : dir_(dir), root_(dir.File("root")), lease_(lease_seconds) {
    std::ofstream(dir.File("api.token")) << "api-secret\n";
    std::ofstream(dir.File("worker.token")) << "worker-secret\n";
  }

  void StartCoordinator() {
    const std::string port_file = dir_.File("port");
    std::remove(port_file.c_str());
    coordinator_ = std::make_unique<Process>(
        std::vector<std::string>{"serve", "--storage", root_, "--listen",
                                 "127.0.0.1:" + std::to_string(port_), "--port-file", port_file,
                                 "--token-file", dir_.File("api.token"), "--worker-token-file",
                                 dir_.File("worker.token"), "--lease-seconds",
                                 std::to_string(lease_), "--retry-budget", "3"},
        dir_.File("coordinator.log"));
    const auto start = Clock::now();
    while (ReadAll(port_file).empty()) {
      ASSERT_LT(Seconds(start), 20) << "coordinator did not start:\n" << Log("coordinator.log");
      std::this_thread::sleep_for(std::chrono::milliseconds(50));
    }
    port_ = std::stoi(ReadAll(port_file));
    http::ClientOptions o;
    o.bearer_token = "api-secret";
    o.timeout_s = 30;
    api_ = std::make_unique<http::Client>(*http::Client::Create(Url(), o));
  }

  // `storage`: where this worker mounts the storage root ("" = the coordinator's path).
  void StartWorker(const std::string& id, const std::vector<std::string>& extra = {},
                   const std::string& storage = "") {
    std::vector<std::string> args = {"worker",
                                     "--coordinator",
                                     Url(),
                                     "--storage",
                                     storage.empty() ? root_ : storage,
                                     "--token-file",
                                     dir_.File("worker.token"),
                                     "--id",
                                     id,
                                     "--poll-seconds",
                                     "1",
                                     "--reconnect-seconds",
                                     "60"};
    args.insert(args.end(), extra.begin(), extra.end());
    workers_[id] = std::make_unique<Process>(args, dir_.File(id + ".log"));
  }

  std::string Url() const { return "http://127.0.0.1:" + std::to_string(port_); }
  http::Client& api() { return *api_; }
  Process& coordinator() { return *coordinator_; }
  Process& worker(const std::string& id) { return *workers_.at(id); }
  const std::string& root() const { return root_; }
  std::string Log(const std::string& name) const { return ReadAll(dir_.File(name)); }
  std::string Logs() const {
    std::string all = "--- coordinator\n" + Log("coordinator.log");
    for (const auto& [id, p] : workers_) all += "--- " + id + "\n" + Log(id + ".log");
    return all;
  }

  Json Get(const std::string& target) {
    auto r = api_->Request("GET", target);
    if (!r.ok() || r->status != 200) return Json();
    return Json::parse(r->body, nullptr, false);
  }

  // Polls GET /v1/jobs/{id} until `done(job)` or the timeout; returns the last answer.
  Json WaitFor(const std::string& id, const std::function<bool(const Json&)>& done,
               double timeout_s) {
    const auto start = Clock::now();
    Json job;
    while (Seconds(start) < timeout_s) {
      job = Get("/v1/jobs/" + id);
      if (job.is_object() && done(job)) return job;
      std::this_thread::sleep_for(std::chrono::milliseconds(200));
    }
    ADD_FAILURE() << "timed out; last answer: " << job.dump() << "\n" << Logs();
    return job;
  }

  static double Seconds(Clock::time_point t) {
    return std::chrono::duration<double>(Clock::now() - t).count();
  }

 private:
  const TempDir& dir_;
  std::string root_;
  double lease_;
  int port_ = 0;
  std::unique_ptr<Process> coordinator_;
  std::map<std::string, std::unique_ptr<Process>> workers_;
  std::unique_ptr<http::Client> api_;
};

// The number at `pointer` ("/progress/distill/step") in `j`, or 0 where there is none.
double At(const Json& j, const std::string& pointer) {
  const Json::json_pointer p(pointer);
  return j.is_object() && j.contains(p) && j.at(p).is_number() ? j.at(p).get<double>() : 0;
}

// Runs the hybridize CLI against the cluster's coordinator; returns exit code and output.
std::pair<int, std::string> RunCli(const std::string& url, const std::string& args) {
  const std::string cmd =
      "HYB_SERVER=" + url + " HYB_TOKEN=api-secret " + Cli() + " " + args + " 2>&1";
  std::string out;
  FILE* p = popen(cmd.c_str(), "r");
  char buf[4096];
  size_t n;
  while ((n = std::fread(buf, 1, sizeof(buf), p)) > 0) out.append(buf, n);
  const int status = pclose(p);
  return {WIFEXITED(status) ? WEXITSTATUS(status) : -1, out};
}

bool Terminal(const Json& job) {
  const std::string s = job.value("state", "");
  return s == "SUCCEEDED" || s == "FAILED" || s == "CANCELLED";
}

// `hybridize run` on root/job.json: the reference report.
Json RunReference(const TempDir& dir) {
  const std::string cmd = std::string(Cli()) + " run " + dir.File("root/job.json") + " --storage " +
                          dir.File("run-store") + " > " + dir.File("run.log") + " 2>&1";
  EXPECT_EQ(std::system(cmd.c_str()), 0) << ReadAll(dir.File("run.log"));
  auto report = ReadJsonFile(dir.File("run-store/tiny/report.json"));
  EXPECT_TRUE(report.ok()) << report.status().ToString();
  return report.ok() ? *report : Json();
}

// What must not depend on which worker ran what: models, trajectory, every candidate's score.
Json Decisions(const Json& report) {
  Json rounds = Json::array();
  for (const auto& r : report["search"]["rounds"]) {
    Json cs = Json::array();
    for (const auto& c : r["candidates"]) {
      cs.push_back({c["linear_layers"], c["score"], c["kl"], c["delta_ci95"]});
    }
    rounds.push_back({r["best_layer"], r["committed"], cs});
  }
  Json models = Json::array();
  for (const auto& m : report["models"]) {
    models.push_back({m["name"], m["linear_layers"], m["validation"], m["test"]});
  }
  return {{"rounds", rounds},
          {"models", models},
          {"trajectory", report["search"]["trajectory"]},
          {"placements", report.value("placements", Json())}};
}

std::string JobText(const TempDir& dir) { return ReadAll(dir.File("root/job.json")); }

class ServiceTest : public ::testing::Test {
 protected:
  void SetUp() override {
    if (Cli() == nullptr) GTEST_SKIP() << "HYB_CLI not set (run through ctest)";
  }
};

TEST_F(ServiceTest, TwoWorkersRunAJobAsRunDoesAndBadRequestsChangeNothing) {
  TempDir dir;
  ::mkdir(dir.File("root").c_str(), 0755);
  // Longer generations (and so candidates that take a while) make the workers' concurrency
  // observable on a loaded machine: a worker that finishes a tiny candidate could otherwise
  // lease the rest of a round before the other one wakes.
  hyb::testing::WriteTinyJob(dir.File("root"), {{"task", {{"max_new_tokens", 48}}}});
  const Json reference = RunReference(dir);
  Cluster c(dir);
  c.StartCoordinator();
  c.StartWorker("w1");
  // The second worker mounts the storage at another path (as another pod would): the job's
  // records hold paths relative to the root, so it works there too.
  ASSERT_EQ(::symlink(dir.File("root").c_str(), dir.File("elsewhere").c_str()), 0);
  c.StartWorker("w2", {}, dir.File("elsewhere"));
  http::Client& api = c.api();

  // Bad requests: the right status, the field named, nothing stored.
  auto bad = api.Request("POST", "/v1/jobs", "{\"job_id\": ");
  ASSERT_TRUE(bad.ok());
  EXPECT_EQ(bad->status, 400) << bad->body;
  Json spec = Json::parse(JobText(dir));
  Json wrong_type = spec;
  wrong_type["task"]["type"] = "essay";
  bad = api.Request("POST", "/v1/jobs", wrong_type.dump());
  EXPECT_EQ(bad->status, 400);
  EXPECT_EQ(Json::parse(bad->body)["error"]["field"], "task.type") << bad->body;
  Json out_of_range = spec;
  out_of_range["search"]["layers"] = {0, 7};
  bad = api.Request("POST", "/v1/jobs?validate_only=true", out_of_range.dump());
  EXPECT_EQ(bad->status, 400);
  EXPECT_EQ(Json::parse(bad->body)["error"]["field"], "search.layers") << bad->body;
  bad = api.Request("POST", "/v1/jobs", std::string(9 << 20, ' '));
  EXPECT_EQ(bad->status, 413);
  http::ClientOptions no_token;
  auto anon = *http::Client::Create(c.Url(), no_token);
  bad = anon.Request("POST", "/v1/jobs", spec.dump());
  EXPECT_EQ(bad->status, 401);
  EXPECT_EQ(Json::parse(bad->body)["error"]["field"], "Authorization");
  no_token.bearer_token = "worker-secret";  // a worker's token is not a user's
  auto wrong = *http::Client::Create(c.Url(), no_token);
  EXPECT_EQ(wrong.Request("GET", "/v1/jobs")->status, 401);
  EXPECT_EQ(anon.Request("GET", "/healthz")->status, 200);
  EXPECT_EQ(c.Get("/v1/jobs")["jobs"].size(), 0u);
  auto valid = api.Request("POST", "/v1/jobs?validate_only=true", spec.dump());
  EXPECT_EQ(valid->status, 200) << valid->body;
  EXPECT_EQ(c.Get("/v1/jobs")["jobs"].size(), 0u);

  // The same spec twice is one job; another spec under its id is refused.
  auto first = api.Request("POST", "/v1/jobs", spec.dump());
  ASSERT_EQ(first->status, 201) << first->body;
  auto second = api.Request("POST", "/v1/jobs", spec.dump());
  EXPECT_EQ(second->status, 200);
  EXPECT_EQ(Json::parse(second->body)["created"], false);
  Json other = spec;
  other["search"]["tolerance"] = 0.25;
  EXPECT_EQ(api.Request("POST", "/v1/jobs", other.dump())->status, 409);
  EXPECT_EQ(c.Get("/v1/jobs")["jobs"].size(), 1u);

  const Json job = c.WaitFor("tiny", Terminal, 300);
  ASSERT_EQ(job.value("state", ""), "SUCCEEDED") << job.dump(2) << "\n" << c.Logs();
  const Json report = c.Get("/v1/jobs/tiny/report");
  EXPECT_EQ(Decisions(report), Decisions(reference));
  auto html = api.Request("GET", "/v1/jobs/tiny/report.html");
  EXPECT_EQ(html->status, 200);
  EXPECT_NE(html->body.find("<html"), std::string::npos);
  // The event stream carries every candidate's score and the decisions.
  auto events = c.Get("/v1/jobs/tiny/events?stream=false")["events"];
  int candidates = 0, rounds = 0;
  for (const auto& e : events) {
    candidates += e.value("event", "") == "candidate";
    rounds += e.value("event", "") == "round";
  }
  EXPECT_EQ(rounds, static_cast<int>(reference["search"]["rounds"].size()));
  EXPECT_GE(candidates, 3);

  // Both workers scored candidates of the same round (the task records say who ran what; a
  // round's candidates extend the same base, so they are told apart by their layer count).
  auto store = storage::JobStore::Open(dir.File("root/hybridize.db"));
  ASSERT_TRUE(store.ok());
  auto tasks = (*store)->JobTasks("tiny");
  ASSERT_TRUE(tasks.ok());
  std::map<size_t, std::set<std::string>> workers_by_round;
  for (const auto& t : *tasks) {
    if (t.kind == "evaluate" && t.payload.value("split", "") == "validation" &&
        !t.payload["linear_layers"].empty()) {
      EXPECT_EQ(t.state, storage::TaskState::kDone);
      workers_by_round[t.payload["linear_layers"].size()].insert(t.worker_id);
    }
  }
  bool shared_round = false;
  for (const auto& [round, ws] : workers_by_round) {
    shared_round = shared_round || ws == std::set<std::string>{"w1", "w2"};
  }
  EXPECT_TRUE(shared_round) << "no round was scored by both workers";
  // The CLI against the API: status, workers, watch (replays every event, exits 0 on
  // success), submit of the same spec (the existing job), cancel of a finished job.
  auto [rc, out] = RunCli(c.Url(), "status tiny");
  EXPECT_EQ(rc, 0) << out;
  EXPECT_NE(out.find("job tiny: SUCCEEDED"), std::string::npos) << out;
  std::tie(rc, out) = RunCli(c.Url(), "status");
  EXPECT_NE(out.find("tiny"), std::string::npos) << out;
  std::tie(rc, out) = RunCli(c.Url(), "workers");
  EXPECT_NE(out.find("w1"), std::string::npos) << out;
  EXPECT_NE(out.find("idle"), std::string::npos) << out;
  std::tie(rc, out) = RunCli(c.Url(), "watch tiny");
  EXPECT_EQ(rc, 0) << out;
  EXPECT_NE(out.find("phase: succeeded"), std::string::npos) << out;
  EXPECT_NE(out.find("round 1 [3/3]"), std::string::npos) << out;
  std::tie(rc, out) = RunCli(c.Url(), "submit " + dir.File("root/job.json") + " --wait");
  EXPECT_EQ(rc, 0) << out;
  EXPECT_NE(out.find("already submitted"), std::string::npos) << out;
  std::tie(rc, out) = RunCli(c.Url(), "status nosuchjob");
  EXPECT_EQ(rc, 1) << out;
  EXPECT_NE(out.find("HTTP 404"), std::string::npos) << out;
  std::tie(rc, out) = RunCli(c.Url(), "status --token-file /dev/null");
  EXPECT_EQ(rc, 1) << out;

  // SIGTERM drains and exits 0.
  EXPECT_EQ(c.coordinator().Kill(SIGTERM), 0) << c.Log("coordinator.log");
}

TEST_F(ServiceTest, AJobSurvivesAKilledWorkerAndAKilledCoordinator) {
  TempDir dir;
  ::mkdir(dir.File("root").c_str(), 0755);
  // Longer generations keep the search running long enough for a poll to see it under way on a
  // loaded machine (CI once saw the whole search finish between two polls).
  hyb::testing::WriteTinyJob(dir.File("root"),
                             {{"distill", {{"steps", 300}, {"checkpoint_every", 10}}},
                              {"task", {{"max_new_tokens", 48}}}});
  const Json reference = RunReference(dir);
  Cluster c(dir);
  c.StartCoordinator();
  c.StartWorker("w1");
  c.StartWorker("w2");
  ASSERT_EQ(c.api().Request("POST", "/v1/jobs", JobText(dir))->status, 201);

  // kill -9 the worker that is distilling, once it has checkpointed.
  Json job = c.WaitFor(
      "tiny", [](const Json& j) { return At(j, "/progress/distill/step") >= 20; }, 120);
  std::string distiller;
  const Json workers = c.Get("/v1/workers");
  for (const auto& w : workers["workers"]) {
    if (w["task_id"] == "tiny:distill") distiller = w.value("worker_id", "");
  }
  ASSERT_FALSE(distiller.empty()) << c.Get("/v1/workers").dump();
  c.worker(distiller).Kill(SIGKILL);

  // kill -9 the coordinator during the search, and start it again on the same files.
  job = c.WaitFor(
      "tiny",
      [](const Json& j) {
        return j.value("state", "") == "SEARCHING" &&
               At(j, "/progress/search/candidates_scored") >= 1;
      },
      240);
  c.coordinator().Kill(SIGKILL);
  c.StartCoordinator();
  job = c.WaitFor("tiny", Terminal, 300);
  ASSERT_EQ(job.value("state", ""), "SUCCEEDED") << job.dump(2) << "\n" << c.Logs();
  EXPECT_EQ(Decisions(c.Get("/v1/jobs/tiny/report")), Decisions(reference));
  auto store = storage::JobStore::Open(dir.File("root/hybridize.db"));
  ASSERT_TRUE(store.ok());
  auto distill = (*store)->GetTask("tiny:distill");
  ASSERT_TRUE(distill.ok() && distill->has_value());
  EXPECT_GE((*distill)->attempts, 2);  // the lost worker's lease expired and was re-leased
  EXPECT_NE(c.Log("coordinator.log").find("lease of task tiny:distill expired"), std::string::npos);
}

TEST_F(ServiceTest, CancelDuringDistillationStopsWorkersAndLeavesNothingHalfWritten) {
  TempDir dir;
  ::mkdir(dir.File("root").c_str(), 0755);
  hyb::testing::WriteTinyJob(dir.File("root"),
                             {{"distill", {{"steps", 100000}, {"checkpoint_every", 50}}}});
  Cluster c(dir);
  c.StartCoordinator();
  c.StartWorker("w1");
  c.StartWorker("w2");
  ASSERT_EQ(c.api().Request("POST", "/v1/jobs", JobText(dir))->status, 201);
  c.WaitFor(
      "tiny", [](const Json& j) { return At(j, "/progress/distill/step") >= 10; }, 120);
  auto [rc, out] = RunCli(c.Url(), "cancel tiny");  // POST /v1/jobs/tiny/cancel
  ASSERT_EQ(rc, 0) << out;
  EXPECT_NE(out.find("job tiny: STOPPING"), std::string::npos) << out;
  const auto start = Clock::now();
  const Json job = c.WaitFor("tiny", Terminal, 30);
  EXPECT_EQ(job.value("state", ""), "CANCELLED") << job.dump(2);
  EXPECT_LT(Cluster::Seconds(start), 10);  // one heartbeat (1 s) plus a checkpoint
  // Both workers are idle again, and no temporary file is left in the job directory.
  c.WaitFor(
      "tiny",
      [&](const Json&) {
        const Json workers = c.Get("/v1/workers");
        for (const auto& w : workers["workers"]) {
          if (w.value("state", "") != "idle") return false;
        }
        return true;
      },
      10);
  const std::string cmd = "find " + dir.File("root/tiny") + " -name '*.tmp.*' | wc -l";
  FILE* p = popen(cmd.c_str(), "r");
  char buf[32] = {0};
  ASSERT_NE(std::fgets(buf, sizeof(buf), p), nullptr);
  pclose(p);
  EXPECT_EQ(std::atoi(buf), 0);
  EXPECT_NE(c.Log("w1.log").find("told to stop") + c.Log("w2.log").find("told to stop"),
            2 * std::string::npos);
}

TEST_F(ServiceTest, AFailedFsyncFailsTheTaskCleanlyAndTheRetrySucceeds) {
  TempDir dir;
  ::mkdir(dir.File("root").c_str(), 0755);
  hyb::testing::WriteTinyJob(dir.File("root"));
  Cluster c(dir);
  c.StartCoordinator();
  // The worker's first fsync (its first distillation checkpoint) fails.
  c.StartWorker("w1", {"--fail-nth-fsync", "1"});
  ASSERT_EQ(c.api().Request("POST", "/v1/jobs", JobText(dir))->status, 201);
  const Json job = c.WaitFor("tiny", Terminal, 300);
  ASSERT_EQ(job.value("state", ""), "SUCCEEDED") << job.dump(2) << "\n" << c.Logs();
  EXPECT_EQ(job["retries"].value("used", -1), 1);
  auto store = storage::JobStore::Open(dir.File("root/hybridize.db"));
  ASSERT_TRUE(store.ok());
  auto distill = (*store)->GetTask("tiny:distill");
  ASSERT_TRUE(distill.ok() && distill->has_value());
  EXPECT_EQ((*distill)->attempts, 2);
  EXPECT_NE((*distill)->error.find("injected fault"), std::string::npos) << (*distill)->error;
}

// A job whose spec asks for pipeline 2 distills on a gang of two workers leased at once (one
// idle worker is not enough: nothing starts), exchanging the residual stream over TCP found
// through the coordinator's key-value routes; a member killed mid-distillation breaks the gang,
// the survivors are stopped and a new attempt re-forms it from the checkpoints; the result is
// the one-process run's.
TEST_F(ServiceTest, DistillationGangFormsAllAtOnceAndReformsWhenAMemberDies) {
  TempDir dir;
  ::mkdir(dir.File("root").c_str(), 0755);
  hyb::testing::WriteTinyJob(
      dir.File("root"),
      {{"distill", {{"steps", 1200}, {"checkpoint_every", 10}, {"parallel", {{"pipeline", 2}}}}}});
  const Json reference = RunReference(dir);
  Cluster c(dir, /*lease_seconds=*/3);
  c.StartCoordinator();
  const std::vector<std::string> gang_flags = {"--advertise-address", "127.0.0.1",
                                               "--comm-timeout", "10", "--threads", "1"};
  c.StartWorker("w1", gang_flags);
  ASSERT_EQ(c.api().Request("POST", "/v1/jobs", JobText(dir))->status, 201);
  // All or none: with one worker the two members stay queued.
  Json job = c.WaitFor(
      "tiny", [](const Json& j) { return At(j, "/tasks/queued") >= 2; }, 60);
  std::this_thread::sleep_for(std::chrono::seconds(3));
  job = c.Get("/v1/jobs/tiny");
  EXPECT_EQ(At(job, "/tasks/queued"), 2) << job.dump();
  EXPECT_EQ(At(job, "/tasks/leased"), 0) << job.dump();
  c.StartWorker("w2", gang_flags);
  c.StartWorker("w3", gang_flags);
  job = c.WaitFor(
      "tiny", [](const Json& j) { return At(j, "/progress/distill/step") >= 30; }, 120);
  // Kill the member holding the second stage.
  std::string second;
  for (int i = 0; i < 50 && second.empty(); ++i) {
    const Json workers = c.Get("/v1/workers");
    for (const auto& w : workers["workers"]) {
      if (w["task_id"] == "tiny:distill:g1:r1") second = w.value("worker_id", "");
    }
    if (second.empty()) std::this_thread::sleep_for(std::chrono::milliseconds(100));
  }
  ASSERT_FALSE(second.empty()) << c.Get("/v1/workers").dump();
  c.worker(second).Kill(SIGKILL);
  job = c.WaitFor("tiny", Terminal, 300);
  ASSERT_EQ(job.value("state", ""), "SUCCEEDED") << job.dump(2) << "\n" << c.Logs();
  const Json report = c.Get("/v1/jobs/tiny/report");
  EXPECT_EQ(Decisions(report), Decisions(reference));
  ASSERT_EQ(report["distill"]["layers"].size(), 3u);
  for (size_t l = 0; l < 3; ++l) {
    EXPECT_NEAR(report["distill"]["layers"][l]["final_mse"].get<double>(),
                reference["distill"]["layers"][l]["final_mse"].get<double>(), 1e-4)
        << "layer " << l;
  }
  auto store = storage::JobStore::Open(dir.File("root/hybridize.db"));
  ASSERT_TRUE(store.ok());
  auto first = (*store)->GetTask("tiny:distill:g1:r0");
  auto again = (*store)->GetTask("tiny:distill:g2:r1");
  ASSERT_TRUE(first.ok() && first->has_value());
  EXPECT_EQ((*first)->state, storage::TaskState::kCancelled);
  ASSERT_TRUE(again.ok() && again->has_value()) << "no second gang attempt";
  EXPECT_EQ((*again)->state, storage::TaskState::kDone);
  EXPECT_NE((*again)->worker_id, second);
  EXPECT_NE(c.Log("coordinator.log").find("attempt 1 broke"), std::string::npos) << c.Logs();
  // The first attempt's stages were cut as the spec asked, and the gang talked over TCP.
  const Json events = c.Get("/v1/jobs/tiny/events?stream=false");
  std::set<int64_t> attempts;
  bool tcp = false;
  for (const auto& e : events["events"]) {
    if (e.value("event", "") == "distill_gang_attempt") attempts.insert(e.value("attempt", 0));
    if (e.value("event", "") == "distill_gang") {
      tcp = tcp || e.value("backend", "") == "tcp";
      EXPECT_EQ(e.value("stages", ""), "[0, 2), [2, 3)");
    }
  }
  EXPECT_EQ(attempts, (std::set<int64_t>{1, 2}));
  EXPECT_TRUE(tcp) << events.dump();
}

}  // namespace
}  // namespace hyb
