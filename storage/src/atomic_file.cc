#include "hyb/storage/atomic_file.h"

#include <atomic>
#include <cstdint>
#include <cstdio>
#include <random>

namespace hyb::storage {

Status FileSink::Write(const void* data, size_t n) {
  HYB_RETURN_IF_ERROR(file_->Append(std::string_view(static_cast<const char*>(data), n)));
  written_ += n;
  return Status::Ok();
}

std::string UniqueSuffix() {
  // Random, not pid-based: a restarted worker (often pid 1 in a container) replaying the same
  // writes must not collide with temporaries a crash left behind.
  static std::atomic<uint64_t> counter{0};
  thread_local std::mt19937_64 rng(std::random_device{}());
  char buf[40];
  std::snprintf(buf, sizeof(buf), "%016llx%llx", static_cast<unsigned long long>(rng()),
                static_cast<unsigned long long>(counter.fetch_add(1)));
  return buf;
}

Status SyncParentDirectory(Env* env, const std::string& path) {
  return env->SyncDirectory(ParentDirectory(path));
}

Status SyncParentDirectory(const std::string& path) {
  return SyncParentDirectory(Env::Default(), path);
}

Status AtomicWriteFile(Env* env, const std::string& path,
                       const std::function<Status(FileSink&)>& fill) {
  const std::string tmp = path + ".tmp." + UniqueSuffix();
  HYB_ASSIGN_OR_RETURN(std::unique_ptr<WritableFile> file, env->NewWritableFile(tmp));
  FileSink sink(file.get());
  Status s = fill(sink);
  if (s.ok()) s = file->Sync();
  if (s.ok()) s = file->Close();
  file.reset();  // closes it if an error came first
  if (s.ok()) s = env->RenameFile(tmp, path);
  if (!s.ok()) {
    // The first error is what the caller needs; a failure to remove the temporary file is
    // secondary (and leaves only a "*.tmp.*" file behind).
    env->RemoveFile(tmp).IgnoreError();
    return s;
  }
  return SyncParentDirectory(env, path);
}

Status AtomicWriteFile(const std::string& path, const std::function<Status(FileSink&)>& fill) {
  return AtomicWriteFile(Env::Default(), path, fill);
}

Status AtomicWriteString(Env* env, const std::string& path, std::string_view contents) {
  return AtomicWriteFile(env, path, [&](FileSink& sink) { return sink.Write(contents); });
}

Status AtomicWriteString(const std::string& path, std::string_view contents) {
  return AtomicWriteString(Env::Default(), path, contents);
}

Status AppendLine(Env* env, const std::string& path, std::string_view line) {
  if (line.find('\n') != std::string_view::npos) {
    return InvalidArgument(path + ": a line to append contains a newline");
  }
  const bool created = !env->FileExists(path);
  HYB_ASSIGN_OR_RETURN(std::unique_ptr<WritableFile> file, env->NewAppendableFile(path));
  std::string record;
  record.reserve(line.size() + 1);
  record.append(line);
  record.push_back('\n');
  HYB_RETURN_IF_ERROR(file->Append(record));
  HYB_RETURN_IF_ERROR(file->Sync());
  HYB_RETURN_IF_ERROR(file->Close());
  if (created) return SyncParentDirectory(env, path);
  return Status::Ok();
}

Status AppendLine(const std::string& path, std::string_view line) {
  return AppendLine(Env::Default(), path, line);
}

}  // namespace hyb::storage
