// The in-process TaskExecutor of `hybridize run`: runs distillation, evaluations and exports on
// this machine's CPU or GPU with the job's teacher. Keeps the teacher, the tokenizer and one
// CandidateEvaluator per split loaded between tasks (the evaluators hold the prefix cache).
// Not thread-safe: the job runner calls it from one thread.
#pragma once

#include <map>
#include <memory>
#include <string>

#include "hyb/common/tasks.h"
#include "hyb/worker/candidate_evaluator.h"
#include "hyb/worker/decoder_model.h"
#include "hyb/worker/distill.h"
#include "hyb/worker/storage_types.h"

namespace hyb::worker {

// The distillation options a job spec asks for, on `placement` (bf16 compute on CUDA).
DistillOptions DistillOptionsFromSpec(const JobSpec& spec, const RuntimePlacement& placement);
// The "distill_step" progress event for `states` after `step`.
Json DistillStepEvent(int64_t step, const std::vector<LayerDistillState>& states);
// Runs `distiller` to the end, passing each step's "distill_step" event (with `extra` merged
// in, if an object) to `progress`, and summarises it: steps, tokens, this run's wall time, and
// every layer's curve.
StatusOr<DistillResult> RunDistiller(BlockwiseDistiller& distiller, const DistillOptions& options,
                                     const ProgressFn& progress, const Json& extra = Json());

class LocalExecutor : public SequentialTaskExecutor {
 public:
  // `job_dir` is the job's directory in storage (storage/job_layout.h): Distill tasks publish
  // checkpoints in its distill/, Evaluate tasks load mixers from there, Export tasks write
  // exports/<name>. With `defer_teacher`, Validate only reads the teacher's config and weight
  // index, and the weights load when the first evaluation or export needs them (a rank of a
  // pipeline gang holds only its stage while distilling).
  explicit LocalExecutor(std::string job_dir, bool defer_teacher = false)
      : job_dir_(std::move(job_dir)), defer_teacher_(defer_teacher) {}

  // The runtime half of VALIDATING, after coordinator::ValidateJob(spec) has checked the spec and
  // its files without LibTorch (it does not repeat those checks): the device and dtype are
  // usable here, the teacher loads onto them, its tokenizer loads. Keeps both for the tasks.
  Status Validate(const JobSpec& spec) override;
  const JobSpec& spec() const { return spec_; }
  const RuntimeOptions& runtime() const { return runtime_; }
  const std::string& job_dir() const { return job_dir_; }
  StatusOr<DistillResult> Distill(const DistillTask& task, const ProgressFn& progress) override;
  Status Export(const ExportTask& task) override;

 protected:
  // With a prefix_base, the evaluator's cache is made that base first unless it already is
  // (the recording's layer passes count in this result); a task whose layers equal its base
  // becomes the base itself.
  StatusOr<EvaluateResult> RunEvaluation(const EvaluateTask& task) override;

 private:
  StatusOr<CandidateEvaluator*> EvaluatorFor(const std::string& split);
  Status EnsureTeacher();

  std::string job_dir_;
  bool defer_teacher_ = false;
  JobSpec spec_;
  RuntimePlacement placement_;
  RuntimeOptions runtime_;
  // Loaded once by Validate: distillation reads it, every evaluator runs on a ShareWeights()
  // view of it.
  std::shared_ptr<const DecoderModel> teacher_;
  // The distilled mixers, loaded once for all splits (null where a layer has none).
  std::vector<std::shared_ptr<const TokenMixer>> distilled_;
  std::shared_ptr<const Tokenizer> tokenizer_;
  TaskKind kind_ = TaskKind::kGenerate;
  std::map<std::string, std::unique_ptr<CandidateEvaluator>> evaluators_;  // by split
};

}  // namespace hyb::worker
