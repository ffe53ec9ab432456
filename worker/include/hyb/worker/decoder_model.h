// A decoder-only Transformer (llama, qwen2, qwen3, mistral) whose token mixer is pluggable per
// layer, loaded from a Hugging Face model directory. Forward passes expose, per layer, the mixer's
// input (after the input norm) and output (before the residual add): the hook blockwise
// distillation trains on.
#pragma once

#include <ATen/core/Tensor.h>

#include <cstdint>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "hyb/common/json_util.h"
#include "hyb/common/status.h"
#include "hyb/storage/checkpoint.h"
#include "hyb/worker/rope.h"
#include "hyb/worker/storage_types.h"
#include "hyb/worker/token_mixer.h"

namespace hyb::worker {

struct RuntimeOptions {
  std::string device = "cpu";  // "cpu", "cuda", "cuda:1"
  std::string dtype = "fp32";  // "fp32", "bf16", "fp16", "fp64"
};

// Validated form of RuntimeOptions.
struct RuntimePlacement {
  at::Device device = at::kCPU;
  at::ScalarType dtype = at::kFloat;
};
// InvalidArgument naming the bad value; Unavailable-style FailedPrecondition for "cuda" when
// this build or machine has no CUDA device.
StatusOr<RuntimePlacement> ResolvePlacement(const RuntimeOptions& options);

// CPU threading for this process: LibTorch's intra-op pool gets `threads` (0: every hardware
// thread, unless OMP_NUM_THREADS is set) and an OpenBLAS found in the process is limited to one
// thread, unless OPENBLAS_NUM_THREADS is set. Two pools of N threads each on N cores yield to
// each other on every small op (BENCHMARKS.md has the distillation step rates). Call once,
// before any work.
void ConfigureCpuThreads(int threads);

// Per-sequence decoding state: one MixerState per layer plus the number of tokens consumed
// (-1 after a failed forward pass: the state must then be discarded).
struct DecodeState {
  std::vector<std::unique_ptr<MixerState>> layers;
  int64_t length = 0;
  int64_t Bytes() const;
};

// Filled by Forward when requested: per layer, [B, T, hidden] tensors (undefined for layers a
// ForwardFrom call did not run).
struct LayerTaps {
  std::vector<at::Tensor> residual;      // the residual stream entering the layer
  std::vector<at::Tensor> mixer_input;   // after the layer's input norm
  std::vector<at::Tensor> mixer_output;  // before the residual add
};

struct MlpWeights {
  at::Tensor gate_proj, up_proj, down_proj;  // [out, in]
  at::Tensor gate_bias, up_bias, down_bias;  // llama with mlp_bias, else undefined
};

class DecoderModel {
 public:
  // Reads config.json and the weights of a model directory, places them on the requested
  // device and dtype. Errors name the file and the tensor (missing, wrong shape, ...).
  static StatusOr<std::unique_ptr<DecoderModel>> Load(const std::string& dir,
                                                      const RuntimeOptions& options);
  // As Load, from an already parsed config and opened checkpoint. `source_config` is the
  // config.json object the config came from (Save() writes it back, updated); `source_dir`, if
  // not empty, is where Save() copies tokenizer files from.
  static StatusOr<std::unique_ptr<DecoderModel>> FromCheckpoint(
      const ModelConfig& config, const storage::Checkpoint& weights,
      const RuntimePlacement& placement, const Json& source_config = Json::object(),
      const std::string& source_dir = "", int64_t first_layer = 0, int64_t last_layer = -1);
  // A pipeline stage: only layers [first_layer, last_layer) are read from the checkpoint, plus
  // the token embeddings when first_layer is 0 and the final norm and head when last_layer is
  // the last layer (last_layer -1: through the last layer). Such a partial model runs
  // Embed/ForwardRange/Head over what it holds; Forward, ForwardFrom, GenerateGreedy and Save
  // answer FailedPrecondition. InvalidArgument for a range outside [0, num_layers].
  static StatusOr<std::unique_ptr<DecoderModel>> LoadRange(const std::string& dir,
                                                           const RuntimeOptions& options,
                                                           int64_t first_layer,
                                                           int64_t last_layer);

