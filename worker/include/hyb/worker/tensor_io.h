// Conversions between stored tensors (storage::TensorView, torch-free) and at::Tensor, and
// safetensors files of at::Tensors.
#pragma once

#include <ATen/core/Tensor.h>

#include <map>
#include <string>
#include <utility>
#include <vector>

#include "hyb/common/status.h"
#include "hyb/storage/safetensors.h"

namespace hyb::worker {

at::ScalarType ToScalarType(storage::DType dtype);
// InvalidArgument for element types safetensors files here do not hold (e.g. complex).
StatusOr<storage::DType> ToStorageDType(at::ScalarType type);

// A CPU tensor over the view's bytes. Zero-copy (sharing the file mapping, read-only memory:
// never write into it) when the data is aligned for the element type; otherwise a copy.
at::Tensor TensorFromView(const storage::TensorView& view);

using NamedTensors = std::vector<std::pair<std::string, at::Tensor>>;

// Writes tensors (any device; moved to CPU and made contiguous) atomically to `path`.
Status SaveTensors(const std::string& path, const NamedTensors& tensors,
                   const std::map<std::string, std::string>& metadata = {});

// Reads every tensor of a safetensors file into CPU tensors (copied: they own their memory).
StatusOr<std::map<std::string, at::Tensor>> LoadTensors(const std::string& path);

}  // namespace hyb::worker
