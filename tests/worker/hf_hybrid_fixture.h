// Tiny hybrids for the transformers round trip: a tiny teacher of each family with some layers
// replaced by linear mixers whose every parameter is perturbed away from its transferred start
// (so that each one changes the output and a wrong formula cannot hide behind a zero weight).
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "hyb/worker/decoder_model.h"
#include "worker/test_model.h"

namespace hyb::testing {

// A 3-layer teacher of `family` with what that family exercises: llama with GQA, q/k/v/o biases
// and tied embeddings; qwen2 with q/k/v biases, one key/value head and a sliding layer (window
// 5); qwen3 with q/k norms; mistral with a sliding window of 6 on every layer.
TinyModelSpec HfFixtureTeacherSpec(const std::string& family);

// Loads the model in `teacher_dir` (fp32, CPU), replaces `linear_layers` by `mixer` mixers
// transferred from the teacher layers, and adds N(0, 0.2^2) noise (seeded) to every mixer tensor.
// Throws std::runtime_error on failure.
std::unique_ptr<worker::DecoderModel> MakeNoisyHybrid(const std::string& teacher_dir,
                                                      const std::string& mixer,
                                                      const std::vector<int64_t>& linear_layers,
                                                      uint64_t seed);

}  // namespace hyb::testing