  // Writes the model as a Hugging Face style directory: config.json (the source config with
  // "layer_types" naming each layer's mixer and, if any layer is linear, the "linear_attention"
  // settings, and "auto_map" naming the modeling_hybridize.py classes written beside it, so
  // that transformers loads the directory with trust_remote_code=True), weights in safetensors
  // (every layer's current mixer under its own tensor names), and the tokenizer files of the
  // source directory. The directory is assembled beside `dir`
  // and renamed into place; FailedPrecondition if `dir` already exists, InvalidArgument if the
  // linear layers do not share one set of mixer options.
  Status Save(const std::string& dir) const;

  const ModelConfig& config() const { return config_; }
  const RuntimePlacement& placement() const { return placement_; }
  int64_t num_layers() const { return config_.num_layers; }
  // The layers this model holds: [first_layer(), last_layer()); all of them unless LoadRange.
  int64_t first_layer() const { return first_layer_; }
  int64_t last_layer() const { return last_layer_; }
  bool holds_all_layers() const { return first_layer_ == 0 && last_layer_ == config_.num_layers; }
  bool HasLayer(int64_t layer) const { return layer >= first_layer_ && layer < last_layer_; }

  // The residual stream entering layer 0: the token embeddings of input_ids [B, T].
  // FailedPrecondition on a stage without the embeddings; InvalidArgument for bad ids.
  StatusOr<at::Tensor> Embed(const at::Tensor& input_ids) const;
  // Runs layers [first, last) (all held by this model) without a decoding state on the residual
  // stream entering `first` ([B, T, hidden], positions from 0) and returns the stream leaving
  // layer last - 1; `taps` receives the mixer inputs and outputs of those layers (entries of
  // other layers stay undefined). What a pipeline stage runs.
  StatusOr<at::Tensor> ForwardRange(int64_t first, int64_t last, const at::Tensor& residual,
                                    LayerTaps* taps = nullptr) const;
  // The final norm and head on the stream leaving the last layer: logits [B, T, vocab].
  StatusOr<at::Tensor> Head(const at::Tensor& residual) const;

  // input_ids: int64 [B, T] (any device). Returns logits [B, T, vocab] in the model dtype on the
  // model device. With `state`, continues the sequences it holds and appends to it; `taps`, if
  // given, receives every layer's mixer input and output. InvalidArgument for ids of the wrong
  // shape, type or range; Internal for a LibTorch failure (which also invalidates `state`).
  StatusOr<at::Tensor> Forward(const at::Tensor& input_ids, DecodeState* state = nullptr,
                               LayerTaps* taps = nullptr) const;

  // Runs layers [first_layer, L) and the head on `residual` [B, T, hidden], the residual stream
  // entering `first_layer` (a LayerTaps::residual of an earlier pass): what prefix-activation
  // caching uses to score a model that differs from an earlier one only from `first_layer` on.
  // With `state`, positions start at state->length and only layers >= first_layer read and
  // update their states (the caller supplies the others' states for later tokens). Same errors
  // as Forward.
  StatusOr<at::Tensor> ForwardFrom(int64_t first_layer, const at::Tensor& residual,
                                   DecodeState* state = nullptr, LayerTaps* taps = nullptr) const;

  // An empty decoding state with one MixerState per layer. `capacity` > 0: the KV caches
  // allocate room for that many tokens at their first write (they grow on demand otherwise).
  DecodeState NewDecodeState(int64_t capacity = 0) const;

