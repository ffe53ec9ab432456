#include "hyb/storage/job_layout.h"

namespace hyb::storage {

bool PathExists(const std::string& path) { return Env::Default()->FileExists(path); }

Status MakeDirectories(const std::string& path) { return Env::Default()->CreateDirectories(path); }

Status JobLayout::CreateDirectories(Env* env) const {
  for (const std::string& d :
       {dir_, DistillDir(), EvalDir("validation"), EvalDir("test"), ExportsDir()}) {
    HYB_RETURN_IF_ERROR(env->CreateDirectories(d));
  }
  return Status::Ok();
}

Status JobLayout::CreateDirectories() const { return CreateDirectories(Env::Default()); }

}  // namespace hyb::storage
