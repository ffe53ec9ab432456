// The in-memory Env (after leveldb's helpers/memenv): one map from normalised path to node.
// Semantics follow the POSIX Env closely enough that one contract test runs against both
// (tests/storage/env_test.cc): parents must exist, renames replace, an open file keeps its data
// after the path is removed or replaced (like an unlinked inode).
#include <algorithm>
#include <map>
#include <mutex>

#include "hyb/storage/env.h"

namespace hyb::storage {
namespace {

// A file's contents, shared by the map and by every WritableFile open on it.
struct MemFile {
  std::mutex mu;  // guards data
  std::string data;
};

struct Node {
  std::shared_ptr<MemFile> file;  // nullptr: a directory
  bool is_dir() const { return file == nullptr; }
};

// "a//b/./c/" -> "a/b/c"; "/" stays "/"; "" and "./" become ".".
std::string Normalize(std::string_view path) {
  const bool absolute = !path.empty() && path.front() == '/';
  std::string out = absolute ? "/" : "";
  size_t i = 0;
  while (i < path.size()) {
    size_t j = path.find('/', i);
    if (j == std::string_view::npos) j = path.size();
    const std::string_view part = path.substr(i, j - i);
    if (!part.empty() && part != ".") {
      if (!out.empty() && out.back() != '/') out += '/';
      out += part;
    }
    i = j + 1;
  }
  return out.empty() ? "." : out;
}

bool IsUnder(const std::string& path, const std::string& dir) {
  if (dir == "/") return path.size() > 1 && path.front() == '/';
  if (dir == ".") return !path.empty() && path.front() != '/' && path != ".";
  return path.size() > dir.size() && path.compare(0, dir.size(), dir) == 0 &&
         path[dir.size()] == '/';
}

class MemWritableFile : public WritableFile {
 public:
  MemWritableFile(std::shared_ptr<MemFile> file, std::string path)
      : file_(std::move(file)), path_(std::move(path)) {}

  Status Append(std::string_view data) override {
    if (closed_) return FailedPrecondition(path_ + ": write after close");
    std::lock_guard<std::mutex> lock(file_->mu);
    file_->data.append(data);
    return Status::Ok();
  }
  Status Sync() override {
    if (closed_) return FailedPrecondition(path_ + ": fsync after close");
    return Status::Ok();
  }
  Status Close() override {
    if (closed_) return FailedPrecondition(path_ + ": closed twice");
    closed_ = true;
    return Status::Ok();
  }
  const std::string& path() const override { return path_; }

 private:
  std::shared_ptr<MemFile> file_;
  std::string path_;
  bool closed_ = false;
};

class MemEnv : public Env {
 public:
  MemEnv() {
    nodes_["/"] = Node{};
    nodes_["."] = Node{};
  }

  StatusOr<std::unique_ptr<WritableFile>> NewWritableFile(const std::string& path) override {
    return Open(path, /*truncate=*/true);
  }

  StatusOr<std::unique_ptr<WritableFile>> NewAppendableFile(const std::string& path) override {
    return Open(path, /*truncate=*/false);
  }

  StatusOr<std::string> ReadFile(const std::string& path) override {
    std::shared_ptr<MemFile> file;
    {
      std::lock_guard<std::mutex> lock(mu_);
      auto it = nodes_.find(Normalize(path));
      if (it == nodes_.end()) return NotFound(path + ": cannot open for reading: no such file");
      if (it->second.is_dir()) return IoError(path + ": cannot read: is a directory");
      file = it->second.file;
    }
    std::lock_guard<std::mutex> lock(file->mu);
    return file->data;
  }

  bool FileExists(const std::string& path) override {
    std::lock_guard<std::mutex> lock(mu_);
    return nodes_.count(Normalize(path)) > 0;
  }

  bool IsDirectory(const std::string& path) override {
    std::lock_guard<std::mutex> lock(mu_);
    auto it = nodes_.find(Normalize(path));
    return it != nodes_.end() && it->second.is_dir();
  }

  StatusOr<std::vector<std::string>> ListDirectory(const std::string& dir) override {
    std::lock_guard<std::mutex> lock(mu_);
    const std::string d = Normalize(dir);
    auto it = nodes_.find(d);
    if (it == nodes_.end()) return NotFound(dir + ": cannot list directory: no such directory");
    if (!it->second.is_dir()) return IoError(dir + ": cannot list directory: not a directory");
    std::vector<std::string> names;
    for (const auto& [path, node] : nodes_) {
      if (path != d && ParentDirectory(path) == d) {
        names.push_back(path.substr(path.rfind('/') + 1));
      }
    }
    std::sort(names.begin(), names.end());
    return names;
  }

  Status CreateDirectories(const std::string& dir) override {
    if (dir.empty()) return InvalidArgument("CreateDirectories: empty directory path");
    std::lock_guard<std::mutex> lock(mu_);
    const std::string d = Normalize(dir);
    // Every prefix, shortest first, as mkdir -p walks them.
    std::vector<std::string> chain;
    for (std::string p = d; p != "/" && p != "."; p = ParentDirectory(p)) chain.push_back(p);
    std::reverse(chain.begin(), chain.end());
    for (const std::string& p : chain) {
      auto it = nodes_.find(p);
      if (it == nodes_.end()) {
        nodes_[p] = Node{};
      } else if (!it->second.is_dir()) {
        return IoError(p + ": cannot create directory: not a directory");
      }
    }
    return Status::Ok();
  }

