#include "hyb/storage/job_layout.h"

#include <sys/stat.h>

#include <cerrno>
#include <cstring>

namespace hyb::storage {

bool PathExists(const std::string& path) {
  struct stat st {};
  return ::stat(path.c_str(), &st) == 0;
}

Status MakeDirectories(const std::string& path) {
  if (path.empty()) return InvalidArgument("empty directory path");
  for (size_t pos = 1; pos <= path.size(); ++pos) {
    if (pos != path.size() && path[pos] != '/') continue;
    const std::string prefix = path.substr(0, pos);
    if (::mkdir(prefix.c_str(), 0755) != 0 && errno != EEXIST) {
      return IoError(prefix + ": cannot create directory: " + std::strerror(errno));
    }
  }
  struct stat st {};
  if (::stat(path.c_str(), &st) != 0 || !S_ISDIR(st.st_mode)) {
    return IoError(path + ": exists and is not a directory");
  }
  return Status::Ok();
}

Status JobLayout::CreateDirectories() const {
  for (const std::string& d :
       {dir_, DistillDir(), EvalDir("validation"), EvalDir("test"), ExportsDir()}) {
    HYB_RETURN_IF_ERROR(MakeDirectories(d));
  }
  return Status::Ok();
}

}  // namespace hyb::storage
