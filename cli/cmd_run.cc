// hybridize run: a whole Distill-then-Replace job on this machine, no server to install. The
// same job runner and task types as the service, with an in-process executor.
#include <chrono>
#include <cstdio>
#include <ctime>
#include <iostream>

#include "commands.h"
#include "flags.h"
#include "hyb/common/job_spec.h"
#include "hyb/coordinator/job_runner.h"
#include "hyb/coordinator/job_validation.h"
#include "hyb/storage/job_layout.h"
#include "hyb/worker/local_executor.h"

namespace hyb::cli {
namespace {

const std::vector<FlagSpec>& Specs() {
  static const std::vector<FlagSpec> specs = {
      {"job", "FILE.json", "the job spec (or give it as the first argument)", ""},
      {"storage", "DIR", "storage root; the job's files go to DIR/<job_id>", "hybridize-jobs"},
      {"validate-only", "", "check the spec and its inputs, then exit", ""},
      {"print-schema", "", "print the job schema (configs/job.schema.json) and exit", ""},
  };
  return specs;
}

std::string Dirname(const std::string& path) {
  const size_t slash = path.rfind('/');
  if (slash == std::string::npos) return ".";
  return slash == 0 ? "/" : path.substr(0, slash);
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
                     "hybridize run JOB.json [--storage DIR] [--validate-only]",
                     "Runs a Distill-then-Replace job end to end on this machine: validates the "
                     "spec against the job schema, distills every layer's linear mixer, runs the "
                     "greedy replacement search on the task's validation split, exports M_best "
                     "and M_opt, scores the test split and writes report.json and report.html "
                     "under DIR/<job_id>. Re-running the same spec resumes where it stopped; a "
                     "different spec under the same job_id, or changed inputs (teacher, "
                     "distillation data, task files), are refused.",
                     Specs(),
                     {}},
                    rest, Run);
}

}  // namespace hyb::cli
