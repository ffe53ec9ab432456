#include "hyb/storage/token_dataset.h"

#include <numeric>
#include <random>

#include "hyb/storage/atomic_file.h"

namespace hyb::storage {
namespace {

uint64_t LoadLe64(const std::byte* p) {
  uint64_t v = 0;
  for (int i = 7; i >= 0; --i) v = (v << 8) | static_cast<uint64_t>(p[i]);
  return v;
}
uint32_t LoadLe32(const std::byte* p) {
  uint32_t v = 0;
  for (int i = 3; i >= 0; --i) v = (v << 8) | static_cast<uint32_t>(p[i]);
  return v;
}

}  // namespace

TokenDatasetWriter::TokenDatasetWriter(std::string dir, int64_t vocab_size, Json extra_meta,
                                       Env* env)
    : env_(env != nullptr ? env : Env::Default()),
      dir_(std::move(dir)),
      vocab_size_(vocab_size),
      extra_meta_(std::move(extra_meta)) {}

Status TokenDatasetWriter::AddDocument(const std::vector<int64_t>& ids) {
  for (int64_t id : ids) {
    if (id < 0 || id >= vocab_size_ || id > UINT32_MAX) {
      return InvalidArgument("document " + std::to_string(offsets_.size() - 1) + ": token id " +
                             std::to_string(id) + " outside [0, " + std::to_string(vocab_size_) +
                             ")");
    }
  }
  for (int64_t id : ids) tokens_.push_back(static_cast<uint32_t>(id));
  offsets_.push_back(tokens_.size());
  return Status::Ok();
}

Status TokenDatasetWriter::Finish() {
  if (env_->FileExists(dir_)) return FailedPrecondition(dir_ + ": already exists");
  const std::string parent = ParentDirectory(dir_);
  if (!env_->IsDirectory(parent)) {
    return NotFound(dir_ + ": cannot create: no directory " + parent);
  }
  const std::string staging = dir_ + ".partial." + UniqueSuffix();
  HYB_RETURN_IF_ERROR(env_->CreateDirectories(staging));
  auto fail = [&](Status s) {
    env_->RemoveAll(staging).IgnoreError();  // the first error is the one to report
    return s;
  };
  // Little-endian on disk (the host is little-endian; checked at compile time).
  static_assert(__BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__, "big-endian hosts are not supported");
  Status s = AtomicWriteFile(env_, staging + "/tokens.bin", [&](FileSink& sink) {
    return sink.Write(tokens_.data(), tokens_.size() * sizeof(uint32_t));
  });
  if (!s.ok()) return fail(s);
  s = AtomicWriteFile(env_, staging + "/docs.idx", [&](FileSink& sink) {
    return sink.Write(offsets_.data(), offsets_.size() * sizeof(uint64_t));
  });
  if (!s.ok()) return fail(s);
  Json meta = extra_meta_.is_object() ? extra_meta_ : Json::object();
  meta["format"] = kTokenDatasetFormat;
  meta["num_tokens"] = tokens_.size();
  meta["num_documents"] = offsets_.size() - 1;
  meta["vocab_size"] = vocab_size_;
  s = AtomicWriteString(env_, staging + "/meta.json", meta.dump(2) + "\n");
  if (!s.ok()) return fail(s);
  // rename(2) would replace an empty directory created at `dir` since the check above: one
  // writer prepares a dataset, so the check is enough.
  s = env_->RenameFile(staging, dir_);
  if (!s.ok()) return fail(s.WithContext(dir_ + ": cannot publish"));
  return SyncParentDirectory(env_, dir_);
}

StatusOr<DatasetCursor> DatasetCursor::FromJson(const Json& j, const std::string& source) {
  JsonObject o(j, source);
  HYB_RETURN_IF_ERROR(o.CheckKnownKeys({"epoch", "position"}));
  DatasetCursor c;
  HYB_ASSIGN_OR_RETURN(c.epoch, o.Int("epoch"));
  HYB_ASSIGN_OR_RETURN(c.position, o.Int("position"));
  if (c.epoch < 0 || c.position < 0) return InvalidArgument(source + ": cursor must be >= 0");
  return c;
}

StatusOr<std::shared_ptr<const TokenDataset>> TokenDataset::Open(const std::string& dir) {
  auto out = std::shared_ptr<TokenDataset>(new TokenDataset());
  const std::string meta_path = dir + "/meta.json";
  HYB_ASSIGN_OR_RETURN(out->meta_, ReadJsonFile(meta_path));
  JsonObject meta(out->meta_, meta_path);
  HYB_ASSIGN_OR_RETURN(std::string format, meta.String("format"));
  if (format != kTokenDatasetFormat) {
    return DataLoss(meta_path + ": format '" + format + "' is not " + kTokenDatasetFormat);
  }
  HYB_ASSIGN_OR_RETURN(out->num_tokens_, meta.Int("num_tokens"));
  HYB_ASSIGN_OR_RETURN(out->num_documents_, meta.Int("num_documents"));
  HYB_ASSIGN_OR_RETURN(out->vocab_size_, meta.Int("vocab_size"));
  HYB_ASSIGN_OR_RETURN(out->tokens_, MappedFile::Open(dir + "/tokens.bin"));
  HYB_ASSIGN_OR_RETURN(out->offsets_, MappedFile::Open(dir + "/docs.idx"));
  if (out->tokens_->size() != static_cast<size_t>(out->num_tokens_) * 4) {
    return DataLoss(dir + "/tokens.bin: " + std::to_string(out->tokens_->size()) +
                    " bytes, meta.json says " + std::to_string(out->num_tokens_) + " tokens");
  }
  if (out->offsets_->size() != static_cast<size_t>(out->num_documents_ + 1) * 8) {
    return DataLoss(dir + "/docs.idx: " + std::to_string(out->offsets_->size()) +
                    " bytes, meta.json says " + std::to_string(out->num_documents_) + " documents");
  }
  uint64_t prev = 0;
  for (int64_t d = 0; d <= out->num_documents_; ++d) {
    const uint64_t off = LoadLe64(out->offsets_->data() + 8 * d);
    if (off < prev || off > static_cast<uint64_t>(out->num_tokens_) || (d == 0 && off != 0)) {
      return DataLoss(dir + "/docs.idx: offset " + std::to_string(d) + " is out of order");
    }
    prev = off;
  }
  if (prev != static_cast<uint64_t>(out->num_tokens_)) {
    return DataLoss(dir + "/docs.idx: last offset does not end the token stream");
  }
  return std::shared_ptr<const TokenDataset>(out);
}

std::vector<int64_t> TokenDataset::Slice(int64_t begin, int64_t n) const {
  std::vector<int64_t> out(static_cast<size_t>(n));
  const std::byte* p = tokens_->data() + 4 * begin;
  for (int64_t i = 0; i < n; ++i) out[static_cast<size_t>(i)] = LoadLe32(p + 4 * i);
  return out;
}

std::vector<int64_t> TokenDataset::Document(int64_t d) const {
  const uint64_t a = LoadLe64(offsets_->data() + 8 * d),
                 b = LoadLe64(offsets_->data() + 8 * (d + 1));
  return Slice(static_cast<int64_t>(a), static_cast<int64_t>(b - a));
}

StatusOr<SequenceSampler> SequenceSampler::Create(std::shared_ptr<const TokenDataset> data,
                                                  const SamplerOptions& options,
                                                  DatasetCursor start) {
  if (options.sequence_length <= 0) return InvalidArgument("sequence_length must be positive");
  if (options.world_size <= 0 || options.rank < 0 || options.rank >= options.world_size) {
    return InvalidArgument("rank " + std::to_string(options.rank) + " is not in [0, " +
                           std::to_string(options.world_size) + ")");
  }
  SequenceSampler s;
  s.data_ = std::move(data);
  s.options_ = options;
  s.windows_ = s.data_->num_tokens() / options.sequence_length;
  s.per_rank_ = s.windows_ / options.world_size;
  if (s.per_rank_ == 0) {
    return InvalidArgument("dataset has " + std::to_string(s.windows_) + " windows of " +
                           std::to_string(options.sequence_length) + " tokens, fewer than " +
                           std::to_string(options.world_size) + " ranks");
  }
  if (start.position > s.per_rank_) {
    return InvalidArgument("cursor position " + std::to_string(start.position) +
                           " is beyond the epoch (" + std::to_string(s.per_rank_) + ")");
  }
  s.cursor_ = start;
  s.Shuffle();
  return s;
}

void SequenceSampler::Shuffle() {
  order_.resize(static_cast<size_t>(windows_));
  std::iota(order_.begin(), order_.end(), 0);
  // Fisher-Yates with our own index draws: std::shuffle's use of the engine is
  // implementation-defined, and the order must not depend on the standard library.
  std::mt19937_64 rng(options_.seed * 0x9E3779B97F4A7C15ull + static_cast<uint64_t>(cursor_.epoch));
  for (size_t i = order_.size(); i > 1; --i) {
    const size_t j = static_cast<size_t>(rng() % i);
    std::swap(order_[i - 1], order_[j]);
  }
}

std::vector<std::vector<int64_t>> SequenceSampler::Next(int64_t batch) {
  std::vector<std::vector<int64_t>> out;
  for (int64_t b = 0; b < batch; ++b) {
    if (cursor_.position >= per_rank_) {
      ++cursor_.epoch;
      cursor_.position = 0;
      Shuffle();
    }
    const int64_t slot = cursor_.position * options_.world_size + options_.rank;
    const int64_t window = order_[static_cast<size_t>(slot)];
    out.push_back(data_->Slice(window * options_.sequence_length, options_.sequence_length));
    ++cursor_.position;
  }
  return out;
}

}  // namespace hyb::storage
