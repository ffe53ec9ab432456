// The safetensors format: an 8-byte little-endian header length N, N bytes of JSON describing
// each tensor (dtype, shape, data_offsets relative to the data section) plus optional
// "__metadata__" (string to string), then the data section, which the tensors must cover
// exactly: no overlaps, no holes, nothing out of range.
#pragma once

#include <cstddef>
#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "hyb/common/status.h"
#include "hyb/storage/atomic_file.h"
#include "hyb/storage/dtype.h"
#include "hyb/storage/env.h"
#include "hyb/storage/mapped_file.h"

namespace hyb::storage {

// A stored tensor's bytes, valid while `owner` (the file mapping) is alive. Copying a view
// shares the mapping.
struct TensorView {
  std::string name;
  DType dtype = DType::kF32;
  std::vector<int64_t> shape;
  const std::byte* data = nullptr;  // may be unaligned for the element type
  size_t nbytes = 0;
  std::shared_ptr<const void> owner;

  int64_t numel() const;
};

// Upper bound on the JSON header, as in the reference implementation: a larger header is
// treated as corruption rather than read into memory.
inline constexpr uint64_t kMaxSafetensorsHeaderBytes = 100u * 1024u * 1024u;

class SafetensorsFile {
 public:
  // Maps and validates `path`. Every malformed input returns DataLoss (InvalidArgument for an
  // unsupported dtype) with the path and the problem; nothing is read beyond the file.
  static StatusOr<std::shared_ptr<const SafetensorsFile>> Open(const std::string& path);

  const std::string& path() const { return file_->path(); }
  // Tensor names in the order of their data offsets.
  const std::vector<std::string>& names() const { return names_; }
  bool Contains(std::string_view name) const;
  // NotFound naming the file and the tensor when absent.
  StatusOr<TensorView> Get(std::string_view name) const;
  const std::map<std::string, std::string>& metadata() const { return metadata_; }

 private:
  struct Entry {
    DType dtype;
    std::vector<int64_t> shape;
    uint64_t begin;
    uint64_t end;
  };
  SafetensorsFile() = default;
  std::shared_ptr<const MappedFile> file_;
  const std::byte* data_start_ = nullptr;
  std::map<std::string, Entry, std::less<>> entries_;
  std::vector<std::string> names_;
  std::map<std::string, std::string> metadata_;
};

// One tensor to write. `data` must hold exactly numel * DTypeSize(dtype) bytes in row-major
// order and stay valid during the write.
struct TensorToWrite {
  std::string name;
  DType dtype = DType::kF32;
  std::vector<int64_t> shape;
  const void* data = nullptr;
  size_t nbytes = 0;
};

// Writes a safetensors file atomically through `env` (AtomicWriteFile: temporary file, fsync,
// rename), streaming each tensor's bytes. Tensors are laid out by descending element size, then
// name, so every tensor's data is aligned to its element size. InvalidArgument for duplicate or
// empty names, a name "__metadata__", or a byte count that does not match the shape.
Status WriteSafetensors(Env* env, const std::string& path,
                        const std::vector<TensorToWrite>& tensors,
                        const std::map<std::string, std::string>& metadata = {});
// The same on Env::Default().
Status WriteSafetensors(const std::string& path, const std::vector<TensorToWrite>& tensors,
                        const std::map<std::string, std::string>& metadata = {});

// A tensor whose bytes are produced while the file is written (WriteSafetensorsStreaming): its
// name, type and shape, but no data.
struct TensorLayout {
  std::string name;
  DType dtype = DType::kF32;
  std::vector<int64_t> shape;
  // numel * DTypeSize(dtype); 0 for a shape with a zero dimension.
  uint64_t nbytes() const;
};

// Produces one tensor's bytes: must write exactly tensor.nbytes() bytes, row-major, into `sink`
// (in as many Write calls as it likes). A non-OK status aborts the file.
using TensorFiller = std::function<Status(const TensorLayout& tensor, FileSink& sink)>;

// As WriteSafetensors, but each tensor's bytes come from `fill`, called once per tensor in the
// file's layout order (descending element size, then name), so no more than one tensor (or
// whatever `fill` buffers) is in memory at a time: what writes a model larger than RAM. Same
// errors as WriteSafetensors, plus Internal naming the tensor when `fill` wrote a different
// number of bytes; on any error the file at `path` is left as it was.
Status WriteSafetensorsStreaming(Env* env, const std::string& path,
                                 const std::vector<TensorLayout>& tensors,
                                 const TensorFiller& fill,
                                 const std::map<std::string, std::string>& metadata = {});

}  // namespace hyb::storage