  Status RenameFile(const std::string& from, const std::string& to) override {
    std::lock_guard<std::mutex> lock(mu_);
    const std::string f = Normalize(from), t = Normalize(to);
    const std::string what = from + ": cannot rename to " + to + ": ";
    auto src = nodes_.find(f);
    if (src == nodes_.end()) return NotFound(what + "no such file or directory");
    if (f == t) return Status::Ok();
    if (f == "/" || f == ".") return IoError(what + "cannot move the root");
    // As rename(2): ENOENT for a missing destination parent, but the source exists, so IoError.
    if (Status parent = CheckParentLocked(t, what); !parent.ok()) {
      return IoError(parent.message());
    }
    auto dst = nodes_.find(t);
    if (!src->second.is_dir()) {
      if (dst != nodes_.end() && dst->second.is_dir()) return IoError(what + "is a directory");
      nodes_[t] = src->second;
      nodes_.erase(f);
      return Status::Ok();
    }
    if (IsUnder(t, f)) return IoError(what + "a directory cannot move into itself");
    if (dst != nodes_.end()) {
      if (!dst->second.is_dir()) return IoError(what + "not a directory");
      if (HasChildrenLocked(t)) return IoError(what + "directory not empty");
      nodes_.erase(dst);
    }
    // Move the directory and everything under it.
    std::vector<std::pair<std::string, Node>> moved;
    for (auto it = nodes_.begin(); it != nodes_.end();) {
      if (it->first == f || IsUnder(it->first, f)) {
        moved.emplace_back(t + it->first.substr(f.size()), std::move(it->second));
        it = nodes_.erase(it);
      } else {
        ++it;
      }
    }
    for (auto& [path, node] : moved) nodes_[path] = std::move(node);
    return Status::Ok();
  }

  Status RemoveFile(const std::string& path) override {
    std::lock_guard<std::mutex> lock(mu_);
    auto it = nodes_.find(Normalize(path));
    if (it == nodes_.end()) return NotFound(path + ": cannot remove: no such file");
    if (it->second.is_dir()) return IoError(path + ": cannot remove: is a directory");
    nodes_.erase(it);
    return Status::Ok();
  }

  Status RemoveAll(const std::string& path) override {
    std::lock_guard<std::mutex> lock(mu_);
    const std::string p = Normalize(path);
    if (p == "/" || p == ".") return InvalidArgument(path + ": refusing to remove the root");
    for (auto it = nodes_.begin(); it != nodes_.end();) {
      it = it->first == p || IsUnder(it->first, p) ? nodes_.erase(it) : std::next(it);
    }
    return Status::Ok();
  }

  Status SyncDirectory(const std::string& dir) override {
    std::lock_guard<std::mutex> lock(mu_);
    auto it = nodes_.find(Normalize(dir));
    if (it == nodes_.end())
      return NotFound(dir + ": cannot open directory for fsync: no such directory");
    if (!it->second.is_dir())
      return IoError(dir + ": cannot open directory for fsync: not a directory");
    return Status::Ok();
  }

 private:
  StatusOr<std::unique_ptr<WritableFile>> Open(const std::string& path, bool truncate) {
    std::lock_guard<std::mutex> lock(mu_);
    const std::string p = Normalize(path);
    const std::string what = path + ": cannot open for writing: ";
    HYB_RETURN_IF_ERROR(CheckParentLocked(p, what));
    std::shared_ptr<MemFile> file;
    auto it = nodes_.find(p);
    if (it == nodes_.end()) {
      file = std::make_shared<MemFile>();
      nodes_[p] = Node{file};
    } else if (it->second.is_dir()) {
      return IoError(what + "is a directory");
    } else {
      file = it->second.file;
      if (truncate) {
        std::lock_guard<std::mutex> file_lock(file->mu);
        file->data.clear();
      }
    }
    return std::unique_ptr<WritableFile>(new MemWritableFile(std::move(file), path));
  }

  // The parent of normalised `p` must be an existing directory.
  Status CheckParentLocked(const std::string& p, const std::string& what) const {
    auto it = nodes_.find(ParentDirectory(p));
    if (it == nodes_.end()) return NotFound(what + "no such directory " + ParentDirectory(p));
    if (!it->second.is_dir()) return IoError(what + ParentDirectory(p) + " is not a directory");
    return Status::Ok();
  }

  bool HasChildrenLocked(const std::string& dir) const {
    return std::any_of(nodes_.begin(), nodes_.end(),
                       [&](const auto& entry) { return IsUnder(entry.first, dir); });
  }

  std::mutex mu_;  // guards nodes_ (file contents have their own mutex)
  std::map<std::string, Node> nodes_;
};

}  // namespace

std::unique_ptr<Env> NewMemEnv() { return std::make_unique<MemEnv>(); }

}  // namespace hyb::storage
