// Content fingerprints of input files. A job records them when it starts so that a resumed run
// can tell that its teacher was retrained, its data re-tokenized or a task file edited, instead
// of silently mixing results computed from the old inputs with new ones. `hybridize prepare`
// records the tokenizer's so that data tokenized for another model is refused.
//
// Not cryptographic: a 64-bit hash of the bytes (four independent multiply-rotate lanes over
// 8-byte words), fast enough for multi-gigabyte weight files.
#pragma once

#include <string>
#include <vector>

#include "hyb/common/json_util.h"
#include "hyb/common/status.h"

namespace hyb::storage {

// "<size in bytes>:<16 hex digits>". NotFound / IoError naming the path.
StatusOr<std::string> FingerprintFile(const std::string& path);

// The same hash of an in-memory buffer (FingerprintFile hashes the file's bytes with this).
std::string FingerprintBytes(const void* data, size_t size);

// Fingerprints of the regular files directly in `dir` whose names pass `keep`, keyed by file
// name (sorted). NotFound naming `dir` if it is not a directory.
StatusOr<Json> FingerprintDirectory(const std::string& dir,
                                    bool (*keep)(const std::string& name) = nullptr);

// True if `path` is a directory (following links) on the real file system. Inputs are read
// through mmap, so this and the functions above do not go through Env::Default().
bool IsDirectory(const std::string& path);

}  // namespace hyb::storage
