#include "hyb/worker/candidate_evaluator.h"

#include <torch/torch.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <iterator>
#include <limits>
#include <set>

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

// sums[i]: a quantity summed over sequence i's positions that predict a token; its mean over
// all those positions (the scorers' token-weighted scores).
double TokenWeightedMean(const std::vector<std::vector<int64_t>>& sequences,
                         const std::vector<double>& sums) {
  double total = 0;
  int64_t positions = 0;
  for (size_t i = 0; i < sequences.size(); ++i) {
    total += sums[i];
    positions += static_cast<int64_t>(sequences[i].size()) - 1;
  }
  return total / static_cast<double>(positions);
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
    switch (e->options_.kind) {
      case TaskKind::kLm:
        HYB_RETURN_IF_ERROR(e->RecordTeacherKlRows());
        break;
      case TaskKind::kKlToTeacher:
        HYB_RETURN_IF_ERROR(e->RecordTeacherLogits(e->encoded_));
        break;
      case TaskKind::kMultipleChoice:
      case TaskKind::kGenerate:
        HYB_RETURN_IF_ERROR(e->RecordTeacherLogits(e->kl_encoded_));
        break;
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

Status CandidateEvaluator::RecordTeacherKlRows() {
  at::NoGradGuard no_grad;
  const auto& sequences = encoded_.sequences;
  const size_t n_kl = kl_encoded_.sequences.size();
  for (size_t i = 0; i < n_kl; ++i) {
    if (kl_encoded_.sequences[i] != sequences[i]) {
      return Internal("evaluator: KL text " + std::to_string(i) + " is not its lm sequence");
    }
  }
  teacher_kl_rows_.assign(n_kl, at::Tensor());
  if (n_kl == 0) return Status::Ok();
  std::vector<int64_t> lengths;
  for (const auto& s : sequences) lengths.push_back(static_cast<int64_t>(s.size()));
  // The lm scorer's batches, so that the teacher itself scores a KL of exactly 0.
  for (const auto& rows : PlanBatches(lengths, options_.scoring)) {
    if (std::none_of(rows.begin(), rows.end(), [&](size_t r) { return r < n_kl; })) continue;
    const at::Tensor ids = PaddedIds(sequences, rows);
    HYB_ASSIGN_OR_RETURN(at::Tensor logits, model_->Forward(ids));
    for (size_t k = 0; k < rows.size(); ++k) {
      if (rows[k] >= n_kl) continue;
      teacher_kl_rows_[rows[k]] =
          logits.select(0, static_cast<int64_t>(k)).narrow(0, 0, lengths[rows[k]]).clone();
    }
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
  current_.clear();
  for (int64_t l = 0; l < n_layers; ++l) {
    if (is_linear[static_cast<size_t>(l)]) current_.push_back(l);
  }
  return Status::Ok();
}

bool CandidateEvaluator::MayRecord(const PrefixCache* into, const std::vector<int64_t>& key) {
  if (into == nullptr || into->count(key) > 0) return false;
  return cache_bytes_ < options_.prefix_cache_max_bytes;  // over budget: later batches unrecorded
}

void CandidateEvaluator::Store(PrefixCache* into, const std::vector<int64_t>& key, CacheEntry entry,
                               int64_t new_from) {
  // Residuals below `new_from` are other recordings' tensors (shared): no new memory.
  for (size_t j = static_cast<size_t>(new_from); j < entry.residual.size(); ++j) {
    cache_bytes_ += TensorBytes(entry.residual[j]);
  }
  for (const auto& st : entry.states) cache_bytes_ += st ? st->Bytes() : 0;
  (*into)[key] = std::move(entry);
}

int64_t CandidateEvaluator::FirstDifference(const std::vector<int64_t>& a,
                                            const std::vector<int64_t>& b) const {
  const int64_t n_layers = model_->num_layers();
  for (int64_t l = 0; l < n_layers; ++l) {
    const bool in_a = std::find(a.begin(), a.end(), l) != a.end();
    const bool in_b = std::find(b.begin(), b.end(), l) != b.end();
    if (in_a != in_b) return l;
  }
  return n_layers;
}

CandidateEvaluator::Start CandidateEvaluator::BestStart(const std::vector<int64_t>& key,
                                                        bool need_states) const {
  const int64_t n_layers = model_->num_layers();
  Start best;
  auto consider = [&](const PrefixCache& entries, const std::vector<int64_t>& layers) {
    auto it = entries.find(key);
    if (it == entries.end()) return;
    const CacheEntry& e = it->second;
    if (need_states && static_cast<int64_t>(e.states.size()) != n_layers) return;
    // The recorded model runs the same layers as the configured one below `limit`.
    const int64_t limit = std::min(FirstDifference(layers, current_), n_layers - 1);
    for (int64_t b = std::min<int64_t>(limit, static_cast<int64_t>(e.residual.size()) - 1);
         b > best.layer; --b) {
      if (e.residual[static_cast<size_t>(b)].defined()) {
        best = {&e, b};
        return;
      }
    }
  };
  if (cache_valid_) consider(cache_, cache_base_);
  for (const Recording& r : carried_) consider(r.entries, r.layers);
  return best;
}

std::vector<at::Tensor> CandidateEvaluator::Kept(const Start& start,
                                                 std::vector<at::Tensor> taps) const {
  const auto n = static_cast<size_t>(model_->num_layers());
  std::vector<at::Tensor> out(n);
  const auto first = static_cast<size_t>(start.layer);
  for (size_t j = 0; j < first && start.entry != nullptr; ++j) out[j] = start.entry->residual[j];
  for (size_t j = first; j < n && j < taps.size(); ++j) {
    // The start's own residual is the source's tensor: kept at no cost.
    if (record_keep_[j] || (start.entry != nullptr && j == first)) out[j] = std::move(taps[j]);
  }
  return out;
}

StatusOr<at::Tensor> CandidateEvaluator::Logits(const at::Tensor& ids, PrefixCache* record_into) {
  const int64_t n_layers = model_->num_layers(), rows = ids.size(0);
  const bool caching = options_.prefix_cache && (record_into != nullptr || cache_valid_ ||
                                                 !carried_.empty());
  std::vector<int64_t> key;
  if (caching) key = BatchKey(ids);
  const bool keep = MayRecord(record_into, key);
  const Start start = caching ? BestStart(key, /*need_states=*/false) : Start{};
  min_start_ = std::min(min_start_, start.layer);
  LayerTaps taps;
  at::Tensor logits;
  if (start.entry != nullptr) {
    HYB_ASSIGN_OR_RETURN(
        logits, model_->ForwardFrom(start.layer, start.entry->residual[static_cast<size_t>(start.layer)],
                                    nullptr, keep ? &taps : nullptr));
  } else {
    HYB_ASSIGN_OR_RETURN(logits, model_->Forward(ids, nullptr, keep ? &taps : nullptr));
  }
  passes_ += rows * (n_layers - start.layer);
  if (keep) {
    CacheEntry e;
    e.residual = Kept(start, std::move(taps.residual));
    Store(record_into, key, std::move(e), start.layer + (start.entry != nullptr ? 1 : 0));
  }
  return logits;
}

StatusOr<at::Tensor> CandidateEvaluator::Generate(const at::Tensor& prompts, int64_t max_new,
                                                  const std::vector<int64_t>& stop_ids,
                                                  PrefixCache* record_into) {
  at::Tensor out = prompts.to(at::kCPU, at::kLong);
  if (max_new <= 0) return out;
  const int64_t n_layers = model_->num_layers(), rows = prompts.size(0);
  const bool caching = options_.prefix_cache && (record_into != nullptr || cache_valid_ ||
                                                 !carried_.empty());
  std::vector<int64_t> key;
  if (caching) key = BatchKey(prompts);
  const bool keep = MayRecord(record_into, key);
  // Starting at layer b takes the layers below b's decoding states from the same recording.
  const Start start = caching ? BestStart(key, /*need_states=*/true) : Start{};
  min_start_ = std::min(min_start_, start.layer);
  DecodeState state = model_->NewDecodeState();
  LayerTaps taps;
  at::Tensor logits;
  if (start.entry != nullptr) {
    for (int64_t j = 0; j < start.layer; ++j) {
      const auto uj = static_cast<size_t>(j);
      state.layers[uj] = start.entry->states[uj]->Clone();
    }
    HYB_ASSIGN_OR_RETURN(
        logits, model_->ForwardFrom(start.layer, start.entry->residual[static_cast<size_t>(start.layer)],
                                    &state, keep ? &taps : nullptr));
  } else {
    HYB_ASSIGN_OR_RETURN(logits, model_->Forward(prompts, &state, keep ? &taps : nullptr));
  }
  passes_ += rows * (n_layers - start.layer);
  if (keep) {
    CacheEntry e;
    e.residual = Kept(start, std::move(taps.residual));
    for (const auto& st : state.layers) e.states.push_back(st->Clone());
    Store(record_into, key, std::move(e), start.layer + (start.entry != nullptr ? 1 : 0));
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
                                                      PrefixCache* record) {
  const auto start = std::chrono::steady_clock::now();
  HYB_RETURN_IF_ERROR(Configure(linear_layers));
  passes_ = 0;
  min_start_ = model_->num_layers();
  CandidateEvaluation ev;
  try {
    at::NoGradGuard no_grad;
    LogitsFn logits = [this, record](const at::Tensor& ids) { return Logits(ids, record); };
    // Recorded by Create for every batch the scorers ask for.
    LogitsFn teacher = [this](const at::Tensor& ids) -> StatusOr<at::Tensor> {
      auto it = teacher_logits_.find(BatchKey(ids));
      if (it == teacher_logits_.end()) return Internal("no teacher logits for a batch");
      return it->second;
    };
    switch (options_.kind) {
      case TaskKind::kLm: {
        // The KL texts are the first sequences: their KL from the lm batches that hold them.
        const size_t n_kl = teacher_kl_rows_.size();
        std::vector<double> kl_sums(n_kl, 0.0);
        BatchLogitsFn kl_rows;
        if (n_kl > 0) {
          kl_rows = [&](const std::vector<size_t>& rows, const at::Tensor& q) -> Status {
            for (size_t k = 0; k < rows.size(); ++k) {
              if (rows[k] >= n_kl) continue;
              const at::Tensor& p = teacher_kl_rows_[rows[k]];
              const int64_t len = p.size(0);
              kl_sums[rows[k]] = KlSums(q.select(0, static_cast<int64_t>(k)).narrow(0, 0, len)
                                            .unsqueeze(0),
                                        p.unsqueeze(0), {len}, options_.scoring)[0];
            }
            return Status::Ok();
          };
        }
        HYB_ASSIGN_OR_RETURN(ev.score, ScoreLm(logits, encoded_, options_.scoring, kl_rows));
        if (n_kl > 0) ev.kl = TokenWeightedMean(kl_encoded_.sequences, kl_sums);
        break;
      }
      case TaskKind::kMultipleChoice: {
        HYB_ASSIGN_OR_RETURN(
            ev.score, ScoreMultipleChoice(logits, examples_, encoded_, options_.scoring));
        break;
      }
      case TaskKind::kGenerate: {
        BatchGenerateFn gen = [this, record](const at::Tensor& prompts, int64_t max_new,
                                             const std::vector<int64_t>& stop_ids) {
          return Generate(prompts, max_new, stop_ids, record);
        };
        // The tokenizer decodes the outputs; the prompts come encoded.
        HYB_ASSIGN_OR_RETURN(ev.score,
                             ScoreGenerate(gen, *tok_, examples_, encoded_, options_.scoring));
        break;
      }
      case TaskKind::kKlToTeacher: {
        HYB_ASSIGN_OR_RETURN(ev.score,
                             ScoreKlToTeacher(logits, teacher, encoded_, options_.scoring));
        // The KL texts are the first examples, whose per-token KL the score holds.
        const size_t n_kl = kl_encoded_.sequences.size();
        if (n_kl > 0) {
          std::vector<double> kl_sums;
          for (size_t i = 0; i < n_kl; ++i) {
            kl_sums.push_back(ev.score.per_example[i] *
                              static_cast<double>(kl_encoded_.sequences[i].size() - 1));
          }
          ev.kl = TokenWeightedMean(kl_encoded_.sequences, kl_sums);
        }
        break;
      }
    }
    if ((options_.kind == TaskKind::kMultipleChoice || options_.kind == TaskKind::kGenerate) &&
        !kl_encoded_.sequences.empty()) {
      HYB_ASSIGN_OR_RETURN(TaskScore kl,
                           ScoreKlToTeacher(logits, teacher, kl_encoded_, options_.scoring));
      ev.kl = kl.value;
    }
  } catch (const c10::Error& err) {
    return Internal(std::string("evaluation failed: ") + err.what_without_backtrace());
  }
  ev.layer_passes = passes_;
  ev.first_layer = min_start_ < model_->num_layers() ? min_start_ : 0;
  ev.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  return ev;
}

std::vector<bool> CandidateEvaluator::CandidateBoundaries(
    const std::vector<int64_t>& linear_layers) const {
  const int64_t n_layers = model_->num_layers();
  if (!cache_valid_) return std::vector<bool>(static_cast<size_t>(n_layers), true);
  std::vector<bool> keep(static_cast<size_t>(n_layers), false);
  // The candidate's own residuals differ from the base's above its first differing layer j:
  // boundaries j + 1 .. L - 1, as many as its share of the free budget holds.
  const int64_t j = FirstDifference(cache_base_, linear_layers);
  const int64_t m = n_layers - 1 - j;
  if (m <= 0) return keep;
  int64_t q = m;
  if (boundary_bytes_ > 0) {
    int64_t round_size = 0;
    for (int64_t l = 0; l < n_layers; ++l) {
      const bool in_base = std::find(cache_base_.begin(), cache_base_.end(), l) != cache_base_.end();
      if (!in_base && linear_[static_cast<size_t>(l)] != nullptr) ++round_size;
    }
    const int64_t left =
        std::max<int64_t>(1, round_size - static_cast<int64_t>(recordings_.size()));
    const int64_t free = std::max<int64_t>(0, options_.prefix_cache_max_bytes - cache_bytes_);
    q = std::min<int64_t>(m, free / (left * boundary_bytes_));
  }
  // Next round, this candidate's layer on top of the new base starts at the boundary of this
  // round's winner, if it is kept here. So the boundaries at the layers most likely to win come
  // first: the remaining candidates' layers in the order of their previous-round scores (the
  // same layer's swap on a base one layer smaller), best first.
  std::vector<std::pair<double, int64_t>> likely;
  for (int64_t b = j + 1; b < n_layers; ++b) {
    const auto it = prior_rank_.find(b);
    const bool in_base =
        std::find(cache_base_.begin(), cache_base_.end(), b) != cache_base_.end();
    if (it != prior_rank_.end() && !in_base) likely.emplace_back(it->second, b);
  }
  std::sort(likely.begin(), likely.end(), [](const auto& a, const auto& b) {
    return a.first != b.first ? a.first > b.first : a.second < b.second;
  });
  int64_t taken = 0;
  for (const auto& [rank, b] : likely) {
    if (taken == q) break;
    keep[static_cast<size_t>(b)] = true;
    ++taken;
  }
  // The rest of the share, evenly spaced over the other boundaries.
  std::vector<int64_t> others;
  for (int64_t b = j + 1; b < n_layers; ++b) {
    if (!keep[static_cast<size_t>(b)]) others.push_back(b);
  }
  const auto n = static_cast<int64_t>(others.size());
  const int64_t r = std::min(q - taken, n);
  for (int64_t i = 1; i <= r; ++i) {
    keep[static_cast<size_t>(others[static_cast<size_t>((i * n + r - 1) / r - 1)])] = true;
  }
  return keep;
}

void CandidateEvaluator::RecountBytes() {
  std::set<const void*> seen;
  int64_t bytes = 0;
  auto add_entries = [&](const PrefixCache& entries) {
    for (const auto& [key, e] : entries) {
      for (const at::Tensor& t : e.residual) {
        if (t.defined() && seen.insert(t.storage().unsafeGetStorageImpl()).second) {
          bytes += static_cast<int64_t>(t.storage().nbytes());
        }
      }
      for (const auto& st : e.states) bytes += st ? st->Bytes() : 0;
    }
  };
  add_entries(cache_);
  for (const auto& [layers, r] : recordings_) add_entries(r.first);
  for (const Recording& r : carried_) add_entries(r.entries);
  cache_bytes_ = bytes;
}

StatusOr<CandidateEvaluation> CandidateEvaluator::Evaluate(
    const std::vector<int64_t>& linear_layers, bool keep_recording) {
  std::vector<int64_t> sorted = linear_layers;
  std::sort(sorted.begin(), sorted.end());
  const bool record = keep_recording && options_.prefix_cache;
  if (record) record_keep_ = CandidateBoundaries(sorted);
  PrefixCache recording;
  auto ev = Run(linear_layers, record ? &recording : nullptr);
  if (ev.ok() && !recording.empty()) recordings_[sorted] = {std::move(recording), *ev};
  if (ev.ok() && keep_recording) {
    // The candidate's layer over the base, ranked by its score (higher: better; NaN: last).
    const int64_t own = FirstDifference(cache_base_, sorted);
    const double v = ev->score.higher_is_better ? ev->score.value : -ev->score.value;
    if (own < model_->num_layers() && sorted.size() == cache_base_.size() + 1) {
      round_rank_[own] = std::isnan(v) ? -std::numeric_limits<double>::infinity() : v;
    }
  }
  if (ev.ok()) {
    // A carried recording serves one candidate, the base plus its own layer: this one, now.
    carried_.erase(std::remove_if(carried_.begin(), carried_.end(),
                                  [&](const Recording& r) {
                                    std::vector<int64_t> u;
                                    std::set_union(r.layers.begin(), r.layers.end(),
                                                   cache_base_.begin(), cache_base_.end(),
                                                   std::back_inserter(u));
                                    return u == sorted;
                                  }),
                   carried_.end());
    RecountBytes();
  }
  return ev;
}

StatusOr<CandidateEvaluation> CandidateEvaluator::EvaluateAndCache(
    const std::vector<int64_t>& linear_layers) {
  const int64_t n_layers = model_->num_layers();
  std::vector<int64_t> base = linear_layers;
  std::sort(base.begin(), base.end());
  PrefixCache fresh;
  CandidateEvaluation ev;
  auto kept = recordings_.find(base);
  if (kept != recordings_.end()) {
    // Recorded while it was a candidate: promoted, nothing runs again.
    fresh = std::move(kept->second.first);
    ev = kept->second.second;
    ev.layer_passes = 0;
    ev.seconds = 0;
  } else {
    // From the best recorded start (the old base below the first layer that differs), keeping
    // every boundary.
    record_keep_.assign(static_cast<size_t>(n_layers), true);
    HYB_ASSIGN_OR_RETURN(ev, Run(linear_layers, options_.prefix_cache ? &fresh : nullptr));
  }
  if (!options_.prefix_cache) return ev;
  if (cache_valid_) {
    // Below the first layer where they differ, the old base's residuals are the new base's:
    // they fill what the recording skipped (and batches it could not record).
    const int64_t f = std::min(FirstDifference(cache_base_, base), n_layers - 1);
    for (const auto& [key, old] : cache_) {
      auto it = fresh.find(key);
      if (it == fresh.end()) {
        CacheEntry e;
        e.residual.assign(static_cast<size_t>(n_layers), at::Tensor());
        it = fresh.emplace(key, std::move(e)).first;
      }
      for (int64_t j = 0; j <= f && j < static_cast<int64_t>(old.residual.size()); ++j) {
        at::Tensor& r = it->second.residual[static_cast<size_t>(j)];
        if (!r.defined()) r = old.residual[static_cast<size_t>(j)];
      }
    }
  }
  // What the next round can reuse from this round's other candidates: the next round scores
  // base + l for each remaining layer l, and this round's recording of (old base + l) equals
  // that model below the first layer where they differ (the new base's layer). Each keeps its
  // residuals above l up to that layer (the latest is where base + l starts; the others fill
  // that model's recording if it wins); the rest is dropped.
  std::vector<Recording> carried;
  for (auto& [layers, recording] : recordings_) {
    if (layers == base) continue;
    std::vector<int64_t> next;
    std::set_union(layers.begin(), layers.end(), base.begin(), base.end(),
                   std::back_inserter(next));
    if (next.size() != base.size() + 1) continue;
    const int64_t own = FirstDifference(base, next);
    const int64_t limit = std::min(FirstDifference(layers, next), n_layers - 1);
    Recording r{layers, {}};
    for (auto& [key, e] : recording.first) {
      CacheEntry k;
      k.residual.assign(static_cast<size_t>(n_layers), at::Tensor());
      bool any = false;
      for (int64_t b = own + 1; b <= limit && b < static_cast<int64_t>(e.residual.size()); ++b) {
        k.residual[static_cast<size_t>(b)] = e.residual[static_cast<size_t>(b)];
        any = any || k.residual[static_cast<size_t>(b)].defined();
      }
      if (!any) continue;
      k.states = std::move(e.states);
      r.entries.emplace(key, std::move(k));
    }
    if (!r.entries.empty()) carried.push_back(std::move(r));
  }
  recordings_.clear();
  carried_ = std::move(carried);
  prior_rank_ = std::move(round_rank_);
  round_rank_.clear();
  cache_ = std::move(fresh);
  cache_base_ = base;
  cache_valid_ = true;
  if (boundary_bytes_ == 0) {
    // One boundary's bytes over every batch (the same batches every evaluation): measured on
    // the first base recorded in full.
    int64_t bytes = 0;
    bool full = !cache_.empty();
    for (const auto& [key, e] : cache_) {
      const at::Tensor& last = e.residual.empty() ? at::Tensor() : e.residual.back();
      full = full && last.defined();
      bytes += TensorBytes(last);
    }
    if (full) boundary_bytes_ = bytes;
  }
  RecountBytes();
  return ev;
}

Status CandidateEvaluator::Export(const std::vector<int64_t>& linear_layers,
                                  const std::string& dir) {
  HYB_RETURN_IF_ERROR(Configure(linear_layers));
  return model_->Save(dir);
}

}  // namespace hyb::worker
