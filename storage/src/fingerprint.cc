#include "hyb/storage/fingerprint.h"

#include <sys/stat.h>

#include <cstdint>
#include <cstdio>
#include <cstring>

#include "hyb/storage/env.h"
#include "hyb/storage/mapped_file.h"

namespace hyb::storage {
namespace {

constexpr uint64_t kP1 = 0x9E3779B185EBCA87ULL;
constexpr uint64_t kP2 = 0xC2B2AE3D27D4EB4FULL;
constexpr uint64_t kP3 = 0x165667B19E3779F9ULL;

uint64_t Rotl(uint64_t x, int r) { return (x << r) | (x >> (64 - r)); }

uint64_t Lane(uint64_t acc, uint64_t word) { return Rotl(acc + word * kP2, 31) * kP1; }

// Final avalanche so that every input bit affects every output bit.
uint64_t Avalanche(uint64_t h) {
  h ^= h >> 33;
  h *= kP2;
  h ^= h >> 29;
  h *= kP3;
  h ^= h >> 32;
  return h;
}

uint64_t Load64(const unsigned char* p) {
  uint64_t w;
  std::memcpy(&w, p, sizeof(w));
  return w;
}

}  // namespace

std::string FingerprintBytes(const void* data, size_t size) {
  const auto* p = static_cast<const unsigned char*>(data);
  uint64_t lanes[4] = {kP1 + kP2, kP2, 0, 0 - kP1};
  size_t i = 0;
  for (; i + 32 <= size; i += 32) {
    for (int l = 0; l < 4; ++l) lanes[l] = Lane(lanes[l], Load64(p + i + 8 * l));
  }
  uint64_t h = Rotl(lanes[0], 1) + Rotl(lanes[1], 7) + Rotl(lanes[2], 12) + Rotl(lanes[3], 18);
  h += static_cast<uint64_t>(size) * kP3;
  for (; i + 8 <= size; i += 8) h = Rotl(h ^ Lane(0, Load64(p + i)), 27) * kP1 + kP3;
  for (; i < size; ++i) h = Rotl(h ^ (p[i] * kP3), 11) * kP1;
  char hex[17];
  std::snprintf(hex, sizeof(hex), "%016llx", static_cast<unsigned long long>(Avalanche(h)));
  return std::to_string(size) + ":" + hex;
}

StatusOr<std::string> FingerprintFile(const std::string& path) {
  HYB_ASSIGN_OR_RETURN(auto file, MappedFile::Open(path));
  return FingerprintBytes(file->data(), file->size());
}

// Input files (teacher weights, datasets, task files) are read where they are, through mmap, so
// they are listed and tested on the real file system (Env::Posix()) too, whatever Env::Default()
// is: job storage goes through the Env, inputs do not.
bool IsDirectory(const std::string& path) { return Env::Posix()->IsDirectory(path); }

StatusOr<Json> FingerprintDirectory(const std::string& dir, bool (*keep)(const std::string&)) {
  if (!Env::Posix()->IsDirectory(dir)) return NotFound(dir + ": not a directory");
  HYB_ASSIGN_OR_RETURN(std::vector<std::string> all, Env::Posix()->ListDirectory(dir));
  std::vector<std::string> names;
  for (const std::string& name : all) {
    // Regular files only: opening a FIFO or a device to map it could block or fail.
    struct stat st {};
    if (::stat((dir + "/" + name).c_str(), &st) != 0 || !S_ISREG(st.st_mode)) continue;
    if (keep == nullptr || keep(name)) names.push_back(name);
  }
  Json out = Json::object();
  for (const auto& name : names) {
    HYB_ASSIGN_OR_RETURN(out[name], FingerprintFile(dir + "/" + name));
  }
  return out;
}

}  // namespace hyb::storage