  // Greedy decoding with the KV cache: prompt [B, T] -> [B, T + n] ids on CPU, n <= max_new.
  // Stops early once every row has produced one of `stop_ids` (rows already stopped are padded
  // with their stop id). The prompt is prefilled in pieces of at most kPrefillTokens tokens
  // (rows x length) with logits for its last position only; every new token is a positioned
  // step on caches sized for T + max_new (no host work but reading the sampled ids), which on
  // CUDA is captured once as a CUDA graph and replayed (HYB_CUDA_GRAPHS=0 turns that off).
  static constexpr int64_t kPrefillTokens = 65536;
  // Greedy decoding that continues the sequences `state` holds (e.g. a prompt prefilled with
  // Forward/ForwardFrom, or a prefix cache's clone): `next_ids` ([B] or [B, 1]) are their next
  // tokens (the argmax of the last logits) and count as the first of at most max_new_tokens
  // (>= 1). Returns the new ids [B, n] on the CPU, stopping as GenerateGreedy does, with the
  // same positioned steps (KV caches are grown to fit first). The state is used up
  // (length -1) afterwards.
  StatusOr<at::Tensor> ContinueGreedy(DecodeState* state, const at::Tensor& next_ids,
                                      int64_t max_new_tokens,
                                      const std::vector<int64_t>& stop_ids) const;
  StatusOr<at::Tensor> GenerateGreedy(const at::Tensor& prompt, int64_t max_new_tokens,
                                      const std::vector<int64_t>& stop_ids,
                                      int64_t prefill_tokens = kPrefillTokens) const;
  // GenerateGreedy's prefill alone: runs `prompt` [B, T] into `state` (an empty state from
  // NewDecodeState, its capacity the whole generation's length) in pieces of at most
  // prefill_tokens tokens, with logits of the last position only, and returns the greedy next
  // ids [B, 1] on the device: what ContinueGreedy takes. Lets a caller time the prefill and the
  // decoding steps apart. InvalidArgument for bad ids or a state that is not empty.
  StatusOr<at::Tensor> PrefillGreedy(const at::Tensor& prompt, DecodeState* state,
                                     int64_t prefill_tokens = kPrefillTokens) const;

  const TokenMixer& mixer(int64_t layer) const { return *mixers_.at(static_cast<size_t>(layer)); }
  std::shared_ptr<const TokenMixer> shared_mixer(int64_t layer) const {
    return mixers_.at(static_cast<size_t>(layer));
  }
  // Replaces layer `layer`'s token mixer (e.g. with a linear-attention mixer).
  void SetMixer(int64_t layer, std::shared_ptr<const TokenMixer> mixer);

  // A model that shares every weight tensor and mixer with this one (nothing is copied) but has
  // its own mixer slots: SetMixer on either leaves the other as it was. The distiller and every
  // evaluator of a job run on one copy of the teacher's weights this way.
  std::unique_ptr<DecoderModel> ShareWeights() const;

 private:
  DecoderModel() = default;
  at::Tensor ForwardImpl(const at::Tensor& ids, DecodeState* state, LayerTaps* taps) const;
  // Layers [first_layer, L) and the head on the residual stream h (the head on the last
  // position only when `last_only`).
  at::Tensor RunLayers(int64_t first_layer, at::Tensor h, DecodeState* state, LayerTaps* taps,
                       bool last_only = false) const;
  // Layers [first, last) on h without the head. `preset`: the context of a positioned step
  // (MixerContext::position); the host-side state length is then left alone.
  at::Tensor RunRange(int64_t first, int64_t last, at::Tensor h, DecodeState* state,
                      LayerTaps* taps, const MixerContext* preset = nullptr) const;
  // One positioned decoding step: ids [B, 1] on the device at the device position `position`
  // (int64 [1]); cos/sin tables cover every position of the caches. Returns the greedy next
  // ids [B, 1]. Allocates nothing that outlives the call: a CUDA graph can capture it.
  at::Tensor PositionedStep(const at::Tensor& ids, const at::Tensor& position,
                            const at::Tensor& cos_table, const at::Tensor& sin_table,
                            DecodeState* state) const;
  Status CheckWhole(const char* what) const;

  ModelConfig config_;
  Json source_config_;
  std::string source_dir_;
  RuntimePlacement placement_;
  int64_t first_layer_ = 0, last_layer_ = 0;  // the layers held
  RotaryEmbedding rope_;
  at::Tensor embed_tokens_;  // [vocab, hidden]; undefined on a stage without layer 0
  at::Tensor final_norm_;    // [hidden]; undefined on a stage without the last layer
  at::Tensor lm_head_;       // [vocab, hidden]; the embedding when tied
  // Per layer (num_layers entries; undefined / null outside [first_layer_, last_layer_)).
  std::vector<at::Tensor> input_norm_, post_attention_norm_;  // [hidden]
  std::vector<MlpWeights> mlp_;
  std::vector<std::shared_ptr<const TokenMixer>> mixers_;
};

}  // namespace hyb::worker
