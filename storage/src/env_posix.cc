// Env on the real file system through POSIX calls. Not std::filesystem: the PyTorch wheel's
// libtorch.so exports its own std::filesystem symbols, which binaries linked against it bind to
// (remove_all crashes there; tests/testing/temp_dir.h).
#include <dirent.h>
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>

#include "hyb/storage/env.h"

namespace hyb::storage {
namespace {

// "<path>: <what> failed: <strerror>", NotFound for ENOENT (as leveldb's PosixError does).
Status PosixError(const std::string& path, const char* what, int err) {
  std::string message = path + ": " + what + ": " + std::strerror(err);
  return err == ENOENT ? NotFound(std::move(message)) : IoError(std::move(message));
}

class PosixWritableFile : public WritableFile {
 public:
  PosixWritableFile(int fd, std::string path) : fd_(fd), path_(std::move(path)) {}
  ~PosixWritableFile() override {
    if (fd_ >= 0) ::close(fd_);
  }
  PosixWritableFile(const PosixWritableFile&) = delete;
  PosixWritableFile& operator=(const PosixWritableFile&) = delete;

  Status Append(std::string_view data) override {
    if (fd_ < 0) return FailedPrecondition(path_ + ": write after close");
    const char* p = data.data();
    size_t n = data.size();
    while (n > 0) {
      const ssize_t w = ::write(fd_, p, n);
      if (w < 0) {
        if (errno == EINTR) continue;
        return PosixError(path_, "write failed", errno);
      }
      p += w;
      n -= static_cast<size_t>(w);
    }
    return Status::Ok();
  }

  Status Sync() override {
    if (fd_ < 0) return FailedPrecondition(path_ + ": fsync after close");
    if (::fsync(fd_) != 0) return PosixError(path_, "fsync failed", errno);
    return Status::Ok();
  }

  Status Close() override {
    if (fd_ < 0) return FailedPrecondition(path_ + ": closed twice");
    const int rc = ::close(fd_);
    fd_ = -1;  // the descriptor is gone even when close reports an error
    if (rc != 0) return PosixError(path_, "close failed", errno);
    return Status::Ok();
  }

  const std::string& path() const override { return path_; }

 private:
  int fd_;
  std::string path_;
};

StatusOr<std::unique_ptr<WritableFile>> OpenForWriting(const std::string& path, int flags) {
  const int fd = ::open(path.c_str(), O_WRONLY | O_CREAT | O_CLOEXEC | flags, 0644);
  if (fd < 0) return PosixError(path, "cannot open for writing", errno);
  return std::unique_ptr<WritableFile>(new PosixWritableFile(fd, path));
}

// Removes `path` recursively without following symbolic links.
Status RemoveTree(const std::string& path) {
  struct stat st {};
  if (::lstat(path.c_str(), &st) != 0) {
    if (errno == ENOENT) return Status::Ok();
    return PosixError(path, "lstat failed", errno);
  }
  if (S_ISDIR(st.st_mode)) {
    DIR* d = ::opendir(path.c_str());
    if (d == nullptr) return PosixError(path, "cannot list", errno);
    std::vector<std::string> names;
    while (const dirent* e = ::readdir(d)) {
      const std::string name = e->d_name;
      if (name != "." && name != "..") names.push_back(name);
    }
    ::closedir(d);
    for (const std::string& name : names) HYB_RETURN_IF_ERROR(RemoveTree(path + "/" + name));
    if (::rmdir(path.c_str()) != 0 && errno != ENOENT) {
      return PosixError(path, "cannot remove directory", errno);
    }
    return Status::Ok();
  }
  if (::unlink(path.c_str()) != 0 && errno != ENOENT) {
    return PosixError(path, "cannot remove", errno);
  }
  return Status::Ok();
}

class PosixEnv : public Env {
 public:
  StatusOr<std::unique_ptr<WritableFile>> NewWritableFile(const std::string& path) override {
    return OpenForWriting(path, O_TRUNC);
  }

  StatusOr<std::unique_ptr<WritableFile>> NewAppendableFile(const std::string& path) override {
    return OpenForWriting(path, O_APPEND);
  }

  StatusOr<std::string> ReadFile(const std::string& path) override {
    const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
    if (fd < 0) return PosixError(path, "cannot open for reading", errno);
    std::string out;
    char buf[1 << 16];
    for (;;) {
      const ssize_t r = ::read(fd, buf, sizeof(buf));
      if (r < 0) {
        if (errno == EINTR) continue;
        const int err = errno;
        ::close(fd);
        return PosixError(path, "read failed", err);
      }
      if (r == 0) break;
      out.append(buf, static_cast<size_t>(r));
    }
    ::close(fd);
    return out;
  }

  bool FileExists(const std::string& path) override {
    struct stat st {};
    return ::stat(path.c_str(), &st) == 0;
  }

  bool IsDirectory(const std::string& path) override {
    struct stat st {};
    return ::stat(path.c_str(), &st) == 0 && S_ISDIR(st.st_mode);
  }

  StatusOr<std::vector<std::string>> ListDirectory(const std::string& dir) override {
    DIR* d = ::opendir(dir.c_str());
    if (d == nullptr) return PosixError(dir, "cannot list directory", errno);
    std::vector<std::string> names;
    errno = 0;
    while (const dirent* e = ::readdir(d)) {
      const std::string name = e->d_name;
      if (name != "." && name != "..") names.push_back(name);
    }
    const int err = errno;
    ::closedir(d);
    if (err != 0) return PosixError(dir, "cannot list directory", err);
    std::sort(names.begin(), names.end());
    return names;
  }

  Status CreateDirectories(const std::string& dir) override {
    if (dir.empty()) return InvalidArgument("CreateDirectories: empty directory path");
    for (size_t pos = 1; pos <= dir.size(); ++pos) {
      if (pos != dir.size() && dir[pos] != '/') continue;
      const std::string prefix = dir.substr(0, pos);
      if (::mkdir(prefix.c_str(), 0755) != 0 && errno != EEXIST) {
        const int err = errno;
        return IoError(prefix + ": cannot create directory: " + std::strerror(err));
      }
    }
    if (!IsDirectory(dir)) return IoError(dir + ": exists and is not a directory");
    return Status::Ok();
  }

  Status RenameFile(const std::string& from, const std::string& to) override {
    if (::rename(from.c_str(), to.c_str()) != 0) {
      const int err = errno;
      std::string message = from + ": cannot rename to " + to + ": " + std::strerror(err);
      return err == ENOENT && !FileExists(from) ? NotFound(std::move(message))
                                                : IoError(std::move(message));
    }
    return Status::Ok();
  }

  Status RemoveFile(const std::string& path) override {
    if (::unlink(path.c_str()) != 0) return PosixError(path, "cannot remove", errno);
    return Status::Ok();
  }

  Status RemoveAll(const std::string& path) override { return RemoveTree(path); }

  Status SyncDirectory(const std::string& dir) override {
    const int fd = ::open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (fd < 0) return PosixError(dir, "cannot open directory for fsync", errno);
    const int rc = ::fsync(fd);
    const int err = errno;
    ::close(fd);
    if (rc != 0) return PosixError(dir, "directory fsync failed", err);
    return Status::Ok();
  }
};

}  // namespace

Env* Env::Posix() {
  static Env* const env = new PosixEnv();  // never deleted: usable during static destruction
  return env;
}

}  // namespace hyb::storage
