// A set of tensors stored as one safetensors file or as shards listed in
// `model.safetensors.index.json` ({"metadata": {...}, "weight_map": {tensor: shard file}}),
// the Hugging Face layout.
#pragma once

#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "hyb/common/status.h"
#include "hyb/storage/env.h"
#include "hyb/storage/safetensors.h"

namespace hyb::storage {

inline constexpr char kSingleCheckpointFile[] = "model.safetensors";
inline constexpr char kCheckpointIndexFile[] = "model.safetensors.index.json";

class Checkpoint {
 public:
  // Opens `dir`/model.safetensors.index.json if present, else `dir`/model.safetensors. NotFound
  // when neither exists; DataLoss when the index is malformed, names a missing shard, maps a
  // tensor to a shard that lacks it, or two shards hold the same tensor.
  static StatusOr<Checkpoint> Open(const std::string& dir);
  // Opens one safetensors file.
  static StatusOr<Checkpoint> OpenFile(const std::string& path);

  bool Contains(std::string_view name) const;
  StatusOr<TensorView> Get(std::string_view name) const;
  // All tensor names, sorted.
  std::vector<std::string> Names() const;
  // Where it came from, for messages.
  const std::string& source() const { return source_; }

 private:
  std::string source_;
  std::vector<std::shared_ptr<const SafetensorsFile>> files_;
  std::map<std::string, size_t, std::less<>> where_;  // tensor name -> index into files_
};

// Writes `tensors` into `dir` through `env` as the Hugging Face layout: one model.safetensors if
// the total is at most `max_shard_bytes` (removing a stale index that would shadow it), else
// shards model-0000i-of-0000n.safetensors (tensors kept whole, in the given order) plus the index
// file, which is written last so a reader never sees an index naming a missing shard. Every file
// is published atomically. `dir` must exist.
Status WriteCheckpoint(Env* env, const std::string& dir, const std::vector<TensorToWrite>& tensors,
                       uint64_t max_shard_bytes = 4ull << 30);
// The same on Env::Default().
Status WriteCheckpoint(const std::string& dir, const std::vector<TensorToWrite>& tensors,
                       uint64_t max_shard_bytes = 4ull << 30);

// As WriteCheckpoint, with each tensor's bytes produced by `fill` while its shard is written
// (WriteSafetensorsStreaming), so a checkpoint larger than memory can be written. `metadata` goes
// into every safetensors header (e.g. {"format": "pt"}, as transformers writes).
Status WriteCheckpointStreaming(Env* env, const std::string& dir,
                                const std::vector<TensorLayout>& tensors, const TensorFiller& fill,
                                uint64_t max_shard_bytes = 4ull << 30,
                                const std::map<std::string, std::string>& metadata = {});

}  // namespace hyb::storage
