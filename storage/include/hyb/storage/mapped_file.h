// A read-only memory mapping of a whole file (RAII; move-only).
//
// Always on the real file system, not through Env (storage/env.h): the readers of large inputs
// (safetensors weights, token datasets, fingerprints) map them rather than copy them, which an
// in-memory or fault-injecting Env cannot offer. Writes of the same files go through the Env.
#pragma once

#include <cstddef>
#include <memory>
#include <string>

#include "hyb/common/status.h"

namespace hyb::storage {

class MappedFile {
 public:
  // Maps `path` read-only. NotFound if it cannot be opened; IoError if mmap fails. An empty
  // file maps to size() == 0 and data() == nullptr.
  static StatusOr<std::shared_ptr<const MappedFile>> Open(const std::string& path);

  ~MappedFile();
  MappedFile(const MappedFile&) = delete;
  MappedFile& operator=(const MappedFile&) = delete;

  const std::byte* data() const { return data_; }
  size_t size() const { return size_; }
  const std::string& path() const { return path_; }

 private:
  MappedFile(std::string path, const std::byte* data, size_t size)
      : path_(std::move(path)), data_(data), size_(size) {}
  std::string path_;
  const std::byte* data_;
  size_t size_;
};

}  // namespace hyb::storage
