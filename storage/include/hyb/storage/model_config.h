// The shape and numerics of a decoder-only Transformer, parsed from a Hugging Face config.json
// of the families llama, qwen2, qwen3 and mistral. Torch-free.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "hyb/common/json_util.h"
#include "hyb/common/status.h"
#include "hyb/storage/linear_mixer_options.h"

namespace hyb::storage {

enum class RopeType { kDefault, kLinear, kLlama3, kYarn };

// Rotary position embedding settings, from either spelling: `rope_theta` + `rope_scaling`
// (older files) or the `rope_parameters` object (current transformers).
struct RopeConfig {
  RopeType type = RopeType::kDefault;
  double theta = 10000.0;
  double factor = 1.0;  // linear, llama3, yarn
  // llama3
  double low_freq_factor = 1.0;
  double high_freq_factor = 4.0;
  // llama3 and yarn: context length the model was pretrained with.
  int64_t original_max_position_embeddings = 0;
  // yarn
  double beta_fast = 32.0;
  double beta_slow = 1.0;
  std::optional<double> attention_factor;
  std::optional<double> mscale;
  std::optional<double> mscale_all_dim;
  bool truncate = true;
};

enum class AttentionKind { kFull, kSliding };

struct ModelConfig {
  std::string family;  // model_type: "llama", "qwen2", "qwen3", "mistral"
  int64_t vocab_size = 0;
  int64_t hidden_size = 0;
  int64_t intermediate_size = 0;
  int64_t num_layers = 0;
  int64_t num_heads = 0;
  int64_t num_kv_heads = 0;
  int64_t head_dim = 0;
  int64_t max_position_embeddings = 0;
  double rms_norm_eps = 1e-6;
  bool tie_word_embeddings = false;
  bool qkv_bias = false;                       // bias on q/k/v projections
  bool o_bias = false;                         // bias on the output projection
  bool mlp_bias = false;                       // bias on gate/up/down
  bool qk_norm = false;                        // per-head RMSNorm on q and k before rotary (qwen3)
  int64_t sliding_window = 0;                  // 0: no sliding window anywhere
  std::vector<AttentionKind> layer_attention;  // one per layer (for softmax layers)
  // Hybrids: layers whose token mixer is a linear-attention mixer ("linear_attention" in
  // layer_types), and the mixer settings (config.json's "linear_attention" object).
  std::vector<bool> layer_is_linear;
  std::optional<LinearMixerOptions> linear_mixer;
  RopeConfig rope;
  std::optional<int64_t> bos_token_id;
  std::vector<int64_t> eos_token_ids;

  // Number of query heads sharing one key/value head.
  int64_t group_size() const { return num_heads / num_kv_heads; }
  int64_t num_linear_layers() const;
};

// Parses and checks a config.json object. `source` names the file in messages. Unsupported
// families, activations, rope types and inconsistent shapes are InvalidArgument naming the
// field.
StatusOr<ModelConfig> ParseModelConfig(const Json& config, const std::string& source);

}  // namespace hyb::storage
