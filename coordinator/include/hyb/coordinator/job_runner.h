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
#include <optional>
#include <string>
#include <vector>

#include "hyb/common/job_spec.h"
#include "hyb/common/json_util.h"
#include "hyb/common/status.h"
#include "hyb/common/tasks.h"
#include "hyb/coordinator/greedy_search.h"
#include "hyb/coordinator/job_validation.h"
#include "hyb/storage/job_layout.h"

namespace hyb::coordinator {

struct RunOptions {
  std::string storage_root = "hybridize-jobs";
  // Receives one human-readable progress line at a time (the terminal in `hybridize run`).
  std::function<void(const std::string&)> print;
  double progress_interval_s = 2.0;  // minimum seconds between distillation progress lines
  // Receives every progress event after it is appended to the job's events.jsonl (the service
  // records them in its database for GET /v1/jobs/{id}/events). Called from Run's thread.
  std::function<void(const Json&)> on_event;
  // The torch-free validation; unset: ValidateJob (coordinator/job_validation.h). Unit tests
  // of the runner replace it to run without real input files.
  std::function<StatusOr<ValidatedJob>(const JobSpec&)> validate;
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
  // The stored result of `task` from an earlier run, if there is one.
  StatusOr<std::optional<EvaluateResult>> LoadStored(const EvaluateTask& task) const;
  // Publishes a fresh result in the job directory (non-finite scores are an error).
  Status Store(const EvaluateResult& result) const;
  StatusOr<EvaluateResult> EvaluateStored(const EvaluateTask& task);
  void Print(const std::string& line) const;
  // Appends to events.jsonl (errors are the caller's: progress that cannot be recorded stops
  // the job rather than being lost) and passes the event to options_.on_event.
  Status Event(Json event) const;

  JobSpec spec_;
  TaskExecutor* executor_;
  RunOptions options_;
  storage::JobLayout layout_;
  int64_t num_layers_ = 0;
  std::string family_;
};

// Placements that compare_placements scores beside greedy's, each with `k` linear layers
// (sorted; fewer when fewer layers are eligible):
// Uniform interleaving: `k` of `eligible` (sorted) evenly spaced, as index
// floor((i + 0.5) * n / k) for i < k.
std::vector<int64_t> UniformPlacement(const std::vector<int64_t>& eligible, int64_t k);
// Distillation-loss ranking: the `k` eligible layers whose mixers ended distillation with the
// lowest normalised loss (final_nmse of the report's "distill" object; ties to the lower layer).
// FailedPrecondition when an eligible layer has no final loss.
StatusOr<std::vector<int64_t>> DistillLossPlacement(const Json& distill_report,
                                                    const std::vector<int64_t>& eligible,
                                                    int64_t k);
// One-shot sensitivity: the `k` layers whose single swap cost least in round 1 (ranked as the
// search ranks candidates: score, then KL, then layer index). Free: round 1 scored them all.
std::vector<int64_t> SensitivityPlacement(const GreedySearch& search, int64_t k);

}  // namespace hyb::coordinator
