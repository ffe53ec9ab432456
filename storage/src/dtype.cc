#include "hyb/storage/dtype.h"

#include <string>

namespace hyb::storage {

size_t DTypeSize(DType dtype) {
  switch (dtype) {
    case DType::kF64: return 8;
    case DType::kF32: return 4;
    case DType::kF16: return 2;
    case DType::kBF16: return 2;
    case DType::kI64: return 8;
    case DType::kI32: return 4;
  }
  return 0;
}

std::string_view DTypeName(DType dtype) {
  switch (dtype) {
    case DType::kF64: return "F64";
    case DType::kF32: return "F32";
    case DType::kF16: return "F16";
    case DType::kBF16: return "BF16";
    case DType::kI64: return "I64";
    case DType::kI32: return "I32";
  }
  return "?";
}

StatusOr<DType> ParseDType(std::string_view name) {
  for (DType d : {DType::kF64, DType::kF32, DType::kF16, DType::kBF16, DType::kI64, DType::kI32}) {
    if (DTypeName(d) == name) return d;
  }
  return InvalidArgument("unsupported dtype '" + std::string(name) +
                         "' (supported: F64, F32, F16, BF16, I64, I32)");
}

}  // namespace hyb::storage
