// Env::Default/SetDefault, ParentDirectory and the fault-injecting wrapper. The POSIX
// implementation is in env_posix.cc, the in-memory one in env_mem.cc.
#include "hyb/storage/env.h"

#include <atomic>
#include <charconv>
#include <system_error>
#include <utility>

namespace hyb::storage {
namespace {

std::atomic<Env*> default_env{nullptr};  // nullptr: Posix()

}  // namespace

Env* Env::Default() {
  Env* env = default_env.load(std::memory_order_acquire);
  return env != nullptr ? env : Posix();
}

void Env::SetDefault(Env* env) { default_env.store(env, std::memory_order_release); }

std::string ParentDirectory(std::string_view path) {
  while (path.size() > 1 && path.back() == '/') path.remove_suffix(1);
  const size_t slash = path.rfind('/');
  if (slash == std::string_view::npos) return ".";
  std::string_view dir = path.substr(0, slash);
  while (dir.size() > 1 && dir.back() == '/') dir.remove_suffix(1);
  return dir.empty() ? "/" : std::string(dir);
}

// A file opened through a FaultInjectionEnv: counts and possibly fails each Append and Sync
// before forwarding it.
class FaultInjectionFile : public WritableFile {
 public:
  FaultInjectionFile(FaultInjectionEnv* env, std::unique_ptr<WritableFile> base)
      : env_(env), base_(std::move(base)) {}

  Status Append(std::string_view data) override {
    HYB_RETURN_IF_ERROR(env_->BeforeWrite(base_->path()));
    return base_->Append(data);
  }
  Status Sync() override {
    HYB_RETURN_IF_ERROR(env_->BeforeSync(base_->path()));
    return base_->Sync();
  }
  Status Close() override { return base_->Close(); }
  const std::string& path() const override { return base_->path(); }

 private:
  FaultInjectionEnv* env_;
  std::unique_ptr<WritableFile> base_;
};

FaultInjectionEnv::FaultInjectionEnv(Env* base) : base_(base) {}

void FaultInjectionEnv::FailNthWrite(int64_t n) {
  std::lock_guard<std::mutex> lock(mu_);
  fail_write_at_ = n > 0 ? writes_ + n : 0;
  fail_write_n_ = n;
}

void FaultInjectionEnv::FailNthSync(int64_t n) {
  std::lock_guard<std::mutex> lock(mu_);
  fail_sync_at_ = n > 0 ? syncs_ + n : 0;
  fail_sync_n_ = n;
}

Status FaultInjectionEnv::Arm(std::string_view spec) {
  int64_t write_n = -1, sync_n = -1;  // -1: not given
  size_t i = 0;
  while (i <= spec.size()) {
    size_t end = spec.find(',', i);
    if (end == std::string_view::npos) end = spec.size();
    const std::string_view item = spec.substr(i, end - i);
    const size_t eq = item.find('=');
    const std::string_view key = item.substr(0, eq);
    const std::string_view value = eq == std::string_view::npos ? "" : item.substr(eq + 1);
    int64_t n = 0;
    const auto [ptr, ec] = std::from_chars(value.data(), value.data() + value.size(), n);
    int64_t* target = key == "write" ? &write_n : key == "sync" ? &sync_n : nullptr;
    if (target == nullptr || value.empty() || ec != std::errc() ||
        ptr != value.data() + value.size() || n < 0) {
      return InvalidArgument("fault injection '" + std::string(spec) + "': expected items " +
                             "write=N or sync=N separated by commas, got '" + std::string(item) +
                             "'");
    }
    *target = n;
    i = end + 1;
  }
  if (write_n >= 0) FailNthWrite(write_n);
  if (sync_n >= 0) FailNthSync(sync_n);
  return Status::Ok();
}

int64_t FaultInjectionEnv::writes() const {
  std::lock_guard<std::mutex> lock(mu_);
  return writes_;
}

int64_t FaultInjectionEnv::syncs() const {
  std::lock_guard<std::mutex> lock(mu_);
  return syncs_;
}

Status FaultInjectionEnv::BeforeWrite(const std::string& path) {
  std::lock_guard<std::mutex> lock(mu_);
  if (++writes_ != fail_write_at_) return Status::Ok();
  fail_write_at_ = 0;
  return IoError(path + ": injected fault: write #" + std::to_string(fail_write_n_));
}

Status FaultInjectionEnv::BeforeSync(const std::string& path) {
  std::lock_guard<std::mutex> lock(mu_);
  if (++syncs_ != fail_sync_at_) return Status::Ok();
  fail_sync_at_ = 0;
  return IoError(path + ": injected fault: sync #" + std::to_string(fail_sync_n_));
}

StatusOr<std::unique_ptr<WritableFile>> FaultInjectionEnv::NewWritableFile(
    const std::string& path) {
  HYB_ASSIGN_OR_RETURN(auto file, base_->NewWritableFile(path));
  return std::unique_ptr<WritableFile>(new FaultInjectionFile(this, std::move(file)));
}

StatusOr<std::unique_ptr<WritableFile>> FaultInjectionEnv::NewAppendableFile(
    const std::string& path) {
  HYB_ASSIGN_OR_RETURN(auto file, base_->NewAppendableFile(path));
  return std::unique_ptr<WritableFile>(new FaultInjectionFile(this, std::move(file)));
}

StatusOr<std::string> FaultInjectionEnv::ReadFile(const std::string& path) {
  return base_->ReadFile(path);
}

bool FaultInjectionEnv::FileExists(const std::string& path) { return base_->FileExists(path); }

bool FaultInjectionEnv::IsDirectory(const std::string& path) { return base_->IsDirectory(path); }

StatusOr<std::vector<std::string>> FaultInjectionEnv::ListDirectory(const std::string& dir) {
  return base_->ListDirectory(dir);
}

Status FaultInjectionEnv::CreateDirectories(const std::string& dir) {
  return base_->CreateDirectories(dir);
}

Status FaultInjectionEnv::RenameFile(const std::string& from, const std::string& to) {
  return base_->RenameFile(from, to);
}

Status FaultInjectionEnv::RemoveFile(const std::string& path) { return base_->RemoveFile(path); }

Status FaultInjectionEnv::RemoveAll(const std::string& path) { return base_->RemoveAll(path); }

Status FaultInjectionEnv::SyncDirectory(const std::string& dir) {
  HYB_RETURN_IF_ERROR(BeforeSync(dir));
  return base_->SyncDirectory(dir);
}

}  // namespace hyb::storage
