#include "hyb/worker/candidate_evaluator.h"

#include <torch/torch.h>

#include <algorithm>
#include <chrono>

#if HYB_WITH_CUDA
#include <cuda_runtime.h>
#endif

namespace hyb::worker {
namespace {

// A batch's cache key: its shape, then its [B, T] ids row by row.
std::vector<int64_t> BatchKey(const at::Tensor& ids) {
  const at::Tensor c = ids.to(at::kCPU, at::kLong).contiguous();
  std::vector<int64_t> key = {c.size(0), c.size(1)};
  key.insert(key.end(), c.data_ptr<int64_t>(), c.data_ptr<int64_t>() + c.numel());
  return key;
}

int64_t TensorBytes(const at::Tensor& t) {
  return t.defined() ? t.numel() * static_cast<int64_t>(t.element_size()) : 0;
}

const std::string& KlText(const TaskExample& e, TaskKind kind) {
  switch (kind) {
    case TaskKind::kGenerate:
      return e.prompt;
    case TaskKind::kMultipleChoice:
      return e.context;
    default:
      return e.text;
  }
}

// Free memory of `device` in bytes; nullopt for the CPU, or when CUDA cannot say.
std::optional<int64_t> FreeDeviceBytes(const at::Device& device) {
#if HYB_WITH_CUDA
  if (device.is_cuda()) {
    int previous = 0;
    if (cudaGetDevice(&previous) != cudaSuccess) return std::nullopt;
    size_t free_bytes = 0, total = 0;
    const bool ok = cudaSetDevice(device.has_index() ? device.index() : previous) == cudaSuccess &&
                    cudaMemGetInfo(&free_bytes, &total) == cudaSuccess;
    (void)cudaSetDevice(previous);  // the caller's current device, as it was
    if (ok) return static_cast<int64_t>(free_bytes);
    return std::nullopt;
  }
#endif
  (void)device;
  return std::nullopt;
}

}  // namespace

int64_t AutoPrefixCacheBytes(std::optional<int64_t> free_device_bytes) {
  if (!free_device_bytes) return int64_t{2} << 30;
  return std::max<int64_t>(0, *free_device_bytes / 2);
}

StatusOr<std::unique_ptr<CandidateEvaluator>> CandidateEvaluator::Create(
    std::unique_ptr<DecoderModel> model, std::vector<std::shared_ptr<const TokenMixer>> linear,
    std::shared_ptr<const Tokenizer> tokenizer, std::vector<TaskExample> examples,
    EvaluatorOptions options) {
  const int64_t n_layers = model->num_layers();
  if (static_cast<int64_t>(linear.size()) != n_layers) {
    return InvalidArgument("evaluator: " + std::to_string(linear.size()) + " mixers for " +
                           std::to_string(n_layers) + " layers");
  }
  if (examples.empty()) return InvalidArgument("evaluator: no examples to score");
  std::unique_ptr<CandidateEvaluator> e(new CandidateEvaluator());
  for (int64_t l = 0; l < n_layers; ++l) {
    if (model->mixer(l).LayerType() != "full_attention") {
      return InvalidArgument("evaluator: the teacher's layer " + std::to_string(l) +
                             " is not softmax attention");
    }
    e->full_.push_back(model->shared_mixer(l));
  }
  e->model_ = std::move(model);
  e->linear_ = std::move(linear);
  e->tok_ = std::move(tokenizer);
  e->examples_ = std::move(examples);
  e->options_ = std::move(options);
  const ScoringOptions& so = e->options_.scoring;
  HYB_ASSIGN_OR_RETURN(e->encoded_,
                       EncodeExamples(*e->tok_, e->options_.kind, e->examples_, so));
  e->tokenizer_calls_ += e->encoded_.tokenizer_calls;
  e->kl_encoded_.kind = TaskKind::kKlToTeacher;
  const auto n_kl =
      std::min<int64_t>(e->options_.kl_examples, static_cast<int64_t>(e->examples_.size()));
  for (int64_t i = 0; i < n_kl; ++i) {
    const auto ui = static_cast<size_t>(i);
    std::vector<int64_t> ids;
    if (e->options_.kind == TaskKind::kMultipleChoice) {
      ids = e->tok_->Encode(KlText(e->examples_[ui], e->options_.kind), so.add_special_tokens);
      ++e->tokenizer_calls_;
    } else {
      // A text's or prompt's sequence is exactly the KL text's encoding.
      ids = e->encoded_.sequences[ui];
    }
    if (ids.size() < 2) continue;
    e->kl_encoded_.sequences.push_back(std::move(ids));
  }
  try {
    HYB_RETURN_IF_ERROR(e->RecordTeacherLogits(e->kl_encoded_));
    if (e->options_.kind == TaskKind::kKlToTeacher) {
      HYB_RETURN_IF_ERROR(e->RecordTeacherLogits(e->encoded_));
    }
  } catch (const c10::Error& err) {
    return Internal(std::string("evaluator: teacher pass failed: ") + err.what_without_backtrace());
  }
  if (e->options_.prefix_cache_max_bytes == kAutoPrefixCacheBytes) {
    e->options_.prefix_cache_max_bytes =
        AutoPrefixCacheBytes(FreeDeviceBytes(e->model_->placement().device));
  }
  return e;
}

Status CandidateEvaluator::RecordTeacherLogits(const EncodedExamples& texts) {
  at::NoGradGuard no_grad;
  const auto& sequences = texts.sequences;
  std::vector<int64_t> lengths;
  for (const auto& s : sequences) lengths.push_back(static_cast<int64_t>(s.size()));
  for (const auto& rows : PlanBatches(lengths, options_.scoring)) {
    const at::Tensor ids = PaddedIds(sequences, rows);
    std::vector<int64_t> key = BatchKey(ids);
    if (teacher_logits_.count(key) > 0) continue;
    HYB_ASSIGN_OR_RETURN(at::Tensor logits, model_->Forward(ids));
    teacher_logits_.emplace(std::move(key), std::move(logits));
  }
  return Status::Ok();
}

Status CandidateEvaluator::Configure(const std::vector<int64_t>& linear_layers) {
  const int64_t n_layers = model_->num_layers();
  std::vector<bool> is_linear(static_cast<size_t>(n_layers), false);
  for (int64_t l : linear_layers) {
    if (l < 0 || l >= n_layers) {
      return InvalidArgument("candidate layer " + std::to_string(l) + " is outside [0, " +
                             std::to_string(n_layers) + ")");
    }
    if (linear_[static_cast<size_t>(l)] == nullptr) {
      return InvalidArgument("layer " + std::to_string(l) + " has no distilled mixer");
    }
    is_linear[static_cast<size_t>(l)] = true;
  }
  for (int64_t l = 0; l < n_layers; ++l) {
    const auto ul = static_cast<size_t>(l);
    model_->SetMixer(l, is_linear[ul] ? linear_[ul] : full_[ul]);
  }
  return Status::Ok();
}

bool CandidateEvaluator::MayRecord(const PrefixCache* into, const std::vector<int64_t>& key) {
  if (into == nullptr || into->count(key) > 0) return false;
  if (cache_bytes_ >= options_.prefix_cache_max_bytes) {
    recording_complete_ = false;  // over budget: this recording will miss sequences
    return false;
  }
  return true;
}

void CandidateEvaluator::Store(PrefixCache* into, const std::vector<int64_t>& key, CacheEntry entry,
                               int64_t shared_below) {
  // Residuals below `shared_below` are the base's own tensors (Compose): no new memory.
  cache_bytes_ += entry.Bytes(shared_below);
  (*into)[key] = std::move(entry);
}

int64_t CandidateEvaluator::CacheEntry::Bytes(int64_t from_layer) const {
  int64_t bytes = 0;
  for (size_t j = static_cast<size_t>(from_layer); j < residual.size(); ++j) {
    bytes += TensorBytes(residual[j]);
  }
  for (const auto& s : states) bytes += s ? s->Bytes() : 0;
  return bytes;
}

// The residual streams of a model that equals the cached base below `first_layer`: the base's
// below it (shared tensors, no copy), this pass's from it on.
std::vector<at::Tensor> CandidateEvaluator::Compose(const CacheEntry& base, int64_t first_layer,
                                                    std::vector<at::Tensor> from_taps) {
  for (int64_t j = 0; j < first_layer; ++j) {
    from_taps[static_cast<size_t>(j)] = base.residual[static_cast<size_t>(j)];
  }
  return from_taps;
}

StatusOr<at::Tensor> CandidateEvaluator::Logits(const at::Tensor& ids, int64_t first_layer,
                                                PrefixCache* record_into) {
  const int64_t n_layers = model_->num_layers(), rows = ids.size(0);
  std::vector<int64_t> key;
  if (first_layer > 0 || record_into != nullptr) key = BatchKey(ids);
  const bool keep = MayRecord(record_into, key);
  LayerTaps taps;
  if (first_layer > 0) {
    auto it = cache_.find(key);
    if (it != cache_.end() && !it->second.residual.empty()) {
      passes_ += rows * (n_layers - first_layer);
      HYB_ASSIGN_OR_RETURN(
          at::Tensor logits,
          model_->ForwardFrom(first_layer, it->second.residual[static_cast<size_t>(first_layer)],
                              nullptr, keep ? &taps : nullptr));
      if (keep) {
        CacheEntry e;
        e.residual = Compose(it->second, first_layer, std::move(taps.residual));
        Store(record_into, key, std::move(e), first_layer);
      }
      return logits;
    }
  }
  HYB_ASSIGN_OR_RETURN(at::Tensor logits, model_->Forward(ids, nullptr, keep ? &taps : nullptr));
  passes_ += rows * n_layers;
  if (keep) {
    CacheEntry e;
    e.residual = std::move(taps.residual);
    Store(record_into, key, std::move(e), 0);
  }
  return logits;
}

StatusOr<at::Tensor> CandidateEvaluator::Generate(const at::Tensor& prompts, int64_t max_new,
                                                  const std::vector<int64_t>& stop_ids,
                                                  int64_t first_layer, PrefixCache* record_into) {
  at::Tensor out = prompts.to(at::kCPU, at::kLong);
  if (max_new <= 0) return out;
  const int64_t n_layers = model_->num_layers(), rows = prompts.size(0);
  const std::vector<int64_t> key = BatchKey(prompts);
  const bool keep = MayRecord(record_into, key);
  DecodeState state = model_->NewDecodeState();
  LayerTaps taps;
  at::Tensor logits;
  int64_t shared_below = 0;
  auto it = first_layer > 0 ? cache_.find(key) : cache_.end();
  if (it != cache_.end() && static_cast<int64_t>(it->second.states.size()) == n_layers) {
    for (int64_t j = 0; j < first_layer; ++j) {
      const auto uj = static_cast<size_t>(j);
      state.layers[uj] = it->second.states[uj]->Clone();
    }
    HYB_ASSIGN_OR_RETURN(
        logits,
        model_->ForwardFrom(first_layer, it->second.residual[static_cast<size_t>(first_layer)],
                            &state, keep ? &taps : nullptr));
    passes_ += rows * (n_layers - first_layer);
    if (keep) {
      taps.residual = Compose(it->second, first_layer, std::move(taps.residual));
      shared_below = first_layer;
    }
  } else {
    HYB_ASSIGN_OR_RETURN(logits, model_->Forward(prompts, &state, keep ? &taps : nullptr));
    passes_ += rows * n_layers;
  }
  if (keep) {
    CacheEntry e;
    e.residual = std::move(taps.residual);
    for (const auto& s : state.layers) e.states.push_back(s->Clone());
    Store(record_into, key, std::move(e), shared_below);
  }
  // The new tokens: GenerateGreedy's positioned steps (one CUDA graph replay per token on a
  // GPU) from the prompt's state; a row that produced a stop id repeats it until every row has
  // one or max_new tokens are out.
  const at::Tensor first = logits.select(1, logits.size(1) - 1).argmax(-1);  // [B]
  HYB_ASSIGN_OR_RETURN(at::Tensor generated,
                       model_->ContinueGreedy(&state, first, max_new, stop_ids));
  passes_ += rows * n_layers * (generated.size(1) - 1);
  return at::cat({out, generated}, 1);
}

StatusOr<CandidateEvaluation> CandidateEvaluator::Run(const std::vector<int64_t>& linear_layers,
                                                      int64_t first_layer, PrefixCache* record) {
  const auto start = std::chrono::steady_clock::now();
  HYB_RETURN_IF_ERROR(Configure(linear_layers));
  passes_ = 0;
  CandidateEvaluation ev;
  ev.first_layer = first_layer;
  try {
    at::NoGradGuard no_grad;
    LogitsFn logits = [this, first_layer, record](const at::Tensor& ids) {
      return Logits(ids, first_layer, record);
    };
    // Recorded by Create for every batch the scorers ask for.
    LogitsFn teacher = [this](const at::Tensor& ids) -> StatusOr<at::Tensor> {
      auto it = teacher_logits_.find(BatchKey(ids));
      if (it == teacher_logits_.end()) return Internal("no teacher logits for a batch");
      return it->second;
    };
    switch (options_.kind) {
      case TaskKind::kLm: {
        HYB_ASSIGN_OR_RETURN(ev.score, ScoreLm(logits, encoded_, options_.scoring));
        break;
      }
      case TaskKind::kMultipleChoice: {
        HYB_ASSIGN_OR_RETURN(
            ev.score, ScoreMultipleChoice(logits, examples_, encoded_, options_.scoring));
        break;
      }
      case TaskKind::kGenerate: {
        BatchGenerateFn gen = [this, first_layer, record](const at::Tensor& prompts,
                                                          int64_t max_new,
                                                          const std::vector<int64_t>& stop_ids) {
          return Generate(prompts, max_new, stop_ids, first_layer, record);
        };
        // The tokenizer decodes the outputs; the prompts come encoded.
        HYB_ASSIGN_OR_RETURN(ev.score,
                             ScoreGenerate(gen, *tok_, examples_, encoded_, options_.scoring));
        break;
      }
      case TaskKind::kKlToTeacher: {
        HYB_ASSIGN_OR_RETURN(ev.score,
                             ScoreKlToTeacher(logits, teacher, encoded_, options_.scoring));
        break;
      }
    }
    if (!kl_encoded_.sequences.empty()) {
      HYB_ASSIGN_OR_RETURN(TaskScore kl,
                           ScoreKlToTeacher(logits, teacher, kl_encoded_, options_.scoring));
      ev.kl = kl.value;
    }
  } catch (const c10::Error& err) {
    return Internal(std::string("evaluation failed: ") + err.what_without_backtrace());
  }
  ev.layer_passes = passes_;
  ev.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  return ev;
}

StatusOr<CandidateEvaluation> CandidateEvaluator::Evaluate(
    const std::vector<int64_t>& linear_layers, bool keep_recording) {
  int64_t first = 0;
  if (options_.prefix_cache && cache_valid_) {
    // The first layer where the candidate and the cached base differ.
    const int64_t n_layers = model_->num_layers();
    first = n_layers - 1;
    for (int64_t l = 0; l < n_layers; ++l) {
      const bool a = std::count(linear_layers.begin(), linear_layers.end(), l) > 0;
      const bool b = std::count(cache_base_.begin(), cache_base_.end(), l) > 0;
      if (a != b) {
        first = l;
        break;
      }
    }
  }
  if (!(keep_recording && options_.prefix_cache)) return Run(linear_layers, first, nullptr);
  PrefixCache recording;
  recording_complete_ = true;
  auto ev = Run(linear_layers, first, &recording);
  // Only a complete recording may become a base; a partial one would just cost memory.
  if (ev.ok() && recording_complete_) recordings_[linear_layers] = {std::move(recording), *ev};
  return ev;
}

StatusOr<CandidateEvaluation> CandidateEvaluator::EvaluateAndCache(
    const std::vector<int64_t>& linear_layers) {
  auto kept = recordings_.find(linear_layers);
  if (kept != recordings_.end()) {
    // Recorded while it was a candidate: promote it, nothing runs again.
    cache_ = std::move(kept->second.first);
    CandidateEvaluation ev = kept->second.second;
    ev.layer_passes = 0;
    ev.seconds = 0;
    recordings_.clear();
    cache_bytes_ = 0;
    for (const auto& [key, e] : cache_) cache_bytes_ += e.Bytes();
    cache_base_ = linear_layers;
    cache_valid_ = true;
    return ev;
  }
  cache_.clear();
  recordings_.clear();
  cache_bytes_ = 0;
  cache_valid_ = false;
  PrefixCache fresh;
  auto ev = Run(linear_layers, 0, options_.prefix_cache ? &fresh : nullptr);
  if (ev.ok() && options_.prefix_cache) {
    cache_ = std::move(fresh);
    cache_base_ = linear_layers;
    cache_valid_ = true;
  }
  return ev;
}

Status CandidateEvaluator::Export(const std::vector<int64_t>& linear_layers,
                                  const std::string& dir) {
  HYB_RETURN_IF_ERROR(Configure(linear_layers));
  return model_->Save(dir);
}

}  // namespace hyb::worker
