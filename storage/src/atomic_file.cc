#include "hyb/storage/atomic_file.h"

#include <fcntl.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <cstring>
#include <cstdio>
#include <filesystem>
#include <random>

namespace hyb::storage {

Status FileSink::Write(const void* data, size_t n) {
  const char* p = static_cast<const char*>(data);
  while (n > 0) {
    const ssize_t w = ::write(fd_, p, n);
    if (w < 0) {
      if (errno == EINTR) continue;
      return IoError(path_ + ": write failed: " + std::strerror(errno));
    }
    p += w;
    n -= static_cast<size_t>(w);
    written_ += static_cast<size_t>(w);
  }
  return Status::Ok();
}

namespace {

Status SyncDirectory(const std::string& dir) {
  const int fd = ::open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (fd < 0) return IoError(dir + ": cannot open directory for fsync: " + std::strerror(errno));
  const int rc = ::fsync(fd);
  const int err = errno;
  ::close(fd);
  if (rc != 0) return IoError(dir + ": fsync failed: " + std::strerror(err));
  return Status::Ok();
}

}  // namespace

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

Status SyncParentDirectory(const std::string& path) {
  std::string dir = std::filesystem::path(path).parent_path().string();
  if (dir.empty()) dir = ".";
  return SyncDirectory(dir);
}

Status AtomicWriteFile(const std::string& path, const std::function<Status(FileSink&)>& fill) {
  const std::filesystem::path target(path);
  std::string dir = target.parent_path().string();
  if (dir.empty()) dir = ".";
  const std::string tmp = path + ".tmp." + UniqueSuffix();
  const int fd = ::open(tmp.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0644);
  if (fd < 0) return IoError(tmp + ": cannot create: " + std::strerror(errno));
  FileSink sink(fd, tmp);
  Status s = fill(sink);
  if (s.ok() && ::fsync(fd) != 0) s = IoError(tmp + ": fsync failed: " + std::strerror(errno));
  if (::close(fd) != 0 && s.ok()) s = IoError(tmp + ": close failed: " + std::strerror(errno));
  if (s.ok() && ::rename(tmp.c_str(), path.c_str()) != 0) {
    s = IoError(path + ": rename from temporary file failed: " + std::strerror(errno));
  }
  if (!s.ok()) {
    ::unlink(tmp.c_str());
    return s;
  }
  return SyncDirectory(dir);
}

Status AtomicWriteString(const std::string& path, std::string_view contents) {
  return AtomicWriteFile(path, [&](FileSink& sink) { return sink.Write(contents); });
}

}  // namespace hyb::storage
