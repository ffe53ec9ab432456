// Packed token datasets: what `hybridize prepare` writes and distillation reads. A directory with
//   tokens.bin   every document's token ids, concatenated, uint32 little-endian
//   docs.idx     uint64 little-endian start offset (in tokens) of each document, plus the end
//   meta.json    {"format": "hyb-tokens-v1", "num_tokens", "num_documents", "vocab_size", plus
//                 what the writer adds (hybridize prepare: tokenizer, source, eos_id)}
// The three files are assembled in a staging directory that is renamed into place, so a
// dataset directory is either complete or absent.
// The reader maps the files (on the real file system, not through Env) and serves fixed-length
// windows of the token stream, shuffled by a seed, sharded by rank, resumable from a cursor.
// Torch-free.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "hyb/common/json_util.h"
#include "hyb/common/status.h"
#include "hyb/storage/env.h"
#include "hyb/storage/mapped_file.h"

namespace hyb::storage {

inline constexpr char kTokenDatasetFormat[] = "hyb-tokens-v1";

// Accumulates documents and publishes the dataset directory. Not thread-safe.
class TokenDatasetWriter {
 public:
  // `dir` must not exist yet; it is created on Finish(). Files are written through `env`
  // (nullptr: Env::Default() as of construction), which must outlive the writer.
  TokenDatasetWriter(std::string dir, int64_t vocab_size, Json extra_meta, Env* env = nullptr);
  // InvalidArgument for an id outside [0, vocab_size).
  Status AddDocument(const std::vector<int64_t>& ids);
  // Writes the three files into a staging directory "<dir>.partial.<random>" beside `dir` and
  // renames it to `dir`. FailedPrecondition if `dir` exists; NotFound if its parent does not.
  // On failure the staging directory is removed and `dir` stays absent.
  Status Finish();
  int64_t num_tokens() const { return static_cast<int64_t>(tokens_.size()); }

 private:
  Env* env_;
  std::string dir_;
  int64_t vocab_size_;
  Json extra_meta_;
  std::vector<uint32_t> tokens_;
  std::vector<uint64_t> offsets_{0};
};

// Where a reader is in its stream; store it with checkpoints to resume exactly.
struct DatasetCursor {
  int64_t epoch = 0;
  int64_t position = 0;  // index into this rank's share of the epoch's permutation
  Json ToJson() const { return {{"epoch", epoch}, {"position", position}}; }
  static StatusOr<DatasetCursor> FromJson(const Json& j, const std::string& source);
};

struct SamplerOptions {
  int64_t sequence_length = 512;  // tokens per sample (windows never overlap)
  uint64_t seed = 0;              // same seed, same order
  int64_t rank = 0;               // this reader's shard ...
  int64_t world_size = 1;         // ... out of this many
};

class TokenDataset {
 public:
  // Opens and validates a prepared directory (DataLoss naming the file on any inconsistency).
  static StatusOr<std::shared_ptr<const TokenDataset>> Open(const std::string& dir);

  int64_t num_tokens() const { return num_tokens_; }
  int64_t num_documents() const { return num_documents_; }
  int64_t vocab_size() const { return vocab_size_; }
  const Json& meta() const { return meta_; }
  // Tokens [begin, begin + n) of the stream.
  std::vector<int64_t> Slice(int64_t begin, int64_t n) const;
  // Tokens of document d.
  std::vector<int64_t> Document(int64_t d) const;

 private:
  std::shared_ptr<const MappedFile> tokens_, offsets_;
  int64_t num_tokens_ = 0, num_documents_ = 0, vocab_size_ = 0;
  Json meta_;
};

// Fixed-length samples in a seeded order: each epoch is a permutation of the windows
// [i * L, (i + 1) * L); rank r of w takes every w-th entry starting at r (ranks see disjoint
// windows; each sees floor(windows / w) per epoch so all ranks stay in step).
class SequenceSampler {
 public:
  // InvalidArgument if the options are inconsistent or the dataset has fewer windows than ranks.
  static StatusOr<SequenceSampler> Create(std::shared_ptr<const TokenDataset> data,
                                          const SamplerOptions& options, DatasetCursor start = {});
  // The next `batch` samples (each sequence_length ids), advancing the cursor across epochs.
  std::vector<std::vector<int64_t>> Next(int64_t batch);
  const DatasetCursor& cursor() const { return cursor_; }
  int64_t samples_per_epoch() const { return per_rank_; }

 private:
  SequenceSampler() = default;
  void Shuffle();
  std::shared_ptr<const TokenDataset> data_;
  SamplerOptions options_;
  DatasetCursor cursor_;
  int64_t windows_ = 0, per_rank_ = 0;
  std::vector<int64_t> order_;  // permutation of windows for cursor_.epoch
};

}  // namespace hyb::storage
