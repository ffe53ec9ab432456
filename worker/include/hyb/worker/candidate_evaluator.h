// Scores hybrids of one teacher on one task: the worker side of the search's `evaluate` tasks.
// A candidate is the set of layers that use their distilled linear mixer; every other layer keeps
// the teacher's softmax attention.
//
// Scoring is batched (ScoringOptions::batch_tokens): the scorers cut the examples' sequences
// into batches, deterministically, so every evaluation of one evaluator forwards the same
// batches.
//
// Prefix-activation caching: EvaluateAndCache(base) records, for every batch it scores, the
// residual stream entering each layer (and, for generation, every layer's decoding state after
// the prompts). A later model that runs the same layers as a recorded one below layer b starts
// from the recorded residual at b and runs only layers b..L-1 (for generation: the prompts'
// prefill; the new tokens run through the whole model). Scores are identical with and without
// the cache: the same layers run on the same inputs. Each round of the greedy search scores
// every candidate (base plus one layer l) from layer l or later while recording its residuals at
// some boundaries above l: all of them when the budget allows, else the candidate's share of
// the free budget, first at the layers that scored best in the previous round (the likely
// winners), then evenly spaced. The round's winner's recording becomes the next base without
// another pass (the old base fills in below the winner's layer). Every other candidate keeps its
// residuals between its own layer and the winner's: next round, its layer on top of the new
// base equals it up to the winner's layer and starts there instead of at its own layer.
// Encoding: Create tokenises the examples (and the KL tie-break's texts) once
// (EncodeExamples); every evaluation scores the same token ids, so a search of many candidates
// pays for encoding once.
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
#include "hyb/worker/storage_types.h"
#include "hyb/worker/task_scoring.h"

namespace hyb::worker {

// EvaluatorOptions::prefix_cache_max_bytes: chosen by Create for the model's device
// (AutoPrefixCacheBytes).
inline constexpr int64_t kAutoPrefixCacheBytes = -1;

// The prefix cache's budget when none is given: half of `free_device_bytes`, the free memory of
// the model's CUDA device once the teacher's weights and logits are resident (the other half
// stays for a batch's activations and logits, and for the test split's evaluator); 2 GiB when
// the free memory is unknown (the CPU, whose memory other processes share).
int64_t AutoPrefixCacheBytes(std::optional<int64_t> free_device_bytes);

struct EvaluatorOptions {
  TaskKind kind = TaskKind::kGenerate;
  ScoringOptions scoring;
  bool prefix_cache = true;
  // Recording stops (later sequences are scored uncached) once the cache holds this much.
  // kAutoPrefixCacheBytes: AutoPrefixCacheBytes of the model's device, measured in Create.
  int64_t prefix_cache_max_bytes = kAutoPrefixCacheBytes;
  // The first this-many examples' texts (prompt, context or text) measure the candidate's mean
  // per-token KL(teacher || candidate), the search's tie-break. 0: no KL. The teacher's logits
  // on them (and on every example of a kl_to_teacher task) stay on the model's device in its
  // dtype, [B, T, vocab] per batch ([T, vocab] per text for lm tasks), for the evaluator's
  // lifetime. lm and kl_to_teacher tasks measure the KL in their own forwards (their KL texts
  // are their first examples' sequences); multiple_choice and generate run the KL texts as
  // batches of their own.
  int64_t kl_examples = 32;
};

struct CandidateEvaluation {
  TaskScore score;
  std::optional<double> kl;
  // Decoder layers run per sequence, summed over forward calls: a forward of a batch of B
  // sequences through L layers counts B * L (a decoding step too, for every row of the batch).
  int64_t layer_passes = 0;
  double seconds = 0;
  int64_t first_layer = 0;  // the layer the candidate's forwards started from (0: no cache)
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
  // where it applies. With `keep_recording`, also records this model's activations (reusing
  // the base's below the first layer that differs) so that EvaluateAndCache can promote them
  // if this candidate becomes the next base. InvalidArgument for a layer out of range or
  // without a mixer.
  StatusOr<CandidateEvaluation> Evaluate(const std::vector<int64_t>& linear_layers,
                                         bool keep_recording = false);
  // Makes `linear_layers` the cache base and returns its evaluation: promoted from a kept
  // recording (layer_passes 0: nothing runs) or scored afresh while recording. Drops every
  // other recording.
  StatusOr<CandidateEvaluation> EvaluateAndCache(const std::vector<int64_t>& linear_layers);

  // Writes the hybrid with `linear_layers` as a model directory (DecoderModel::Save).
  Status Export(const std::vector<int64_t>& linear_layers, const std::string& dir);

  int64_t cache_bytes() const { return cache_bytes_; }
  // The prefix cache's budget in bytes: EvaluatorOptions::prefix_cache_max_bytes as resolved.
  int64_t prefix_cache_budget() const { return options_.prefix_cache_max_bytes; }
  // Tokenizer::Encode calls this evaluator has made. All happen in Create: evaluations reuse
  // the encoded examples and never call the tokenizer's Encode.
  int64_t tokenizer_calls() const { return tokenizer_calls_; }
  const std::vector<int64_t>& cache_base() const { return cache_base_; }
  // Whether cache_base() holds a recording (false before the first EvaluateAndCache).
  bool cache_valid() const { return cache_valid_; }
  int64_t num_examples() const { return static_cast<int64_t>(examples_.size()); }

