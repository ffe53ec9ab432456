// VALIDATING, the part that needs no LibTorch (DESIGN.md §3): everything about a job spec and
// its inputs that can be checked by reading files, so that `hybridize run`, `run
// --validate-only` and the service's `POST /v1/jobs?validate_only=true` reject the same specs
// with the same messages before any teacher is loaded. What needs tensors (the teacher's weights
// load, the device exists) is the worker's TaskExecutor::Validate.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "hyb/common/job_spec.h"
#include "hyb/common/status.h"
#include "hyb/storage/linear_mixer_options.h"
#include "hyb/storage/model_config.h"
#include "hyb/storage/task_file.h"

namespace hyb::coordinator {

// What validation learned about a job, for the phases that follow.
struct ValidatedJob {
  int64_t num_layers = 0;
  std::string family;                 // the teacher's model_type
  storage::ModelConfig config;        // the teacher's config.json
  storage::LinearMixerOptions mixer;  // the spec's "mixer", parsed
  storage::TaskKind task_kind = storage::TaskKind::kLm;
  std::string metric;                    // task.metric or the task type's default
  std::vector<int64_t> eligible_layers;  // search.layers (sorted), or every layer
  int64_t distill_tokens = 0;            // tokens in distill.data
  int64_t validation_examples = 0;       // after task.max_validation_examples
  int64_t test_examples = 0;             // after task.max_test_examples; 0 without task.test
};

// Every check that needs no LibTorch, in the order a user would fix them:
//   teacher         a directory whose config.json parses as a supported family, every layer
//                   softmax attention (not already a hybrid), weights present, tokenizer.json
//                   loads
//   device, dtype   cpu, cuda or cuda:N; auto, fp32, bf16, fp16 or fp64 (whether the device
//                   exists is the worker's check)
//   mixer           the settings parse (and so fit any teacher: mixers keep the teacher's heads)
//   distill.data    a token dataset whose vocabulary fits the teacher, tokenized with the
//                   teacher's tokenizer.json where the dataset recorded its fingerprint, with at
//                   least one batch of tokens
//   task.type, task.validation, task.test   a known kind; files with at least one valid example
//   task.metric     one of the type's metrics (ResolveTaskMetric)
//   search.layers   layers the teacher has
//   search.p_min    given when the task is kl_to_teacher
//   search.criterion  point or confident; confident needs search.bootstrap_samples > 0
// Errors are InvalidArgument "<field>: <problem>" naming the spec field at fault (an I/O error
// other than a missing or corrupt file keeps its code, with the field prefixed). Reads files
// only; safe to call from any thread.
StatusOr<ValidatedJob> ValidateJob(const JobSpec& spec);

}  // namespace hyb::coordinator
