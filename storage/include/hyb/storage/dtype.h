// Element types of stored tensors, spelled as in the safetensors header.
#pragma once

#include <cstddef>
#include <string_view>

#include "hyb/common/status.h"

namespace hyb::storage {

enum class DType { kF64, kF32, kF16, kBF16, kI64, kI32 };

// Bytes per element.
size_t DTypeSize(DType dtype);
// "F32", "BF16", ...
std::string_view DTypeName(DType dtype);
// Inverse of DTypeName; InvalidArgument naming the string for anything else.
StatusOr<DType> ParseDType(std::string_view name);

}  // namespace hyb::storage
