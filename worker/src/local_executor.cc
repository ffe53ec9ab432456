#include "hyb/worker/local_executor.h"

#include <torch/torch.h>

#include <chrono>

#include "hyb/storage/job_layout.h"
#include "hyb/storage/model_dir.h"
#include "hyb/storage/token_dataset.h"
#include "hyb/worker/attention_mixer.h"
#include "hyb/worker/distill.h"
#include "hyb/worker/storage_types.h"

namespace hyb::worker {
namespace {

std::string LayerFile(const std::string& dir, int64_t layer) {
  return dir + "/layer_" + std::to_string(layer) + ".safetensors";
}

StatusOr<std::vector<TaskExample>> LoadSplit(const std::string& path, TaskKind kind,
                                             int64_t max_examples, const std::string& field) {
  auto examples = LoadTaskExamples(path, kind);
  if (!examples.ok()) return examples.status().WithContext(field);
  if (examples->empty()) return InvalidArgument(field + ": " + path + " has no examples");
  if (max_examples > 0 && static_cast<int64_t>(examples->size()) > max_examples) {
    examples->resize(static_cast<size_t>(max_examples));
  }
  return examples;
}

LayerDistillSummary SummarizeLayer(const LayerDistillState& s) {
  LayerDistillSummary l;
  l.layer = s.layer;
  l.step = s.step;
  for (const auto& p : s.curve) l.curve.push_back({p.step, p.mse, p.nmse});
  return l;
}

}  // namespace

// The spec and its files were checked without LibTorch first (coordinator/job_validation.h);
// what is left needs the runtime: the device, and the teacher's weights loading into it.
Status LocalExecutor::Validate(const JobSpec& spec) {
  spec_ = spec;
  ConfigureCpuThreads(static_cast<int>(spec.threads));
  runtime_.device = spec.device;
  const bool cuda = spec.device.rfind("cuda", 0) == 0;
  runtime_.dtype = spec.dtype == "auto" ? (cuda ? "bf16" : "fp32") : spec.dtype;
  auto placement = ResolvePlacement(runtime_);
  if (!placement.ok()) return placement.status().WithContext("device/dtype");
  placement_ = *placement;
  if (defer_teacher_) {
    // The config and the weight index only: a wrong or truncated teacher still fails here.
    auto dir = storage::ModelDirectory::Open(spec.teacher);
    if (!dir.ok()) return dir.status().WithContext("teacher");
    auto config = ParseModelConfig(dir->config(), dir->config_path());
    if (!config.ok()) return config.status().WithContext("teacher");
  } else {
    HYB_RETURN_IF_ERROR(EnsureTeacher());
  }
  auto tok = Tokenizer::FromFile(spec.teacher + "/tokenizer.json");
  if (!tok.ok()) return tok.status().WithContext("teacher");
  tokenizer_ = *tok;
  auto kind = ParseTaskKind(spec.task.type);
  if (!kind.ok()) return kind.status().WithContext("task.type");
  kind_ = *kind;
  return Status::Ok();
}

DistillOptions DistillOptionsFromSpec(const JobSpec& spec, const RuntimePlacement& placement) {
  DistillOptions o;
  o.steps = spec.distill.steps;
  o.batch_size = spec.distill.batch_size;
  o.sequence_length = spec.distill.sequence_length;
  o.lr = spec.distill.lr;
  o.warmup_steps = spec.distill.warmup_steps;
  o.min_lr_ratio = spec.distill.min_lr_ratio;
  o.weight_decay = spec.distill.weight_decay;
  o.grad_clip = spec.distill.grad_clip;
  o.checkpoint_every = spec.distill.checkpoint_every;
  o.log_every = spec.distill.log_every;
  o.seed = spec.distill.seed;
  o.calibrate_output_scale = spec.distill.calibrate_output_scale;
  o.compute_dtype = placement.device.is_cuda() ? "bf16" : "fp32";
  return o;
}

Status LocalExecutor::EnsureTeacher() {
  if (teacher_ != nullptr) return Status::Ok();
  auto teacher = DecoderModel::Load(spec_.teacher, runtime_);
  if (!teacher.ok()) return teacher.status().WithContext("teacher");
  teacher_ = std::shared_ptr<const DecoderModel>(std::move(teacher).value());
  return Status::Ok();
}

StatusOr<DistillResult> LocalExecutor::Distill(const DistillTask& task,
                                               const ProgressFn& progress) {
  if (tokenizer_ == nullptr) return FailedPrecondition("distill before Validate");
  HYB_RETURN_IF_ERROR(EnsureTeacher());
  HYB_ASSIGN_OR_RETURN(LinearMixerOptions mixer, storage::ParseJobMixerOptions(spec_.mixer));
  HYB_ASSIGN_OR_RETURN(auto data, storage::TokenDataset::Open(spec_.distill.data));
  const DistillOptions o = DistillOptionsFromSpec(spec_, placement_);
  const std::string checkpoint_dir = storage::JobLayout::ForDirectory(job_dir_).DistillDir();
  HYB_RETURN_IF_ERROR(storage::MakeDirectories(checkpoint_dir));
  HYB_ASSIGN_OR_RETURN(auto distiller, BlockwiseDistiller::Create(teacher_, task.layers, mixer, o,
                                                                  data, checkpoint_dir));
  return RunDistiller(*distiller, o, progress);
}

StatusOr<DistillResult> RunDistiller(BlockwiseDistiller& distiller, const DistillOptions& options,
                                     const ProgressFn& progress, const Json& extra) {
  const auto start = std::chrono::steady_clock::now();
  HYB_RETURN_IF_ERROR(
      distiller.Run([&](int64_t step, const std::vector<LayerDistillState>& states) {
        if (!progress) return true;
        Json e = DistillStepEvent(step, states);
        if (extra.is_object()) e.update(extra);
        return progress(e);
      }));
  DistillResult r;
  r.steps = options.steps;
  r.tokens = options.steps * distiller.tokens_per_step();
  r.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  for (const auto& s : distiller.states()) r.layers.push_back(SummarizeLayer(s));
  return r;
}

Json DistillStepEvent(int64_t step, const std::vector<LayerDistillState>& states) {
  Json layers = Json::array();
  for (const auto& s : states) {
    if (s.curve.empty()) continue;
    layers.push_back(
        {{"layer", s.layer}, {"mse", s.curve.back().mse}, {"nmse", s.curve.back().nmse}});
  }
  return {{"event", "distill_step"}, {"step", step}, {"layers", layers}};
}


StatusOr<CandidateEvaluator*> LocalExecutor::EvaluatorFor(const std::string& split) {
  auto it = evaluators_.find(split);
  if (it != evaluators_.end()) return it->second.get();
  if (tokenizer_ == nullptr) return FailedPrecondition("evaluate before Validate");
  HYB_RETURN_IF_ERROR(EnsureTeacher());
  const std::string path = split == "test" ? spec_.task.test : spec_.task.validation;
  if (path.empty() || (split != "test" && split != "validation")) {
    return InvalidArgument("no task split '" + split + "' in this job");
  }
  HYB_ASSIGN_OR_RETURN(
      auto examples,
      LoadSplit(path, kind_,
                split == "test" ? spec_.task.max_test_examples : spec_.task.max_validation_examples,
                "task." + split));
  if (distilled_.empty()) {
    std::vector<std::shared_ptr<const TokenMixer>> linear(
        static_cast<size_t>(teacher_->num_layers()));
    for (int64_t l = 0; l < teacher_->num_layers(); ++l) {
      const std::string file =
          LayerFile(storage::JobLayout::ForDirectory(job_dir_).DistillDir(), l);
      if (!storage::PathExists(file)) continue;
      const auto& att = dynamic_cast<const SoftmaxAttentionMixer&>(teacher_->mixer(l));
      HYB_ASSIGN_OR_RETURN(linear[static_cast<size_t>(l)],
                           LoadDistilledMixer(file, att.shape(), teacher_->placement()));
    }
    distilled_ = std::move(linear);
  }
  // The evaluator swaps mixers in its own slots; the weights stay the teacher's, shared.
  std::unique_ptr<DecoderModel> model = teacher_->ShareWeights();
  std::vector<std::shared_ptr<const TokenMixer>> linear = distilled_;
  EvaluatorOptions o;
  o.kind = kind_;
  o.scoring.add_special_tokens = spec_.task.add_special_tokens;
  o.scoring.max_new_tokens = spec_.task.max_new_tokens;
  o.scoring.metric = spec_.task.metric;
  o.scoring.stop_ids = model->config().eos_token_ids;
  if (model->config().bos_token_id) o.scoring.empty_context_token = *model->config().bos_token_id;
  if (kind_ == TaskKind::kGenerate) o.scoring.cut_ids = StopStringTokens(*tokenizer_, examples);
  o.prefix_cache = split == "validation" && spec_.search.prefix_cache;
  o.prefix_cache_max_bytes = spec_.search.prefix_cache_max_mb
                                 ? *spec_.search.prefix_cache_max_mb << 20
                                 : kAutoPrefixCacheBytes;
  o.scoring.batch_tokens = spec_.search.eval_batch_tokens;
  o.scoring.max_batch_size = spec_.search.eval_max_batch_size;
  o.kl_examples = split == "validation" ? spec_.search.kl_examples : 0;
  HYB_ASSIGN_OR_RETURN(auto evaluator,
                       CandidateEvaluator::Create(std::move(model), std::move(linear), tokenizer_,
                                                  std::move(examples), o));
  CandidateEvaluator* raw = evaluator.get();
  evaluators_[split] = std::move(evaluator);
  return raw;
}

StatusOr<EvaluateResult> LocalExecutor::RunEvaluation(const EvaluateTask& task) {
  HYB_ASSIGN_OR_RETURN(CandidateEvaluator * e, EvaluatorFor(task.split));
  const bool cached =
      task.prefix_base.has_value() && task.split == "validation" && spec_.search.prefix_cache;
  int64_t base_passes = 0;
  CandidateEvaluation ev;
  if (cached && *task.prefix_base == task.linear_layers) {
    HYB_ASSIGN_OR_RETURN(ev, e->EvaluateAndCache(task.linear_layers));
  } else {
    if (cached && !(e->cache_valid() && e->cache_base() == *task.prefix_base)) {
      // Promoted from this executor's recording of it as last round's candidate when it has
      // one; recorded afresh otherwise (another worker scored it, or a resumed job).
      HYB_ASSIGN_OR_RETURN(CandidateEvaluation base, e->EvaluateAndCache(*task.prefix_base));
      base_passes = base.layer_passes;
    }
    HYB_ASSIGN_OR_RETURN(ev, e->Evaluate(task.linear_layers, cached && task.record));
  }
  EvaluateResult r;
  r.candidate_id = task.candidate_id;
  r.linear_layers = task.linear_layers;
  r.split = task.split;
  r.metric = ev.score.metric;
  r.higher_is_better = ev.score.higher_is_better;
  r.score = ev.score.value;
  r.per_example = std::move(ev.score.per_example);
  r.kl = ev.kl;
  r.seconds = ev.seconds;
  r.layer_passes = ev.layer_passes + base_passes;
  r.first_layer = ev.first_layer;
  r.details = ev.score.details;
  return r;
}

Status LocalExecutor::Export(const ExportTask& task) {
  HYB_ASSIGN_OR_RETURN(CandidateEvaluator * e, EvaluatorFor("validation"));
  return e->Export(task.linear_layers,
                   storage::JobLayout::ForDirectory(job_dir_).Export(task.name));
}

}  // namespace hyb::worker
