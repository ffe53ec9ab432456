#include "hyb/coordinator/job_validation.h"

#include <algorithm>
#include <regex>

#include "hyb/common/json_util.h"
#include "hyb/storage/checkpoint.h"
#include "hyb/storage/fingerprint.h"
#include "hyb/storage/token_dataset.h"
#include "hyb/storage/tokenizer.h"

namespace hyb::coordinator {
namespace {

// "<field>: <message>". A missing or corrupt input is the spec's fault (InvalidArgument, HTTP
// 400 in the service); any other failure (an I/O error) keeps its code.
Status AtField(const Status& s, const std::string& field) {
  const bool spec_fault = s.code() == StatusCode::kNotFound || s.code() == StatusCode::kDataLoss ||
                          s.code() == StatusCode::kInvalidArgument;
  return Status(spec_fault ? StatusCode::kInvalidArgument : s.code(), field + ": " + s.message());
}

// The teacher: config.json, layer kinds, weights and tokenizer.json.
Status CheckTeacher(const std::string& dir, ValidatedJob* out) {
  if (dir.empty()) return InvalidArgument("teacher: not given");
  if (!storage::IsDirectory(dir)) {
    return InvalidArgument("teacher: " + dir + " is not a directory");
  }
  const std::string config_path = dir + "/config.json";
  auto config_json = ReadJsonFile(config_path);
  if (!config_json.ok()) return AtField(config_json.status(), "teacher");
  auto config = storage::ParseModelConfig(*config_json, config_path);
  if (!config.ok()) return AtField(config.status(), "teacher");
  for (int64_t l = 0; l < config->num_layers; ++l) {
    if (config->layer_is_linear[static_cast<size_t>(l)]) {
      return InvalidArgument(
          "teacher: layer " + std::to_string(l) +
          " is not softmax attention (the teacher must be a full-attention model)");
    }
  }
  auto weights = storage::Checkpoint::Open(dir);
  if (!weights.ok()) return AtField(weights.status(), "teacher");
  auto tokenizer = storage::Tokenizer::FromFile(dir + "/tokenizer.json");
  if (!tokenizer.ok()) return AtField(tokenizer.status(), "teacher");
  out->num_layers = config->num_layers;
  out->family = config->family;
  out->config = std::move(config).value();
  return Status::Ok();
}

// The values ResolvePlacement (worker/decoder_model.h) accepts, plus "auto".
Status CheckPlacement(const JobSpec& spec) {
  static const std::regex kDevice("cpu|cuda(:[0-9]+)?");
  if (!std::regex_match(spec.device, kDevice)) {
    return InvalidArgument("device: '" + spec.device + "' is not a device (cpu, cuda, cuda:N)");
  }
  for (const char* dtype : {"auto", "fp32", "bf16", "fp16", "fp64"}) {
    if (spec.dtype == dtype) return Status::Ok();
  }
  return InvalidArgument("dtype: '" + spec.dtype + "' is not one of auto, fp32, bf16, fp16, fp64");
}

Status CheckDistillData(const JobSpec& spec, const storage::ModelConfig& teacher,
                        ValidatedJob* out) {
  const std::string& path = spec.distill.data;
  auto data = storage::TokenDataset::Open(path);
  if (!data.ok()) return AtField(data.status(), "distill.data");
  if ((*data)->vocab_size() > teacher.vocab_size) {
    return InvalidArgument("distill.data: " + path + " was prepared with a vocabulary of " +
                           std::to_string((*data)->vocab_size()) + " tokens, the teacher has " +
                           std::to_string(teacher.vocab_size));
  }
  // Data tokenized for another model trains the mixers on meaningless ids: refuse it (data
  // prepared before fingerprints were recorded is checked by vocabulary size only).
  if (const Json& recorded = (*data)->meta().value("tokenizer_fingerprint", Json());
      recorded.is_string()) {
    auto teacher_tok = storage::FingerprintFile(spec.teacher + "/tokenizer.json");
    if (!teacher_tok.ok()) return AtField(teacher_tok.status(), "teacher");
    if (recorded.get<std::string>() != *teacher_tok) {
      return InvalidArgument("distill.data: " + path + " was tokenized with " +
                             (*data)->meta().value("tokenizer", std::string("another tokenizer")) +
                             " (fingerprint " + recorded.get<std::string>() +
                             "), not the teacher's " + spec.teacher + "/tokenizer.json (" +
                             *teacher_tok + "); run `hybridize prepare --tokenizer " +
                             spec.teacher + "` on its text again");
    }
  }
  if (spec.distill.data_parallel > 0 && spec.distill.batch_size % spec.distill.data_parallel != 0) {
    return InvalidArgument("distill.parallel.data: batch_size " +
                           std::to_string(spec.distill.batch_size) + " does not split evenly over " +
                           std::to_string(spec.distill.data_parallel) + " replicas");
  }
  if (spec.distill.pipeline > teacher.num_layers) {
    return InvalidArgument("distill.parallel.pipeline: " + std::to_string(spec.distill.pipeline) +
                           " stages for a teacher of " + std::to_string(teacher.num_layers) +
                           " layers");
  }
  const int64_t need = spec.distill.batch_size * spec.distill.sequence_length;
  if ((*data)->num_tokens() < need) {
    return InvalidArgument("distill.data: " + std::to_string((*data)->num_tokens()) +
                           " tokens, fewer than one batch (" + std::to_string(need) + ")");
  }
  out->distill_tokens = (*data)->num_tokens();
  return Status::Ok();
}

// Examples in the split at `path`, counting at most `max_examples` (0: all).
StatusOr<int64_t> CheckTaskSplit(const std::string& path, storage::TaskKind kind,
                                 int64_t max_examples, const std::string& field) {
  if (path.empty()) return InvalidArgument(field + ": not given");
  auto examples = storage::LoadTaskExamples(path, kind);
  if (!examples.ok()) return AtField(examples.status(), field);
  if (examples->empty()) return InvalidArgument(field + ": " + path + " has no examples");
  const auto n = static_cast<int64_t>(examples->size());
  return max_examples > 0 ? std::min(n, max_examples) : n;
}

Status CheckTask(const TaskSpec& task, ValidatedJob* out) {
  auto kind = storage::ParseTaskKind(task.type);
  if (!kind.ok()) return AtField(kind.status(), "task.type");
  out->task_kind = *kind;
  auto metric = ResolveTaskMetric(task);
  if (!metric.ok()) return metric.status();  // "task.metric: ..." already
  out->metric = *metric;
  auto validation =
      CheckTaskSplit(task.validation, *kind, task.max_validation_examples, "task.validation");
  if (!validation.ok()) return validation.status();
  out->validation_examples = *validation;
  if (!task.test.empty()) {
    auto test = CheckTaskSplit(task.test, *kind, task.max_test_examples, "task.test");
    if (!test.ok()) return test.status();
    out->test_examples = *test;
  }
  return Status::Ok();
}

Status CheckSearch(const JobSpec& spec, ValidatedJob* out) {
  for (int64_t l : spec.search.layers) {
    if (l < 0 || l >= out->num_layers) {
      return InvalidArgument("search.layers: layer " + std::to_string(l) +
                             " does not exist (the teacher has " + std::to_string(out->num_layers) +
                             " layers)");
    }
  }
  out->eligible_layers = spec.search.layers;
  if (out->eligible_layers.empty()) {
    for (int64_t l = 0; l < out->num_layers; ++l) out->eligible_layers.push_back(l);
  }
  std::sort(out->eligible_layers.begin(), out->eligible_layers.end());
  if (spec.search.criterion != "point" && spec.search.criterion != "confident") {
    return InvalidArgument("search.criterion: must be \"point\" or \"confident\", got \"" +
                           spec.search.criterion + "\"");
  }
  if (spec.search.criterion == "confident" && spec.search.bootstrap_samples == 0) {
    return InvalidArgument(
        "search.criterion: \"confident\" commits by a bootstrap interval, so "
        "search.bootstrap_samples must be > 0");
  }
  if (out->task_kind == storage::TaskKind::kKlToTeacher && !spec.search.p_min) {
    // Named "search.tolerance" as before: that is the setting the user gave that cannot work.
    return InvalidArgument(
        "search.tolerance: a kl_to_teacher task scores the teacher 0, so a "
        "relative tolerance admits nothing; give search.p_min (a KL bound)");
  }
  return Status::Ok();
}

}  // namespace

StatusOr<ValidatedJob> ValidateJob(const JobSpec& spec) {
  ValidatedJob out;
  HYB_RETURN_IF_ERROR(CheckTeacher(spec.teacher, &out));
  HYB_RETURN_IF_ERROR(CheckPlacement(spec));
  auto mixer = storage::ParseJobMixerOptions(spec.mixer);
  if (!mixer.ok()) return mixer.status();  // "mixer: ..." already
  out.mixer = *mixer;
  HYB_RETURN_IF_ERROR(CheckDistillData(spec, out.config, &out));
  HYB_RETURN_IF_ERROR(CheckTask(spec.task, &out));
  HYB_RETURN_IF_ERROR(CheckSearch(spec, &out));
  return out;
}

}  // namespace hyb::coordinator
