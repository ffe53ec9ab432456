#include "hyb/storage/checkpoint.h"

#include <cstdio>
#include <filesystem>
#include <functional>

#include "hyb/common/json_util.h"
#include "hyb/storage/atomic_file.h"

namespace hyb::storage {

namespace fs = std::filesystem;

StatusOr<Checkpoint> Checkpoint::OpenFile(const std::string& path) {
  HYB_ASSIGN_OR_RETURN(auto file, SafetensorsFile::Open(path));
  Checkpoint c;
  c.source_ = path;
  c.files_.push_back(file);
  for (const std::string& n : file->names()) c.where_.emplace(n, 0);
  return c;
}

StatusOr<Checkpoint> Checkpoint::Open(const std::string& dir) {
  const fs::path index_path = fs::path(dir) / kCheckpointIndexFile;
  const fs::path single_path = fs::path(dir) / kSingleCheckpointFile;
  std::error_code ec;
  if (!fs::exists(index_path, ec)) {
    if (!fs::exists(single_path, ec)) {
      return NotFound(dir + ": no " + std::string(kSingleCheckpointFile) + " or " +
                      kCheckpointIndexFile);
    }
    return OpenFile(single_path.string());
  }
  const std::string ip = index_path.string();
  auto index = ReadJsonFile(ip);
  if (!index.ok()) return index.status();
  if (!index->is_object()) return DataLoss(ip + ": not a JSON object");
  auto wm = index->find("weight_map");
  if (wm == index->end() || !wm->is_object()) {
    return DataLoss(ip + ": missing object 'weight_map'");
  }
  Checkpoint c;
  c.source_ = ip;
  std::map<std::string, size_t> shard_index;
  for (auto it = wm->begin(); it != wm->end(); ++it) {
    if (!it.value().is_string()) {
      return DataLoss(ip + ": weight_map entry for '" + it.key() + "' is not a file name");
    }
    const std::string shard = it.value().get<std::string>();
    if (shard.empty() || shard.find('/') != std::string::npos || shard == "." || shard == "..") {
      return DataLoss(ip + ": weight_map entry for '" + it.key() + "' names an invalid file '" +
                      shard + "'");
    }
    auto found = shard_index.find(shard);
    if (found == shard_index.end()) {
      auto file = SafetensorsFile::Open((fs::path(dir) / shard).string());
      if (!file.ok()) return file.status().WithContext(ip);
      found = shard_index.emplace(shard, c.files_.size()).first;
      c.files_.push_back(*file);
    }
    if (!c.files_[found->second]->Contains(it.key())) {
      return DataLoss(ip + ": tensor '" + it.key() + "' is mapped to " + shard +
                      " which does not contain it");
    }
    c.where_.emplace(it.key(), found->second);
  }
  // A tensor stored in two shards is ambiguous: reject rather than pick one.
  std::map<std::string, std::string> holder;
  for (const auto& file : c.files_) {
    for (const std::string& n : file->names()) {
      auto [pos, inserted] = holder.emplace(n, file->path());
      if (!inserted) {
        return DataLoss(ip + ": tensor '" + n + "' is stored in both " + pos->second + " and " +
                        file->path());
      }
    }
  }
  return c;
}

bool Checkpoint::Contains(std::string_view name) const { return where_.count(name) > 0; }

StatusOr<TensorView> Checkpoint::Get(std::string_view name) const {
  auto it = where_.find(name);
  if (it == where_.end()) {
    return NotFound(source_ + ": no tensor named '" + std::string(name) + "'");
  }
  return files_[it->second]->Get(name);
}

std::vector<std::string> Checkpoint::Names() const {
  std::vector<std::string> out;
  out.reserve(where_.size());
  for (const auto& [n, i] : where_) out.push_back(n);
  return out;
}

Status WriteCheckpoint(const std::string& dir, const std::vector<TensorToWrite>& tensors,
                       uint64_t max_shard_bytes) {
  return WriteCheckpoint(Env::Default(), dir, tensors, max_shard_bytes);
}

namespace {

// The Hugging Face sharding shared by both writers: tensors `sizes` (bytes, in order) go into one
// model.safetensors if they total at most `max_shard_bytes`, else into consecutive shards of at
// most that size (a larger tensor alone in its shard); `write(path, first, last)` writes tensors
// [first, last) into one file. The index goes last.
Status WriteShards(Env* env, const std::string& dir, const std::vector<std::string>& names,
                   const std::vector<uint64_t>& sizes, uint64_t max_shard_bytes,
                   const std::function<Status(const std::string&, size_t, size_t)>& write) {
  uint64_t total = 0;
  for (uint64_t n : sizes) total += n;
  if (total <= max_shard_bytes) {
    HYB_RETURN_IF_ERROR(write(dir + "/" + kSingleCheckpointFile, 0, sizes.size()));
    // A stale index from an earlier sharded write would shadow the new file.
    const Status removed = env->RemoveFile(dir + "/" + kCheckpointIndexFile);
    if (!removed.ok() && removed.code() != StatusCode::kNotFound) return removed;
    return Status::Ok();
  }
  std::vector<size_t> starts = {0};  // first tensor of each shard
  uint64_t in_shard = 0;
  for (size_t i = 0; i < sizes.size(); ++i) {
    if (i > starts.back() && in_shard + sizes[i] > max_shard_bytes) {
      starts.push_back(i);
      in_shard = 0;
    }
    in_shard += sizes[i];
  }
  starts.push_back(sizes.size());
  const size_t num_shards = starts.size() - 1;
  Json weight_map = Json::object();
  for (size_t s = 0; s < num_shards; ++s) {
    char name[64];
    std::snprintf(name, sizeof(name), "model-%05zu-of-%05zu.safetensors", s + 1, num_shards);
    HYB_RETURN_IF_ERROR(write(dir + "/" + name, starts[s], starts[s + 1]));
    for (size_t i = starts[s]; i < starts[s + 1]; ++i) weight_map[names[i]] = name;
  }
  Json index = {{"metadata", {{"total_size", total}}}, {"weight_map", weight_map}};
  return AtomicWriteString(env, dir + "/" + kCheckpointIndexFile, index.dump(2));
}

}  // namespace

Status WriteCheckpoint(Env* env, const std::string& dir, const std::vector<TensorToWrite>& tensors,
                       uint64_t max_shard_bytes) {
  std::vector<std::string> names;
  std::vector<uint64_t> sizes;
  for (const auto& t : tensors) {
    names.push_back(t.name);
    sizes.push_back(t.nbytes);
  }
  return WriteShards(env, dir, names, sizes, max_shard_bytes,
                     [&](const std::string& path, size_t first, size_t last) {
                       return WriteSafetensors(
                           env, path,
                           std::vector<TensorToWrite>(tensors.begin() + first,
                                                      tensors.begin() + last));
                     });
}

Status WriteCheckpointStreaming(Env* env, const std::string& dir,
                                const std::vector<TensorLayout>& tensors, const TensorFiller& fill,
                                uint64_t max_shard_bytes,
                                const std::map<std::string, std::string>& metadata) {
  std::vector<std::string> names;
  std::vector<uint64_t> sizes;
  for (const auto& t : tensors) {
    names.push_back(t.name);
    sizes.push_back(t.nbytes());
  }
  return WriteShards(env, dir, names, sizes, max_shard_bytes,
                     [&](const std::string& path, size_t first, size_t last) {
                       return WriteSafetensorsStreaming(
                           env, path,
                           std::vector<TensorLayout>(tensors.begin() + first,
                                                     tensors.begin() + last),
                           fill, metadata);
                     });
}

}  // namespace hyb::storage
