// The units of work a job's phases emit and executors run, with their JSON forms: what crosses
// between the coordinator (or the embedded `run`) and the workers, and what the job directory
// stores so that a restarted run picks up finished work instead of repeating it. Torch-free.
#pragma once

#include <cstdint>
#include <functional>
#include <optional>
#include <string>
#include <vector>

#include "hyb/common/job_spec.h"
#include "hyb/common/json_util.h"
#include "hyb/common/status.h"

namespace hyb {

// Distill a set of layers (blockwise local distillation) into `checkpoint_dir`, resuming from
// what is there.
struct DistillTask {
  std::string job_id;
  std::vector<int64_t> layers;
  std::string checkpoint_dir;
  Json ToJson() const;
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
};

// Score one model (teacher plus the distilled mixers of `linear_layers`) on a split.
struct EvaluateTask {
  std::string job_id;
  std::string candidate_id;
  std::vector<int64_t> linear_layers;
  std::string split = "validation";  // "validation" or "test"
  // Make this model the prefix-cache base for the candidates that follow (its activations are
  // recorded, or promoted from a `record` of it as a candidate).
  bool cache_base = false;
  // Keep this candidate's activations: if it wins its round, it becomes the next base for free.
  bool record = false;
  Json ToJson() const;
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
  int64_t layer_passes = 0;
  int64_t first_layer = 0;  // where the prefix cache let the forwards start
  Json details = Json::object();
  Json ToJson() const;
  static StatusOr<EvaluateResult> FromJson(const Json& j, const std::string& source);
};

// Write the hybrid with `linear_layers` as a model directory.
struct ExportTask {
  std::vector<int64_t> linear_layers;
  std::string dir;
  Json ToJson() const;
};

// A progress event ({"event": "distill_step", ...}); executors emit them while they work.
using ProgressFn = std::function<void(const Json& event)>;

// What runs tasks for a job. The embedded `hybridize run` runs them in-process; the service
// will lease them to workers over HTTP. Methods are called from one thread; each returns when
// its task is finished (or failed, with a Status naming what went wrong).
class TaskExecutor {
 public:
  virtual ~TaskExecutor() = default;
  // VALIDATING, worker side: the teacher loads and is supported, the tokenizer, mixer options,
  // dataset and task files are readable and consistent. Errors name the spec field.
  virtual Status Validate(const JobSpec& spec) = 0;
  virtual StatusOr<DistillResult> Distill(const DistillTask& task, const ProgressFn& progress) = 0;
  virtual StatusOr<EvaluateResult> Evaluate(const EvaluateTask& task) = 0;
  virtual Status Export(const ExportTask& task) = 0;
};

}  // namespace hyb
