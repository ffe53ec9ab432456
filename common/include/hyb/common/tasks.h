// The units of work a job's phases emit and executors run, with their JSON forms: what crosses
// between the coordinator (or the embedded `run`) and the workers, and what the job directory
// stores so that a restarted run picks up finished work instead of repeating it. Torch-free.
//
// Tasks are self-describing: a worker in another process needs nothing else than the task and
// the shared storage (the job's spec is at <storage root>/<job_id>/job.json). Paths inside
// tasks are relative to the job's directory, so a job moves with its storage.
#pragma once

#include <cstdint>
#include <deque>
#include <functional>
#include <optional>
#include <string>
#include <vector>

#include "hyb/common/job_spec.h"
#include "hyb/common/json_util.h"
#include "hyb/common/status.h"

namespace hyb {

// Distill a set of layers (blockwise local distillation) into the job's distill/ directory,
// resuming from the checkpoints there.
struct DistillTask {
  std::string job_id;
  std::vector<int64_t> layers;
  Json ToJson() const;
  static StatusOr<DistillTask> FromJson(const Json& j, const std::string& source);
};

struct LayerDistillSummary {
  int64_t layer = -1;
  int64_t step = 0;
  struct Point {
    int64_t step = 0;
    double mse = 0, nmse = 0;
  };
  std::vector<Point> curve;
};

struct DistillResult {
  std::vector<LayerDistillSummary> layers;
  int64_t steps = 0;
  int64_t tokens = 0;   // tokens the teacher ran over, this run and resumed ones together
  double seconds = 0;   // this run's wall time
  Json ToJson() const;  // report.json's "distill" object
  static StatusOr<DistillResult> FromJson(const Json& j, const std::string& source);
};

// Score one model (teacher plus the distilled mixers of `linear_layers`) on a split.
struct EvaluateTask {
  std::string job_id;
  std::string candidate_id;
  std::vector<int64_t> linear_layers;
  std::string split = "validation";  // "validation" or "test"
  // The model this candidate extends (the search's current model): an executor that holds its
  // prefix-activation recording reuses it, one that does not records it first. Equal to
  // `linear_layers` for a model that becomes the base itself (the teacher). Unset: no cache.
  std::optional<std::vector<int64_t>> prefix_base;
  // Keep this candidate's activations: if it wins its round, it becomes the next base for free.
  bool record = false;
  Json ToJson() const;
  static StatusOr<EvaluateTask> FromJson(const Json& j, const std::string& source);
};

struct EvaluateResult {
  std::string candidate_id;
  std::vector<int64_t> linear_layers;
  std::string split;
  std::string metric;
  bool higher_is_better = true;
  double score = 0;
  std::vector<double> per_example;
  std::optional<double> kl;
  double seconds = 0;
  int64_t layer_passes = 0;  // including a prefix base it had to record first
  int64_t first_layer = 0;   // where the prefix cache let the forwards start
  Json details = Json::object();
  Json ToJson() const;
  static StatusOr<EvaluateResult> FromJson(const Json& j, const std::string& source);
};

// Write the hybrid with `linear_layers` as the model directory exports/<name> of the job.
struct ExportTask {
  std::string job_id;
  std::vector<int64_t> linear_layers;
  std::string name;  // "m_best", "m_opt"
  Json ToJson() const;
  static StatusOr<ExportTask> FromJson(const Json& j, const std::string& source);
};

// A progress event ({"event": "distill_step", ...}); executors emit them while they work. The
// return value is the way back: false asks the task to stop (the job is being cancelled), and a
// task told so checkpoints what it has and returns Cancelled.
using ProgressFn = std::function<bool(const Json& event)>;

// What runs tasks for a job. The embedded `hybridize run` runs them in-process; the service
// leases them to worker processes over HTTP. Methods are called from one thread (the job's
// driver). Errors name the task that failed.
class TaskExecutor {
 public:
  virtual ~TaskExecutor() = default;
  // VALIDATING, worker side: what needs the runtime (the teacher loads on the job's device).
  // The torch-free checks of every field run before this (coordinator/job_validation.h).
  virtual Status Validate(const JobSpec& spec) = 0;
  // Runs to the end (or until `progress` returns false: Cancelled).
  virtual StatusOr<DistillResult> Distill(const DistillTask& task, const ProgressFn& progress) = 0;
  // Starts an evaluation without waiting for it; several may be outstanding at once. Results
  // come back from NextEvaluation in the order they finish.
  virtual Status Submit(const EvaluateTask& task) = 0;
  // Waits for one outstanding evaluation to finish and returns it. FailedPrecondition when
  // none is outstanding; the task's error (naming the candidate) when it failed for good.
  virtual StatusOr<EvaluateResult> NextEvaluation() = 0;
  virtual Status Export(const ExportTask& task) = 0;

  // Submit + NextEvaluation, for callers with nothing else outstanding.
  StatusOr<EvaluateResult> Evaluate(const EvaluateTask& task);
};

// An executor that runs evaluations one at a time in the caller's thread, oldest first, when
// their results are asked for.
class SequentialTaskExecutor : public TaskExecutor {
 public:
  Status Submit(const EvaluateTask& task) final;
  StatusOr<EvaluateResult> NextEvaluation() final;

 protected:
  virtual StatusOr<EvaluateResult> RunEvaluation(const EvaluateTask& task) = 0;

 private:
  std::deque<EvaluateTask> queued_;
};

}  // namespace hyb
