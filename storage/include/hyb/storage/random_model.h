// A Hugging Face model directory with random weights in the shape of a config.json: a stand-in
// for a real teacher (Llama-3.2-1B, Qwen2.5-1.5B, ... in configs/shapes/) when its weights are
// not at hand, for benchmarks and tests at real sizes. Torch-free.
//
// Initialisation as transformers' `_init_weights` for these families: every projection and the
// embeddings normal(0, initializer_range), biases 0, RMSNorm weights 1. Every value is a pure
// function of (seed, tensor name, element index), so the bytes do not depend on the number of
// threads or the order of writing.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "hyb/common/json_util.h"
#include "hyb/common/status.h"
#include "hyb/storage/dtype.h"
#include "hyb/storage/model_config.h"
#include "hyb/storage/safetensors.h"

namespace hyb::storage {

struct RandomModelOptions {
  std::string config_path;  // the shape: a config.json (configs/shapes/*.json)
  // tokenizer.json, or a directory holding it; tokenizer_config.json and special_tokens_map.json
  // beside it are copied too.
  std::string tokenizer;
  std::string out_dir;           // must not exist; assembled beside it and renamed into place
  DType dtype = DType::kBF16;    // kBF16 or kF32
  uint64_t seed = 0;             // same seed, same bytes
  int64_t num_layers = 0;        // > 0: replaces num_hidden_layers (small test shapes)
  int threads = 0;               // generator threads; 0: every hardware thread
  uint64_t max_shard_bytes = 5'000'000'000;  // transformers' default max_shard_size "5GB"
};

struct RandomModelSummary {
  int64_t parameters = 0;  // stored elements (a tied head counts once)
  uint64_t bytes = 0;      // tensor data bytes
  int64_t files = 0;       // safetensors files written
  Json config;             // the config.json written
};

enum class RandomInit { kNormal, kOnes, kZeros };

struct RandomTensor {
  TensorLayout layout;
  RandomInit init = RandomInit::kNormal;
};

// The tensors of a model of `config` under the Hugging Face names, in transformers' state-dict
// order (embeddings, layers, final norm, head), as DecoderModel::Load reads them.
std::vector<RandomTensor> RandomModelTensors(const ModelConfig& config, DType dtype);

// Fills `out[0, n)` with elements [first, first + n) of the normal(0, stddev) stream of
// (seed, name): what a kNormal tensor holds. Exposed for tests.
void RandomNormalValues(uint64_t seed, const std::string& name, float stddev, uint64_t first,
                        size_t n, float* out);

// Writes the directory: config.json (the shape with torch_dtype set to the dtype, and
// num_hidden_layers replaced when options.num_layers > 0), model.safetensors (or shards of at
// most max_shard_bytes plus model.safetensors.index.json), the tokenizer files. Tensors are
// generated and written a chunk at a time, so memory stays at a few tens of MB whatever the
// model size. bos_token_id / eos_token_id entries the tokenizer does not have (a real model's
// ids with a smaller tokenizer) are replaced by the tokenizer's own begin/end-of-text tokens, or
// dropped if it has none.
// Errors: InvalidArgument naming the file for a shape our loader rejects, a tokenizer whose
// vocabulary exceeds the shape's vocab_size (naming both), an unsupported dtype;
// FailedPrecondition if out_dir exists; NotFound / IoError naming the path for I/O failures.
// On failure nothing is left at out_dir.
StatusOr<RandomModelSummary> WriteRandomModel(const RandomModelOptions& options);

}  // namespace hyb::storage
