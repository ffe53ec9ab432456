// A Hugging Face model directory: config.json, weights (single or sharded safetensors) and,
// optionally, tokenizer.json.
#pragma once

#include <optional>
#include <string>

#include "hyb/common/json_util.h"
#include "hyb/common/status.h"
#include "hyb/storage/checkpoint.h"

namespace hyb::storage {

class ModelDirectory {
 public:
  // Reads `dir`/config.json and opens the weights. NotFound naming the file when config.json or
  // the weights are missing; DataLoss when either is corrupt.
  static StatusOr<ModelDirectory> Open(const std::string& dir);

  const std::string& path() const { return path_; }
  const Json& config() const { return config_; }
  std::string config_path() const { return path_ + "/config.json"; }
  const Checkpoint& weights() const { return weights_; }
  // Path of tokenizer.json if the directory has one.
  const std::optional<std::string>& tokenizer_path() const { return tokenizer_path_; }

 private:
  std::string path_;
  Json config_;
  Checkpoint weights_;
  std::optional<std::string> tokenizer_path_;
};

}  // namespace hyb::storage