 private:
  // One batch's recording.
  struct CacheEntry {
    // The residual stream entering each layer, [B, T, hidden]; undefined where not kept.
    std::vector<at::Tensor> residual;
    std::vector<std::unique_ptr<MixerState>> states;  // after the prompts (generation only)
  };
  // By batch: {B, T, the [B, T] padded ids row by row} (BatchKey).
  using PrefixCache = std::map<std::vector<int64_t>, CacheEntry>;
  // A model's recorded activations: its linear layers (sorted) and its entries by batch.
  struct Recording {
    std::vector<int64_t> layers;
    PrefixCache entries;
  };
  // Where a batch's forward starts: a recorded residual entering `layer` of a model that runs
  // the same layers as the configured one below it (entry null: from the embeddings).
  struct Start {
    const CacheEntry* entry = nullptr;
    int64_t layer = 0;
  };
  CandidateEvaluator() = default;
  Status Configure(const std::vector<int64_t>& linear_layers);
  // `record`, if not null, receives this model's activations at the boundaries record_keep_
  // marks (plus what its start shares).
  StatusOr<CandidateEvaluation> Run(const std::vector<int64_t>& linear_layers, PrefixCache* record);
  StatusOr<at::Tensor> Logits(const at::Tensor& ids, PrefixCache* record_into);
  // A BatchGenerateFn: prompts [B, T] -> [B, T + n] on the CPU.
  StatusOr<at::Tensor> Generate(const at::Tensor& prompts, int64_t max_new,
                                const std::vector<int64_t>& stop_ids, PrefixCache* record_into);
  // Runs the teacher (the model as loaded) on the batches the scorers form from `texts`
  // (text sequences of two tokens or more).
  Status RecordTeacherLogits(const EncodedExamples& texts);
  // lm tasks: teacher_kl_rows_ from the lm batches that hold the KL texts.
  Status RecordTeacherKlRows();
  bool MayRecord(const PrefixCache* into, const std::vector<int64_t>& key);
  // Counts the entry's residuals from `new_from` on (those below are shared) and its states.
  void Store(PrefixCache* into, const std::vector<int64_t>& key, CacheEntry entry,
             int64_t new_from);
  // The first layer at which models with linear layers `a` and `b` differ; L if none.
  int64_t FirstDifference(const std::vector<int64_t>& a, const std::vector<int64_t>& b) const;
  // The latest recorded start for batch `key` of the configured model, over the base and the
  // carried recordings; `need_states`: only entries with every layer's decoding state.
  Start BestStart(const std::vector<int64_t>& key, bool need_states) const;
  // A recording's residuals: the start's below it (shared), this pass's kept ones from it on.
  std::vector<at::Tensor> Kept(const Start& start, std::vector<at::Tensor> taps) const;
  // The boundaries a candidate's recording keeps: above its first layer differing from the
  // base, as many as its share of the free budget holds (the round's candidates not yet
  // recorded share it): first those at the remaining layers that scored best last round (the
  // likely winners, whose boundary is where this candidate starts next round), then evenly
  // spaced.
  std::vector<bool> CandidateBoundaries(const std::vector<int64_t>& linear_layers) const;
  // cache_bytes_ from what is held (tensors shared between recordings counted once).
  void RecountBytes();

  std::unique_ptr<DecoderModel> model_;
  std::vector<std::shared_ptr<const TokenMixer>> full_, linear_;
  std::shared_ptr<const Tokenizer> tok_;
  std::vector<TaskExample> examples_;
  EvaluatorOptions options_;
  EncodedExamples encoded_;     // examples_, encoded once by Create
  EncodedExamples kl_encoded_;  // the KL tie-break's texts (two tokens or more), encoded
  int64_t tokenizer_calls_ = 0;
  // The teacher's logits [B, T, V] per batch (by BatchKey), model device and dtype: the KL
  // tie-break's and kl_to_teacher tasks'.
  std::map<std::vector<int64_t>, at::Tensor> teacher_logits_;
  // lm tasks: the teacher's logits [length, V] on each KL text, which is the same example's lm
  // sequence, so a candidate's KL comes from its lm batches (the KL texts run no batches of
  // their own). kl_to_teacher tasks take the KL from their own per-example scores.
  std::vector<at::Tensor> teacher_kl_rows_;
  PrefixCache cache_;  // the base's
  std::vector<int64_t> cache_base_;
  std::vector<int64_t> current_;  // the configured model's linear layers, sorted
  // Candidates' recordings and evaluations of the round in progress, by linear layer set.
  std::map<std::vector<int64_t>, std::pair<PrefixCache, CandidateEvaluation>> recordings_;
  // The previous round's candidates' recordings, trimmed to what the next round reuses.
  std::vector<Recording> carried_;
  std::vector<bool> record_keep_;  // the boundaries the recording in progress keeps
  // Scores (oriented: higher is better) of this round's candidates by their layer over the base,
  // and of the previous round's: the order in which a candidate's recording keeps boundaries.
  std::map<int64_t, double> round_rank_, prior_rank_;
  bool cache_valid_ = false;
  int64_t cache_bytes_ = 0;     // base, recordings and carried residuals together
  int64_t boundary_bytes_ = 0;  // one boundary's residuals over every batch (0: not known yet)
  int64_t passes_ = 0;          // layer passes of the evaluation in progress
  int64_t min_start_ = 0;       // the earliest start of the evaluation in progress
};

}  // namespace hyb::worker
