// Drives one job through its phases (DESIGN.md §3): VALIDATING, DISTILLING, SEARCHING,
// EXPORTING. Torch-free: each phase emits tasks (distill these layers, evaluate this candidate,
// export this hybrid) that a TaskExecutor runs; the greedy searcher decides what comes next.
// The embedded `hybridize run` gives it an in-process executor; the service will give it one
// that leases tasks to workers.
//
// Nothing is lost on a crash: every finished task's result is published in the job directory
// (storage/job_layout.h) and a re-run of the same spec reuses it: distillation resumes from its
// per-layer checkpoints, stored evaluations are replayed into the search (candidate ids are
// deterministic), existing exports are kept. A different spec under the same job id is refused.
#pragma once

#include <cstdint>
#include <functional>
#include <string>

#include "hyb/common/job_spec.h"
#include "hyb/common/json_util.h"
#include "hyb/common/status.h"
#include "hyb/common/tasks.h"
#include "hyb/storage/job_layout.h"

namespace hyb::coordinator {

struct RunOptions {
  std::string storage_root = "hybridize-jobs";
  // Receives one human-readable progress line at a time (the terminal in `hybridize run`).
  std::function<void(const std::string&)> print;
  double progress_interval_s = 2.0;  // minimum seconds between distillation progress lines
};

struct RunOutcome {
  std::string job_dir;
  Json report;          // report.json's content
  std::string summary;  // a one-screen text summary
};

class JobRunner {
 public:
  JobRunner(JobSpec spec, TaskExecutor* executor, RunOptions options);

  // Runs (or resumes) the job to the end. Errors carry the phase that failed.
  StatusOr<RunOutcome> Run();

 private:
  Status Validate();
  Status Distill(Json* distill_report);
  StatusOr<EvaluateResult> EvaluateStored(const EvaluateTask& task);
  void Print(const std::string& line) const;
  void Event(Json event) const;

  JobSpec spec_;
  TaskExecutor* executor_;
  RunOptions options_;
  storage::JobLayout layout_;
  int64_t num_layers_ = 0;
  std::string family_;
};

// Layers of a uniform interleaving: `k` of `eligible` (sorted) evenly spaced, as index
// floor((i + 0.5) * n / k) for i < k.
std::vector<int64_t> UniformPlacement(const std::vector<int64_t>& eligible, int64_t k);

}  // namespace hyb::coordinator
