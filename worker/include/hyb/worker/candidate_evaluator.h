// Scores hybrids of one teacher on one task: the worker side of the search's `evaluate` tasks.
// A candidate is the set of layers that use their distilled linear mixer; every other layer keeps
// the teacher's softmax attention.
//
// Prefix-activation caching: EvaluateAndCache(base) records, for every sequence it scores, the
// residual stream entering each layer (and, for generation, every layer's decoding state after
// the prompt). A later candidate that equals `base` below layer f starts from the recorded
// residual at f and runs only layers f..L-1 (for generation: the prompt's prefill; the new
// tokens run through the whole model). Scores are identical with and without the cache: the
// same layers run on the same inputs. Each round of the greedy search records its base once
// and then scores every candidate (base plus one layer l) from layer l.
//
// Not thread-safe: one evaluator per worker thread.
#pragma once

#include <ATen/core/Tensor.h>

#include <cstdint>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "hyb/common/status.h"
#include "hyb/worker/decoder_model.h"
#include "hyb/worker/task_scoring.h"
#include "hyb/worker/tokenizer.h"

namespace hyb::worker {

struct EvaluatorOptions {
  TaskKind kind = TaskKind::kGenerate;
  ScoringOptions scoring;
  bool prefix_cache = true;
  // Recording stops (later sequences are scored uncached) once the cache holds this much.
  int64_t prefix_cache_max_bytes = int64_t{2} << 30;
  // The first this-many examples' texts (prompt, context or text) measure the candidate's mean
  // per-token KL(teacher || candidate), the search's tie-break. 0: no KL.
  int64_t kl_examples = 32;
};

struct CandidateEvaluation {
  TaskScore score;
  std::optional<double> kl;
  int64_t layer_passes = 0;  // decoder layers run, summed over forward calls
  double seconds = 0;
  int64_t first_layer = 0;   // the layer the candidate's forwards started from (0: no cache)
};

class CandidateEvaluator {
 public:
  // `model` must be the teacher as loaded (all softmax attention); `linear[l]` is the distilled
  // mixer of layer l (null for layers that have none). The teacher's log-probabilities on the
  // KL texts (and on every example for kl_to_teacher tasks) are computed here, once.
  static StatusOr<std::unique_ptr<CandidateEvaluator>> Create(
      std::unique_ptr<DecoderModel> model, std::vector<std::shared_ptr<const TokenMixer>> linear,
      std::shared_ptr<const Tokenizer> tokenizer, std::vector<TaskExample> examples,
      EvaluatorOptions options);

  // Scores the model whose linear layers are exactly `linear_layers`, from the prefix cache
  // where it applies. InvalidArgument for a layer out of range or without a mixer.
  StatusOr<CandidateEvaluation> Evaluate(const std::vector<int64_t>& linear_layers);
  // As Evaluate, uncached, and records this model's activations as the new cache base.
  StatusOr<CandidateEvaluation> EvaluateAndCache(const std::vector<int64_t>& linear_layers);

  // Writes the hybrid with `linear_layers` as a model directory (DecoderModel::Save).
  Status Export(const std::vector<int64_t>& linear_layers, const std::string& dir);

  int64_t cache_bytes() const { return cache_bytes_; }
  const std::vector<int64_t>& cache_base() const { return cache_base_; }
  int64_t num_examples() const { return static_cast<int64_t>(examples_.size()); }

 private:
  struct CacheEntry {
    std::vector<at::Tensor> residual;                  // [1, T, hidden] per layer
    std::vector<std::unique_ptr<MixerState>> states;   // after the prompt (generation only)
  };
  CandidateEvaluator() = default;
  Status Configure(const std::vector<int64_t>& linear_layers);
  StatusOr<CandidateEvaluation> Run(const std::vector<int64_t>& linear_layers, int64_t first_layer,
                                    bool record);
  StatusOr<at::Tensor> Logits(const at::Tensor& ids, int64_t first_layer, bool record);
  StatusOr<std::vector<int64_t>> Generate(const std::vector<int64_t>& prompt, int64_t max_new,
                                          const std::vector<int64_t>& stop_ids,
                                          int64_t first_layer, bool record);
  void AccountEntry(const CacheEntry& e);

  std::unique_ptr<DecoderModel> model_;
  std::vector<std::shared_ptr<const TokenMixer>> full_, linear_;
  std::shared_ptr<const Tokenizer> tok_;
  std::vector<TaskExample> examples_;
  EvaluatorOptions options_;
  std::vector<std::vector<int64_t>> kl_ids_;
  std::vector<at::Tensor> kl_teacher_logp_;                 // [T, V] double, CPU
  std::map<std::vector<int64_t>, at::Tensor> teacher_logits_;  // kl_to_teacher tasks
  std::map<std::vector<int64_t>, CacheEntry> cache_;
  std::vector<int64_t> cache_base_;
  bool cache_valid_ = false;
  int64_t cache_bytes_ = 0;
  int64_t passes_ = 0;  // layer passes of the evaluation in progress
};

}  // namespace hyb::worker
