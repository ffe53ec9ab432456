#include "hyb/storage/model_dir.h"

#include <filesystem>

namespace hyb::storage {

namespace fs = std::filesystem;

StatusOr<ModelDirectory> ModelDirectory::Open(const std::string& dir) {
  std::error_code ec;
  if (!fs::is_directory(dir, ec)) return NotFound(dir + ": not a directory");
  ModelDirectory m;
  m.path_ = dir;
  const std::string config_path = (fs::path(dir) / "config.json").string();
  if (!fs::exists(config_path, ec)) return NotFound(config_path + ": no such file");
  HYB_ASSIGN_OR_RETURN(m.config_, ReadJsonFile(config_path));
  if (!m.config_.is_object()) return DataLoss(config_path + ": not a JSON object");
  HYB_ASSIGN_OR_RETURN(m.weights_, Checkpoint::Open(dir));
  const fs::path tok = fs::path(dir) / "tokenizer.json";
  if (fs::exists(tok, ec)) m.tokenizer_path_ = tok.string();
  return m;
}

}  // namespace hyb::storage
