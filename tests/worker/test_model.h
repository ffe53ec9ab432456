// Tiny random-weight models written as Hugging Face directories, and an independent,
// deliberately plain reference forward pass (double precision, loops over positions and heads).
#pragma once

#include <ATen/core/Tensor.h>

#include <map>
#include <string>

#include "hyb/common/json_util.h"

namespace hyb::testing {

struct TinyModelSpec {
  std::string family = "llama";
  int64_t vocab = 41;
  int64_t hidden = 32;
  int64_t intermediate = 48;
  int64_t layers = 2;
  int64_t heads = 4;
  int64_t kv_heads = 2;
  int64_t head_dim = 0;  // 0: hidden / heads
  bool tie = false;
  bool attention_bias = false;  // llama / qwen3
  Json extra = Json::object();  // merged into config.json last
};

// Writes config.json and model.safetensors (fp32, seeded normal weights) into `dir`.
// Returns the config written.
Json WriteTinyModel(const std::string& dir, const TinyModelSpec& spec, uint64_t seed);

// Straightforward reference: logits [B, T, vocab] in double for the model stored in `dir`,
// computed from config.json and the raw tensors. Supports what the tiny specs use: GQA, biases,
// q/k norm, tied embeddings, sliding windows (per layer), rope types default/linear/llama3/yarn.
at::Tensor ReferenceLogits(const std::string& dir, const at::Tensor& input_ids);

// tokenizer.json of a character-level tokenizer: a=0 b=1 c=2 ' '=3 '\n'=4, <s>=5 prepended by
// its template (models with vocab 6 pair with it).
Json CharTokenizerJson();

// A whole small job under `root`: a 3-layer teacher (teacher/, character tokenizer), distillation
// data (data/), a generate task whose answers are half the teacher's own continuations
// (validation.jsonl, test.jsonl, 12 examples each) and job.json (job_id "tiny", paths relative
// to `root`) with `overrides` merged in. Throws std::runtime_error if a file cannot be written.
void WriteTinyJob(const std::string& root, const Json& overrides = Json::object());

// A token dataset at `dir` of `docs` documents of `length` ids drawn uniformly below `vocab`
// (std::mt19937 seeded with `seed`): distillation data for tiny teachers. Throws
// std::runtime_error if it cannot be written.
void WriteRandomTokenData(const std::string& dir, int64_t vocab, int docs, int length,
                          uint32_t seed = 3);

// inverse rotary frequencies computed in double by a scalar transcription of the formulas.
std::vector<double> ReferenceInvFreq(const Json& config, int64_t head_dim, double* scaling);

}  // namespace hyb::testing
