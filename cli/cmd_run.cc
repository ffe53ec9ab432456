// hybridize run: a whole Distill-then-Replace job on this machine, no server to install. The
// same job runner and task types as the service, with an in-process executor.
#include <torch/cuda.h>

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <ctime>
#include <iostream>

#include "commands.h"
#include "flags.h"
#include "hyb/common/job_spec.h"
#include "hyb/coordinator/job_runner.h"
#include "hyb/coordinator/job_validation.h"
#include "hyb/storage/job_layout.h"
#include "hyb/worker/communicator.h"
#include "hyb/worker/gang.h"
#include "hyb/worker/local_executor.h"

namespace hyb::cli {
namespace {

const std::vector<FlagSpec>& Specs() {
  static const std::vector<FlagSpec> specs = {
      {"job", "FILE.json", "the job spec (or give it as the first argument)", ""},
      {"storage", "DIR", "storage root; the job's files go to DIR/<job_id>", "hybridize-jobs"},
      {"validate-only", "", "check the spec and its inputs, then exit", ""},
      {"print-schema", "", "print the job schema (configs/job.schema.json) and exit", ""},
      {"mpi", "",
       "run as one rank of `mpirun -np N hybridize run JOB.json --mpi`: rank 0 drives the job; "
       "every rank distills its pipeline stage (distill.parallel) and scores its share of each "
       "search round; the outputs equal a one-process run's",
       ""},
      {"comm-timeout", "SECONDS",
       "with --mpi: how long a rank waits for another rank's tensors before it fails, naming "
       "the rank",
       "600"},
  };
  return specs;
}

std::string Dirname(const std::string& path) {
  const size_t slash = path.rfind('/');
  if (slash == std::string::npos) return ".";
  return slash == 0 ? "/" : path.substr(0, slash);
}

// `mpirun -np N hybridize run job.json --mpi`: one gang of N ranks, no coordinator.
Status RunMpi(const ParsedFlags& flags, JobSpec spec, coordinator::RunOptions options) {
  const std::string timeout_text = flags.GetOr("comm-timeout", "600");
  double seconds = 0;
  try {
    seconds = std::stod(timeout_text);
  } catch (const std::exception&) {
    seconds = -1;
  }
  if (!(seconds > 0)) {
    return InvalidArgument("--comm-timeout: '" + timeout_text + "' is not a positive number of seconds");
  }
  worker::GangOptions gang;
  gang.timeout = std::chrono::milliseconds(static_cast<int64_t>(seconds * 1000));
  if (!worker::LaunchedByMpirun()) {
    std::fprintf(stderr, "hybridize run: --mpi without mpirun: running as a gang of one rank\n");
  }
  HYB_RETURN_IF_ERROR(worker::MpiInit());
  HYB_ASSIGN_OR_RETURN(auto world, worker::MpiWorld(gang.timeout));
  HYB_ASSIGN_OR_RETURN(auto control, world->Split(0, world->rank(), "control"));
  const int rank = world->rank(), size = world->size();
  // One GPU per rank: the ranks of a node take its devices in turn.
  const bool cuda = spec.device.rfind("cuda", 0) == 0;
  if (cuda) {
    const char* local = std::getenv("OMPI_COMM_WORLD_LOCAL_SIZE");
    const int64_t ranks_here = local != nullptr ? std::atoi(local) : 1;
    const auto gpus = static_cast<int64_t>(torch::cuda::device_count());
    if (ranks_here > gpus) {
      // NCCL refuses two ranks on one device: say so before it does, in our words.
      return InvalidArgument("device: " + std::to_string(ranks_here) +
                             " ranks on this node but " + std::to_string(gpus) +
                             " CUDA devices; start at most one rank per GPU");
    }
  }
  if (cuda && spec.device == "cuda" && torch::cuda::device_count() > 0) {
    spec.device = "cuda:" + std::to_string(worker::MpiLocalRank() %
                                           static_cast<int>(torch::cuda::device_count()));
  }
  std::unique_ptr<worker::Communicator> nccl;
  worker::Communicator* device_world = world.get();
  // Communicators go before MPI does.
  auto finalize = [&] {
    nccl.reset();
    control.reset();
    world.reset();
    worker::MpiFinalize();
  };
  if (cuda) {
    std::string id;
    if (rank == 0) {
      HYB_ASSIGN_OR_RETURN(id, worker::NcclNewUniqueId());
    }
    HYB_RETURN_IF_ERROR(control->BroadcastString(&id, 0));
    const int device = spec.device.size() > 5 ? std::stoi(spec.device.substr(5)) : 0;
    HYB_ASSIGN_OR_RETURN(nccl, worker::NcclConnect(id, rank, size, device, gang.timeout));
    device_world = nccl.get();
  }
  if (Status s = coordinator::ValidateJob(spec).status(); !s.ok()) {
    // Every rank read the same spec and fails alike.
    finalize();
    return s;
  }
  storage::JobLayout layout(options.storage_root, spec.job_id);
  if (rank != 0) {
    Status s = worker::RunGangMember(spec, layout.dir(), control.get(), device_world, gang);
    if (!s.ok()) {
      std::fprintf(stderr, "hybridize run: rank %d of %d: %s\n", rank, size,
                   s.ToString().c_str());
      worker::MpiAbort(1);
    }
  } else {
    options.print("mpi: " + std::to_string(size) + " ranks, distillation tensors over " +
                  device_world->backend() + ", timeout " + timeout_text + " s");
    worker::GangExecutor executor(layout.dir(), control.get(), device_world, gang);
    coordinator::JobRunner runner(spec, &executor, options);
    auto outcome = runner.Run();
    if (!outcome.ok()) {
      if (!executor.members_idle() || !executor.Stop().ok()) {
        // Some rank is stuck in (or gone from) an operation: end the whole gang.
        std::fprintf(stderr, "hybridize run: rank 0 of %d: %s\n", size,
                     outcome.status().ToString().c_str());
        worker::MpiAbort(1);
      }
    } else {
      HYB_RETURN_IF_ERROR(executor.Stop());
    }
    if (outcome.ok()) std::cout << outcome->summary;
    finalize();
    return outcome.status();
  }
  finalize();
  return Status::Ok();
}

Status Run(const ParsedFlags& flags) {
  if (flags.Has("print-schema")) {
    std::cout << JobSchemaText();
    return Status::Ok();
  }
  auto job = flags.Get("job");
  if (!job) return InvalidArgument("give the job spec: hybridize run job.json");
  HYB_ASSIGN_OR_RETURN(std::string text, ReadFileToString(*job));
  HYB_ASSIGN_OR_RETURN(JobSpec spec, ParseJobSpec(text, *job, Dirname(*job)));
  coordinator::RunOptions options;
  options.storage_root = flags.GetOr("storage", "hybridize-jobs");
  const auto start = std::chrono::steady_clock::now();
  options.print = [start](const std::string& line) {
    const double t =
        std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
    std::fprintf(stderr, "[%6.1fs] %s\n", t, line.c_str());
  };
  if (flags.Has("mpi") && !flags.Has("validate-only")) {
    return RunMpi(flags, std::move(spec), std::move(options));
  }
  storage::JobLayout layout(options.storage_root, spec.job_id);
  worker::LocalExecutor executor(layout.dir());
  // The torch-free checks first, for both paths: the executor's Validate (the teacher loading)
  // no longer repeats them.
  HYB_RETURN_IF_ERROR(coordinator::ValidateJob(spec).status());
  if (flags.Has("validate-only")) {
    HYB_RETURN_IF_ERROR(executor.Validate(spec));
    std::cout << "job " << spec.job_id << ": valid\n";
    return Status::Ok();
  }
  coordinator::JobRunner runner(spec, &executor, options);
  HYB_ASSIGN_OR_RETURN(coordinator::RunOutcome outcome, runner.Run());
  std::cout << outcome.summary;
  return Status::Ok();
}

}  // namespace

int RunRun(const std::vector<std::string>& args) {
  // The job file may come first, as a positional argument.
  std::vector<std::string> rest = args;
  if (!rest.empty() && !rest[0].empty() && rest[0][0] != '-') {
    rest[0] = "--job=" + rest[0];
  }
  return RunCommand({"run",
                     "hybridize run JOB.json [--storage DIR] [--validate-only] "
                     "[--mpi [--comm-timeout S]]",
                     "Runs a Distill-then-Replace job end to end on this machine: validates the "
                     "spec against the job schema, distills every layer's linear mixer, runs the "
                     "greedy replacement search on the task's validation split, exports M_best "
                     "and M_opt, scores the test split and writes report.json and report.html "
                     "under DIR/<job_id>. Re-running the same spec resumes where it stopped; a "
                     "different spec under the same job_id, or changed inputs (teacher, "
                     "distillation data, task files), are refused. Under mpirun with --mpi the "
                     "ranks share the job (see docs/distributed.md); every rank needs the job "
                     "file, the inputs and DIR at the same paths.",
                     Specs(),
                     {}},
                    rest, Run);
}

}  // namespace hyb::cli
