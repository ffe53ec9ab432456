// Which linear-attention mixer replaces a softmax layer, and its settings: the
// "linear_attention" object of a hybrid model's config.json. Torch-free.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>

#include "hyb/common/json_util.h"
#include "hyb/common/status.h"

namespace hyb::storage {

enum class LinearMixerType {
  kGatedDeltaNet,  // "gated_deltanet": arXiv 2412.06464
  kGla,            // "gla": arXiv 2312.06635
  kLinearElu,      // "linear_elu": normalised linear attention, feature map elu(x) + 1
};

std::string_view LinearMixerTypeName(LinearMixerType type);

struct LinearMixerOptions {
  LinearMixerType type = LinearMixerType::kGatedDeltaNet;
  // Tokens per chunk of the chunked (training/prefill) form; 32 measured fastest for forward +
  // backward on CPU (BENCHMARKS.md).
  int64_t chunk_size = 32;
  // Gated DeltaNet: kernel size of the causal depthwise convolutions on q, k, v (>= 1), and
  // whether SiLU follows them (the paper's choice).
  int64_t conv_size = 4;
  bool conv_silu = true;
  // GLA: rank of the decay projection and the divisor of its log-sigmoid (tau in the paper).
  int64_t gate_rank = 16;
  double gate_logit_normalizer = 16.0;
  double norm_eps = 1e-5;  // per-head output RMSNorm (Gated DeltaNet, GLA)
};

// Parses the object (unknown keys rejected, errors name the field). `source` prefixes messages.
StatusOr<LinearMixerOptions> ParseLinearMixerOptions(const Json& j, const std::string& source);
Json LinearMixerOptionsToJson(const LinearMixerOptions& options);

// The job spec's "mixer" object (configs/job.schema.json): the same settings, the mixer named by
// "type" where a hybrid's config.json says "mixer". Messages are prefixed "mixer".
StatusOr<LinearMixerOptions> ParseJobMixerOptions(const Json& spec_mixer);

}  // namespace hyb::storage
