// Durable writes on an Env (hyb/storage/env.h).
//
// Publish-by-rename (leveldb's SetCurrentFile): a file written through AtomicWriteFile or
// AtomicWriteString is either absent or complete at its final path, even if the process dies
// mid-write. AppendLine adds one fsynced line to a log such as events.jsonl.
//
// Every function has two forms: one taking the Env to write through, and one without that uses
// Env::Default() at the time of the call.
#pragma once

#include <cstddef>
#include <functional>
#include <string>
#include <string_view>

#include "hyb/common/status.h"
#include "hyb/storage/env.h"

namespace hyb::storage {

// What AtomicWriteFile's `fill` writes the contents into: appends to the temporary file as it
// goes, so large files (checkpoints) stream without being assembled in memory. Not owned; valid
// only during `fill`.
class FileSink {
 public:
  explicit FileSink(WritableFile* file) : file_(file) {}
  // Appends `n` bytes at `data`. The file's error (IoError naming the temporary file) on failure.
  Status Write(const void* data, size_t n);
  Status Write(std::string_view s) { return Write(s.data(), s.size()); }
  size_t bytes_written() const { return written_; }

 private:
  WritableFile* file_;
  size_t written_ = 0;
};

// Writes `path` atomically: creates a temporary file beside it ("<path>.tmp.<random>"), calls
// `fill` on it, fsyncs and closes it, renames it over `path`, and fsyncs the directory. On any
// failure before the rename (including a non-OK status from `fill`) the temporary file is
// removed and `path` is left as it was. If only the final directory fsync fails, `path` already
// holds the new contents but the rename may not survive a crash; that error is returned too.
Status AtomicWriteFile(Env* env, const std::string& path,
                       const std::function<Status(FileSink&)>& fill);
Status AtomicWriteFile(const std::string& path, const std::function<Status(FileSink&)>& fill);

// Atomically writes `contents` to `path` (AtomicWriteFile with one write).
Status AtomicWriteString(Env* env, const std::string& path, std::string_view contents);
Status AtomicWriteString(const std::string& path, std::string_view contents);

// Appends `line` and a newline to `path` (created if absent) in one write, then fsyncs the file,
// and the directory too when this call created the file. InvalidArgument if `line` contains a
// newline (one call, one line). On failure the line may or may not be in the file; a reader
// must ignore a last line that does not end in a newline.
Status AppendLine(Env* env, const std::string& path, std::string_view line);
Status AppendLine(const std::string& path, std::string_view line);

// fsyncs the directory containing `path` (after a rename into it).
Status SyncParentDirectory(Env* env, const std::string& path);
Status SyncParentDirectory(const std::string& path);

// A random hexadecimal string for temporary and staging names.
std::string UniqueSuffix();

}  // namespace hyb::storage
