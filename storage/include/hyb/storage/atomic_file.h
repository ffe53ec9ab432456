// Publish-by-rename: a file written through these functions is either absent or complete at
// its final path, even if the process dies mid-write.
#pragma once

#include <functional>
#include <string>
#include <string_view>

#include "hyb/common/status.h"

namespace hyb::storage {

// An open file descriptor being written; Write() loops over short writes.
class FileSink {
 public:
  explicit FileSink(int fd, std::string path) : fd_(fd), path_(std::move(path)) {}
  Status Write(const void* data, size_t n);
  Status Write(std::string_view s) { return Write(s.data(), s.size()); }
  size_t bytes_written() const { return written_; }

 private:
  int fd_;
  std::string path_;
  size_t written_ = 0;
};

// Writes `path` atomically: creates a temporary file beside it, calls `fill` on it, fsyncs it,
// renames it over `path`, and fsyncs the directory. On any failure (including a non-OK status
// from `fill`) the temporary file is removed and `path` is left as it was.
Status AtomicWriteFile(const std::string& path, const std::function<Status(FileSink&)>& fill);

// A random hexadecimal string for temporary and staging names.
std::string UniqueSuffix();

// fsyncs the directory containing `path` (after a rename into it).
Status SyncParentDirectory(const std::string& path);

// Convenience: atomically writes `contents` to `path`.
Status AtomicWriteString(const std::string& path, std::string_view contents);

}  // namespace hyb::storage
