// The job spec: what a user submits (`hybridize run job.json`, later POST /v1/jobs). Parsed in
// one place: the text is validated against configs/job.schema.json (compiled into the binary),
// defaults are filled from the schema, and the fields map 1:1 onto these plain structs.
// Torch-free: the coordinator and the workers both read it.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "hyb/common/json_util.h"
#include "hyb/common/status.h"

namespace hyb {

struct DistillSpec {
  std::string data;  // prepared token dataset directory
  int64_t steps = 200;
  int64_t batch_size = 8;
  int64_t sequence_length = 128;
  double lr = 1e-3;
  int64_t warmup_steps = 20;
  double min_lr_ratio = 0.1;
  double weight_decay = 0;
  double grad_clip = 1.0;
  int64_t checkpoint_every = 50;
  int64_t log_every = 10;
  uint64_t seed = 0;
  bool calibrate_output_scale = true;
  // distill.parallel: pipeline stages x data-parallel replicas of a gang; 0 = chosen at run time.
  int64_t pipeline = 0;
  int64_t data_parallel = 0;
};

struct TaskSpec {
  std::string name = "task";
  std::string type;                     // lm, multiple_choice, generate, kl_to_teacher
  std::string validation;               // JSONL
  std::string test;                     // JSONL, empty if none
  int64_t max_validation_examples = 0;  // 0: all
  int64_t max_test_examples = 0;
  int64_t max_new_tokens = 32;
  bool add_special_tokens = true;
  // The score the search compares: multiple_choice acc (default) or acc_norm; generate
  // exact_match (default), contains or f1. Empty: the type's default (lm: loss, kl: kl).
  std::string metric;
};

struct SearchSpec {
  std::optional<double> tolerance;
  std::optional<double> p_min;
  int64_t max_linear_layers = 0;
  std::vector<int64_t> layers;  // empty: all
  int64_t bootstrap_samples = 1000;
  uint64_t seed = 0;
  bool prefix_cache = true;
  // The prefix cache's budget in MiB. nullopt ("auto", the default): half of the free memory of
  // the model's CUDA device once the teacher is loaded, 2048 on the CPU
  // (worker::AutoPrefixCacheBytes).
  std::optional<int64_t> prefix_cache_max_mb;
  int64_t kl_examples = 32;
  std::string criterion = "point";  // "point" (the paper's rule) or "confident"
  // How every evaluation of the job (validation and test splits) batches its sequences:
  // worker::ScoringOptions::batch_tokens and max_batch_size.
  int64_t eval_batch_tokens = 16384;
  int64_t eval_max_batch_size = 256;
};

struct PlacementSpec {
  bool enabled = false;
  int64_t random = 3;
  uint64_t seed = 0;
};

struct JobSpec {
  std::string job_id;
  std::string teacher;  // paths are resolved against the job file's directory
  std::string device = "cpu";
  std::string dtype = "auto";
  int64_t threads = 0;
  Json mixer = Json::object();  // the hybrid's "linear_attention" settings (worker parses them)
  DistillSpec distill;
  TaskSpec task;
  SearchSpec search;
  PlacementSpec compare_placements;
  // The validated document with defaults filled and paths resolved: what the job directory
  // keeps as job.json, and what a resumed run compares against.
  Json resolved;
};

// The metric a task's search compares: task.metric, or the type's default (multiple_choice acc,
// generate exact_match, lm loss, kl_to_teacher kl). InvalidArgument naming task.metric when the
// metric does not belong to the type (multiple_choice: acc, acc_norm; generate: exact_match,
// contains, f1; lm and kl_to_teacher take none) or the type is unknown.
StatusOr<std::string> ResolveTaskMetric(const TaskSpec& task);

// The schema text compiled into the binary (configs/job.schema.json).
std::string_view JobSchemaText();

// Validates `text` (from `source`, e.g. the file name) against the schema and builds the spec.
// Relative paths are resolved against `base_dir` (the job file's directory; "" = as given).
// InvalidArgument "<source>: <field path>: <problem>" for anything the schema rejects.
StatusOr<JobSpec> ParseJobSpec(std::string_view text, const std::string& source,
                               const std::string& base_dir);

// The spec with its relative input paths (teacher, distill.data, task files) joined to `root`,
// for reading them; `resolved` keeps them as written. The service stores specs with paths
// relative to its storage root, and every process resolves them against the root it mounts.
JobSpec ResolvePaths(JobSpec spec, const std::string& root);

// The part of a resolved spec that decides a job's results: everything but how its ranks share
// the work (distill.parallel) and how its evaluations use memory (search.prefix_cache,
// prefix_cache_max_mb: scores are identical with and without the cache; search.eval_batch_tokens,
// eval_max_batch_size: batching changes scores by floating-point reassociation at most). A
// stored job resumes under a spec whose identity equals its own, so a job that ran out of
// memory resumes with smaller budgets, and one stored before these fields existed resumes.
Json JobIdentity(const Json& resolved);

}  // namespace hyb
