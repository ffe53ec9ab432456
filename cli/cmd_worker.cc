// hybridize worker: leases tasks from a coordinator and runs them here (worker/worker_agent.h).
// Needs LibTorch; the coordinator-only build (-DHYB_TORCH=OFF) leaves it out.
#include <atomic>
#include <cstdio>
#include <cstdlib>
#include <iostream>
#include <thread>

#include "commands.h"
#include "flags.h"
#include "hyb/common/http.h"
#include "hyb/storage/env.h"
#include "hyb/worker/worker_agent.h"
#include "service_flags.h"

namespace hyb::cli {
namespace {

// What `worker` reads from the environment, and the variables of the libraries it links (NCCL,
// CUDA, OpenMP, OpenBLAS), which pass through to them.
const std::vector<std::string> kWorkerReads = {"HYB_COORDINATOR", "HYB_WORKER_TOKEN",
                                                "HYB_LOG_LEVEL"};
const std::vector<std::string> kLibraryVariables = {"NCCL_*", "CUDA_*", "OMP_NUM_THREADS",
                                                    "OPENBLAS_NUM_THREADS"};

// --check-config: everything `worker` checks before it contacts the coordinator, and the
// settings it would run with.
Status CheckWorkerConfig(const ParsedFlags& f, const worker::WorkerOptions& wo) {
  HYB_RETURN_IF_ERROR(CheckWritableDirectory("storage", wo.storage_root));
  if (!wo.ca_file.empty()) HYB_RETURN_IF_ERROR(CheckReadableFile("ca-file", wo.ca_file));
  http::ClientOptions co;
  co.bearer_token = wo.token;
  co.ca_file = wo.ca_file;
  HYB_RETURN_IF_ERROR(http::Client::Create(wo.coordinator_url, co).status());
  HYB_ASSIGN_OR_RETURN(Json environment,
                       CheckEnvironment("worker", kWorkerReads, kLibraryVariables));
  Json j = {{"command", "worker"},
            {"coordinator", wo.coordinator_url},
            {"storage", wo.storage_root},
            {"token", TokenSource(f, "token-file", "HYB_WORKER_TOKEN")},
            {"ca_file", wo.ca_file},
            {"id", wo.worker_id.empty() ? "<hostname>-<pid>" : wo.worker_id},
            {"poll_seconds", wo.poll_seconds},
            {"reconnect_seconds", wo.reconnect_seconds},
            {"max_tasks", wo.max_tasks},
            {"threads", wo.threads},
            {"advertise_address", wo.advertise_address},
            {"comm_timeout_seconds", wo.comm_timeout_seconds},
            {"ports", Json::array()},
            {"environment", environment}};
  std::cout << j.dump(2) << "\n";
  return Status::Ok();
}

}  // namespace

int RunWorker(const std::vector<std::string>& args) {
  static const std::vector<FlagSpec> flags = {
      {"coordinator", "URL", "the coordinator (environment: HYB_COORDINATOR)", ""},
      {"storage", "DIR", "where this machine mounts the coordinator's storage root", ""},
      {"token-file", "FILE", "the worker token (environment: HYB_WORKER_TOKEN)", ""},
      {"ca-file", "FILE", "https: the coordinator's certificate or CA", ""},
      {"id", "NAME", "worker id", "<hostname>-<pid>"},
      {"poll-seconds", "S", "long-poll length of one lease request", "20"},
      {"reconnect-seconds", "S", "give up after the coordinator is unreachable this long", "300"},
      {"max-tasks", "N", "exit after this many tasks (0: until stopped)", "0"},
      {"threads", "N", "CPU threads per task, overriding the spec's threads (0: the spec's)", "0"},
      {"advertise-address", "HOST",
       "where the other members of a distillation gang reach this worker (the pod IP on "
       "Kubernetes)",
       "<hostname>"},
      {"comm-timeout", "S",
       "distillation gangs: how long a member waits for another's tensors before it fails",
       "600"},
      {"fail-nth-fsync", "N",
       "testing: the Nth fsync of this process's storage writes fails (fault injection)", ""},
      kCheckConfigFlag,
  };
  return RunCommand(
      {"worker",
       "hybridize worker --coordinator URL --storage DIR [--token-file F] [--id NAME]",
       "Runs a worker: registers with the coordinator, leases tasks (distillation, candidate "
       "evaluations, exports), runs them on this machine's CPU or GPU with the job's teacher "
       "from the shared storage, heartbeats progress and uploads results. SIGTERM or SIGINT "
       "stops the task in progress at its next heartbeat (distillation checkpoints first), "
       "reports it as stopped, and exits 0.",
       flags,
       {"storage"},
       /*flags_file=*/true},
      args, [](const ParsedFlags& f) -> Status {
        worker::WorkerOptions wo;
        wo.coordinator_url = f.GetOr("coordinator", "");
        if (wo.coordinator_url.empty()) {
          const char* e = std::getenv("HYB_COORDINATOR");
          if (!e) return InvalidArgument("give --coordinator URL or set HYB_COORDINATOR");
          wo.coordinator_url = e;
        }
        wo.storage_root = *f.Get("storage");
        HYB_ASSIGN_OR_RETURN(wo.token, Token(f, "token-file", "HYB_WORKER_TOKEN", true));
        wo.ca_file = f.GetOr("ca-file", "");
        wo.worker_id = f.GetOr("id", "");
        HYB_ASSIGN_OR_RETURN(wo.poll_seconds, Seconds(f, "poll-seconds", 20));
        HYB_ASSIGN_OR_RETURN(wo.reconnect_seconds, Seconds(f, "reconnect-seconds", 300));
        HYB_ASSIGN_OR_RETURN(wo.max_tasks, f.Int("max-tasks", 0));
        HYB_ASSIGN_OR_RETURN(wo.threads, f.Int("threads", 0));
        wo.advertise_address = f.GetOr("advertise-address", "");
        HYB_ASSIGN_OR_RETURN(wo.comm_timeout_seconds, Seconds(f, "comm-timeout", 600));
        if (wo.threads < 0) return InvalidArgument("--threads: must be >= 0");
        if (f.Has("check-config")) return CheckWorkerConfig(f, wo);
        for (const auto& name : UnreadHybVariables(kWorkerReads)) {
          std::fprintf(stderr, "hybridize worker: warning: %s is set but not read by worker\n",
                       name.c_str());
        }
        std::unique_ptr<storage::FaultInjectionEnv> faults;
        if (f.Has("fail-nth-fsync")) {
          HYB_ASSIGN_OR_RETURN(int64_t n, f.Int("fail-nth-fsync", 0));
          if (n <= 0) return InvalidArgument("--fail-nth-fsync: must be positive");
          faults = std::make_unique<storage::FaultInjectionEnv>(storage::Env::Posix());
          faults->FailNthSync(n);
          storage::Env::SetDefault(faults.get());
        }
        const sigset_t signals = BlockTerminationSignals();
        worker::WorkerAgent agent(wo);
        std::atomic<bool> done{false};
        std::thread watcher([&] {
          if (WaitForSignal(signals, done) != 0) {
            std::fprintf(stderr, "hybridize worker: stopping after the task in progress\n");
            agent.Stop();
          }
        });
        Status s = agent.Run();
        done = true;
        watcher.join();
        storage::Env::SetDefault(nullptr);
        return s;
      });
}

}  // namespace hyb::cli
